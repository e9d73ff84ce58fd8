//! A snapshot of a node's state for observability.

use flotilla_proto::eraftpb::HardState;

use super::core::{Raft, SoftState, StateRole};
use super::storage::Storage;
use super::tracker::Progress;

/// A node's state at one moment.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The node's id.
    pub id: u64,
    /// Term, vote, commit.
    pub hs: HardState,
    /// Leader and role.
    pub ss: SoftState,
    /// Applied index.
    pub applied: u64,
    /// Each peer's progress (leaders only).
    pub progress: Option<Vec<(u64, Progress)>>,
}

impl Status {
    /// The status of `raft`.
    pub fn new<S: Storage>(raft: &Raft<S>) -> Self {
        let progress = (raft.state() == StateRole::Leader)
            .then(|| raft.prs().iter().map(|(id, p)| (id, p.clone())).collect());
        Status {
            id: raft.id(),
            hs: raft.hard_state(),
            ss: raft.soft_state(),
            applied: raft.raft_log().applied,
            progress,
        }
    }
}
