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
pub mod proc_stats;
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::{kvpb, pb};

    /// Decodes `bytes` as `M`; whatever decodes encodes and decodes back
    /// to the same value.
    fn decodes_or_refuses<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
        if let Ok(m) = M::decode(bytes) {
            let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded");
            assert_eq!(again, m);
        }
    }

    proptest! {
        /// Every message a peer or client sends this crate's services is
        /// decoded from arbitrary bytes without a panic (a typed error or a
        /// value that round-trips).
        #[test]
        fn wire_messages_decode_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            decodes_or_refuses::<pb::RaftBatch>(&bytes);
            decodes_or_refuses::<pb::SnapshotChunk>(&bytes);
            decodes_or_refuses::<flotilla_proto::raft_cmdpb::RaftCmdRequest>(&bytes);
            decodes_or_refuses::<kvpb::RegionStatusRequest>(&bytes);
            decodes_or_refuses::<kvpb::LocateRequest>(&bytes);
            decodes_or_refuses::<kvpb::StoreInfoResponse>(&bytes);
            decodes_or_refuses::<kvpb::RegionsResponse>(&bytes);
        }
    }
}
