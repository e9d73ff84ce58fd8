//! The sending side: [`GrpcTransport`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_proto::raft_serverpb::RaftMessage;
use flotilla_raftstore::store::{SnapError, Transport, TransportError};
use fxhash::{FxHashMap, FxHashSet};
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::address::AddressBook;
use crate::config::NetConfig;
use crate::metrics::{TransportMetrics, add};
use crate::pb::raft_transport_client::RaftTransportClient;
use crate::pb::{RaftBatch, SnapshotChunk};
use crate::snapshot::{SNAP_QUEUE_CHUNKS, error_of};

/// Batches between a store's queue and its open stream: the stream's
/// own small buffer, so a broken stream loses few.
const STREAM_QUEUE_BATCHES: usize = 8;

/// What a connection task needs: everything of the transport but the
/// queues (which the task's receiver is one end of, so that dropping the
/// last transport clone ends the tasks).
struct Link {
    cluster_id: u64,
    store_id: u64,
    addrs: AddressBook,
    cfg: NetConfig,
    metrics: Arc<TransportMetrics>,
    logger: slog::Logger,
    /// Stores whose link is down (connecting failed) or whose queue was
    /// full: `send` refuses messages to them, so their leaders hear the
    /// follower is unreachable and probe instead of pipelining. A store
    /// leaves the set when its link connects or forwards a batch again.
    unreachable: RwLock<FxHashSet<u64>>,
}

struct Shared {
    link: Arc<Link>,
    handle: Handle,
    /// Per remote store, the queue its connection task drains. Created on
    /// the first flush to the store.
    queues: Mutex<FxHashMap<u64, mpsc::Sender<RaftBatch>>>,
    /// Test hook: stores this transport sends nothing to.
    blocked: RwLock<FxHashSet<u64>>,
}

/// A [`Transport`] over gRPC.
///
/// Lifecycle: made once per store on a tokio runtime's handle
/// ([`crate::net_runtime`]); the store's pollers each own a clone. A
/// poller calls [`Transport::send`] for each message of its round (it is
/// only buffered, by destination store) and [`Transport::flush`] at the
/// end: the round's messages to each store go into that store's bounded
/// queue as one batch (several when over the batch budget). A task per
/// remote store keeps one stream open to it and forwards the batches,
/// reconnecting with backoff when the stream breaks; what is queued while
/// the link is down is dropped and counted (raft resends). While a
/// store's link is down or its queue full, `send` refuses messages to it
/// (`StoreNotConnected`), so its leaders hear it is unreachable and probe
/// it instead of pipelining appends. When the last clone is dropped, the
/// tasks end.
#[derive(Clone)]
pub struct GrpcTransport {
    shared: Arc<Shared>,
    /// This clone's messages of the current round, by destination store.
    pending: FxHashMap<u64, Vec<RaftMessage>>,
}

impl GrpcTransport {
    /// A transport for store `store_id` of cluster `cluster_id`, finding
    /// the other stores in `addrs`, its tasks on `handle`.
    pub fn new(
        cluster_id: u64,
        store_id: u64,
        addrs: AddressBook,
        cfg: NetConfig,
        handle: Handle,
        logger: &slog::Logger,
    ) -> GrpcTransport {
        let link = Link {
            cluster_id,
            store_id,
            addrs,
            cfg,
            metrics: Arc::default(),
            logger: logger.new(slog::o!("transport" => store_id)),
            unreachable: RwLock::default(),
        };
        GrpcTransport {
            shared: Arc::new(Shared {
                link: Arc::new(link),
                handle,
                queues: Mutex::default(),
                blocked: RwLock::default(),
            }),
            pending: FxHashMap::default(),
        }
    }

    /// What this transport (and its clones) sent and dropped.
    pub fn metrics(&self) -> &Arc<TransportMetrics> {
        &self.shared.link.metrics
    }

    /// Test hook: send nothing to `store` (raft messages and snapshots are
    /// dropped and counted) until [`GrpcTransport::unblock`].
    pub fn block(&self, store: u64) {
        self.shared.blocked.write().insert(store);
    }

    /// Ends [`GrpcTransport::block`] of `store`.
    pub fn unblock(&self, store: u64) {
        self.shared.blocked.write().remove(&store);
    }

    fn is_blocked(&self, store: u64) -> bool {
        self.shared.blocked.read().contains(&store)
    }
}

impl Shared {
    /// Queues `msgs` for `store` as batches within the byte budget.
    fn dispatch(&self, store: u64, msgs: Vec<RaftMessage>) {
        let link = &self.link;
        let tx = {
            let mut queues = self.queues.lock();
            queues
                .entry(store)
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(link.cfg.queue_batches);
                    self.handle.spawn(run_link(self.link.clone(), store, rx));
                    tx
                })
                .clone()
        };
        for batch in split(link, store, msgs) {
            let n = batch.msgs.len() as u64;
            match tx.try_send(batch) {
                Ok(()) => {
                    add(&link.metrics.batches_sent, 1);
                    add(&link.metrics.messages_sent, n);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    add(&link.metrics.dropped_queue_full, n);
                    link.set_unreachable(store, true);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // The task is gone (its runtime shut down): the next
                    // flush starts another.
                    self.queues.lock().remove(&store);
                    add(&link.metrics.dropped_disconnected, n);
                }
            }
        }
    }
}

/// `msgs` as batches of at most the budget's bytes each (a single larger
/// message goes alone).
fn split(link: &Link, store: u64, msgs: Vec<RaftMessage>) -> Vec<RaftBatch> {
    let new_batch = || RaftBatch {
        cluster_id: link.cluster_id,
        from_store: link.store_id,
        to_store: store,
        msgs: Vec::new(),
    };
    let mut batches = vec![new_batch()];
    let mut bytes = 0;
    for m in msgs {
        let len = m.encoded_len();
        let last = batches.last_mut().expect("one batch at least");
        if !last.msgs.is_empty() && bytes + len > link.cfg.batch_bytes {
            batches.push(new_batch());
            bytes = 0;
        }
        bytes += len;
        batches.last_mut().expect("one batch at least").msgs.push(m);
    }
    batches
}

/// The store a message goes to.
pub(crate) fn destination(msg: &RaftMessage) -> Option<u64> {
    msg.to_peer.as_ref().map(|p| p.store_id)
}

impl Link {
    fn set_unreachable(&self, store: u64, unreachable: bool) {
        if self.unreachable.read().contains(&store) == unreachable {
            return;
        }
        let mut set = self.unreachable.write();
        if unreachable {
            set.insert(store);
        } else {
            set.remove(&store);
        }
    }

    async fn connect(&self, store: u64) -> Result<RaftTransportClient<Channel>, String> {
        let addr = self
            .addrs
            .get(store)
            .ok_or_else(|| format!("no address for store {store}"))?;
        let cfg = &self.cfg;
        let channel = cfg
            .endpoint(&addr)?
            .connect()
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes))
    }

    /// Waits `wait`, dropping (and counting) whatever is queued meanwhile.
    /// Returns false if the transport is gone.
    async fn drop_for(&self, rx: &mut mpsc::Receiver<RaftBatch>, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return true,
                batch = rx.recv() => match batch {
                    Some(b) => add(&self.metrics.dropped_disconnected, b.msgs.len() as u64),
                    None => return false,
                },
            }
        }
    }
}

/// The connection task of `store`: keeps a stream open to it and forwards
/// the queue's batches, until every transport clone is dropped.
async fn run_link(link: Arc<Link>, store: u64, mut rx: mpsc::Receiver<RaftBatch>) {
    let mut backoff = link.cfg.initial_backoff;
    loop {
        let mut client = match link.connect(store).await {
            Ok(c) => c,
            Err(e) => {
                add(&link.metrics.connect_failures, 1);
                link.set_unreachable(store, true);
                slog::debug!(link.logger, "cannot reach store"; "store" => store, "err" => e,
                    "retry_in" => ?backoff);
                if !link.drop_for(&mut rx, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(link.cfg.max_backoff);
                continue;
            }
        };
        add(&link.metrics.connects, 1);
        link.set_unreachable(store, false);
        backoff = link.cfg.initial_backoff;
        let (tx, stream) = mpsc::channel(STREAM_QUEUE_BATCHES);
        let mut call = tokio::spawn(async move { client.raft(ReceiverStream::new(stream)).await });
        loop {
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(b) => {
                        if tx.send(b).await.is_err() {
                            break;
                        }
                        // The queue has room again.
                        link.set_unreachable(store, false);
                    }
                    None => {
                        // Every clone is gone: end the stream cleanly.
                        drop(tx);
                        let _ = call.await;
                        return;
                    }
                },
                ended = &mut call => {
                    let why = match ended {
                        Ok(Ok(_)) => "closed by the receiver".to_string(),
                        Ok(Err(status)) => status.to_string(),
                        Err(e) => e.to_string(),
                    };
                    slog::info!(link.logger, "stream to store ended"; "store" => store, "why" => why);
                    break;
                }
            }
        }
        call.abort();
        if !link.drop_for(&mut rx, backoff).await {
            return;
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&mut self, msg: RaftMessage) -> Result<(), TransportError> {
        let store = destination(&msg).ok_or(TransportError::NoDestination(msg.region_id))?;
        let link = &self.shared.link;
        if !link.addrs.contains(store) || link.unreachable.read().contains(&store) {
            return Err(TransportError::StoreNotConnected(store));
        }
        self.pending.entry(store).or_default().push(msg);
        Ok(())
    }

    fn flush(&mut self) {
        for (&store, msgs) in self.pending.iter_mut() {
            if msgs.is_empty() {
                continue;
            }
            let msgs = std::mem::take(msgs);
            if self.shared.blocked.read().contains(&store) {
                add(&self.shared.link.metrics.dropped_blocked, msgs.len() as u64);
                continue;
            }
            self.shared.dispatch(store, msgs);
        }
    }

    /// Opens a stream of its own to the destination: the header chunk
    /// (`msg`), then the file's chunks; blocks (the snapshot worker's
    /// thread, never a runtime thread) until the receiver answers.
    fn send_snapshot(
        &mut self,
        msg: RaftMessage,
        chunks: &mut dyn Iterator<Item = Result<Vec<u8>, SnapError>>,
    ) -> Result<(), SnapError> {
        let region_id = msg.region_id;
        let store = destination(&msg).ok_or(TransportError::NoDestination(region_id))?;
        let link = self.shared.link.clone();
        let result = if self.is_blocked(store) {
            Err(SnapError::Dropped)
        } else {
            send_snapshot(&self.shared.handle, &link, store, msg, chunks)
        };
        match &result {
            Ok(()) => add(&link.metrics.snapshots_sent, 1),
            Err(e) => {
                add(&link.metrics.snapshot_failures, 1);
                slog::info!(link.logger, "snapshot not taken"; "region" => region_id,
                    "store" => store, "err" => %e);
            }
        }
        result
    }
}

fn send_snapshot(
    handle: &Handle,
    link: &Arc<Link>,
    store: u64,
    msg: RaftMessage,
    chunks: &mut dyn Iterator<Item = Result<Vec<u8>, SnapError>>,
) -> Result<(), SnapError> {
    let region_id = msg.region_id;
    let mut client = handle.block_on(link.connect(store)).map_err(|e| {
        slog::debug!(link.logger, "cannot reach store for a snapshot"; "store" => store, "err" => e);
        SnapError::Transport(TransportError::StoreNotConnected(store))
    })?;
    let (tx, rx) = mpsc::channel(SNAP_QUEUE_CHUNKS);
    let call = handle.spawn(async move { client.snapshot(ReceiverStream::new(rx)).await });
    let header = SnapshotChunk {
        cluster_id: link.cluster_id,
        from_store: link.store_id,
        to_store: store,
        message: Some(msg),
        data: Bytes::new(),
    };
    if tx.blocking_send(header).is_ok() {
        for chunk in chunks {
            let data = match chunk {
                Ok(d) => d,
                Err(e) => {
                    // Abandon the stream: the receiver sees it broken and
                    // keeps nothing.
                    call.abort();
                    return Err(e);
                }
            };
            let chunk = SnapshotChunk {
                data: data.into(),
                ..Default::default()
            };
            if tx.blocking_send(chunk).is_err() {
                // The receiver answered early: its answer says why.
                break;
            }
        }
    }
    drop(tx);
    match handle.block_on(call) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(error_of(&status, region_id)),
        Err(_) => Err(SnapError::Dropped),
    }
}
