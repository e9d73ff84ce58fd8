//! Messages of the store's three kinds of FSM: peers, the store (control)
//! and apply delegates.

use flotilla_proto::eraftpb::Entry;
use flotilla_proto::raft_cmdpb::RaftCmdRequest;
use flotilla_proto::raft_cmdpb::RaftCmdResponse;
use flotilla_proto::raft_serverpb::{RaftApplyState, RaftMessage};

/// Called exactly once with a command's response (or its error in the
/// response header).
pub type Callback = Box<dyn FnOnce(RaftCmdResponse) + Send>;

/// A client command and where its answer goes.
pub struct RaftCommand {
    /// The request.
    pub request: RaftCmdRequest,
    /// Called once with the response.
    pub callback: Callback,
}

impl std::fmt::Debug for RaftCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftCommand")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// A message to a region's peer.
#[derive(Debug)]
pub enum PeerMsg {
    /// A raft message from another store.
    RaftMessage(Box<RaftMessage>),
    /// A client command.
    RaftCommand(Box<RaftCommand>),
    /// One base tick of the store clock.
    Tick,
    /// The apply side finished entries.
    ApplyRes(ApplyRes),
    /// Nothing: makes the poller handle the peer again (it has more ready).
    Wake,
}

/// A message to the store (control) FSM.
#[derive(Debug)]
pub enum StoreMsg {
    /// One base tick of the store clock.
    Tick,
    /// A raft message for a region this store has no peer of.
    RaftMessage(Box<RaftMessage>),
}

/// A proposal waiting for its entry to apply.
pub struct Proposal {
    /// The entry's index.
    pub index: u64,
    /// The term the entry was proposed in; an entry applied at `index` with
    /// another term means the proposal was lost (`StaleCommand`).
    pub term: u64,
    /// Called once with the response.
    pub callback: Callback,
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal")
            .field("index", &self.index)
            .field("term", &self.term)
            .finish_non_exhaustive()
    }
}

/// Committed entries for a region's apply delegate, with the proposals
/// they may answer.
#[derive(Debug)]
pub struct ApplyTask {
    /// The region.
    pub region_id: u64,
    /// Committed, durable entries in index order.
    pub entries: Vec<Entry>,
    /// Proposals whose index is at most the last entry's.
    pub proposals: Vec<Proposal>,
}

/// A message to an apply delegate.
#[derive(Debug)]
pub enum ApplyMsg {
    /// Apply these entries.
    Apply(ApplyTask),
}

/// What the apply side reports back to the peer.
#[derive(Debug, Clone)]
pub struct ApplyRes {
    /// The region.
    pub region_id: u64,
    /// The apply state now persisted with the applied data.
    pub apply_state: RaftApplyState,
}
