//! Admin commands a client sends the peer (DESIGN §6): routed and
//! epoch-checked like writes, then handled by the leader. TransferLeader
//! is the first: it is not replicated, and the answer says the transfer
//! started (the new leader takes over within an election timeout, or the
//! transfer is abandoned).

use flotilla_proto::metapb::PeerRole;
use flotilla_proto::raft_cmdpb::{
    AdminResponse, RaftCmdRequest, RaftCmdResponse, RaftResponseHeader, TransferLeaderRequest,
    TransferLeaderResponse, admin_request, admin_response,
};

use super::Peer;
use crate::raft::tracker::ProgressState;
use crate::store::admin::{
    AdminError, Transferee, admin_cmd, check_epoch, check_transfer, cmd_name,
};
use crate::store::error::{Error, Result};

impl Peer {
    /// Handles a client's admin command; the response (or the refusal)
    /// is the caller's to send.
    pub(super) fn on_admin_command(&mut self, request: &RaftCmdRequest) -> Result<RaftCmdResponse> {
        let header = self.check_header(request)?;
        let cmd = admin_cmd(request)?
            .ok_or_else(|| Error::InvalidRequest("not an admin request".into()))?;
        check_epoch(cmd, header.region_epoch, self.region())?;
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let resp = match cmd {
            admin_request::Cmd::TransferLeader(req) => {
                self.transfer_leader(req)?;
                admin_response::Cmd::TransferLeader(TransferLeaderResponse {})
            }
            // CompactLog is the store's own (log GC); the others come with
            // their issues.
            other => {
                return Err(Error::Admin(AdminError::NotSupported {
                    command: cmd_name(other).into(),
                }));
            }
        };
        Ok(RaftCmdResponse {
            header: Some(RaftResponseHeader {
                current_term: self.raft.raft.term(),
                ..Default::default()
            }),
            responses: Vec::new(),
            admin_response: Some(AdminResponse { cmd: Some(resp) }),
        })
    }

    /// Starts a leader transfer to the request's peer after the checks of
    /// `admin::check_transfer`. A transfer to this peer itself succeeds at
    /// once (it leads already).
    fn transfer_leader(&mut self, req: &TransferLeaderRequest) -> Result<()> {
        let asked = req
            .peer
            .ok_or_else(|| Error::InvalidRequest("transfer_leader without a peer".into()))?;
        let not_found = || {
            Error::Admin(AdminError::TransfereeNotFound {
                peer_id: asked.id,
                store_id: asked.store_id,
            })
        };
        let peer = self
            .region()
            .peers
            .iter()
            .find(|p| p.id == asked.id && p.store_id == asked.store_id)
            .copied()
            .ok_or_else(not_found)?;
        if peer.id == self.meta.id {
            return Ok(());
        }
        let raft = &self.raft.raft;
        let pr = raft.prs().get(peer.id).ok_or_else(not_found)?;
        let transferee = Transferee {
            peer_id: peer.id,
            is_learner: peer.role() == PeerRole::Learner || pr.is_learner,
            matched: pr.matched,
            snapshot_pending: pr.state == ProgressState::Snapshot,
        };
        check_transfer(
            &transferee,
            raft.raft_log().last_index(),
            self.raft.store().applied_index(),
            raft.pending_conf_index(),
        )
        .map_err(Error::Admin)?;
        self.raft.transfer_leader(peer.id);
        Ok(())
    }
}
