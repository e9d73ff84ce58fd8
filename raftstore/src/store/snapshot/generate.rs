//! Step 1: generating a region's snapshot file on the leader, off the
//! poller threads.

use std::sync::Arc;

use flotilla_engine::{Cf, Engine, keys};
use flotilla_proto::eraftpb::{Entry, Snapshot, SnapshotMetadata};
use flotilla_proto::raft_serverpb::{PeerState, RaftApplyState, RegionLocalState, SnapshotMeta};
use parking_lot::Mutex;
use prost::Message as _;

use super::{SnapError, SnapManager, SnapWriter};
use crate::store::peer_storage::conf_state_from_region;

/// Where the snapshot worker leaves a generated snapshot for its peer's
/// storage to pick up (`None` while it is being generated).
#[derive(Debug, Default)]
pub struct GenSlot(Mutex<Option<Result<Snapshot, SnapError>>>);

impl GenSlot {
    /// Takes the outcome, if generation finished.
    pub fn take(&self) -> Option<Result<Snapshot, SnapError>> {
        self.0.lock().take()
    }

    /// Leaves the outcome.
    pub fn put(&self, outcome: Result<Snapshot, SnapError>) {
        *self.0.lock() = Some(outcome);
    }
}

/// A shared [`GenSlot`].
pub type SharedGenSlot = Arc<GenSlot>;

/// Generates region `region_id`'s snapshot from one engine snapshot: its
/// applied index and term, its region (the conf state is derived from it)
/// and every key-value of its range, into the manager's generated file
/// for that index. Older generated files of the region are removed.
///
/// The snapshot carries the region's records of its removed peers (see
/// `keys::removed_peer_key`): a peer it initializes refuses their ids as
/// a leader, and tells them they are gone, as every other replica does.
///
/// # Errors
/// [`SnapError::NotReady`] if the region is not `Normal` (a snapshot being
/// applied, or gone); engine and file errors.
pub fn generate_snapshot(
    engine: &Engine,
    mgr: &SnapManager,
    region_id: u64,
) -> Result<Snapshot, SnapError> {
    let snap = engine.snapshot();
    let not_ready = |why: &str| SnapError::NotReady {
        region_id,
        why: why.to_owned(),
    };
    let state: RegionLocalState = snap
        .get_msg(Cf::Raft, &keys::region_state_key(region_id))?
        .ok_or_else(|| not_ready("no region state"))?;
    if state.state() != PeerState::Normal {
        return Err(not_ready("the region is not in the Normal state"));
    }
    let region = state.region.ok_or_else(|| not_ready("no region"))?;
    let apply: RaftApplyState = snap
        .get_msg(Cf::Raft, &keys::apply_state_key(region_id))?
        .ok_or_else(|| not_ready("no apply state"))?;
    let index = apply.applied_index;
    let truncated = apply.truncated_state.unwrap_or_default();
    let term = if index == truncated.index {
        truncated.term
    } else {
        let entry: Entry = snap
            .get_msg(Cf::Raft, &keys::raft_log_key(region_id, index))?
            .ok_or_else(|| not_ready("the applied entry is not in the log"))?;
        entry.term
    };
    let removed_peers = crate::store::removed::read_all(&snap, region_id)?;
    let path = mgr.gen_path(region_id, term, index);
    let mut out = SnapWriter::create(&path)?;
    let start = keys::data_key(&region.start_key);
    let end = keys::data_end_key(&region.end_key);
    let mut failed = None;
    snap.scan(Cf::Default, &start, &end, |k, v| {
        // Data keys carry a one-byte prefix; the file holds user keys.
        match out.put(k.get(1..).unwrap_or_default(), v) {
            Ok(()) => std::ops::ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                std::ops::ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let info = out.finish()?;
    for old in mgr.older_generated(region_id, &path) {
        let _ = std::fs::remove_file(old);
    }
    let meta = SnapshotMeta {
        region: Some(region.clone()),
        size: info.size,
        checksum: info.checksum,
        kv_count: info.kv_count,
        removed_peers,
    };
    Ok(Snapshot {
        data: meta.encode_to_vec().into(),
        metadata: Some(SnapshotMetadata {
            conf_state: Some(conf_state_from_region(&region)),
            index,
            term,
        }),
    })
}
