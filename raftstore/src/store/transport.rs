//! How raft messages leave a store: the [`Transport`] trait and the
//! in-process [`ChannelTransport`] with test filters.

use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use flotilla_proto::eraftpb::MessageType;
use flotilla_proto::raft_serverpb::RaftMessage;
use fxhash::FxHashMap;
use parking_lot::{Condvar, Mutex, RwLock};
use thiserror::Error;

use super::snapshot::SnapError;

/// Why a message could not be handed to its destination.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransportError {
    /// No store with that id is connected.
    #[error("store {0} is not connected")]
    StoreNotConnected(u64),
    /// The message names no destination peer.
    #[error("raft message for region {0} has no destination peer")]
    NoDestination(u64),
}

/// Sends raft messages to other stores.
///
/// Lifecycle: a poller owns one transport (clones are cheap and share the
/// connections); during a poll round it calls [`Transport::send`] for every
/// outgoing message, and at the end of the round [`Transport::flush`] once.
/// Implementations may buffer until `flush`.
pub trait Transport: Send + Clone + 'static {
    /// Queues `msg` for the store of `msg.to_peer`.
    ///
    /// # Errors
    /// [`TransportError`] when the destination is unknown; the message is
    /// dropped (raft retries on its own).
    fn send(&mut self, msg: RaftMessage) -> Result<(), TransportError>;

    /// Delivers everything queued since the last flush.
    fn flush(&mut self);

    /// Sends a snapshot stream to the store of `msg.to_peer`: `msg` (a
    /// `MsgSnapshot` whose snapshot data is a `SnapshotMeta`), then the
    /// snapshot file's bytes from `chunks`. Blocks until the receiver has
    /// the whole file and took the message, or refused it (called on the
    /// snapshot worker, never on a poller).
    ///
    /// # Errors
    /// [`SnapError`]: the destination is unknown, busy, or refused the
    /// stream, a chunk could not be read, or the stream was dropped.
    fn send_snapshot(
        &mut self,
        msg: RaftMessage,
        chunks: &mut dyn Iterator<Item = Result<Vec<u8>, SnapError>>,
    ) -> Result<(), SnapError>;
}

/// Where a [`ChannelTransport`] delivers a store's inbound messages.
pub trait MessageSink: Send + Sync {
    /// Hands one inbound message to the store.
    fn deliver(&self, msg: RaftMessage);

    /// Receives a snapshot stream (see [`Transport::send_snapshot`]);
    /// returns once the message was handed to the store.
    ///
    /// # Errors
    /// As [`Transport::send_snapshot`]. A sink that takes no snapshots
    /// refuses every stream with [`SnapError::RegionNotFound`].
    fn receive_snapshot(
        &self,
        msg: RaftMessage,
        chunks: &mut dyn Iterator<Item = Result<Vec<u8>, SnapError>>,
    ) -> Result<(), SnapError> {
        let _ = chunks;
        Err(SnapError::RegionNotFound(msg.region_id))
    }
}

/// A test filter on the in-process network. Filters see each flushed batch
/// of messages and remove what they drop.
///
/// The filters of a [`ChannelTransport`] run in the order they were added.
/// A [`DelayFilter`] takes the whole batch; when its messages fall due they
/// pass through the filters then installed that were added after it (the
/// ones before it already saw them), and what passes is delivered.
pub trait Filter: Send + Sync {
    /// Keeps only the messages that pass.
    fn filter(&self, msgs: &mut Vec<RaftMessage>);
}

/// Names one filter added to a [`ChannelTransport`], for
/// [`ChannelTransport::remove_filter`]. Ids are never reused, and a filter
/// added later has a greater id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FilterId(u64);

/// The installed filters, in the order they were added (so by id).
#[derive(Default)]
struct Filters {
    next_id: u64,
    list: Vec<(FilterId, Arc<dyn Filter>)>,
}

/// Messages' worth of send buffer a [`ChannelTransport`] keeps between
/// flushes; a burst (an election of every region) grows it further, and
/// the flush gives the excess back so the burst's peak is not kept for
/// the life of the store.
const RETAINED_SEND_BUFFER: usize = 1024;

#[derive(Default)]
struct Net {
    sinks: RwLock<FxHashMap<u64, Arc<dyn MessageSink>>>,
    filters: RwLock<Filters>,
    /// Snapshot streams still to break after their first chunk.
    streams_to_break: std::sync::atomic::AtomicU64,
}

/// An in-process network connecting the stores of one process, with
/// filters for fault tests. Cheap to clone; clones share connections and
/// filters but each has its own send buffer.
#[derive(Clone, Default)]
pub struct ChannelTransport {
    net: Arc<Net>,
    buffer: Vec<RaftMessage>,
}

impl ChannelTransport {
    /// A network with no store connected.
    pub fn new() -> ChannelTransport {
        ChannelTransport::default()
    }

    /// Connects store `store_id`: messages to it go to `sink`.
    pub fn connect(&self, store_id: u64, sink: Arc<dyn MessageSink>) {
        self.net.sinks.write().insert(store_id, sink);
    }

    /// Breaks the next `n` snapshot streams after their first chunk (as a
    /// connection lost mid-transfer would): the receiver gets an error
    /// instead of the rest, and the sender hears the send failed.
    pub fn break_snapshot_streams(&self, n: u64) {
        self.net
            .streams_to_break
            .store(n, std::sync::atomic::Ordering::Release);
    }

    /// Disconnects store `store_id` (e.g. it stopped); messages to it, and
    /// from it, are dropped from now on (a stopping store goes silent at
    /// once, as a crashed process would, not when its threads end).
    pub fn disconnect(&self, store_id: u64) {
        self.net.sinks.write().remove(&store_id);
    }

    /// Adds a filter applied to every later flush, after the filters
    /// already installed. Returns its id for
    /// [`ChannelTransport::remove_filter`] (callers that only ever
    /// [`clear_filters`](ChannelTransport::clear_filters) may ignore it).
    pub fn add_filter(&self, filter: Arc<dyn Filter>) -> FilterId {
        self.install(|_| filter)
    }

    /// Adds the filter `make` builds from its id; the id is allocated and
    /// the filter appended under one lock, so list order is id order.
    fn install(&self, make: impl FnOnce(FilterId) -> Arc<dyn Filter>) -> FilterId {
        let mut filters = self.net.filters.write();
        let id = FilterId(filters.next_id);
        filters.next_id += 1;
        let filter = make(id);
        filters.list.push((id, filter));
        id
    }

    /// Removes the filter `id`; the others stay in force. Returns whether
    /// it was installed. Once this returns the filter sees no more
    /// messages; messages a removed delay filter holds are still delivered
    /// when due.
    pub fn remove_filter(&self, id: FilterId) -> bool {
        let removed = {
            let mut filters = self.net.filters.write();
            let pos = filters.list.iter().position(|(i, _)| *i == id);
            pos.map(|pos| filters.list.remove(pos))
        };
        // Dropped outside the lock: a delay filter's drop takes its queue.
        removed.is_some()
    }

    /// Removes every filter: the network heals. Messages a delay filter
    /// holds are still delivered when due (through the filters added after
    /// the delay filter that are installed by then).
    pub fn clear_filters(&self) {
        let removed = std::mem::take(&mut self.net.filters.write().list);
        drop(removed);
    }

    /// Drops every message between `store` and any other store. Returns
    /// the filter's id.
    pub fn isolate(&self, store: u64) -> FilterId {
        self.add_filter(Arc::new(PartitionFilter::new(vec![vec![store]])))
    }

    /// Splits the stores into `groups`: messages between stores of
    /// different groups are dropped (stores in no group form one more
    /// group). Returns the filter's id.
    pub fn partition(&self, groups: Vec<Vec<u64>>) -> FilterId {
        self.add_filter(Arc::new(PartitionFilter::new(groups)))
    }

    /// Delays every message by `delay`, then passes it through the filters
    /// added after this one (see [`Filter`]) and delivers it. Returns the
    /// filter's id.
    ///
    /// A background thread delivers; it runs until the filter is removed
    /// and every message it held has been delivered, or until the network
    /// is dropped (messages still held then are lost).
    pub fn delay(&self, delay: Duration) -> FilterId {
        let net = Arc::downgrade(&self.net);
        self.install(|id| Arc::new(DelayFilter::start(net, id, delay)))
    }

    /// Delivers `msgs`, which delay filter `after` released, through the
    /// filters installed now that were added after it.
    fn deliver_delayed(net: &Net, after: FilterId, mut msgs: Vec<RaftMessage>) {
        {
            // Held while filtering, as in `flush`, so a filter that
            // `remove_filter` removed never sees another message.
            let filters = net.filters.read();
            for (_, f) in filters.list.iter().filter(|(id, _)| *id > after) {
                if msgs.is_empty() {
                    break;
                }
                f.filter(&mut msgs);
            }
        }
        ChannelTransport::deliver_now(net, msgs);
    }

    fn deliver_now(net: &Net, msgs: impl IntoIterator<Item = RaftMessage>) {
        let sinks = net.sinks.read();
        for msg in msgs {
            let store = msg.to_peer.as_ref().map_or(0, |p| p.store_id);
            if let Some(sink) = sinks.get(&store) {
                sink.deliver(msg);
            }
        }
    }
}

/// The destination store of `msg`, if it and the sending store are both
/// connected (a stopped store neither gets nor sends anything).
fn check_endpoints(
    sinks: &FxHashMap<u64, Arc<dyn MessageSink>>,
    msg: &RaftMessage,
) -> Result<u64, TransportError> {
    let store = msg
        .to_peer
        .as_ref()
        .map(|p| p.store_id)
        .ok_or(TransportError::NoDestination(msg.region_id))?;
    if !sinks.contains_key(&store) {
        return Err(TransportError::StoreNotConnected(store));
    }
    if let Some(from) = msg.from_peer.as_ref().map(|p| p.store_id)
        && !sinks.contains_key(&from)
    {
        return Err(TransportError::StoreNotConnected(from));
    }
    Ok(store)
}

fn from_store(m: &RaftMessage) -> u64 {
    m.from_peer.as_ref().map_or(0, |p| p.store_id)
}

fn to_store(m: &RaftMessage) -> u64 {
    m.to_peer.as_ref().map_or(0, |p| p.store_id)
}

/// Drops the messages matching every criterion that is set.
#[derive(Debug, Clone, Default)]
pub struct DropFilter {
    /// Only messages of this region.
    pub region_id: Option<u64>,
    /// Only messages from this store.
    pub from_store: Option<u64>,
    /// Only messages to this store.
    pub to_store: Option<u64>,
    /// Only raft messages of this type.
    pub msg_type: Option<MessageType>,
}

impl DropFilter {
    fn matches(&self, m: &RaftMessage) -> bool {
        self.region_id.is_none_or(|r| r == m.region_id)
            && self.from_store.is_none_or(|s| s == from_store(m))
            && self.to_store.is_none_or(|s| s == to_store(m))
            && self
                .msg_type
                .is_none_or(|t| m.message.as_ref().is_some_and(|x| x.msg_type() == t))
    }
}

impl Filter for DropFilter {
    fn filter(&self, msgs: &mut Vec<RaftMessage>) {
        msgs.retain(|m| !self.matches(m));
    }
}

/// Drops messages between stores of different groups.
#[derive(Debug, Clone)]
pub struct PartitionFilter {
    group_of: FxHashMap<u64, usize>,
    groups: usize,
}

impl PartitionFilter {
    /// Stores in no group form one extra group together.
    pub fn new(groups: Vec<Vec<u64>>) -> PartitionFilter {
        let mut group_of = FxHashMap::default();
        for (i, g) in groups.iter().enumerate() {
            for &s in g {
                group_of.insert(s, i);
            }
        }
        PartitionFilter {
            group_of,
            groups: groups.len(),
        }
    }

    fn group(&self, store: u64) -> usize {
        self.group_of.get(&store).copied().unwrap_or(self.groups)
    }
}

impl Filter for PartitionFilter {
    fn filter(&self, msgs: &mut Vec<RaftMessage>) {
        msgs.retain(|m| self.group(from_store(m)) == self.group(to_store(m)));
    }
}

/// A message held back until `due`.
struct Delayed {
    due: Instant,
    seq: u64,
    msg: RaftMessage,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Min-heap on (due, seq).
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The messages a [`DelayFilter`] holds, shared with its delivery thread.
#[derive(Default)]
struct DelayQueue {
    heap: BinaryHeap<Delayed>,
    seq: u64,
    /// The filter was dropped: no message is added any more, and the
    /// thread exits once `heap` is empty.
    closed: bool,
}

#[derive(Default)]
struct DelayShared {
    queue: Mutex<DelayQueue>,
    /// Signalled when a message is queued or the filter is dropped.
    wake: Condvar,
}

/// Holds every message for a fixed delay, then delivers it in order (see
/// [`ChannelTransport::delay`]).
pub struct DelayFilter {
    delay: Duration,
    shared: Arc<DelayShared>,
}

/// The longest the delay thread sleeps without checking whether the
/// network still exists.
const DELAY_IDLE_CHECK: Duration = Duration::from_millis(50);

impl DelayFilter {
    fn start(net: Weak<Net>, id: FilterId, delay: Duration) -> DelayFilter {
        let shared = Arc::new(DelayShared::default());
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("delay-filter-{}", id.0))
            .spawn(move || DelayFilter::run(&thread_shared, &net, id))
            .expect("spawn delay filter thread");
        DelayFilter { delay, shared }
    }

    /// The delivery thread: hands over each message when it falls due;
    /// exits when the filter is gone and nothing is held, or when the
    /// network is gone.
    fn run(shared: &DelayShared, net: &Weak<Net>, id: FilterId) {
        loop {
            let due = {
                let mut queue = shared.queue.lock();
                loop {
                    if net.strong_count() == 0 || (queue.closed && queue.heap.is_empty()) {
                        return;
                    }
                    let now = Instant::now();
                    match queue.heap.peek() {
                        Some(d) if d.due <= now => break,
                        Some(d) => {
                            let until = d.due.min(now + DELAY_IDLE_CHECK);
                            shared.wake.wait_until(&mut queue, until);
                        }
                        None => {
                            shared.wake.wait_for(&mut queue, DELAY_IDLE_CHECK);
                        }
                    }
                }
                let now = Instant::now();
                let mut due = Vec::new();
                while queue.heap.peek().is_some_and(|d| d.due <= now) {
                    if let Some(d) = queue.heap.pop() {
                        due.push(d.msg);
                    }
                }
                due
            };
            // No lock of ours is held here: if this turns out to be the
            // last reference to the network, dropping it drops this filter,
            // whose `drop` takes the queue lock.
            let Some(net) = net.upgrade() else { return };
            ChannelTransport::deliver_delayed(&net, id, due);
        }
    }
}

impl Drop for DelayFilter {
    fn drop(&mut self) {
        // Does not wait: the thread delivers what is left when due, then
        // exits.
        self.shared.queue.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

impl Filter for DelayFilter {
    fn filter(&self, msgs: &mut Vec<RaftMessage>) {
        if msgs.is_empty() {
            return;
        }
        let due = Instant::now() + self.delay;
        let mut queue = self.shared.queue.lock();
        for msg in msgs.drain(..) {
            queue.seq += 1;
            let seq = queue.seq;
            queue.heap.push(Delayed { due, seq, msg });
        }
        drop(queue);
        self.shared.wake.notify_one();
    }
}

impl Transport for ChannelTransport {
    fn send(&mut self, msg: RaftMessage) -> Result<(), TransportError> {
        check_endpoints(&self.net.sinks.read(), &msg)?;
        self.buffer.push(msg);
        Ok(())
    }

    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        for (_, f) in self.net.filters.read().list.iter() {
            f.filter(&mut self.buffer);
        }
        ChannelTransport::deliver_now(&self.net, self.buffer.drain(..));
        self.buffer.shrink_to(RETAINED_SEND_BUFFER);
    }

    /// The stream passes the filters as its message would: a filter that
    /// drops the message drops the stream ([`SnapError::Dropped`]), and so
    /// does a delay filter, whose late message arrives without its file
    /// (the peer refuses it). What passes reaches the destination's sink
    /// at once.
    fn send_snapshot(
        &mut self,
        msg: RaftMessage,
        chunks: &mut dyn Iterator<Item = Result<Vec<u8>, SnapError>>,
    ) -> Result<(), SnapError> {
        let sink = {
            let sinks = self.net.sinks.read();
            let store = check_endpoints(&sinks, &msg)?;
            sinks
                .get(&store)
                .cloned()
                .ok_or(TransportError::StoreNotConnected(store))?
        };
        let mut one = vec![msg];
        for (_, f) in self.net.filters.read().list.iter() {
            f.filter(&mut one);
        }
        let Some(msg) = one.pop() else {
            return Err(SnapError::Dropped);
        };
        let break_this = self
            .net
            .streams_to_break
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if !break_this {
            return sink.receive_snapshot(msg, chunks);
        }
        let mut sent = 0;
        let mut broken = std::iter::from_fn(|| {
            sent += 1;
            match sent {
                1 => chunks.next(),
                2 => Some(Err(SnapError::Dropped)),
                _ => None,
            }
        });
        // The receiver sees an error in place of the second chunk.
        sink.receive_snapshot(msg, &mut broken)
            .and(Err(SnapError::Dropped))
    }
}
