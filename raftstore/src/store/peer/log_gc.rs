//! Raft log GC on the peer (admin.md phase B, conservative mode): an awake
//! leader checks its log every `raft_log_gc_tick_ticks` ticks and proposes
//! a CompactLog up to what every peer matched and it applied
//! (`admin::compact_decision`); every replica applies it by moving its
//! truncated state, and then deletes the compacted entries from the engine
//! in its next raft write (after the apply write, in one WAL).

use flotilla_proto::raft_cmdpb::{
    AdminRequest, CompactLogRequest, RaftCmdRequest, RaftRequestHeader, admin_request,
};
use prost::Message as _;

use super::Peer;
use crate::raft::Storage as _;
use crate::raft::tracker::ProgressState;
use crate::store::admin::{CompactDecision, CompactInputs, compact_decision};
use crate::store::config::Config;

impl Peer {
    /// `elapsed` leader ticks of the log GC clock: checks the log when it
    /// is due.
    pub(super) fn tick_log_gc(&mut self, cfg: &Config, elapsed: u64) {
        if cfg.raft_log_gc_tick_ticks == 0 || !self.is_leader() {
            return;
        }
        self.log_gc.ticks = self
            .log_gc
            .ticks
            .saturating_add(u32::try_from(elapsed).unwrap_or(u32::MAX));
        if (self.log_gc.ticks as usize) < cfg.raft_log_gc_tick_ticks {
            return;
        }
        self.log_gc.ticks = 0;
        self.check_log(cfg);
    }

    /// A leader's log check: proposes a CompactLog if the decision says so
    /// and no proposal up to that index is pending already.
    fn check_log(&mut self, cfg: &Config) {
        let raft = &self.raft.raft;
        let Ok(first_index) = raft.raft_log().store.first_index() else {
            return;
        };
        let Some(replicated_index) = raft.prs().iter().map(|(_, pr)| pr.matched).min() else {
            return;
        };
        let inputs = CompactInputs {
            first_index: first_index.max(self.log_gc.proposed + 1),
            applied_index: self.raft.store().applied_index(),
            replicated_index,
            skipped_checks: self.log_gc.skipped,
            threshold: cfg.raft_log_gc_threshold,
            reserve_checks: cfg.raft_log_gc_reserve_checks,
            count_limit: cfg.raft_log_gc_count_limit,
            snapshot_floor: raft
                .prs()
                .iter()
                .filter(|(_, pr)| pr.state == ProgressState::Snapshot)
                .map(|(_, pr)| pr.pending_snapshot)
                .min(),
        };
        let CompactDecision::Compact { index } = compact_decision(&inputs) else {
            self.log_gc.skipped = self.log_gc.skipped.saturating_add(1);
            return;
        };
        let Ok(term) = raft.raft_log().term(index) else {
            return;
        };
        let region = self.region();
        let request = RaftCmdRequest {
            header: Some(RaftRequestHeader {
                region_id: region.id,
                region_epoch: region.region_epoch,
                ..Default::default()
            }),
            requests: Vec::new(),
            admin_request: Some(AdminRequest {
                cmd: Some(admin_request::Cmd::CompactLog(CompactLogRequest {
                    compact_index: index,
                    compact_term: term,
                })),
            }),
        };
        match self.raft.propose(Vec::new(), request.encode_to_vec()) {
            Ok(()) => {
                self.log_gc.proposed = index;
                self.log_gc.skipped = 0;
            }
            Err(e) => slog::debug!(self.logger, "compact log not proposed"; "err" => %e),
        }
    }
}
