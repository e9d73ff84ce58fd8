//! The replication state of one follower, as seen by the leader.

/// How the leader is currently replicating to a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressState {
    /// The leader does not know the follower's last matching index: it sends
    /// at most one append per heartbeat interval and waits for the answer.
    #[default]
    Probe,
    /// The follower is in sync: appends are pipelined, bounded by inflights.
    Replicate,
    /// The follower needs (and is being sent) a snapshot.
    Snapshot,
}
