//! flotilla's multi-raft store.
//!
//! - [`raft`]: the consensus core, sans-IO (no threads, clocks, disk or
//!   network): `RawNode`, `Storage` + `MemStorage`, progress tracking, quorum
//!   math, membership changes, read-only requests.
//! - [`store`]: peers, apply, transport and the embedding API ([`Store`],
//!   [`Cluster`], [`Client`]) on the batch system and the shared engine.

pub mod raft;
pub mod store;

pub use store::{Client, ClientConfig, Cluster, Config, Error, Store, StoreHandle};
