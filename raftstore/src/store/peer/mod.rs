//! A region's peer on this store: its raft group, the proposals waiting
//! for apply, and the reads waiting for a confirmed index.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_engine::{Cf, Engine, WriteBatch, keys};
use flotilla_proto::eraftpb::Entry;
use flotilla_proto::metapb::{self, Region};
use flotilla_proto::raft_cmdpb::{
    GetResponse, KvPair, RaftCmdRequest, RaftCmdResponse, RaftRequestHeader, RaftResponseHeader,
    Response, ScanResponse, SnapResponse, request, response,
};
use flotilla_proto::raft_serverpb::RaftMessage;
use prost::Message as _;
use slog::Logger;

use super::admin::LogGc;
use super::config::Config;
use super::error::{Error, Result};
use super::hibernation::{Hibernation, PeerSleep};
use super::meta::SharedMeta;
use super::msg::{ApplyTask, Proposal, Responder, SnapshotTask};
use super::peer_storage::{PeerStorage, RAFT_INIT_LOG_TERM};
use super::split_check::SplitCheckState;
use super::util::err_response;
use super::validate::{RequestKind, RequestLimits, data_range, validate_requests};
use crate::raft::{self, RawNode, Ready, StateRole};

mod admin;
mod clock;
mod exec;
mod hibernate;
mod log_gc;
mod merge;
mod snapshot;
mod split;

pub(crate) use self::exec::gc_ack;
use self::hibernate::FRESH_HOLD_TIMEOUTS;
use self::merge::MergeCtx;
pub use self::merge::MergeOut;
use self::split::SplitState;

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
    /// The term in which this leader told a transferee to campaign: no
    /// lease for the rest of it. (A transfer abandoned at the election
    /// timeout does not stop a late MsgTimeoutNow: its campaign passes the
    /// followers' lease check, so a lease renewed after the abandon could
    /// outlive this leadership.)
    fenced_term: u64,
}

impl Lease {
    fn expire(&mut self) {
        self.expires_at = None;
        self.renewing = false;
    }

    /// A MsgTimeoutNow goes out in `term`: the lease ends and is not
    /// extended again in this term.
    fn fence(&mut self, term: u64) {
        self.expire();
        self.fenced_term = term;
    }

    fn extend(&mut self, term: u64, until: Instant) {
        if term == self.fenced_term {
            return;
        }
        if self.term != term {
            self.term = term;
            self.expires_at = None;
        }
        if self.expires_at.is_none_or(|e| e < until) {
            self.expires_at = Some(until);
        }
    }
}

/// How a Ready's raft write must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WriteNeed {
    /// Nothing to write.
    Nothing,
    /// Only the commit index changed: nothing is written. The commit index
    /// is volatile state in raft; the raft state written with the next
    /// entries or term carries it, and a restart forwards it to the
    /// applied index and learns the rest from the leader (see
    /// `PeerStorage::load`). Writing it would cost a raft-state put per
    /// region per commit, as many as the entries themselves.
    CommitOnly,
    /// New log entries: synced when `sync_log` is on.
    Entries,
    /// Term or vote changed: always synced (a node must never vote twice
    /// in one term after a crash).
    TermOrVote,
}

/// Peers outside the region's list a peer remembers at most.
const MAX_KNOWN_PEERS: usize = 4;

/// Peers outside the region's list, oldest first, since when a peer that
/// cannot campaign has heard nothing from its leader (see
/// `exec::probe_membership`), and the peers a leader removed (boxed in
/// `Peer`: only learners, uninitialized peers and peers that met one of
/// these have one).
#[derive(Debug, Default)]
struct KnownPeers {
    peers: Vec<metapb::Peer>,
    /// The peer's clock (a store tick) when it last heard its leader or
    /// sent a membership probe: it has been silent since (peers that
    /// cannot campaign only).
    silent_since: u64,
    /// Probes sent so far (the next goes to `peers[probes % len]`), or
    /// removal notes (the next goes to `removed[probes % len]`).
    probes: usize,
    /// Peers this leader removed from the region that have not confirmed
    /// they are gone, oldest first, at most [`MAX_UNCONFIRMED_REMOVALS`]
    /// (see `exec::tell_removed_peers`; a leader only).
    removed: Vec<metapb::Peer>,
}

/// Removed peers a leader keeps telling at once (see `KnownPeers::removed`);
/// past that, the oldest is forgotten.
const MAX_UNCONFIRMED_REMOVALS: usize = 8;

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
    /// Boxed: it lives for part of a round, and inline it would take 192
    /// bytes of every peer (PeerFsm would cross an allocator size class).
    pending_ready: Option<Box<Ready>>,
    /// Whether the last soft state seen said leader.
    was_leader: bool,
    /// The leader lease's length in microseconds; `None` when reads may
    /// not be served from it. (Kept in 8 bytes, not a 16-byte
    /// `Option<Duration>`: the peer stays in its allocation class.)
    lease_micros: Option<NonZeroU64>,
    lease: Lease,
    /// Hibernation state (see `hibernation`).
    sleep: PeerSleep,
    /// The store tick up to which this peer's clocks have run (see
    /// `clock`: silent ticks are run late, in a row).
    clock: u64,
    /// The store tick of the last tick that ran in full (`Peer::tick`):
    /// the ticks since count toward the idle and log-GC counters.
    last_full_tick: u64,
    /// Raft log GC bookkeeping (see `log_gc`).
    log_gc: LogGc,
    /// A snapshot persisted in this round's batch, for the apply side once
    /// the batch is written (boxed: rare).
    pending_snapshot: Option<Box<SnapshotTask>>,
    /// The keys an admitted snapshot reserved in the store's range index
    /// (its range and this peer's old one), held until it is applied.
    reservation: Option<Box<snapshot::Reservation>>,
    /// Peers heard from that the region (as this peer knows it) does not
    /// list: an uninitialized peer answers its leader through them.
    known_peers: Option<Box<KnownPeers>>,
    /// A conf change removed this peer (see `exec`).
    removed: bool,
    /// The index of a split this peer proposed as leader, until it
    /// applies: no lease read meanwhile (the new regions may elect
    /// leaders elsewhere as soon as their stores apply it), no other
    /// split or membership change. 0: none.
    pending_split: u64,
    /// What this peer's splits left to do and to tell (boxed: most peers
    /// never split; see `split`).
    split: Option<Box<SplitState>>,
    /// The split checker's clock (see `store::split_check`).
    split_check: SplitCheckState,
    /// What this peer's merges left to do and to tell (boxed: most peers
    /// never merge; see `merge`).
    merge: Option<Box<MergeCtx>>,
    /// A tombstone message for a peer removed from the region while it
    /// could not hear it (see `exec`), to send.
    gc_reply: Option<Box<RaftMessage>>,
    limits: RequestLimits,
    engine: Engine,
    /// The store's regions by range (see `store::meta`).
    store_meta: SharedMeta,
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
        store_meta: &SharedMeta,
        logger: &Logger,
    ) -> Result<Peer> {
        let meta = region
            .peers
            .iter()
            .find(|p| p.id == peer_id)
            .copied()
            .ok_or_else(|| Error::Config(format!("peer {peer_id} not in region {}", region.id)))?;
        Peer::with_meta(cfg, engine, region, meta, store_meta, logger)
    }

    /// An uninitialized peer `meta` of region `region_id`, created by a
    /// message from a region this store has no peer of (a peer added by a
    /// conf change): no range, no members, an empty log; a snapshot from
    /// its leader initializes it. `conf_ver` is the membership the message
    /// came from (0 if it carried none): the peer's region epoch, so a
    /// late message of an older membership to another peer id of this
    /// store is not taken for a newer peer, and its tombstone, should it
    /// be destroyed, outdates what it should.
    ///
    /// # Errors
    /// As [`Peer::new`].
    pub fn uninitialized(
        cfg: &Config,
        engine: Engine,
        region_id: u64,
        meta: metapb::Peer,
        conf_ver: u64,
        store_meta: &SharedMeta,
        logger: &Logger,
    ) -> Result<Peer> {
        let region = Region {
            id: region_id,
            region_epoch: (conf_ver > 0).then_some(metapb::RegionEpoch {
                conf_ver,
                version: 0,
            }),
            ..Default::default()
        };
        Peer::with_meta(cfg, engine, region, meta, store_meta, logger)
    }

    fn with_meta(
        cfg: &Config,
        engine: Engine,
        region: Region,
        meta: metapb::Peer,
        store_meta: &SharedMeta,
        logger: &Logger,
    ) -> Result<Peer> {
        let peer_id = meta.id;
        let storage = PeerStorage::load(engine.clone(), region)?;
        // Never heard a leader: still in the term bootstrap wrote, no vote.
        // (Any peer that acknowledged a leader has a durable term above it:
        // the ack leaves only after the term is synced.) Peers a split will
        // create start in that term too, under a range a parent leader may
        // still hold a lease on: split must not treat them as fresh.
        let hs = storage.raft_state().hard_state.unwrap_or_default();
        let fresh = hs.term <= RAFT_INIT_LOG_TERM && hs.vote == 0;
        let mut rc = cfg.raft_config(peer_id);
        rc.applied = storage.applied_index();
        // A restarted follower must not vote inside a lease it acknowledged
        // before the restart (a fresh one acknowledged nothing).
        rc.refuse_votes_after_start = cfg.lease_read && !fresh;
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
            lease_micros: cfg
                .lease_duration()
                .filter(|_| cfg.lease_read)
                .and_then(|d| NonZeroU64::new(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))),
            lease: Lease::default(),
            sleep: PeerSleep::default(),
            clock: 0,
            last_full_tick: 0,
            log_gc: LogGc::default(),
            pending_snapshot: None,
            reservation: None,
            known_peers: None,
            removed: false,
            pending_split: 0,
            split: None,
            split_check: SplitCheckState::default(),
            merge: None,
            gc_reply: None,
            limits: cfg.request_limits(),
            engine,
            store_meta: store_meta.clone(),
            logger,
        };
        // The first election after bootstrap waits until the store hears
        // every other store of the region (or a few election timeouts):
        // then one voter per region, taking turns by region id, campaigns
        // at once, the others on their usual clocks, so the regions elect
        // without split votes and their leaders spread over the stores
        // even when the stores start one after another.
        if fresh && peer.raft.store().is_initialized() {
            let ticks = FRESH_HOLD_TIMEOUTS.saturating_mul(cfg.election_ticks);
            peer.sleep.fresh_hold = Some(u32::try_from(ticks).unwrap_or(u32::MAX));
            peer.sleep.campaigns_first = peer.campaigns_first_without(0);
        }
        peer.resume_merge_at_start(cfg);
        Ok(peer)
    }

    /// The peer `id` of this region: a member, or one heard from.
    pub fn peer_by_id(&self, id: u64) -> Option<metapb::Peer> {
        self.region()
            .peers
            .iter()
            .chain(self.known_peers.iter().flat_map(|v| v.peers.iter()))
            .find(|p| p.id == id)
            .copied()
    }

    /// This peer's `KnownPeers`, created silent since store tick `since`
    /// if it has none yet.
    fn known_peers_or_new(&mut self, since: u64) -> &mut KnownPeers {
        self.known_peers.get_or_insert_with(|| {
            Box::new(KnownPeers {
                silent_since: since,
                ..KnownPeers::default()
            })
        })
    }

    /// Remembers `from`, a peer this region's list lacks (bounded: the
    /// latest few).
    fn note_peer(&mut self, from: metapb::Peer) {
        if from.id == 0 {
            return;
        }
        let clock = self.clock;
        let known = &mut self.known_peers_or_new(clock).peers;
        known.retain(|p| p.id != from.id);
        if known.len() >= MAX_KNOWN_PEERS {
            known.remove(0);
        }
        known.push(from);
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

    /// The leader lease's length, if reads may be served from it.
    fn lease_duration(&self) -> Option<Duration> {
        self.lease_micros.map(|m| Duration::from_micros(m.get()))
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
            // Ids do not order peers (each store allocates its own): a
            // newer membership does.
            let conf_ver = |e: Option<metapb::RegionEpoch>| e.map_or(0, |e| e.conf_ver);
            if msg.region_epoch.is_some()
                && conf_ver(msg.region_epoch) > conf_ver(self.region().region_epoch)
                && msg
                    .to_peer
                    .is_some_and(|p| p.store_id == self.meta.store_id)
            {
                // A newer peer of the region on this store: this one was
                // removed without hearing of it (a learner, or a peer not
                // yet initialized, is never told otherwise). It goes; the
                // leader's next message creates the new one.
                slog::info!(self.logger, "a newer peer of the region is on this store: destroying";
                    "newer" => to);
                self.removed = true;
            } else {
                slog::debug!(self.logger, "message for another peer"; "to" => to);
            }
            return;
        }
        // A sender the region does not list: one removed without hearing
        // of it, or one this peer does not know yet (one scan per message).
        if let Some(from) = msg
            .from_peer
            .filter(|f| !self.region().peers.iter().any(|p| p.id == f.id))
        {
            self.check_stale_sender(from, msg.region_epoch);
            self.note_peer(from);
        }
        let from = m.from;
        let snapshot = Self::snapshot_of(&m);
        if snapshot.is_some() && !self.admit_snapshot(&m) {
            return;
        }
        if let Err(e) = self.raft.step(m) {
            slog::debug!(self.logger, "step failed"; "err" => %e);
        }
        if let Some((index, term)) = snapshot {
            self.drop_unused_snapshot(index, term);
        }
        if from == self.raft.raft.leader_id() {
            self.ask_snapshot_past_merge();
            self.sleep.nudged = false;
            self.sleep.quiet_under = None;
            self.sleep.asked = None;
            self.note_leader_heard();
        }
    }

    /// Handles a client command: checks it, then proposes a write or starts
    /// a read. Errors are answered through the callback.
    pub fn on_command(
        &mut self,
        cfg: &Config,
        hib: &Hibernation,
        request: RaftCmdRequest,
        callback: Responder,
    ) {
        self.sleep.idle_ticks = 0;
        if request.admin_request.is_some() {
            self.on_admin_command(cfg, hib, request, callback);
            return;
        }
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
        // A merging region's data is about to be the target's: no write
        // may land and no read may be served (a read after the target took
        // a write to these keys would be stale).
        if let Err(e) = self.check_not_merging() {
            callback.respond(err_response(e));
            return;
        }
        match data {
            None => self.read(request, callback),
            Some(data) => self.propose_write(data, callback),
        }
    }

    /// The request's header, if it is routed to this peer's region and
    /// store.
    fn check_header<'a>(&self, request: &'a RaftCmdRequest) -> Result<&'a RaftRequestHeader> {
        let header = request
            .header
            .as_ref()
            .ok_or_else(|| Error::InvalidRequest("missing header".into()))?;
        if header.region_id != self.region().id {
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
        Ok(header)
    }

    fn check_command(&self, request: &RaftCmdRequest) -> Result<RequestKind> {
        let header = self.check_header(request)?;
        let region = self.region();
        let current = region.region_epoch.unwrap_or_default();
        let epoch = header.region_epoch.unwrap_or_default();
        // Data commands depend on the key range: only `version` matters.
        if epoch.version != current.version {
            return Err(self.epoch_not_match());
        }
        validate_requests(request, region, &self.limits)
    }

    fn propose_write(&mut self, data: Vec<u8>, callback: Responder) {
        self.split_check.written = self.split_check.written.saturating_add(data.len() as u64);
        self.propose_with(callback, |raft| raft.propose(Vec::new(), data));
    }

    /// Proposes one entry through `propose` and queues `callback` to be
    /// answered when it applies (or with why it was not proposed).
    fn propose_with(
        &mut self,
        mut callback: Responder,
        propose: impl FnOnce(&mut RawNode<PeerStorage>) -> raft::Result<()>,
    ) {
        let index = self.raft.raft.raft_log().last_index() + 1;
        let term = self.raft.raft.term();
        match propose(&mut self.raft) {
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
                    proposed_at: std::time::Instant::now(),
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
        if self.lease_micros.is_some() {
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
            && self.raft.store().applying_snapshot().is_none()
            && self.pending_split <= self.raft.store().applied_index()
            && !self.is_merging()
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
        let Some(duration) = self.lease_duration() else {
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
    /// `elapsed` store ticks passed since the last one that ran in full.
    fn tick(&mut self, cfg: &Config, hib: &Hibernation, elapsed: u64) {
        if self.sleep.asleep {
            return;
        }
        if self.sleep.fresh_hold.is_some() && self.hold_fresh_election(hib) {
            return;
        }
        self.check_leader_store(hib);
        self.maybe_nudge_leader(hib);
        // A leader that hibernates at the end of this tick sends no
        // heartbeat first: its sleep request reaches every follower it
        // sleeps with (answered with nothing), and whoever wakes it next
        // resets its clocks. If the sleep falls through after all (the
        // checks below proposed something), the heartbeat comes a tick
        // late, well inside the followers' election timeout (and never two
        // ticks in a row without a sleep: `skipped_tick`).
        let elapsed_ticks = usize::try_from(elapsed).unwrap_or(usize::MAX);
        let idle_ticks = self.sleep.idle_ticks as usize;
        let sleeps_now = cfg.hibernate_regions
            && !std::mem::take(&mut self.sleep.skipped_tick)
            && self.is_leader()
            && idle_ticks.saturating_add(elapsed_ticks) >= cfg.hibernate_idle_ticks
            && self.hibernate_plan(hib, Instant::now()).is_some();
        if !sleeps_now {
            self.raft.tick();
        }
        self.answer_refused_ask();
        self.maybe_renew_lease();
        self.tick_merge(cfg, elapsed);
        if !self.is_merging() {
            self.tick_log_gc(cfg, elapsed);
            self.tick_split_check(cfg, elapsed);
        }
        self.probe_membership(elapsed);
        self.tell_removed_peers();
        if cfg.hibernate_regions && self.is_leader() {
            let idle = (self.sleep.idle_ticks as usize).saturating_add(elapsed_ticks);
            self.sleep.idle_ticks = u32::try_from(idle).unwrap_or(u32::MAX);
            if idle >= cfg.hibernate_idle_ticks {
                self.sleep.idle_ticks = 0;
                self.try_hibernate(hib);
            }
        }
        self.sleep.skipped_tick = sleeps_now && !self.sleep.asleep;
    }

    /// Records what the apply side applied and serves reads that waited
    /// for it.
    pub fn on_apply_res(&mut self, res: super::msg::ApplyRes) {
        if res.peer_id != self.meta.id {
            // From the delegate of a destroyed peer of this region (the
            // mailbox it went to is the region's).
            return;
        }
        // Never past the commit index raft knows (the delegate applies
        // only committed entries; this guards the core's invariant).
        let applied = res
            .apply_state
            .applied_index
            .min(self.raft.raft.raft_log().committed);
        // Entries applied before a snapshot this peer persisted since: the
        // snapshot's state stands, its membership included (a conf change
        // of such an entry is in it already, and applying its result again
        // would roll the region back: admin.md scenario 13).
        if applied < self.raft.store().applied_index() {
            return;
        }
        self.raft
            .raft
            .raft_log_mut()
            .store
            .set_apply_state(res.apply_state);
        self.on_exec_results(res.results);
        self.raft
            .raft
            .raft_log_mut()
            .store
            .compact_cache_to(applied.saturating_sub(1));
        self.raft.advance_apply_to(applied);
        self.release_merge_hold(applied);
        self.serve_reads();
    }

    /// If the group has a Ready: sends what may go now through `send`, puts
    /// the entries and hard state into `wb`, and keeps the Ready for
    /// [`Peer::finish_ready`] after `wb` is written. Returns the role
    /// change (`Some(true)`: became leader, `Some(false)`: stopped being
    /// leader) and how the write must reach the disk.
    ///
    /// # Errors
    /// A Ready carrying a raft snapshot whose meta does not decode (it
    /// passed the checks on receipt: a bug; dropping it would leave the log
    /// and the data disagreeing with what the core believes). An engine
    /// failure behind a read of the log. The caller must stop the store;
    /// nothing of this Ready was written or sent.
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
        let mut need = WriteNeed::Nothing;
        // Entries a compaction applied since the last round: deleted after
        // the apply write that compacted them (it came first in the WAL).
        self.raft.raft.raft_log_mut().store.delete_compacted(wb);
        if self.pending_ready.is_some() || !self.raft.has_ready() {
            return Ok((None, need));
        }
        let mut rd = self.raft.ready();
        if let Some(snap) = rd.snapshot.take() {
            // Before the Ready's entries (they follow the snapshot).
            self.persist_snapshot(&snap, wb)?;
            need = need.max(WriteNeed::Entries);
        }
        // Reads a quorum confirmed are attached before a step-down in the
        // same Ready is handled: they stay valid (and are served once
        // applied) although this peer is no longer leader.
        let term = self.raft.raft.term();
        let transferring = self.raft.raft.lead_transferee().is_some();
        let lease_duration = self.lease_duration();
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
                if let Some(duration) = lease_duration
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
                // A new leadership checks its log afresh (a proposal of an
                // earlier term may never have committed).
                self.log_gc = LogGc::default();
                if leader {
                    self.note_recorded_removals();
                }
            }
            if leader {
                // A follower's view of a former leader's store means
                // nothing to a leader.
                self.sleep.quiet_under = None;
                self.sleep.woken_by = None;
                self.sleep.asked = None;
            } else {
                self.on_lost_leadership();
            }
        }
        for m in rd.take_messages() {
            self.fence_lease_on_timeout_now(&m);
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
        if need >= WriteNeed::Entries {
            // Written whole; a commit index that moved meanwhile rides along.
            self.raft.raft.raft_log().store.write_raft_state(wb);
        }
        self.pending_ready = Some(Box::new(rd));
        Ok((role_change, need))
    }

    /// After this round's write is durable: sends the messages that waited
    /// for it, and returns the committed entries (with their proposals) for
    /// the apply side.
    pub fn finish_ready(
        &mut self,
        send: &mut impl FnMut(&Peer, flotilla_proto::eraftpb::Message),
    ) -> Option<ApplyTask> {
        let mut rd = *self.pending_ready.take()?;
        let mut committed = rd.take_committed_entries();
        for m in rd.take_persisted_messages() {
            self.fence_lease_on_timeout_now(&m);
            send(self, m);
        }
        let mut light = self.raft.advance_append(rd);
        if let Some(commit) = light.commit_index {
            // A commit that moved when our own write became durable (every
            // commit of a single voter): no later Ready carries it. Kept in
            // memory like every commit-only change (see
            // `WriteNeed::CommitOnly`).
            self.raft.raft.raft_log_mut().store.set_commit(commit);
        }
        for m in std::mem::take(&mut light.messages) {
            self.fence_lease_on_timeout_now(&m);
            send(self, m);
        }
        committed.append(&mut light.committed_entries);
        self.serve_reads();
        self.apply_task(committed)
    }

    /// A leader telling a transferee to campaign gives up its lease for
    /// the rest of the term (see `Lease::fenced_term`).
    fn fence_lease_on_timeout_now(&mut self, m: &flotilla_proto::eraftpb::Message) {
        if m.msg_type() == flotilla_proto::eraftpb::MessageType::MsgTimeoutNow {
            self.lease.fence(m.term);
        }
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

    /// Answers every waiting read with `e`, and every proposal with
    /// `StaleCommand` (the peer is going away: an entry it proposed may
    /// still commit and apply on the region's other peers, so its outcome
    /// is unknown, never a definite failure).
    pub fn fail_pending(&mut self, e: Error) {
        for p in self.proposals.drain(..) {
            p.callback.respond(err_response(Error::StaleCommand));
        }
        for r in self.reads.drain(..) {
            if let Some((_, callback)) = r.command {
                callback.respond(err_response(e.clone()));
            }
        }
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
        if self.raft.store().applying_snapshot().is_some() {
            // The data is not the applied index's until it is written.
            return;
        }
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
        let region = self.region();
        // Checked when the read came; a split may have applied while it
        // waited for its read index.
        let version = |e: Option<metapb::RegionEpoch>| e.map_or(0, |e| e.version);
        if version(request.header.as_ref().and_then(|h| h.region_epoch))
            != version(region.region_epoch)
        {
            return err_response(self.epoch_not_match());
        }
        let snap = self.engine.snapshot();
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
                    // The page stops at `limit` pairs, or early (with
                    // `more`) at the pair that reaches the store's byte
                    // bound, or before the pair that would pass the
                    // caller's (never before the first pair).
                    let limit = (s.limit as usize).max(1);
                    let mut kvs = Vec::new();
                    let mut bytes = 0u64;
                    let mut encoded = 0u64;
                    let mut more = false;
                    let res = snap.scan(Cf::Default, &start, &end, |k, v| {
                        let key = &k[1..];
                        let framed = pair_encoded_len(key.len(), v.len());
                        if s.max_bytes > 0
                            && !kvs.is_empty()
                            && encoded.saturating_add(framed) > s.max_bytes
                        {
                            more = true;
                            return std::ops::ControlFlow::Break(());
                        }
                        encoded = encoded.saturating_add(framed);
                        bytes = bytes.saturating_add((key.len() + v.len()) as u64);
                        kvs.push(KvPair {
                            key: Bytes::copy_from_slice(key),
                            value: Bytes::copy_from_slice(v),
                        });
                        if kvs.len() >= limit {
                            std::ops::ControlFlow::Break(())
                        } else if bytes >= self.limits.max_scan_bytes {
                            more = true;
                            std::ops::ControlFlow::Break(())
                        } else {
                            std::ops::ControlFlow::Continue(())
                        }
                    });
                    if let Err(e) = res {
                        return err_response(e.into());
                    }
                    response::Cmd::Scan(ScanResponse { kvs, more })
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

/// Bytes a pair of a `key_len`-byte key and a `value_len`-byte value
/// takes in a scan page on the wire: the pair and its field framing (tag
/// and length) in `ScanResponse.kvs`, as prost encodes a `KvPair` (empty
/// fields are left out). Computed before the pair is copied.
fn pair_encoded_len(key_len: usize, value_len: usize) -> u64 {
    use prost::encoding::{encoded_len_varint, key_len as tag_len};
    // Field numbers of `KvPair.key`, `KvPair.value` and `ScanResponse.kvs`.
    const KEY: u32 = 1;
    const VALUE: u32 = 2;
    const KVS: u32 = 1;
    let field = |tag: u32, len: usize| -> u64 {
        if len == 0 {
            0
        } else {
            (tag_len(tag) as u64) + encoded_len_varint(len as u64) as u64 + len as u64
        }
    };
    let inner = field(KEY, key_len) + field(VALUE, value_len);
    tag_len(KVS) as u64 + encoded_len_varint(inner) as u64 + inner
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

    /// A scan page's byte bound counts each pair as prost frames it in
    /// `ScanResponse.kvs`, empty fields and varint boundaries included.
    #[test]
    fn a_pairs_length_is_counted_as_prost_encodes_it() {
        let lens = [0usize, 1, 127, 128, 16_383, 16_384, 300_000];
        for k in lens {
            for v in lens {
                let pair = KvPair {
                    key: Bytes::from(vec![7u8; k]),
                    value: Bytes::from(vec![9u8; v]),
                };
                let page = ScanResponse {
                    kvs: vec![pair],
                    more: false,
                };
                assert_eq!(
                    pair_encoded_len(k, v),
                    prost::Message::encoded_len(&page) as u64,
                    "key {k} bytes, value {v} bytes"
                );
            }
        }
    }

    /// DESIGN §9 rule 6 (the lease ends on leader transfer): once a
    /// MsgTimeoutNow went out in a term, no renewal in that term extends
    /// the lease again (a late campaign of the transferee passes the
    /// followers' lease check); a later term's lease is unaffected.
    #[test]
    fn lease_is_not_extended_in_a_term_after_timeout_now() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut lease = Lease::default();
        lease.extend(7, later);
        assert_eq!(lease.expires_at, Some(later));
        lease.fence(7);
        assert_eq!(lease.expires_at, None);
        lease.extend(7, later + Duration::from_secs(1));
        assert_eq!(lease.expires_at, None, "extended after the fence");
        lease.extend(8, later);
        assert_eq!((lease.term, lease.expires_at), (8, Some(later)));
    }

    /// The peer on store 2 of a fresh 3-store region, led from store 1.
    struct FollowerOnStore2 {
        engine: Engine,
        region: Region,
        me: u64,
        leader: u64,
        peer: Peer,
    }

    impl FollowerOnStore2 {
        fn new(dir: &tempfile::TempDir) -> FollowerOnStore2 {
            let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
            let region = initial_regions(&[1, 2, 3], 1).unwrap().remove(0);
            bootstrap_store(&engine, 1, 2, std::slice::from_ref(&region)).unwrap();
            let me = region.peers.iter().find(|p| p.store_id == 2).unwrap().id;
            let leader = region.peers.iter().find(|p| p.store_id == 1).unwrap().id;
            let logger = Logger::root(slog::Discard, slog::o!());
            let peer = Peer::new(
                &Config::default(),
                engine.clone(),
                region.clone(),
                me,
                &crate::store::meta::StoreMeta::new().shared(),
                &logger,
            )
            .unwrap();
            FollowerOnStore2 {
                engine,
                region,
                me,
                leader,
                peer,
            }
        }
    }

    /// admin.md scenario 9 (a removed peer never resurrects): a leader
    /// tells a removed peer it is gone only while its region has no member
    /// on that peer's store, so a note under a newer membership than an
    /// initialized peer's, for another id on its own store, means this
    /// peer was removed too (while away): it goes. A note for a peer on
    /// another store, or under a membership this peer has seen, is
    /// confirmed (`gc_ack`) and the peer stays.
    #[test]
    fn a_newer_removal_note_naming_this_store_removes_a_stale_peer() {
        let note = |to: metapb::Peer, conf_ver: u64, leader: u64| RaftMessage {
            region_id: 1,
            from_peer: Some(metapb::Peer {
                id: leader,
                store_id: 1,
                ..Default::default()
            }),
            to_peer: Some(to),
            region_epoch: Some(metapb::RegionEpoch {
                conf_ver,
                version: 1,
            }),
            is_tombstone: true,
            ..Default::default()
        };
        let other = |store_id| metapb::Peer {
            id: 1 << 40 | 77,
            store_id,
            ..Default::default()
        };
        for (store, conf_ver, destroyed) in [(2, 5, true), (2, 1, false), (3, 5, false)] {
            let dir = tempfile::tempdir().unwrap();
            let mut f = FollowerOnStore2::new(&dir);
            let conf_ver_now = f.region.region_epoch.unwrap().conf_ver;
            assert_eq!(conf_ver_now, 1);
            f.peer
                .on_tombstone_message(&note(other(store), conf_ver, f.leader));
            assert_eq!(
                f.peer.removed, destroyed,
                "store {store}, conf_ver {conf_ver}"
            );
            let ack = f.peer.take_gc_reply();
            assert_eq!(
                ack.as_ref().is_some_and(|m| m.gc_ack),
                !destroyed,
                "store {store}, conf_ver {conf_ver}: {ack:?}"
            );
        }
    }

    /// A follower's round that only moves the commit index writes nothing
    /// (`WriteNeed::CommitOnly`); the next round with entries writes the
    /// raft state with that commit index in it.
    #[test]
    fn a_commit_only_round_writes_nothing() {
        use super::super::peer_storage::RAFT_INIT_LOG_INDEX as INIT;
        use flotilla_proto::raft_serverpb::RaftLocalState;
        let dir = tempfile::tempdir().unwrap();
        let FollowerOnStore2 {
            engine,
            region,
            me,
            leader,
            mut peer,
        } = FollowerOnStore2::new(&dir);
        let term = RAFT_INIT_LOG_TERM + 1;
        let append = |index: u64, entries: Vec<Entry>, commit: u64| Message {
            msg_type: MessageType::MsgAppend as i32,
            from: leader,
            to: me,
            term,
            log_term: if index == INIT {
                RAFT_INIT_LOG_TERM
            } else {
                term
            },
            index,
            entries,
            commit,
            ..Default::default()
        };
        let entry = |index| Entry {
            term,
            index,
            ..Default::default()
        };
        let round = |peer: &mut Peer| {
            let mut wb = engine.write_batch();
            let (_, need) = peer.collect_ready(&mut wb, &mut |_, _| {}).unwrap();
            let wrote = !wb.is_empty();
            engine.write(wb, Durability::Sync).unwrap();
            peer.finish_ready(&mut |_, _| {});
            (need, wrote)
        };
        peer.raft
            .step(append(INIT, vec![entry(INIT + 1)], INIT))
            .unwrap();
        assert_eq!(round(&mut peer), (WriteNeed::TermOrVote, true));
        peer.raft.step(append(INIT + 1, vec![], INIT + 1)).unwrap();
        assert_eq!(peer.raft.raft.raft_log().committed, INIT + 1);
        assert_eq!(round(&mut peer), (WriteNeed::CommitOnly, false));
        let persisted = |engine: &Engine| {
            engine
                .get_msg::<RaftLocalState>(Cf::Raft, &keys::raft_state_key(region.id))
                .unwrap()
                .and_then(|s| s.hard_state)
                .map(|hs| hs.commit)
        };
        assert_eq!(persisted(&engine), Some(INIT), "the commit went to disk");
        peer.raft
            .step(append(INIT + 1, vec![entry(INIT + 2)], INIT + 1))
            .unwrap();
        assert_eq!(round(&mut peer), (WriteNeed::Entries, true));
        assert_eq!(persisted(&engine), Some(INIT + 1), "carried by the entries");
    }

    /// F11: a Ready whose snapshot cannot be installed (its meta does not
    /// decode: it got past the checks on receipt) is a typed error (the
    /// caller stops the store), not silently dropped while the core goes
    /// on believing the snapshot is installed. Nothing goes into the batch.
    #[test]
    fn ready_with_an_unreadable_snapshot_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let FollowerOnStore2 {
            engine,
            region,
            me,
            leader,
            mut peer,
        } = FollowerOnStore2::new(&dir);
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
