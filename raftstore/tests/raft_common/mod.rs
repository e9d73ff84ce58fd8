//! Shared helpers for the consensus-core scenario tests: node builders and
//! an in-memory network (`Network`) with drop / isolate / cut filters that
//! drives every node through the full Ready loop (synchronous persistence
//! into each node's `MemStorage`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use flotilla_proto::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message,
    MessageType, Snapshot, SnapshotMetadata,
};
use flotilla_raftstore::raft::{
    Config, MemStorage, Raft, RawNode, Ready, StateRole, Storage, decode_conf_change,
};

/// Election timeout used by the tests.
pub const ELECTION_TICK: usize = 10;
/// Heartbeat interval used by the tests.
pub const HEARTBEAT_TICK: usize = 1;

/// A discarding logger.
pub fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// The tests' base config for node `id`.
pub fn config(id: u64) -> Config {
    Config {
        election_tick: ELECTION_TICK,
        heartbeat_tick: HEARTBEAT_TICK,
        max_inflight_msgs: 256,
        ..Config::new(id)
    }
}

/// A node `id` whose storage is bootstrapped with `voters` / `learners`.
pub fn new_node(id: u64, voters: &[u64], learners: &[u64]) -> RawNode<MemStorage> {
    new_node_with(config(id), MemStorage::with_voters(voters, learners))
}

/// A node from a config and storage.
pub fn new_node_with(c: Config, s: MemStorage) -> RawNode<MemStorage> {
    RawNode::new(&c, s, &logger()).expect("valid node")
}

/// An entry (index, term) with no payload.
pub fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Default::default()
    }
}

/// Entries from (index, term) pairs.
pub fn ents(pairs: &[(u64, u64)]) -> Vec<Entry> {
    pairs.iter().map(|&(i, t)| ent(i, t)).collect()
}

/// Entries 1..=n with the given terms.
pub fn ents_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| ent(i as u64 + 1, t))
        .collect()
}

/// A storage holding `entries` and hard state `term`, with `voters`.
pub fn storage_with(voters: &[u64], entries: &[Entry], term: u64) -> MemStorage {
    let s = MemStorage::with_voters(voters, &[]);
    s.wl().append(entries).unwrap();
    s.wl().set_hardstate(HardState {
        term,
        ..Default::default()
    });
    s
}

/// A message of type `t` from `from` to `to` in `term`.
pub fn msg(t: MessageType, from: u64, to: u64, term: u64) -> Message {
    Message {
        msg_type: t as i32,
        from,
        to,
        term,
        ..Default::default()
    }
}

/// An append from `from` to `to`.
pub fn append_msg(
    from: u64,
    to: u64,
    term: u64,
    prev: (u64, u64),
    entries: Vec<Entry>,
    commit: u64,
) -> Message {
    let mut m = msg(MessageType::MsgAppend, from, to, term);
    m.index = prev.0;
    m.log_term = prev.1;
    m.entries = entries;
    m.commit = commit;
    m
}

/// A proposal message with `data`.
pub fn propose_msg(data: &[u8]) -> Message {
    let mut m = msg(MessageType::MsgPropose, 0, 0, 0);
    m.entries = vec![Entry {
        data: data.to_vec().into(),
        ..Default::default()
    }];
    m
}

/// A snapshot at (index, term) with `voters`.
pub fn snapshot(index: u64, term: u64, voters: &[u64]) -> Snapshot {
    Snapshot {
        data: Default::default(),
        metadata: Some(SnapshotMetadata {
            index,
            term,
            conf_state: Some(ConfState {
                voters: voters.to_vec(),
                ..Default::default()
            }),
        }),
    }
}

/// A v1 conf change.
pub fn conf_change(t: ConfChangeType, node_id: u64) -> ConfChange {
    let mut cc = ConfChange {
        node_id,
        ..Default::default()
    };
    cc.set_change_type(t);
    cc
}

/// A v2 conf change with the given transition and changes.
pub fn conf_change_v2(
    transition: flotilla_proto::eraftpb::ConfChangeTransition,
    changes: &[(ConfChangeType, u64)],
) -> ConfChangeV2 {
    let mut cc = ConfChangeV2 {
        changes: changes
            .iter()
            .map(|&(t, id)| flotilla_raftstore::raft::confchange::single(t, id))
            .collect(),
        ..Default::default()
    };
    cc.set_transition(transition);
    cc
}

/// Takes every message a node queued (immediate and after-persist).
pub fn take_msgs(r: &mut Raft<MemStorage>) -> Vec<Message> {
    r.take_all_msgs()
}

/// Persists a ready into `store` (snapshot, entries, hard state).
pub fn persist(store: &MemStorage, rd: &Ready) {
    if let Some(s) = &rd.snapshot {
        store.wl().apply_snapshot(Snapshot::clone(s)).unwrap();
    }
    store.wl().append(&rd.entries).unwrap();
    if let Some(hs) = &rd.hs {
        store.wl().set_hardstate(*hs);
    }
}

/// An in-memory cluster.
pub struct Network {
    /// The nodes, by id.
    pub nodes: BTreeMap<u64, RawNode<MemStorage>>,
    /// Each node's storage (shared with the node).
    pub storage: BTreeMap<u64, MemStorage>,
    /// Normal entries each node applied, in order (data only).
    pub applied: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Read states each node received, in order: (index, context).
    pub reads: BTreeMap<u64, Vec<(u64, Vec<u8>)>>,
    /// Directed links that drop everything.
    cut: BTreeSet<(u64, u64)>,
    /// Message types that are dropped everywhere.
    ignored: BTreeSet<i32>,
    /// Every message delivered (for assertions).
    pub delivered: Vec<Message>,
    /// Whether committed conf changes are applied automatically.
    pub auto_apply_conf: bool,
}

impl Network {
    /// A cluster of `ids`, all voters, with the test config.
    pub fn new(ids: &[u64]) -> Self {
        Self::new_with(ids, |_| {})
    }

    /// A cluster of `ids` with `f` applied to each node's config.
    pub fn new_with(ids: &[u64], f: impl Fn(&mut Config)) -> Self {
        Self::new_with_members(ids, ids, &[], f)
    }

    /// Nodes `ids` whose bootstrap configuration is `voters` + `learners`.
    pub fn new_with_members(
        ids: &[u64],
        voters: &[u64],
        learners: &[u64],
        f: impl Fn(&mut Config),
    ) -> Self {
        let mut net = Network {
            nodes: BTreeMap::new(),
            storage: BTreeMap::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            cut: BTreeSet::new(),
            ignored: BTreeSet::new(),
            delivered: Vec::new(),
            auto_apply_conf: true,
        };
        for &id in ids {
            let mut c = config(id);
            f(&mut c);
            let s = MemStorage::with_voters(voters, learners);
            net.add_node(id, c, s);
        }
        net
    }

    /// Adds a node with its own config and storage.
    pub fn add_node(&mut self, id: u64, c: Config, s: MemStorage) {
        self.nodes.insert(id, new_node_with(c, s.clone()));
        self.storage.insert(id, s);
        self.applied.entry(id).or_default();
    }

    /// Restarts `id` from its storage only (volatile state is lost).
    pub fn restart(&mut self, id: u64, c: Config) {
        let s = self.storage[&id].clone();
        self.applied.insert(id, Vec::new());
        self.nodes.insert(id, new_node_with(c, s));
    }

    /// The state machine of `id`.
    pub fn raft(&self, id: u64) -> &Raft<MemStorage> {
        &self.nodes[&id].raft
    }

    /// The node `id`.
    pub fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).expect("node exists")
    }

    /// The ids of nodes that think they lead, with their terms.
    pub fn leaders(&self) -> Vec<(u64, u64)> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raft.state() == StateRole::Leader)
            .map(|(id, n)| (*id, n.raft.term()))
            .collect()
    }

    /// Drops every message on the link `from -> to`.
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    /// Drops every message between `a` and `b`.
    pub fn cut(&mut self, a: u64, b: u64) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Drops every message to and from `id`.
    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut(id, other);
            }
        }
    }

    /// Drops every message of type `t`.
    pub fn ignore(&mut self, t: MessageType) {
        self.ignored.insert(t as i32);
    }

    /// Removes every filter.
    pub fn recover(&mut self) {
        self.cut.clear();
        self.ignored.clear();
    }

    fn filtered(&self, m: &Message) -> bool {
        self.cut.contains(&(m.from, m.to)) || self.ignored.contains(&m.msg_type)
    }

    /// Runs `id`'s Ready loop until it is quiet; returns the messages it
    /// produced.
    pub fn process(&mut self, id: u64) -> Vec<Message> {
        let mut out = Vec::new();
        let Some(node) = self.nodes.get_mut(&id) else {
            return out;
        };
        let store = self.storage[&id].clone();
        while node.has_ready() {
            let mut rd = node.ready();
            self.reads.entry(id).or_default().extend(
                rd.read_states
                    .iter()
                    .map(|r| (r.index, r.request_ctx.to_vec())),
            );
            out.append(&mut rd.take_messages());
            persist(&store, &rd);
            out.append(&mut rd.take_persisted_messages());
            let committed = rd.take_committed_entries();
            let mut to_apply = committed;
            let mut lr = node.advance_append(rd);
            loop {
                for e in &to_apply {
                    apply_entry(
                        node,
                        &store,
                        e,
                        self.auto_apply_conf,
                        self.applied.get_mut(&id),
                    );
                }
                if let Some(last) = to_apply.last() {
                    node.advance_apply_to(last.index);
                }
                out.append(&mut lr.messages);
                if let Some(c) = lr.commit_index {
                    store.wl().mut_hard_state().commit = c;
                }
                if lr.committed_entries.is_empty() {
                    break;
                }
                to_apply = std::mem::take(&mut lr.committed_entries);
                lr.messages = Vec::new();
                lr.commit_index = None;
            }
        }
        out
    }

    /// Delivers `msgs` and everything they cause, until quiet.
    pub fn send(&mut self, msgs: Vec<Message>) {
        let mut queue: VecDeque<Message> = msgs.into();
        while let Some(m) = queue.pop_front() {
            if self.filtered(&m) {
                continue;
            }
            let to = m.to;
            self.delivered.push(m.clone());
            let Some(node) = self.nodes.get_mut(&to) else {
                continue;
            };
            let _ = node.step(m);
            queue.extend(self.process(to));
        }
    }

    /// Processes every node and delivers everything until quiet.
    pub fn settle(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut msgs = Vec::new();
        for id in ids {
            msgs.extend(self.process(id));
        }
        self.send(msgs);
    }

    /// Requests a read at `id`, delivers everything, and returns the read
    /// states `id` received meanwhile.
    pub fn read_index(&mut self, id: u64, ctx: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let before = self.reads.get(&id).map_or(0, |r| r.len());
        let _ = self.node(id).read_index(ctx.to_vec());
        let msgs = self.process(id);
        self.send(msgs);
        self.reads
            .get(&id)
            .map_or(Vec::new(), |r| r[before..].to_vec())
    }

    /// Makes `id` campaign and delivers the election.
    pub fn campaign(&mut self, id: u64) {
        let _ = self.node(id).campaign();
        let msgs = self.process(id);
        self.send(msgs);
    }

    /// Proposes `data` at `id` and delivers the replication.
    pub fn propose(&mut self, id: u64, data: &[u8]) -> flotilla_raftstore::raft::Result<()> {
        let r = self.node(id).propose(vec![], data.to_vec());
        let msgs = self.process(id);
        self.send(msgs);
        r
    }

    /// Ticks `id` `n` times, delivering after each tick.
    pub fn tick(&mut self, id: u64, n: usize) {
        for _ in 0..n {
            self.node(id).tick();
            let msgs = self.process(id);
            self.send(msgs);
        }
    }

    /// Ticks every node `n` times, delivering after each round.
    pub fn tick_all(&mut self, n: usize) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for _ in 0..n {
            let mut msgs = Vec::new();
            for &id in &ids {
                self.node(id).tick();
                msgs.extend(self.process(id));
            }
            self.send(msgs);
        }
    }

    /// Elects `id` (campaign + deliver) and asserts it won.
    pub fn elect(&mut self, id: u64) {
        self.campaign(id);
        assert_eq!(self.raft(id).state(), StateRole::Leader, "{id} should lead");
    }
}

/// Applies one committed entry: conf changes go to the node and storage,
/// normal entries with data are recorded.
pub fn apply_entry(
    node: &mut RawNode<MemStorage>,
    store: &MemStorage,
    e: &Entry,
    apply_conf: bool,
    applied: Option<&mut Vec<Vec<u8>>>,
) {
    match e.entry_type() {
        EntryType::EntryNormal => {
            if let (Some(a), false) = (applied, e.data.is_empty()) {
                a.push(e.data.to_vec());
            }
        }
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
            if !apply_conf {
                return;
            }
            let cc = decode_conf_change(e).expect("valid conf change");
            if let Ok(cs) = node.apply_conf_change_v2(&cc) {
                store.wl().set_conf_state(cs);
            }
        }
    }
}

/// The storage's last index (test helper).
pub fn last_index(s: &MemStorage) -> u64 {
    s.last_index().unwrap()
}
