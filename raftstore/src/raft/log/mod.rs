//! The raft log: durable entries behind a [`Storage`](super::Storage) plus
//! the not-yet-persisted tail in [`Unstable`].

mod raft_log;
mod unstable;

pub use raft_log::RaftLog;
pub use unstable::Unstable;

/// Entries with the given `(index, term)` pairs and no payload (tests).
#[cfg(test)]
fn test_entries(pairs: &[(u64, u64)]) -> Vec<flotilla_proto::eraftpb::Entry> {
    pairs
        .iter()
        .map(|&(index, term)| flotilla_proto::eraftpb::Entry {
            index,
            term,
            ..Default::default()
        })
        .collect()
}
