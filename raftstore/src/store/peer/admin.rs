//! Admin commands a client sends the peer (DESIGN §6): routed and
//! epoch-checked like writes, then handled by the leader. TransferLeader
//! is not replicated: the answer says the transfer started (the new
//! leader takes over within an election timeout, or the transfer is
//! abandoned). ChangePeer is proposed as a conf change entry and answered
//! when it applies.

use flotilla_proto::metapb::PeerRole;
use flotilla_proto::raft_cmdpb::{
    AdminResponse, ChangePeerRequest, CompactLogRequest, CompactLogResponse, RaftCmdRequest,
    RaftCmdResponse, RaftResponseHeader, TransferLeaderRequest, TransferLeaderResponse,
    admin_request, admin_response,
};

use flotilla_proto::eraftpb::{ConfChange, ConfChangeV2};
use prost::Message as _;

use super::Peer;
use crate::raft::tracker::ProgressState;
use crate::store::admin::{
    AdminError, LeaderView, Transferee, admin_cmd, check_change_peers, check_epoch,
    check_ids_not_removed, check_transfer, cmd_name, conf_change_v2,
};
use crate::store::config::Config;
use crate::store::error::{Error, Result};
use crate::store::hibernation::Hibernation;
use crate::store::liveness::SupportStatus;
use crate::store::msg::Responder;
use crate::store::removed;
use crate::store::util::err_response;
use std::time::Instant;

/// What the leader does with an admin command that passed its checks.
enum AdminStep {
    /// Answer now.
    Answer(Box<RaftCmdResponse>),
    /// Propose this conf change; answer when it applies.
    ProposeConfChange(ConfChange),
    /// Propose this (possibly joint) conf change; answer when it applies.
    ProposeConfChangeV2(ConfChangeV2),
    /// Propose this encoded command (a split); answer when it applies.
    ProposeSplit(Vec<u8>),
    /// Propose this encoded command (a client's CompactLog); answer when
    /// it applies.
    Propose(Vec<u8>),
    /// Propose this encoded PrepareMerge; answer when it applies.
    ProposePrepareMerge(Vec<u8>),
    /// Have this store's target peer check the PrepareMerge's target
    /// first (it comes back as `MergeMsg::TargetChecked`).
    CheckMergeTarget,
}

impl Peer {
    /// Handles a client's admin command: answered at once (TransferLeader,
    /// refusals) or once its entry applies (ChangePeer).
    pub(super) fn on_admin_command(
        &mut self,
        cfg: &Config,
        hib: &Hibernation,
        request: RaftCmdRequest,
        callback: Responder,
    ) {
        self.admin_step(cfg, hib, request, callback, false);
    }

    /// A PrepareMerge whose target this store's target peer checked (see
    /// `MergeMsg::CheckTarget`): checked again here, then proposed.
    pub fn on_merge_target_checked(
        &mut self,
        cfg: &Config,
        hib: &Hibernation,
        request: RaftCmdRequest,
        callback: Responder,
    ) {
        self.admin_step(cfg, hib, request, callback, true);
    }

    fn admin_step(
        &mut self,
        cfg: &Config,
        hib: &Hibernation,
        request: RaftCmdRequest,
        callback: Responder,
        target_checked: bool,
    ) {
        let last_before = self.raft.raft.raft_log().last_index();
        match self.admin_command(cfg, hib, &request, target_checked) {
            Ok(AdminStep::CheckMergeTarget) => self.check_merge_target(request, callback),
            Ok(AdminStep::Answer(resp)) => {
                callback.respond(*resp);
            }
            Ok(AdminStep::ProposeConfChange(cc)) => {
                self.propose_with(callback, |raft| raft.propose_conf_change(Vec::new(), &cc));
            }
            Ok(AdminStep::ProposeConfChangeV2(cc)) => {
                self.propose_with(callback, |raft| {
                    raft.propose_conf_change_v2(Vec::new(), &cc)
                });
            }
            Ok(AdminStep::Propose(data)) => {
                self.propose_with(callback, |raft| raft.propose(Vec::new(), data));
            }
            Ok(AdminStep::ProposePrepareMerge(data)) => {
                let index = self.raft.raft.raft_log().last_index() + 1;
                self.propose_with(callback, |raft| raft.propose(Vec::new(), data));
                if self.raft.raft.raft_log().last_index() == index {
                    self.note_prepare_merge_proposed(index);
                }
            }
            Ok(AdminStep::ProposeSplit(data)) => {
                let index = self.raft.raft.raft_log().last_index() + 1;
                self.propose_with(callback, |raft| raft.propose(Vec::new(), data));
                if self.raft.raft.raft_log().last_index() == index {
                    self.note_split_proposed(index);
                }
            }
            Err(e) => {
                callback.respond(err_response(e));
            }
        }
        self.broadcast_admin_commit(last_before);
    }

    /// If an admin entry entered the log past `last_before`, the followers
    /// learn its commit at once (commits of data entries ride on the next
    /// append or heartbeat): a split, merge step or conf change should
    /// take effect on every store without waiting for unrelated traffic.
    pub(super) fn broadcast_admin_commit(&mut self, last_before: u64) {
        let last = self.raft.raft.raft_log().last_index();
        if last > last_before {
            self.raft.raft.broadcast_commit_through(last);
        }
    }

    fn admin_command(
        &mut self,
        cfg: &Config,
        hib: &Hibernation,
        request: &RaftCmdRequest,
        target_checked: bool,
    ) -> Result<AdminStep> {
        let header = self.check_header(request)?;
        // An admin entry is bounded as a write's is (the leader's own
        // CommitMerge, which carries a log tail, has its own bound).
        let size = request.encoded_len() as u64;
        if size > cfg.entry_max_size {
            return Err(Error::EntryTooLarge {
                region_id: self.region_id(),
                entry_size: size,
            });
        }
        let cmd = admin_cmd(request)?
            .ok_or_else(|| Error::InvalidRequest("not an admin request".into()))?;
        check_epoch(cmd, header.region_epoch, self.region())?;
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        if !matches!(cmd, admin_request::Cmd::TransferLeader(_)) {
            self.check_not_merging()?;
        }
        let resp = match cmd {
            admin_request::Cmd::TransferLeader(req) => {
                self.transfer_leader(req)?;
                admin_response::Cmd::TransferLeader(TransferLeaderResponse {})
            }
            admin_request::Cmd::ChangePeer(req) => {
                self.check_membership_change(hib, std::slice::from_ref(req))?;
                let peer = req.peer.unwrap_or_default();
                return Ok(AdminStep::ProposeConfChange(ConfChange {
                    change_type: req.change_type,
                    node_id: peer.id,
                    context: request.encode_to_vec().into(),
                    id: 0,
                }));
            }
            admin_request::Cmd::BatchSplit(req) => {
                self.check_split(req, cfg.split_max_keys)?;
                return Ok(AdminStep::ProposeSplit(request.encode_to_vec()));
            }
            admin_request::Cmd::ChangePeerV2(req) => {
                self.check_membership_change(hib, &req.changes)?;
                let mut cc = conf_change_v2(&req.changes);
                cc.context = request.encode_to_vec().into();
                return Ok(AdminStep::ProposeConfChangeV2(cc));
            }
            admin_request::Cmd::CompactLog(req) => match self.client_compaction(req)? {
                Some(term) => {
                    let mut request = request.clone();
                    if let Some(admin_request::Cmd::CompactLog(r)) =
                        request.admin_request.as_mut().and_then(|a| a.cmd.as_mut())
                    {
                        r.compact_term = term;
                    }
                    return Ok(AdminStep::Propose(request.encode_to_vec()));
                }
                None => admin_response::Cmd::CompactLog(CompactLogResponse {}),
            },
            admin_request::Cmd::PrepareMerge(req) => {
                let data = self.check_prepare_merge(cfg, request, req)?;
                if !target_checked {
                    return Ok(AdminStep::CheckMergeTarget);
                }
                return Ok(AdminStep::ProposePrepareMerge(data));
            }
            // The stores' own steps of a merge, never a client's.
            other @ (admin_request::Cmd::CommitMerge(_) | admin_request::Cmd::RollbackMerge(_)) => {
                return Err(Error::InvalidRequest(format!(
                    "{} is proposed by the store itself",
                    cmd_name(other)
                )));
            }
        };
        Ok(AdminStep::Answer(Box::new(RaftCmdResponse {
            header: Some(RaftResponseHeader {
                current_term: self.raft.raft.term(),
                ..Default::default()
            }),
            responses: Vec::new(),
            admin_response: Some(AdminResponse { cmd: Some(resp) }),
        })))
    }

    /// A client's CompactLog up to `req.compact_index`: refused past the
    /// applied index; nothing to do (`None`) at or below the truncated
    /// one; else the term of the entry at that index, which the leader
    /// fills in (a client does not know it). A compaction past what a
    /// follower matched makes it catch up by a snapshot: the caller's
    /// choice.
    fn client_compaction(&self, req: &CompactLogRequest) -> Result<Option<u64>> {
        let applied = self.raft.store().applied_index();
        if req.compact_index > applied {
            return Err(Error::Admin(AdminError::CompactIndexAhead {
                compact_index: req.compact_index,
                applied_index: applied,
            }));
        }
        let log = self.raft.raft.raft_log();
        if req.compact_index < log.first_index() {
            return Ok(None);
        }
        log.term(req.compact_index)
            .map(Some)
            .map_err(|e| Error::InvalidRequest(format!("compact log: {e}")))
    }

    /// The leader's checks of a membership change before it proposes it
    /// (`admin::check_change_peers`, then `admin::check_ids_not_removed`
    /// against this store's records). A peer on a store this store has
    /// stopped hearing (its support lapsed or was withdrawn) counts as
    /// having matched nothing; one on a store never heard in this life
    /// counts what it matched (store liveness may not have reached it
    /// yet).
    fn check_membership_change(
        &self,
        hib: &Hibernation,
        changes: &[ChangePeerRequest],
    ) -> Result<()> {
        self.check_no_pending_split()?;
        self.check_not_merging()?;
        let raft = &self.raft.raft;
        let log = raft.raft_log();
        let view = LeaderView {
            leader_id: self.meta.id,
            applied_index: self.raft.store().applied_index(),
            pending_conf_index: raft.pending_conf_index(),
            last_index: log.last_index(),
            truncated_index: log.first_index() - 1,
        };
        let now = Instant::now();
        let region = self.region();
        let matched = |id| {
            let lost = region.peers.iter().find(|p| p.id == id).is_some_and(|p| {
                matches!(hib.support_status(p.store_id, now), SupportStatus::Lost(_))
            });
            if lost {
                return 0;
            }
            raft.prs().get(id).map_or(0, |pr| pr.matched)
        };
        check_change_peers(changes, region, &view, matched)?;
        // After the pending check: every earlier removal is applied here,
        // so its record is written.
        check_ids_not_removed(changes, region, |id| {
            Ok(removed::lookup(&self.engine, region.id, id)?)
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
