//! What the apply side reports the admin entries did, acted on by the
//! peer: a compaction (the log deletes itself, see `log_gc`), a snapshot
//! written, a membership change (applied to the raft group; a peer
//! removed from its region is destroyed by its poller, see
//! [`Peer::is_removed`]).

use flotilla_engine::{Cf, WriteBatch, keys};
use flotilla_proto::eraftpb::ConfChange;
use flotilla_proto::metapb::Region;

use super::Peer;
use crate::store::msg::ExecResult;

impl Peer {
    /// Acts on what the applied admin commands did, in log order.
    pub(super) fn on_exec_results(&mut self, results: Vec<ExecResult>) {
        for r in results {
            match r {
                ExecResult::CompactLog { truncated } => {
                    slog::debug!(self.logger, "raft log compacted"; "index" => truncated.index);
                }
                ExecResult::SnapshotApplied { index, .. } => {
                    let store = &mut self.raft.raft.raft_log_mut().store;
                    if store.applying_snapshot().is_some_and(|(i, _)| i == index) {
                        store.snapshot_applied();
                    }
                }
                ExecResult::ChangePeer { cc, region } => self.on_change_peer(&cc, region),
            }
        }
    }

    /// A membership change applied: the raft group takes it, the peer's
    /// region and its own role follow; a peer no longer in the region is
    /// marked removed.
    fn on_change_peer(&mut self, cc: &ConfChange, region: Region) {
        if let Err(e) = self.raft.apply_conf_change(cc) {
            // The apply side checked the change against the region, which
            // mirrors the raft configuration: a bug, logged loudly.
            slog::error!(self.logger, "conf change not applied to raft"; "err" => %e);
        }
        slog::info!(self.logger, "membership changed";
            "conf_ver" => region.region_epoch.map_or(0, |e| e.conf_ver),
            "peers" => ?region.peers.iter().map(|p| (p.id, p.store_id)).collect::<Vec<_>>());
        match region.peers.iter().find(|p| p.id == self.meta.id) {
            Some(me) => self.meta = *me,
            None => self.removed = true,
        }
        self.raft.raft.raft_log_mut().store.set_region(region);
    }

    /// Whether a conf change removed this peer from its region (the apply
    /// side wrote its tombstone): its poller destroys it.
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Puts the deletion of everything this removed peer kept into `wb`:
    /// its raft log, raft and apply states, and its region's data (the
    /// apply side applies nothing for it any more). The region state, a
    /// tombstone naming this peer, stays.
    pub fn clear_for_destroy(&self, wb: &mut WriteBatch) {
        let region = self.region();
        let last = self.raft.store().raft_state().last_index;
        let (lo, hi) = keys::raft_log_range(region.id, 0, last + 1);
        let _ = wb.delete_range(Cf::Raft, &lo, &hi);
        wb.delete(Cf::Raft, &keys::raft_state_key(region.id));
        wb.delete(Cf::Raft, &keys::apply_state_key(region.id));
        let start = keys::data_key(&region.start_key);
        let end = keys::data_end_key(&region.end_key);
        if start < end {
            let _ = wb.delete_range(Cf::Default, &start, &end);
        }
    }
}
