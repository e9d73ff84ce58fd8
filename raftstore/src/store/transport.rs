//! How raft messages leave a store: the [`Transport`] trait and the
//! in-process [`ChannelTransport`] with test filters.

use std::sync::Arc;

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flotilla_proto::eraftpb::MessageType;
use flotilla_proto::raft_serverpb::RaftMessage;
use fxhash::FxHashMap;
use parking_lot::RwLock;
use thiserror::Error;

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
}

/// Where a [`ChannelTransport`] delivers a store's inbound messages.
pub trait MessageSink: Send + Sync {
    /// Hands one inbound message to the store.
    fn deliver(&self, msg: RaftMessage);
}

/// A test filter on the in-process network. Filters see each flushed batch
/// of messages and remove what they drop.
pub trait Filter: Send + Sync {
    /// Keeps only the messages that pass.
    fn filter(&self, msgs: &mut Vec<RaftMessage>);
}

#[derive(Default)]
struct Net {
    sinks: RwLock<FxHashMap<u64, Arc<dyn MessageSink>>>,
    filters: RwLock<Vec<Arc<dyn Filter>>>,
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

    /// Disconnects store `store_id` (e.g. it stopped); messages to it are
    /// dropped.
    pub fn disconnect(&self, store_id: u64) {
        self.net.sinks.write().remove(&store_id);
    }

    /// Adds a filter applied to every later flush.
    pub fn add_filter(&self, filter: Arc<dyn Filter>) {
        self.net.filters.write().push(filter);
    }

    /// Removes every filter: the network heals. Messages a delay filter
    /// holds are still delivered when due.
    pub fn clear_filters(&self) {
        self.net.filters.write().clear();
    }

    /// Drops every message between `store` and any other store.
    pub fn isolate(&self, store: u64) {
        self.add_filter(Arc::new(PartitionFilter::new(vec![vec![store]])));
    }

    /// Splits the stores into `groups`: messages between stores of
    /// different groups are dropped (stores in no group form one more
    /// group).
    pub fn partition(&self, groups: Vec<Vec<u64>>) {
        self.add_filter(Arc::new(PartitionFilter::new(groups)));
    }

    /// Delays every message by `delay` (delivered by a background thread,
    /// which stops when the network is dropped).
    pub fn delay(&self, delay: Duration) {
        self.add_filter(Arc::new(DelayFilter::start(
            Arc::downgrade(&self.net),
            delay,
        )));
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

/// Holds every message for a fixed delay, then delivers it in order.
pub struct DelayFilter {
    delay: Duration,
    queue: Arc<parking_lot::Mutex<(BinaryHeap<Delayed>, u64)>>,
    stop: Arc<AtomicBool>,
}

/// How often the delay thread looks for due messages.
const DELAY_POLL: Duration = Duration::from_millis(2);

impl DelayFilter {
    fn start(net: std::sync::Weak<Net>, delay: Duration) -> DelayFilter {
        let queue = Arc::new(parking_lot::Mutex::new((
            BinaryHeap::<Delayed>::new(),
            0u64,
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, st) = (queue.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Acquire) {
                std::thread::sleep(DELAY_POLL);
                let Some(net) = net.upgrade() else { return };
                let now = Instant::now();
                let mut due = Vec::new();
                {
                    let mut guard = q.lock();
                    while guard.0.peek().is_some_and(|d| d.due <= now) {
                        if let Some(d) = guard.0.pop() {
                            due.push(d.msg);
                        }
                    }
                }
                ChannelTransport::deliver_now(&net, due);
            }
        });
        DelayFilter { delay, queue, stop }
    }
}

impl Drop for DelayFilter {
    fn drop(&mut self) {
        // Deliver what is left, then stop the thread.
        let due = self.queue.lock().0.peek().map(|d| d.due);
        if let Some(due) = due {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        self.stop.store(true, Ordering::Release);
    }
}

impl Filter for DelayFilter {
    fn filter(&self, msgs: &mut Vec<RaftMessage>) {
        let due = Instant::now() + self.delay;
        let mut guard = self.queue.lock();
        for msg in msgs.drain(..) {
            guard.1 += 1;
            let seq = guard.1;
            guard.0.push(Delayed { due, seq, msg });
        }
    }
}

impl Transport for ChannelTransport {
    fn send(&mut self, msg: RaftMessage) -> Result<(), TransportError> {
        let store = msg
            .to_peer
            .as_ref()
            .map(|p| p.store_id)
            .ok_or(TransportError::NoDestination(msg.region_id))?;
        if !self.net.sinks.read().contains_key(&store) {
            return Err(TransportError::StoreNotConnected(store));
        }
        self.buffer.push(msg);
        Ok(())
    }

    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        for f in self.net.filters.read().iter() {
            f.filter(&mut self.buffer);
        }
        ChannelTransport::deliver_now(&self.net, self.buffer.drain(..));
    }
}
