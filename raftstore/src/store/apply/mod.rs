//! The apply side: one [`ApplyFsm`] per region applies committed entries to
//! the data column family, writes `RaftApplyState` in the same batch, runs
//! the proposals' callbacks and reports back to the peer.

use std::collections::VecDeque;
use std::sync::Arc;

use flotilla_engine::{Cf, Durability, Engine, WriteBatch, WriteOrigin, keys};
use flotilla_proto::eraftpb::{Entry, EntryType};
use flotilla_proto::metapb::{Peer, Region};
use flotilla_proto::raft_cmdpb::{
    AdminResponse, CommitMergeRequest, DeleteRangeResponse, DeleteResponse, PutResponse,
    RaftCmdRequest, RaftCmdResponse, RaftResponseHeader, Response, admin_request, request,
    response,
};
use flotilla_proto::raft_serverpb::{MergeState, PeerState, RaftApplyState, RegionLocalState};
use flotilla_router::{Batch, Fsm, HandleResult, Inbox, PollHandler};
use prost::Message as _;
use slog::Logger;

use super::admin::{AdminError, admin_cmd, check_epoch};
use super::error::Error;
use super::fatal::StoreStatus;
use super::fsm::{RaftRouter, StoreMetrics};
use super::meta::SharedMeta;
use super::msg::{
    ApplyMsg, ApplyRes, ApplyTask, DestroyTask, ExecResult, MergeMsg, PeerMsg, Proposal,
    SnapshotTask,
};
use super::snapshot::{apply_snapshot_file, snapshot_apply_state};
use super::util::{clear_data_range, err_response, failpoint_on_store};
use super::validate::{data_range, validate_for_apply};

mod admin;
mod conf_change;
mod merge;
mod split;

pub(crate) use self::merge::apply_origin;
use self::merge::{ApplyMerge, CommitOutcome, WaitMerge};
pub(crate) use self::split::SplitCtx;

/// A region's apply delegate.
pub struct ApplyFsm {
    region: Region,
    /// This store's peer of the region.
    peer: Peer,
    /// A conf change removed this store's peer (the region's state is
    /// `Tombstone`), or the removed peer gave up a CommitMerge waiting
    /// for its source (`ApplyMsg::AbandonMerge`): nothing after that entry
    /// is applied here.
    removed: bool,
    apply_state: RaftApplyState,
    /// Set while this round changed `apply_state` (reported after the
    /// round's write, see `ApplyPoller::finish_delegate`).
    dirty: bool,
    /// Callbacks to run once this round's batch is written.
    done: Vec<(Proposal, RaftCmdResponse)>,
    /// What this round's admin entries did, reported with the apply state.
    results: Vec<ExecResult>,
    /// A snapshot to write at the end of this round, after the round's
    /// batch (which holds the entries before it); nothing after it is
    /// applied in this round.
    snapshot: Option<Box<SnapshotTask>>,
    /// The peer's destruction, done at the end of this round after the
    /// round's batch; nothing after it is handled.
    destroy: Option<Box<DestroyTask>>,
    /// Merge bookkeeping (boxed: most delegates never need it; see
    /// [`ApplyMerge`]).
    merge: Option<Box<ApplyMerge>>,
    stopped: bool,
}

impl ApplyFsm {
    /// A delegate for this store's `peer` of `region`, resuming at
    /// `apply_state`.
    pub fn new(region: Region, peer: Peer, apply_state: RaftApplyState) -> ApplyFsm {
        ApplyFsm {
            merge: None,
            region,
            peer,
            removed: false,
            apply_state,
            dirty: false,
            done: Vec::new(),
            results: Vec::new(),
            snapshot: None,
            destroy: None,
            stopped: false,
        }
    }

    /// The merge state while the region is `Merging`.
    fn merging(&self) -> Option<&MergeState> {
        self.merge.as_ref().and_then(|m| m.state.as_ref())
    }

    fn merge_ext(&mut self) -> &mut ApplyMerge {
        self.merge.get_or_insert_default()
    }

    fn set_merging(&mut self, state: Option<MergeState>) {
        if state.is_some() || self.merge.is_some() {
            self.merge_ext().state = state;
        }
    }

    /// The source region a waiting CommitMerge waits for.
    fn waiting_for(&self) -> Option<u64> {
        self.merge.as_ref()?.wait.as_ref().map(|w| w.source_id)
    }

    /// The delegate of a region that is `Merging` with `state`.
    pub fn with_merge_state(mut self, state: Option<MergeState>) -> ApplyFsm {
        self.set_merging(state);
        self
    }
}

impl Fsm for ApplyFsm {
    type Message = ApplyMsg;

    fn is_stopped(&self) -> bool {
        self.stopped
    }
}

/// The apply system's control FSM: it has nothing to do yet.
pub struct ApplyControl;

impl Fsm for ApplyControl {
    type Message = ();

    fn is_stopped(&self) -> bool {
        false
    }
}

/// Applies every ready delegate's entries into one write batch per round.
pub struct ApplyPoller {
    engine: Engine,
    raft_router: RaftRouter,
    /// The store's regions by range (splits claim their new regions).
    meta: SharedMeta,
    wb: Option<WriteBatch>,
    status: Arc<StoreStatus>,
    /// Where apply writes and command latencies are counted.
    metrics: Arc<StoreMetrics>,
    logger: Logger,
}

impl ApplyPoller {
    /// A poller writing to `engine` and reporting through `raft_router`;
    /// a failed write stops the store through `status`.
    pub fn new(
        engine: Engine,
        raft_router: RaftRouter,
        meta: SharedMeta,
        status: Arc<StoreStatus>,
        logger: Logger,
    ) -> ApplyPoller {
        ApplyPoller {
            engine,
            raft_router,
            meta,
            wb: None,
            status,
            metrics: Arc::default(),
            logger,
        }
    }

    /// Counts into `metrics` (the store's) instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<StoreMetrics>) -> ApplyPoller {
        self.metrics = metrics;
        self
    }

    /// Applies `task` into this poller's round batch: the pool's own
    /// delegates, or one a raft poller borrowed (see [`may_apply_inline`]).
    /// The round ends with [`ApplyPoller::write_round`] and
    /// [`ApplyPoller::finish_delegate`].
    pub(crate) fn apply_task(&mut self, fsm: &mut ApplyFsm, task: ApplyTask) {
        debug_assert_eq!(
            task.region_id, fsm.region.id,
            "task routed to the wrong delegate"
        );
        self.apply_entries(fsm, task.entries, task.proposals.into());
    }

    /// Applies `entries` in order, answering `proposals` (in (term,
    /// index) order) as their entries apply. A CommitMerge whose source
    /// has not caught up here stops it: the rest waits in
    /// `fsm.wait_merge`.
    fn apply_entries(
        &mut self,
        fsm: &mut ApplyFsm,
        entries: Vec<Entry>,
        mut proposals: VecDeque<Proposal>,
    ) {
        let wb = self.wb.get_or_insert_with(|| {
            let mut wb = self.engine.write_batch();
            wb.set_origin(WriteOrigin::Apply);
            wb
        });
        let mut entries = entries.into_iter();
        while let Some(entry) = entries.next() {
            if entry.index <= fsm.apply_state.applied_index {
                continue; // already applied (e.g. replayed after restart)
            }
            let resp = if fsm.removed {
                // Removed from the region: nothing more lands here. The
                // entry is committed and applies on the other peers: its
                // outcome is unknown to a client of this one.
                err_response(Error::StaleCommand)
            } else if matches!(
                entry.entry_type(),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2
            ) {
                if fsm.merging().is_some() {
                    err_response(Error::Admin(AdminError::RegionMerging {
                        region_id: fsm.region.id,
                    }))
                } else {
                    conf_change::apply_conf_change(wb, fsm, &entry)
                }
            } else {
                let ctx = SplitCtx {
                    engine: &self.engine,
                    meta: &self.meta,
                    router: &self.raft_router,
                };
                match apply_entry(&ctx, wb, fsm, &entry) {
                    Applied::Done(resp) => resp,
                    Applied::WaitMergeSource { source_id, req } => {
                        // Nothing of this entry is written: it is applied
                        // again, whole, once the source caught up.
                        let target_id = fsm.region.id;
                        let index = entry.index;
                        let mut rest = vec![entry];
                        rest.extend(entries);
                        fsm.merge_ext().wait = Some(Box::new(WaitMerge {
                            source_id,
                            entries: rest,
                            proposals,
                        }));
                        slog::info!(self.logger, "merge waits for its source to catch up";
                            "region" => target_id, "source" => source_id);
                        let ask = MergeMsg::CatchUpLogs { target_id, req };
                        // Failpoints: `merge_source_gone` finds no source
                        // peer here; `merge_catch_up_lost` loses the ask to
                        // one that is here, which then never catches up.
                        let store_id = fsm.peer.store_id;
                        let source_here = if failpoint_on_store("merge_source_gone", store_id) {
                            false
                        } else {
                            failpoint_on_store("merge_catch_up_lost", store_id)
                                || self
                                    .raft_router
                                    .force_send(source_id, PeerMsg::Merge(Box::new(ask)))
                                    .is_ok()
                        };
                        if !source_here {
                            slog::warn!(self.logger, "merge source has no peer here";
                                "region" => target_id, "source" => source_id);
                        }
                        // The peer holds its campaigns meanwhile (and
                        // without a source here asks for a snapshot).
                        fsm.results
                            .push(ExecResult::MergeWaiting { index, source_here });
                        fsm.dirty = true;
                        self.write_apply_state(fsm);
                        return;
                    }
                }
            };
            let at = (entry.term, entry.index);
            // A proposal ordered before this entry was never applied (its
            // index was taken by another leader's entry, or by an entry of
            // a later term): its outcome is unknown to the client.
            while proposals.front().is_some_and(|p| (p.term, p.index) < at) {
                if let Some(p) = proposals.pop_front() {
                    fsm.done.push((p, err_response(Error::StaleCommand)));
                }
            }
            if proposals.front().is_some_and(|p| (p.term, p.index) == at)
                && let Some(p) = proposals.pop_front()
            {
                fsm.done.push((p, resp));
            }
            fsm.apply_state.applied_index = entry.index;
            fsm.dirty = true;
        }
        for p in proposals {
            fsm.done.push((p, err_response(Error::StaleCommand)));
        }
        self.write_apply_state(fsm);
    }

    /// Puts the delegate's apply state into the round's batch if this
    /// round changed it.
    fn write_apply_state(&mut self, fsm: &ApplyFsm) {
        if fsm.dirty
            && !fsm.removed
            && let Some(wb) = self.wb.as_mut()
        {
            wb.put_msg(
                Cf::Raft,
                &keys::apply_state_key(fsm.region.id),
                &fsm.apply_state,
            );
        }
    }

    /// Handles one message of the delegate's queue (not while it waits
    /// at a CommitMerge).
    fn dispatch(&mut self, fsm: &mut ApplyFsm, msg: ApplyMsg) {
        match msg {
            ApplyMsg::Apply(task) => self.apply_task(fsm, task),
            ApplyMsg::Snapshot(task) => fsm.snapshot = Some(task),
            ApplyMsg::Destroy(task) => fsm.destroy = Some(task),
            // Late: the merge it was for went on already.
            ApplyMsg::MergeSourceReady { .. } => {}
            // Nothing waits: everything handed over applies.
            ApplyMsg::AbandonMerge => {}
        }
    }

    /// The source of the CommitMerge this delegate waits at says it caught
    /// up: the entries from the CommitMerge on apply again (they wait
    /// again if the source is not there after all).
    fn resume_merge(&mut self, fsm: &mut ApplyFsm) {
        if let Some(wait) = fsm.merge.as_mut().and_then(|m| m.wait.take()) {
            let WaitMerge {
                entries, proposals, ..
            } = *wait;
            self.apply_entries(fsm, entries, proposals);
        }
    }
}

impl ApplyPoller {
    /// The peer of a delegate waiting at a CommitMerge was removed (its
    /// region removed it, a newer peer replaced it here, or a snapshot
    /// past a later merge superseded it) and asks it to give up the wait:
    /// the source it waits for may never come (it has no peer here). The
    /// CommitMerge and everything after it, waiting or queued, go
    /// unapplied here (more than after a removal applied here: entries
    /// from while this peer was a member too, a split listing a peer on
    /// this store among them, whose peer is then created by its leader's
    /// message and a snapshot) as for a removed peer (`removed`: each is answered
    /// `StaleCommand`, an unknown outcome, for the region's members apply
    /// it), so the applied index reaches what the peer handed over and
    /// the peer may be destroyed. Nothing is written: the peer's
    /// destruction writes its tombstone; a crash before it replays the
    /// log into the same wait, and the peer is told again.
    fn abandon_merge(&mut self, fsm: &mut ApplyFsm) {
        let Some((wait, backlog)) = self.end_merge_wait(fsm) else {
            return;
        };
        slog::info!(self.logger, "removed while its merge waits for the source: giving up";
            "region" => fsm.region.id, "source" => wait.source_id);
        fsm.removed = true;
        self.apply_entries(fsm, wait.entries, wait.proposals);
        for msg in backlog {
            // Only entries wait behind a CommitMerge: a snapshot ends the
            // wait (`skip_merge`), a destruction never comes while entries
            // are unapplied, and a source's word is handled at once.
            debug_assert!(matches!(msg, ApplyMsg::Apply(_)), "{msg:?}");
            self.dispatch(fsm, msg);
        }
    }

    /// Ends the CommitMerge wait of `fsm`, if it waits: returns the wait
    /// and the messages queued behind it, and tells the source peer here
    /// that this target no longer waits for it.
    fn end_merge_wait(&self, fsm: &mut ApplyFsm) -> Option<(WaitMerge, VecDeque<ApplyMsg>)> {
        let m = fsm.merge.as_mut()?;
        let wait = m.wait.take()?;
        let backlog = std::mem::take(&mut m.backlog);
        self.tell_source_gave_up(fsm.region.id, wait.source_id);
        Some((*wait, backlog))
    }

    /// Tells this store's peer of `source_id` (if any) that the target
    /// `target_id` no longer waits for it to catch up: it may then be
    /// superseded like any source nothing here needs.
    fn tell_source_gave_up(&self, target_id: u64, source_id: u64) {
        let _ = self.raft_router.force_send(
            source_id,
            PeerMsg::Merge(Box::new(MergeMsg::TargetGaveUp { target_id })),
        );
    }

    /// A snapshot reaches a delegate waiting at a CommitMerge: its peer
    /// asked for one because the source has no peer here (the only case
    /// its admission lets through while entries wait). The snapshot is
    /// at or past the peer's commit index, so past the CommitMerge and
    /// every entry handed over: the wait and the backlog are dropped
    /// (their writers hear `StaleCommand`, an unknown outcome), and the snapshot is
    /// written at the round's end.
    fn skip_merge(&mut self, fsm: &mut ApplyFsm, task: Box<SnapshotTask>) {
        if let Some((wait, backlog)) = self.end_merge_wait(fsm) {
            slog::info!(self.logger, "a snapshot past the merge it waits at";
                "region" => fsm.region.id, "source" => wait.source_id, "index" => task.index);
            let queued = backlog.into_iter().flat_map(|msg| match msg {
                ApplyMsg::Apply(t) => t.proposals,
                _ => Vec::new(),
            });
            // Committed, applied by the region's members: unknown here.
            for p in wait.proposals.into_iter().chain(queued) {
                fsm.done.push((p, err_response(Error::StaleCommand)));
            }
        }
        fsm.snapshot = Some(task);
    }

    /// Destroys a removed peer's state, after everything it applied: the
    /// region's tombstone, its log, raft and apply states and (if it was
    /// initialized) its data go in one synced write; then the delegate
    /// stops. A crash before it leaves the peer as it was, a stale member
    /// that is told again it was removed. A failed write stops the store.
    fn destroy(&mut self, fsm: &mut ApplyFsm, task: &DestroyTask) {
        let region = &task.tombstone;
        let mut wb = self.engine.write_batch();
        wb.set_origin(WriteOrigin::Apply);
        let prev = self
            .engine
            .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(region.id));
        // Merged here (also when the peer was destroyed on another path
        // before it heard): the tombstone with the merge stays, and so do
        // the keys, which are the target's.
        let merged = task.merged
            || prev
                .as_ref()
                .ok()
                .and_then(Option::as_ref)
                .is_some_and(|s| s.state() == PeerState::Tombstone && s.merge_state.is_some());
        if !merged {
            let tombstone = match &prev {
                Ok(prev) => merge_tombstone(region, prev.as_ref(), fsm.peer.store_id),
                Err(_) => region.clone(),
            };
            let mut state = RegionLocalState {
                region: Some(tombstone),
                ..Default::default()
            };
            state.set_state(PeerState::Tombstone);
            wb.put_msg(Cf::Raft, &keys::region_state_key(region.id), &state);
            // A merged region's origin stays: it proves what its peer here
            // applied (see `merge::apply_origin`).
            wb.delete(Cf::Raft, &keys::apply_origin_key(region.id));
            for held in &task.held {
                let _ = clear_data_range(&mut wb, held);
            }
        }
        let (lo, hi) = keys::raft_log_range(region.id, 0, task.last_index + 1);
        let _ = wb.delete_range(Cf::Raft, &lo, &hi);
        crate::store::removed::clear(&mut wb, region.id);
        wb.delete(Cf::Raft, &keys::raft_state_key(region.id));
        wb.delete(Cf::Raft, &keys::apply_state_key(region.id));
        fsm.stopped = true;
        fsm.dirty = false;
        // Crash point: the removal applied, the peer not cleared yet (a
        // restart clears what its tombstone names).
        let written = if crash_point_destroy_before_write() {
            Err(flotilla_engine::Error::InjectedFault {
                origin: WriteOrigin::Apply,
            })
        } else {
            self.engine.write(wb, Durability::Sync)
        };
        if written.is_ok() {
            // Only now may another region take the keys, or a new peer
            // of this region be created.
            let mut meta = self.meta.lock();
            for held in &task.held {
                meta.remove(held);
            }
            meta.finish_destroy(region.id);
        }
        if let Err(e) = written {
            let first = self.status.stop(
                Error::Engine(format!(
                    "region {}: destroying the peer failed: {e}",
                    region.id
                )),
                &self.logger,
            );
            if first {
                self.status.run_hook(&self.logger);
            }
        }
    }

    /// Writes a received snapshot into the engine (its entries before it
    /// are written already); the region is `Normal` at the snapshot's
    /// index afterwards. A failure stops the store: the region stays
    /// `Applying` on disk and the write is redone at the next start.
    fn apply_snapshot(&mut self, fsm: &mut ApplyFsm, task: SnapshotTask) {
        let started = std::time::Instant::now();
        // The range this delegate had (none if uninitialized): a split or
        // merge the peer missed may have moved the region's bounds.
        let old = task
            .old
            .as_ref()
            .or((!fsm.region.peers.is_empty()).then_some(&fsm.region));
        match apply_snapshot_file(
            &self.engine,
            &task.region,
            old,
            &task.path,
            task.index,
            task.term,
        ) {
            Ok(kvs) => {
                slog::info!(self.logger, "snapshot applied"; "region" => task.region.id,
                    "index" => task.index, "kvs" => kvs, "took" => ?started.elapsed());
                if let Some(m) = fsm.merge.as_mut() {
                    m.state = None;
                }
                fsm.region = task.region;
                fsm.apply_state = snapshot_apply_state(task.index, task.term);
                fsm.results.push(ExecResult::SnapshotApplied {
                    index: task.index,
                    micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                });
                fsm.dirty = true;
            }
            Err(e) => {
                let first = self.status.stop(
                    Error::Engine(format!(
                        "region {}: applying the snapshot at {} failed: {e}",
                        task.region.id, task.index
                    )),
                    &self.logger,
                );
                fsm.stopped = true;
                if first {
                    self.status.run_hook(&self.logger);
                }
            }
        }
    }
}

/// What applying one entry came to.
enum Applied {
    /// The response for its proposer.
    Done(RaftCmdResponse),
    /// A CommitMerge whose source peer here has not applied the
    /// PrepareMerge: nothing was written; the entry waits.
    WaitMergeSource {
        /// The source region.
        source_id: u64,
        /// The command, for the source peer to catch up from.
        req: CommitMergeRequest,
    },
}

/// Applies one entry to `wb`.
///
/// The entry's command is decoded and checked against the region as a
/// whole before anything goes into `wb` ([`validate_for_apply`]: only what
/// every replica decides alike): an entry that fails (it may come from an
/// old log, or have been proposed under another range) is answered with
/// its typed error and writes nothing, and the other entries of the round
/// are unaffected. An admin command changes `fsm.apply_state` (at the
/// state before the entry) and records what it did in `fsm.results`.
/// While the region is merging, nothing but a RollbackMerge applies.
fn apply_entry(
    ctx: &SplitCtx<'_>,
    wb: &mut WriteBatch,
    fsm: &mut ApplyFsm,
    entry: &Entry,
) -> Applied {
    if entry.data.is_empty() || entry.entry_type() != EntryType::EntryNormal {
        // A new leader's empty entry (conf changes are applied apart).
        return Applied::Done(RaftCmdResponse::default());
    }
    let request = match RaftCmdRequest::decode(entry.data.clone()) {
        Ok(r) => r,
        Err(e) => {
            return Applied::Done(err_response(Error::InvalidRequest(format!(
                "undecodable entry: {e}"
            ))));
        }
    };
    let cmd = match admin_cmd(&request) {
        Ok(cmd) => cmd,
        Err(e) => return Applied::Done(err_response(e)),
    };
    let merging = Error::Admin(AdminError::RegionMerging {
        region_id: fsm.region.id,
    });
    let Some(cmd) = cmd else {
        if fsm.merging().is_some() {
            return Applied::Done(err_response(merging));
        }
        return Applied::Done(apply_write(wb, &fsm.region, &request, entry.term));
    };
    let asked = request.header.as_ref().and_then(|h| h.region_epoch);
    let some = |(resp, result): (AdminResponse, ExecResult)| (resp, Some(result));
    let done = match cmd {
        admin_request::Cmd::CommitMerge(req) => {
            match merge::exec_commit_merge(ctx, wb, &request, req, fsm) {
                CommitOutcome::Wait => {
                    return Applied::WaitMergeSource {
                        source_id: req.source.as_ref().map_or(0, |r| r.id),
                        req: req.clone(),
                    };
                }
                CommitOutcome::Done(done) => (*done).map(some),
            }
        }
        admin_request::Cmd::RollbackMerge(req) => check_epoch(cmd, asked, &fsm.region)
            .and_then(|()| merge::exec_rollback_merge(wb, req, fsm))
            .map(some),
        _ if fsm.merging().is_some() => Err(merging),
        admin_request::Cmd::PrepareMerge(req) => check_epoch(cmd, asked, &fsm.region)
            .and_then(|()| merge::exec_prepare_merge(wb, req, fsm, entry.index))
            .map(some),
        _ => admin::exec_admin(
            ctx,
            wb,
            &request,
            cmd,
            &mut fsm.region,
            &mut fsm.apply_state,
        ),
    };
    Applied::Done(match done {
        Ok((resp, result)) => {
            fsm.results.extend(result);
            RaftCmdResponse {
                header: Some(RaftResponseHeader {
                    current_term: entry.term,
                    ..Default::default()
                }),
                responses: Vec::new(),
                admin_response: Some(resp),
            }
        }
        Err(e) => err_response(e),
    })
}

/// Applies a write (no admin command) of `request` to `wb`.
fn apply_write(
    wb: &mut WriteBatch,
    region: &Region,
    request: &RaftCmdRequest,
    term: u64,
) -> RaftCmdResponse {
    if let Err(e) = validate_for_apply(request, region) {
        // Proposed before a split moved the key away: the client hears
        // the region's new bounds and locates the key again.
        let asked = request.header.as_ref().and_then(|h| h.region_epoch);
        let version = |e: Option<flotilla_proto::metapb::RegionEpoch>| e.map_or(0, |e| e.version);
        if matches!(e, Error::KeyNotInRegion { .. })
            && version(asked) != version(region.region_epoch)
        {
            return err_response(Error::EpochNotMatch {
                current_regions: vec![region.clone()],
            });
        }
        return err_response(e);
    }
    let mut responses = Vec::with_capacity(request.requests.len());
    for r in &request.requests {
        let cmd = match &r.cmd {
            Some(request::Cmd::Put(p)) => {
                wb.put(Cf::Default, &keys::data_key(&p.key), &p.value);
                response::Cmd::Put(PutResponse {})
            }
            Some(request::Cmd::Delete(d)) => {
                wb.delete(Cf::Default, &keys::data_key(&d.key));
                response::Cmd::Delete(DeleteResponse {})
            }
            Some(request::Cmd::DeleteRange(d)) => {
                let (start, end) = data_range(&d.start_key, &d.end_key, region);
                // Validated above, so the engine cannot refuse it; if it
                // did, the engine's check is the last line of defence and
                // the range is skipped rather than poisoning the batch.
                if let Err(e) = wb.delete_range(Cf::Default, &start, &end) {
                    return err_response(Error::InvalidRequest(e.to_string()));
                }
                response::Cmd::DeleteRange(DeleteRangeResponse {})
            }
            // Reads have no place in the log; nothing to write.
            _ => continue,
        };
        responses.push(Response { cmd: Some(cmd) });
    }
    RaftCmdResponse {
        header: Some(RaftResponseHeader {
            current_term: term,
            ..Default::default()
        }),
        responses,
        admin_response: None,
    }
}

/// The tombstone to write for a peer of this store destroyed with region
/// `region` (the peer listed in it), given the region's state on disk:
/// an earlier tombstone's newer membership and removed peers of this store
/// are kept, so a later, staler tombstone (an uninitialized peer's) never
/// lets a late message recreate a peer removed before. The range and
/// `version` stay `region`'s own (a `version` of 0 marks a peer that owned
/// no data).
fn merge_tombstone(region: &Region, prev: Option<&RegionLocalState>, store_id: u64) -> Region {
    let mut tomb = region.clone();
    let Some(prev) = prev
        .filter(|s| s.state() == PeerState::Tombstone)
        .and_then(|s| s.region.as_ref())
    else {
        return tomb;
    };
    let conf_ver = |r: &Region| r.region_epoch.map_or(0, |e| e.conf_ver);
    if conf_ver(prev) > conf_ver(&tomb) {
        let version = tomb.region_epoch.map_or(0, |e| e.version);
        tomb.region_epoch = Some(flotilla_proto::metapb::RegionEpoch {
            conf_ver: conf_ver(prev),
            version,
        });
    }
    for p in prev.peers.iter().filter(|p| p.store_id == store_id) {
        if !tomb.peers.iter().any(|t| t.id == p.id) {
            tomb.peers.push(*p);
        }
    }
    tomb
}

/// The `destroy_before_write` failpoint (always false without the
/// `failpoints` feature).
fn crash_point_destroy_before_write() -> bool {
    fail::fail_point!("destroy_before_write", |_| true);
    false
}

/// Messages an apply delegate handles per round at most.
const APPLY_MESSAGES_PER_ROUND: usize = 64;

impl PollHandler<ApplyFsm, ApplyControl> for ApplyPoller {
    fn begin(&mut self, _batch_size: usize) {}

    fn handle_control(
        &mut self,
        _control: &mut ApplyControl,
        inbox: &Inbox<'_, ApplyControl>,
    ) -> HandleResult {
        while inbox.try_recv().is_some() {}
        HandleResult::stop_at(0, true)
    }

    fn handle_normal(&mut self, fsm: &mut ApplyFsm, inbox: &Inbox<'_, ApplyFsm>) -> HandleResult {
        for _ in 0..APPLY_MESSAGES_PER_ROUND {
            if fsm.snapshot.is_some() || fsm.destroy.is_some() {
                // The rest waits for the snapshot or the destruction,
                // done in `end`.
                return HandleResult::KeepProcessing;
            }
            if let Some(source) = fsm.waiting_for() {
                // Only the source's word, or its removed peer's, moves a
                // waiting delegate; the rest keeps its order in the
                // backlog.
                match inbox.try_recv() {
                    Some(ApplyMsg::MergeSourceReady { source_id }) if source_id == source => {
                        self.resume_merge(fsm);
                    }
                    Some(ApplyMsg::MergeSourceReady { .. }) => {}
                    Some(ApplyMsg::AbandonMerge) => self.abandon_merge(fsm),
                    Some(ApplyMsg::Snapshot(task)) => self.skip_merge(fsm, task),
                    Some(other) => fsm.merge_ext().backlog.push_back(other),
                    None => return HandleResult::stop_at(0, false),
                }
                continue;
            }
            let queued = fsm.merge.as_mut().and_then(|m| m.backlog.pop_front());
            match queued.or_else(|| inbox.try_recv()) {
                Some(msg) => self.dispatch(fsm, msg),
                // Drained: nothing was left behind on purpose, so progress
                // is 0 and anything that arrives from now on reschedules
                // the delegate (reading `inbox.len()` here would count a
                // message that arrived in between as seen, and the
                // delegate would go idle with it queued).
                None => return HandleResult::stop_at(0, false),
            }
        }
        HandleResult::KeepProcessing
    }

    fn end(&mut self, batch: &mut Batch<'_, ApplyFsm>) {
        if let Err(failed) = self.write_round() {
            for fsm in batch.iter_mut() {
                fail_delegate(fsm, &failed.reason);
            }
            self.after_failure(failed);
            return;
        }
        for fsm in batch.iter_mut() {
            if let Some(res) = self.finish_delegate(fsm) {
                let _ = self
                    .raft_router
                    .force_send(fsm.region.id, PeerMsg::ApplyRes(res));
            }
        }
    }
}

/// A round's apply write failed: the store is stopped (see
/// [`ApplyPoller::write_round`]).
pub(crate) struct ApplyWriteFailed {
    /// The engine's error, for the writers' `ApplyFailed`.
    reason: String,
    /// This failure stopped the store (the fatal hook is ours to run).
    first: bool,
}

impl ApplyWriteFailed {
    /// The engine's error.
    pub(crate) fn reason(&self) -> &str {
        &self.reason
    }
}

impl ApplyPoller {
    /// Writes the round's batch, if any.
    ///
    /// # Errors
    /// The engine refused the write. The store is stopped by then; the
    /// caller answers the round's delegates with [`fail_delegate`] and
    /// then calls [`ApplyPoller::after_failure`].
    pub(crate) fn write_round(&mut self) -> Result<(), ApplyWriteFailed> {
        let Some(wb) = self.wb.take() else {
            return Ok(());
        };
        // Apply writes need no sync: the log they come from is durable,
        // and a lost apply is redone from `applied_index + 1` on restart.
        let started = std::time::Instant::now();
        let written = self.engine.write(wb, Durability::Buffered);
        self.metrics.apply_write_latency.observe(started.elapsed());
        let Err(e) = written else {
            return Ok(());
        };
        // The in-memory apply states moved past what is on disk:
        // continuing would skip these entries for good. Stop the store; on
        // restart it re-applies from the persisted state. The entries are
        // committed, so their writers hear "outcome unknown", never
        // "failed". The store stops before any writer hears of it (a
        // client told ApplyFailed finds the store stopped), and the fatal
        // hook, which may abort, runs after they are answered.
        let reason = e.to_string();
        let first = self.status.stop(
            Error::Engine(format!("apply write failed: {reason}")),
            &self.logger,
        );
        Err(ApplyWriteFailed { reason, first })
    }

    /// After the delegates of a failed round were answered: runs the
    /// store's fatal hook if this failure stopped the store.
    pub(crate) fn after_failure(&self, failed: ApplyWriteFailed) {
        if failed.first {
            self.status.run_hook(&self.logger);
        }
    }

    /// After the round's write: the delegate's snapshot or destruction,
    /// its writers' answers, and the report for its peer (`None` if this
    /// round changed nothing of its apply state).
    pub(crate) fn finish_delegate(&mut self, fsm: &mut ApplyFsm) -> Option<ApplyRes> {
        // Written: the engine says what merged now.
        if let Some(m) = fsm.merge.as_mut() {
            m.absorbed.clear();
        }
        if let Some(task) = fsm.snapshot.take() {
            self.apply_snapshot(fsm, *task);
        }
        if let Some(task) = fsm.destroy.take() {
            self.destroy(fsm, &task);
        }
        for (p, resp) in fsm.done.drain(..) {
            self.metrics
                .command_latency
                .observe(p.proposed_at.elapsed());
            if !p.callback.respond(resp) {
                slog::error!(self.logger, "a write callback panicked"; "region" => fsm.region.id);
            }
        }
        if !fsm.dirty {
            return None;
        }
        fsm.dirty = false;
        Some(ApplyRes {
            peer_id: fsm.peer.id,
            apply_state: fsm.apply_state,
            results: std::mem::take(&mut fsm.results),
        })
    }
}

/// Whether a delegate may apply its next task outside the apply pool, in
/// the raft poller that has the task in hand: it waits for nothing of its
/// own (a merge source, a backlog behind it, a snapshot or destruction to
/// finish), and its peer has heard of everything it applied (`reported`,
/// the peer's applied index, equals the delegate's), so no report of an
/// earlier round is still on its way to the peer and the one this task
/// makes is the next the peer sees.
pub(crate) fn may_apply_inline(fsm: &ApplyFsm, reported: u64) -> bool {
    !fsm.stopped
        && fsm.snapshot.is_none()
        && fsm.destroy.is_none()
        && fsm
            .merge
            .as_ref()
            .is_none_or(|m| m.wait.is_none() && m.backlog.is_empty())
        && fsm.apply_state.applied_index == reported
}

/// Answers a delegate's writers after its round's write failed, and stops
/// the delegate.
pub(crate) fn fail_delegate(fsm: &mut ApplyFsm, reason: &str) {
    for (p, _) in fsm.done.drain(..) {
        p.callback
            .respond(err_response(Error::ApplyFailed(reason.to_owned())));
    }
    fsm.dirty = false;
    fsm.stopped = true;
}

/// What the apply side's admin tests run against: an engine in a temp
/// dir, a router (its batch system kept alive, never started) and a range
/// index.
#[cfg(test)]
pub(super) struct TestStore {
    _dir: tempfile::TempDir,
    pub engine: Engine,
    pub router: crate::store::fsm::RaftRouter,
    _system: flotilla_router::BatchSystem<crate::store::fsm::PeerFsm, crate::store::fsm::StoreFsm>,
    pub meta: crate::store::meta::SharedMeta,
}

#[cfg(test)]
impl TestStore {
    pub fn new() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &flotilla_engine::EngineOptions::default()).unwrap();
        let (router, system) = flotilla_router::BatchSystem::new(
            &flotilla_router::Config::default(),
            flotilla_router::Mailbox::new(Box::<crate::store::fsm::StoreFsm>::default()),
        )
        .unwrap();
        TestStore {
            _dir: dir,
            engine,
            router,
            _system: system,
            meta: crate::store::meta::StoreMeta::new().shared(),
        }
    }

    /// The context the admin commands execute in.
    pub fn ctx(&self) -> SplitCtx<'_> {
        SplitCtx {
            engine: &self.engine,
            meta: &self.meta,
            router: &self.router,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use flotilla_engine::EngineOptions;
    use flotilla_proto::metapb::RegionEpoch;
    use flotilla_proto::raft_cmdpb::{DeleteRangeRequest, PutRequest, RaftRequestHeader};
    use flotilla_router::{BatchSystem, Mailbox};

    use super::*;
    use crate::store::fsm::StoreFsm;
    use crate::store::msg::Responder;
    use crate::store::util::response_error;

    /// Review finding (helper, session 7): a staler tombstone (an
    /// uninitialized peer's, at the conf_ver it was created under) written
    /// over an earlier one keeps the earlier one's newer conf_ver and the
    /// peers of this store it removed, so no late message recreates them;
    /// its own range and `version` (0: it owned no data) stay.
    #[test]
    fn a_later_tombstone_keeps_what_an_earlier_one_outdated() {
        let peer = |id, store_id| Peer {
            id,
            store_id,
            ..Default::default()
        };
        let epoch =
            |conf_ver, version| Some(flotilla_proto::metapb::RegionEpoch { conf_ver, version });
        let earlier = Region {
            id: 3,
            start_key: Bytes::from_static(b"a"),
            end_key: Bytes::from_static(b"m"),
            region_epoch: epoch(7, 2),
            peers: vec![peer(10, 1), peer(11, 2), peer(12, 3)],
        };
        let mut prev = RegionLocalState {
            region: Some(earlier),
            ..Default::default()
        };
        prev.set_state(PeerState::Tombstone);
        let uninit = Region {
            id: 3,
            region_epoch: epoch(5, 0),
            peers: vec![peer(20, 2)],
            ..Default::default()
        };
        let tomb = merge_tombstone(&uninit, Some(&prev), 2);
        assert_eq!(tomb.region_epoch, epoch(7, 0));
        let ids: Vec<u64> = tomb.peers.iter().map(|p| p.id).collect();
        assert_eq!(
            ids,
            vec![20, 11],
            "only this store's removed peers are kept"
        );
        assert!(tomb.start_key.is_empty() && tomb.end_key.is_empty());
        // A live (non-tombstone) state is not merged.
        prev.set_state(PeerState::Normal);
        assert_eq!(merge_tombstone(&uninit, Some(&prev), 2), uninit);
        assert_eq!(merge_tombstone(&uninit, None, 2), uninit);
    }

    fn region() -> Region {
        Region {
            id: 3,
            start_key: Bytes::from_static(b"a"),
            end_key: Bytes::from_static(b"m"),
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            peers: Vec::new(),
        }
    }

    fn entry(index: u64, term: u64, cmd: request::Cmd) -> Entry {
        let req = RaftCmdRequest {
            header: Some(RaftRequestHeader {
                region_id: 3,
                ..Default::default()
            }),
            requests: vec![flotilla_proto::raft_cmdpb::Request { cmd: Some(cmd) }],
            admin_request: None,
        };
        Entry {
            index,
            term,
            data: req.encode_to_vec().into(),
            ..Default::default()
        }
    }

    fn put(key: &'static [u8]) -> request::Cmd {
        request::Cmd::Put(PutRequest {
            key: Bytes::from_static(key),
            value: Bytes::from_static(b"v"),
        })
    }

    fn proposal(index: u64, term: u64) -> Proposal {
        let mut callback = Responder::new(Box::new(|_| {}));
        callback.mark_proposed();
        Proposal {
            index,
            term,
            callback,
            proposed_at: std::time::Instant::now(),
        }
    }

    /// Every region has an apply delegate: one that crosses jemalloc's
    /// 256-byte class costs 64 more bytes a peer (the rare fields are
    /// boxed for that). Its mailbox keeps slots as large as the largest
    /// message: the rare ones are boxed too (unboxed, a snapshot task made
    /// every slot 160 bytes and idle RSS 0.3 KiB a peer larger).
    #[test]
    fn apply_fsm_and_its_messages_stay_small() {
        const APPLY_FSM_BUDGET: usize = 256;
        let size = std::mem::size_of::<ApplyFsm>();
        assert!(
            size <= APPLY_FSM_BUDGET,
            "ApplyFsm is {size} bytes, past its {APPLY_FSM_BUDGET}-byte class"
        );
        let msg = std::mem::size_of::<ApplyMsg>();
        let task = std::mem::size_of::<ApplyTask>();
        assert!(
            msg <= task + 8,
            "ApplyMsg is {msg} bytes, an ApplyTask {task}"
        );
    }

    /// F8 and F1 at apply: proposals are matched to entries by
    /// (term, index), so after leadership churn a proposal whose entry did
    /// apply is answered with success (not `StaleCommand`) and one whose
    /// index was taken by another term is `StaleCommand`; an entry that
    /// fails validation (the poison range) answers its typed error and
    /// writes nothing, while the other entries of the same task apply.
    #[test]
    fn proposals_match_by_term_and_index_and_bad_entries_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
        let (router, _system) = BatchSystem::<super::super::fsm::PeerFsm, StoreFsm>::new(
            &flotilla_router::Config::default(),
            Mailbox::new(Box::<StoreFsm>::default()),
        )
        .unwrap();
        let logger = Logger::root(slog::Discard, slog::o!());
        let status = Arc::new(StoreStatus::new(None));
        let meta = crate::store::meta::StoreMeta::new().shared();
        let mut poller = ApplyPoller::new(engine, router, meta, status, logger);
        let mut fsm = ApplyFsm::new(region(), Peer::default(), RaftApplyState::default());
        let poison = request::Cmd::DeleteRange(DeleteRangeRequest {
            start_key: Bytes::from_static(b"b"),
            end_key: Bytes::from_static(b"a"),
        });
        let task = ApplyTask {
            region_id: 3,
            // Entry 11 of term 5 was overwritten by a leader of term 7.
            entries: vec![
                entry(10, 5, put(b"b")),
                entry(11, 7, put(b"c")),
                entry(12, 7, poison),
            ],
            proposals: vec![
                proposal(10, 5),
                proposal(11, 5),
                proposal(11, 7),
                proposal(12, 7),
            ],
        };
        poller.apply_task(&mut fsm, task);
        let answers: Vec<((u64, u64), Option<Error>)> = fsm
            .done
            .iter()
            .map(|(p, resp)| ((p.term, p.index), response_error(resp)))
            .collect();
        assert_eq!(answers.len(), 4, "{answers:?}");
        assert_eq!(answers[0], ((5, 10), None));
        assert_eq!(answers[1], ((5, 11), Some(Error::StaleCommand)));
        assert_eq!(
            answers[2],
            ((7, 11), None),
            "an applied write reported stale"
        );
        assert!(
            matches!(answers[3], ((7, 12), Some(Error::InvalidRequest(_)))),
            "{:?}",
            answers[3]
        );
        assert_eq!(fsm.apply_state.applied_index, 12);
        // Two puts and the apply state; nothing of the poison range.
        assert_eq!(poller.wb.as_ref().map(WriteBatch::count), Some(3));
    }
}
