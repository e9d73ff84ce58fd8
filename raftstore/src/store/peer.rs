//! A region's peer on this store: its raft group, the proposals waiting
//! for apply, and the reads waiting for a confirmed index.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_engine::{Cf, Engine, WriteBatch, keys};
use flotilla_proto::eraftpb::{Entry, Message, MessageType};
use flotilla_proto::metapb::{self, Region};
use flotilla_proto::raft_cmdpb::{
    GetResponse, KvPair, RaftCmdRequest, RaftCmdResponse, RaftResponseHeader, Response,
    ScanResponse, SnapResponse, request, response,
};
use flotilla_proto::raft_serverpb::{Beat, RaftMessage};
use prost::Message as _;
use slog::Logger;

use super::config::Config;
use super::error::{Error, Result};
use super::hibernation::{Hibernation, OutBeat, PeerSleep, SleepMsg, WakeReason};
use super::liveness::SupportStatus;
use super::msg::{ApplyTask, Proposal, Responder};
use super::peer_storage::{PeerStorage, RAFT_INIT_LOG_TERM};
use super::util::err_response;
use super::validate::{RequestKind, RequestLimits, data_range, validate_requests};
use crate::raft::tracker::ProgressState;
use crate::raft::{self, RawNode, Ready, StateRole};

/// A read waiting for its ReadIndex to be confirmed and applied, or a
/// lease renewal round (no command).
struct PendingRead {
    /// The context passed to `read_index`.
    id: u64,
    /// The confirmed read index, once known.
    read_index: Option<u64>,
    /// The term the round was started in.
    term: u64,
    /// When the round was started: a quorum that confirms it heard this
    /// leader at or after this instant.
    sent_at: Instant,
    /// The read to serve, or `None` for a lease renewal.
    command: Option<(RaftCmdRequest, Responder)>,
    /// Started with no leader transfer under way: only such a round may
    /// extend the lease (a transferee may win without the followers'
    /// lease check).
    extends_lease: bool,
}

/// The leader lease of DESIGN §9 rule 6, kept by the store (wall clock),
/// not by the consensus core: a quorum acknowledged a heartbeat round sent
/// at `t`, so no other peer can be elected before `t + lease duration`.
#[derive(Debug, Default)]
struct Lease {
    /// Reads may be served locally until then (in `term`).
    expires_at: Option<Instant>,
    /// The term the lease belongs to.
    term: u64,
    /// The last read that wanted the lease: renewals run only while reads
    /// come, so an idle leader sends nothing for its lease.
    last_wanted: Option<Instant>,
    /// A renewal round is in flight.
    renewing: bool,
}

impl Lease {
    fn expire(&mut self) {
        self.expires_at = None;
        self.renewing = false;
    }

    fn extend(&mut self, term: u64, until: Instant) {
        if self.term != term {
            self.term = term;
            self.expires_at = None;
        }
        if self.expires_at.is_none_or(|e| e < until) {
            self.expires_at = Some(until);
        }
    }
}

/// Election timeouts a fresh region's peers wait at most for their stores
/// to hear each other before the first election.
const FRESH_HOLD_TIMEOUTS: usize = 5;

/// What an idle leader's hibernation would involve.
#[derive(Debug, Default)]
struct SleepPlan {
    /// (peer, store) of the followers asked to sleep.
    followers: Vec<(u64, u64)>,
    /// Follower stores slept without.
    lagging: Vec<u64>,
}

/// How a Ready's raft write must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WriteNeed {
    /// Nothing to write.
    Nothing,
    /// Only the commit index (or nothing durable-critical) changed: never
    /// synced.
    CommitOnly,
    /// New log entries: synced when `sync_log` is on.
    Entries,
    /// Term or vote changed: always synced (a node must never vote twice
    /// in one term after a crash).
    TermOrVote,
}

/// One region's peer.
pub struct Peer {
    /// This peer's identity.
    pub meta: metapb::Peer,
    /// The raft group.
    pub raft: RawNode<PeerStorage>,
    /// Proposals in (term, index) order, not yet handed to apply. Terms
    /// only grow and indices grow within a term, so pushing at the back
    /// keeps the order even when a new term reuses lower indices.
    proposals: VecDeque<Proposal>,
    /// Reads in request order.
    reads: VecDeque<PendingRead>,
    next_read_id: u64,
    /// A Ready whose writes are in this round's batch, finished in `end`.
    pending_ready: Option<Ready>,
    /// Whether the last soft state seen said leader.
    was_leader: bool,
    /// The raft state changed outside a Ready (a commit index from a light
    /// ready) and goes into the next round's batch.
    raft_state_dirty: bool,
    /// `Some` when reads may be served from the leader lease.
    lease_duration: Option<Duration>,
    lease: Lease,
    /// Hibernation state (see `hibernation`).
    sleep: PeerSleep,
    limits: RequestLimits,
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
        // Never heard a leader: still in the term bootstrap wrote, no vote.
        // (Any peer that acknowledged a leader has a durable term above it:
        // the ack leaves only after the term is synced.) Peers a split will
        // create start in that term too, under a range a parent leader may
        // still hold a lease on: split must not treat them as fresh.
        let hs = storage.raft_state().hard_state.unwrap_or_default();
        let fresh = hs.term <= RAFT_INIT_LOG_TERM && hs.vote == 0;
        let mut rc = raft::Config::new(peer_id);
        rc.election_tick = cfg.election_ticks;
        rc.heartbeat_tick = cfg.heartbeat_ticks;
        rc.applied = storage.applied_index();
        rc.max_size_per_msg = cfg.max_size_per_msg;
        rc.max_inflight_msgs = cfg.max_inflight_msgs;
        rc.max_uncommitted_size = cfg.max_uncommitted_size;
        rc.max_committed_size_per_ready = cfg.max_apply_bytes_per_ready;
        rc.check_quorum = true;
        // A restarted follower must not vote inside a lease it acknowledged
        // before the restart (a fresh one acknowledged nothing).
        rc.refuse_votes_after_start = cfg.lease_read && !fresh;
        rc.pre_vote = true;
        rc.disable_proposal_forwarding = true;
        // Always Safe in the core: the lease is the store's (wall clock,
        // with a drift margin), not the core's tick-based one.
        rc.read_only_option = raft::ReadOnlyOption::Safe;
        let logger = logger.new(slog::o!("region" => storage.region().id, "peer" => peer_id));
        let raft =
            RawNode::new(&rc, storage, &logger).map_err(|e| Error::Config(format!("raft: {e}")))?;
        let mut peer = Peer {
            meta,
            raft,
            proposals: VecDeque::new(),
            reads: VecDeque::new(),
            next_read_id: 0,
            pending_ready: None,
            was_leader: false,
            raft_state_dirty: false,
            lease_duration: if cfg.lease_read {
                cfg.lease_duration()
            } else {
                None
            },
            lease: Lease::default(),
            sleep: PeerSleep::default(),
            limits: cfg.request_limits(),
            engine,
            logger,
        };
        // The first election after bootstrap waits until the store hears
        // every other store of the region (or a few election timeouts):
        // then one voter per region, taking turns by region id, campaigns
        // at once, the others on their usual clocks, so the regions elect
        // without split votes and their leaders spread over the stores
        // even when the stores start one after another.
        if fresh {
            peer.sleep.fresh_hold = Some(FRESH_HOLD_TIMEOUTS.saturating_mul(cfg.election_ticks));
            peer.sleep.campaigns_first = peer.campaigns_first_without(0);
        }
        Ok(peer)
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
        let from = m.from;
        if let Err(e) = self.raft.step(m) {
            slog::debug!(self.logger, "step failed"; "err" => %e);
        }
        if from == self.raft.raft.leader_id() {
            self.sleep.nudged = false;
            self.sleep.quiet_under = None;
        }
    }

    /// Handles a client command: checks it, then proposes a write or starts
    /// a read. Errors are answered through the callback.
    pub fn on_command(&mut self, cfg: &Config, request: RaftCmdRequest, callback: Responder) {
        self.sleep.idle_ticks = 0;
        let kind = match self.check_command(&request) {
            Ok(kind) => kind,
            Err(e) => {
                callback.respond(err_response(e));
                return;
            }
        };
        // A write is encoded once: its size is checked on the bytes that
        // go into the log.
        let data = match kind {
            RequestKind::Read => None,
            RequestKind::Write => {
                let data = request.encode_to_vec();
                if data.len() as u64 > cfg.entry_max_size {
                    callback.respond(err_response(Error::EntryTooLarge {
                        region_id: self.region_id(),
                        entry_size: data.len() as u64,
                    }));
                    return;
                }
                Some(data)
            }
        };
        if !self.is_leader() {
            callback.respond(err_response(self.not_leader()));
            return;
        }
        match data {
            None => self.read(request, callback),
            Some(data) => self.propose_write(data, callback),
        }
    }

    fn check_command(&self, request: &RaftCmdRequest) -> Result<RequestKind> {
        let header = request
            .header
            .as_ref()
            .ok_or_else(|| Error::InvalidRequest("missing header".into()))?;
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
        validate_requests(request, region, &self.limits)
    }

    fn propose_write(&mut self, data: Vec<u8>, mut callback: Responder) {
        let index = self.raft.raft.raft_log().last_index() + 1;
        let term = self.raft.raft.term();
        match self.raft.propose(Vec::new(), data) {
            Ok(()) => {
                if self.raft.raft.raft_log().last_index() != index {
                    callback.respond(err_response(Error::ProposalDropped(
                        "entry not appended".into(),
                    )));
                    return;
                }
                callback.mark_proposed();
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
                callback.respond(err_response(e));
            }
            Err(e) => {
                callback.respond(err_response(Error::ProposalDropped(e.to_string())));
            }
        }
    }

    /// Serves a read from the lease if it is valid, else starts a
    /// ReadIndex round (which also renews the lease).
    fn read(&mut self, request: RaftCmdRequest, callback: Responder) {
        if self.lease_duration.is_some() {
            let now = Instant::now();
            self.lease.last_wanted = Some(now);
            if self.lease_valid(now) {
                let resp = self.execute_read(&request);
                callback.respond(resp);
                return;
            }
        }
        self.start_read_index(Some((request, callback)));
    }

    /// Whether a read may be served from the lease now: the lease of this
    /// term has not expired, no leader transfer is under way, and this
    /// peer has applied an entry of its own term (so every write any
    /// leader acknowledged before is applied here).
    fn lease_valid(&self, now: Instant) -> bool {
        let raft = &self.raft.raft;
        let term = raft.term();
        self.is_leader()
            && self.lease.term == term
            && self.lease.expires_at.is_some_and(|e| now < e)
            && raft.lead_transferee().is_none()
            && raft
                .raft_log()
                .term(self.raft.store().applied_index())
                .is_ok_and(|t| t == term)
    }

    fn start_read_index(&mut self, command: Option<(RaftCmdRequest, Responder)>) {
        self.next_read_id += 1;
        let id = self.next_read_id;
        let sent_at = Instant::now();
        if let Err(e) = self.raft.read_index(id.to_be_bytes().to_vec()) {
            if let Some((_, callback)) = command {
                callback.respond(err_response(Error::ProposalDropped(e.to_string())));
            }
            return;
        }
        if command.is_none() {
            self.lease.renewing = true;
        }
        self.reads.push_back(PendingRead {
            id,
            read_index: None,
            term: self.raft.raft.term(),
            sent_at,
            command,
            extends_lease: self.raft.raft.lead_transferee().is_none(),
        });
    }

    /// Starts a lease renewal round when reads came within the last lease
    /// and the lease is past half its length (or gone).
    fn maybe_renew_lease(&mut self) {
        let Some(duration) = self.lease_duration else {
            return;
        };
        if !self.is_leader() || self.lease.renewing {
            return;
        }
        let now = Instant::now();
        let wanted = self
            .lease
            .last_wanted
            .is_some_and(|t| now.saturating_duration_since(t) < duration);
        let due = self
            .lease
            .expires_at
            .is_none_or(|e| e.saturating_duration_since(now) < duration / 2);
        if wanted && due {
            self.start_read_index(None);
        }
    }

    /// One base tick: ticks the raft group, renews the lease if reads want
    /// it, and lets an idle leader hibernate its region. A hibernating peer
    /// ignores it.
    pub fn tick(&mut self, cfg: &Config, hib: &Hibernation) {
        if self.sleep.asleep {
            return;
        }
        if self.sleep.fresh_hold.is_some() && self.hold_fresh_election(hib) {
            return;
        }
        self.check_leader_store(hib);
        self.maybe_nudge_leader(hib);
        self.raft.tick();
        self.maybe_renew_lease();
        if cfg.hibernate_regions && self.is_leader() {
            self.sleep.idle_ticks += 1;
            if self.sleep.idle_ticks >= cfg.hibernate_idle_ticks {
                self.sleep.idle_ticks = 0;
                self.try_hibernate(hib);
            }
        }
    }

    /// Whether the peer hibernates.
    pub fn is_asleep(&self) -> bool {
        self.sleep.asleep
    }

    /// The hibernation beats to send (taken).
    pub fn take_sleep_beats(&mut self) -> Vec<OutBeat> {
        std::mem::take(&mut self.sleep.outbox)
    }

    /// Wakes the peer if it hibernates. Returns whether it did.
    pub fn wake(&mut self, reason: WakeReason, hib: &Hibernation) -> bool {
        if !self.sleep.asleep {
            return false;
        }
        self.sleep.asleep = false;
        self.sleep.idle_ticks = 0;
        // A request to sleep made earlier in this round must not go out
        // after what woke the peer (a follower could ack a new lease round
        // and then sleep on it).
        self.sleep.outbox.retain(|b| !b.beat.quiesce);
        hib.wake(self.region_id());
        if self.is_leader() {
            self.raft.raft.resume_after_sleep();
            // Heartbeat at once: a follower awake since this leader slept
            // hears it before its election clock runs out.
            let beat = Message {
                msg_type: MessageType::MsgBeat as i32,
                from: self.meta.id,
                ..Default::default()
            };
            if let Err(e) = self.raft.step(beat) {
                slog::debug!(self.logger, "heartbeat on wake failed"; "err" => %e);
            }
        } else if !matches!(
            reason,
            WakeReason::LeaderMessage | WakeReason::LeaderStoreDown
        ) {
            // The leader may sleep too: wake it rather than campaign.
            self.wake_leader();
        }
        true
    }

    /// Steps a raft message, waking the peer first if it hibernates.
    /// Returns the reason it woke for, if it did. A sleeping leader stays
    /// asleep for a heartbeat response that asks nothing of it (the late
    /// answer to its last heartbeat before it slept).
    pub fn step_raft_message(&mut self, msg: RaftMessage, hib: &Hibernation) -> Option<WakeReason> {
        let m = msg.message.as_ref()?;
        if msg.to_peer.is_none_or(|p| p.id != self.meta.id) {
            // Not for this peer: dropped without waking it.
            self.on_raft_message(msg);
            return None;
        }
        if matches!(
            m.msg_type(),
            MessageType::MsgRequestPreVote | MessageType::MsgRequestVote
        ) {
            self.on_vote_while_quiet(hib);
        }
        if !self.sleep.asleep {
            self.on_raft_message(msg);
            return None;
        }
        let benign = self.is_leader()
            && m.msg_type() == MessageType::MsgHeartbeatResponse
            && m.term == self.raft.raft.term()
            && m.context.is_empty();
        let reason = if m.from == self.raft.raft.leader_id() {
            WakeReason::LeaderMessage
        } else {
            WakeReason::PeerMessage
        };
        if benign {
            self.on_raft_message(msg);
            if !self.raft.has_ready() {
                return None;
            }
            return self.wake(reason, hib).then_some(reason);
        }
        let woke = self.wake(reason, hib);
        self.on_raft_message(msg);
        woke.then_some(reason)
    }

    /// A fresh peer's first election: holds its election clock (returns
    /// true: skip this tick) until its store supports every other store of
    /// the region or the hold runs out; then the designated one campaigns
    /// at once. A leader heard first ends the hold.
    fn hold_fresh_election(&mut self, hib: &Hibernation) -> bool {
        let Some(left) = self.sleep.fresh_hold else {
            return false;
        };
        if self.raft.raft.leader_id() != raft::INVALID_ID {
            self.sleep.fresh_hold = None;
            return false;
        }
        let now = Instant::now();
        let all_heard = self
            .region()
            .peers
            .iter()
            .all(|p| hib.supports(p.store_id, now).is_some());
        if !all_heard && left > 0 {
            self.sleep.fresh_hold = Some(left - 1);
            return true;
        }
        self.sleep.fresh_hold = None;
        if self.sleep.campaigns_first {
            self.raft.raft.expire_election_clock(true);
        }
        false
    }

    /// An awake follower whose leader's store lost this store's support
    /// runs its election clock out, as a withdrawal does for a sleeping
    /// one (the withdrawal messages only sleeping peers): one still quiet
    /// (woken by a peer, not its leader) looks each tick; one that heard
    /// its leader looks once the leader has been silent for half an
    /// election timeout, and again only after a withdrawal anywhere.
    ///
    /// Lease safety: support is withdrawn only after the support duration
    /// (one election timeout, longer than any lease) without an accepted
    /// batch from the store, and every lease round this follower
    /// acknowledged came in such a batch; the lease it confirmed is over.
    fn check_leader_store(&mut self, hib: &Hibernation) {
        if self.is_leader() {
            return;
        }
        let Some((store, epoch)) = self.sleep.quiet_under else {
            self.check_silent_leader_store(hib);
            return;
        };
        match hib.support_status(store, Instant::now()) {
            SupportStatus::Supported(e) if e == epoch => {}
            SupportStatus::Lost(e) if e == epoch => {
                self.sleep.quiet_under = None;
                self.sleep.woken_by = Some((store, epoch));
                let first = self.campaigns_first_without(store)
                    || std::mem::take(&mut self.sleep.vote_asked);
                self.raft.raft.expire_election_clock(first);
            }
            // Supported again under a newer epoch (the store lived after
            // the withdrawal), or a newer support lost too: this follower
            // slept under older support and is past that.
            _ => self.sleep.quiet_under = None,
        }
    }

    fn check_silent_leader_store(&mut self, hib: &Hibernation) {
        let raft = &self.raft.raft;
        if raft.election_elapsed() < raft.election_timeout() / 2 {
            return;
        }
        let seen = hib.withdrawal_count();
        if seen == self.sleep.seen_withdrawals {
            return;
        }
        self.sleep.seen_withdrawals = seen;
        let Some(leader) = self.leader() else { return };
        let store = leader.store_id;
        // Only a real loss of support: a store never heard in this life
        // (just restarted) proves nothing about the leader.
        let SupportStatus::Lost(lost) = hib.support_status(store, Instant::now()) else {
            return;
        };
        if store == self.meta.store_id || self.sleep.woken_by == Some((store, lost)) {
            return;
        }
        self.sleep.woken_by = Some((store, lost));
        let first = self.campaigns_first_without(store);
        self.raft.raft.expire_election_clock(first);
    }

    /// A peer of the region asks for a vote while this follower is quiet
    /// (it slept under its leader's store and has not heard the leader
    /// since). If this store no longer supports that store either (its
    /// support lapsed, whether or not a tick withdrew it yet), the leader
    /// is gone here too: the clock runs out now, as a withdrawal would
    /// make it, so the vote is not refused as within a lease. Otherwise
    /// the refusal stands, but when the withdrawal comes this follower
    /// campaigns first (a peer already found the leader gone).
    fn on_vote_while_quiet(&mut self, hib: &Hibernation) {
        if self.is_leader() {
            return;
        }
        let Some((store, epoch)) = self.sleep.quiet_under else {
            return;
        };
        match hib.support_status(store, Instant::now()) {
            SupportStatus::Supported(e) if e == epoch => self.sleep.vote_asked = true,
            SupportStatus::Lost(e) if e == epoch => {
                self.sleep.quiet_under = None;
                self.sleep.woken_by = Some((store, epoch));
                self.raft.raft.expire_election_clock(false);
            }
            // Supported again under a newer epoch: the store lived after
            // the withdrawal; its leader may be alive.
            _ => {}
        }
    }

    /// Handles a hibernation message. Returns the reason the peer woke
    /// for, if it did.
    pub fn on_sleep_msg(&mut self, msg: SleepMsg, hib: &Hibernation) -> Option<WakeReason> {
        match msg {
            SleepMsg::Request {
                from,
                from_store,
                term,
                commit,
            } => {
                self.on_sleep_request(from, from_store, term, commit, hib);
                None
            }
            SleepMsg::WakeLeader { .. } => self
                .wake(WakeReason::PeerMessage, hib)
                .then_some(WakeReason::PeerMessage),
            SleepMsg::LeaderStoreDown { store, epoch } => {
                // Only for a follower that slept under that very support of
                // its leader's store and has not heard the leader since: a
                // late message (the follower woke, heard its leader, or
                // slept again under newer support) changes nothing.
                if self.is_leader() || self.sleep.quiet_under != Some((store, epoch)) {
                    // Stale for this peer; but a peer asleep here that the
                    // registry no longer files asleep would never tick
                    // again: wake it (without running its clock out).
                    if self.sleep.asleep && !hib.is_asleep(self.region_id()) {
                        return self
                            .wake(WakeReason::LeaderStoreDown, hib)
                            .then_some(WakeReason::LeaderStoreDown);
                    }
                    return None;
                }
                self.sleep.quiet_under = None;
                self.sleep.woken_by = Some((store, epoch));
                let woke = self.wake(WakeReason::LeaderStoreDown, hib);
                // Its leader is gone: campaign now, not a whole election
                // timeout after the withdrawal; one follower per region
                // first, the others a little later.
                let first = self.campaigns_first_without(store)
                    || std::mem::take(&mut self.sleep.vote_asked);
                self.raft.raft.expire_election_clock(first);
                woke.then_some(WakeReason::LeaderStoreDown)
            }
            SleepMsg::LaggingStoreBack { .. } => self
                .wake(WakeReason::LaggingStoreBack, hib)
                .then_some(WakeReason::LaggingStoreBack),
        }
    }

    /// A follower that has not heard its leader for half an election
    /// timeout while the leader's store is supported asks the leader to
    /// wake: it may hibernate, having missed this follower's sleep (a lost
    /// request). The woken leader heartbeats at once, well before the
    /// follower's clock runs out; the clock itself is left alone, so a
    /// leader that is really gone costs no extra timeout.
    fn maybe_nudge_leader(&mut self, hib: &Hibernation) {
        let raft = &self.raft.raft;
        if self.is_leader()
            || self.sleep.nudged
            || raft.election_elapsed() < raft.election_timeout() / 2
        {
            return;
        }
        let Some(leader) = self.leader() else {
            return;
        };
        if leader.id == self.meta.id {
            return;
        }
        let Some(support) = hib.supports(leader.store_id, Instant::now()) else {
            return;
        };
        if let Some((store, lost)) = self.sleep.woken_by
            && store == leader.store_id
        {
            if support <= lost {
                return;
            }
            // Supported again since it was withdrawn: the store is back.
            self.sleep.woken_by = None;
        }
        self.sleep.nudged = true;
        self.wake_leader();
    }

    /// Whether this peer is the one of its region to campaign first when
    /// the leader's store `down` is gone: the region's voters on other
    /// stores take turns by region id, so the new leaders of a dead
    /// store's regions spread over the surviving stores. (`down` = 0, no
    /// store, counts every voter.)
    fn campaigns_first_without(&self, down: u64) -> bool {
        let mut ids: Vec<u64> = self
            .region()
            .peers
            .iter()
            .filter(|p| p.store_id != down && p.role() != metapb::PeerRole::Learner)
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        let Some(n) = u64::try_from(ids.len()).ok().filter(|&n| n > 0) else {
            return false;
        };
        usize::try_from(self.region_id() % n)
            .ok()
            .and_then(|i| ids.get(i))
            == Some(&self.meta.id)
    }

    fn wake_leader(&mut self) {
        let Some(leader) = self.leader() else { return };
        if leader.id == self.meta.id {
            return;
        }
        let beat = Beat {
            region_id: self.region_id(),
            from_peer: self.meta.id,
            to_peer: leader.id,
            term: self.raft.raft.term(),
            wake: true,
            ..Default::default()
        };
        self.sleep.outbox.push(OutBeat {
            to_store: leader.store_id,
            beat,
            response: true,
        });
    }

    /// The followers a leader hibernating now would ask to sleep, and the
    /// follower stores it would sleep without (not supported by store
    /// liveness). `None` if the region is not idle: something pending, not
    /// everything applied, a live follower behind, or the matched peers
    /// not a quorum.
    fn hibernate_plan(&self, hib: &Hibernation, now: Instant) -> Option<SleepPlan> {
        let raft = &self.raft.raft;
        let log = raft.raft_log();
        let last = log.last_index();
        let idle = self.is_leader()
            && raft.lead_transferee().is_none()
            && self.pending_ready.is_none()
            && !self.raft_state_dirty
            && !self.raft.has_pending_state()
            && self.proposals.is_empty()
            && self.reads.is_empty()
            && self.lease.expires_at.is_none_or(|e| e <= now)
            && log.committed == last
            && self.raft.store().applied_index() == last
            && log.term(last).is_ok_and(|t| t == raft.term())
            && raft.pending_conf_index() <= last
            && raft.uncommitted_size() == 0;
        if !idle {
            return None;
        }
        let region = self.region();
        let mut plan = SleepPlan::default();
        let mut matched = vec![self.meta.id];
        for (id, pr) in raft.prs().iter() {
            if id == self.meta.id {
                continue;
            }
            let store = region.peers.iter().find(|p| p.id == id)?.store_id;
            if hib.supports(store, now).is_none() {
                if !plan.lagging.contains(&store) {
                    plan.lagging.push(store);
                }
            } else if pr.state == ProgressState::Replicate && pr.matched == last {
                matched.push(id);
                plan.followers.push((id, store));
            } else {
                return None;
            }
        }
        raft.prs().has_quorum(&matched).then_some(plan)
    }

    /// An idle leader hibernates: it files itself asleep and asks its
    /// matched followers to sleep too.
    fn try_hibernate(&mut self, hib: &Hibernation) {
        let now = Instant::now();
        let Some(plan) = self.hibernate_plan(hib, now) else {
            return;
        };
        if !hib.sleep_leader(self.region_id(), &plan.lagging, now) {
            return;
        }
        self.sleep.asleep = true;
        let (term, commit) = (self.raft.raft.term(), self.raft.raft.raft_log().committed);
        for (peer, store) in plan.followers {
            let beat = Beat {
                region_id: self.region_id(),
                from_peer: self.meta.id,
                to_peer: peer,
                term,
                commit,
                quiesce: true,
                ..Default::default()
            };
            self.sleep.outbox.push(OutBeat {
                to_store: store,
                beat,
                response: false,
            });
        }
        self.free_idle_buffers();
    }

    /// A follower asked to hibernate by its leader: it sleeps if it is in
    /// the same state (term, leader, everything committed and applied) and
    /// supports the leader's store; otherwise it takes the beat as a
    /// heartbeat and wakes the leader.
    fn on_sleep_request(
        &mut self,
        from: u64,
        from_store: u64,
        term: u64,
        commit: u64,
        hib: &Hibernation,
    ) {
        if self.sleep.asleep {
            return;
        }
        let raft = &self.raft.raft;
        let log = raft.raft_log();
        let agrees = !self.is_leader()
            && raft.term() == term
            && raft.leader_id() == from
            && log.committed == commit
            && log.last_index() == commit
            && self.raft.store().applied_index() == commit
            && self.pending_ready.is_none()
            && !self.raft_state_dirty
            && !self.raft.has_pending_state()
            && self.reads.is_empty()
            && self.proposals.is_empty()
            && self
                .region()
                .peers
                .iter()
                .any(|p| p.id == from && p.store_id == from_store);
        let not_before = self
            .sleep
            .woken_by
            .and_then(|(s, e)| (s == from_store).then_some(e));
        let slept = if agrees {
            hib.sleep_follower(self.region_id(), from_store, not_before, Instant::now())
        } else {
            None
        };
        if let Some(epoch) = slept {
            self.sleep.asleep = true;
            self.sleep.quiet_under = Some((from_store, epoch));
            self.sleep.vote_asked = false;
            self.sleep.woken_by = None;
            self.sleep.nudged = false;
            self.raft.raft.reset_election_clock();
            self.free_idle_buffers();
            return;
        }
        let m = Message {
            msg_type: MessageType::MsgHeartbeat as i32,
            from,
            to: self.meta.id,
            term,
            commit,
            ..Default::default()
        };
        if let Err(e) = self.raft.step(m) {
            slog::debug!(self.logger, "hibernate beat refused"; "err" => %e);
        }
        self.wake_leader();
    }

    /// Frees what an idle peer does not need; it grows back on demand.
    fn free_idle_buffers(&mut self) {
        self.raft.raft.free_idle_buffers();
        let applied = self.raft.store().applied_index();
        // As after an apply: the last applied entry stays (its term is
        // asked for by the next append).
        self.raft
            .raft
            .raft_log_mut()
            .store
            .compact_cache_to(applied.saturating_sub(1));
        self.proposals.shrink_to_fit();
        self.reads.shrink_to_fit();
        self.sleep.outbox.shrink_to_fit();
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
    /// [`Peer::finish_ready`] after `wb` is written. Returns the role
    /// change (`Some(true)`: became leader, `Some(false)`: stopped being
    /// leader) and how the write must reach the disk.
    ///
    /// # Errors
    /// A Ready carrying a raft snapshot: installing snapshots is not
    /// supported yet, and dropping one would leave the log and the data
    /// disagreeing with what the core believes. An engine failure behind a
    /// read of the log. The caller must stop the store; nothing of this
    /// Ready was written or sent.
    pub fn collect_ready(
        &mut self,
        wb: &mut WriteBatch,
        send: &mut impl FnMut(&Peer, flotilla_proto::eraftpb::Message),
    ) -> Result<(Option<bool>, WriteNeed)> {
        if let Some(e) = self.raft.store().take_read_error() {
            // The core treats a failed read as "not yet" and would ask for
            // the same entries forever: an unreadable log stops the store.
            slog::crit!(self.logger, "raft log read failed"; "err" => %e);
            return Err(Error::Engine(format!(
                "region {}: raft log read failed: {e}",
                self.region_id()
            )));
        }
        // A commit left by the last `finish_ready` is written with whatever
        // this round writes (the raft state goes into `wb` once).
        let mut need = if std::mem::take(&mut self.raft_state_dirty) {
            WriteNeed::CommitOnly
        } else {
            WriteNeed::Nothing
        };
        if self.pending_ready.is_some() || !self.raft.has_ready() {
            if need != WriteNeed::Nothing {
                self.raft.store().write_raft_state(wb);
            }
            return Ok((None, need));
        }
        let mut rd = self.raft.ready();
        if let Some(snap) = &rd.snapshot {
            let index = snap.metadata.as_ref().map_or(0, |m| m.index);
            slog::crit!(self.logger, "raft snapshot in a Ready: installing snapshots is not supported yet"; "index" => index);
            return Err(Error::Engine(format!(
                "region {}: received a raft snapshot at index {index}; installing snapshots is not supported yet",
                self.region_id()
            )));
        }
        // Reads a quorum confirmed are attached before a step-down in the
        // same Ready is handled: they stay valid (and are served once
        // applied) although this peer is no longer leader.
        let term = self.raft.raft.term();
        let transferring = self.raft.raft.lead_transferee().is_some();
        if transferring {
            // A transfer ends the lease: the transferee campaigns past the
            // followers' lease check.
            self.lease.expire();
        }
        for rs in std::mem::take(&mut rd.read_states) {
            let id = read_id(&rs.request_ctx);
            if let Some(r) = self.reads.iter_mut().find(|r| r.id == id) {
                r.read_index = Some(rs.index);
                if r.command.is_none() {
                    self.lease.renewing = false;
                }
                if let Some(duration) = self.lease_duration
                    && r.term == term
                    && r.extends_lease
                    && !transferring
                {
                    self.lease.extend(term, r.sent_at + duration);
                }
            }
        }
        let mut role_change = None;
        if let Some(ss) = &rd.ss {
            let leader = ss.raft_state == StateRole::Leader;
            if leader != self.was_leader {
                self.was_leader = leader;
                role_change = Some(leader);
            }
            if leader {
                // A follower's view of a former leader's store means
                // nothing to a leader.
                self.sleep.quiet_under = None;
                self.sleep.woken_by = None;
                self.sleep.vote_asked = false;
            } else {
                self.on_lost_leadership();
            }
        }
        for m in rd.take_messages() {
            send(self, m);
        }
        let store = &mut self.raft.raft.raft_log_mut().store;
        if !rd.entries.is_empty() {
            store.append(&rd.entries, wb);
            need = need.max(WriteNeed::Entries);
        }
        if let Some(hs) = rd.hs {
            let prev = store.raft_state().hard_state.unwrap_or_default();
            if hs.term != prev.term || hs.vote != prev.vote {
                need = WriteNeed::TermOrVote;
                // A new term or vote: any lease of the old term is over.
                self.lease.expire();
            } else {
                need = need.max(WriteNeed::CommitOnly);
            }
            store.set_hard_state(hs);
        }
        if need != WriteNeed::Nothing {
            self.raft.raft.raft_log().store.write_raft_state(wb);
        }
        self.pending_ready = Some(rd);
        Ok((role_change, need))
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
        if let Some(commit) = light.commit_index {
            // A commit that moved when our own write became durable (every
            // commit of a single voter): no later Ready carries it, so it
            // goes into the next round's batch (unsynced: it can always be
            // learnt again).
            self.raft.raft.raft_log_mut().store.set_commit(commit);
            self.raft_state_dirty = true;
        }
        for m in std::mem::take(&mut light.messages) {
            send(self, m);
        }
        committed.append(&mut light.committed_entries);
        self.serve_reads();
        self.apply_task(committed)
    }

    fn apply_task(&mut self, entries: Vec<Entry>) -> Option<ApplyTask> {
        let last = entries.last()?;
        let last = (last.term, last.index);
        let mut proposals = Vec::new();
        while self
            .proposals
            .front()
            .is_some_and(|p| (p.term, p.index) <= last)
        {
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
        self.lease.expire();
        // Reads not yet confirmed can no longer be confirmed by this peer.
        let mut kept = VecDeque::new();
        while let Some(r) = self.reads.pop_front() {
            if r.read_index.is_some() {
                kept.push_back(r);
            } else if let Some((_, callback)) = r.command {
                callback.respond(err_response(self.not_leader()));
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
            if let Some((request, callback)) = r.command {
                let resp = self.execute_read(&request);
                callback.respond(resp);
            }
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
                    // Validated: in the region, ordered, 0 < limit <= max.
                    let (start, end) = data_range(&s.start_key, &s.end_key, region);
                    let limit = (s.limit as usize).max(1);
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
}

fn read_id(ctx: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    if ctx.len() == buf.len() {
        buf.copy_from_slice(ctx);
    }
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use flotilla_engine::{Durability, EngineOptions};
    use flotilla_proto::eraftpb::{Message, MessageType, Snapshot, SnapshotMetadata};

    use super::*;
    use crate::store::bootstrap::{bootstrap_store, initial_regions};

    /// F11: a Ready that carries a raft snapshot is a typed error (the
    /// caller stops the store), not silently dropped while the core goes on
    /// believing the snapshot is installed. Nothing goes into the batch.
    #[test]
    fn ready_with_a_snapshot_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
        let region = initial_regions(&[1, 2, 3], 1).unwrap().remove(0);
        bootstrap_store(&engine, 1, 2, std::slice::from_ref(&region)).unwrap();
        let me = region.peers.iter().find(|p| p.store_id == 2).unwrap().id;
        let leader = region.peers.iter().find(|p| p.store_id == 1).unwrap().id;
        let logger = Logger::root(slog::Discard, slog::o!());
        let mut peer = Peer::new(
            &Config::default(),
            engine.clone(),
            region.clone(),
            me,
            &logger,
        )
        .unwrap();
        let snap = Snapshot {
            data: Default::default(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(super::super::peer_storage::conf_state_from_region(&region)),
                index: 100,
                term: 7,
            }),
        };
        let m = Message {
            msg_type: MessageType::MsgSnapshot as i32,
            from: leader,
            to: me,
            term: 7,
            snapshot: Some(Box::new(snap)),
            ..Default::default()
        };
        peer.raft.step(m).unwrap();
        let mut wb = engine.write_batch();
        let mut sent = 0;
        let res = peer.collect_ready(&mut wb, &mut |_, _| sent += 1);
        assert!(
            matches!(res, Err(Error::Engine(_))),
            "{:?}",
            res.map(|r| r.1)
        );
        assert!(wb.is_empty(), "a refused Ready wrote something");
        assert_eq!(sent, 0, "a refused Ready sent something");
        engine.write(wb, Durability::Sync).unwrap();
    }
}
