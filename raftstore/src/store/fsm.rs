//! The raft side of the batch system: [`PeerFsm`] per region, the
//! [`StoreFsm`] control FSM, and [`RaftPoller`], whose round ends in one
//! write and one sync for every peer it handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use flotilla_engine::{Durability, Engine, WriteBatch};
use flotilla_proto::eraftpb::Message;
use flotilla_proto::raft_serverpb::RaftMessage;
use flotilla_router::{Batch, Fsm, HandleResult, Inbox, PollHandler, Router};
use slog::Logger;

use super::apply::{ApplyControl, ApplyFsm};
use super::config::Config;
use super::msg::{ApplyMsg, PeerMsg, StoreMsg};
use super::peer::Peer;
use super::transport::Transport;

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
/// regions the store does not know.
pub struct StoreFsm {
    /// Raft messages dropped because their region is unknown here.
    pub dropped_unknown: u64,
}

impl Fsm for StoreFsm {
    type Message = StoreMsg;

    fn is_stopped(&self) -> bool {
        false
    }
}

/// Counters shared by a store's pollers.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Raft messages handed to the transport.
    pub raft_messages_sent: AtomicU64,
    /// Heartbeats and heartbeat responses among them.
    pub heartbeats_sent: AtomicU64,
    /// Poll rounds that wrote raft state.
    pub raft_writes: AtomicU64,
    /// Peers of this store that are leaders now.
    pub leaders: AtomicI64,
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
    wb: Option<WriteBatch>,
    store_id: u64,
    metrics: Arc<StoreMetrics>,
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
        logger: Logger,
    ) -> Self {
        RaftPoller {
            cfg,
            engine,
            router,
            apply_router,
            transport,
            wb: None,
            store_id,
            metrics,
            logger,
        }
    }
}

/// The one store-level place raft messages leave through: wraps `m` for its
/// destination peer and hands it to the transport (the heartbeat coalescer
/// will sit here).
fn send_raft_message<T: Transport>(
    transport: &mut T,
    metrics: &StoreMetrics,
    logger: &Logger,
    peer: &Peer,
    m: Message,
) {
    let region = peer.region();
    let Some(to_peer) = region.peers.iter().find(|p| p.id == m.to).copied() else {
        slog::debug!(logger, "message to unknown peer"; "to" => m.to);
        return;
    };
    if Peer::is_heartbeat(m.msg_type()) {
        metrics.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
    }
    let msg = RaftMessage {
        region_id: region.id,
        from_peer: Some(peer.meta),
        to_peer: Some(to_peer),
        message: Some(m),
        region_epoch: region.region_epoch,
        is_tombstone: false,
        start_key: region.start_key.clone(),
        end_key: region.end_key.clone(),
    };
    metrics.raft_messages_sent.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = transport.send(msg) {
        slog::debug!(logger, "send failed"; "err" => %e);
    }
}

impl<T: Transport> PollHandler<PeerFsm, StoreFsm> for RaftPoller<T> {
    fn begin(&mut self, _batch_size: usize) {}

    fn handle_control(
        &mut self,
        store: &mut StoreFsm,
        inbox: &Inbox<'_, StoreFsm>,
    ) -> HandleResult {
        while let Some(msg) = inbox.try_recv() {
            match msg {
                StoreMsg::Tick => self.router.broadcast_normal(|| PeerMsg::Tick),
                StoreMsg::RaftMessage(m) => {
                    // Creating peers from messages (after split or conf
                    // change) is not supported yet.
                    store.dropped_unknown += 1;
                    slog::debug!(self.logger, "message for unknown region"; "region" => m.region_id);
                }
            }
        }
        HandleResult::stop_at(0, true)
    }

    fn handle_normal(&mut self, fsm: &mut PeerFsm, inbox: &Inbox<'_, PeerFsm>) -> HandleResult {
        let mut handled = 0;
        while handled < self.cfg.messages_per_round {
            let Some(msg) = inbox.try_recv() else { break };
            handled += 1;
            match msg {
                PeerMsg::RaftMessage(m) => fsm.peer.on_raft_message(*m),
                PeerMsg::RaftCommand(c) => {
                    let c = *c;
                    fsm.peer.on_command(&self.cfg, c.request, c.callback)
                }
                PeerMsg::Tick => fsm.peer.tick(),
                PeerMsg::ApplyRes(res) => fsm.peer.on_apply_res(res),
                PeerMsg::Wake => {}
            }
        }
        let wb = self.wb.get_or_insert_with(|| self.engine.write_batch());
        let (transport, metrics, logger) = (&mut self.transport, &*self.metrics, &self.logger);
        let role = fsm.peer.collect_ready(wb, &mut |p, m| {
            send_raft_message(transport, metrics, logger, p, m)
        });
        match role {
            Some(true) => metrics.leaders.fetch_add(1, Ordering::Relaxed),
            Some(false) => metrics.leaders.fetch_sub(1, Ordering::Relaxed),
            None => 0,
        };
        if handled == self.cfg.messages_per_round {
            HandleResult::KeepProcessing
        } else {
            HandleResult::stop_at(inbox.len(), false)
        }
    }

    fn end(&mut self, batch: &mut Batch<'_, PeerFsm>) {
        // Messages that need no persistence (a leader's appends) go first,
        // in parallel with our own write.
        self.transport.flush();
        if let Some(wb) = self.wb.take()
            && !wb.is_empty()
        {
            let durability = if self.cfg.sync_log {
                Durability::Sync
            } else {
                Durability::Buffered
            };
            if let Err(e) = self.engine.write(wb, durability) {
                // Nothing of this round is durable: acknowledging it
                // would lose data. Stop the process rather than lie.
                slog::crit!(self.logger, "raft log write failed"; "err" => %e, "store" => self.store_id);
                panic!("store {}: raft log write failed: {e}", self.store_id);
            }
            self.metrics.raft_writes.fetch_add(1, Ordering::Relaxed);
        }
        let (transport, metrics, logger) = (&mut self.transport, &*self.metrics, &self.logger);
        for fsm in batch.iter_mut() {
            let task = fsm
                .peer
                .finish_ready(&mut |p, m| send_raft_message(transport, metrics, logger, p, m));
            let region_id = fsm.peer.region_id();
            if fsm.peer.raft.has_ready() {
                let _ = self.router.force_send(region_id, PeerMsg::Wake);
            }
            if let Some(task) = task
                && self
                    .apply_router
                    .force_send(region_id, ApplyMsg::Apply(task))
                    .is_err()
            {
                slog::warn!(logger, "apply delegate gone"; "region" => region_id);
            }
        }
        transport.flush();
    }
}
