//! `RawNode`: the application's handle on one raft group, with the
//! Ready/advance protocol (synchronous and asynchronous persistence).
//!
//! The loop: call [`RawNode::ready`] when [`RawNode::has_ready`]; send
//! `messages` at once; persist `snapshot`, `entries` and `hs`; then send
//! `persisted_messages`, apply `committed_entries`, and call
//! [`RawNode::advance`] (or, when persisting asynchronously,
//! [`RawNode::advance_append_async`] now and [`RawNode::on_persist_ready`]
//! once the write is durable).

use bytes::Bytes;
use flotilla_proto::eraftpb::{
    ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message, MessageType,
    Snapshot,
};
use prost::Message as _;
use slog::Logger;

use super::config::Config;
use super::core::{INVALID_ID, MAX_TERM, Raft, SoftState};
use super::errors::{Error, Result};
use super::read_only::ReadState;
use super::status::Status;
use super::storage::Storage;

/// What one `Ready` asked to persist, to be matched with `on_persist_ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ReadyRecord {
    number: u64,
    /// (index, term) of the last entry handed out, if any.
    last_entry: Option<(u64, u64)>,
    /// Index of the snapshot handed out, if any.
    snapshot: Option<u64>,
}

/// Everything the application must do after a batch of steps.
#[derive(Debug, Default)]
pub struct Ready {
    number: u64,
    /// The new soft state, if it changed.
    pub ss: Option<SoftState>,
    /// The new hard state, if it changed; persist before sending
    /// `persisted_messages`.
    pub hs: Option<HardState>,
    /// Entries to append to storage (they may overwrite a suffix).
    pub entries: Vec<Entry>,
    /// A snapshot to install, if any (persist before the entries). Boxed:
    /// rare, and it would otherwise double the size of every `Ready`.
    pub snapshot: Option<Box<Snapshot>>,
    /// Committed, durable entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Messages that may be sent immediately (a leader's appends and
    /// heartbeats: its own write may still be in flight).
    pub messages: Vec<Message>,
    /// Messages to send only after this Ready's `hs`, `entries` and
    /// `snapshot` are durable (acknowledgements, votes).
    pub persisted_messages: Vec<Message>,
    /// Confirmed reads.
    pub read_states: Vec<ReadState>,
    /// True if the write must be synced (a vote/term change or new entries).
    pub must_sync: bool,
}

impl Ready {
    /// The number identifying this Ready for [`RawNode::on_persist_ready`].
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Takes the immediate messages.
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    /// Takes the messages to send after persistence.
    pub fn take_persisted_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.persisted_messages)
    }

    /// Takes the committed entries.
    pub fn take_committed_entries(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.committed_entries)
    }
}

/// What remains after `advance`: a new commit index, more committed entries
/// (now durable), and messages that became sendable.
#[derive(Debug, Default, PartialEq)]
pub struct LightReady {
    /// The new commit index, if it moved.
    pub commit_index: Option<u64>,
    /// More entries to apply.
    pub committed_entries: Vec<Entry>,
    /// Messages to send.
    pub messages: Vec<Message>,
}

/// One raft group's node, driven by the application.
pub struct RawNode<S: Storage> {
    /// The state machine (exposed for inspection and tests).
    pub raft: Raft<S>,
    prev_ss: SoftState,
    prev_hs: HardState,
    max_number: u64,
    /// Readies handed out and not yet reported persisted, oldest first.
    records: PendingRecords,
}

/// The [`ReadyRecord`]s not yet persisted, oldest first. The usual case,
/// one outstanding Ready, lives inline: no allocation per Ready.
///
/// Invariant: `tail` is empty when `head` is `None`; `head` is older than
/// every record of `tail`.
#[derive(Debug, Default)]
struct PendingRecords {
    head: Option<ReadyRecord>,
    tail: Vec<ReadyRecord>,
}

impl PendingRecords {
    fn push(&mut self, r: ReadyRecord) {
        if self.head.is_none() {
            self.head = Some(r);
        } else {
            self.tail.push(r);
        }
    }

    /// Removes and returns the oldest record if its Ready number is at most
    /// `number`.
    fn pop_persisted(&mut self, number: u64) -> Option<ReadyRecord> {
        let head = self.head.filter(|h| h.number <= number)?;
        self.head = if self.tail.is_empty() {
            None
        } else {
            Some(self.tail.remove(0))
        };
        if self.tail.is_empty() && self.tail.capacity() > 0 {
            // An idle group holds no heap for records.
            self.tail = Vec::new();
        }
        Some(head)
    }

    fn heap_bytes(&self) -> usize {
        self.tail.capacity() * std::mem::size_of::<ReadyRecord>()
    }
}

/// `RawNode<S>` is `Send` whenever `S` is.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<RawNode<super::storage::MemStorage>>();
};

impl<S: Storage> RawNode<S> {
    /// Creates a node from `store`'s persisted state.
    ///
    /// # Errors
    ///
    /// Invalid config, storage failure, or an invalid stored conf state.
    pub fn new(config: &Config, store: S, logger: &Logger) -> Result<Self> {
        let raft = Raft::new(config, store, logger)?;
        let prev_hs = raft.hard_state();
        let prev_ss = raft.soft_state();
        Ok(RawNode {
            raft,
            prev_ss,
            prev_hs,
            max_number: 0,
            records: PendingRecords::default(),
        })
    }

    /// Advances the clock one tick. Returns true if the tick may have
    /// produced work (an election or heartbeats).
    pub fn tick(&mut self) -> bool {
        self.raft.tick()
    }

    /// Starts an election now.
    ///
    /// # Errors
    ///
    /// Never in practice; kept for API symmetry with `step`.
    pub fn campaign(&mut self) -> Result<()> {
        self.raft.step(local(MessageType::MsgHup))
    }

    /// Proposes `data` (with `context`) to be appended to the log.
    ///
    /// # Errors
    ///
    /// [`Error::ProposalDropped`] if no leader is known, forwarding is
    /// disabled, a transfer is in progress, or the uncommitted limit is hit.
    pub fn propose(&mut self, context: Vec<u8>, data: Vec<u8>) -> Result<()> {
        let e = Entry {
            data: data.into(),
            context: context.into(),
            ..Default::default()
        };
        self.propose_entry(e)
    }

    fn propose_entry(&mut self, e: Entry) -> Result<()> {
        let mut m = local(MessageType::MsgPropose);
        m.from = self.raft.id();
        m.entries = vec![e];
        self.raft.step(m)
    }

    /// Proposes a v1 (single-step) membership change.
    ///
    /// # Errors
    ///
    /// As [`RawNode::propose`].
    pub fn propose_conf_change(&mut self, context: Vec<u8>, cc: &ConfChange) -> Result<()> {
        let mut e = Entry {
            data: cc.encode_to_vec().into(),
            context: context.into(),
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryConfChange);
        self.propose_entry(e)
    }

    /// Proposes a v2 (possibly joint) membership change; an empty change
    /// leaves a joint configuration.
    ///
    /// # Errors
    ///
    /// As [`RawNode::propose`].
    pub fn propose_conf_change_v2(&mut self, context: Vec<u8>, cc: &ConfChangeV2) -> Result<()> {
        let mut e = Entry {
            data: cc.encode_to_vec().into(),
            context: context.into(),
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryConfChangeV2);
        self.propose_entry(e)
    }

    /// Applies a committed conf change (v1) and returns the new conf state.
    ///
    /// # Errors
    ///
    /// [`Error::ConfChangeError`] if it does not apply.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState> {
        self.raft
            .apply_conf_change(&super::confchange::v1_to_v2(cc))
    }

    /// Applies a committed conf change (v2) and returns the new conf state.
    ///
    /// # Errors
    ///
    /// [`Error::ConfChangeError`] if it does not apply.
    pub fn apply_conf_change_v2(&mut self, cc: &ConfChangeV2) -> Result<ConfState> {
        self.raft.apply_conf_change(cc)
    }

    /// Steps a message received from a peer.
    ///
    /// # Errors
    ///
    /// [`Error::StepLocalMsg`] for a local-only message type,
    /// [`Error::InvalidMessage`] for one no correct peer sends (see
    /// [`check_wire_message`]), [`Error::StepPeerNotFound`] for a response
    /// from a non-member, and the errors of [`Raft::step`].
    pub fn step(&mut self, m: Message) -> Result<()> {
        let t = m.msg_type();
        if is_local_msg(t) {
            return Err(Error::StepLocalMsg);
        }
        check_wire_message(&m, t)?;
        if is_response_msg(t) && self.raft.prs().get(m.from).is_none() {
            return Err(Error::StepPeerNotFound(m.from));
        }
        self.raft.step_typed(m, t)
    }

    /// Requests a linearizable read; the answer arrives as a [`ReadState`]
    /// with the same context.
    ///
    /// # Errors
    ///
    /// [`Error::ProposalDropped`] if no leader is known.
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<()> {
        let mut m = local(MessageType::MsgReadIndex);
        m.from = self.raft.id();
        m.entries = vec![Entry {
            data: Bytes::from(ctx),
            ..Default::default()
        }];
        self.raft.step(m)
    }

    /// Asks the leader for a snapshot at or past the last index (see
    /// [`Raft::request_snapshot`](crate::raft::Raft::request_snapshot)).
    ///
    /// # Errors
    /// [`Error::RequestSnapshotDropped`] on a leader, without a known
    /// leader, while a snapshot is being restored, or while the last entry
    /// is not of the current term.
    pub fn request_snapshot(&mut self) -> Result<()> {
        self.raft.request_snapshot()
    }

    /// Holds (`true`) or releases this node's campaigns. While held it
    /// does not campaign: not on its election timeout, not on
    /// [`RawNode::campaign`], not when a leader transfers leadership to it
    /// (the transfer times out on the leader). It still votes, follows and
    /// acknowledges. For an application that cannot apply the committed
    /// log for now: elected, this node could serve nothing.
    pub fn hold_campaigns(&mut self, held: bool) {
        self.raft.campaigns_held = held;
    }

    /// Asks the leader to transfer leadership to `transferee`.
    pub fn transfer_leader(&mut self, transferee: u64) {
        let mut m = local(MessageType::MsgTransferLeader);
        m.from = transferee;
        // Dropped when no leader is known: nothing to transfer.
        let _ = self.raft.step(m);
    }

    /// Broadcasts a heartbeat to every follower now if this node leads
    /// (a no-op otherwise), as its heartbeat tick would.
    pub fn ping(&mut self) {
        // A follower or candidate drops a local beat.
        let _ = self.raft.step(local(MessageType::MsgBeat));
    }

    /// Reports that `id` could not be reached (its progress goes back to probe).
    pub fn report_unreachable(&mut self, id: u64) {
        let mut m = local(MessageType::MsgUnreachable);
        m.from = id;
        let _ = self.raft.step(m);
    }

    /// Reports the outcome of sending a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: u64, success: bool) {
        let mut m = local(MessageType::MsgSnapStatus);
        m.from = id;
        m.reject = !success;
        let _ = self.raft.step(m);
    }

    /// True if there is anything for the application to do.
    pub fn has_ready(&self) -> bool {
        !self.raft.msgs().is_empty()
            || !self.raft.msgs_after_persist().is_empty()
            || self.has_pending_state()
    }

    /// Whether a Ready would carry more than messages: state or entries to
    /// persist, entries to apply, confirmed reads, a broadcast to make. (A
    /// group with only messages pending is idle once they are sent: the
    /// messages waiting for persistence then wait for nothing, as the log
    /// and hard state are persisted. Hibernation asks this.)
    pub fn has_pending_state(&self) -> bool {
        let r = &self.raft;
        let log = r.raft_log();
        r.soft_state() != self.prev_ss
            || r.hard_state() != self.prev_hs
            || (log.unstable.snapshot.is_some() && !log.unstable.snapshot_handed)
            || !log.unstable.unhanded_entries().is_empty()
            || log.has_next_entries()
            || r.has_pending_broadcast()
            || !r.read_states().is_empty()
    }

    /// Collects everything to persist, send and apply.
    pub fn ready(&mut self) -> Ready {
        self.max_number += 1;
        let number = self.max_number;
        let mut rd = Ready {
            number,
            ..Default::default()
        };
        let mut record = ReadyRecord {
            number,
            ..Default::default()
        };
        let ss = self.raft.soft_state();
        if ss != self.prev_ss {
            rd.ss = Some(ss);
            self.prev_ss = ss;
        }
        let hs = self.raft.hard_state();
        if hs != self.prev_hs {
            rd.must_sync = hs.term != self.prev_hs.term || hs.vote != self.prev_hs.vote;
            rd.hs = Some(hs);
            self.prev_hs = hs;
        }
        let max_committed = self.raft.max_committed_size_per_ready;
        let raft = &mut self.raft;
        let unstable = &mut raft.raft_log_mut().unstable;
        if let Some(snap) = unstable
            .snapshot
            .as_ref()
            .filter(|_| !unstable.snapshot_handed)
        {
            record.snapshot = Some(snap.metadata.as_ref().map_or(0, |m| m.index));
            rd.snapshot = Some(snap.clone());
            unstable.snapshot_handed = true;
            rd.must_sync = true;
        }
        let ents = unstable.unhanded_entries();
        if let Some(last) = ents.last() {
            record.last_entry = Some((last.index, last.term));
            rd.entries = ents.to_vec();
            unstable.mark_handed();
            rd.must_sync = true;
        }
        rd.committed_entries = self.take_committed(max_committed);
        self.raft.flush_broadcast();
        rd.messages = std::mem::take(&mut self.raft.msgs);
        Raft::<S>::elide_covered_heartbeats(&mut rd.messages);
        rd.persisted_messages = std::mem::take(&mut self.raft.msgs_after_persist);
        rd.read_states = std::mem::take(&mut self.raft.read_states);
        if record.last_entry.is_some() || record.snapshot.is_some() {
            self.records.push(record);
        }
        rd
    }

    fn take_committed(&mut self, max_size: u64) -> Vec<Entry> {
        let limit = (max_size != u64::MAX).then_some(max_size);
        let ents = self.raft.raft_log().next_entries(limit);
        if let Some(last) = ents.last() {
            let idx = last.index;
            self.raft.raft_log_mut().applying_to(idx);
            self.raft.reduce_uncommitted_size(&ents);
        }
        ents
    }

    /// The application made Ready `number` (and every earlier one) durable.
    pub fn on_persist_ready(&mut self, number: u64) {
        while let Some(r) = self.records.pop_persisted(number) {
            if let Some(idx) = r.snapshot {
                self.raft.on_persist_snap(idx);
            }
            if let Some((idx, term)) = r.last_entry {
                self.raft.on_persist_entries(idx, term);
            }
        }
    }

    /// The application persisted `rd` synchronously; returns what became
    /// possible (more committed entries, leader messages). Entries of `rd`
    /// are not marked applied: call [`RawNode::advance_apply`] after
    /// applying them.
    pub fn advance_append(&mut self, rd: Ready) -> LightReady {
        self.on_persist_ready(rd.number);
        self.light_ready()
    }

    /// The application will persist `rd` asynchronously and call
    /// [`RawNode::on_persist_ready`] with its number once durable.
    pub fn advance_append_async(&mut self, rd: Ready) {
        let _ = rd.number;
    }

    /// [`RawNode::advance_append`] plus marking `rd`'s committed entries
    /// applied.
    pub fn advance(&mut self, rd: Ready) -> LightReady {
        let applied = rd.committed_entries.last().map(|e| e.index);
        self.on_persist_ready(rd.number);
        if let Some(idx) = applied {
            self.advance_apply_to(idx);
        }
        self.light_ready()
    }

    fn light_ready(&mut self) -> LightReady {
        let mut lr = LightReady::default();
        let hs = self.raft.hard_state();
        if hs.commit != self.prev_hs.commit {
            lr.commit_index = Some(hs.commit);
            self.prev_hs.commit = hs.commit;
        }
        let max_committed = self.raft.max_committed_size_per_ready;
        lr.committed_entries = self.take_committed(max_committed);
        self.raft.flush_broadcast();
        lr.messages = std::mem::take(&mut self.raft.msgs);
        lr
    }

    /// Marks every entry handed out so far as applied.
    pub fn advance_apply(&mut self) {
        let applying = self.raft.raft_log().applying;
        self.advance_apply_to(applying);
    }

    /// Marks entries up to `applied` as applied.
    ///
    /// # Panics
    ///
    /// If `applied` is beyond the commit index (the application cannot have
    /// applied an uncommitted entry).
    pub fn advance_apply_to(&mut self, applied: u64) {
        if applied > self.raft.raft_log().applied {
            self.raft.commit_apply(applied);
        }
    }

    /// The node's status.
    pub fn status(&self) -> Status {
        Status::new(&self.raft)
    }

    /// The storage.
    pub fn store(&self) -> &S {
        &self.raft.raft_log().store
    }

    /// Frees every empty inflight buffer now (e.g. before hibernating).
    /// Returns the bytes freed.
    pub fn maybe_free_inflight_buffers(&mut self) -> usize {
        self.raft.maybe_free_inflight_buffers()
    }

    /// Heap bytes held by inflight buffers.
    pub fn inflight_heap_bytes(&self) -> usize {
        self.raft.inflight_heap_bytes()
    }

    /// An estimate of the heap bytes held by this node (excluding storage and
    /// the shared logger).
    pub fn heap_size(&self) -> usize {
        self.raft.heap_size() + self.records.heap_bytes()
    }
}

fn local(t: MessageType) -> Message {
    Message {
        msg_type: t as i32,
        from: INVALID_ID,
        ..Default::default()
    }
}

/// Refuses a message from the network that no correct peer sends, before
/// it touches any state (the checks that follow assume well-formed input,
/// and some assert it):
/// - a term past [`MAX_TERM`];
/// - an append whose previous entry's term is past its own term, or whose
///   entries do not run on from its previous index one by one, with terms
///   from the previous entry's term up to the message's, never falling;
/// - a snapshot from a term past the message's.
///
/// # Errors
/// [`Error::InvalidMessage`], naming what is wrong.
pub fn check_wire_message(m: &Message, t: MessageType) -> Result<()> {
    let bad = |what: String| Err(Error::InvalidMessage(what));
    if m.term > MAX_TERM {
        return bad(format!("{t:?} at term {} past the highest", m.term));
    }
    match t {
        MessageType::MsgAppend => {
            if m.log_term > m.term {
                return bad(format!(
                    "append at term {} after an entry of term {}",
                    m.term, m.log_term
                ));
            }
            let mut term = m.log_term;
            for (i, e) in m.entries.iter().enumerate() {
                let want = m.index.checked_add(i as u64 + 1);
                if want != Some(e.index) || e.term < term || e.term > m.term {
                    return bad(format!(
                        "append after ({}, {}) at term {}: entry {i} is ({}, {})",
                        m.index, m.log_term, m.term, e.index, e.term
                    ));
                }
                term = e.term;
            }
        }
        MessageType::MsgSnapshot => {
            let snap_term = m
                .snapshot
                .as_ref()
                .and_then(|s| s.metadata.as_ref())
                .map_or(0, |md| md.term);
            if snap_term > m.term {
                return bad(format!(
                    "snapshot of term {snap_term} sent at term {}",
                    m.term
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Message types that only the node itself generates.
pub fn is_local_msg(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum
    )
}

/// Message types that answer a request.
pub fn is_response_msg(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::MsgAppendResponse
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgHeartbeatResponse
            | MessageType::MsgUnreachable
            | MessageType::MsgRequestPreVoteResponse
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::core::StateRole;
    use crate::raft::storage::MemStorage;

    fn node(id: u64, voters: &[u64]) -> RawNode<MemStorage> {
        let log = Logger::root(slog::Discard, slog::o!());
        RawNode::new(&Config::new(id), MemStorage::with_voters(voters, &[]), &log).unwrap()
    }

    fn m(t: MessageType, from: u64, term: u64) -> Message {
        Message {
            msg_type: t as i32,
            from,
            to: 1,
            term,
            ..Default::default()
        }
    }

    /// checklist: election-8 (local messages from the network are refused)
    #[test]
    fn step_rejects_local_messages() {
        let mut n = node(1, &[1, 2, 3]);
        for t in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgCheckQuorum,
            MessageType::MsgSnapStatus,
            MessageType::MsgUnreachable,
        ] {
            assert_eq!(n.step(m(t, 2, 1)), Err(Error::StepLocalMsg), "{t:?}");
        }
        assert_eq!(n.raft.state(), StateRole::Follower);
    }

    /// checklist: log-3 (a ping is a heartbeat round now, on a leader only,
    /// carrying commit = min(match, committed))
    #[test]
    fn ping_heartbeats_only_on_a_leader() {
        let mut n = node(1, &[1, 2, 3]);
        n.ping();
        assert!(n.raft.msgs().is_empty(), "a follower pinged");
        n.raft.become_candidate();
        n.raft.become_leader();
        n.raft.msgs.clear();
        n.ping();
        let mut to: Vec<(u64, u64)> = n
            .raft
            .msgs()
            .iter()
            .filter(|m| m.msg_type() == MessageType::MsgHeartbeat)
            .map(|m| (m.to, m.commit))
            .collect();
        to.sort_unstable();
        assert_eq!(to, vec![(2, 0), (3, 0)]);
    }

    fn to_of(msgs: &[Message], t: MessageType) -> Vec<u64> {
        let mut to: Vec<u64> = msgs
            .iter()
            .filter(|m| m.msg_type() == t)
            .map(|m| m.to)
            .collect();
        to.sort_unstable();
        to
    }

    /// checklist: log-3 (the append that reaches a follower in the same
    /// Ready carries what a plain heartbeat would: the heartbeat is dropped;
    /// a heartbeat with a read context, to another follower, or beside an
    /// append of another term stays)
    #[test]
    fn an_append_in_the_same_ready_covers_a_plain_heartbeat() {
        let beat = |to, term, commit, ctx: &[u8]| Message {
            msg_type: MessageType::MsgHeartbeat as i32,
            to,
            term,
            commit,
            context: Bytes::copy_from_slice(ctx),
            ..Default::default()
        };
        let append = |to, term, no_ack| Message {
            msg_type: MessageType::MsgAppend as i32,
            to,
            term,
            no_ack,
            ..Default::default()
        };
        let mut msgs = vec![
            beat(2, 3, 7, b""),
            beat(3, 3, 7, b""),
            beat(4, 3, 7, b"read"),
            beat(5, 3, 7, b""),
            // To a peer just added: the beat that may create it.
            beat(6, 3, 0, b""),
            beat(7, 3, 7, b""),
            append(2, 3, false),
            append(4, 3, false),
            append(5, 2, false),
            append(6, 3, false),
            // Asks no answer: the heartbeat's answer is still wanted.
            append(7, 3, true),
        ];
        Raft::<MemStorage>::elide_covered_heartbeats(&mut msgs);
        assert_eq!(to_of(&msgs, MessageType::MsgHeartbeat), vec![3, 4, 5, 6, 7]);
        assert_eq!(to_of(&msgs, MessageType::MsgAppend), vec![2, 4, 5, 6, 7]);
        assert_eq!(msgs.len(), 10, "nothing else dropped");
    }

    /// checklist: log-3 (a woken leader's ping and the proposal that woke
    /// it leave one append per follower, no heartbeat)
    #[test]
    fn a_ping_beside_a_proposal_sends_only_appends() {
        let mut n = replicating_leader();
        n.ping();
        n.propose(vec![], b"v".to_vec()).unwrap();
        let rd = n.ready();
        assert_eq!(to_of(&rd.messages, MessageType::MsgAppend), vec![2, 3]);
        assert!(to_of(&rd.messages, MessageType::MsgHeartbeat).is_empty());
        // Without a proposal the ping goes out whole.
        n.advance(rd);
        n.ping();
        let rd = n.ready();
        assert_eq!(to_of(&rd.messages, MessageType::MsgHeartbeat), vec![2, 3]);
    }

    /// The followers heartbeats with a read context go to, in order.
    fn read_beats_to(msgs: &[Message]) -> Vec<u64> {
        let mut to: Vec<u64> = msgs
            .iter()
            .filter(|m| m.msg_type() == MessageType::MsgHeartbeat && !m.context.is_empty())
            .map(|m| m.to)
            .collect();
        to.sort_unstable();
        to
    }

    /// Followers 2 and 3 acknowledge the leader's whole log; the Ready
    /// that follows (the commit going out) is handled.
    fn acked_by_both(n: &mut RawNode<MemStorage>) {
        let last = n.raft.raft_log().last_index();
        for follower in [2, 3] {
            let mut ack = m(MessageType::MsgAppendResponse, follower, n.raft.term());
            ack.index = last;
            n.step(ack).unwrap();
        }
        let rd = n.ready();
        n.advance(rd);
    }

    /// Node 1 of 1, 2, 3 under `cfg`, elected, its first entry persisted
    /// (the followers have acknowledged nothing yet).
    fn elected_leader(cfg: &Config) -> RawNode<MemStorage> {
        let log = Logger::root(slog::Discard, slog::o!());
        let mut n = RawNode::new(cfg, MemStorage::with_voters(&[1, 2, 3], &[]), &log).unwrap();
        n.raft.become_candidate();
        n.raft.become_leader();
        let rd = n.ready();
        n.store().wl().append(&rd.entries).unwrap();
        n.advance(rd);
        n
    }

    /// A leader of 1, 2, 3 whose followers match its log, in replicate
    /// state, with nothing left to send.
    fn replicating_leader() -> RawNode<MemStorage> {
        let mut n = elected_leader(&Config::new(1));
        acked_by_both(&mut n);
        n
    }

    /// Ticks `n` through one heartbeat interval; returns the followers
    /// heartbeats went to.
    fn beat_interval(n: &mut RawNode<MemStorage>) -> Vec<u64> {
        for _ in 0..n.raft.heartbeat_timeout {
            n.tick();
        }
        let rd = n.ready();
        let to = to_of(&rd.messages, MessageType::MsgHeartbeat);
        n.advance(rd);
        to
    }

    /// checklist: log-3 (a periodic heartbeat skips a replicating follower
    /// an acknowledged append reached since its last heartbeat; the next
    /// interval without one beats it again)
    #[test]
    fn a_periodic_heartbeat_skips_followers_an_append_reached() {
        let mut n = replicating_leader();
        assert_eq!(beat_interval(&mut n), vec![2, 3], "idle: both beat");
        n.propose(vec![], b"v".to_vec()).unwrap();
        let rd = n.ready();
        assert_eq!(to_of(&rd.messages, MessageType::MsgAppend), vec![2, 3]);
        n.store().wl().append(&rd.entries).unwrap();
        n.advance(rd);
        let last = n.raft.raft_log().last_index();
        let mut ack = m(MessageType::MsgAppendResponse, 2, n.raft.term());
        ack.index = last;
        n.step(ack).unwrap();
        // The commit the ack made goes out (to 3, which still owes its ack).
        let rd = n.ready();
        n.advance(rd);
        assert_eq!(
            beat_interval(&mut n),
            vec![3],
            "2 acknowledged the append; 3 did not and gets its heartbeat"
        );
        assert_eq!(beat_interval(&mut n), vec![2, 3], "nothing sent since");
    }

    /// checklist: log-3 (followers learn the commit index from appends and
    /// heartbeats: with `skip_bcast_commit` a commit advance alone sends
    /// nothing and the next append carries it; a commit that covers an
    /// index marked by `broadcast_commit_through` goes out at once)
    #[test]
    fn a_skipped_commit_broadcast_rides_on_the_next_append() {
        let mut cfg = Config::new(1);
        cfg.skip_bcast_commit = true;
        let mut n = elected_leader(&cfg);
        acked_by_both(&mut n);
        // (to, commit) of the appends of a Ready.
        let appends = |rd: &Ready| -> Vec<(u64, u64)> {
            rd.messages
                .iter()
                .filter(|m| m.msg_type() == MessageType::MsgAppend)
                .map(|m| (m.to, m.commit))
                .collect()
        };
        // Proposes one entry, persists it and has 2 acknowledge it; returns
        // its index, the appends that carried it and those sent after the
        // ack.
        let write = |n: &mut RawNode<MemStorage>, urgent: bool| {
            n.propose(vec![], b"v".to_vec()).unwrap();
            let last = n.raft.raft_log().last_index();
            if urgent {
                n.raft.broadcast_commit_through(last);
            }
            let rd = n.ready();
            let carried = appends(&rd);
            n.store().wl().append(&rd.entries).unwrap();
            n.advance(rd);
            let mut ack = m(MessageType::MsgAppendResponse, 2, n.raft.term());
            ack.index = last;
            n.step(ack).unwrap();
            assert_eq!(n.raft.raft_log().committed, last, "2's ack commits it");
            let rd = n.ready();
            let sent = appends(&rd);
            n.advance(rd);
            (last, carried, sent)
        };
        let (first, _, sent) = write(&mut n, false);
        assert!(sent.is_empty(), "a commit alone was broadcast: {sent:?}");
        let (second, carried, sent) = write(&mut n, true);
        // The next append told both followers the skipped commit.
        assert_eq!(carried, vec![(2, first), (3, first)]);
        assert_eq!(sent, vec![(2, second), (3, second)], "the marked commit");
    }

    /// checklist: election-1 (a follower hears its leader within every
    /// election timeout: with a shortest election timeout of at most two
    /// heartbeat intervals and a tick, the periodic heartbeat skips nobody)
    #[test]
    fn a_short_election_timeout_turns_heartbeat_skipping_off() {
        let mut cfg = Config::new(1);
        cfg.election_tick = 5;
        cfg.heartbeat_tick = 2;
        let mut n = elected_leader(&cfg);
        n.propose(vec![], b"v".to_vec()).unwrap();
        let rd = n.ready();
        n.store().wl().append(&rd.entries).unwrap();
        n.advance(rd);
        acked_by_both(&mut n);
        assert_eq!(beat_interval(&mut n), vec![2, 3]);
    }

    /// checklist: read-1 (a read waiting for its heartbeat round is never
    /// left without it: with a pending ReadIndex every follower beats)
    #[test]
    fn a_periodic_heartbeat_with_a_pending_read_skips_nobody() {
        let mut n = replicating_leader();
        // Commit the leader's first entry so the read is not deferred.
        let last = n.raft.raft_log().last_index();
        assert_eq!(n.raft.raft_log().committed, last);
        n.propose(vec![], b"v".to_vec()).unwrap();
        let rd = n.ready();
        n.store().wl().append(&rd.entries).unwrap();
        n.advance(rd);
        n.read_index(b"r".to_vec()).unwrap();
        let rd = n.ready();
        assert_eq!(read_beats_to(&rd.messages).len(), 2, "the read's own round");
        n.advance(rd);
        // An append reaches both followers while the read still waits, and
        // both acknowledge it: without the read neither would be beaten.
        n.propose(vec![], b"w".to_vec()).unwrap();
        let rd = n.ready();
        assert_eq!(to_of(&rd.messages, MessageType::MsgAppend), vec![2, 3]);
        n.store().wl().append(&rd.entries).unwrap();
        n.advance(rd);
        acked_by_both(&mut n);
        assert!(
            n.raft.prs().iter().all(
                |(id, pr)| id == 1 || (pr.appended_since_beat && pr.matched + 1 == pr.next_idx)
            ),
            "both followers are skippable but for the read"
        );
        for _ in 0..n.raft.heartbeat_timeout {
            n.tick();
        }
        let rd = n.ready();
        assert_eq!(
            read_beats_to(&rd.messages),
            vec![2, 3],
            "the pending read's context went to all"
        );
    }

    /// checklist: conf-6 (responses from non-members are refused)
    #[test]
    fn step_rejects_responses_from_unknown_peers() {
        let mut n = node(1, &[1, 2, 3]);
        assert_eq!(
            n.step(m(MessageType::MsgAppendResponse, 9, 1)),
            Err(Error::StepPeerNotFound(9))
        );
        assert!(n.step(m(MessageType::MsgAppendResponse, 2, 1)).is_ok());
    }

    /// checklist: ready-1 (a fresh node has nothing to do)
    #[test]
    fn fresh_node_has_no_ready() {
        let n = node(1, &[1, 2, 3]);
        assert!(!n.has_ready());
        assert_eq!(n.heap_size(), n.raft.heap_size());
    }

    /// checklist: ready-1 (status reports progress only on leaders)
    #[test]
    fn status_progress_only_on_leader() {
        let mut n = node(1, &[1]);
        assert!(n.status().progress.is_none());
        n.campaign().unwrap();
        let st = n.status();
        assert_eq!(st.ss.raft_state, StateRole::Leader);
        assert_eq!(st.progress.map(|p| p.len()), Some(1));
        assert_eq!(st.hs.term, 1);
    }

    /// checklist: ready-1 (must_sync is false when only the commit index moved)
    #[test]
    fn must_sync_only_for_term_vote_or_entries() {
        let mut n = node(1, &[1]);
        n.campaign().unwrap();
        let rd = n.ready();
        assert!(rd.must_sync);
        let s = n.store().clone();
        s.wl().append(&rd.entries).unwrap();
        let lr = n.advance(rd);
        assert_eq!(lr.commit_index, Some(1));
        n.advance_apply();
        n.tick();
        assert!(!n.has_ready() || !n.ready().must_sync);
    }

    /// checklist: ready-3 (on_persist_ready of an unknown number is a no-op)
    #[test]
    fn on_persist_ready_unknown_number() {
        let mut n = node(1, &[1, 2]);
        n.on_persist_ready(42);
        assert_eq!(n.raft.raft_log().persisted, 0);
    }

    /// checklist: log-11 (propose on a follower without leader is dropped)
    #[test]
    fn propose_without_leader_dropped() {
        let mut n = node(1, &[1, 2, 3]);
        assert_eq!(
            n.propose(vec![], b"x".to_vec()),
            Err(Error::ProposalDropped)
        );
        assert!(!n.has_ready(), "nothing queued");
    }

    /// checklist: transfer-5 (transfer on a node without leader does nothing)
    #[test]
    fn transfer_without_leader_is_noop() {
        let mut n = node(1, &[1, 2, 3]);
        n.transfer_leader(2);
        assert!(!n.has_ready());
        assert_eq!(n.raft.lead_transferee(), None);
    }
}
