//! Admin commands (DESIGN §6): what each one checks and bumps of the
//! region epoch, the typed refusals, and the propose-side decisions of
//! each command (one file per command as they arrive; `compact` first).

mod compact;
mod conf_change;
mod error;
mod merge;
mod split;
mod transfer;

pub use self::compact::{CompactDecision, CompactInputs, LogGc, compact_decision};
pub use self::conf_change::{
    LeaderView, PROMOTE_MAX_LAG, change_region, change_region_v2, check_change_peers,
    check_ids_not_removed, conf_change_v2, is_joint, removed_peers,
};
pub use self::error::{AdminError, SplitKeyFault};
pub use self::merge::{check_merge_regions, check_merge_tail, epoch_at_or_before, merged_region};
pub use self::split::{DEFAULT_SPLIT_MAX_KEYS, check_split_keys, split_regions};
pub use self::transfer::{TRANSFER_LEADER_MAX_LAG, Transferee, check_transfer};

use flotilla_proto::metapb::{Region, RegionEpoch};
use flotilla_proto::raft_cmdpb::RaftCmdRequest;
use flotilla_proto::raft_cmdpb::admin_request::Cmd;

use super::error::{Error, Result};

/// What an admin command checks of the region epoch before it applies, and
/// what it bumps when it does (DESIGN §6; TiKV's `admin_cmd_epoch_lookup`).
/// Epochs are compared across stores and versions: a row never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochRule {
    /// The request's `version` must equal the region's.
    pub check_version: bool,
    /// The request's `conf_ver` must equal the region's.
    pub check_conf_ver: bool,
    /// Applying it bumps `version` (the range changes).
    pub bump_version: bool,
    /// Applying it bumps `conf_ver` (the peers change).
    pub bump_conf_ver: bool,
}

impl EpochRule {
    const fn new(check: (bool, bool), bump: (bool, bool)) -> EpochRule {
        EpochRule {
            check_version: check.0,
            check_conf_ver: check.1,
            bump_version: bump.0,
            bump_conf_ver: bump.1,
        }
    }
}

/// The epoch rule of `cmd`: the table of DESIGN §6 as one function.
pub const fn epoch_rule(cmd: &Cmd) -> EpochRule {
    const VERSION: (bool, bool) = (true, false);
    const CONF_VER: (bool, bool) = (false, true);
    const BOTH: (bool, bool) = (true, true);
    const NONE: (bool, bool) = (false, false);
    match cmd {
        Cmd::ChangePeer(_) | Cmd::ChangePeerV2(_) => EpochRule::new(CONF_VER, CONF_VER),
        Cmd::BatchSplit(_) => EpochRule::new(BOTH, VERSION),
        Cmd::PrepareMerge(_) => EpochRule::new(BOTH, BOTH),
        Cmd::CommitMerge(_) | Cmd::RollbackMerge(_) => EpochRule::new(BOTH, VERSION),
        Cmd::TransferLeader(_) => EpochRule::new(BOTH, NONE),
        Cmd::CompactLog(_) => EpochRule::new(NONE, NONE),
    }
}

/// The admin command a request carries, checked for shape the same way
/// at propose and at apply: nothing else beside it, and a command inside.
///
/// # Errors
/// [`Error::InvalidRequest`] for another request beside it or an admin
/// request without a command; `None` is not an error (not an admin
/// request).
pub fn admin_cmd(request: &RaftCmdRequest) -> Result<Option<&Cmd>> {
    let Some(admin) = &request.admin_request else {
        return Ok(None);
    };
    if !request.requests.is_empty() {
        return Err(Error::InvalidRequest(
            "an admin command carries no other request".into(),
        ));
    }
    admin
        .cmd
        .as_ref()
        .map(Some)
        .ok_or_else(|| Error::InvalidRequest("admin request without a command".into()))
}

/// Checks the epoch fields `cmd`'s rule names against the region's: a
/// stale one is refused with the current region (DESIGN §6).
///
/// # Errors
/// [`Error::EpochNotMatch`] with `region`.
pub fn check_epoch(cmd: &Cmd, asked: Option<RegionEpoch>, region: &Region) -> Result<()> {
    let rule = epoch_rule(cmd);
    let current = region.region_epoch.unwrap_or_default();
    let asked = asked.unwrap_or_default();
    let stale = (rule.check_version && asked.version != current.version)
        || (rule.check_conf_ver && asked.conf_ver != current.conf_ver);
    if stale {
        return Err(Error::EpochNotMatch {
            current_regions: vec![region.clone()],
        });
    }
    Ok(())
}

/// The name of `cmd` as the `AdminRequest.cmd` field that carries it.
pub const fn cmd_name(cmd: &Cmd) -> &'static str {
    match cmd {
        Cmd::ChangePeer(_) => "change_peer",
        Cmd::ChangePeerV2(_) => "change_peer_v2",
        Cmd::BatchSplit(_) => "batch_split",
        Cmd::PrepareMerge(_) => "prepare_merge",
        Cmd::CommitMerge(_) => "commit_merge",
        Cmd::RollbackMerge(_) => "rollback_merge",
        Cmd::TransferLeader(_) => "transfer_leader",
        Cmd::CompactLog(_) => "compact_log",
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::raft_cmdpb::{
        BatchSplitRequest, ChangePeerRequest, ChangePeerV2Request, CommitMergeRequest,
        CompactLogRequest, PrepareMergeRequest, RollbackMergeRequest, TransferLeaderRequest,
    };

    use super::*;

    fn rule(cmd: Cmd) -> (bool, bool, bool, bool) {
        let r = epoch_rule(&cmd);
        (
            r.check_version,
            r.check_conf_ver,
            r.bump_version,
            r.bump_conf_ver,
        )
    }

    /// DESIGN §6 row ChangePeer / ChangePeerV2: check conf_ver, bump conf_ver.
    #[test]
    fn conf_change_checks_and_bumps_conf_ver() {
        let want = (false, true, false, true);
        assert_eq!(rule(Cmd::ChangePeer(ChangePeerRequest::default())), want);
        assert_eq!(
            rule(Cmd::ChangePeerV2(ChangePeerV2Request::default())),
            want
        );
    }

    /// DESIGN §6 row BatchSplit: check version and conf_ver, bump version.
    #[test]
    fn split_checks_both_and_bumps_version() {
        assert_eq!(
            rule(Cmd::BatchSplit(BatchSplitRequest::default())),
            (true, true, true, false)
        );
    }

    /// DESIGN §6 row PrepareMerge: check both, bump both.
    #[test]
    fn prepare_merge_checks_and_bumps_both() {
        assert_eq!(
            rule(Cmd::PrepareMerge(PrepareMergeRequest::default())),
            (true, true, true, true)
        );
    }

    /// DESIGN §6 row CommitMerge / RollbackMerge: check both, bump version.
    #[test]
    fn commit_and_rollback_merge_check_both_and_bump_version() {
        let want = (true, true, true, false);
        assert_eq!(rule(Cmd::CommitMerge(CommitMergeRequest::default())), want);
        assert_eq!(
            rule(Cmd::RollbackMerge(RollbackMergeRequest::default())),
            want
        );
    }

    /// DESIGN §6 row TransferLeader: check both, bump nothing.
    #[test]
    fn transfer_leader_checks_both_and_bumps_nothing() {
        assert_eq!(
            rule(Cmd::TransferLeader(TransferLeaderRequest::default())),
            (true, true, false, false)
        );
    }

    /// DESIGN §6 row CompactLog: checks and bumps nothing.
    #[test]
    fn compact_log_checks_and_bumps_nothing() {
        assert_eq!(
            rule(Cmd::CompactLog(CompactLogRequest::default())),
            (false, false, false, false)
        );
    }
}
