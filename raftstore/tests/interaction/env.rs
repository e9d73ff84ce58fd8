//! The interaction environment: a set of `RawNode`s over `MemStorage`, an
//! explicit message queue (nothing is delivered until a command says so),
//! and the Ready handling of each node (synchronous, or asynchronous with a
//! separate "append thread"). Every step is written to a transcript.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use flotilla_proto::eraftpb::{
    ConfChange, Entry, EntryType, HardState, Message, MessageType, Snapshot,
};
use flotilla_raftstore::raft::{Config, MemStorage, RawNode, Ready, decode_conf_change};
use prost::Message as _;

use super::format::{
    describe_conf_state, describe_entry, describe_hard_state, describe_light_ready,
    describe_message, describe_ready, describe_snapshot,
};
use super::logger::LogBuffer;

/// Upper bound on the rounds of one `stabilize` (a livelock guard).
pub const MAX_STABILIZE_ROUNDS: usize = 1000;
/// Indentation of the lines below a `> N ...` header.
const INDENT: &str = "  ";

/// How much of what happens is written to the transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Only what commands print explicitly (status, logs, errors).
    None,
    /// Also readies, persisted writes and delivered messages.
    Info,
    /// Also the consensus core's own log lines.
    Debug,
}

/// A write the node handed out in a Ready and that the (simulated) append
/// thread has not made durable yet.
pub struct PendingWrite {
    /// The Ready's number, for `on_persist_ready`.
    pub number: u64,
    /// Snapshot to install.
    pub snapshot: Option<Snapshot>,
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// Hard state to store.
    pub hs: Option<HardState>,
    /// Messages released once the write is durable.
    pub msgs: Vec<Message>,
}

/// One node of the environment.
pub struct Node {
    /// The raft node.
    pub raw: RawNode<MemStorage>,
    /// Its durable storage (shared with `raw`).
    pub store: MemStorage,
    /// The config it was created with (reused on restart).
    pub config: Config,
    /// Persist in the append thread instead of inside `process-ready`.
    pub async_writes: bool,
    /// Async writes not yet durable, oldest first.
    pub pending: VecDeque<PendingWrite>,
}

/// The whole environment.
pub struct InteractionEnv {
    /// The nodes, by id.
    pub nodes: BTreeMap<u64, Node>,
    /// Messages sent and not yet delivered, in send order.
    pub outbox: Vec<Message>,
    /// Nodes whose messages (both ways) are dropped.
    pub isolated: BTreeSet<u64>,
    /// Transcript verbosity.
    pub level: LogLevel,
    /// The output of the current command.
    pub out: String,
    /// Captured core log lines.
    pub logs: LogBuffer,
}

impl Default for InteractionEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl InteractionEnv {
    /// An empty environment at log level `info`.
    pub fn new() -> Self {
        InteractionEnv {
            nodes: BTreeMap::new(),
            outbox: Vec::new(),
            isolated: BTreeSet::new(),
            level: LogLevel::Info,
            out: String::new(),
            logs: LogBuffer::default(),
        }
    }

    /// Writes a line to the output unconditionally.
    pub fn line(&mut self, indent: &str, s: impl AsRef<str>) {
        self.out.push_str(indent);
        self.out.push_str(s.as_ref());
        self.out.push('\n');
    }

    /// Writes a line when the level is at least `info`.
    pub fn info(&mut self, indent: &str, s: impl AsRef<str>) {
        if self.level >= LogLevel::Info {
            self.line(indent, s);
        }
    }

    /// Writes the captured core log lines (level `debug`) or drops them.
    pub fn flush_logs(&mut self, indent: &str) {
        let lines = self.logs.take();
        if self.level >= LogLevel::Debug {
            for l in lines {
                self.line(indent, l);
            }
        }
    }

    /// The node `id`.
    ///
    /// # Errors
    ///
    /// If there is no such node.
    pub fn node(&mut self, id: u64) -> Result<&mut Node, String> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| format!("no node {id}"))
    }

    /// Adds a node with its config and (bootstrapped or empty) storage.
    ///
    /// # Errors
    ///
    /// If the node cannot be created (e.g. an invalid config).
    pub fn add_node(
        &mut self,
        config: Config,
        store: MemStorage,
        async_writes: bool,
    ) -> Result<(), String> {
        let id = config.id;
        let raw =
            RawNode::new(&config, store.clone(), &self.logs.logger()).map_err(|e| e.to_string())?;
        self.flush_logs("");
        let summary = node_summary(&raw);
        self.nodes.insert(
            id,
            Node {
                raw,
                store,
                config,
                async_writes,
                pending: VecDeque::new(),
            },
        );
        self.line("", summary);
        Ok(())
    }

    /// Recreates `id` from its storage: volatile state and unpersisted
    /// async writes are lost; the state machine keeps what it applied.
    ///
    /// # Errors
    ///
    /// If there is no such node or it cannot be recreated.
    pub fn restart(&mut self, id: u64) -> Result<(), String> {
        let node = self.node(id)?;
        let mut config = node.config.clone();
        config.applied = node.raw.raft.raft_log().applied;
        let store = node.store.clone();
        let async_writes = node.async_writes;
        self.add_node(config, store, async_writes)
    }

    /// Queues messages for delivery (dropping those of isolated nodes).
    pub fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if self.isolated.contains(&m.from) || self.isolated.contains(&m.to) {
                continue;
            }
            self.outbox.push(m);
        }
    }

    /// Handles one Ready of `id`: persist (unless async), send, apply,
    /// advance. Prints the Ready and what followed.
    ///
    /// # Errors
    ///
    /// If there is no such node or persisting fails.
    pub fn process_ready(&mut self, id: u64, indent: &str) -> Result<(), String> {
        let node = self.node(id)?;
        if !node.raw.has_ready() {
            return Ok(());
        }
        let mut rd = node.raw.ready();
        let lines = describe_ready(&rd);
        for l in lines {
            self.info(indent, l);
        }
        if self.node(id)?.async_writes {
            self.process_ready_async(id, rd, indent)
        } else {
            self.process_ready_sync(id, &mut rd, indent)?;
            Ok(())
        }
    }

    fn process_ready_sync(&mut self, id: u64, rd: &mut Ready, indent: &str) -> Result<(), String> {
        let node = self.node(id)?;
        persist(
            &node.store,
            rd.snapshot.as_deref().cloned(),
            &rd.entries,
            rd.hs,
        )?;
        let mut msgs = rd.take_messages();
        msgs.append(&mut rd.take_persisted_messages());
        let committed = rd.take_committed_entries();
        self.send(msgs);
        self.apply(id, &committed, indent)?;
        let node = self.node(id)?;
        let mut lr = node.raw.advance_append(std::mem::take(rd));
        self.flush_logs(indent);
        loop {
            for l in describe_light_ready(&lr) {
                self.info(indent, l);
            }
            let node = self.node(id)?;
            if let Some(c) = lr.commit_index {
                node.store.wl().mut_hard_state().commit = c;
            }
            let msgs = std::mem::take(&mut lr.messages);
            let committed = std::mem::take(&mut lr.committed_entries);
            self.send(msgs);
            if committed.is_empty() {
                return Ok(());
            }
            self.apply(id, &committed, indent)?;
            // Applying may have produced more (e.g. an auto-leave proposal
            // is handed out by the next Ready, not here).
            lr = Default::default();
        }
    }

    fn process_ready_async(&mut self, id: u64, mut rd: Ready, indent: &str) -> Result<(), String> {
        let msgs = rd.take_messages();
        let committed = rd.take_committed_entries();
        let write = PendingWrite {
            number: rd.number(),
            snapshot: rd.snapshot.take().map(|s| *s),
            entries: std::mem::take(&mut rd.entries),
            hs: rd.hs,
            msgs: rd.take_persisted_messages(),
        };
        self.send(msgs);
        let node = self.node(id)?;
        let has_write = write.snapshot.is_some()
            || !write.entries.is_empty()
            || write.hs.is_some()
            || !write.msgs.is_empty();
        if has_write {
            node.pending.push_back(write);
        }
        node.raw.advance_append_async(rd);
        self.apply(id, &committed, indent)
    }

    /// The append thread of an async node makes every pending write durable,
    /// reports it with `on_persist_ready` and sends the messages that waited
    /// for it.
    ///
    /// # Errors
    ///
    /// If there is no such node or persisting fails.
    pub fn process_append_thread(&mut self, id: u64, indent: &str) -> Result<(), String> {
        let writes: Vec<PendingWrite> = self.node(id)?.pending.drain(..).collect();
        for w in writes {
            let mut lines = vec![format!("Persisted Ready #{}:", w.number)];
            if let Some(hs) = &w.hs {
                lines.push(describe_hard_state(hs));
            }
            if let Some(s) = &w.snapshot {
                lines.push(format!("Snapshot {}", describe_snapshot(s)));
            }
            if !w.entries.is_empty() {
                lines.push("Entries:".to_string());
                lines.extend(w.entries.iter().map(describe_entry));
            }
            if !w.msgs.is_empty() {
                lines.push("Messages:".to_string());
                lines.extend(w.msgs.iter().map(describe_message));
            }
            for l in lines {
                self.info(indent, l);
            }
            let node = self.node(id)?;
            persist(&node.store, w.snapshot, &w.entries, w.hs)?;
            node.raw.on_persist_ready(w.number);
            self.flush_logs(indent);
            self.send(w.msgs);
        }
        Ok(())
    }

    /// Applies committed entries: conf changes go to the node and its
    /// storage; everything is then marked applied.
    fn apply(&mut self, id: u64, ents: &[Entry], indent: &str) -> Result<(), String> {
        let Some(last) = ents.last().map(|e| e.index) else {
            return Ok(());
        };
        for e in ents {
            if e.entry_type() == EntryType::EntryNormal {
                continue;
            }
            let node = self.node(id)?;
            let res = if e.entry_type() == EntryType::EntryConfChange {
                ConfChange::decode(e.data.as_ref())
                    .map_err(|err| err.to_string())
                    .and_then(|cc| {
                        node.raw
                            .apply_conf_change(&cc)
                            .map_err(|err| err.to_string())
                    })
            } else {
                decode_conf_change(e)
                    .and_then(|cc| node.raw.apply_conf_change_v2(&cc))
                    .map_err(|err| err.to_string())
            };
            match res {
                Ok(cs) => {
                    node.store.wl().set_conf_state(cs.clone());
                    self.flush_logs(indent);
                    self.info(
                        indent,
                        format!(
                            "INFO {id} switched to configuration {}",
                            describe_conf_state(&cs)
                        ),
                    );
                }
                Err(err) => {
                    self.flush_logs(indent);
                    self.line(
                        indent,
                        format!("ERROR {id} applying {}: {err}", describe_entry(e)),
                    );
                }
            }
        }
        self.node(id)?.raw.advance_apply_to(last);
        self.flush_logs(indent);
        Ok(())
    }

    /// Delivers (in send order) the queued messages addressed to `targets`
    /// (every node if empty) and of type `only` (any if `None`); those to
    /// `drop` are discarded. Returns how many messages were taken.
    pub fn deliver(
        &mut self,
        targets: &BTreeSet<u64>,
        drop: &BTreeSet<u64>,
        only: Option<MessageType>,
        indent: &str,
    ) -> usize {
        let selected = |m: &Message| {
            (targets.is_empty() || targets.contains(&m.to) || drop.contains(&m.to))
                && only.is_none_or(|t| m.msg_type() == t)
        };
        let (take, keep): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.outbox)
            .into_iter()
            .partition(selected);
        self.outbox = keep;
        let n = take.len();
        for m in take {
            let desc = describe_message(&m);
            if drop.contains(&m.to) {
                self.info(indent, format!("dropped: {desc}"));
                continue;
            }
            self.info(indent, &desc);
            let Some(node) = self.nodes.get_mut(&m.to) else {
                self.line(indent, format!("dropped (no node {}): {desc}", m.to));
                continue;
            };
            let res = node.raw.step(m);
            self.flush_logs(indent);
            if let Err(e) = res {
                self.line(indent, format!("ERROR {e}"));
            }
        }
        n
    }

    /// Processes readies, append threads and deliveries of `ids` (every
    /// node if empty) until nothing moves.
    pub fn stabilize(&mut self, ids: &BTreeSet<u64>) -> Result<(), String> {
        let ids: Vec<u64> = if ids.is_empty() {
            self.nodes.keys().copied().collect()
        } else {
            ids.iter().copied().collect()
        };
        for _ in 0..MAX_STABILIZE_ROUNDS {
            let mut moved = false;
            for &id in &ids {
                if self.node(id)?.raw.has_ready() {
                    moved = true;
                    self.info("", format!("> {id} handling Ready"));
                    self.process_ready(id, INDENT)?;
                }
            }
            for &id in &ids {
                if !self.node(id)?.pending.is_empty() {
                    moved = true;
                    self.info("", format!("> {id} processing append thread"));
                    self.process_append_thread(id, INDENT)?;
                }
            }
            for &id in &ids {
                if self.outbox.iter().any(|m| m.to == id) {
                    moved = true;
                    self.info("", format!("> {id} receiving messages"));
                    let target = BTreeSet::from([id]);
                    self.deliver(&target, &BTreeSet::new(), None, INDENT);
                }
            }
            if !moved {
                return Ok(());
            }
        }
        Err(format!(
            "stabilize did not converge in {MAX_STABILIZE_ROUNDS} rounds"
        ))
    }
}

/// Writes a Ready's durable parts to `store` (snapshot, entries, hard state).
fn persist(
    store: &MemStorage,
    snapshot: Option<Snapshot>,
    entries: &[Entry],
    hs: Option<HardState>,
) -> Result<(), String> {
    let mut core = store.wl();
    if let Some(s) = snapshot {
        core.apply_snapshot(s).map_err(|e| e.to_string())?;
    }
    core.append(entries).map_err(|e| e.to_string())?;
    if let Some(hs) = hs {
        core.set_hardstate(hs);
    }
    Ok(())
}

/// `1: Term:0 Commit:2 Applied:2 LastIndex:2 LastTerm:1 ConfState:voters=(1 2 3)`.
pub fn node_summary(raw: &RawNode<MemStorage>) -> String {
    let r = &raw.raft;
    let log = r.raft_log();
    format!(
        "{}: Term:{} Vote:{} Commit:{} Applied:{} LastIndex:{} LastTerm:{} ConfState:{}",
        r.id(),
        r.term(),
        r.vote(),
        log.committed,
        log.applied,
        log.last_index(),
        log.last_term(),
        describe_conf_state(&r.prs().conf_state())
    )
}
