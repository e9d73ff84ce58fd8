//! Admin entries on the apply side (DESIGN §6): the epoch check every
//! replica makes alike, then the command. A refused command writes
//! nothing and is answered with its typed error; the entry still counts
//! as applied (every replica refuses it alike).

use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{
    AdminResponse, CompactLogRequest, CompactLogResponse, RaftCmdRequest, admin_request,
    admin_response,
};
use flotilla_proto::raft_serverpb::{RaftApplyState, RaftTruncatedState};

use crate::store::admin::{AdminError, check_epoch, cmd_name};
use crate::store::error::{Error, Result};
use crate::store::msg::ExecResult;

/// Applies `cmd`, the admin command of `request` (see
/// [`admin_cmd`](crate::store::admin::admin_cmd)), at the apply state
/// before the entry. Returns the response and what the command changed.
pub(super) fn exec_admin(
    request: &RaftCmdRequest,
    cmd: &admin_request::Cmd,
    region: &Region,
    apply_state: &mut RaftApplyState,
) -> Result<(AdminResponse, Option<ExecResult>)> {
    let asked = request.header.as_ref().and_then(|h| h.region_epoch);
    check_epoch(cmd, asked, region)?;
    match cmd {
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
    use flotilla_proto::metapb::RegionEpoch;
    use flotilla_proto::raft_cmdpb::{AdminRequest, BatchSplitRequest, RaftRequestHeader};

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
        let (_, res) = exec_admin(&req, &cmd, &region(), &mut st).unwrap();
        let want = RaftTruncatedState { index: 60, term: 7 };
        assert_eq!(res, Some(ExecResult::CompactLog { truncated: want }));
        assert_eq!(st.truncated_state, Some(want));

        let (req, cmd) = request(compact(40, 6), stale_epoch);
        let (_, res) = exec_admin(&req, &cmd, &region(), &mut st).unwrap();
        assert_eq!(res, None, "below the truncated index");
        assert_eq!(st.truncated_state, Some(want));

        let (req, cmd) = request(compact(101, 7), stale_epoch);
        let err = exec_admin(&req, &cmd, &region(), &mut st).unwrap_err();
        assert_eq!(
            err,
            Error::Admin(AdminError::CompactIndexAhead {
                compact_index: 101,
                applied_index: 100
            })
        );
        assert_eq!(st.truncated_state, Some(want), "a refusal changes nothing");
    }

    /// A command the store does not run is refused typed, after the epoch
    /// check its row of the table asks for.
    #[test]
    fn unsupported_commands_are_refused_after_their_epoch_check() {
        let mut st = state(100, 5);
        let split = admin_request::Cmd::BatchSplit(BatchSplitRequest::default());
        let (req, cmd) = request(split.clone(), RegionEpoch::default());
        assert!(matches!(
            exec_admin(&req, &cmd, &region(), &mut st),
            Err(Error::EpochNotMatch { .. })
        ));
        let (req, cmd) = request(split, region().region_epoch.unwrap());
        assert_eq!(
            exec_admin(&req, &cmd, &region(), &mut st).unwrap_err(),
            Error::Admin(AdminError::NotSupported {
                command: "batch_split".into()
            })
        );
        assert_eq!(st, state(100, 5));
    }
}
