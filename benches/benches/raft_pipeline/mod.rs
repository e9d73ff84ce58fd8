//! Shared by the `raft_core` and `vs_raft_rs` benches: one library-neutral
//! driver for a 3-node in-memory raft cluster (the replication pipeline) and
//! for an idle leader (the memory measurement), plus a counting global
//! allocator.
//!
//! The driver is written once, generically over [`BenchNode`]; each library
//! supplies only thin adapters (build a node, take a `Ready` apart, persist it
//! into its own `MemStorage`, step a message). Both libraries therefore run
//! exactly the same delivery loop, persistence and apply accounting.

use std::sync::Mutex;
use std::time::Duration;

use flotilla_benches::{Counting, counting};

use flotilla_proto::eraftpb::{Entry, Message, MessageType, Snapshot};
use flotilla_raftstore::raft::tracker::IDLE_CHECKS_BEFORE_FREE;
use flotilla_raftstore::raft::{Config, LightReady, MemStorage, RawNode, Ready, StateRole};

/// Number of voters in the pipeline cluster.
pub const CLUSTER_SIZE: u64 = 3;
/// Id of the node that campaigns and proposes.
pub const LEADER_ID: u64 = 1;
/// Payload of one pipeline proposal.
pub const PROPOSAL_SIZE: usize = 128;
/// Byte the pipeline payloads are filled with.
const PAYLOAD_FILL: u8 = 0xAB;
/// Proposals per round in the two pipeline benches.
pub const PROPOSALS_PER_ROUND: [u64; 2] = [1, 64];
/// Election timeout (ticks) of every bench node, both libraries.
pub const ELECTION_TICK: usize = 10;
/// Heartbeat interval (ticks) of every bench node, both libraries.
pub const HEARTBEAT_TICK: usize = 1;
/// In-flight append cap per follower, both libraries.
pub const MAX_INFLIGHT_MSGS: usize = 256;
/// Byte cap of one append message, both libraries (raft-rs defaults to 0,
/// i.e. one entry per append; both get the same explicit value here).
pub const MAX_SIZE_PER_MSG: u64 = 1024 * 1024;
/// Storage is compacted up to the applied index every this many entries, so
/// long runs do not grow the in-memory logs without bound.
const COMPACT_EVERY: u64 = 4096;
/// Proposals the idle leader commits before going idle.
const IDLE_LEADER_PROPOSALS: usize = 3;
/// Payload of each of those proposals.
const IDLE_LEADER_PAYLOAD: usize = 16;

/// A discarding logger (no formatting cost in the measured paths).
pub fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// The voter ids of the pipeline cluster.
pub fn voter_ids() -> Vec<u64> {
    (1..=CLUSTER_SIZE).collect()
}

/// flotilla's config for node `id` (the same settings as [`BenchNode::new`]
/// gives raft-rs).
pub fn flotilla_config(id: u64) -> Config {
    Config {
        election_tick: ELECTION_TICK,
        heartbeat_tick: HEARTBEAT_TICK,
        max_inflight_msgs: MAX_INFLIGHT_MSGS,
        max_size_per_msg: MAX_SIZE_PER_MSG,
        ..Config::new(id)
    }
}

/// The peer responses the idle-leader driver injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// A granted vote.
    Vote,
    /// An append acknowledged up to `index`.
    Append,
    /// A heartbeat answered.
    Heartbeat,
}

/// What the generic drivers need from one raft library's `RawNode` over its
/// own `MemStorage`. Every method is a direct call into the library.
pub trait BenchNode: Sized {
    /// The library's message type.
    type Msg;
    /// The library's entry type.
    type Entry;
    /// The library's `Ready`.
    type Ready;
    /// The library's `LightReady`.
    type LightReady;

    /// Node `id` of a group bootstrapped with `voters`, over a fresh
    /// `MemStorage`, with the shared bench settings.
    fn new(id: u64, voters: &[u64], logger: &slog::Logger) -> Self;
    /// Starts an election.
    fn campaign(&mut self);
    /// Proposes `data` (empty context).
    fn propose(&mut self, data: Vec<u8>);
    /// Steps a message from a peer.
    fn step(&mut self, m: Self::Msg);
    /// Advances the logical clock one tick.
    fn tick(&mut self);
    /// True if there is a `Ready` to handle.
    fn has_ready(&self) -> bool;
    /// Takes the next `Ready`.
    fn ready(&mut self) -> Self::Ready;
    /// Moves the immediately sendable messages into `out`.
    fn take_messages(rd: &mut Self::Ready, out: &mut Vec<Self::Msg>);
    /// Writes the `Ready`'s snapshot, entries and hard state to storage.
    fn persist(&self, rd: &Self::Ready);
    /// Moves the messages to send after persistence into `out`.
    fn take_persisted_messages(rd: &mut Self::Ready, out: &mut Vec<Self::Msg>);
    /// Takes the committed entries to apply.
    fn take_committed_entries(rd: &mut Self::Ready) -> Vec<Self::Entry>;
    /// Reports the `Ready` persisted (and its committed entries applied).
    fn advance(&mut self, rd: Self::Ready) -> Self::LightReady;
    /// Persists the light ready's new commit index, if any.
    fn persist_commit(&self, lr: &Self::LightReady);
    /// Moves the light ready's messages into `out`.
    fn light_take_messages(lr: &mut Self::LightReady, out: &mut Vec<Self::Msg>);
    /// Takes the light ready's committed entries.
    fn light_take_committed_entries(lr: &mut Self::LightReady) -> Vec<Self::Entry>;
    /// Marks everything handed out as applied.
    fn advance_apply(&mut self);
    /// Discards storage entries before `index`.
    fn compact(&self, index: u64);
    /// The destination of `m`.
    fn msg_to(m: &Self::Msg) -> u64;
    /// The index and payload length of `e`.
    fn entry_index_len(e: &Self::Entry) -> (u64, usize);
    /// The node's last log index.
    fn last_index(&self) -> u64;
    /// The node's current term.
    fn term(&self) -> u64;
    /// True if the node is the leader.
    fn is_leader(&self) -> bool;
    /// A response of kind `r` from `from` to `to` in `term` (for appends,
    /// acknowledging `index`).
    fn response(r: Response, from: u64, to: u64, term: u64, index: u64) -> Self::Msg;
    /// Frees empty inflight buffers, if the library has such a call.
    fn free_inflight_buffers(&mut self);
}

/// Applied-state accounting of one node.
#[derive(Debug, Default, Clone, Copy)]
struct Applied {
    /// Index of the last applied entry.
    index: u64,
    /// Normal entries with a payload applied.
    proposals: u64,
    /// Payload bytes applied.
    bytes: u64,
}

fn apply<N: BenchNode>(a: &mut Applied, ents: Vec<N::Entry>) {
    for e in &ents {
        let (index, len) = N::entry_index_len(e);
        a.index = index;
        if len > 0 {
            a.proposals += 1;
            a.bytes += len as u64;
        }
    }
}

/// A 3-voter in-memory cluster driven through the full Ready loop with
/// synchronous persistence into each node's `MemStorage`. Messages are
/// delivered in generation order, in rounds, until the cluster is quiet.
pub struct Cluster<N: BenchNode> {
    nodes: Vec<N>,
    applied: Vec<Applied>,
    outbox: Vec<N::Msg>,
    inbox: Vec<N::Msg>,
    payload: Vec<u8>,
    compacted: u64,
    delivered: u64,
    readies: u64,
}

impl<N: BenchNode> Cluster<N> {
    /// Builds the cluster and elects [`LEADER_ID`].
    ///
    /// # Panics
    ///
    /// If the election fails.
    pub fn new(logger: &slog::Logger) -> Self {
        let voters = voter_ids();
        let mut c = Cluster {
            nodes: voters
                .iter()
                .map(|&id| N::new(id, &voters, logger))
                .collect(),
            applied: vec![Applied::default(); voters.len()],
            outbox: Vec::new(),
            inbox: Vec::new(),
            payload: vec![PAYLOAD_FILL; PROPOSAL_SIZE],
            compacted: 0,
            delivered: 0,
            readies: 0,
        };
        c.nodes[idx(LEADER_ID)].campaign();
        c.run_until_quiet();
        assert!(c.nodes[idx(LEADER_ID)].is_leader(), "leader elected");
        c
    }

    /// One round: the leader proposes `proposals` payloads, then messages
    /// are delivered until every node has committed and applied them.
    ///
    /// # Panics
    ///
    /// If some node did not apply everything (a driver bug).
    pub fn round(&mut self, proposals: u64) {
        let leader = &mut self.nodes[idx(LEADER_ID)];
        for _ in 0..proposals {
            leader.propose(self.payload.clone());
        }
        self.run_until_quiet();
        let last = self.nodes[idx(LEADER_ID)].last_index();
        for a in &self.applied {
            assert_eq!(a.index, last, "every node applied the round");
        }
        if last - self.compacted >= COMPACT_EVERY {
            for n in &self.nodes {
                n.compact(last);
            }
            self.compacted = last;
        }
    }

    /// Proposals applied on each node so far.
    pub fn applied_proposals(&self) -> Vec<u64> {
        self.applied.iter().map(|a| a.proposals).collect()
    }

    /// (messages delivered, `Ready`s handled) per applied proposal so far.
    pub fn work_per_proposal(&self) -> (f64, f64) {
        let p = self.applied[idx(LEADER_ID)].proposals.max(1) as f64;
        (self.delivered as f64 / p, self.readies as f64 / p)
    }

    fn run_until_quiet(&mut self) {
        loop {
            let mut busy = false;
            for i in 0..self.nodes.len() {
                if self.nodes[i].has_ready() {
                    busy = true;
                    self.handle_ready(i);
                }
            }
            if !busy && self.outbox.is_empty() {
                return;
            }
            std::mem::swap(&mut self.inbox, &mut self.outbox);
            self.delivered += self.inbox.len() as u64;
            for m in self.inbox.drain(..) {
                self.nodes[idx(N::msg_to(&m))].step(m);
            }
        }
    }

    fn handle_ready(&mut self, i: usize) {
        self.readies += 1;
        let node = &mut self.nodes[i];
        let mut rd = node.ready();
        N::take_messages(&mut rd, &mut self.outbox);
        node.persist(&rd);
        N::take_persisted_messages(&mut rd, &mut self.outbox);
        apply::<N>(&mut self.applied[i], N::take_committed_entries(&mut rd));
        let mut lr = node.advance(rd);
        node.persist_commit(&lr);
        N::light_take_messages(&mut lr, &mut self.outbox);
        apply::<N>(
            &mut self.applied[i],
            N::light_take_committed_entries(&mut lr),
        );
        node.advance_apply();
    }
}

fn idx(id: u64) -> usize {
    (id - 1) as usize
}

/// Handles every pending `Ready` of a lone node: persists it, drops its
/// messages (there is no network), applies and advances.
fn pump<N: BenchNode>(n: &mut N, scratch: &mut Vec<N::Msg>) {
    while n.has_ready() {
        let mut rd = n.ready();
        N::take_messages(&mut rd, scratch);
        n.persist(&rd);
        N::take_persisted_messages(&mut rd, scratch);
        drop(N::take_committed_entries(&mut rd));
        let mut lr = n.advance(rd);
        n.persist_commit(&lr);
        N::light_take_messages(&mut lr, scratch);
        drop(N::light_take_committed_entries(&mut lr));
        n.advance_apply();
        scratch.clear();
    }
}

/// Drives a lone node (id 1 of voters 1, 2, 3) to an idle leader: elected by
/// injected votes, [`IDLE_LEADER_PROPOSALS`] entries committed and
/// acknowledged by both followers, then enough answered idle heartbeats for
/// flotilla to free its inflight buffers on its own. No explicit free call.
///
/// # Panics
///
/// If the node does not become leader.
pub fn idle_leader<N: BenchNode>(logger: &slog::Logger) -> N {
    let voters = voter_ids();
    let mut n = N::new(LEADER_ID, &voters, logger);
    let mut scratch = Vec::new();
    n.campaign();
    let followers: Vec<u64> = voters.iter().copied().filter(|&v| v != LEADER_ID).collect();
    let term = n.term();
    for &from in &followers {
        n.step(N::response(Response::Vote, from, LEADER_ID, term, 0));
    }
    assert!(n.is_leader(), "idle leader elected");
    pump(&mut n, &mut scratch);
    let ack = |n: &mut N| {
        let li = n.last_index();
        for &from in &followers {
            n.step(N::response(Response::Append, from, LEADER_ID, term, li));
        }
    };
    ack(&mut n);
    pump(&mut n, &mut scratch);
    for i in 0..IDLE_LEADER_PROPOSALS {
        n.propose(vec![i as u8; IDLE_LEADER_PAYLOAD]);
        pump(&mut n, &mut scratch);
        ack(&mut n);
        pump(&mut n, &mut scratch);
    }
    for _ in 0..(IDLE_CHECKS_BEFORE_FREE as usize + 1) * HEARTBEAT_TICK {
        n.tick();
        for &from in &followers {
            n.step(N::response(Response::Heartbeat, from, LEADER_ID, term, 0));
        }
        pump(&mut n, &mut scratch);
    }
    n
}

/// Heap bytes of an idle leader: `(held, held_after_explicit_free)`, both
/// counted from before the node (and its `MemStorage`) was created.
pub fn idle_leader_heap<N: BenchNode>() -> (isize, isize) {
    let logger = logger();
    // Warm-up: lazily initialized statics (default instances, thread
    // locals) are allocated once and must not be charged to the node.
    drop(idle_leader::<N>(&logger));
    counting::enable(true);
    let before = counting::thread_live_bytes();
    let mut n = idle_leader::<N>(&logger);
    let held = counting::thread_live_bytes() - before;
    n.free_inflight_buffers();
    let freed = counting::thread_live_bytes() - before;
    counting::enable(false);
    drop(n);
    (held, freed)
}

// --- flotilla's adapter ----------------------------------------------------

/// flotilla's `RawNode` over its `MemStorage`.
pub struct Flotilla {
    node: RawNode<MemStorage>,
    store: MemStorage,
}

impl BenchNode for Flotilla {
    type Msg = Message;
    type Entry = Entry;
    type Ready = Ready;
    type LightReady = LightReady;

    fn new(id: u64, voters: &[u64], logger: &slog::Logger) -> Self {
        let store = MemStorage::with_voters(voters, &[]);
        let node = RawNode::new(&flotilla_config(id), store.clone(), logger).expect("valid node");
        Flotilla { node, store }
    }

    fn campaign(&mut self) {
        self.node.campaign().expect("campaign");
    }

    fn propose(&mut self, data: Vec<u8>) {
        self.node
            .propose(Vec::new(), data)
            .expect("proposal accepted");
    }

    fn step(&mut self, m: Message) {
        self.node.step(m).expect("step");
    }

    fn tick(&mut self) {
        self.node.tick();
    }

    fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    fn ready(&mut self) -> Ready {
        self.node.ready()
    }

    fn take_messages(rd: &mut Ready, out: &mut Vec<Message>) {
        out.append(&mut rd.messages);
    }

    fn persist(&self, rd: &Ready) {
        let mut s = self.store.wl();
        if let Some(snap) = &rd.snapshot {
            s.apply_snapshot(Snapshot::clone(snap))
                .expect("apply snapshot");
        }
        s.append(&rd.entries).expect("append");
        if let Some(hs) = rd.hs {
            s.set_hardstate(hs);
        }
    }

    fn take_persisted_messages(rd: &mut Ready, out: &mut Vec<Message>) {
        out.append(&mut rd.persisted_messages);
    }

    fn take_committed_entries(rd: &mut Ready) -> Vec<Entry> {
        rd.take_committed_entries()
    }

    fn advance(&mut self, rd: Ready) -> LightReady {
        self.node.advance(rd)
    }

    fn persist_commit(&self, lr: &LightReady) {
        if let Some(commit) = lr.commit_index {
            self.store.wl().commit_to(commit);
        }
    }

    fn light_take_messages(lr: &mut LightReady, out: &mut Vec<Message>) {
        out.append(&mut lr.messages);
    }

    fn light_take_committed_entries(lr: &mut LightReady) -> Vec<Entry> {
        std::mem::take(&mut lr.committed_entries)
    }

    fn advance_apply(&mut self) {
        self.node.advance_apply();
    }

    fn compact(&self, index: u64) {
        self.store.wl().compact(index).expect("compact");
    }

    fn msg_to(m: &Message) -> u64 {
        m.to
    }

    fn entry_index_len(e: &Entry) -> (u64, usize) {
        (e.index, e.data.len())
    }

    fn last_index(&self) -> u64 {
        self.node.raft.raft_log().last_index()
    }

    fn term(&self) -> u64 {
        self.node.raft.term()
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state() == StateRole::Leader
    }

    fn response(r: Response, from: u64, to: u64, term: u64, index: u64) -> Message {
        let t = match r {
            Response::Vote => MessageType::MsgRequestVoteResponse,
            Response::Append => MessageType::MsgAppendResponse,
            Response::Heartbeat => MessageType::MsgHeartbeatResponse,
        };
        Message {
            msg_type: t as i32,
            from,
            to,
            term,
            index,
            ..Default::default()
        }
    }

    fn free_inflight_buffers(&mut self) {
        self.node.maybe_free_inflight_buffers();
    }
}

// --- counting allocator ----------------------------------------------------

#[global_allocator]
static GLOBAL: Counting = Counting;

// --- sample recording ------------------------------------------------------

/// Per-iteration times of criterion's measured samples, recorded by
/// `iter_custom` so a bench can print ratios after criterion is done.
#[derive(Default)]
pub struct Samples {
    runs: Mutex<Vec<(String, Vec<f64>)>>,
}

impl Samples {
    /// Records one `iter_custom` call of bench `name`.
    pub fn record(&self, name: &str, iters: u64, d: Duration) {
        let per_iter = d.as_secs_f64() / iters.max(1) as f64;
        let mut runs = self.runs.lock().expect("samples lock");
        match runs.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(per_iter),
            None => runs.push((name.to_string(), vec![per_iter])),
        }
    }

    /// Median seconds per iteration over the last `n` recorded calls of
    /// `name` (criterion's measured samples follow its warm-up calls).
    pub fn median_secs(&self, name: &str, n: usize) -> Option<f64> {
        let runs = self.runs.lock().expect("samples lock");
        let v = &runs.iter().find(|(k, _)| k == name)?.1;
        if v.len() < n {
            return None;
        }
        let mut last: Vec<f64> = v[v.len() - n..].to_vec();
        last.sort_by(f64::total_cmp);
        Some(last[last.len() / 2])
    }
}
