//! The raft log: durable entries behind a [`Storage`](super::Storage) plus
//! the not-yet-persisted tail in [`Unstable`].

mod raft_log;
mod unstable;

pub use raft_log::RaftLog;
pub use unstable::Unstable;
