//! A region's peer on this store: its raft group, the proposals waiting
//! for apply, and the reads waiting for a confirmed index.

use std::collections::VecDeque;

use bytes::Bytes;
use flotilla_engine::{Cf, Engine, WriteBatch, keys};
use flotilla_proto::eraftpb::{Entry, MessageType};
use flotilla_proto::metapb::{self, Region};
use flotilla_proto::raft_cmdpb::{
    GetResponse, KvPair, RaftCmdRequest, RaftCmdResponse, RaftResponseHeader, Request, Response,
    ScanResponse, SnapResponse, request, response,
};
use flotilla_proto::raft_serverpb::RaftMessage;
use prost::Message as _;
use slog::Logger;

use super::config::Config;
use super::error::{Error, Result};
use super::msg::{ApplyTask, Callback, Proposal};
use super::peer_storage::PeerStorage;
use super::util::{check_key_in_region, err_response};
use crate::raft::{self, RawNode, Ready, StateRole};

/// A read waiting for its ReadIndex to be confirmed and applied.
struct PendingRead {
    /// The context passed to `read_index`.
    id: u64,
    /// The confirmed read index, once known.
    read_index: Option<u64>,
    request: RaftCmdRequest,
    callback: Callback,
}

/// One region's peer.
pub struct Peer {
    /// This peer's identity.
    pub meta: metapb::Peer,
    /// The raft group.
    pub raft: RawNode<PeerStorage>,
    /// Proposals in index order, not yet handed to apply.
    proposals: VecDeque<Proposal>,
    /// Reads in request order.
    reads: VecDeque<PendingRead>,
    next_read_id: u64,
    /// A Ready whose writes are in this round's batch, finished in `end`.
    pending_ready: Option<Ready>,
    /// Whether the last soft state seen said leader.
    was_leader: bool,
    engine: Engine,
    logger: Logger,
}

impl Peer {
    /// Builds the peer of `region` with id `peer_id` from its persisted state.
    ///
    /// # Errors
    /// Engine failures or an invalid raft configuration.
    pub fn new(
        cfg: &Config,
        engine: Engine,
        region: Region,
        peer_id: u64,
        logger: &Logger,
    ) -> Result<Peer> {
        let meta = region
            .peers
            .iter()
            .find(|p| p.id == peer_id)
            .copied()
            .ok_or_else(|| Error::Config(format!("peer {peer_id} not in region {}", region.id)))?;
        let storage = PeerStorage::load(engine.clone(), region)?;
        let mut rc = raft::Config::new(peer_id);
        rc.election_tick = cfg.election_ticks;
        rc.heartbeat_tick = cfg.heartbeat_ticks;
        rc.applied = storage.applied_index();
        rc.max_size_per_msg = cfg.max_size_per_msg;
        rc.max_inflight_msgs = cfg.max_inflight_msgs;
        rc.max_uncommitted_size = cfg.max_uncommitted_size;
        rc.check_quorum = true;
        rc.pre_vote = true;
        rc.disable_proposal_forwarding = true;
        rc.read_only_option = if cfg.lease_read {
            raft::ReadOnlyOption::LeaseBased
        } else {
            raft::ReadOnlyOption::Safe
        };
        let logger = logger.new(slog::o!("region" => storage.region().id, "peer" => peer_id));
        let raft =
            RawNode::new(&rc, storage, &logger).map_err(|e| Error::Config(format!("raft: {e}")))?;
        Ok(Peer {
            meta,
            raft,
            proposals: VecDeque::new(),
            reads: VecDeque::new(),
            next_read_id: 0,
            pending_ready: None,
            was_leader: false,
            engine,
            logger,
        })
    }

    /// The region as this peer knows it.
    pub fn region(&self) -> &Region {
        self.raft.store().region()
    }

    /// The region's id.
    pub fn region_id(&self) -> u64 {
        self.region().id
    }

    /// Whether this peer is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.raft.state() == StateRole::Leader
    }

    /// The leader as a region peer, if known.
    pub fn leader(&self) -> Option<metapb::Peer> {
        let id = self.raft.raft.leader_id();
        self.region().peers.iter().find(|p| p.id == id).copied()
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            region_id: self.region_id(),
            leader: self.leader(),
        }
    }

    /// Steps a raft message from another store.
    pub fn on_raft_message(&mut self, msg: RaftMessage) {
        let Some(m) = msg.message else { return };
        let to = msg.to_peer.map_or(0, |p| p.id);
        if to != self.meta.id {
            slog::debug!(self.logger, "message for another peer"; "to" => to);
            return;
        }
        if let Err(e) = self.raft.step(m) {
            slog::debug!(self.logger, "step failed"; "err" => %e);
        }
    }

    /// Handles a client command: checks it, then proposes a write or starts
    /// a read. Errors are answered through the callback.
    pub fn on_command(&mut self, cfg: &Config, request: RaftCmdRequest, callback: Callback) {
        if let Err(e) = self.check_command(&request) {
            callback(err_response(e));
            return;
        }
        if !self.is_leader() {
            callback(err_response(self.not_leader()));
            return;
        }
        let is_read = request.requests.iter().all(|r| {
            matches!(
                r.cmd,
                Some(request::Cmd::Get(_) | request::Cmd::Scan(_) | request::Cmd::Snap(_))
            )
        });
        if is_read {
            self.start_read(request, callback);
        } else {
            self.propose_write(cfg, request, callback);
        }
    }

    fn check_command(&self, request: &RaftCmdRequest) -> Result<()> {
        let header = request
            .header
            .as_ref()
            .ok_or_else(|| Error::InvalidRequest("missing header".into()))?;
        if request.requests.is_empty() {
            return Err(Error::InvalidRequest("no requests".into()));
        }
        if request.admin_request.is_some() {
            return Err(Error::InvalidRequest(
                "admin commands are not supported yet".into(),
            ));
        }
        let region = self.region();
        if header.region_id != region.id {
            return Err(Error::RegionNotFound(header.region_id));
        }
        if let Some(peer) = &header.peer
            && peer.store_id != self.meta.store_id
        {
            return Err(Error::StoreNotMatch {
                request_store_id: peer.store_id,
                actual_store_id: self.meta.store_id,
            });
        }
        let current = region.region_epoch.unwrap_or_default();
        let epoch = header.region_epoch.unwrap_or_default();
        // Data commands depend on the key range: only `version` matters.
        if epoch.version != current.version {
            return Err(Error::EpochNotMatch {
                current_regions: vec![region.clone()],
            });
        }
        for r in &request.requests {
            for key in request_keys(r) {
                check_key_in_region(key, region)?;
            }
        }
        Ok(())
    }

    fn propose_write(&mut self, cfg: &Config, request: RaftCmdRequest, callback: Callback) {
        let data = request.encode_to_vec();
        if data.len() as u64 > cfg.entry_max_size {
            callback(err_response(Error::EntryTooLarge {
                region_id: self.region_id(),
                entry_size: data.len() as u64,
            }));
            return;
        }
        let index = self.raft.raft.raft_log().last_index() + 1;
        let term = self.raft.raft.term();
        match self.raft.propose(Vec::new(), data) {
            Ok(()) => {
                if self.raft.raft.raft_log().last_index() != index {
                    callback(err_response(Error::ProposalDropped(
                        "entry not appended".into(),
                    )));
                    return;
                }
                self.proposals.push_back(Proposal {
                    index,
                    term,
                    callback,
                });
            }
            Err(raft::Error::ProposalDropped) => {
                let e = if self.is_leader() {
                    Error::ServerIsBusy(
                        "proposal dropped by raft (uncommitted limit or transfer)".into(),
                    )
                } else {
                    self.not_leader()
                };
                callback(err_response(e));
            }
            Err(e) => callback(err_response(Error::ProposalDropped(e.to_string()))),
        }
    }

    fn start_read(&mut self, request: RaftCmdRequest, callback: Callback) {
        self.next_read_id += 1;
        let id = self.next_read_id;
        if let Err(e) = self.raft.read_index(id.to_be_bytes().to_vec()) {
            callback(err_response(Error::ProposalDropped(e.to_string())));
            return;
        }
        self.reads.push_back(PendingRead {
            id,
            read_index: None,
            request,
            callback,
        });
    }

    /// Ticks the raft group once.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Records what the apply side applied and serves reads that waited
    /// for it.
    pub fn on_apply_res(&mut self, res: super::msg::ApplyRes) {
        debug_assert_eq!(
            res.region_id,
            self.region_id(),
            "apply result routed to the wrong peer"
        );
        let applied = res.apply_state.applied_index;
        self.raft
            .raft
            .raft_log_mut()
            .store
            .set_apply_state(res.apply_state);
        self.raft
            .raft
            .raft_log_mut()
            .store
            .compact_cache_to(applied.saturating_sub(1));
        self.raft.advance_apply_to(applied);
        self.serve_reads();
    }

    /// If the group has a Ready: sends what may go now through `send`, puts
    /// the entries and hard state into `wb`, and keeps the Ready for
    /// [`Peer::finish_ready`] after `wb` is written. Returns
    /// `Some(true)` if the peer became leader, `Some(false)` if it stopped
    /// being leader, `None` otherwise.
    pub fn collect_ready(
        &mut self,
        wb: &mut WriteBatch,
        send: &mut impl FnMut(&Peer, flotilla_proto::eraftpb::Message),
    ) -> Option<bool> {
        if self.pending_ready.is_some() || !self.raft.has_ready() {
            return None;
        }
        let mut rd = self.raft.ready();
        let mut role_change = None;
        if let Some(ss) = &rd.ss {
            let leader = ss.raft_state == StateRole::Leader;
            if leader != self.was_leader {
                self.was_leader = leader;
                role_change = Some(leader);
            }
            if !leader {
                self.on_lost_leadership();
            }
        }
        for m in rd.take_messages() {
            send(self, m);
        }
        let store = &mut self.raft.raft.raft_log_mut().store;
        let mut dirty = false;
        if !rd.entries.is_empty() {
            store.append(&rd.entries, wb);
            dirty = true;
        }
        if let Some(hs) = rd.hs {
            store.set_hard_state(hs);
            dirty = true;
        }
        if dirty {
            store.write_raft_state(wb);
        }
        for rs in std::mem::take(&mut rd.read_states) {
            let id = read_id(&rs.request_ctx);
            if let Some(r) = self.reads.iter_mut().find(|r| r.id == id) {
                r.read_index = Some(rs.index);
            }
        }
        self.pending_ready = Some(rd);
        role_change
    }

    /// After this round's write is durable: sends the messages that waited
    /// for it, and returns the committed entries (with their proposals) for
    /// the apply side.
    pub fn finish_ready(
        &mut self,
        send: &mut impl FnMut(&Peer, flotilla_proto::eraftpb::Message),
    ) -> Option<ApplyTask> {
        let mut rd = self.pending_ready.take()?;
        let mut committed = rd.take_committed_entries();
        for m in rd.take_persisted_messages() {
            send(self, m);
        }
        let mut light = self.raft.advance_append(rd);
        for m in std::mem::take(&mut light.messages) {
            send(self, m);
        }
        committed.append(&mut light.committed_entries);
        self.serve_reads();
        self.apply_task(committed)
    }

    fn apply_task(&mut self, entries: Vec<Entry>) -> Option<ApplyTask> {
        let last = entries.last()?.index;
        let mut proposals = Vec::new();
        while self.proposals.front().is_some_and(|p| p.index <= last) {
            if let Some(p) = self.proposals.pop_front() {
                proposals.push(p);
            }
        }
        Some(ApplyTask {
            region_id: self.region_id(),
            entries,
            proposals,
        })
    }

    fn on_lost_leadership(&mut self) {
        // Reads not yet confirmed can no longer be confirmed by this peer.
        let mut kept = VecDeque::new();
        while let Some(r) = self.reads.pop_front() {
            if r.read_index.is_some() {
                kept.push_back(r);
            } else {
                (r.callback)(err_response(self.not_leader()));
            }
        }
        self.reads = kept;
    }

    /// Serves every read whose index is applied, in order.
    fn serve_reads(&mut self) {
        let applied = self.raft.store().applied_index();
        while self
            .reads
            .front()
            .is_some_and(|r| r.read_index.is_some_and(|i| i <= applied))
        {
            let Some(r) = self.reads.pop_front() else {
                break;
            };
            let resp = self.execute_read(&r.request);
            (r.callback)(resp);
        }
    }

    fn execute_read(&self, request: &RaftCmdRequest) -> RaftCmdResponse {
        let snap = self.engine.snapshot();
        let region = self.region();
        let mut responses = Vec::with_capacity(request.requests.len());
        for r in &request.requests {
            let cmd = match &r.cmd {
                Some(request::Cmd::Get(g)) => {
                    match snap.get(Cf::Default, &keys::data_key(&g.key)) {
                        Ok(v) => response::Cmd::Get(GetResponse {
                            value: v.map(Bytes::from),
                        }),
                        Err(e) => return err_response(e.into()),
                    }
                }
                Some(request::Cmd::Scan(s)) => {
                    let start = keys::data_key(&s.start_key);
                    let end = clamp_end(&s.end_key, &region.end_key);
                    let limit = if s.limit == 0 {
                        usize::MAX
                    } else {
                        s.limit as usize
                    };
                    let mut kvs = Vec::new();
                    let res = snap.scan(Cf::Default, &start, &end, |k, v| {
                        kvs.push(KvPair {
                            key: Bytes::copy_from_slice(&k[1..]),
                            value: Bytes::copy_from_slice(v),
                        });
                        if kvs.len() >= limit {
                            std::ops::ControlFlow::Break(())
                        } else {
                            std::ops::ControlFlow::Continue(())
                        }
                    });
                    if let Err(e) = res {
                        return err_response(e.into());
                    }
                    response::Cmd::Scan(ScanResponse { kvs })
                }
                Some(request::Cmd::Snap(_)) => response::Cmd::Snap(SnapResponse {
                    region: Some(region.clone()),
                }),
                _ => {
                    return err_response(Error::InvalidRequest("write in a read".into()));
                }
            };
            responses.push(Response { cmd: Some(cmd) });
        }
        RaftCmdResponse {
            header: Some(RaftResponseHeader {
                current_term: self.raft.raft.term(),
                ..Default::default()
            }),
            responses,
            admin_response: None,
        }
    }

    /// Whether a raft message of this type is a heartbeat (or response):
    /// the store coalesces those per destination store.
    pub fn is_heartbeat(t: MessageType) -> bool {
        matches!(
            t,
            MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
        )
    }
}

fn read_id(ctx: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    if ctx.len() == buf.len() {
        buf.copy_from_slice(ctx);
    }
    u64::from_be_bytes(buf)
}

/// The end of a scan inside a region: the request's end if set and within
/// the region, else the region's end.
fn clamp_end(req_end: &[u8], region_end: &[u8]) -> Vec<u8> {
    if req_end.is_empty() {
        return keys::data_end_key(region_end);
    }
    if region_end.is_empty() || req_end < region_end {
        keys::data_key(req_end)
    } else {
        keys::data_end_key(region_end)
    }
}

/// The keys a request touches (for the in-region check).
pub fn request_keys(r: &Request) -> Vec<&[u8]> {
    match &r.cmd {
        Some(request::Cmd::Get(g)) => vec![&g.key[..]],
        Some(request::Cmd::Put(p)) => vec![&p.key[..]],
        Some(request::Cmd::Delete(d)) => vec![&d.key[..]],
        Some(request::Cmd::DeleteRange(d)) => vec![&d.start_key[..]],
        Some(request::Cmd::Scan(s)) => vec![&s.start_key[..]],
        Some(request::Cmd::Snap(_)) | None => vec![],
    }
}
