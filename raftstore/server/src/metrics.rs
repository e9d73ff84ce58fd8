//! Counters of the network layer (monotonic; a metrics exporter reads
//! them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::raft_cmdpb::{RaftCmdRequest, RaftCmdResponse, admin_request, error};
use parking_lot::Mutex;

/// What a store's [`crate::GrpcTransport`] sent and dropped.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    /// Raft messages queued for the wire.
    pub messages_sent: AtomicU64,
    /// Batches queued for the wire (one per remote store per flush, more
    /// for a flush over the batch budget).
    pub batches_sent: AtomicU64,
    /// Messages dropped because their store's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Messages dropped because their store is cut off by the test hook.
    pub dropped_blocked: AtomicU64,
    /// Messages dropped because their connection was down.
    pub dropped_disconnected: AtomicU64,
    /// Streams opened to other stores (first connections and reconnects).
    pub connects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Snapshot streams that the receiver took.
    pub snapshots_sent: AtomicU64,
    /// Snapshot streams that failed or were refused.
    pub snapshot_failures: AtomicU64,
}

/// What a store's [`crate::StoreServer`] received and refused.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Batches received and handed on.
    pub batches_received: AtomicU64,
    /// Raft messages handed to the store.
    pub messages_received: AtomicU64,
    /// Messages dropped for naming another store as their destination.
    pub messages_misaddressed: AtomicU64,
    /// Streams refused: another cluster, another store, or malformed.
    pub streams_refused: AtomicU64,
    /// Snapshot streams the store took.
    pub snapshots_received: AtomicU64,
    /// Snapshot streams the store refused or that broke.
    pub snapshot_failures: AtomicU64,
    /// Client commands answered with an error, by error kind (a bounded
    /// set: the kinds of `raft_cmdpb.Error`).
    pub command_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Admin commands answered, by (command, `ok` or error kind).
    pub admin_commands: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl ServerMetrics {
    /// Counts the answer `resp` to the client command `req`.
    pub(crate) fn count_command(&self, req_admin: Option<&'static str>, resp: &RaftCmdResponse) {
        let kind = resp
            .header
            .as_ref()
            .and_then(|h| h.error.as_ref())
            .map(|e| error_kind(e.detail.as_ref()));
        if let Some(kind) = kind {
            *self.command_errors.lock().entry(kind).or_default() += 1;
        }
        if let Some(cmd) = req_admin {
            *self
                .admin_commands
                .lock()
                .entry((cmd, kind.unwrap_or("ok")))
                .or_default() += 1;
        }
    }
}

/// The label of an error kind.
fn error_kind(detail: Option<&error::Detail>) -> &'static str {
    use error::Detail as D;
    match detail {
        None => "other",
        Some(D::NotLeader(_)) => "not_leader",
        Some(D::RegionNotFound(_)) => "region_not_found",
        Some(D::KeyNotInRegion(_)) => "key_not_in_region",
        Some(D::EpochNotMatch(_)) => "epoch_not_match",
        Some(D::ServerIsBusy(_)) => "server_is_busy",
        Some(D::StaleCommand(_)) => "stale_command",
        Some(D::ProposalDropped(_)) => "proposal_dropped",
        Some(D::StoreNotMatch(_)) => "store_not_match",
        Some(D::Timeout(_)) => "timeout",
        Some(D::RaftEntryTooLarge(_)) => "raft_entry_too_large",
        Some(D::StoreStopped(_)) => "store_stopped",
        Some(D::ApplyFailed(_)) => "apply_failed",
        Some(D::EngineError(_)) => "engine_error",
        Some(D::InvalidRequest(_)) => "invalid_request",
        Some(D::Admin(_)) => "admin_refused",
    }
}

/// The label of a request's admin command, if it is one.
pub(crate) fn admin_kind(req: &RaftCmdRequest) -> Option<&'static str> {
    use admin_request::Cmd as C;
    Some(match req.admin_request.as_ref()?.cmd.as_ref()? {
        C::ChangePeer(_) => "change_peer",
        C::ChangePeerV2(_) => "change_peer_v2",
        C::BatchSplit(_) => "batch_split",
        C::PrepareMerge(_) => "prepare_merge",
        C::CommitMerge(_) => "commit_merge",
        C::RollbackMerge(_) => "rollback_merge",
        C::TransferLeader(_) => "transfer_leader",
        C::CompactLog(_) => "compact_log",
    })
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
