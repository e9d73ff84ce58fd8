//! The raft side of the batch system: [`PeerFsm`] per region, the
//! [`StoreFsm`] control FSM, and [`RaftPoller`], whose round ends in one
//! write and one sync for every peer it handled.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use flotilla_engine::{Cf, Durability, Engine, WriteBatch, WriteOrigin, keys};
use flotilla_proto::eraftpb::{Message, MessageType};
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_serverpb::{
    PeerState, RaftApplyState, RaftLocalState, RaftMessage, RegionLocalState,
};
use flotilla_router::{Batch, Borrowed, Fsm, HandleResult, Inbox, PollHandler, Router};
use slog::Logger;

use super::apply::{
    ApplyControl, ApplyFsm, ApplyPoller, apply_origin, fail_delegate, may_apply_inline,
};
use super::config::Config;
use super::error::Error;
use super::fatal::StoreStatus;
use super::heartbeat::{self, Coalescer, is_coalesced};
use super::hibernation::{Hibernation, SleepMsg};
pub use super::hibernation::{WAKE_REASONS, WakeReason};
use super::histogram::LatencyHistogram;
use super::id_alloc::IdAllocator;
use super::meta::{MergedInto, SharedMeta};
use super::msg::{ApplyMsg, ApplyRes, ExecResult, MergeMsg, PeerMsg, StoreMsg};
use super::peer::{MergeOut, Peer, WriteNeed, gc_ack};
use super::snapshot::{GenSlot, SnapScheduler, SnapTask};
use super::transport::Transport;
use super::util::live_version;

/// Routes messages to this store's peers and its store FSM.
pub type RaftRouter = Router<PeerFsm, StoreFsm>;
/// Routes committed entries to this store's apply delegates.
pub type ApplyRouter = Router<ApplyFsm, ApplyControl>;

/// A region's peer as an FSM of the batch system.
pub struct PeerFsm {
    /// The peer.
    pub peer: Peer,
    stopped: bool,
}

impl PeerFsm {
    /// Wraps `peer`.
    pub fn new(peer: Peer) -> PeerFsm {
        PeerFsm {
            peer,
            stopped: false,
        }
    }
}

impl Fsm for PeerFsm {
    type Message = PeerMsg;

    fn is_stopped(&self) -> bool {
        self.stopped
    }
}

/// The store's control FSM: owns the clock's fan-out and messages for
/// regions the store does not know (counted in
/// [`StoreMetrics::raft_messages_unknown_region`]).
#[derive(Debug, Default)]
pub struct StoreFsm {
    /// No tick reaches the peers before this instant: ticks that queued up
    /// behind a slow poller are dropped, not delivered in a burst, so a
    /// peer's election clock never runs ahead of real time (the leader
    /// lease depends on it; see `Config::lease_duration`).
    next_tick_at: Option<std::time::Instant>,
    /// Ticks delivered so far (heartbeats are flushed every
    /// `heartbeat_ticks` of them).
    ticks: u64,
    /// The awake regions of this tick (kept to reuse its allocation).
    tick_buf: Vec<u64>,
    /// Wakes from store liveness not delivered yet (at most
    /// [`WAKES_PER_ROUND`] go per round, so no round stalls).
    pending_wakes: VecDeque<(u64, SleepMsg)>,
}

/// Per region: what the store clock needs to know to tick its peer.
#[derive(Debug, Default)]
pub struct TickSlot {
    /// A tick was sent to the peer and not handled yet. The store clock
    /// sends a peer no tick while its last one waits: a peer whose poller
    /// is behind misses ticks instead of getting a burst of stale ones
    /// later (its election clock runs slow under load, never fast), and a
    /// busy store is not buried under ticks.
    pub queued: AtomicBool,
    /// The first store tick at which a tick may act for the peer
    /// ([`Peer::tick_due`], published after each round the peer is
    /// handled in); the ticks before it are silent and not sent.
    pub due: AtomicU64,
}

/// The tick slots of a store's regions: one per peer, added when a peer
/// is created and removed when it is destroyed (a write lock, rare); the
/// store clock and the pollers read it.
pub type TickFlags = Arc<parking_lot::RwLock<fxhash::FxHashMap<u64, TickSlot>>>;

/// Store ticks between two collections of unused snapshot files (a
/// minute at the default tick).
pub const SNAP_GC_TICKS: u64 = 600;

/// Liveness wakes the store FSM delivers per round at most. The first
/// campaigners' wakes go first (see `Hibernation::expire`); at 100,000
/// regions on 3 stores a dead store's regions have about 16,700 of them on
/// each survivor, so one round starts nearly every election.
pub const WAKES_PER_ROUND: usize = 16384;

impl Fsm for StoreFsm {
    type Message = StoreMsg;

    fn is_stopped(&self) -> bool {
        false
    }
}

/// Kinds of raft message counted by [`StoreMetrics::sent_of_type`]: the
/// values of `eraftpb::MessageType` are `0..MESSAGE_TYPES`.
pub const MESSAGE_TYPES: usize = 19;

/// Counters shared by a store's pollers (plain atomics, so an exporter can
/// read them at any time; nothing is kept per region).
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Raft messages the peers sent, by `MessageType` value (coalesced
    /// heartbeats counted here under their own type too).
    pub raft_messages_by_type: [AtomicU64; MESSAGE_TYPES],
    /// Raft poll rounds run.
    pub poll_rounds: AtomicU64,
    /// Their total time, in microseconds (`begin` to the end of `end`).
    pub poll_round_micros: AtomicU64,
    /// The longest of them, in microseconds.
    pub poll_round_max_micros: AtomicU64,
    /// Raft messages handed to the transport (a coalesced heartbeat batch
    /// counts as one).
    pub raft_messages_sent: AtomicU64,
    /// Heartbeats and heartbeat responses the peers sent (each went into a
    /// coalesced batch, none on the wire alone).
    pub heartbeats_sent: AtomicU64,
    /// Coalesced heartbeat batches sent (wire messages), the bare
    /// liveness beats included.
    pub heartbeat_batches_sent: AtomicU64,
    /// Of those, the batches that carried at least one region's beat.
    pub beat_batches_sent: AtomicU64,
    /// Times the heartbeat buffers were flushed (once per heartbeat
    /// interval, plus urgent flushes).
    pub heartbeat_flushes: AtomicU64,
    /// Of those, the flushes at the end of a round because a beat carried
    /// a ReadIndex context, or a hibernating region woke (its leader's
    /// first heartbeats, a follower's request to wake its leader).
    pub heartbeat_urgent_flushes: AtomicU64,
    /// Coalesced heartbeat batches received.
    pub heartbeat_batches_received: AtomicU64,
    /// Poll rounds that wrote raft state.
    pub raft_writes: AtomicU64,
    /// Of those, the rounds whose write was synced.
    pub raft_synced_writes: AtomicU64,
    /// Peers of this store that are leaders now.
    pub leaders: AtomicI64,
    /// Inbound raft messages dropped because their peer's mailbox held
    /// `raft_message_capacity` messages.
    pub raft_messages_dropped: AtomicU64,
    /// Inbound raft messages for regions this store has no peer of.
    pub raft_messages_unknown_region: AtomicU64,
    /// Store ticks dropped because they came less than the minimum tick
    /// spacing after the last one (they had queued behind a slow poller).
    pub ticks_dropped: AtomicU64,
    /// Ticks sent to peers (only awake peers get them).
    pub peer_ticks: AtomicU64,
    /// Ticks not sent because the peer had not handled its last one yet
    /// (its poller is behind).
    pub ticks_coalesced: AtomicU64,
    /// Ticks not sent to awake peers because they could only count (the
    /// peer runs them itself; see [`TickSlot::due`]).
    pub ticks_silent: AtomicU64,
    /// Peers of this store that are awake now (they tick).
    pub awake_peers: AtomicI64,
    /// Peers of this store that are hibernating now (no ticks, no messages).
    pub hibernated_peers: AtomicI64,
    /// Times a peer of this store went to sleep.
    pub hibernations: AtomicU64,
    /// Times a peer of this store woke, by [`WakeReason`] value.
    pub wakes_by_reason: [AtomicU64; WAKE_REASONS],
    /// Bare store-liveness beats sent: one to each remote store no beats
    /// batch went to in the last heartbeat interval (every batch carries
    /// the liveness stamp too).
    pub liveness_messages_sent: AtomicU64,
    /// Heartbeat batches dropped whole because they came from an older
    /// life (liveness epoch) of their store than one already heard, or
    /// were sent before their store heard that this store withdrew its
    /// support (late messages that must not revive it).
    pub stale_batches_dropped: AtomicU64,
    /// Heartbeat batches received, bare liveness beats included: each one
    /// is store liveness.
    pub liveness_beats_received: AtomicU64,
    /// Times this store withdrew its support from a remote store (it went
    /// silent for the support duration, or restarted).
    pub support_withdrawals: AtomicU64,
    /// Snapshots this store's leaders generated.
    pub snapshots_generated: AtomicU64,
    /// Snapshot generations that failed.
    pub snapshot_generate_failures: AtomicU64,
    /// Snapshots sent whole (the receiver has the file).
    pub snapshots_sent: AtomicU64,
    /// Snapshot sends that failed (receiver busy, dropped, I/O).
    pub snapshot_send_failures: AtomicU64,
    /// Snapshots received whole and handed to their peer.
    pub snapshots_received: AtomicU64,
    /// Snapshot streams refused or broken on receipt.
    pub snapshot_receive_failures: AtomicU64,
    /// Snapshots written into the engine (the region is `Normal` again).
    pub snapshots_applied: AtomicU64,
    /// Peers created from messages (uninitialized until a snapshot) and
    /// by splits.
    pub peers_created: AtomicU64,
    /// Regions measured by the split checker.
    pub split_checks: AtomicU64,
    /// Splits the split checker proposed.
    pub splits_proposed: AtomicU64,
    /// Splits applied by this store's peers (one per split entry).
    pub splits_applied: AtomicU64,
    /// Merges this store's target peers applied (each store of a merged
    /// region counts it).
    pub merges_applied: AtomicU64,
    /// Merges this store's source peers rolled back.
    pub merges_rolled_back: AtomicU64,
    /// Peers destroyed (removed from their region).
    pub peers_destroyed: AtomicU64,
    /// Merge notices (a store where a source here was merged away says
    /// so) on which the source found no peer of its target here but a
    /// region that may yet split one off, and stayed (one per notice: a
    /// waiting source hears one about every election timeout).
    pub merge_sources_waiting_for_split: AtomicU64,
    /// Time spent generating snapshots (microseconds, all of them).
    pub snapshot_generate_micros: AtomicU64,
    /// Time spent sending snapshot streams (microseconds, all of them).
    pub snapshot_send_micros: AtomicU64,
    /// Time spent writing received snapshots into the engine
    /// (microseconds, all of them).
    pub snapshot_apply_micros: AtomicU64,
    /// Appends the transport refused (their store unreachable), each
    /// reported to the sending leader's raft.
    pub unreachable_reports: AtomicU64,
    /// Raft poll rounds, by how long each took.
    pub poll_round_latency: LatencyHistogram,
    /// Synced raft-log writes (one per poll round that persists entries
    /// or a term/vote change), by how long the write and its fsync took.
    pub raft_sync_write_latency: LatencyHistogram,
    /// Apply rounds' engine writes, by how long each took (the raft
    /// pollers' inline applies included).
    pub apply_write_latency: LatencyHistogram,
    /// Apply tasks a raft poller applied itself, in the round that made
    /// them (see `Config::apply_inline`), instead of handing them to the
    /// apply pool.
    pub applies_inline: AtomicU64,
    /// Proposed commands (writes and admin), from the proposal to the
    /// answer after apply.
    pub command_latency: LatencyHistogram,
}

impl StoreMetrics {
    /// Wakes for `reason` so far.
    pub fn wakes(&self, reason: WakeReason) -> u64 {
        self.wakes_by_reason
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Raft messages of type `t` the peers sent.
    pub fn sent_of_type(&self, t: MessageType) -> u64 {
        self.raft_messages_by_type
            .get(t as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn record_round(&self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.poll_rounds.fetch_add(1, Ordering::Relaxed);
        self.poll_round_micros.fetch_add(us, Ordering::Relaxed);
        self.poll_round_max_micros.fetch_max(us, Ordering::Relaxed);
        self.poll_round_latency.observe(took);
    }
}

/// Polls peers: steps their messages, collects their Readies into one
/// write batch, writes and syncs it once, then sends and hands committed
/// entries to apply.
pub struct RaftPoller<T: Transport> {
    cfg: Arc<Config>,
    engine: Engine,
    router: RaftRouter,
    apply_router: ApplyRouter,
    transport: T,
    /// The store's snapshot worker (generation and sending).
    snap: Option<SnapScheduler>,
    /// The store's split-check worker.
    split_check: Option<SnapScheduler>,
    wb: Option<WriteBatch>,
    coalescer: Arc<Coalescer>,
    hib: Arc<Hibernation>,
    ticks_queued: TickFlags,
    /// A beat with a ReadIndex context was coalesced this round.
    urgent_beats: bool,
    /// The strongest durability a Ready of this round needs.
    need: WriteNeed,
    /// When this round began.
    round_start: Option<std::time::Instant>,
    /// This round's write failed or a Ready could not be handled: the
    /// store is stopping, nothing of the round may be acknowledged.
    failed: bool,
    store_id: u64,
    metrics: Arc<StoreMetrics>,
    status: Arc<StoreStatus>,
    /// The store's regions by range.
    meta: SharedMeta,
    /// Where new region and peer ids come from (splits).
    ids: Arc<IdAllocator>,
    /// Applies the entries this poller's rounds commit when the region's
    /// delegate is idle (`Config::apply_inline`), in a batch of its own.
    applier: ApplyPoller,
    /// The delegates borrowed this round, each with its peer's place in
    /// the round's batch (ascending); empty between rounds.
    inline: Vec<(usize, Borrowed<ApplyFsm>)>,
    logger: Logger,
}

impl<T: Transport> RaftPoller<T> {
    /// A poller for the store `store_id`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        engine: Engine,
        router: RaftRouter,
        apply_router: ApplyRouter,
        transport: T,
        store_id: u64,
        metrics: Arc<StoreMetrics>,
        status: Arc<StoreStatus>,
        coalescer: Arc<Coalescer>,
        hib: Arc<Hibernation>,
        ticks_queued: TickFlags,
        snap: Option<SnapScheduler>,
        split_check: Option<SnapScheduler>,
        meta: SharedMeta,
        ids: Arc<IdAllocator>,
        logger: Logger,
    ) -> Self {
        let applier = ApplyPoller::new(
            engine.clone(),
            router.clone(),
            meta.clone(),
            Arc::clone(&status),
            logger.clone(),
        )
        .with_metrics(Arc::clone(&metrics));
        RaftPoller {
            cfg,
            engine,
            router,
            apply_router,
            transport,
            snap,
            split_check,
            wb: None,
            coalescer,
            hib,
            ticks_queued,
            urgent_beats: false,
            need: WriteNeed::Nothing,
            round_start: None,
            failed: false,
            store_id,
            metrics,
            status,
            meta,
            ids,
            applier,
            inline: Vec::new(),
            logger,
        }
    }

    /// Where this round's peers send their raft messages.
    fn outbox(&mut self) -> Outbox<'_, T> {
        Outbox::new(
            &mut self.transport,
            self.snap.as_ref(),
            &self.router,
            &self.coalescer,
            &self.metrics,
            &self.logger,
            &mut self.urgent_beats,
        )
    }

    /// Stops the store: nothing of this round is written, sent or
    /// acknowledged (the proposals of the peers in hand are answered
    /// `StoreStopped { in_flight: true }` as their FSMs are dropped).
    fn fail(&mut self, cause: Error) {
        self.failed = true;
        self.wb = None;
        slog::crit!(self.logger, "raft poller stopping the store"; "store" => self.store_id);
        self.status.fail(cause, &self.logger);
        // The routers are shut down: every peer of the store is dropped.
        self.metrics.leaders.store(0, Ordering::Relaxed);
    }
}

/// Where a poller's peers send raft messages during a round: the one
/// store-level place they leave through. Heartbeats and their responses go
/// to the coalescer; everything else is wrapped for its destination peer
/// and handed to the transport.
struct Outbox<'a, T> {
    transport: &'a mut T,
    /// Snapshots leave through the snapshot worker.
    snap: Option<&'a SnapScheduler>,
    /// Where a snapshot that could not leave is reported back to raft.
    router: &'a RaftRouter,
    coalescer: &'a Coalescer,
    metrics: &'a StoreMetrics,
    logger: &'a Logger,
    /// A beat with a ReadIndex context was coalesced: flush this round.
    urgent_beats: &'a mut bool,
}

impl<'a, T: Transport> Outbox<'a, T> {
    fn new(
        transport: &'a mut T,
        snap: Option<&'a SnapScheduler>,
        router: &'a RaftRouter,
        coalescer: &'a Coalescer,
        metrics: &'a StoreMetrics,
        logger: &'a Logger,
        urgent_beats: &'a mut bool,
    ) -> Self {
        Outbox {
            transport,
            snap,
            router,
            coalescer,
            metrics,
            logger,
            urgent_beats,
        }
    }

    fn send(&mut self, peer: &Peer, m: Message) {
        if let Some(c) = self
            .metrics
            .raft_messages_by_type
            .get(m.msg_type() as usize)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let region = peer.region();
        let Some(to_peer) = peer.peer_by_id(m.to) else {
            slog::debug!(self.logger, "message to unknown peer"; "to" => m.to);
            return;
        };
        if is_coalesced(m.msg_type()) {
            self.metrics.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
            let conf_ver = region.region_epoch.map_or(0, |e| e.conf_ver);
            if self
                .coalescer
                .push(region.id, conf_ver, to_peer.store_id, &m)
            {
                *self.urgent_beats = true;
            }
            return;
        }
        let msg = RaftMessage {
            region_id: region.id,
            from_peer: Some(peer.meta),
            to_peer: Some(to_peer),
            message: Some(m),
            region_epoch: region.region_epoch,
            start_key: region.start_key.clone(),
            end_key: region.end_key.clone(),
            ..Default::default()
        };
        if msg
            .message
            .as_ref()
            .is_some_and(|m| m.msg_type() == MessageType::MsgSnapshot)
        {
            // With its file, off the poller. Without a worker (or with it
            // gone) raft hears of the failure at the next round.
            let to_peer = to_peer.id;
            if let Some(snap) = self.snap
                && snap.send(SnapTask::Send(Box::new(msg))).is_ok()
            {
                return;
            }
            slog::warn!(self.logger, "no snapshot worker: snapshot not sent"; "region" => region.id);
            // Raft hears it failed (its follower would wait in snapshot
            // state for good otherwise).
            let _ = self
                .router
                .force_send(region.id, PeerMsg::SnapshotStatus { to_peer, ok: false });
            return;
        }
        self.metrics
            .raft_messages_sent
            .fetch_add(1, Ordering::Relaxed);
        let append = msg
            .message
            .as_ref()
            .is_some_and(|m| m.msg_type() == MessageType::MsgAppend);
        let to = to_peer.id;
        if let Err(e) = self.transport.send(msg) {
            slog::debug!(self.logger, "send failed"; "err" => %e);
            // A leader stops pipelining appends to a store it cannot
            // reach (its progress goes back to probing) until it answers.
            if append {
                self.metrics
                    .unreachable_reports
                    .fetch_add(1, Ordering::Relaxed);
                let _ = self
                    .router
                    .force_send(region.id, PeerMsg::Unreachable { to_peer: to });
            }
        }
    }
}

impl<T: Transport> RaftPoller<T> {
    /// A raft message for a region this store has no peer of: a message
    /// that may start a peer (see [`may_create_peer`]) creates an
    /// uninitialized one, unless the region was removed from this store
    /// (its tombstone is as new as the message); the rest is dropped.
    fn on_unknown_region_message(&mut self, msg: Box<RaftMessage>) {
        let region_id = msg.region_id;
        // Created since the message was routed here.
        let msg = match self.router.force_send(region_id, PeerMsg::RaftMessage(msg)) {
            Ok(()) => return,
            Err(e) => match e.into_msg() {
                PeerMsg::RaftMessage(m) => m,
                _ => return,
            },
        };
        let created = match self.create_peer(&msg) {
            Ok(created) => created,
            Err(e) => {
                slog::warn!(self.logger, "peer not created"; "region" => region_id, "err" => %e);
                false
            }
        };
        if !created {
            self.metrics
                .raft_messages_unknown_region
                .fetch_add(1, Ordering::Relaxed);
            slog::debug!(self.logger, "message for unknown region dropped"; "region" => region_id);
            if msg.is_tombstone || msg.gc_ack {
                self.confirm_removed_peer_absent(&msg);
            } else {
                self.tell_merged_away(&msg);
            }
            return;
        }
        self.metrics.peers_created.fetch_add(1, Ordering::Relaxed);
        let _ = self.router.force_send(region_id, PeerMsg::RaftMessage(msg));
    }

    /// A leader's note to a peer it removed (a tombstone message without
    /// `merged_into`), for a region this store has no peer of: the peer is
    /// not here, and the leader hears so (`gc_ack`). Not while a split is
    /// about to create the region here, or its peer's tombstone is not
    /// written yet: told again later. Never answered: a merge notice (two
    /// stores where the region is gone would trade notices forever) and a
    /// `gc_ack` (to a leader gone since).
    fn confirm_removed_peer_absent(&mut self, msg: &RaftMessage) {
        let (Some(leader), Some(gone)) = (msg.from_peer, msg.to_peer) else {
            return;
        };
        if msg.gc_ack || !msg.is_tombstone || msg.merged_into.is_some() {
            return;
        }
        let pending = {
            let meta = self.meta.lock();
            meta.claimed_by_split(msg.region_id) || meta.is_destroying(msg.region_id)
        };
        if pending {
            return;
        }
        if let Err(e) = self.transport.send(gc_ack(msg.region_id, gone, leader)) {
            slog::debug!(self.logger, "removal confirmation not sent"; "err" => %e);
        }
    }

    /// A message from a peer of a region that was merged away here: the
    /// sender missed the merge's end (admin.md §1.2, "how a source peer
    /// left behind learns the outcome"), and is told with a tombstone
    /// message naming the region it went into.
    fn tell_merged_away(&mut self, msg: &RaftMessage) {
        let (Some(from), Some(to)) = (msg.from_peer, msg.to_peer) else {
            return;
        };
        let state: Option<RegionLocalState> = self
            .engine
            .get_msg(Cf::Raft, &keys::region_state_key(msg.region_id))
            .ok()
            .flatten();
        let Some(state) = state.filter(|s| s.state() == PeerState::Tombstone) else {
            return;
        };
        let Some(target) = state.merge_state.and_then(|m| m.target) else {
            return;
        };
        let reply = RaftMessage {
            region_id: msg.region_id,
            from_peer: Some(to),
            to_peer: Some(from),
            region_epoch: state.region.and_then(|r| r.region_epoch),
            is_tombstone: true,
            merged_into: Some(target),
            ..Default::default()
        };
        if let Err(e) = self.transport.send(reply) {
            slog::debug!(self.logger, "merge notice not sent"; "err" => %e);
        }
    }

    /// A report from the region's apply delegate (by message, or from this
    /// poller's own inline apply). Returns `false` if the store is
    /// stopping (a crash point fired): nothing more of the round may run.
    fn on_apply_res(&mut self, fsm: &mut PeerFsm, res: ApplyRes) -> bool {
        for r in &res.results {
            if let ExecResult::SnapshotApplied { micros, .. } = r {
                self.metrics
                    .snapshots_applied
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .snapshot_apply_micros
                    .fetch_add(*micros, Ordering::Relaxed);
            }
        }
        for r in &res.results {
            let counter = match r {
                ExecResult::CommitMerge(_) => &self.metrics.merges_applied,
                ExecResult::RollbackMerge(_) => &self.metrics.merges_rolled_back,
                _ => continue,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let membership = res
            .results
            .iter()
            .any(|r| matches!(r, ExecResult::ChangePeer { .. }));
        let hib = &*self.hib;
        fsm.peer.on_apply_res(res);
        fsm.peer.retry_deferred_sleep(hib);
        if membership {
            hib.add_remotes(fsm.peer.region().peers.iter().map(|p| p.store_id));
        }
        if let Some(born) = fsm.peer.take_born() {
            self.metrics.splits_applied.fetch_add(1, Ordering::Relaxed);
            // Crash point: the split is written, its peers not
            // registered (a restart loads them from disk).
            if crash_point_split_before_register() {
                self.fail(Error::Engine("failpoint split_before_register".into()));
                return false;
            }
            self.register_split_peers(&fsm.peer, born);
        }
        true
    }

    /// Destroys a removed peer: it stops here (its mailbox closes, its
    /// waiting clients hear the region is not here, its tick slot and
    /// hibernation entry go), and its apply delegate, after every entry
    /// queued before, writes the region's tombstone and deletes its log,
    /// states and data (see `ApplyMsg::Destroy`).
    fn destroy_peer(&mut self, fsm: &mut PeerFsm) {
        let region_id = fsm.peer.region_id();
        let task = fsm.peer.destroy_task();
        fsm.stopped = true;
        fsm.peer.fail_pending(Error::RegionNotFound(region_id));
        // Marked before the apply side can finish (it clears the mark) and
        // before the mailbox closes (no peer of the region may be created
        // in between). Its range stays held until the apply side cleared it.
        self.meta.lock().start_destroy(region_id);
        self.router.close(region_id);
        if self
            .apply_router
            .force_send(region_id, ApplyMsg::Destroy(Box::new(task)))
            .is_err()
        {
            slog::warn!(self.logger, "apply delegate gone: removed peer not cleared"; "region" => region_id);
            // Nothing will clear it: the store is stopping.
            let mut meta = self.meta.lock();
            for held in fsm.peer.held_ranges() {
                meta.remove(&held);
            }
            meta.finish_destroy(region_id);
        }
        self.ticks_queued.write().remove(&region_id);
        self.hib.remove_region(region_id);
        self.metrics.peers_destroyed.fetch_add(1, Ordering::Relaxed);
        slog::info!(self.logger, "removed peer destroyed"; "region" => region_id, "peer" => fsm.peer.meta.id);
    }

    /// Sends what `peer`'s merges have for other regions' peers and apply
    /// delegates on this store.
    fn route_merge_msgs(&mut self, peer: &mut Peer) {
        for out in peer.take_merge_out() {
            let (region_id, sent) = match out {
                MergeOut::Peer(id, msg) => {
                    match self.router.force_send(id, PeerMsg::Merge(Box::new(msg))) {
                        Ok(()) => (id, true),
                        Err(e) => {
                            if let PeerMsg::Merge(m) = e.into_msg() {
                                self.on_target_not_here(id, *m);
                            }
                            (id, false)
                        }
                    }
                }
                MergeOut::Apply(id, msg) => (id, self.apply_router.force_send(id, msg).is_ok()),
                MergeOut::Remote(msg) => {
                    let to = msg.to_peer.map_or(0, |p| p.store_id);
                    (to, self.transport.send(*msg).is_ok())
                }
                MergeOut::AskTarget { source, target } => {
                    let version = target.region_epoch.map_or(0, |e| e.version);
                    let ask = MergeMsg::SourceWaits { source, version };
                    if self
                        .router
                        .force_send(target.id, PeerMsg::Merge(Box::new(ask)))
                        .is_err()
                    {
                        self.on_merged_source_without_target(source, &target);
                    }
                    (target.id, true)
                }
            };
            if !sent {
                slog::debug!(self.logger, "merge step for a region not here";
                    "region" => region_id, "from" => peer.region_id());
            }
        }
    }

    /// `source`, merged away elsewhere into `target` (as the merge left
    /// it), found no peer of the target here. If a region here may still
    /// split the target's peer off, the source waits for it (that peer's
    /// log holds the CommitMerge, which needs the source's data; the
    /// source asks again at its next merge notice); else nothing here
    /// needs its data and it goes.
    fn on_merged_source_without_target(&self, source: u64, target: &Region) {
        if self.may_split_off(target, source) {
            self.metrics
                .merge_sources_waiting_for_split
                .fetch_add(1, Ordering::Relaxed);
            slog::debug!(self.logger, "merged-away source waits for a split to create its target";
                "region" => source, "target" => target.id);
            return;
        }
        let gone = MergeMsg::Superseded {
            target_id: target.id,
        };
        let _ = self
            .router
            .force_send(source, PeerMsg::Merge(Box::new(gone)));
    }

    /// Whether a region here other than `source` may still create a peer
    /// of `target` (as a merge left it) that applies the merge from its
    /// log (`StoreMeta::may_apply_merge`).
    fn may_split_off(&self, target: &Region, source: u64) -> bool {
        let m = MergedInto::of(target);
        self.meta
            .lock()
            .may_apply_merge(source, &m, None, |r| live_version(&self.engine, r))
    }

    /// A source's ask to commit found no peer of its target `target` here.
    /// If the target was merged away here itself, after its peer applied
    /// everything since the epoch the source recorded from the log, it
    /// never applied this merge (its source here would be gone) and never
    /// will: that is the source's proof to roll back.
    fn on_target_not_here(&self, target: u64, msg: MergeMsg) {
        let (req, target_epoch) = match msg {
            MergeMsg::AskCommit { req, target_epoch } => (req, target_epoch),
            MergeMsg::CheckTarget { callback, .. } => {
                // No peer of the target here: it is not colocated, or the
                // request names a region that does not exist.
                callback.respond(crate::store::util::err_response(Error::Admin(
                    crate::store::admin::AdminError::MergeTargetMismatch { target },
                )));
                return;
            }
            MergeMsg::TargetChecked { callback, .. } => {
                callback.respond(crate::store::util::err_response(Error::ProposalDropped(
                    "the source's peer is gone".into(),
                )));
                return;
            }
            _ => return,
        };
        let Some(source) = req.source.as_ref().map(|r| r.id) else {
            return;
        };
        let state: Option<RegionLocalState> = self
            .engine
            .get_msg(Cf::Raft, &keys::region_state_key(target))
            .ok()
            .flatten();
        let merged_away = state
            .filter(|s| s.state() == PeerState::Tombstone)
            .is_some_and(|s| s.merge_state.is_some());
        let continuous = apply_origin(&self.engine, target).is_ok_and(|origin| {
            crate::store::admin::epoch_at_or_before(Some(origin), Some(target_epoch))
        });
        if merged_away && continuous {
            slog::info!(self.logger, "merge target merged away here: the source rolls back";
                "target" => target, "source" => source);
            let refused = MergeMsg::Refused { commit: req.commit };
            let _ = self
                .router
                .force_send(source, PeerMsg::Merge(Box::new(refused)));
        }
    }

    /// Creates and registers an uninitialized peer for `msg` if it may
    /// start one. Returns whether it did.
    fn create_peer(&self, msg: &RaftMessage) -> Result<bool, Error> {
        let region_id = msg.region_id;
        let Some(to) = msg
            .to_peer
            .filter(|p| p.store_id == self.store_id && p.id != 0)
        else {
            return Ok(false);
        };
        let Some(m) = msg.message.as_ref().filter(|m| may_create_peer(m)) else {
            return Ok(false);
        };
        // Held until the peer is registered: a split applying meanwhile
        // sees it (and does not create the region's peer itself), or has
        // claimed the region first (and this message creates nothing).
        let mut meta = self.meta.lock();
        if meta.is_destroying(region_id) {
            // The old peer is being cleared: the leader's next message
            // comes after.
            return Ok(false);
        }
        if meta.claimed_by_split(region_id) {
            // The split's peer is about to be registered: it takes the
            // vote then.
            if m.msg_type() != MessageType::MsgHeartbeat {
                meta.keep_early_vote(region_id, msg.clone());
            }
            return Ok(false);
        }
        // A vote carries its region's range: one a live region here
        // covers is not this store's yet (this store has not applied the
        // split that made it, or holds a stale region a snapshot will
        // shrink). Beats carry no range; the peer they create owns none
        // until a snapshot, whose admission checks it.
        if m.msg_type() != MessageType::MsgHeartbeat
            && let Some(&other) = meta
                .overlapping(&msg.start_key, &msg.end_key, region_id)
                .first()
        {
            slog::debug!(self.logger, "vote for a range a region here covers kept for later";
                "region" => region_id, "covered_by" => other);
            meta.keep_early_vote(region_id, msg.clone());
            return Ok(false);
        }
        let state: Option<RegionLocalState> = self
            .engine
            .get_msg(Cf::Raft, &keys::region_state_key(region_id))?;
        if let Some(state) = state {
            if state.state() != PeerState::Tombstone {
                // A live state without a peer: not ours to repair here.
                return Ok(false);
            }
            if tombstone_outdates(&state, msg) {
                slog::debug!(self.logger, "message for a removed peer dropped";
                    "region" => region_id, "to" => to.id);
                return Ok(false);
            }
            // A removed peer's log and states not cleared yet: a new peer
            // must not start from them (the leader's next message comes
            // after the clearing). An uninitialized peer's raft state (no
            // log: a term and a vote, left by a restart, which does not
            // load such peers) is the new peer's own: it starts from it,
            // so it never votes twice in a term.
            let left: Option<RaftLocalState> = self
                .engine
                .get_msg(Cf::Raft, &keys::raft_state_key(region_id))?;
            if left.is_some_and(|r| r.last_index > 0) {
                return Ok(false);
            }
        }
        let peer = Peer::uninitialized(
            &self.cfg,
            self.engine.clone(),
            region_id,
            to,
            msg.region_epoch.map_or(0, |e| e.conf_ver),
            &self.meta,
            &self.logger,
        )?;
        self.register_peer(peer, RaftApplyState::default())?;
        // A vote kept for it earlier is older than this message.
        meta.take_early_vote(region_id);
        drop(meta);
        slog::info!(self.logger, "peer created from a message"; "region" => region_id, "peer" => to.id);
        Ok(true)
    }

    /// Registers a new peer with the store: its tick slot, hibernation
    /// entry, apply delegate (at `apply_state`) and mailbox.
    fn register_peer(&self, mut peer: Peer, apply_state: RaftApplyState) -> Result<(), Error> {
        peer.start_clock(self.hib.store_ticks());
        let region_id = peer.region_id();
        let region = peer.region().clone();
        self.ticks_queued
            .write()
            .insert(region_id, TickSlot::default());
        self.hib.add_region(region_id);
        let capacity = std::num::NonZeroUsize::new(self.cfg.mailbox_capacity)
            .unwrap_or(std::num::NonZeroUsize::MIN);
        let register_err = |e: flotilla_router::Error| Error::Config(format!("register: {e}"));
        self.apply_router
            .register(
                region_id,
                flotilla_router::Mailbox::new(Box::new(
                    ApplyFsm::new(region, peer.meta, apply_state)
                        .with_merge_state(peer.raft.store().merge_state().cloned()),
                )),
            )
            .map_err(register_err)?;
        self.router
            .register(
                region_id,
                flotilla_router::Mailbox::bounded(Box::new(PeerFsm::new(peer)), capacity),
            )
            .map_err(register_err)?;
        Ok(())
    }

    /// Creates and registers the peers of the regions a split of
    /// `parent`'s region made here (their states are written). Where the
    /// parent leads, they campaign at once: their stores apply the split
    /// at about the same time, and the parent's leader is the likeliest to
    /// be ahead.
    fn register_split_peers(&self, parent: &Peer, born: Vec<Region>) {
        for region in born {
            let region_id = region.id;
            let Some(me) = region
                .peers
                .iter()
                .find(|p| p.store_id == self.store_id)
                .map(|p| p.id)
            else {
                self.meta.lock().release_split_claim(region_id);
                continue;
            };
            let range = region.clone();
            let created = Peer::new(
                &self.cfg,
                self.engine.clone(),
                region,
                me,
                &self.meta,
                &self.logger,
            )
            .and_then(|mut peer| {
                peer.born_of_split(parent.is_leader());
                let apply_state = *peer.raft.store().apply_state();
                self.register_peer(peer, apply_state)
            });
            let early_vote = {
                let mut meta = self.meta.lock();
                meta.release_split_claim(region_id);
                meta.take_early_vote(region_id)
            };
            match created {
                Ok(()) => {
                    self.metrics.peers_created.fetch_add(1, Ordering::Relaxed);
                    let msg = match early_vote {
                        Some(vote) => PeerMsg::RaftMessage(Box::new(vote)),
                        None => PeerMsg::Wake,
                    };
                    let _ = self.router.force_send(region_id, msg);
                }
                Err(e) => {
                    // Its range is held by no peer: let a snapshot of the
                    // region take it.
                    self.meta.lock().remove(&range);
                    slog::error!(self.logger, "split peer not created"; "region" => region_id, "err" => %e);
                }
            }
        }
    }
}

/// Sets the ids of a BatchSplit: one new region id and `peers` peer ids
/// per split key, from this store's allocator. The leader allocates
/// (DESIGN §6): ids a client sent are replaced, never trusted (an id of a
/// live region, or one peer id twice, would break the cluster). A split
/// with more keys than `max_keys` gets none (the peer refuses it typed)
/// so it cannot drain the id space.
fn fill_split_ids(
    request: &mut flotilla_proto::raft_cmdpb::RaftCmdRequest,
    peers: usize,
    max_keys: u64,
    ids: &IdAllocator,
) -> Result<(), Error> {
    use flotilla_proto::raft_cmdpb::admin_request::Cmd;
    let Some(Cmd::BatchSplit(split)) = request.admin_request.as_mut().and_then(|a| a.cmd.as_mut())
    else {
        return Ok(());
    };
    if split.requests.len() as u64 > max_keys {
        return Ok(());
    }
    for r in &mut split.requests {
        r.new_region_id = ids.alloc()?;
        r.new_peer_ids = (0..peers).map(|_| ids.alloc()).collect::<Result<_, _>>()?;
    }
    Ok(())
}

/// The `split_before_register` failpoint (always false without the
/// `failpoints` feature).
fn crash_point_split_before_register() -> bool {
    fail::fail_point!("split_before_register", |_| true);
    false
}

/// Whether a message for a region a store has no peer of may create one:
/// a vote or pre-vote (the region may be electing with this peer in it),
/// or a heartbeat that commits nothing here (a leader that added this
/// peer). Anything else (an append, a heartbeat with a commit index) comes
/// from a leader that thinks this peer has a log: a peer that was removed
/// and whose messages are late.
pub fn may_create_peer(m: &Message) -> bool {
    match m.msg_type() {
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => true,
        MessageType::MsgHeartbeat => m.commit == 0,
        _ => false,
    }
}

/// Whether a tombstone outdates `msg` (which then must not recreate the
/// peer): the tombstone's region lists the removed peer itself, so a
/// message to that very peer, or from a configuration no newer than the
/// one that removed it, is late. Peer ids say nothing of age: each store
/// allocates its own (`IdAllocator`), so a peer added later may have a
/// smaller id than the one removed.
pub fn tombstone_outdates(state: &RegionLocalState, msg: &RaftMessage) -> bool {
    let Some(region) = state.region.as_ref() else {
        return false;
    };
    let to = msg.to_peer.map_or(0, |p| p.id);
    let conf_ver = |e: Option<flotilla_proto::metapb::RegionEpoch>| e.map_or(0, |e| e.conf_ver);
    region.peers.iter().any(|p| p.id == to)
        || (msg.region_epoch.is_some()
            && conf_ver(msg.region_epoch) <= conf_ver(region.region_epoch))
}

/// Queues a snapshot generation the core asked for on the snapshot
/// worker; without one the slot stays empty and raft keeps hearing
/// "temporarily unavailable".
fn schedule_generation(
    snap: Option<&SnapScheduler>,
    region_id: u64,
    slot: Arc<GenSlot>,
    logger: &Logger,
) {
    let task = SnapTask::Generate { region_id, slot };
    if snap.is_none_or(|s| s.send(task).is_err()) {
        slog::warn!(logger, "no snapshot worker: snapshot not generated"; "region" => region_id);
    }
}

impl<T: Transport> RaftPoller<T> {
    /// Schedules the snapshot generation `peer`'s core asked for, if any.
    fn schedule_snapshot(&self, peer: &Peer) {
        if let Some(slot) = peer.raft.store().take_snapshot_wanted() {
            schedule_generation(self.snap.as_ref(), peer.region_id(), slot, &self.logger);
        }
    }
}

/// The region's apply delegate, borrowed for an inline apply if it may
/// take one now (see [`may_apply_inline`]): the peer is not applying a
/// snapshot, and the delegate is idle and owes the peer no report.
fn borrow_delegate(apply_router: &ApplyRouter, peer: &Peer) -> Option<Borrowed<ApplyFsm>> {
    let store = peer.raft.store();
    if store.applying_snapshot().is_some() {
        return None;
    }
    let borrowed = apply_router.borrow_idle(peer.region_id())?;
    // An ineligible delegate goes straight back as it drops.
    may_apply_inline(borrowed.fsm(), store.applied_index()).then_some(borrowed)
}

/// Brings about the peer's next round if its core has something to hand
/// out (messages, a commit that lets more entries apply) after this one.
fn wake_if_ready(router: &RaftRouter, fsm: &PeerFsm) {
    if fsm.peer.raft.has_ready() {
        let _ = router.force_send(fsm.peer.region_id(), PeerMsg::Wake);
    }
}

/// Sends every coalesced heartbeat batch of `coalescer` through
/// `transport` (stamped for store liveness) and flushes it.
fn flush_heartbeats<T: Transport>(
    transport: &mut T,
    coalescer: &Coalescer,
    hib: &Hibernation,
    metrics: &StoreMetrics,
    logger: &Logger,
) {
    let batches = coalescer.drain(|to| hib.stamp(to));
    let n = batches.len() as u64;
    for batch in batches {
        if let Err(e) = transport.send(batch) {
            slog::debug!(logger, "heartbeat batch not sent"; "err" => %e);
        }
    }
    metrics.heartbeat_flushes.fetch_add(1, Ordering::Relaxed);
    metrics
        .heartbeat_batches_sent
        .fetch_add(n, Ordering::Relaxed);
    metrics.beat_batches_sent.fetch_add(n, Ordering::Relaxed);
    metrics.raft_messages_sent.fetch_add(n, Ordering::Relaxed);
    transport.flush();
}

/// Sends a bare liveness beat to every remote store no batch went to in
/// the last heartbeat interval (the store clock calls it every tick, off
/// the pollers: a store whose pollers are busy still beats).
pub fn send_liveness_beats<T: Transport>(
    transport: &mut T,
    hib: &Hibernation,
    metrics: &StoreMetrics,
    store_id: u64,
    interval: std::time::Duration,
) {
    let due = hib.liveness_due(std::time::Instant::now(), interval);
    if due.is_empty() {
        return;
    }
    let n = due.len() as u64;
    for (to, stamp) in due {
        let _ = transport.send(heartbeat::liveness_beat(store_id, hib.epoch(), to, stamp));
    }
    transport.flush();
    metrics
        .liveness_messages_sent
        .fetch_add(n, Ordering::Relaxed);
    metrics
        .heartbeat_batches_sent
        .fetch_add(n, Ordering::Relaxed);
    metrics.raft_messages_sent.fetch_add(n, Ordering::Relaxed);
}

impl<T: Transport> PollHandler<PeerFsm, StoreFsm> for RaftPoller<T> {
    fn begin(&mut self, _batch_size: usize) {
        self.round_start = Some(std::time::Instant::now());
    }

    fn handle_control(
        &mut self,
        store: &mut StoreFsm,
        inbox: &Inbox<'_, StoreFsm>,
    ) -> HandleResult {
        while let Some(msg) = inbox.try_recv() {
            match msg {
                StoreMsg::Tick => {
                    let now = std::time::Instant::now();
                    if store.next_tick_at.is_none_or(|t| now >= t) {
                        store.next_tick_at = Some(now + self.cfg.min_tick_spacing());
                        self.on_store_tick(store, now);
                    } else {
                        self.metrics.ticks_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                StoreMsg::WakeRegions(wakes) => store.pending_wakes.extend(wakes),
                StoreMsg::ContinueWakes => {}
                StoreMsg::RaftMessage(m) => self.on_unknown_region_message(m),
            }
        }
        self.deliver_wakes(store);
        HandleResult::stop_at(0, true)
    }

    fn handle_normal(&mut self, fsm: &mut PeerFsm, inbox: &Inbox<'_, PeerFsm>) -> HandleResult {
        if self.failed {
            fsm.stopped = true;
            return HandleResult::stop_at(0, false);
        }
        let was_asleep = fsm.peer.is_asleep();
        let mut wake_urgent = false;
        let mut handled = 0;
        let mut drained = false;
        while handled < self.cfg.messages_per_round {
            let Some(msg) = inbox.try_recv() else {
                drained = true;
                break;
            };
            handled += 1;
            let hib = &*self.hib;
            // Each message meets clocks that are up to date: the ticks
            // the store made before it ran first (the acting one too, if
            // it is due), as a Tick queued ahead of it would have; none
            // counts as coming after it.
            fsm.peer.on_tick(hib.store_ticks(), &self.cfg, hib);
            let woke = match msg {
                PeerMsg::RaftMessage(m) => fsm.peer.step_raft_message(*m, hib),
                PeerMsg::RaftCommand(c) => {
                    let mut c = *c;
                    if fsm.peer.is_leader()
                        && let Err(e) = fill_split_ids(
                            &mut c.request,
                            fsm.peer.region().peers.len(),
                            self.cfg.split_max_keys,
                            &self.ids,
                        )
                    {
                        c.callback.respond(crate::store::util::err_response(e));
                        continue;
                    }
                    // Only a leader serves commands: a sleeping follower
                    // answers NotLeader (naming the leader it sleeps
                    // under) without waking.
                    let woke = (fsm.peer.is_leader() && fsm.peer.wake(WakeReason::Command, hib))
                        .then_some(WakeReason::Command);
                    fsm.peer.on_command(&self.cfg, hib, c.request, c.callback);
                    woke
                }
                PeerMsg::Tick => {
                    if let Some(slot) = self.ticks_queued.read().get(&fsm.peer.region_id()) {
                        slot.queued.store(false, Ordering::Release);
                    }
                    fsm.peer.on_tick(hib.store_ticks(), &self.cfg, hib);
                    None
                }
                PeerMsg::ApplyRes(res) => {
                    if !self.on_apply_res(fsm, res) {
                        return HandleResult::stop_at(0, false);
                    }
                    None
                }
                PeerMsg::Wake => None,
                PeerMsg::Sleep(m) => fsm.peer.on_sleep_msg(m, hib),
                PeerMsg::Inspect(inspector) => {
                    (inspector.0)(fsm.peer.status());
                    None
                }
                PeerMsg::SnapshotStatus { to_peer, ok } => {
                    fsm.peer.on_snapshot_status(to_peer, ok);
                    None
                }
                PeerMsg::Unreachable { to_peer } => {
                    fsm.peer.on_unreachable(to_peer);
                    None
                }
                PeerMsg::Merge(m) if matches!(*m, MergeMsg::RangeWanted) => fsm
                    .peer
                    .wake(WakeReason::PeerMessage, hib)
                    .then_some(WakeReason::PeerMessage),
                PeerMsg::Merge(m) => {
                    // A target's leader proposes: awake.
                    let woke = (fsm.peer.is_leader() && fsm.peer.wake(WakeReason::Command, hib))
                        .then_some(WakeReason::Command);
                    match *m {
                        MergeMsg::TargetChecked { request, callback } => {
                            fsm.peer
                                .on_merge_target_checked(&self.cfg, hib, *request, callback);
                        }
                        other => fsm.peer.on_merge_msg(other),
                    }
                    woke
                }
            };
            if let Some(reason) = woke {
                // A woken leader's first heartbeats and a follower's wake
                // request go at the end of the round, not an interval
                // later: a follower that missed the sleep is counting down
                // to an election.
                wake_urgent |= fsm.peer.is_leader();
                if let Some(c) = self.metrics.wakes_by_reason.get(reason as usize) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.route_merge_msgs(&mut fsm.peer);
        if fsm.peer.is_removed() {
            self.destroy_peer(fsm);
            return HandleResult::stop_at(0, false);
        }
        if fsm.peer.abandon_merge_due() {
            let region_id = fsm.peer.region_id();
            let _ = self
                .apply_router
                .force_send(region_id, ApplyMsg::AbandonMerge);
        }
        let mut wb = self.wb.take().unwrap_or_else(|| {
            let mut wb = self.engine.write_batch();
            wb.set_origin(WriteOrigin::RaftLog);
            wb
        });
        if let Some(gc) = fsm.peer.take_gc_reply()
            && let Err(e) = self.transport.send(gc)
        {
            slog::debug!(self.logger, "tombstone message not sent"; "err" => %e);
        }
        let mut outbox = self.outbox();
        let collected = fsm
            .peer
            .collect_ready(&mut wb, &mut |p, m| outbox.send(p, m));
        self.wb = Some(wb);
        self.schedule_snapshot(&fsm.peer);
        if let Some(task) = fsm.peer.take_split_check(&self.cfg) {
            let queued = self
                .split_check
                .as_ref()
                .is_some_and(|s| s.send(SnapTask::SplitCheck(Box::new(task))).is_ok());
            if !queued {
                slog::debug!(self.logger, "no worker: split check dropped"; "region" => fsm.peer.region_id());
            }
        }
        // After the raft messages of the round: a follower must see the
        // leader's last heartbeat before the request to sleep, or the
        // heartbeat would wake it again.
        for b in fsm.peer.take_sleep_beats() {
            wake_urgent |= b.beat.wake;
            self.coalescer.push_beat(b.to_store, b.beat, b.response);
        }
        self.urgent_beats |= wake_urgent;
        if fsm.peer.is_asleep() && !was_asleep {
            self.metrics.hibernations.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(slot) = self.ticks_queued.read().get(&fsm.peer.region_id()) {
            slot.due.store(fsm.peer.tick_due(), Ordering::Release);
        }
        let metrics = &*self.metrics;
        match collected {
            Ok((role, need)) => {
                self.need = self.need.max(need);
                match role {
                    Some(true) => metrics.leaders.fetch_add(1, Ordering::Relaxed),
                    Some(false) => metrics.leaders.fetch_sub(1, Ordering::Relaxed),
                    None => 0,
                };
            }
            Err(e) => {
                fsm.stopped = true;
                self.fail(e);
                return HandleResult::stop_at(0, false);
            }
        }
        if drained {
            // Everything queued was handled: progress 0, so a message that
            // arrived while the Ready was collected reschedules the peer
            // (reading `inbox.len()` now would count it as seen and leave
            // the peer idle with it queued).
            HandleResult::stop_at(0, false)
        } else {
            HandleResult::KeepProcessing
        }
    }

    fn end(&mut self, batch: &mut Batch<'_, PeerFsm>) {
        self.end_round(batch);
        if let Some(start) = self.round_start.take() {
            self.metrics.record_round(start.elapsed());
        }
    }
}

impl<T: Transport> RaftPoller<T> {
    /// The end of a round: write, send, hand committed entries to apply.
    fn end_round(&mut self, batch: &mut Batch<'_, PeerFsm>) {
        let need = std::mem::replace(&mut self.need, WriteNeed::Nothing);
        if self.failed {
            // The store is stopping: drop this round's peers (their
            // proposals are answered as in flight) and write nothing.
            for fsm in batch.iter_mut() {
                fsm.stopped = true;
            }
            return;
        }
        // Messages that need no persistence (a leader's appends) go first,
        // in parallel with our own write.
        self.transport.flush();
        if let Some(wb) = self.wb.take()
            && !wb.is_empty()
        {
            let sync = match need {
                WriteNeed::TermOrVote => true,
                WriteNeed::Entries => self.cfg.sync_log,
                WriteNeed::CommitOnly | WriteNeed::Nothing => false,
            };
            let durability = if sync {
                Durability::Sync
            } else {
                Durability::Buffered
            };
            let started = std::time::Instant::now();
            if let Err(e) = self.engine.write(wb, durability) {
                // Nothing of this round is durable: acknowledging any of it
                // would lose data, and the in-memory raft states are ahead
                // of the disk. Stop the store.
                for fsm in batch.iter_mut() {
                    fsm.stopped = true;
                }
                self.fail(Error::Engine(format!("raft log write failed: {e}")));
                return;
            }
            self.metrics.raft_writes.fetch_add(1, Ordering::Relaxed);
            if sync {
                self.metrics
                    .raft_synced_writes
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .raft_sync_write_latency
                    .observe(started.elapsed());
            }
        }
        // Field by field: the routers stay usable while the outbox lives.
        let mut outbox = Outbox::new(
            &mut self.transport,
            self.snap.as_ref(),
            &self.router,
            &self.coalescer,
            &self.metrics,
            &self.logger,
            &mut self.urgent_beats,
        );
        let logger = &self.logger;
        let mut inline = std::mem::take(&mut self.inline);
        for (pos, fsm) in batch.iter_mut().enumerate() {
            let task = fsm.peer.finish_ready(&mut |p, m| outbox.send(p, m));
            // A follower whose sleep waited only for this round's change
            // to be handed over (it took up a sleeping leader after its
            // store restarted) sleeps now, if everything is applied; one
            // waiting for its apply side does at its `ApplyRes`.
            if fsm.peer.retry_deferred_sleep(&self.hib) {
                self.metrics.hibernations.fetch_add(1, Ordering::Relaxed);
            }
            let region_id = fsm.peer.region_id();
            if let Some(slot) = fsm.peer.raft.store().take_snapshot_wanted() {
                schedule_generation(self.snap.as_ref(), region_id, slot, logger);
            }
            // The persisted snapshot goes to apply before the entries
            // after it.
            if let Some(snap) = fsm.peer.take_snapshot_task()
                && self
                    .apply_router
                    .force_send(region_id, ApplyMsg::Snapshot(Box::new(snap)))
                    .is_err()
            {
                slog::warn!(logger, "apply delegate gone"; "region" => region_id);
            }
            let Some(task) = task else {
                wake_if_ready(&self.router, fsm);
                continue;
            };
            // Applied here if the delegate is idle and owes its peer no
            // report: the round's own inline batch, written below.
            let borrowed = if self.cfg.apply_inline {
                borrow_delegate(&self.apply_router, &fsm.peer)
            } else {
                None
            };
            if let Some(mut b) = borrowed {
                self.applier.apply_task(b.fsm_mut(), task);
                inline.push((pos, b));
                // Its readiness is looked at after the apply is reported.
                continue;
            }
            // What `finish_ready` left in the core (messages, a commit
            // that lets more entries apply) is handled in the peer's next
            // round, which this brings about.
            wake_if_ready(&self.router, fsm);
            if self
                .apply_router
                .force_send(region_id, ApplyMsg::Apply(task))
                .is_err()
            {
                slog::warn!(logger, "apply delegate gone"; "region" => region_id);
            }
        }
        // The messages that waited for this round's write, and the beats
        // a ReadIndex round waits on, leave before the inline applies are
        // written.
        self.transport.flush();
        if std::mem::take(&mut self.urgent_beats) {
            // A ReadIndex round waits on these beats: no coalescing delay.
            self.metrics
                .heartbeat_urgent_flushes
                .fetch_add(1, Ordering::Relaxed);
            flush_heartbeats(
                &mut self.transport,
                &self.coalescer,
                &self.hib,
                &self.metrics,
                &self.logger,
            );
        }
        if !inline.is_empty() {
            self.finish_inline(batch, &mut inline);
        }
        self.inline = inline;
    }

    /// Writes this round's inline applies, answers their writers, reports
    /// to each peer and hands every delegate back. A plain report is
    /// handled at once; one with an admin result goes by message, which
    /// the peer's next full round handles. Either way the report is made
    /// before the delegate is handed back: once back, the apply pool may
    /// run it (a merge source's word resumes it) and report a later index,
    /// and a report that arrives after a later one is ignored, its results
    /// with it.
    fn finish_inline(
        &mut self,
        batch: &mut Batch<'_, PeerFsm>,
        inline: &mut Vec<(usize, Borrowed<ApplyFsm>)>,
    ) {
        if let Err(failed) = self.applier.write_round() {
            // The store is stopped (the applier stopped it): the writers
            // hear `ApplyFailed`, and nothing else of the round goes on.
            for (_, mut b) in inline.drain(..) {
                fail_delegate(b.fsm_mut(), failed.reason());
                self.apply_router.give_back(b);
            }
            let cause = Error::Engine(format!("apply write failed: {}", failed.reason()));
            self.applier.after_failure(failed);
            self.fail(cause);
            for fsm in batch.iter_mut() {
                fsm.stopped = true;
            }
            return;
        }
        self.metrics
            .applies_inline
            .fetch_add(inline.len() as u64, Ordering::Relaxed);
        let mut next = inline.drain(..).peekable();
        for (pos, fsm) in batch.iter_mut().enumerate() {
            if next.peek().is_none() {
                break;
            }
            let Some((_, mut b)) = next.next_if(|(p, _)| *p == pos) else {
                continue;
            };
            match self.applier.finish_delegate(b.fsm_mut()) {
                Some(res) if res.results.is_empty() => {
                    let was_asleep = fsm.peer.is_asleep();
                    // A plain report fires no crash point (only a split's
                    // registration does), so the round goes on.
                    let went_on = self.on_apply_res(fsm, res);
                    debug_assert!(went_on, "a plain apply report stopped the store");
                    if fsm.peer.is_asleep() && !was_asleep {
                        self.metrics.hibernations.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(res) => {
                    let region_id = fsm.peer.region_id();
                    if self
                        .router
                        .force_send(region_id, PeerMsg::ApplyRes(res))
                        .is_err()
                    {
                        slog::warn!(self.logger, "peer gone before its apply report"; "region" => region_id);
                    }
                }
                None => {}
            }
            self.apply_router.give_back(b);
            wake_if_ready(&self.router, fsm);
        }
        // Positions match the batch by construction: a delegate left over
        // would be a bug (it goes back to its mailbox as it drops).
        debug_assert!(
            next.peek().is_none(),
            "inline delegates out of step with the batch"
        );
    }

    /// One store tick: ticks the awake peers only, withdraws support from
    /// silent stores (waking the regions asleep under them), and once per
    /// heartbeat interval flushes the coalesced beats with the liveness
    /// beats.
    fn on_store_tick(&mut self, store: &mut StoreFsm, now: std::time::Instant) {
        let tick = self.hib.note_store_tick(now);
        self.hib.awake_regions(&mut store.tick_buf);
        let (mut sent, mut skipped, mut silent) = (0u64, 0u64, 0u64);
        let slots = self.ticks_queued.read();
        for &region in &store.tick_buf {
            let slot = slots.get(&region);
            if slot.is_some_and(|s| s.due.load(Ordering::Acquire) > tick) {
                silent += 1;
                continue;
            }
            if slot.is_some_and(|s| s.queued.swap(true, Ordering::AcqRel)) {
                skipped += 1;
                continue;
            }
            if self.router.force_send(region, PeerMsg::Tick).is_ok() {
                sent += 1;
            } else if let Some(s) = slot {
                s.queued.store(false, Ordering::Release);
            }
        }
        drop(slots);
        self.metrics.peer_ticks.fetch_add(sent, Ordering::Relaxed);
        self.metrics
            .ticks_coalesced
            .fetch_add(skipped, Ordering::Relaxed);
        self.metrics
            .ticks_silent
            .fetch_add(silent, Ordering::Relaxed);
        store.ticks += 1;
        if store.ticks.is_multiple_of(SNAP_GC_TICKS)
            && let Some(snap) = &self.snap
        {
            let _ = snap.send(SnapTask::Gc);
        }
        let (withdrawn, mut woken) = self.hib.expire(now);
        if !withdrawn.is_empty() {
            slog::info!(self.logger, "store liveness withdrew support";
                "stores" => ?withdrawn, "regions_woken" => woken.len());
            self.metrics
                .support_withdrawals
                .fetch_add(withdrawn.len() as u64, Ordering::Relaxed);
            let notes = self.hib.withdrawal_notes(&woken);
            woken.extend(notes);
        }
        store.pending_wakes.extend(woken);
        let (awake, asleep) = self.hib.counts();
        self.metrics
            .awake_peers
            .store(i64::try_from(awake).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.metrics
            .hibernated_peers
            .store(i64::try_from(asleep).unwrap_or(i64::MAX), Ordering::Relaxed);
        if store.ticks.is_multiple_of(self.cfg.heartbeat_ticks as u64) {
            // Once per heartbeat interval: the beats the peers made since
            // the last flush, and the liveness beats.
            flush_heartbeats(
                &mut self.transport,
                &self.coalescer,
                &self.hib,
                &self.metrics,
                &self.logger,
            );
        }
    }

    /// Delivers up to [`WAKES_PER_ROUND`] liveness wakes; asks for another
    /// round if more are left.
    fn deliver_wakes(&mut self, store: &mut StoreFsm) {
        let n = store.pending_wakes.len().min(WAKES_PER_ROUND);
        for (region, msg) in store.pending_wakes.drain(..n) {
            let _ = self.router.force_send(region, PeerMsg::Sleep(msg));
        }
        if !store.pending_wakes.is_empty() {
            let _ = self.router.force_send_control(StoreMsg::ContinueWakes);
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::eraftpb::{Message, MessageType};
    use flotilla_proto::raft_serverpb::{RaftMessage, RegionLocalState};

    use super::PeerFsm;

    /// Bytes a boxed [`PeerFsm`] may take: the jemalloc size class it sits
    /// in (the next one is 1,792). Every peer of a store has one, so
    /// crossing it costs 256 bytes a peer (0.25 KiB of the 5 KiB a
    /// hibernated peer may cost in all, issue #10).
    const PEER_FSM_BUDGET: usize = 1536;

    fn msg(t: MessageType, commit: u64, to: u64, conf_ver: Option<u64>) -> RaftMessage {
        RaftMessage {
            region_id: 1,
            to_peer: Some(flotilla_proto::metapb::Peer {
                id: to,
                store_id: 3,
                ..Default::default()
            }),
            region_epoch: conf_ver.map(|c| flotilla_proto::metapb::RegionEpoch {
                conf_ver: c,
                version: 1,
            }),
            message: Some(Message {
                msg_type: t as i32,
                commit,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// admin.md scenario 8 (`create_peer_only_from_initial_message`): a
    /// vote, a pre-vote or a heartbeat committing nothing may create a
    /// peer; an append or a heartbeat with a commit index (a leader that
    /// thinks the peer has a log) never does.
    #[test]
    fn only_initial_messages_create_peers() {
        let may =
            |t, commit| super::may_create_peer(msg(t, commit, 9, None).message.as_ref().unwrap());
        assert!(may(MessageType::MsgRequestVote, 0));
        assert!(may(MessageType::MsgRequestPreVote, 0));
        assert!(may(MessageType::MsgHeartbeat, 0));
        assert!(!may(MessageType::MsgHeartbeat, 7));
        assert!(!may(MessageType::MsgAppend, 0));
        assert!(!may(MessageType::MsgSnapshot, 0));
    }

    /// admin.md scenario 9's rule: a tombstone (naming the removed peer 9
    /// on store 3, at conf_ver 5) outdates messages to peer 9 and messages
    /// of a membership no newer than its own; a peer of a newer membership
    /// passes whatever its id (found by the chaos suite, seed 8: a learner
    /// re-added with an id from another store's allocator, smaller than
    /// the removed one, was never created).
    #[test]
    fn tombstones_outdate_old_peers_and_memberships() {
        let state = RegionLocalState {
            region: Some(flotilla_proto::metapb::Region {
                id: 1,
                region_epoch: Some(flotilla_proto::metapb::RegionEpoch {
                    conf_ver: 5,
                    version: 1,
                }),
                peers: vec![
                    flotilla_proto::metapb::Peer {
                        id: 4,
                        store_id: 1,
                        ..Default::default()
                    },
                    flotilla_proto::metapb::Peer {
                        id: 9,
                        store_id: 3,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let vote = MessageType::MsgRequestVote;
        // The removed peer itself, whatever the epoch.
        assert!(super::tombstone_outdates(&state, &msg(vote, 0, 9, Some(6))));
        assert!(super::tombstone_outdates(&state, &msg(vote, 0, 9, None)));
        // Another peer under a membership no newer than the removal's.
        assert!(super::tombstone_outdates(
            &state,
            &msg(vote, 0, 12, Some(5))
        ));
        assert!(super::tombstone_outdates(&state, &msg(vote, 0, 8, Some(4))));
        // A newer membership's peer, its id larger or smaller (ids come
        // from per-store allocators and are not ordered by age).
        assert!(!super::tombstone_outdates(
            &state,
            &msg(vote, 0, 12, Some(6))
        ));
        assert!(!super::tombstone_outdates(
            &state,
            &msg(vote, 0, 8, Some(6))
        ));
        assert!(!super::tombstone_outdates(&state, &msg(vote, 0, 12, None)));
    }

    /// Every peer mailbox slot is as large as the largest `PeerMsg`: a
    /// variant that grows it costs every peer (rare, large ones go boxed).
    #[test]
    fn peer_messages_stay_small() {
        const PEER_MSG_BUDGET: usize = 64;
        let size = std::mem::size_of::<super::PeerMsg>();
        assert!(size <= PEER_MSG_BUDGET, "PeerMsg is {size} bytes");
    }

    /// A field added to the peer that pushes the FSM past its allocation
    /// class fails here, not as a drift in `make load`'s RSS figure.
    #[test]
    fn peer_fsm_fits_its_allocation_class() {
        let size = std::mem::size_of::<PeerFsm>();
        assert!(
            size <= PEER_FSM_BUDGET,
            "PeerFsm is {size} bytes, past its {PEER_FSM_BUDGET}-byte class"
        );
    }
}
