//! Messages of the store's three kinds of FSM: peers, the store (control)
//! and apply delegates.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::eraftpb::{ConfChangeV2, Entry};
use flotilla_proto::metapb::{self, Region, RegionEpoch};
use flotilla_proto::raft_cmdpb::RaftCmdResponse;
use flotilla_proto::raft_cmdpb::{CommitMergeRequest, RaftCmdRequest};
use flotilla_proto::raft_serverpb::{MergeState, RaftApplyState, RaftMessage, RaftTruncatedState};

use super::error::Error;
use super::hibernation::SleepMsg;
use super::util::err_response;

/// Called exactly once with a command's response (or its error in the
/// response header). It runs on a store thread: it should be quick. A panic
/// in it is caught and counted, never taken down a poller.
pub type Callback = Box<dyn FnOnce(RaftCmdResponse) + Send>;

/// Callbacks that panicked, process-wide (see [`callback_panics`]).
static CALLBACK_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many embedder callbacks have panicked in this process. Each panic was
/// caught on the store thread that ran the callback, which carried on.
pub fn callback_panics() -> u64 {
    CALLBACK_PANICS.load(Ordering::Relaxed)
}

/// A [`Callback`] that is answered exactly once: by [`Responder::respond`],
/// or, if it is dropped unanswered (its store stopped), with
/// [`Error::StoreStopped`], `in_flight` once the command was proposed.
pub struct Responder {
    callback: Option<Callback>,
    proposed: bool,
}

impl Responder {
    /// Wraps `callback` for a command not yet proposed.
    pub fn new(callback: Callback) -> Responder {
        Responder {
            callback: Some(callback),
            proposed: false,
        }
    }

    /// The command entered the log: if dropped now, its outcome is unknown.
    pub fn mark_proposed(&mut self) {
        self.proposed = true;
    }

    /// Answers with `resp`. Returns false if the callback panicked (the
    /// panic was caught).
    pub fn respond(mut self, resp: RaftCmdResponse) -> bool {
        match self.callback.take() {
            Some(cb) => invoke(cb, resp),
            None => true,
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(cb) = self.callback.take() {
            invoke(
                cb,
                err_response(Error::StoreStopped {
                    in_flight: self.proposed,
                }),
            );
        }
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("answered", &self.callback.is_none())
            .field("proposed", &self.proposed)
            .finish()
    }
}

/// Runs `cb`, catching a panic. Returns false if it panicked.
fn invoke(cb: Callback, resp: RaftCmdResponse) -> bool {
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || cb(resp))).is_ok();
    if !ok {
        CALLBACK_PANICS.fetch_add(1, Ordering::Relaxed);
    }
    ok
}

/// A client command and where its answer goes.
pub struct RaftCommand {
    /// The request.
    pub request: RaftCmdRequest,
    /// Answered once with the response.
    pub callback: Responder,
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
    /// A hibernation message (a leader's request to sleep, a follower's
    /// request to wake, a liveness event).
    Sleep(SleepMsg),
    /// Report the peer's [`RegionStatus`] to the callback (inspection;
    /// changes nothing, wakes nothing).
    Inspect(Inspector),
    /// A step of a merge between this store's peers of two regions
    /// (boxed: rare and large).
    Merge(Box<MergeMsg>),
    /// How sending a snapshot to `to_peer` went (the snapshot worker).
    SnapshotStatus {
        /// The follower.
        to_peer: u64,
        /// Whether the follower's store has the whole file.
        ok: bool,
    },
    /// The transport could not take an append to `to_peer` (its store is
    /// unreachable): the leader probes it instead of pipelining.
    Unreachable {
        /// The follower.
        to_peer: u64,
    },
}

/// A merge step one region's peer tells another's on the same store
/// (admin.md §1.2).
#[derive(Debug)]
pub enum MergeMsg {
    /// To the target: a source peer whose PrepareMerge applied asks the
    /// target to commit the merge. Its leader proposes `req` (CommitMerge)
    /// under the target epoch the source recorded, `target_epoch`.
    AskCommit {
        /// The CommitMerge to propose.
        req: CommitMergeRequest,
        /// The target's epoch when the merge was prepared.
        target_epoch: RegionEpoch,
    },
    /// To the source: the target's apply side waits for this store's
    /// source peer to apply through `req.commit`; the peer appends the
    /// carried entries it lacks to its log.
    CatchUpLogs {
        /// The waiting target.
        target_id: u64,
        /// The CommitMerge, with the source's log tail.
        req: CommitMergeRequest,
    },
    /// To the source: the target refused the merge prepared at `commit`
    /// for good (it applied a CommitMerge under another epoch, and never
    /// one that succeeded): the source's leader may roll it back.
    Refused {
        /// The PrepareMerge's index.
        commit: u64,
    },
    /// To a target: a source's leader on this store checks that the
    /// target of a client's PrepareMerge is exactly this peer's region
    /// before it proposes (admin.md §1.2, `check_merge_proposal`).
    CheckTarget {
        /// The source region.
        source_id: u64,
        /// The PrepareMerge.
        request: Box<RaftCmdRequest>,
        /// The client's answer.
        callback: Responder,
    },
    /// To the source: the target checked out; propose the PrepareMerge.
    TargetChecked {
        /// The PrepareMerge.
        request: Box<RaftCmdRequest>,
        /// The client's answer.
        callback: Responder,
    },
    /// To a target: this store's peer of `source`, merged into it
    /// elsewhere at `version`, missed it and waits (see `Superseded`).
    SourceWaits {
        /// The merged-away region.
        source: u64,
        /// The target's version after the merge.
        version: u64,
    },
    /// To a source that was merged away elsewhere and missed it: this
    /// store's target peer has a snapshot past the merge to apply, or is
    /// past it already, or there is none; the source is destroyed (its
    /// data cleared: nothing here needs it).
    Superseded {
        /// The target region.
        target_id: u64,
    },
    /// To a source peer a target's apply side asked to catch up: that
    /// target gave its waiting CommitMerge up (its peer was removed, or a
    /// snapshot past the merge came), so it no longer waits for this peer.
    TargetGaveUp {
        /// The target region.
        target_id: u64,
    },
    /// To a region that owns part of the range a newer snapshot of
    /// another region here needs (the snapshot was refused for it): a
    /// sleeping peer wakes. It may have been merged away while it slept
    /// apart from its peers, its leader gone with the merge; only awake
    /// does it reach its peers and hear so (see `Peer::on_merged_elsewhere`).
    RangeWanted,
    /// To the source: the target absorbed it here (its tombstone is
    /// written); the peer is destroyed, its data now the target's.
    Merged {
        /// The region the target became.
        target: Region,
    },
}

/// Takes a peer's [`RegionStatus`]; runs on a store thread.
pub type InspectCallback = Box<dyn FnOnce(RegionStatus) + Send>;

/// An [`InspectCallback`] in a peer message.
pub struct Inspector(pub InspectCallback);

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inspector")
    }
}

/// What a peer reports about its region: the membership and range it
/// knows, its raft progress, and its state on the store.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionStatus {
    /// The region as this peer knows it (range, epoch, peers and roles).
    pub region: Region,
    /// This store's peer.
    pub peer: metapb::Peer,
    /// The leader this peer knows, if any.
    pub leader: Option<metapb::Peer>,
    /// The raft term this peer is at.
    pub term: u64,
    /// Its commit index.
    pub commit_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// Its last log index.
    pub last_index: u64,
    /// Its truncated (compacted) log index.
    pub truncated_index: u64,
    /// Whether it hibernates.
    pub hibernating: bool,
    /// Whether a received snapshot is being written into the engine.
    pub applying_snapshot: bool,
}

/// A message to the store (control) FSM.
#[derive(Debug)]
pub enum StoreMsg {
    /// One base tick of the store clock.
    Tick,
    /// A raft message for a region this store has no peer of.
    RaftMessage(Box<RaftMessage>),
    /// Liveness woke these regions: deliver each its message, in bounded
    /// chunks per round.
    WakeRegions(Vec<(u64, SleepMsg)>),
    /// Go on delivering the wakes left from the last round.
    ContinueWakes,
}

/// A proposal waiting for its entry to apply.
pub struct Proposal {
    /// The entry's index.
    pub index: u64,
    /// The term the entry was proposed in; an entry applied at `index` with
    /// another term means the proposal was lost (`StaleCommand`).
    pub term: u64,
    /// Answered once with the response.
    pub callback: Responder,
    /// When it was proposed (for the command latency metric).
    pub proposed_at: std::time::Instant,
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
    /// Proposals in (term, index) order, each at most the last entry's
    /// (term, index): every one is either answered by an entry of this
    /// task or was overwritten (`StaleCommand`).
    pub proposals: Vec<Proposal>,
}

/// A received snapshot for a region's apply delegate to write into the
/// engine (its peer persisted the region as `Applying`).
#[derive(Debug, Clone)]
pub struct SnapshotTask {
    /// The region as of the snapshot.
    pub region: Region,
    /// The snapshot's index.
    pub index: u64,
    /// The snapshot's term.
    pub term: u64,
    /// The received file.
    pub path: PathBuf,
    /// The range the peer held before, when the snapshot moves its bounds
    /// (cleared too); `None`: the delegate's region is the old range.
    pub old: Option<Region>,
}

/// A removed peer's last task for its apply delegate.
#[derive(Debug, Clone)]
pub struct DestroyTask {
    /// The region's tombstone (it names the removed peer).
    pub tombstone: Region,
    /// The peer's last log index (its log is deleted up to it).
    pub last_index: u64,
    /// The ranges the peer held in the store's range index (its region's,
    /// or a snapshot's reservation): their data goes, and the index lets
    /// them go only once that is written. Empty: it held none.
    pub held: Vec<Region>,
    /// The region was merged into another here: its tombstone is written
    /// (with the merge) and its data is the target's; only its log and
    /// states go.
    pub merged: bool,
}

/// A message to an apply delegate.
#[derive(Debug)]
pub enum ApplyMsg {
    /// Apply these entries.
    Apply(ApplyTask),
    /// Write this snapshot (after every entry queued before it). Boxed,
    /// as `Destroy`: every mailbox slot is as large as the largest
    /// message, and these are rare.
    Snapshot(Box<SnapshotTask>),
    /// The peer is destroyed: after every entry queued before, write the
    /// region's tombstone and delete its log, states and data; then stop.
    Destroy(Box<DestroyTask>),
    /// To a target waiting in a CommitMerge: this store's peer of the
    /// source region `source_id` has applied the PrepareMerge.
    MergeSourceReady {
        /// The source region.
        source_id: u64,
    },
    /// From a removed peer whose handed-over entries are not all applied:
    /// if the delegate waits at a CommitMerge, it gives up the wait (and
    /// every entry after it) so the peer can be destroyed; else nothing.
    AbandonMerge,
}

/// What the apply side reports back to the peer.
#[derive(Debug, Clone)]
pub struct ApplyRes {
    /// The peer whose apply delegate sent it, to the region's mailbox (a
    /// result of a destroyed peer's delegate never reaches a newer peer
    /// of the region). No region id: every peer mailbox slot is as large
    /// as the largest message.
    pub peer_id: u64,
    /// The apply state now persisted with the applied data.
    pub apply_state: RaftApplyState,
    /// What the admin commands among the applied entries did, in log order.
    pub results: Vec<ExecResult>,
}

/// What an applied admin command changed, for the peer to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecResult {
    /// CompactLog: the log is truncated up to `truncated` (the apply state
    /// says so; the peer deletes the entries from the engine after it).
    CompactLog {
        /// The new truncated state.
        truncated: RaftTruncatedState,
    },
    /// A ChangePeer applied: the region's membership is `region` (this
    /// store's peer may be gone from it); the peer applies `cc` to its
    /// raft group.
    ChangePeer {
        /// The change, for the raft group.
        cc: ConfChangeV2,
        /// The region after it.
        region: Region,
    },
    /// A BatchSplit applied (boxed: rare and large).
    Split(Box<SplitResult>),
    /// A PrepareMerge applied: the region is `Merging` (boxed: rare).
    PrepareMerge(Box<(Region, MergeState)>),
    /// A CommitMerge applied: the region absorbed `source` and is
    /// `region` now (boxed: rare).
    CommitMerge(Box<CommitMergeResult>),
    /// A CommitMerge of the source region `source_id`, prepared at
    /// `commit`, was refused for good here (see `MergeMsg::Refused`).
    MergeRefused {
        /// The source region.
        source_id: u64,
        /// The source's PrepareMerge index.
        commit: u64,
    },
    /// The CommitMerge at `index` waits until this store's source peer
    /// has applied its PrepareMerge: nothing from it on applies meanwhile.
    MergeWaiting {
        /// The CommitMerge's index.
        index: u64,
        /// Whether this store has a peer of the source to catch up (if
        /// not, nothing can resume the wait: the peer asks its leader for
        /// a snapshot past the merge).
        source_here: bool,
    },
    /// A RollbackMerge applied: the region is `Normal` again at this
    /// region (boxed: rare).
    RollbackMerge(Box<Region>),
    /// A snapshot was written into the engine: the region is `Normal` at
    /// `index`.
    SnapshotApplied {
        /// The snapshot's index.
        index: u64,
        /// How long the write took (microseconds).
        micros: u64,
    },
}

/// What a CommitMerge applied.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitMergeResult {
    /// The target after it.
    pub region: Region,
    /// The source it absorbed, as it was when merging.
    pub source: Region,
}

/// What a split applied: the parent's new region, the new regions in key
/// order, and for each whether this store writes its states (and so
/// registers its peer).
#[derive(Debug, Clone, PartialEq)]
pub struct SplitResult {
    /// The parent region after the split.
    pub derived: Region,
    /// The new regions.
    pub new: Vec<Region>,
    /// `created[i]`: this store creates the peer of `new[i]`.
    pub created: Vec<bool>,
}
