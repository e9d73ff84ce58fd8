//! [`Store`]: one store opened on a directory — its engine, its peers on
//! the raft pollers, its apply pollers and its clock.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use flotilla_engine::{Cf, Engine, EngineOptions, keys};
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::RaftCmdRequest;
use flotilla_proto::raft_serverpb::{
    PeerState, RaftLocalState, RaftMessage, RegionLocalState, StoreIdent,
};
use flotilla_router::{BatchSystem, Mailbox, SendError, TrySend};
use rayon::prelude::*;
use slog::Logger;

use super::apply::{ApplyControl, ApplyFsm, ApplyPoller};
use super::config::Config;
use super::error::{Error, Result};
use super::fatal::{FatalHook, StoreStatus};
use super::fsm::{
    PeerFsm, RaftPoller, RaftRouter, StoreFsm, StoreMetrics, TickFlags, TickSlot,
    send_liveness_beats,
};
use super::heartbeat::{self, Coalescer, Fanned};
use super::hibernation::Hibernation;
use super::id_alloc::IdAllocator;
use super::liveness::{self, Heard};
use super::meta::{SharedMeta, StoreMeta};
use super::msg::{
    ApplyMsg, Callback, InspectCallback, Inspector, PeerMsg, RaftCommand, RegionStatus, Responder,
    SnapshotTask, StoreMsg,
};
use super::peer::Peer;
use super::snapshot::{SnapError, SnapManager, SnapWorker};
use super::transport::{MessageSink, Transport};
use super::util::{clear_data_range, err_response, key_in_region, uncovered_parts};

/// Log one dropped raft message in this many (each one is counted).
const DROP_LOG_EVERY: u64 = 1024;

/// A cheap, cloneable way to send commands and raft messages into a
/// running store.
#[derive(Clone)]
pub struct StoreHandle {
    store_id: u64,
    router: RaftRouter,
    status: Arc<StoreStatus>,
    metrics: Arc<StoreMetrics>,
    hib: Arc<Hibernation>,
    snap_mgr: Arc<SnapManager>,
    meta: SharedMeta,
    engine: Engine,
    ids: Arc<IdAllocator>,
    raft_message_capacity: usize,
    logger: Logger,
}

impl StoreHandle {
    /// Region `region_id`'s state on this store as its engine has it
    /// (`None`: none here): e.g. a tombstone saying which region it was
    /// merged into. Reads the engine; touches no peer.
    ///
    /// # Errors
    /// [`Error::StoreStopped`] for a stopped store; engine reads.
    pub fn region_state(&self, region_id: u64) -> Result<Option<RegionLocalState>> {
        if self.is_stopped() {
            return Err(Error::StoreStopped { in_flight: false });
        }
        Ok(self
            .engine
            .get_msg(Cf::Raft, &keys::region_state_key(region_id))?)
    }

    /// The store's id.
    pub fn store_id(&self) -> u64 {
        self.store_id
    }

    /// The store's counters.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// A new peer or region id, never handed out before by this store
    /// (see [`Store::alloc_id`]).
    ///
    /// # Errors
    /// [`Error::StoreStopped`]; the allocator's engine write.
    pub fn alloc_id(&self) -> Result<u64> {
        if self.is_stopped() {
            return Err(Error::StoreStopped { in_flight: false });
        }
        self.ids.alloc()
    }

    /// Every region state this store's engine holds (tombstones
    /// included), in region-id order. Reads the engine; touches no peer.
    ///
    /// # Errors
    /// [`Error::StoreStopped`]; engine reads.
    pub fn region_states(&self) -> Result<Vec<RegionLocalState>> {
        if self.is_stopped() {
            return Err(Error::StoreStopped { in_flight: false });
        }
        region_states(&self.engine)
    }

    /// Whether the store stopped (a fatal error or a shutdown): every
    /// command sent now is answered [`Error::StoreStopped`].
    pub fn is_stopped(&self) -> bool {
        self.status.is_stopped() || self.router.is_shutdown()
    }

    /// Sends a client command to the region named in its header. The
    /// callback is called exactly once, with the response or a typed error
    /// (`RegionNotFound`, `ServerIsBusy` when the mailbox is full,
    /// `StoreStopped` when the store stopped, with `in_flight` if it
    /// stopped after proposing the command, ...). It runs on a store
    /// thread; a panic in it is caught.
    pub fn propose(&self, request: RaftCmdRequest, callback: Callback) {
        let callback = Responder::new(callback);
        if self.is_stopped() {
            callback.respond(err_response(Error::StoreStopped { in_flight: false }));
            return;
        }
        let Some(region_id) = request.header.as_ref().map(|h| h.region_id) else {
            callback.respond(err_response(Error::InvalidRequest("missing header".into())));
            return;
        };
        let cmd = Box::new(RaftCommand { request, callback });
        if let Err(e) = self.router.send(region_id, PeerMsg::RaftCommand(cmd)) {
            let err = self.send_error(region_id, &e.error);
            if let PeerMsg::RaftCommand(cmd) = e.msg {
                cmd.callback.respond(err_response(err));
            }
        }
    }

    /// The status of this store's peer of `region_id` (its region as it
    /// knows it, leader, raft indices, hibernation), as its poller sees it
    /// now. Waits at most `timeout`.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`] if the store has no peer of the region;
    /// [`Error::StoreStopped`]; [`Error::Timeout`].
    pub fn region_status(
        &self,
        region_id: u64,
        timeout: std::time::Duration,
    ) -> Result<RegionStatus> {
        if self.is_stopped() {
            return Err(Error::StoreStopped { in_flight: false });
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let callback: InspectCallback = Box::new(move |s| {
            let _ = tx.send(s);
        });
        if let Err(e) = self
            .router
            .force_send(region_id, PeerMsg::Inspect(Inspector(callback)))
        {
            return Err(self.send_error(region_id, &e.error));
        }
        rx.recv_timeout(timeout).map_err(|e| match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => Error::Timeout,
            std::sync::mpsc::RecvTimeoutError::Disconnected => {
                Error::StoreStopped { in_flight: false }
            }
        })
    }

    /// The region of this store whose range holds `key`, as the store
    /// knows it now (its peer may be a stale member: the region's leader
    /// has the last word), or `None` if no initialized region here holds
    /// it. Waits at most `timeout` for the peer's answer.
    ///
    /// # Errors
    /// As [`StoreHandle::region_status`].
    pub fn locate(&self, key: &[u8], timeout: std::time::Duration) -> Result<Option<Region>> {
        let Some(region_id) = self.meta.lock().locate(key) else {
            return Ok(None);
        };
        let status = match self.region_status(region_id, timeout) {
            Err(Error::RegionNotFound(_)) => return Ok(None),
            other => other?,
        };
        Ok(key_in_region(key, &status.region).then_some(status.region))
    }

    fn send_error(&self, region_id: u64, e: &flotilla_router::Error) -> Error {
        match e {
            flotilla_router::Error::Full { .. } => Error::ServerIsBusy("mailbox full".into()),
            _ if self.is_stopped() => Error::StoreStopped { in_flight: false },
            flotilla_router::Error::NotFound { .. } | flotilla_router::Error::Closed => {
                Error::RegionNotFound(region_id)
            }
            _ => Error::StoreStopped { in_flight: false },
        }
    }

    fn count_dropped(&self, region_id: u64, e: &SendError<PeerMsg>) {
        if matches!(e.error, flotilla_router::Error::Full { .. }) {
            let n = self
                .metrics
                .raft_messages_dropped
                .fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(DROP_LOG_EVERY) {
                slog::warn!(self.logger, "raft message dropped: peer mailbox full";
                    "region" => region_id, "dropped_so_far" => n + 1);
            }
        }
    }
}

impl MessageSink for StoreHandle {
    fn receive_snapshot(
        &self,
        msg: RaftMessage,
        chunks: &mut dyn Iterator<Item = Result<Vec<u8>, SnapError>>,
    ) -> Result<(), SnapError> {
        // Only for a peer this store hosts (its file would be left behind
        // otherwise: nobody would take it).
        if self.is_stopped() || self.router.mailbox(msg.region_id).is_none() {
            self.metrics
                .snapshot_receive_failures
                .fetch_add(1, Ordering::Relaxed);
            return Err(SnapError::RegionNotFound(msg.region_id));
        }
        match self.snap_mgr.receive(msg, chunks) {
            Ok(msg) => {
                self.metrics
                    .snapshots_received
                    .fetch_add(1, Ordering::Relaxed);
                self.deliver_one(Box::new(msg));
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .snapshot_receive_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn deliver(&self, msg: RaftMessage) {
        let Some(sender) = heartbeat::batch_sender(&msg) else {
            self.deliver_one(Box::new(msg));
            return;
        };
        self.metrics
            .heartbeat_batches_received
            .fetch_add(1, Ordering::Relaxed);
        if !self.heard(sender) {
            return;
        }
        for m in heartbeat::fan_out(msg) {
            match m {
                Fanned::Raft(m) => self.deliver_one(m),
                Fanned::Sleep { region_id, msg } => {
                    let r = self.router.try_send_within(
                        region_id,
                        PeerMsg::Sleep(msg),
                        self.raft_message_capacity,
                    );
                    if let TrySend::Rejected(e) = r {
                        self.count_dropped(region_id, &e);
                    }
                }
            }
        }
    }
}

impl StoreHandle {
    /// Store liveness heard a batch of `sender`. Returns false for a batch
    /// to drop whole: one of a past life of its store, or one sent before
    /// its store could know this store withdrew its support (a late
    /// message must not put a region back to sleep under a dead leader).
    fn heard(&self, sender: heartbeat::BatchSender) -> bool {
        // Epoch 0 is never sent: a batch without a liveness stamp could
        // carry acknowledgements no support accounts for.
        if sender.epoch == 0 {
            self.metrics
                .stale_batches_dropped
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.metrics
            .liveness_beats_received
            .fetch_add(1, Ordering::Relaxed);
        let heard = self.hib.heard(
            sender.store,
            sender.epoch,
            (sender.withdrawals, sender.echo),
            std::time::Instant::now(),
        );
        if heard.withdrew {
            slog::info!(self.logger, "store liveness withdrew support";
                "store" => sender.store, "epoch" => sender.epoch,
                "regions_woken" => heard.woken.len());
            self.metrics
                .support_withdrawals
                .fetch_add(1, Ordering::Relaxed);
        }
        let mut wakes = heard.woken;
        if heard.withdrew {
            let notes = self.hib.withdrawal_notes(&wakes);
            wakes.extend(notes);
        }
        wakes.extend(heard.notes);
        if !wakes.is_empty() {
            let _ = self.router.force_send_control(StoreMsg::WakeRegions(wakes));
        }
        match heard.heard {
            Heard::Stale | Heard::Unproven => {
                self.metrics
                    .stale_batches_dropped
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
            Heard::Started | Heard::Continued | Heard::Restarted => true,
        }
    }

    fn deliver_one(&self, msg: Box<RaftMessage>) {
        let region_id = msg.region_id;
        // Raft messages have a budget of their own past the capacity that
        // bounds client commands, so clients cannot starve a group.
        match self.router.try_send_within(
            region_id,
            PeerMsg::RaftMessage(msg),
            self.raft_message_capacity,
        ) {
            TrySend::Sent => {}
            TrySend::Rejected(e) => self.count_dropped(region_id, &e),
            TrySend::Unknown(PeerMsg::RaftMessage(m)) => {
                let _ = self.router.send_control(StoreMsg::RaftMessage(m));
            }
            TrySend::Unknown(_) => {}
        }
    }
}

/// A running store.
pub struct Store {
    store_id: u64,
    engine: Engine,
    router: RaftRouter,
    raft_system: BatchSystem<PeerFsm, StoreFsm>,
    apply_system: BatchSystem<ApplyFsm, ApplyControl>,
    clock: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// The store's regions by range.
    meta: SharedMeta,
    metrics: Arc<StoreMetrics>,
    status: Arc<StoreStatus>,
    hib: Arc<Hibernation>,
    ids: Arc<IdAllocator>,
    snap_mgr: Arc<SnapManager>,
    snap_worker: SnapWorker,
    /// Measures regions for the split checker.
    split_worker: SnapWorker,
    raft_message_capacity: usize,
    logger: Logger,
}

impl Store {
    /// Opens the bootstrapped store at `path` and starts it: every region's
    /// peer is rebuilt from RocksDB (in parallel), re-applies from
    /// `applied_index + 1`, and joins the pollers.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid config or an unbootstrapped
    /// directory; [`Error::Engine`] for storage failures.
    pub fn open<T: Transport>(
        path: impl AsRef<Path>,
        cfg: Config,
        transport: T,
        logger: &Logger,
    ) -> Result<Store> {
        cfg.validate()?;
        let engine = Engine::open(path, &EngineOptions::default())?;
        Self::start(engine, cfg, transport, logger)
    }

    /// Starts a store on an already open engine.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn start<T: Transport>(
        engine: Engine,
        cfg: Config,
        transport: T,
        logger: &Logger,
    ) -> Result<Store> {
        Self::start_with_hook(engine, cfg, transport, logger, None)
    }

    /// [`Store::start`], with `on_fatal` called once if the store stops on
    /// a fatal error (a failed engine write on the raft or apply path; see
    /// [`Store::fatal_error`]). The store does not abort the process: the
    /// hook may.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn start_with_hook<T: Transport>(
        engine: Engine,
        cfg: Config,
        transport: T,
        logger: &Logger,
        on_fatal: Option<FatalHook>,
    ) -> Result<Store> {
        cfg.validate()?;
        let ident: StoreIdent = engine
            .get_msg(Cf::Raft, keys::STORE_IDENT_KEY)?
            .ok_or_else(|| Error::Config("store is not bootstrapped".into()))?;
        let store_id = ident.store_id;
        let ids = Arc::new(IdAllocator::open(engine.clone(), store_id)?);
        let logger = logger.new(slog::o!("store" => store_id));
        let regions = load_regions(&engine)?;
        // Before the store sends anything: its peers must tell this life
        // from the last one.
        let epoch = liveness::bump_epoch(&engine)?;
        let hib = Arc::new(Hibernation::new(
            store_id,
            epoch,
            regions.iter().map(|r| r.id),
            regions
                .iter()
                .flat_map(|r| r.peers.iter().map(|p| p.store_id))
                .collect::<fxhash::FxHashSet<u64>>(),
            cfg.support_duration(),
        ));
        let cfg = Arc::new(cfg);
        let meta = StoreMeta::new().shared();
        let region_count = regions.len();
        let peers: Vec<Peer> = regions
            .into_par_iter()
            .map(|region| {
                let peer_id = region
                    .peers
                    .iter()
                    .find(|p| p.store_id == store_id)
                    .map(|p| p.id)
                    .ok_or_else(|| {
                        Error::Config(format!("region {} has no peer here", region.id))
                    })?;
                Peer::new(&cfg, engine.clone(), region, peer_id, &meta, &logger)
            })
            .collect::<Result<_>>()?;
        let mut peers = peers
            .into_iter()
            .map(|peer| reset_if_snapshot_lost(peer, &cfg, &engine, &meta, &logger))
            .collect::<Result<Vec<_>>>()?;
        // The ranges the peers hold; a snapshot being applied that moves
        // its region's bounds holds the old range too until it is redone.
        let mut old_ranges: fxhash::FxHashMap<u64, Region> = fxhash::FxHashMap::default();
        {
            let mut index = meta.lock();
            for peer in peers.iter_mut().filter(|p| p.raft.store().is_initialized()) {
                let mut held = vec![peer.region().clone()];
                if peer.raft.store().applying_snapshot().is_some()
                    && let Some(old) = engine
                        .get_msg::<RegionLocalState>(
                            Cf::Raft,
                            &keys::region_state_key(peer.region_id()),
                        )?
                        .and_then(|s| s.applying_old_range)
                {
                    let region = peer.region().clone();
                    held = peer.restore_reservation(&region, &old);
                    old_ranges.insert(peer.region_id(), old);
                }
                for range in &held {
                    index.set(None, range).map_err(|other| {
                        Error::Engine(format!(
                            "regions {} and {other} overlap on disk",
                            peer.region_id()
                        ))
                    })?;
                }
            }
        }

        let router_cfg = |pool_size| flotilla_router::Config {
            pool_size,
            max_batch_size: cfg.max_batch_size,
            ..Default::default()
        };
        let router_err = |e: flotilla_router::Error| Error::Config(format!("batch system: {e}"));
        let store_fsm = Box::<StoreFsm>::default();
        let (router, mut raft_system) =
            BatchSystem::new(&router_cfg(cfg.raft_pool_size), Mailbox::new(store_fsm))
                .map_err(router_err)?;
        let (apply_router, mut apply_system) = BatchSystem::new(
            &router_cfg(cfg.apply_pool_size),
            Mailbox::new(Box::new(ApplyControl)),
        )
        .map_err(router_err)?;
        let capacity = NonZeroUsize::new(cfg.mailbox_capacity).unwrap_or(NonZeroUsize::MIN);
        let mut apply_boxes = Vec::with_capacity(peers.len());
        let mut peer_boxes = Vec::with_capacity(peers.len());
        let mut applying = Vec::new();
        let ticks_queued: TickFlags = Arc::new(parking_lot::RwLock::new(
            peers
                .iter()
                .map(|p| (p.region_id(), TickSlot::default()))
                .collect(),
        ));
        for peer in peers {
            let id = peer.region_id();
            if let Some(snap) = peer.raft.store().applying_snapshot() {
                applying.push((peer.region().clone(), snap));
            }
            let apply_state = *peer.raft.store().apply_state();
            apply_boxes.push((
                id,
                Mailbox::new(Box::new(
                    ApplyFsm::new(peer.region().clone(), peer.meta, apply_state)
                        .with_merge_state(peer.raft.store().merge_state().cloned()),
                )),
            ));
            peer_boxes.push((id, Mailbox::bounded(Box::new(PeerFsm::new(peer)), capacity)));
        }
        apply_router.register_all(apply_boxes).map_err(router_err)?;
        router.register_all(peer_boxes).map_err(router_err)?;

        // Snapshots being applied when the store stopped are written
        // again, before any entry after them; every other snapshot file
        // is left over from the last life.
        let snap_mgr = Arc::new(
            SnapManager::for_engine(&engine, cfg.snap_max_receiving)
                .map_err(|e| Error::Engine(format!("snapshot directory: {e}")))?,
        );
        let applying: Vec<SnapshotTask> = applying
            .into_iter()
            .map(|(region, (index, term))| SnapshotTask {
                path: snap_mgr.recv_path(region.id, term, index),
                old: old_ranges.remove(&region.id),
                region,
                index,
                term,
            })
            .collect();
        let keep: Vec<_> = applying.iter().map(|t| t.path.clone()).collect();
        let removed = snap_mgr.remove_all_but(&keep);
        if removed > 0 {
            slog::info!(logger, "stale snapshot files removed"; "files" => removed);
        }
        for task in applying {
            let id = task.region.id;
            apply_router
                .force_send(id, ApplyMsg::Snapshot(Box::new(task)))
                .map_err(|_| Error::Config(format!("region {id}: no apply delegate")))?;
        }

        let metrics = Arc::new(StoreMetrics::default());
        let clock_transport = transport.clone();
        let worker = |role: &str| {
            SnapWorker::start(
                store_id,
                role,
                engine.clone(),
                snap_mgr.clone(),
                transport.clone(),
                router.clone(),
                metrics.clone(),
                logger.clone(),
            )
            .map_err(|e| Error::Config(format!("spawn {role} worker: {e}")))
        };
        let snap_worker = worker("snap")?;
        let split_worker = worker("split-check")?;
        let snap_sched = snap_worker.scheduler();
        let split_sched = split_worker.scheduler();
        let status = Arc::new(StoreStatus::new(on_fatal));
        status.set_routers(router.clone(), apply_router.clone());
        {
            let (engine, router, meta, status, logger) = (
                engine.clone(),
                router.clone(),
                meta.clone(),
                status.clone(),
                logger.clone(),
            );
            let apply_metrics = metrics.clone();
            apply_system
                .spawn("apply", move |_| {
                    ApplyPoller::new(
                        engine.clone(),
                        router.clone(),
                        meta.clone(),
                        status.clone(),
                        logger.clone(),
                    )
                    .with_metrics(apply_metrics.clone())
                })
                .map_err(router_err)?;
        }
        {
            let (engine, router, apply_router, metrics, status, hib, logger) = (
                engine.clone(),
                router.clone(),
                apply_router.clone(),
                metrics.clone(),
                status.clone(),
                hib.clone(),
                logger.clone(),
            );
            let coalescer = Arc::new(Coalescer::new(store_id, epoch));
            let cfg = cfg.clone();
            let meta = meta.clone();
            let ids = ids.clone();
            raft_system
                .spawn("raft", move |_| {
                    RaftPoller::new(
                        cfg.clone(),
                        engine.clone(),
                        router.clone(),
                        apply_router.clone(),
                        transport.clone(),
                        store_id,
                        metrics.clone(),
                        status.clone(),
                        coalescer.clone(),
                        hib.clone(),
                        ticks_queued.clone(),
                        snap_sched.clone(),
                        split_sched.clone(),
                        meta.clone(),
                        ids.clone(),
                        logger.clone(),
                    )
                })
                .map_err(router_err)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clock = {
            let (stop, router, tick) = (stop.clone(), router.clone(), cfg.base_tick());
            let (hib, metrics, mut transport) = (hib.clone(), metrics.clone(), clock_transport);
            let support = cfg.support_duration();
            let liveness_interval = cfg.liveness_beat_interval();
            std::thread::Builder::new()
                .name(format!("store-{store_id}-clock"))
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(tick);
                        if router.send_control(StoreMsg::Tick).is_err() {
                            break;
                        }
                        // Liveness off the pollers: a store whose pollers
                        // are busy still beats; one whose pollers handled
                        // no tick for a support duration (wedged) does
                        // not, so its support lapses and the regions
                        // asleep under its leaders wake.
                        if hib.store_ticked_within(std::time::Instant::now(), support) {
                            send_liveness_beats(
                                &mut transport,
                                &hib,
                                &metrics,
                                store_id,
                                liveness_interval,
                            );
                        }
                    }
                })
                .map_err(|e| Error::Config(format!("spawn clock: {e}")))?
        };
        slog::info!(logger, "store started"; "regions" => region_count);
        Ok(Store {
            store_id,
            engine,
            router,
            raft_system,
            apply_system,
            clock: Some(clock),
            stop,
            meta,
            metrics,
            status,
            hib,
            ids,
            snap_mgr,
            snap_worker,
            split_worker,
            raft_message_capacity: cfg.raft_message_capacity,
            logger,
        })
    }

    /// A new region or peer id, unique cluster-wide (see [`IdAllocator`]).
    ///
    /// # Errors
    /// As [`IdAllocator::alloc`].
    pub fn alloc_id(&self) -> Result<u64> {
        self.ids.alloc()
    }

    /// The store's id.
    pub fn store_id(&self) -> u64 {
        self.store_id
    }

    /// The store's engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A handle to send commands and messages into the store.
    pub fn handle(&self) -> StoreHandle {
        StoreHandle {
            store_id: self.store_id,
            router: self.router.clone(),
            status: self.status.clone(),
            metrics: self.metrics.clone(),
            hib: self.hib.clone(),
            snap_mgr: self.snap_mgr.clone(),
            meta: self.meta.clone(),
            engine: self.engine.clone(),
            ids: self.ids.clone(),
            raft_message_capacity: self.raft_message_capacity,
            logger: self.logger.clone(),
        }
    }

    /// The fatal error that stopped the store, if one did. A stopped store
    /// answers every command [`Error::StoreStopped`]; drop it and open it
    /// again from disk to recover (nothing it acknowledged is lost).
    pub fn fatal_error(&self) -> Option<Error> {
        self.status.fatal_error().cloned()
    }

    /// How many initialized regions the store hosts now.
    pub fn region_count(&self) -> usize {
        self.meta.lock().len()
    }

    /// The region whose range holds `key` (see [`StoreHandle::locate`]).
    ///
    /// # Errors
    /// As [`StoreHandle::locate`].
    pub fn locate(&self, key: &[u8], timeout: std::time::Duration) -> Result<Option<Region>> {
        self.handle().locate(key, timeout)
    }

    /// The store's counters.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Whether the peer of `region_id` hibernates now.
    pub fn is_hibernating(&self, region_id: u64) -> bool {
        self.hib.is_asleep(region_id)
    }

    /// The regions whose peer here hibernates under a leader on store
    /// `leader_store` (this store's own id: the regions it leads asleep),
    /// sorted.
    pub fn hibernating_under(&self, leader_store: u64) -> Vec<u64> {
        self.hib.asleep_under(leader_store)
    }

    /// This store's liveness epoch: it grows every time the store starts.
    pub fn liveness_epoch(&self) -> u64 {
        self.hib.epoch()
    }

    /// Stops the clock and every poller, dropping all peers. Pending
    /// callbacks are dropped unanswered (their clients time out).
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.status.mark_stopped();
        self.stop.store(true, Ordering::Release);
        if let Some(clock) = self.clock.take() {
            let _ = clock.join();
        }
        let _ = self.raft_system.shutdown();
        let _ = self.apply_system.shutdown();
        self.snap_worker.stop();
        self.split_worker.stop();
        // Every peer is dropped: none leads here any more.
        self.metrics.leaders.store(0, Ordering::Relaxed);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A peer whose snapshot was being written into the engine when the store
/// stopped, and whose file is gone (deleted by hand, lost with the disk):
/// it cannot finish, and its data range is half written. It starts again
/// uninitialized, keeping its term and vote (it must never vote twice in
/// a term): its region state, apply state and data go, and its leader's
/// next snapshot initializes it. Any other peer is returned as it is.
fn reset_if_snapshot_lost(
    peer: Peer,
    cfg: &Config,
    engine: &Engine,
    store_meta: &SharedMeta,
    logger: &Logger,
) -> Result<Peer> {
    let Some((index, term)) = peer.raft.store().applying_snapshot() else {
        return Ok(peer);
    };
    let region = peer.region().clone();
    let file =
        super::snapshot::recv_path(&super::snapshot::snap_dir(engine), region.id, term, index);
    if file.exists() {
        return Ok(peer);
    }
    slog::warn!(logger, "snapshot file lost: the peer starts again uninitialized";
        "region" => region.id, "index" => index, "file" => %file.display());
    let hs = peer
        .raft
        .store()
        .raft_state()
        .hard_state
        .unwrap_or_default();
    let mut wb = engine.write_batch();
    wb.delete(Cf::Raft, &keys::region_state_key(region.id));
    wb.delete(Cf::Raft, &keys::apply_state_key(region.id));
    wb.delete(Cf::Raft, &keys::apply_origin_key(region.id));
    let (lo, hi) = keys::raft_log_range(region.id, 0, index + 1);
    wb.delete_range(Cf::Raft, &lo, &hi)?;
    super::removed::clear(&mut wb, region.id);
    wb.put_msg(
        Cf::Raft,
        &keys::raft_state_key(region.id),
        &RaftLocalState {
            hard_state: Some(flotilla_proto::eraftpb::HardState {
                term: hs.term,
                vote: hs.vote,
                commit: 0,
            }),
            last_index: 0,
        },
    );
    // The snapshot's range, and the one the peer held before if the
    // snapshot moved its bounds: nobody else holds either.
    let old = engine
        .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(region.id))?
        .and_then(|s| s.applying_old_range);
    for r in std::iter::once(&region).chain(old.as_ref()) {
        clear_data_range(&mut wb, r)?;
    }
    engine.write(wb, flotilla_engine::Durability::Sync)?;
    let peer_meta = peer.meta;
    drop(peer);
    Peer::uninitialized(
        cfg,
        engine.clone(),
        region.id,
        peer_meta,
        region.region_epoch.map_or(0, |e| e.conf_ver),
        store_meta,
        logger,
    )
}

/// Every region state on a store's engine, tombstones and regions being
/// applied included, in region key order: what a stopped store's
/// directory holds (offline inspection, `flotilla ctl`).
///
/// # Errors
/// Engine read or decode failures.
pub fn region_states(engine: &Engine) -> Result<Vec<RegionLocalState>> {
    let snap = engine.snapshot();
    let (start, end) = keys::REGION_META_RANGE;
    let mut out = Vec::new();
    for item in snap.iter(Cf::Raft, start, end) {
        let (key, value) = item?;
        keys::decode_region_state_key(&key).map_err(|e| Error::Engine(e.to_string()))?;
        out.push(
            <RegionLocalState as prost::Message>::decode(value.as_slice())
                .map_err(|e| Error::Engine(format!("region state: {e}")))?,
        );
    }
    Ok(out)
}

/// Every live region's state on this engine (tombstones skipped). A
/// tombstone whose peer was not cleared yet (the store stopped between
/// the conf change that removed it and its destruction) is cleared now.
fn load_regions(engine: &Engine) -> Result<Vec<Region>> {
    let snap = engine.snapshot();
    let (tombstones, live): (Vec<RegionLocalState>, Vec<RegionLocalState>) = region_states(engine)?
        .into_iter()
        .partition(|s| s.state() == PeerState::Tombstone);
    let regions: Vec<Region> = live.into_iter().filter_map(|s| s.region).collect();
    let mut leftovers = engine.write_batch();
    for state in tombstones {
        if let Some(region) = &state.region {
            // A merged region's keys are its target's.
            let owns_data = state.merge_state.is_none();
            clear_tombstoned(&snap, region, owns_data, &regions, &mut leftovers)?;
        }
    }
    if !leftovers.is_empty() {
        engine.write(leftovers, flotilla_engine::Durability::Sync)?;
    }
    Ok(regions)
}

/// Puts the deletion of what a tombstoned region's peer left (its log,
/// raft and apply states, its data) into `wb`, if it left anything. Of its
/// data, only keys no `live` region holds go: since the peer was
/// destroyed, its range may have been split, and a part given to another
/// region here (whose new peer of the tombstoned region, uninitialized,
/// wrote the raft state found here).
fn clear_tombstoned(
    snap: &flotilla_engine::Snapshot,
    region: &Region,
    owns_data: bool,
    live: &[Region],
    wb: &mut flotilla_engine::WriteBatch,
) -> Result<()> {
    let Some(raft) = snap.get_msg::<RaftLocalState>(Cf::Raft, &keys::raft_state_key(region.id))?
    else {
        return Ok(());
    };
    // The removed peer had applied something (it was initialized): its
    // apply state is there until its destruction. A raft state without
    // one is a newer, uninitialized peer's of the region, which keeps its
    // term and vote (losing them, it could vote twice in a term).
    if snap
        .get(Cf::Raft, &keys::apply_state_key(region.id))?
        .is_none()
    {
        return Ok(());
    }
    let (lo, hi) = keys::raft_log_range(region.id, 0, raft.last_index + 1);
    wb.delete_range(Cf::Raft, &lo, &hi)?;
    super::removed::clear(wb, region.id);
    wb.delete(Cf::Raft, &keys::raft_state_key(region.id));
    wb.delete(Cf::Raft, &keys::apply_state_key(region.id));
    if owns_data {
        wb.delete(Cf::Raft, &keys::apply_origin_key(region.id));
    }
    // An uninitialized peer's tombstone has no range and a `version` of 0
    // (at most the conf_ver it was created under): it owned no data.
    if owns_data && region.region_epoch.is_some_and(|e| e.version > 0) {
        for part in uncovered_parts(region, live) {
            clear_data_range(wb, &part)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use flotilla_engine::{Durability, EngineOptions};

    use super::*;
    use crate::store::bootstrap::{bootstrap_store, initial_regions};
    use crate::store::transport::ChannelTransport;

    /// A store that stopped after a conf change removed its peer (the
    /// region's tombstone written) but before the peer was cleared opens
    /// without the region, and with its log, states and data gone.
    #[test]
    fn a_tombstoned_region_left_uncleared_is_cleared_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let region = initial_regions(&[1, 2, 3], 1).unwrap().remove(0);
        {
            let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
            bootstrap_store(&engine, 1, 1, std::slice::from_ref(&region)).unwrap();
            let mut wb = engine.write_batch();
            wb.put(Cf::Default, &keys::data_key(b"k"), b"v");
            for i in 6..=7 {
                wb.put(Cf::Raft, &keys::raft_log_key(region.id, i), b"entry");
            }
            let raft = RaftLocalState {
                hard_state: None,
                last_index: 7,
            };
            wb.put_msg(Cf::Raft, &keys::raft_state_key(region.id), &raft);
            let state = RegionLocalState {
                state: PeerState::Tombstone as i32,
                region: Some(region.clone()),
                merge_state: None,
                applying_snapshot: None,
                applying_old_range: None,
            };
            wb.put_msg(Cf::Raft, &keys::region_state_key(region.id), &state);
            engine.write(wb, Durability::Sync).unwrap();
        }
        let logger = Logger::root(slog::Discard, slog::o!());
        let store = Store::open(
            dir.path(),
            Config::default(),
            ChannelTransport::new(),
            &logger,
        )
        .unwrap();
        assert_eq!(store.region_count(), 0, "a tombstoned region was loaded");
        let engine = store.engine();
        for key in [
            keys::raft_state_key(region.id).to_vec(),
            keys::apply_state_key(region.id).to_vec(),
            keys::raft_log_key(region.id, 6).to_vec(),
            keys::raft_log_key(region.id, 7).to_vec(),
        ] {
            assert!(
                engine.get(Cf::Raft, &key).unwrap().is_none(),
                "{key:?} left"
            );
        }
        assert!(
            engine
                .get(Cf::Default, &keys::data_key(b"k"))
                .unwrap()
                .is_none()
        );
        assert!(
            engine
                .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(region.id))
                .unwrap()
                .is_some_and(|s| s.state() == PeerState::Tombstone),
            "the tombstone itself must stay"
        );
        store.shutdown();
    }

    /// Found by the chaos suite with merges (seed 7): a store's peer of a
    /// region is removed; the region splits elsewhere and this store gets
    /// a peer of the new region (with its keys); a raft state of the old
    /// region is found beside its tombstone at open. Either it is the
    /// removed peer's leftover (a crash before its destruction: it has an
    /// apply state), and the tombstone's keys go except those a live
    /// region holds; or it is a newer, uninitialized peer's (no apply
    /// state), which keeps its term and vote, and nothing is cleared.
    #[test]
    fn clearing_a_tombstone_at_open_spares_live_regions_and_newer_peers() {
        for leftover_of_removed_peer in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut regions = initial_regions(&[1, 2, 3], 2).unwrap();
            let split_off = regions.pop().unwrap();
            let old = regions.pop().unwrap();
            let mut wide = old.clone();
            wide.end_key = split_off.end_key.clone();
            let (in_old, in_split) = (b"\x00a".to_vec(), split_off.start_key.to_vec());
            let hs = flotilla_proto::eraftpb::HardState {
                term: 9,
                vote: 4,
                commit: 0,
            };
            {
                let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
                bootstrap_store(&engine, 1, 1, std::slice::from_ref(&split_off)).unwrap();
                let mut wb = engine.write_batch();
                wb.put(Cf::Default, &keys::data_key(&in_old), b"old");
                wb.put(Cf::Default, &keys::data_key(&in_split), b"kept");
                let raft = RaftLocalState {
                    hard_state: Some(hs),
                    last_index: 0,
                };
                wb.put_msg(Cf::Raft, &keys::raft_state_key(wide.id), &raft);
                if leftover_of_removed_peer {
                    let apply = flotilla_proto::raft_serverpb::RaftApplyState::default();
                    wb.put_msg(Cf::Raft, &keys::apply_state_key(wide.id), &apply);
                }
                let state = RegionLocalState {
                    state: PeerState::Tombstone as i32,
                    region: Some(wide.clone()),
                    ..Default::default()
                };
                wb.put_msg(Cf::Raft, &keys::region_state_key(wide.id), &state);
                engine.write(wb, Durability::Sync).unwrap();
            }
            let logger = Logger::root(slog::Discard, slog::o!());
            let store = Store::open(
                dir.path(),
                Config::default(),
                ChannelTransport::new(),
                &logger,
            )
            .unwrap();
            assert_eq!(store.region_count(), 1);
            let engine = store.engine();
            let get = |k: &[u8]| engine.get(Cf::Default, &keys::data_key(k)).unwrap();
            assert_eq!(get(&in_split).as_deref(), Some(&b"kept"[..]));
            let raft: Option<RaftLocalState> = engine
                .get_msg(Cf::Raft, &keys::raft_state_key(wide.id))
                .unwrap();
            if leftover_of_removed_peer {
                assert_eq!(get(&in_old), None, "the tombstone's own keys go");
                assert_eq!(raft, None);
            } else {
                assert_eq!(get(&in_old).as_deref(), Some(&b"old"[..]));
                assert_eq!(
                    raft.and_then(|r| r.hard_state),
                    Some(hs),
                    "a newer peer's term and vote"
                );
            }
            store.shutdown();
        }
    }
}
