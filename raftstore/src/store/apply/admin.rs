//! Admin entries on the apply side (DESIGN §6): the epoch check every
//! replica makes alike, then the command. A refused command writes
//! nothing and is answered with its typed error; the entry still counts
//! as applied (every replica refuses it alike).

use flotilla_engine::WriteBatch;
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{
    AdminResponse, CompactLogRequest, CompactLogResponse, RaftCmdRequest, admin_request,
    admin_response,
};
use flotilla_proto::raft_serverpb::{RaftApplyState, RaftTruncatedState};

use crate::store::admin::{AdminError, check_epoch, cmd_name};
use crate::store::error::{Error, Result};
use crate::store::msg::ExecResult;

use super::split::{SplitCtx, exec_batch_split};

/// Applies `cmd`, the admin command of `request` (see
/// [`admin_cmd`](crate::store::admin::admin_cmd)), at the apply state
/// before the entry. Returns the response and what the command changed.
pub(super) fn exec_admin(
    ctx: &SplitCtx<'_>,
    wb: &mut WriteBatch,
    request: &RaftCmdRequest,
    cmd: &admin_request::Cmd,
    region: &mut Region,
    apply_state: &mut RaftApplyState,
) -> Result<(AdminResponse, Option<ExecResult>)> {
    let asked = request.header.as_ref().and_then(|h| h.region_epoch);
    check_epoch(cmd, asked, region)?;
    match cmd {
        admin_request::Cmd::BatchSplit(req) => {
            let (resp, result) = exec_batch_split(ctx, wb, req, region)?;
            Ok((resp, Some(result)))
        }
        admin_request::Cmd::CompactLog(req) => {
            let result = exec_compact_log(req, apply_state)?;
            let resp = AdminResponse {
                cmd: Some(admin_response::Cmd::CompactLog(CompactLogResponse {})),
            };
            Ok((resp, result))
        }
        other => Err(Error::Admin(AdminError::NotSupported {
            command: cmd_name(other).into(),
        })),
    }
}

/// CompactLog: moves the truncated state (the entries themselves are
/// deleted by the peer once this apply state is written). A compaction at
/// or below the current truncated index changes nothing; one past the
/// applied index is refused.
fn exec_compact_log(
    req: &CompactLogRequest,
    apply_state: &mut RaftApplyState,
) -> Result<Option<ExecResult>> {
    let truncated = apply_state.truncated_state.unwrap_or_default();
    if req.compact_index <= truncated.index {
        return Ok(None);
    }
    if req.compact_index > apply_state.applied_index {
        return Err(Error::Admin(AdminError::CompactIndexAhead {
            compact_index: req.compact_index,
            applied_index: apply_state.applied_index,
        }));
    }
    if req.compact_term == 0 {
        return Err(Error::InvalidRequest("compact_log without a term".into()));
    }
    let truncated = RaftTruncatedState {
        index: req.compact_index,
        term: req.compact_term,
    };
    apply_state.truncated_state = Some(truncated);
    Ok(Some(ExecResult::CompactLog { truncated }))
}

#[cfg(test)]
mod tests {
    use flotilla_engine::{Durability, Engine};
    use flotilla_proto::metapb::{Peer, RegionEpoch};
    use flotilla_proto::raft_cmdpb::{
        AdminRequest, BatchSplitRequest, RaftRequestHeader, SplitRequest,
    };
    use flotilla_proto::raft_serverpb::{PeerState, RegionLocalState};

    use super::super::TestStore;
    use super::*;

    fn region() -> Region {
        Region {
            id: 3,
            region_epoch: Some(RegionEpoch {
                conf_ver: 2,
                version: 4,
            }),
            ..Default::default()
        }
    }

    fn request(
        cmd: admin_request::Cmd,
        epoch: RegionEpoch,
    ) -> (RaftCmdRequest, admin_request::Cmd) {
        let req = RaftCmdRequest {
            header: Some(RaftRequestHeader {
                region_id: 3,
                region_epoch: Some(epoch),
                ..Default::default()
            }),
            requests: Vec::new(),
            admin_request: Some(AdminRequest {
                cmd: Some(cmd.clone()),
            }),
        };
        (req, cmd)
    }

    fn compact(index: u64, term: u64) -> admin_request::Cmd {
        admin_request::Cmd::CompactLog(CompactLogRequest {
            compact_index: index,
            compact_term: term,
        })
    }

    /// `exec_admin` on a throwaway engine and router.
    fn exec(
        req: &RaftCmdRequest,
        cmd: &admin_request::Cmd,
        region: &mut Region,
        st: &mut RaftApplyState,
    ) -> Result<(AdminResponse, Option<ExecResult>)> {
        exec_in(&TestStore::new(), req, cmd, region, st)
    }

    /// Runs `exec_admin` in `store` and writes its batch.
    fn exec_in(
        store: &TestStore,
        req: &RaftCmdRequest,
        cmd: &admin_request::Cmd,
        region: &mut Region,
        st: &mut RaftApplyState,
    ) -> Result<(AdminResponse, Option<ExecResult>)> {
        let mut wb = store.engine.write_batch();
        let res = exec_admin(&store.ctx(), &mut wb, req, cmd, region, st);
        store.engine.write(wb, Durability::Sync).unwrap();
        res
    }

    fn state(applied: u64, truncated: u64) -> RaftApplyState {
        RaftApplyState {
            applied_index: applied,
            truncated_state: Some(RaftTruncatedState {
                index: truncated,
                term: 5,
            }),
        }
    }

    /// CompactLog moves the truncated state (any epoch: it checks none),
    /// is a no-op at or below it, and is refused past the applied index.
    #[test]
    fn compact_log_moves_truncated_state_within_applied() {
        let stale_epoch = RegionEpoch::default();
        let mut st = state(100, 5);
        let (req, cmd) = request(compact(60, 7), stale_epoch);
        let (_, res) = exec(&req, &cmd, &mut region(), &mut st).unwrap();
        let want = RaftTruncatedState { index: 60, term: 7 };
        assert_eq!(res, Some(ExecResult::CompactLog { truncated: want }));
        assert_eq!(st.truncated_state, Some(want));

        let (req, cmd) = request(compact(40, 6), stale_epoch);
        let (_, res) = exec(&req, &cmd, &mut region(), &mut st).unwrap();
        assert_eq!(res, None, "below the truncated index");
        assert_eq!(st.truncated_state, Some(want));

        let (req, cmd) = request(compact(101, 7), stale_epoch);
        let err = exec(&req, &cmd, &mut region(), &mut st).unwrap_err();
        assert_eq!(
            err,
            Error::Admin(AdminError::CompactIndexAhead {
                compact_index: 101,
                applied_index: 100
            })
        );
        assert_eq!(st.truncated_state, Some(want), "a refusal changes nothing");
    }

    fn split_region() -> Region {
        Region {
            id: 3,
            start_key: b"b".to_vec().into(),
            end_key: b"m".to_vec().into(),
            region_epoch: Some(RegionEpoch {
                conf_ver: 2,
                version: 4,
            }),
            peers: vec![Peer {
                id: 30,
                store_id: 1,
                ..Default::default()
            }],
        }
    }

    fn split_at(key: &[u8], new_id: u64) -> admin_request::Cmd {
        admin_request::Cmd::BatchSplit(BatchSplitRequest {
            requests: vec![SplitRequest {
                split_key: key.to_vec().into(),
                new_region_id: new_id,
                new_peer_ids: vec![new_id * 10],
            }],
            right_derive: false,
        })
    }

    fn region_state(engine: &Engine, id: u64) -> Option<RegionLocalState> {
        engine
            .get_msg(
                flotilla_engine::Cf::Raft,
                &flotilla_engine::keys::region_state_key(id),
            )
            .unwrap()
    }

    /// admin.md §1.1: a split is epoch-checked; applied, it writes the
    /// parent's new range and the new region's starting states in the
    /// apply batch, claims the new region against peers born of messages
    /// meanwhile, and reports both regions. A new region removed from
    /// this store since (a tombstone) is not created again, and the keys
    /// it would inherit are cleared.
    #[test]
    fn batch_split_writes_both_regions_and_respects_tombstones() {
        let store = TestStore::new();
        let mut st = state(100, 5);
        let (req, cmd) = request(split_at(b"f", 7), RegionEpoch::default());
        let mut r = split_region();
        assert!(matches!(
            exec_in(&store, &req, &cmd, &mut r, &mut st),
            Err(Error::EpochNotMatch { .. })
        ));
        assert_eq!(r, split_region(), "a refused split changed the region");

        let (req, cmd) = request(split_at(b"f", 7), split_region().region_epoch.unwrap());
        let (_, res) = exec_in(&store, &req, &cmd, &mut r, &mut st).unwrap();
        let Some(ExecResult::Split(split)) = res else {
            panic!("no split result: {res:?}");
        };
        assert_eq!(&r.end_key[..], b"f");
        assert_eq!(r.region_epoch.unwrap().version, 5);
        assert_eq!(split.derived, r);
        assert_eq!(split.created, vec![true]);
        assert!(store.meta.lock().claimed_by_split(7));
        let new = region_state(&store.engine, 7).expect("new region state");
        assert_eq!(new.state(), PeerState::Normal);
        let new_region = new.region.unwrap();
        assert_eq!(
            (&new_region.start_key[..], &new_region.end_key[..]),
            (&b"f"[..], &b"m"[..])
        );
        assert_eq!(region_state(&store.engine, 3).unwrap().region.unwrap(), r);

        // Region 8 was split off and then removed from this store.
        let store = TestStore::new();
        let mut tomb = RegionLocalState::default();
        tomb.set_state(PeerState::Tombstone);
        let data = flotilla_engine::keys::data_key(b"g");
        let mut wb = store.engine.write_batch();
        wb.put_msg(
            flotilla_engine::Cf::Raft,
            &flotilla_engine::keys::region_state_key(8),
            &tomb,
        );
        wb.put(flotilla_engine::Cf::Default, &data, b"v");
        store.engine.write(wb, Durability::Sync).unwrap();
        let mut r = split_region();
        let (req, cmd) = request(split_at(b"f", 8), split_region().region_epoch.unwrap());
        let (_, res) = exec_in(&store, &req, &cmd, &mut r, &mut st).unwrap();
        let Some(ExecResult::Split(split)) = res else {
            panic!("no split result: {res:?}");
        };
        assert_eq!(split.created, vec![false]);
        assert!(!store.meta.lock().claimed_by_split(8));
        assert_eq!(
            region_state(&store.engine, 8).unwrap().state(),
            PeerState::Tombstone
        );
        assert_eq!(
            store
                .engine
                .get(flotilla_engine::Cf::Default, &data)
                .unwrap(),
            None
        );

        // Region 9's peer here is uninitialized (here: being destroyed):
        // not created by the split, and the keys it would inherit go (its
        // snapshot rewrites the range; destroyed first, they would stay in
        // no region). The parent's own keys stay.
        let store = TestStore::new();
        store.meta.lock().start_destroy(9);
        let kept = flotilla_engine::keys::data_key(b"c");
        let mut wb = store.engine.write_batch();
        wb.put(flotilla_engine::Cf::Default, &data, b"v");
        wb.put(flotilla_engine::Cf::Default, &kept, b"v");
        store.engine.write(wb, Durability::Sync).unwrap();
        let mut r = split_region();
        let (req, cmd) = request(split_at(b"f", 9), split_region().region_epoch.unwrap());
        let (_, res) = exec_in(&store, &req, &cmd, &mut r, &mut st).unwrap();
        let Some(ExecResult::Split(split)) = res else {
            panic!("no split result: {res:?}");
        };
        assert_eq!(split.created, vec![false]);
        assert_eq!(region_state(&store.engine, 9), None);
        let get = |k: &[u8]| store.engine.get(flotilla_engine::Cf::Default, k).unwrap();
        assert_eq!(get(&data), None);
        assert!(get(&kept).is_some());
    }

    /// A command `exec_admin` does not run (the merge steps are run by
    /// `apply::merge`, never here) is refused typed, after the epoch check
    /// its row of the table asks for.
    #[test]
    fn unsupported_commands_are_refused_after_their_epoch_check() {
        let mut st = state(100, 5);
        let merge = admin_request::Cmd::PrepareMerge(Default::default());
        let (req, cmd) = request(merge.clone(), RegionEpoch::default());
        assert!(matches!(
            exec(&req, &cmd, &mut region(), &mut st),
            Err(Error::EpochNotMatch { .. })
        ));
        let (req, cmd) = request(merge, region().region_epoch.unwrap());
        assert_eq!(
            exec(&req, &cmd, &mut region(), &mut st).unwrap_err(),
            Error::Admin(AdminError::NotSupported {
                command: "prepare_merge".into()
            })
        );
        assert_eq!(st, state(100, 5));
    }
}
