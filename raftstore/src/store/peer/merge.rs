//! The peer's side of a merge (admin.md §1.2; the apply side's steps are
//! in `apply::merge`).
//!
//! Lifecycle, from the source's point of view:
//! 1. its leader checks a client's PrepareMerge ([`Peer::check_prepare_merge`])
//!    and proposes it; from then on it serves no lease read and takes no
//!    command;
//! 2. when the PrepareMerge applies, every source peer (leader or not)
//!    asks this store's target peer to commit (`MergeMsg::AskCommit`, with
//!    the log tail a lagging replica may lack), again every
//!    `merge_check_ticks` until the merge ends; the target's leader
//!    proposes the CommitMerge;
//! 3. where a target replica applies it before this store's source did,
//!    the source appends the carried tail to its log
//!    (`MergeMsg::CatchUpLogs`) and tells the waiting target once its
//!    PrepareMerge applied;
//! 4. the target's apply writes both regions' states; this store's source
//!    peer is destroyed keeping its data (`MergeMsg::Merged`);
//! 5. or the target refuses the merge for good (`MergeMsg::Refused`, a
//!    proof; see `apply::merge`) and the source's leader proposes a
//!    RollbackMerge: the region serves again, `version` bumped.
//!
//! A restarted peer finds its region `Merging` on disk and goes on at
//! step 2. Log GC, splits, membership changes, snapshots and hibernation
//! are off while a region merges.

use flotilla_engine::{Cf, keys};
use flotilla_proto::eraftpb::Entry;
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{
    AdminRequest, CommitMergeRequest, PrepareMergeRequest, RaftCmdRequest, RaftRequestHeader,
    RollbackMergeRequest, admin_request,
};
use flotilla_proto::raft_serverpb::{MergeState, PeerState, RaftMessage, RegionLocalState};
use prost::Message as _;

use super::Peer;
use crate::store::admin::{AdminError, check_merge_regions, check_merge_tail};
use crate::store::config::Config;
use crate::store::error::{Error, Result};
use crate::store::msg::{ApplyMsg, CommitMergeResult, MergeMsg, Responder};
use crate::store::util::{failpoint_on_store, live_version};

/// Share of `entry_max_size` the log tail a merge carries may take (the
/// CommitMerge carrying it is one entry; TiKV's 90 %).
const MERGE_TAIL_SHARE_PERCENT: u64 = 90;

/// A message of a merge to another region's peer or apply delegate on
/// this store, for the poller to route.
#[derive(Debug)]
pub enum MergeOut {
    /// To region `.0`'s peer.
    Peer(u64, MergeMsg),
    /// To region `.0`'s apply delegate.
    Apply(u64, ApplyMsg),
    /// A message to another store.
    Remote(Box<RaftMessage>),
    /// `source`, merged away elsewhere into `target` (as the merge left
    /// it), is destroyed if this store has no peer of `target` and none
    /// can come by a split here; else the target's peer is asked whether
    /// it is past the merge.
    AskTarget {
        /// The merged-away region.
        source: u64,
        /// The region it went into, as the merge left it (boxed: most
        /// messages are small).
        target: Box<Region>,
    },
}

/// A peer's merge bookkeeping (boxed in `Peer`: most peers never merge).
#[derive(Debug, Default)]
pub(super) struct MergeCtx {
    /// The index of a PrepareMerge this peer proposed as leader, until it
    /// applies (or another entry takes its index): no lease read and no
    /// command meanwhile. 0: none.
    prepare_index: u64,
    /// The target refused this region's merge for good: its leader rolls
    /// the merge back.
    refused: bool,
    /// The index of a RollbackMerge this peer proposed, until it applies.
    rollback_index: u64,
    /// The target region whose apply side waits for this peer to apply
    /// the PrepareMerge.
    waiting_target: Option<u64>,
    /// Ticks since the last merge check, and the ticks between two.
    ticks: u64,
    interval: u64,
    /// CommitMerges this peer proposed as the target's leader, not yet
    /// applied: (source region, its PrepareMerge index, entry index).
    committing: Vec<(u64, u64, u64)>,
    /// The region was merged into another here: the peer is destroyed and
    /// its data kept.
    merged: bool,
    /// Messages for the poller to route (taken each round).
    out: Vec<MergeOut>,
    /// The index of a CommitMerge the apply side waits at (its source
    /// has not caught up here); the peer holds its campaigns until it is
    /// applied (0: none).
    apply_waits_at: u64,
    /// The source of that CommitMerge has no peer here: nothing can
    /// resume the wait, so this peer asks its leader for a snapshot past
    /// it, and admits one although entries wait.
    snapshot_wanted: bool,
    /// The last index handed to the apply side when this removed peer
    /// asked it to give up a waiting CommitMerge (0: never asked).
    abandon_asked: u64,
}

impl MergeCtx {
    /// Nothing of a merge is under way at this peer (`applied`: its
    /// applied index).
    pub(super) fn is_idle(&self, applied: u64) -> bool {
        self.committing
            .iter()
            .all(|&(_, _, index)| index <= applied)
            && self.out.is_empty()
            && self.waiting_target.is_none()
    }
}

impl Peer {
    fn merge_ctx(&mut self) -> &mut MergeCtx {
        self.merge.get_or_insert_default()
    }

    /// Whether the region merges: `Merging` here, or a PrepareMerge this
    /// peer proposed is not applied yet.
    pub fn is_merging(&self) -> bool {
        self.raft.store().merge_state().is_some()
            || self
                .merge
                .as_ref()
                .is_some_and(|m| m.prepare_index > self.raft.store().applied_index())
    }

    /// Refuses a command while the region merges.
    ///
    /// # Errors
    /// `RegionMerging`.
    pub(super) fn check_not_merging(&self) -> Result<()> {
        if self.is_merging() {
            return Err(Error::Admin(AdminError::RegionMerging {
                region_id: self.region_id(),
            }));
        }
        Ok(())
    }

    /// Whether this peer was destroyed by a merge (its data kept).
    pub(super) fn merged_away(&self) -> bool {
        self.merge.as_ref().is_some_and(|m| m.merged)
    }

    /// The leader's checks of a PrepareMerge before it proposes it: not
    /// merging already, no split or membership change pending, regions
    /// fit to merge ([`check_merge_regions`]), every peer within
    /// `merge_max_log_gap` of the leader's log with no admin command in
    /// the tail some peer lacks ([`check_merge_tail`]). Returns the
    /// request to propose, with the index from which the target carries
    /// the log (`min_index`) filled in.
    pub(super) fn check_prepare_merge(
        &self,
        cfg: &Config,
        request: &RaftCmdRequest,
        req: &PrepareMergeRequest,
    ) -> Result<Vec<u8>> {
        self.check_not_merging()?;
        self.check_no_pending_split()?;
        let raft = &self.raft.raft;
        let applied = self.raft.store().applied_index();
        if raft.pending_conf_index() > applied {
            return Err(Error::Admin(AdminError::ConfChangePending {
                pending_index: raft.pending_conf_index(),
            }));
        }
        let target = req
            .target
            .as_ref()
            .ok_or_else(|| Error::InvalidRequest("prepare_merge without a target".into()))?;
        check_merge_regions(self.region(), target).map_err(Error::Admin)?;
        let log = raft.raft_log();
        let last = log.last_index();
        let min_matched = raft
            .prs()
            .iter()
            .map(|(id, pr)| if id == self.meta.id { last } else { pr.matched })
            .min()
            .unwrap_or(0);
        let gap_error = || {
            Error::Admin(AdminError::MergeLogGapTooLarge {
                min_matched,
                last_index: last,
                max_gap: cfg.merge_max_log_gap,
            })
        };
        if min_matched == 0
            || last - min_matched > cfg.merge_max_log_gap
            || min_matched + 1 < log.first_index()
        {
            return Err(gap_error());
        }
        let tail: Vec<Entry> = log
            .slice(min_matched + 1, last + 1, None)
            .map_err(|_| gap_error())?;
        let limit = cfg.entry_max_size / 100 * MERGE_TAIL_SHARE_PERCENT;
        check_merge_tail(&tail, limit).map_err(Error::Admin)?;
        let mut request = request.clone();
        if let Some(admin_request::Cmd::PrepareMerge(r)) =
            request.admin_request.as_mut().and_then(|a| a.cmd.as_mut())
        {
            r.min_index = min_matched + 1;
        }
        Ok(request.encode_to_vec())
    }

    /// Sends a client's PrepareMerge to this store's peer of its target,
    /// which checks the target is exactly its region (a target the store
    /// does not have, or under another epoch, could never commit: the
    /// source would stay merging until the target proved it refused).
    pub(super) fn check_merge_target(&mut self, request: RaftCmdRequest, callback: Responder) {
        let target = match request.admin_request.as_ref().and_then(|a| a.cmd.as_ref()) {
            Some(admin_request::Cmd::PrepareMerge(req)) => req.target.as_ref().map_or(0, |t| t.id),
            _ => 0,
        };
        let source_id = self.region_id();
        self.merge_ctx().out.push(MergeOut::Peer(
            target,
            MergeMsg::CheckTarget {
                source_id,
                request: Box::new(request),
                callback,
            },
        ));
    }

    /// A source's leader here asks whether a PrepareMerge's target is this
    /// peer's region, exactly.
    fn on_check_target(
        &mut self,
        source_id: u64,
        request: Box<RaftCmdRequest>,
        callback: Responder,
    ) {
        let asked = match request.admin_request.as_ref().and_then(|a| a.cmd.as_ref()) {
            Some(admin_request::Cmd::PrepareMerge(req)) => req.target.as_ref(),
            _ => None,
        };
        let same = self.raft.store().is_initialized()
            && !self.removed
            && asked.is_some_and(|t| t == self.region());
        if !same {
            callback.respond(crate::store::util::err_response(Error::Admin(
                AdminError::MergeTargetMismatch {
                    target: self.region_id(),
                },
            )));
            return;
        }
        self.merge_ctx().out.push(MergeOut::Peer(
            source_id,
            MergeMsg::TargetChecked { request, callback },
        ));
    }

    /// Records the index of the PrepareMerge just proposed.
    pub(super) fn note_prepare_merge_proposed(&mut self, index: u64) {
        self.merge_ctx().prepare_index = index;
        self.lease.expire();
    }

    /// A PrepareMerge applied: the region is `Merging`; the target is
    /// asked to commit, and a target waiting here hears this peer is
    /// ready.
    pub(super) fn on_prepare_merge(&mut self, region: Region, state: MergeState) {
        slog::info!(self.logger, "region merging";
            "target" => state.target.as_ref().map_or(0, |t| t.id), "commit" => state.commit);
        let store = &mut self.raft.raft.raft_log_mut().store;
        store.set_region(region);
        store.set_merge_state(Some(state));
        self.lease.expire();
        let region_id = self.region_id();
        let ctx = self.merge_ctx();
        ctx.prepare_index = 0;
        ctx.refused = false;
        ctx.ticks = 0;
        if let Some(target) = ctx.waiting_target.take() {
            ctx.out.push(MergeOut::Apply(
                target,
                ApplyMsg::MergeSourceReady {
                    source_id: region_id,
                },
            ));
        }
        self.ask_commit_merge();
    }

    /// Asks this store's target peer to commit the merge (its leader
    /// proposes; the others ignore it): every source peer asks, so the
    /// target's leader hears it wherever it is.
    fn ask_commit_merge(&mut self) {
        let Some(state) = self.raft.store().merge_state() else {
            return;
        };
        let Some(target) = state.target.as_ref() else {
            return;
        };
        let log = self.raft.raft.raft_log();
        let entries = match log.slice(
            state.min_index.max(log.first_index()),
            state.commit + 1,
            None,
        ) {
            Ok(e) => e,
            Err(e) => {
                slog::warn!(self.logger, "merge tail unreadable"; "err" => %e);
                return;
            }
        };
        let ask = MergeMsg::AskCommit {
            req: CommitMergeRequest {
                source: Some(self.region().clone()),
                commit: state.commit,
                entries,
            },
            target_epoch: target.region_epoch.unwrap_or_default(),
        };
        let target_id = target.id;
        slog::debug!(self.logger, "asking the target to commit the merge"; "target" => target_id);
        self.merge_ctx().out.push(MergeOut::Peer(target_id, ask));
    }

    /// A merge step from another region's peer or apply delegate here.
    pub fn on_merge_msg(&mut self, msg: MergeMsg) {
        match msg {
            MergeMsg::AskCommit { req, target_epoch } => {
                self.propose_commit_merge(req, target_epoch)
            }
            MergeMsg::CatchUpLogs { target_id, req } => self.on_catch_up_logs(target_id, &req),
            MergeMsg::Refused { commit } => {
                // Merged here already (the disk says so before this peer
                // heard): a refusal can only be a late, stale one.
                if self.removed || self.merged_away() || self.tombstoned_on_disk() {
                    return;
                }
                if self
                    .raft
                    .store()
                    .merge_state()
                    .is_some_and(|m| m.commit == commit)
                {
                    slog::info!(self.logger, "merge refused by its target: rolling back";
                        "commit" => commit);
                    self.merge_ctx().refused = true;
                    self.propose_rollback_merge();
                }
            }
            MergeMsg::SourceWaits { source, version } => self.on_source_waits(source, version),
            // The poller wakes the peer; nothing else to do.
            MergeMsg::RangeWanted => {}
            MergeMsg::CheckTarget {
                source_id,
                request,
                callback,
            } => self.on_check_target(source_id, request, callback),
            // Handled by the poller (it has the config).
            MergeMsg::TargetChecked { callback, .. } => {
                callback.respond(crate::store::util::err_response(Error::ProposalDropped(
                    "merge target check lost its way".into(),
                )));
            }
            MergeMsg::TargetGaveUp { target_id } => {
                let ctx = self.merge_ctx();
                if ctx.waiting_target == Some(target_id) {
                    ctx.waiting_target = None;
                }
            }
            MergeMsg::Superseded { target_id } => {
                let known = self
                    .store_meta
                    .lock()
                    .merged_into(self.region_id())
                    .is_some_and(|m| m.target == target_id);
                // A target here waits at its CommitMerge for this peer to
                // catch up: it needs this peer's data, whatever a
                // snapshot elsewhere says.
                let needed = self
                    .merge
                    .as_ref()
                    .is_some_and(|m| m.waiting_target.is_some());
                if known && !needed {
                    slog::info!(self.logger, "superseded by a snapshot past its merge: destroying";
                        "target" => target_id);
                    self.removed = true;
                }
            }
            MergeMsg::Merged { target } => {
                // The disk says so even before this peer heard its own
                // PrepareMerge applied (with several apply threads the
                // target may be first).
                let ours = self
                    .raft
                    .store()
                    .merge_state()
                    .and_then(|m| m.target.as_ref())
                    .is_some_and(|t| t.id == target.id)
                    || self.merged_on_disk_into(target.id);
                if ours {
                    slog::info!(self.logger, "merged into its target: destroying";
                        "target" => target.id);
                    self.merge_ctx().merged = true;
                    self.removed = true;
                }
            }
        }
    }

    /// The target's leader proposes a source's CommitMerge under the
    /// epoch the source recorded (a stale one too: the refusal then comes
    /// from the log, where every replica decides alike, and proves the
    /// source may roll back). One at a time per source.
    fn propose_commit_merge(
        &mut self,
        req: CommitMergeRequest,
        target_epoch: flotilla_proto::metapb::RegionEpoch,
    ) {
        if !self.is_leader() || crash_point_merge_commit_hold() {
            return;
        }
        let source_id = req.source.as_ref().map_or(0, |r| r.id);
        slog::debug!(self.logger, "asked to commit a merge";
            "source" => source_id, "commit" => req.commit);
        let applied = self.raft.store().applied_index();
        let ctx = self.merge_ctx();
        ctx.committing.retain(|&(_, _, index)| index > applied);
        if ctx
            .committing
            .iter()
            .any(|&(s, c, _)| s == source_id && c == req.commit)
        {
            return;
        }
        let commit = req.commit;
        let cmd = admin_request::Cmd::CommitMerge(req);
        if let Some(index) = self.propose_own_admin(target_epoch, cmd) {
            slog::info!(self.logger, "proposed merge commit"; "source" => source_id, "index" => index);
            self.merge_ctx().committing.push((source_id, commit, index));
        }
    }

    /// Proposes `cmd`, a merge step of the store's own (no client waits
    /// for it), under `epoch`. Returns its index if it entered the log.
    fn propose_own_admin(
        &mut self,
        epoch: flotilla_proto::metapb::RegionEpoch,
        cmd: admin_request::Cmd,
    ) -> Option<u64> {
        let request = RaftCmdRequest {
            header: Some(RaftRequestHeader {
                region_id: self.region_id(),
                peer: Some(self.meta),
                region_epoch: Some(epoch),
                ..Default::default()
            }),
            requests: Vec::new(),
            admin_request: Some(AdminRequest { cmd: Some(cmd) }),
        };
        let index = self.raft.raft.raft_log().last_index() + 1;
        let data = request.encode_to_vec();
        self.propose_with(Responder::new(Box::new(|_| {})), |raft| {
            raft.propose(Vec::new(), data)
        });
        self.broadcast_admin_commit(index - 1);
        (self.raft.raft.raft_log().last_index() == index).then_some(index)
    }

    /// A target's apply side waits for this peer to apply the merge's
    /// PrepareMerge: it is told at once if it has, else the carried log
    /// tail goes into this peer's log (entries it lacks, and the commit
    /// index: they are committed in the source's group) and it is told
    /// when the PrepareMerge applies.
    fn on_catch_up_logs(&mut self, target_id: u64, req: &CommitMergeRequest) {
        let region_id = self.region_id();
        if self
            .raft
            .store()
            .merge_state()
            .is_some_and(|m| m.commit == req.commit)
        {
            self.merge_ctx().out.push(MergeOut::Apply(
                target_id,
                ApplyMsg::MergeSourceReady {
                    source_id: region_id,
                },
            ));
            return;
        }
        self.merge_ctx().waiting_target = Some(target_id);
        // Failpoint: the source notes the target but never takes the tail
        // (as one whose log does not meet it).
        if failpoint_on_store("merge_catch_up_stalls", self.meta.store_id) {
            return;
        }
        let log = self.raft.raft.raft_log_mut();
        let committed = log.committed;
        let entries: Vec<Entry> = req
            .entries
            .iter()
            .filter(|e| e.index > committed)
            .cloned()
            .collect();
        let Some(first) = entries.first().map(|e| e.index) else {
            // Everything carried is committed here already: applying it
            // is only a matter of time.
            if req.commit > committed && req.commit <= log.last_index() {
                log.commit_to(req.commit);
            }
            return;
        };
        let prev = first - 1;
        let Ok(prev_term) = log.term(prev) else {
            slog::warn!(self.logger, "merge tail does not meet this peer's log";
                "first" => first, "last" => log.last_index());
            return;
        };
        let appended = log.maybe_append(prev, prev_term, req.commit, entries);
        slog::info!(self.logger, "caught up from the merge's tail";
            "target" => target_id, "commit" => req.commit, "appended" => ?appended);
    }

    /// Proposes the RollbackMerge once the target refused the merge (the
    /// leader only, one at a time).
    fn propose_rollback_merge(&mut self) {
        let Some(commit) = self.raft.store().merge_state().map(|m| m.commit) else {
            return;
        };
        let applied = self.raft.store().applied_index();
        if !self.is_leader()
            || !self
                .merge
                .as_ref()
                .is_some_and(|m| m.refused && m.rollback_index <= applied)
        {
            return;
        }
        let epoch = self.region().region_epoch.unwrap_or_default();
        let cmd = admin_request::Cmd::RollbackMerge(RollbackMergeRequest { commit });
        if let Some(index) = self.propose_own_admin(epoch, cmd) {
            self.merge_ctx().rollback_index = index;
        }
    }

    /// A RollbackMerge applied: the region serves again.
    pub(super) fn on_rollback_merge(&mut self, region: Region) {
        slog::info!(self.logger, "merge rolled back";
            "version" => region.region_epoch.map_or(0, |e| e.version));
        let store = &mut self.raft.raft.raft_log_mut().store;
        store.set_region(region);
        store.set_merge_state(None);
        // A target waiting for a later merge of this region, and this
        // peer's own duties as a target, stay.
        if let Some(m) = self.merge.as_mut() {
            m.prepare_index = 0;
            m.refused = false;
            m.rollback_index = 0;
        }
    }

    /// This region's state on disk, if it is a tombstone.
    fn tombstone_on_disk(&self) -> Option<RegionLocalState> {
        self.engine
            .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(self.region_id()))
            .ok()
            .flatten()
            .filter(|s| s.state() == PeerState::Tombstone)
    }

    /// Whether this region's state on disk is a tombstone.
    fn tombstoned_on_disk(&self) -> bool {
        self.tombstone_on_disk().is_some()
    }

    /// Whether this region's state on disk is a tombstone of its merge
    /// into region `target`.
    fn merged_on_disk_into(&self, target: u64) -> bool {
        self.tombstone_on_disk()
            .and_then(|s| s.merge_state)
            .and_then(|m| m.target)
            .is_some_and(|t| t.id == target)
    }

    /// A CommitMerge applied here (the target): the region grows, the
    /// store's range index follows, and this store's source peer is told
    /// to go.
    pub(super) fn on_commit_merge(&mut self, res: CommitMergeResult) {
        let CommitMergeResult { region, source } = res;
        slog::info!(self.logger, "region merged"; "source" => source.id,
            "version" => region.region_epoch.map_or(0, |e| e.version));
        let held = self.held_range();
        self.raft
            .raft
            .raft_log_mut()
            .store
            .set_region(region.clone());
        {
            let mut meta = self.store_meta.lock();
            meta.remove(&source);
            if self.reservation.is_none()
                && let Err(other) = meta.set(held.as_ref(), &region)
            {
                slog::error!(self.logger, "merged range overlaps another region";
                    "other" => other);
            }
        }
        let ctx = self.merge_ctx();
        ctx.committing.retain(|&(s, _, _)| s != source.id);
        ctx.out.push(MergeOut::Peer(
            source.id,
            MergeMsg::Merged { target: region },
        ));
    }

    /// A CommitMerge was refused for good here (the target): the source
    /// peer here hears it.
    pub(super) fn on_merge_refused(&mut self, source_id: u64, commit: u64) {
        let ctx = self.merge_ctx();
        ctx.committing
            .retain(|&(s, c, _)| !(s == source_id && c == commit));
        ctx.out
            .push(MergeOut::Peer(source_id, MergeMsg::Refused { commit }));
    }

    /// The merge check of a merging region, every `merge_check_ticks`:
    /// ask the target again, or (refused) roll back.
    pub(super) fn tick_merge(&mut self, cfg: &Config, elapsed: u64) {
        if self.raft.store().merge_state().is_none() {
            return;
        }
        let ctx = self.merge_ctx();
        ctx.interval = cfg.merge_check_ticks as u64;
        ctx.ticks = ctx.ticks.saturating_add(elapsed);
        if ctx.ticks < ctx.interval {
            return;
        }
        ctx.ticks = 0;
        let refused = ctx.refused;
        if self.is_leader() {
            // A follower's clock may not run while it hears its leader:
            // the leader has its peers check too (the target's leader may
            // be on their stores, or the proof of a refusal).
            self.send_merge_checks();
        }
        self.merge_check(refused);
    }

    /// One merge check at this peer: ask the target to commit, or (it
    /// refused) roll back as leader, or pass the refusal to the leader.
    fn merge_check(&mut self, refused: bool) {
        if !refused {
            self.ask_commit_merge();
        } else if self.is_leader() {
            self.propose_rollback_merge();
        } else {
            self.forward_refusal();
        }
    }

    /// The leader's note to each of its peers to make a merge check.
    fn send_merge_checks(&mut self) {
        let region = self.region().clone();
        let notes: Vec<MergeOut> = region
            .peers
            .iter()
            .filter(|p| p.id != self.meta.id)
            .map(|&to| {
                MergeOut::Remote(Box::new(RaftMessage {
                    region_id: region.id,
                    from_peer: Some(self.meta),
                    to_peer: Some(to),
                    region_epoch: region.region_epoch,
                    merge_check: true,
                    ..Default::default()
                }))
            })
            .collect();
        self.merge_ctx().out.extend(notes);
    }

    /// The leader's note to make a merge check (see
    /// [`Peer::send_merge_checks`]).
    pub(super) fn on_merge_check_note(&mut self, msg: &RaftMessage) {
        let from_leader = msg.from_peer.map(|p| p.id) == Some(self.raft.raft.leader_id());
        if !from_leader || self.raft.store().merge_state().is_none() {
            return;
        }
        let refused = self.merge.as_ref().is_some_and(|m| m.refused);
        self.merge_check(refused);
    }

    /// A follower that holds the target's refusal passes it to its leader
    /// (whose own store's target may not be able to prove it: one that
    /// took a snapshot past the recorded epoch cannot).
    fn forward_refusal(&mut self) {
        let Some(commit) = self.raft.store().merge_state().map(|m| m.commit) else {
            return;
        };
        let Some(leader) = self.leader().filter(|l| l.id != self.meta.id) else {
            return;
        };
        if self.gc_reply.is_some() {
            return;
        }
        self.gc_reply = Some(Box::new(RaftMessage {
            region_id: self.region_id(),
            from_peer: Some(self.meta),
            to_peer: Some(leader),
            region_epoch: self.region().region_epoch,
            merge_refused: commit,
            ..Default::default()
        }));
    }

    /// A member's note that the target refused this region's merge
    /// prepared at `msg.merge_refused` (see [`Peer::forward_refusal`]).
    pub(super) fn on_refusal_note(&mut self, msg: &RaftMessage) {
        let member = msg
            .from_peer
            .is_some_and(|f| self.region().peers.iter().any(|p| p.id == f.id));
        if member {
            self.on_merge_msg(MergeMsg::Refused {
                commit: msg.merge_refused,
            });
        }
    }

    /// Ticks until the next merge check, if the region merges.
    pub(super) fn ticks_to_merge_check(&self) -> Option<u64> {
        self.raft.store().merge_state()?;
        let ctx = self.merge.as_ref()?;
        Some(ctx.interval.saturating_sub(ctx.ticks).max(1))
    }

    /// The merge bookkeeping of a peer whose region is `Merging` at
    /// start (a restart between PrepareMerge and the merge's end: it
    /// goes on asking the target).
    pub(super) fn resume_merge_at_start(&mut self, cfg: &Config) {
        if self.raft.store().merge_state().is_some() {
            let ctx = self.merge_ctx();
            ctx.interval = cfg.merge_check_ticks as u64;
            // The first check comes at once.
            ctx.ticks = ctx.interval;
        }
    }

    /// A store where this region was merged away says so (a tombstone
    /// message naming `target` as the merge made it): this peer missed
    /// the merge's end. If this store has no peer of the target, and no
    /// region here that may yet split it off (one older than the merge
    /// whose range meets the target's: its split, once applied, creates a
    /// target peer whose log holds the CommitMerge), nothing here needs
    /// this peer's data (a target peer coming later is initialized by a
    /// snapshot): it is destroyed. Else it waits for that peer, which
    /// either applies the CommitMerge from its log (and has this peer
    /// catch up first) or takes a snapshot past the merge, which has this
    /// peer destroyed first ([`Peer::supersede_merged`]).
    pub(super) fn on_merged_elsewhere(&mut self, target: &Region) {
        if target.id == self.region_id() || self.removed {
            return;
        }
        let version = target.region_epoch.map_or(0, |e| e.version);
        let mut meta = self.store_meta.lock();
        if meta.merged_into(self.region_id()).is_none() {
            slog::info!(self.logger, "merged away elsewhere: waiting for the target here";
                "target" => target.id, "version" => version);
        }
        meta.note_merged(self.region_id(), target);
        drop(meta);
        // Goes if no peer of the target is here and no region here may
        // still split it off (the poller knows), or the target's peer here
        // is past the merge (it asks it): then nothing here needs this
        // peer's data. An uninitialized target peer takes a snapshot first,
        // which either predates the merge (and the CommitMerge it then
        // applies needs this peer) or has this peer go first.
        let source = self.region_id();
        self.merge_ctx().out.push(MergeOut::AskTarget {
            source,
            target: Box::new(target.clone()),
        });
    }

    /// The apply side waits at the CommitMerge at `index` for this
    /// store's source peer: until it applies, this peer holds its
    /// campaigns. Elected meanwhile it could apply nothing, so serve
    /// nothing, for as long as the source takes (for good if it never
    /// comes); its region's other voters campaign instead. It still votes.
    ///
    /// Without a source peer here nothing can resume the wait (a split
    /// here creating the source later finds no ask to catch up): the peer
    /// asks its leader for a snapshot, which is past the commit index and
    /// so past the merge ([`Peer::ask_snapshot_past_merge`]).
    pub(super) fn on_merge_waiting(&mut self, index: u64, source_here: bool) {
        let ctx = self.merge_ctx();
        let first = ctx.apply_waits_at == 0;
        ctx.apply_waits_at = index;
        ctx.snapshot_wanted |= !source_here;
        if first {
            slog::info!(self.logger, "apply waits at a merge: holding campaigns";
                "index" => index, "source_here" => source_here);
        }
        self.raft.hold_campaigns(true);
        self.ask_snapshot_past_merge();
    }

    /// Asks the leader for a snapshot if the apply side waits at a merge
    /// whose source has no peer here and none was asked for yet (the core
    /// repeats an outstanding request with every append and heartbeat).
    /// Without a known leader, asked again when the leader is heard.
    pub(super) fn ask_snapshot_past_merge(&mut self) {
        if !self.snapshot_past_merge_wanted() || self.raft.raft.snapshot_requested() {
            return;
        }
        match self.raft.request_snapshot() {
            Ok(()) => slog::info!(
                self.logger,
                "merge source has no peer here: snapshot requested"
            ),
            Err(e) => slog::debug!(self.logger, "snapshot request not sent"; "err" => %e),
        }
    }

    /// Whether a snapshot may be admitted although entries handed to the
    /// apply side wait: it waits at a CommitMerge whose source has no peer
    /// here, and this peer asked for the snapshot.
    pub(super) fn snapshot_past_merge_wanted(&self) -> bool {
        self.merge.as_ref().is_some_and(|m| m.snapshot_wanted)
    }

    /// Releases the campaign hold once the CommitMerge it waited for is
    /// applied (`applied`: the applied index now), or passed by a
    /// snapshot.
    pub(super) fn release_merge_hold(&mut self, applied: u64) {
        let Some(ctx) = self.merge.as_mut() else {
            return;
        };
        if ctx.apply_waits_at == 0 || applied < ctx.apply_waits_at {
            return;
        }
        ctx.apply_waits_at = 0;
        ctx.snapshot_wanted = false;
        slog::info!(self.logger, "merge applied: campaigns released"; "applied" => applied);
        self.raft.hold_campaigns(false);
    }

    /// Whether to ask the apply side to give up a CommitMerge it may wait
    /// at (`ApplyMsg::AbandonMerge`): this peer was removed, and entries
    /// it handed over are not all applied. Its destruction waits for them
    /// ([`Peer::is_removed`]), and a CommitMerge waiting for a source
    /// with no peer here would hold it for good. Due once per index handed
    /// over (an ask behind the entries it covers finds the delegate
    /// waiting, or everything applied).
    pub fn abandon_merge_due(&mut self) -> bool {
        let applying = self.raft.raft.raft_log().applying;
        if !self.removed
            || applying <= self.raft.store().applied_index()
            || self
                .merge
                .as_ref()
                .is_some_and(|m| m.abandon_asked >= applying)
        {
            return false;
        }
        self.merge_ctx().abandon_asked = applying;
        true
    }

    /// A source merged away elsewhere, into this region at `version`,
    /// waits here (see [`Peer::on_merged_elsewhere`]): once this peer is
    /// past that version (it applied the merge, or a snapshot after it),
    /// it never needs the source's data, and the source goes.
    fn on_source_waits(&mut self, source: u64, version: u64) {
        let past = self.raft.store().is_initialized()
            && self
                .region()
                .region_epoch
                .is_some_and(|e| e.version >= version);
        if past {
            let target_id = self.region_id();
            self.merge_ctx()
                .out
                .push(MergeOut::Peer(source, MergeMsg::Superseded { target_id }));
        }
    }

    /// A snapshot of this peer's region overlaps regions here that were
    /// merged away before its state and that nothing here needs any more
    /// (`StoreMeta::superseded_by`): they are told to go (their data
    /// cleared: the snapshot rewrites the range) and `true` is returned;
    /// this snapshot is refused, and the leader's next one is admitted
    /// once nothing is in its way. `false` when no region in the way may
    /// go.
    pub(super) fn supersede_merged(&mut self, snapshot: &Region) -> bool {
        let sources = self
            .store_meta
            .lock()
            .superseded_by(snapshot, |r| live_version(&self.engine, r));
        if sources.is_empty() {
            return false;
        }
        for (source, target_id) in sources {
            slog::info!(self.logger, "snapshot past a merge: its source goes first";
                "source" => source, "merged_into" => target_id);
            self.merge_ctx()
                .out
                .push(MergeOut::Peer(source, MergeMsg::Superseded { target_id }));
        }
        true
    }

    /// A snapshot of this region was refused because region `other` here
    /// owns part of its range: `other`'s peer is woken if it sleeps. It
    /// may have been merged away (into this region) while it slept apart
    /// from its peers, its leader gone with the merge; awake, it reaches
    /// its peers, hears so and gives way (admin.md scenario 25).
    pub(super) fn wake_range_owner(&mut self, other: u64) {
        self.merge_ctx()
            .out
            .push(MergeOut::Peer(other, MergeMsg::RangeWanted));
    }

    /// The merge messages to route, if any (taken).
    pub fn take_merge_out(&mut self) -> Vec<MergeOut> {
        match self.merge.as_mut() {
            Some(m) if !m.out.is_empty() => std::mem::take(&mut m.out),
            _ => Vec::new(),
        }
    }
}

/// The `merge_commit_hold` failpoint: a target's leader ignores the asks
/// to commit (always false without the `failpoints` feature).
fn crash_point_merge_commit_hold() -> bool {
    fail::fail_point!("merge_commit_hold", |_| true);
    false
}
