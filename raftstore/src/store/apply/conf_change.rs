//! Conf change entries on the apply side: ChangePeer (v1) and ChangePeerV2
//! (simple, entering a joint configuration, or leaving one — the leader's
//! own empty entry when it leaves on its own). Every replica checks the
//! change against its region alike; the region's new membership, and a
//! record of each peer it removed (`keys::removed_peer_key`), go into the
//! write batch with the entry, and to the peer, which applies the change
//! to its raft group.

use flotilla_engine::{Cf, WriteBatch, keys};
use flotilla_proto::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use flotilla_proto::raft_cmdpb::{
    AdminResponse, ChangePeerResponse, ChangePeerV2Response, RaftCmdRequest, RaftCmdResponse,
    RaftResponseHeader, admin_request, admin_response,
};
use flotilla_proto::raft_serverpb::{PeerState, RegionLocalState};
use prost::Message as _;

use super::ApplyFsm;
use crate::raft::confchange::v1_to_v2;
use crate::store::admin::{change_region, change_region_v2, check_epoch, conf_change_v2};
use crate::store::error::{Error, Result};
use crate::store::msg::ExecResult;
use crate::store::removed;
use crate::store::util::err_response;

/// Applies a conf change entry. A change that removes this store's peer
/// writes the region's `Tombstone` instead (naming the removed peer, so
/// late messages to it never recreate it), and nothing after it applies
/// here. A refused change writes nothing and answers its typed error (the
/// raft group does not change: the entry only counted as applied).
pub(super) fn apply_conf_change(
    wb: &mut WriteBatch,
    fsm: &mut ApplyFsm,
    entry: &Entry,
) -> RaftCmdResponse {
    let (cc, region, v2) = match decide(fsm, entry) {
        Ok(d) => d,
        Err(e) => return err_response(e),
    };
    let mut state = RegionLocalState {
        region: Some(region.clone()),
        ..Default::default()
    };
    if region.peers.iter().any(|p| p.id == fsm.peer.id) {
        state.set_state(PeerState::Normal);
        removed::record_removals(wb, &fsm.region, &region);
    } else {
        let mut tombstone = region.clone();
        tombstone.peers.push(fsm.peer);
        state.region = Some(tombstone);
        state.set_state(PeerState::Tombstone);
        fsm.removed = true;
    }
    wb.put_msg(Cf::Raft, &keys::region_state_key(region.id), &state);
    fsm.region = region.clone();
    fsm.results.push(ExecResult::ChangePeer {
        cc,
        region: region.clone(),
    });
    let cmd = if v2 {
        admin_response::Cmd::ChangePeerV2(ChangePeerV2Response {
            region: Some(region),
        })
    } else {
        admin_response::Cmd::ChangePeer(ChangePeerResponse {
            region: Some(region),
        })
    };
    RaftCmdResponse {
        header: Some(RaftResponseHeader {
            current_term: entry.term,
            ..Default::default()
        }),
        responses: Vec::new(),
        admin_response: Some(AdminResponse { cmd: Some(cmd) }),
    }
}

/// The change for the raft group, the region after it, and whether it is
/// a v2 change.
fn decide(
    fsm: &ApplyFsm,
    entry: &Entry,
) -> Result<(ConfChangeV2, flotilla_proto::metapb::Region, bool)> {
    let bad = |what: String| Error::InvalidRequest(what);
    let (cc, context) = if entry.entry_type() == EntryType::EntryConfChange {
        let cc = ConfChange::decode(entry.data.clone())
            .map_err(|e| bad(format!("undecodable conf change: {e}")))?;
        (v1_to_v2(&cc), cc.context)
    } else {
        let cc = ConfChangeV2::decode(entry.data.clone())
            .map_err(|e| bad(format!("undecodable conf change: {e}")))?;
        let context = cc.context.clone();
        (cc, context)
    };
    if context.is_empty() {
        // The leader's own entry leaving a joint configuration.
        if !cc.changes.is_empty() {
            return Err(bad("a conf change without its request".into()));
        }
        return Ok((cc, change_region_v2(&[], &fsm.region)?, true));
    }
    let request = RaftCmdRequest::decode(context)
        .map_err(|e| bad(format!("undecodable conf change request: {e}")))?;
    let cmd = request
        .admin_request
        .as_ref()
        .and_then(|a| a.cmd.as_ref())
        .ok_or_else(|| bad("a conf change entry without its request".into()))?;
    let asked = request.header.as_ref().and_then(|h| h.region_epoch);
    check_epoch(cmd, asked, &fsm.region)?;
    let (region, changes, v2) = match cmd {
        admin_request::Cmd::ChangePeer(req) => (
            change_region(req, &fsm.region)?,
            std::slice::from_ref(req),
            false,
        ),
        admin_request::Cmd::ChangePeerV2(req) => (
            change_region_v2(&req.changes, &fsm.region)?,
            &req.changes[..],
            true,
        ),
        _ => return Err(bad("a conf change entry with another request".into())),
    };
    if conf_change_v2(changes).changes != cc.changes {
        return Err(bad(
            "a conf change entry that disagrees with its request".into()
        ));
    }
    Ok((cc, region, v2))
}
