//! Merge on the apply side (admin.md §1.2), three entries:
//!
//! - **PrepareMerge** (source): the region becomes `Merging` with its
//!   merge state (the target as the leader saw it, the least index every
//!   peer matched, this entry's index as `commit`); `version` and
//!   `conf_ver` bump, so nothing proposed before applies after it. From
//!   then on the delegate applies nothing but a RollbackMerge (the gate in
//!   `apply_entry`).
//! - **CommitMerge** (target): under the target epoch the source recorded.
//!   This store's source peer must have applied the PrepareMerge first
//!   (its data is then final): if it has not, the delegate waits, with the
//!   rest of its queue, and asks the source peer to catch up from the log
//!   tail the command carries. Then one batch writes the target's grown
//!   region and the source's tombstone (with the merge); the source's
//!   keys are the target's from then on.
//! - **RollbackMerge** (source): `Normal` again, `version` bumped.
//!
//! A CommitMerge refused here is reported (`ExecResult::MergeRefused`)
//! when the refusal is final: the target's epoch moved past the recorded
//! one (epochs only grow, so no later CommitMerge under it can apply),
//! this store's peer applied every entry since the recorded epoch from
//! the log (its apply origin, `keys::apply_origin_key`, is at or before
//! it: no earlier CommitMerge succeeded here unseen, as one skipped by a
//! snapshot could have), and none of this merge succeeded here (a
//! duplicate proposed by a new leader after the first applied). That is
//! the source's proof that it may roll back.

use std::collections::VecDeque;

use flotilla_engine::{Cf, WriteBatch, keys};
use flotilla_proto::eraftpb::Entry;
use flotilla_proto::metapb::{Region, RegionEpoch};
use flotilla_proto::raft_cmdpb::{
    AdminResponse, CommitMergeRequest, CommitMergeResponse, PrepareMergeRequest,
    PrepareMergeResponse, RaftCmdRequest, RollbackMergeRequest, RollbackMergeResponse,
    admin_response,
};
use flotilla_proto::raft_serverpb::{MergeState, PeerState, RegionLocalState};

use super::ApplyFsm;
use super::split::SplitCtx;
use crate::store::admin::{
    AdminError, check_epoch, check_merge_regions, epoch_at_or_before, merged_region,
};
use crate::store::error::{Error, Result};
use crate::store::msg::{ApplyMsg, CommitMergeResult, ExecResult, Proposal};

/// A delegate's merge bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct ApplyMerge {
    /// The region is `Merging` (a PrepareMerge applied): nothing but a
    /// RollbackMerge applies.
    pub state: Option<MergeState>,
    /// Merges this delegate applied in the current round, (source,
    /// commit): their writes are not in the engine yet (cleared when the
    /// round's batch is written).
    pub absorbed: Vec<(u64, u64)>,
    /// Stopped at a CommitMerge until this store's source peer caught up.
    pub wait: Option<Box<WaitMerge>>,
    /// Messages taken from the queue while waiting, handled before it.
    pub backlog: VecDeque<ApplyMsg>,
}

/// A delegate stopped at a CommitMerge until this store's source peer has
/// applied the merge's PrepareMerge.
#[derive(Debug)]
pub(crate) struct WaitMerge {
    /// The source region.
    pub source_id: u64,
    /// The CommitMerge and the entries after it, not applied yet.
    pub entries: Vec<Entry>,
    /// Their proposals.
    pub proposals: VecDeque<Proposal>,
}

/// What a CommitMerge did at apply.
pub(super) enum CommitOutcome {
    /// Applied or refused (boxed: the response is large, waiting is
    /// not).
    Done(Box<Result<(AdminResponse, ExecResult)>>),
    /// This store's source peer has not applied the PrepareMerge yet.
    Wait,
}

fn response(cmd: admin_response::Cmd) -> AdminResponse {
    AdminResponse { cmd: Some(cmd) }
}

fn bump(region: &mut Region, version: bool, conf_ver: bool) {
    let e = region.region_epoch.unwrap_or_default();
    region.region_epoch = Some(RegionEpoch {
        version: e.version + u64::from(version),
        conf_ver: e.conf_ver + u64::from(conf_ver),
    });
}

/// PrepareMerge at `index`: the region becomes `Merging`.
///
/// # Errors
/// Refusals of the regions ([`check_merge_regions`]; the leader checked
/// them, every replica checks them alike).
pub(super) fn exec_prepare_merge(
    wb: &mut WriteBatch,
    req: &PrepareMergeRequest,
    fsm: &mut ApplyFsm,
    index: u64,
) -> Result<(AdminResponse, ExecResult)> {
    let target = req
        .target
        .clone()
        .ok_or_else(|| Error::InvalidRequest("prepare_merge without a target".into()))?;
    check_merge_regions(&fsm.region, &target).map_err(Error::Admin)?;
    let mut region = fsm.region.clone();
    bump(&mut region, true, true);
    let merge_state = MergeState {
        min_index: req.min_index,
        target: Some(target),
        commit: index,
    };
    let mut state = RegionLocalState {
        region: Some(region.clone()),
        merge_state: Some(merge_state.clone()),
        ..Default::default()
    };
    state.set_state(PeerState::Merging);
    wb.put_msg(Cf::Raft, &keys::region_state_key(region.id), &state);
    fsm.region = region.clone();
    fsm.set_merging(Some(merge_state.clone()));
    Ok((
        response(admin_response::Cmd::PrepareMerge(PrepareMergeResponse {
            region: Some(region.clone()),
            commit: index,
        })),
        ExecResult::PrepareMerge(Box::new((region, merge_state))),
    ))
}

/// RollbackMerge of the merge prepared at `req.commit`: `Normal` again.
///
/// # Errors
/// `InvalidRequest` when the region is not merging at that index.
pub(super) fn exec_rollback_merge(
    wb: &mut WriteBatch,
    req: &RollbackMergeRequest,
    fsm: &mut ApplyFsm,
) -> Result<(AdminResponse, ExecResult)> {
    if fsm.merging().map(|m| m.commit) != Some(req.commit) {
        return Err(Error::InvalidRequest(format!(
            "no merge prepared at {} to roll back",
            req.commit
        )));
    }
    let mut region = fsm.region.clone();
    bump(&mut region, true, false);
    let mut state = RegionLocalState {
        region: Some(region.clone()),
        ..Default::default()
    };
    state.set_state(PeerState::Normal);
    wb.put_msg(Cf::Raft, &keys::region_state_key(region.id), &state);
    fsm.region = region.clone();
    fsm.set_merging(None);
    Ok((
        response(admin_response::Cmd::RollbackMerge(RollbackMergeResponse {})),
        ExecResult::RollbackMerge(Box::new(region)),
    ))
}

/// CommitMerge of `req.source` into this delegate's region (see the
/// module doc).
pub(super) fn exec_commit_merge(
    ctx: &SplitCtx<'_>,
    wb: &mut WriteBatch,
    request: &RaftCmdRequest,
    req: &CommitMergeRequest,
    fsm: &mut ApplyFsm,
) -> CommitOutcome {
    let Some(source) = req.source.as_ref() else {
        return CommitOutcome::Done(Box::new(Err(Error::InvalidRequest(
            "commit_merge without a source".into(),
        ))));
    };
    if let Err(e) = check_commit(request, source, fsm) {
        let asked = request.header.as_ref().and_then(|h| h.region_epoch);
        match refusal_is_final(ctx, asked, source.id, req.commit, fsm) {
            Ok(true) => fsm.results.push(ExecResult::MergeRefused {
                source_id: source.id,
                commit: req.commit,
            }),
            Ok(false) => {}
            Err(read) => return CommitOutcome::Done(Box::new(Err(read))),
        }
        return CommitOutcome::Done(Box::new(Err(e)));
    }
    let state = match ctx
        .engine
        .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(source.id))
    {
        Ok(s) => s,
        Err(e) => return CommitOutcome::Done(Box::new(Err(e.into()))),
    };
    let ready = state.filter(|s| {
        s.state() == PeerState::Merging
            && s.merge_state.as_ref().is_some_and(|m| {
                m.commit == req.commit && m.target.as_ref().is_some_and(|t| t.id == fsm.region.id)
            })
    });
    let Some(state) = ready else {
        return CommitOutcome::Wait;
    };
    let source = state.region.unwrap_or_else(|| source.clone());
    let merged = merged_region(&source, &fsm.region);
    let mut target_state = RegionLocalState {
        region: Some(merged.clone()),
        ..Default::default()
    };
    target_state.set_state(PeerState::Normal);
    wb.put_msg(Cf::Raft, &keys::region_state_key(merged.id), &target_state);
    let mut source_state = RegionLocalState {
        region: Some(source.clone()),
        merge_state: Some(MergeState {
            target: Some(merged.clone()),
            ..state.merge_state.unwrap_or_default()
        }),
        ..Default::default()
    };
    source_state.set_state(PeerState::Tombstone);
    wb.put_msg(Cf::Raft, &keys::region_state_key(source.id), &source_state);
    fsm.region = merged.clone();
    fsm.merge_ext().absorbed.push((source.id, req.commit));
    CommitOutcome::Done(Box::new(Ok((
        response(admin_response::Cmd::CommitMerge(CommitMergeResponse {})),
        ExecResult::CommitMerge(Box::new(CommitMergeResult {
            region: merged,
            source,
        })),
    ))))
}

/// Whether a CommitMerge under `asked`, of the merge of `source_id`
/// prepared at `commit`, refused here proves that none ever applies (see
/// the module doc).
fn refusal_is_final(
    ctx: &SplitCtx<'_>,
    asked: Option<RegionEpoch>,
    source_id: u64,
    commit: u64,
    fsm: &ApplyFsm,
) -> Result<bool> {
    // Under an epoch the target has not reached, a later CommitMerge may
    // apply; under this one or an older one, none does (the checks are
    // alike for one epoch, and epochs only grow).
    if !epoch_at_or_before(asked, fsm.region.region_epoch) {
        return Ok(false);
    }
    if !epoch_at_or_before(Some(apply_origin(ctx.engine, fsm.region.id)?), asked) {
        return Ok(false);
    }
    if fsm
        .merge
        .as_ref()
        .is_some_and(|m| m.absorbed.contains(&(source_id, commit)))
    {
        return Ok(false);
    }
    let merged_here = ctx
        .engine
        .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(source_id))?
        .filter(|s| s.state() == PeerState::Tombstone)
        .and_then(|s| s.merge_state)
        .is_some_and(|m| m.commit == commit);
    Ok(!merged_here)
}

/// This store's apply origin of region `region_id` (see
/// `keys::apply_origin_key`): the epoch from which its peer applied
/// every entry from the log.
///
/// # Errors
/// Engine reads.
pub(crate) fn apply_origin(
    engine: &flotilla_engine::Engine,
    region_id: u64,
) -> Result<RegionEpoch> {
    Ok(engine
        .get_msg::<RegionEpoch>(Cf::Raft, &keys::apply_origin_key(region_id))?
        .unwrap_or_default())
}

/// The checks every target replica makes of a CommitMerge alike: the
/// recorded epoch, the target not merging itself, the regions still fit
/// to merge.
fn check_commit(request: &RaftCmdRequest, source: &Region, fsm: &ApplyFsm) -> Result<()> {
    let asked = request.header.as_ref().and_then(|h| h.region_epoch);
    if let Some(cmd) = request.admin_request.as_ref().and_then(|a| a.cmd.as_ref()) {
        check_epoch(cmd, asked, &fsm.region)?;
    }
    if fsm.merging().is_some() {
        return Err(Error::Admin(AdminError::RegionMerging {
            region_id: fsm.region.id,
        }));
    }
    check_merge_regions(source, &fsm.region).map_err(Error::Admin)
}

#[cfg(test)]
mod tests {
    use flotilla_engine::Durability;
    use flotilla_proto::metapb::Peer;
    use flotilla_proto::raft_cmdpb::RaftRequestHeader;
    use flotilla_proto::raft_serverpb::RaftApplyState;

    use super::super::TestStore;
    use super::*;

    fn region(id: u64, start: &'static [u8], end: &'static [u8], version: u64) -> Region {
        Region {
            id,
            start_key: bytes::Bytes::from_static(start),
            end_key: bytes::Bytes::from_static(end),
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version,
            }),
            peers: vec![Peer {
                id: id * 10,
                store_id: 1,
                ..Default::default()
            }],
        }
    }

    fn commit_request(source: &Region, commit: u64, target_epoch: RegionEpoch) -> RaftCmdRequest {
        RaftCmdRequest {
            header: Some(RaftRequestHeader {
                region_id: 2,
                region_epoch: Some(target_epoch),
                ..Default::default()
            }),
            requests: Vec::new(),
            admin_request: Some(flotilla_proto::raft_cmdpb::AdminRequest {
                cmd: Some(flotilla_proto::raft_cmdpb::admin_request::Cmd::CommitMerge(
                    CommitMergeRequest {
                        source: Some(source.clone()),
                        commit,
                        entries: Vec::new(),
                    },
                )),
            }),
        }
    }

    fn commit_req(request: &RaftCmdRequest) -> CommitMergeRequest {
        match request.admin_request.as_ref().and_then(|a| a.cmd.as_ref()) {
            Some(flotilla_proto::raft_cmdpb::admin_request::Cmd::CommitMerge(r)) => r.clone(),
            _ => unreachable!(),
        }
    }

    /// admin.md scenario 21 (apply part): PrepareMerge makes the source
    /// `Merging` with both epoch parts bumped; a CommitMerge waits until
    /// the source's state says so, then writes the target's grown region
    /// (version past both) and the source's tombstone with the merge, in
    /// one batch.
    #[test]
    fn commit_merge_waits_for_the_source_then_writes_both_states() {
        let store = TestStore::new();
        let (engine, ctx) = (&store.engine, store.ctx());
        let target = region(2, b"m", b"", 3);
        let mut src = ApplyFsm::new(
            region(1, b"", b"m", 5),
            Peer::default(),
            RaftApplyState::default(),
        );
        let mut tgt = ApplyFsm::new(target.clone(), Peer::default(), RaftApplyState::default());
        let recorded = target.region_epoch.unwrap();
        let request = commit_request(&src.region, 7, recorded);
        let req = commit_req(&request);

        let mut wb = engine.write_batch();
        assert!(matches!(
            exec_commit_merge(&ctx, &mut wb, &request, &req, &mut tgt),
            CommitOutcome::Wait
        ));
        assert_eq!(wb.count(), 0, "a waiting CommitMerge writes nothing");

        let prepare = PrepareMergeRequest {
            min_index: 5,
            target: Some(target.clone()),
        };
        let (_, res) = exec_prepare_merge(&mut wb, &prepare, &mut src, 7).unwrap();
        engine.write(wb, Durability::Sync).unwrap();
        let ExecResult::PrepareMerge(prepared) = res else {
            panic!("{res:?}")
        };
        assert_eq!(
            prepared.0.region_epoch,
            Some(RegionEpoch {
                conf_ver: 2,
                version: 6
            })
        );
        assert_eq!(prepared.1.commit, 7);

        let request = commit_request(&src.region, 7, recorded);
        let mut wb = engine.write_batch();
        let CommitOutcome::Done(done) = exec_commit_merge(&ctx, &mut wb, &request, &req, &mut tgt)
        else {
            panic!("the merge waits")
        };
        let Ok((_, ExecResult::CommitMerge(done))) = *done else {
            panic!("the merge did not apply")
        };
        engine.write(wb, Durability::Sync).unwrap();
        assert_eq!(
            (&done.region.start_key[..], &done.region.end_key[..]),
            (&b""[..], &b""[..])
        );
        assert_eq!(done.region.region_epoch.map(|e| e.version), Some(7));
        let state = |id| {
            engine
                .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(id))
                .unwrap()
                .unwrap()
        };
        assert_eq!(state(2).region.as_ref(), Some(&done.region));
        let src_state = state(1);
        assert_eq!(src_state.state(), PeerState::Tombstone);
        assert_eq!(
            src_state.merge_state.and_then(|m| m.target).map(|t| t.id),
            Some(2)
        );
    }

    /// A CommitMerge under an epoch the target moved past, on a delegate
    /// that applied everything since from the log, is refused for good
    /// (the source may roll back); under an epoch the target has not
    /// reached, or past a snapshot that skipped the recorded epoch, it is
    /// refused without that proof.
    #[test]
    fn a_stale_commit_merge_proves_a_refusal_only_when_final() {
        let store = TestStore::new();
        let (engine, ctx) = (&store.engine, store.ctx());
        let source = region(1, b"", b"m", 5);
        let epoch = |version| RegionEpoch {
            conf_ver: 1,
            version,
        };
        let refused = |fsm: &mut ApplyFsm, recorded: RegionEpoch| {
            fsm.results.clear();
            let request = commit_request(&source, 7, recorded);
            let req = commit_req(&request);
            let mut wb = engine.write_batch();
            let out = exec_commit_merge(&ctx, &mut wb, &request, &req, fsm);
            assert!(matches!(
                out,
                CommitOutcome::Done(r) if matches!(*r, Err(Error::EpochNotMatch { .. }))
            ));
            fsm.results.iter().any(|r| {
                matches!(
                    r,
                    ExecResult::MergeRefused {
                        source_id: 1,
                        commit: 7
                    }
                )
            })
        };
        // Applied from the log since version 3, now at 4.
        let mut tgt = ApplyFsm::new(
            region(2, b"m", b"", 3),
            Peer::default(),
            RaftApplyState::default(),
        );
        tgt.region = region(2, b"m", b"", 4);
        assert!(refused(&mut tgt, epoch(3)), "moved past the recorded epoch");
        assert!(!refused(&mut tgt, epoch(5)), "not reached yet");
        // A snapshot brought it to 4 (3 was never applied here).
        let mut wb = engine.write_batch();
        wb.put_msg(Cf::Raft, &keys::apply_origin_key(2), &epoch(4));
        engine.write(wb, Durability::Sync).unwrap();
        assert!(!refused(&mut tgt, epoch(3)), "skipped by a snapshot");
        // Merged here already (a duplicate CommitMerge after the first):
        // no proof, in the round that merged or after.
        let mut wb = engine.write_batch();
        wb.delete(Cf::Raft, &keys::apply_origin_key(2));
        engine.write(wb, Durability::Sync).unwrap();
        assert!(refused(&mut tgt, epoch(3)));
        tgt.merge_ext().absorbed.push((1, 7));
        assert!(!refused(&mut tgt, epoch(3)), "merged in this round");
        tgt.merge_ext().absorbed.clear();
        let mut tomb = RegionLocalState {
            region: Some(source.clone()),
            merge_state: Some(MergeState {
                commit: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        tomb.set_state(PeerState::Tombstone);
        let mut wb = engine.write_batch();
        wb.put_msg(Cf::Raft, &keys::region_state_key(1), &tomb);
        engine.write(wb, Durability::Sync).unwrap();
        assert!(!refused(&mut tgt, epoch(3)), "merged in an earlier round");
    }
}
