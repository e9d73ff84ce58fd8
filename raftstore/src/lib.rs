//! flotilla's multi-raft store.
//!
//! - [`raft`]: the consensus core, sans-IO (no threads, clocks, disk or
//!   network): `RawNode`, `Storage` + `MemStorage`, progress tracking, quorum
//!   math, membership changes, read-only requests.

pub mod raft;
