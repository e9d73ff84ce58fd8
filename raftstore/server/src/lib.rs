//! flotilla over a network: stores in separate processes talk gRPC.
//!
//! - [`GrpcTransport`]: the raft [`Transport`] between stores. Per remote
//!   store, one long-lived stream of [`pb::RaftBatch`]es (one batch per
//!   poll round's flush), fed through a bounded queue; a full queue drops
//!   (raft retransmits) and counts the drop. Snapshots go on a stream of
//!   their own, one per snapshot.
//! - [`StoreServer`]: the receiving side, handing what arrives to a store
//!   ([`MessageSink`]), refusing batches of another cluster or for another
//!   store; and the client service (`kvpb.Kv`) on the same port.
//! - [`RemoteStore`]: a store's client service as a `StoreApi`, so the
//!   embedding `Client` works over the network unchanged.
//! - [`StatusServer`]: `/metrics` (Prometheus) and `/status` (JSON) on a
//!   port of their own.
//! - [`AddressBook`]: where each store listens.
//!
//! Both run on a small tokio runtime ([`net_runtime`]) beside the store's
//! thread-based pollers: a poller never waits on the network.
//!
//! [`Transport`]: flotilla_raftstore::store::Transport
//! [`MessageSink`]: flotilla_raftstore::store::MessageSink

mod address;
mod config;
mod error;
mod kv;
mod metrics;
mod server;
mod snapshot;
mod status;
mod tls;
mod transport;

/// The generated gRPC types and services of `transportpb.proto`.
#[allow(missing_docs)]
pub mod pb {
    tonic::include_proto!("transportpb");
}

/// The generated gRPC types and services of `kvpb.proto`.
#[allow(missing_docs)]
pub mod kvpb {
    tonic::include_proto!("kvpb");
}

pub use self::address::AddressBook;
pub use self::config::NetConfig;
pub use self::error::{Error, Result};
pub use self::kv::{ClientService, MAX_COMMAND_WAIT, RemoteStore};
pub use self::metrics::{ServerMetrics, TransportMetrics};
pub use self::server::{ServerIdentity, StoreServer};
pub use self::status::{StatusDoc, StatusServer, StatusSources, status_doc};
pub use self::tls::TlsConfig;
pub use self::transport::GrpcTransport;

/// A multi-threaded tokio runtime of `threads` workers named `net`, for
/// the network of one process (its transports and servers).
///
/// # Errors
/// [`Error::Io`] if the runtime's threads cannot start.
pub fn net_runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("net")
        .enable_io()
        .enable_time()
        .build()?)
}
