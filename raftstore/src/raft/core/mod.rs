//! The raft state machine, split by concern: role transitions and ticks
//! here, then [`step`](self::step) (message dispatch), `election`,
//! `replication`, `snapshot`, `membership`, `reads` and `transfer`.

mod election;
mod membership;
pub(crate) mod membership_decode {
    //! Re-export of the conf-change decoder.
    pub use super::membership::decode_conf_change;
}
mod reads;
mod replication;
mod snapshot;
mod step;
mod transfer;

use bytes::Bytes;
use flotilla_proto::eraftpb::{Entry, HardState, Message, MessageType};
use slog::Logger;

use super::confchange;
use super::config::Config;
use super::errors::Result;
use super::log::RaftLog;
use super::read_only::{ReadOnly, ReadState};
use super::rng::SplitMix64;
use super::storage::Storage;
use super::tracker::ProgressTracker;

/// The id meaning "no node".
pub const INVALID_ID: u64 = 0;
/// Context of vote requests sent because of a leader transfer: they
/// override the leader lease (see [`Config::check_quorum`]).
pub const CAMPAIGN_TRANSFER: &[u8] = b"CampaignTransfer";

/// The highest term a message from the network may carry. A term grows by
/// one per election round, so no group comes near it; a message past it is
/// garbage or hostile, and stepping it would move every node it reaches to
/// a term from which the next election overflows.
pub const MAX_TERM: u64 = u64::MAX >> 1;

/// The role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateRole {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Campaigning in a real election.
    Candidate,
    /// The leader of its term.
    Leader,
    /// Running a pre-vote round (the term is not yet incremented).
    PreCandidate,
}

/// What a leader owes its followers since its last broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PendingBroadcast {
    /// Entries were appended that no follower has been sent yet.
    pub(crate) entries: bool,
    /// The commit index moved; followers that do not know it get an
    /// (empty, if nothing else is due) append carrying it.
    pub(crate) commit: bool,
}

impl PendingBroadcast {
    /// True if nothing is owed.
    pub(crate) fn is_empty(self) -> bool {
        !self.entries && !self.commit
    }
}

/// The volatile state an application may want to observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SoftState {
    /// The known leader (`INVALID_ID`: none).
    pub leader_id: u64,
    /// This node's role.
    pub raft_state: StateRole,
}

/// The raft state machine of one node.
///
/// Invariants: `leader_id == id` iff `state == Leader`; `vote` is only set in
/// `term`; `pending_conf_index` is the index of the last conf change the
/// leader appended (0 if none this term).
pub struct Raft<S: Storage> {
    /// This node's id.
    pub(crate) id: u64,
    /// The current term.
    pub(crate) term: u64,
    /// Whom this node voted for in `term`.
    pub(crate) vote: u64,
    /// The log.
    pub(crate) raft_log: RaftLog<S>,
    /// Peers' progress, membership, election votes.
    pub(crate) prs: ProgressTracker,
    /// The role.
    pub(crate) state: StateRole,
    /// True when this node is a voter (may campaign).
    pub(crate) promotable: bool,
    /// The known leader.
    pub(crate) leader_id: u64,
    /// The target of a leader transfer in progress.
    pub(crate) lead_transferee: Option<u64>,
    /// See the struct invariants.
    pub(crate) pending_conf_index: u64,
    /// Pending ReadIndex requests.
    pub(crate) read_only: ReadOnly,
    /// Reads a leader received before committing an entry of its term.
    pub(crate) pending_read_index_messages: Vec<Message>,
    /// Confirmed reads for the application.
    pub(crate) read_states: Vec<ReadState>,
    /// Messages that may be sent at once.
    pub(crate) msgs: Vec<Message>,
    /// Messages that may be sent only once the current Ready is persisted.
    pub(crate) msgs_after_persist: Vec<Message>,
    /// Leader: what the followers have not been told yet. Sent by
    /// [`Raft::flush_broadcast`], which `RawNode` calls once per Ready, so n
    /// proposals (or commit advances) between two Readies cost one append
    /// per follower instead of n.
    pub(crate) pending_bcast: PendingBroadcast,
    /// Ticks since the last election timeout reset (or, on a leader, since
    /// the last check-quorum).
    pub(crate) election_elapsed: usize,
    /// Ticks since the last heartbeat (leader only).
    pub(crate) heartbeat_elapsed: usize,
    /// Current randomized election timeout in `[min, max)`.
    pub(crate) randomized_election_timeout: usize,
    pub(crate) heartbeat_timeout: usize,
    pub(crate) election_timeout: usize,
    pub(crate) min_election_timeout: usize,
    pub(crate) max_election_timeout: usize,
    pub(crate) check_quorum: bool,
    /// Set at start with `Config::refuse_votes_after_start`: vote requests
    /// are refused as within a lease until one election timeout of ticks
    /// has passed or this node campaigns.
    pub(crate) start_lease: bool,
    pub(crate) pre_vote: bool,
    /// Set by the application ([`crate::raft::RawNode::hold_campaigns`]):
    /// this node does not campaign (election timeout, `campaign`, or a
    /// leader transfer to it); it still votes and follows.
    pub(crate) campaigns_held: bool,
    /// Follower: it asked its leader for a snapshot
    /// ([`crate::raft::RawNode::request_snapshot`]) and answers every
    /// append and heartbeat with the request until one is restored.
    pub(crate) snapshot_requested: bool,
    /// Leader with `skip_bcast_commit`: the commit advance that covers
    /// this index (or `pending_conf_index`) still goes to every follower
    /// at once: an entry the followers should apply promptly. Raised by
    /// [`Raft::broadcast_commit_through`]; 0 after a term or role change.
    pub(crate) bcast_commit_through: u64,
    pub(crate) skip_bcast_commit: bool,
    pub(crate) disable_proposal_forwarding: bool,
    pub(crate) max_msg_size: u64,
    pub(crate) max_uncommitted_size: u64,
    /// Payload bytes of uncommitted entries appended by this leader.
    pub(crate) uncommitted_size: u64,
    pub(crate) max_committed_size_per_ready: u64,
    pub(crate) priority: i64,
    rng: SplitMix64,
    pub(crate) logger: Logger,
}

impl<S: Storage> Raft<S> {
    /// A node restarted from `store`'s persisted state.
    ///
    /// # Errors
    ///
    /// If the config is invalid, the storage fails, or the stored conf state
    /// is invalid.
    pub fn new(c: &Config, store: S, logger: &Logger) -> Result<Self> {
        c.validate()?;
        let rs = store.initial_state()?;
        let mut raft_log = RaftLog::new(store);
        let mut r = Raft {
            id: c.id,
            term: 0,
            vote: INVALID_ID,
            prs: ProgressTracker::new(c.max_inflight_msgs),
            state: StateRole::Follower,
            promotable: false,
            leader_id: INVALID_ID,
            lead_transferee: None,
            pending_conf_index: 0,
            read_only: ReadOnly::new(c.read_only_option),
            pending_read_index_messages: Vec::new(),
            read_states: Vec::new(),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            pending_bcast: PendingBroadcast::default(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: 0,
            heartbeat_timeout: c.heartbeat_tick,
            election_timeout: c.election_tick,
            min_election_timeout: c.min_election_tick(),
            max_election_timeout: c.max_election_tick(),
            check_quorum: c.check_quorum,
            start_lease: c.refuse_votes_after_start,
            pre_vote: c.pre_vote,
            campaigns_held: false,
            snapshot_requested: false,
            bcast_commit_through: 0,
            skip_bcast_commit: c.skip_bcast_commit,
            disable_proposal_forwarding: c.disable_proposal_forwarding,
            max_msg_size: c.max_size_per_msg,
            max_uncommitted_size: c.max_uncommitted_size,
            uncommitted_size: 0,
            max_committed_size_per_ready: c.max_committed_size_per_ready,
            priority: c.priority,
            rng: SplitMix64::new(c.effective_rng_seed()),
            logger: logger.clone(),
            raft_log: {
                let hs = &rs.hard_state;
                if hs.commit > 0 {
                    raft_log.commit_to(hs.commit);
                }
                let applied = c.applied.min(raft_log.committed);
                if applied > raft_log.applied {
                    raft_log.applied_to(applied);
                }
                raft_log
            },
        };
        let cfg = confchange::restore(&rs.conf_state)?;
        let next = r.raft_log.last_index() + 1;
        r.prs.apply_conf(cfg, next);
        r.promotable = r.prs.is_voter(r.id);
        if rs.hard_state != HardState::default() {
            r.term = rs.hard_state.term;
            r.vote = rs.hard_state.vote;
        }
        r.become_follower(r.term, INVALID_ID);
        slog::debug!(r.logger, "raft node created";
            "id" => r.id, "term" => r.term, "commit" => r.raft_log.committed,
            "last_index" => r.raft_log.last_index());
        Ok(r)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Whom this node voted for in the current term.
    pub fn vote(&self) -> u64 {
        self.vote
    }

    /// The role.
    pub fn state(&self) -> StateRole {
        self.state
    }

    /// The known leader.
    pub fn leader_id(&self) -> u64 {
        self.leader_id
    }

    /// The log.
    pub fn raft_log(&self) -> &RaftLog<S> {
        &self.raft_log
    }

    /// Mutable access to the log (tests and storage maintenance).
    pub fn raft_log_mut(&mut self) -> &mut RaftLog<S> {
        &mut self.raft_log
    }

    /// The progress tracker.
    pub fn prs(&self) -> &ProgressTracker {
        &self.prs
    }

    /// The leader-transfer target, if a transfer is in progress.
    pub fn lead_transferee(&self) -> Option<u64> {
        self.lead_transferee
    }

    /// Index of the last conf change appended by this leader.
    pub fn pending_conf_index(&self) -> u64 {
        self.pending_conf_index
    }

    /// Leader with `skip_bcast_commit`: the commit advance that covers
    /// `index` is broadcast at once instead of waiting for the next append
    /// or heartbeat (an admin entry the followers should apply promptly).
    pub fn broadcast_commit_through(&mut self, index: u64) {
        self.bcast_commit_through = self.bcast_commit_through.max(index);
    }

    /// The current randomized election timeout.
    pub fn randomized_election_timeout(&self) -> usize {
        self.randomized_election_timeout
    }

    /// Ticks since the election timer was last reset.
    pub fn election_elapsed(&self) -> usize {
        self.election_elapsed
    }

    /// Whether a vote or pre-vote request of a higher term would be
    /// ignored now as within the leader lease (check-quorum: a leader is
    /// known, or was known, less than an election timeout ago).
    pub fn ignores_votes_in_lease(&self) -> bool {
        self.check_quorum
            && (self.leader_id != INVALID_ID || self.start_lease)
            && self.election_elapsed < self.election_timeout
    }

    /// Whether stepping `m` now would ignore it as a vote or pre-vote
    /// request within the leader lease (a leader transfer's campaign is
    /// never ignored).
    pub fn ignores_vote(&self, m: &Message) -> bool {
        matches!(
            m.msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) && m.term > self.term
            && m.context.as_ref() != CAMPAIGN_TRANSFER
            && self.ignores_votes_in_lease()
    }

    /// Whether the vote or pre-vote request `m` would be granted were it
    /// not ignored within a lease (its term is ahead and its log up to
    /// date).
    pub fn could_grant_vote(&self, m: &Message) -> bool {
        m.term > self.term && self.raft_log.is_up_to_date(m.index, m.log_term)
    }

    /// Payload bytes of uncommitted entries (leader).
    pub fn uncommitted_size(&self) -> u64 {
        self.uncommitted_size
    }

    /// Whether this follower asked its leader for a snapshot and has not
    /// restored one since.
    pub fn snapshot_requested(&self) -> bool {
        self.snapshot_requested
    }

    /// Whether this node may campaign.
    pub fn promotable(&self) -> bool {
        self.promotable
    }

    /// The soft state.
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            leader_id: self.leader_id,
            raft_state: self.state,
        }
    }

    /// The hard state.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.raft_log.committed,
        }
    }

    /// Messages queued for immediate sending (drained by `Ready`).
    pub fn msgs(&self) -> &[Message] {
        &self.msgs
    }

    /// Messages queued until persistence (drained by `Ready`).
    pub fn msgs_after_persist(&self) -> &[Message] {
        &self.msgs_after_persist
    }

    /// Takes every queued message, immediate and persistence-dependent,
    /// after flushing any pending broadcast.
    pub fn take_all_msgs(&mut self) -> Vec<Message> {
        self.flush_broadcast();
        let mut v = std::mem::take(&mut self.msgs);
        v.append(&mut self.msgs_after_persist);
        v
    }

    /// Confirmed reads not yet handed out.
    pub fn read_states(&self) -> &[ReadState] {
        &self.read_states
    }

    /// Queues `m` for sending, filling in `from` and `term`. Messages of a
    /// leader may go at once; every other role's messages (acks, votes,
    /// vote requests) wait until the Ready they belong to is persisted.
    pub(crate) fn send(&mut self, mut m: Message) {
        if m.from == INVALID_ID {
            m.from = self.id;
        }
        match m.msg_type() {
            MessageType::MsgRequestVote
            | MessageType::MsgRequestPreVote
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgRequestPreVoteResponse => {
                debug_assert!(m.term != 0, "vote message without a term");
            }
            // Forwarded proposals and reads carry no term: the leader treats
            // them as local requests.
            MessageType::MsgPropose | MessageType::MsgReadIndex => m.term = 0,
            _ => m.term = self.term,
        }
        if self.state == StateRole::Leader {
            self.msgs.push(m);
        } else {
            self.msgs_after_persist.push(m);
        }
    }

    pub(crate) fn reset_randomized_election_timeout(&mut self) {
        self.randomized_election_timeout = self
            .rng
            .gen_range(self.min_election_timeout, self.max_election_timeout);
    }

    /// True once the randomized election timeout has elapsed.
    pub fn past_election_timeout(&self) -> bool {
        self.election_elapsed >= self.randomized_election_timeout
    }

    /// The (unrandomized) election timeout, in ticks.
    pub fn election_timeout(&self) -> usize {
        self.election_timeout
    }

    /// Hibernation: restarts the election clock (a follower going to sleep
    /// just heard its leader; when it wakes it gives the leader a whole
    /// timeout before campaigning).
    pub fn reset_election_clock(&mut self) {
        self.election_elapsed = 0;
    }

    /// Hibernation: the leader store of a sleeping follower lost support
    /// (it is down). Stops refusing votes as within a lease (the leader it
    /// heard is gone) and runs the election clock out: with `first`, the
    /// node campaigns at its next tick; otherwise within its randomized
    /// spread, giving the first one time to win (two followers campaigning
    /// at once split the vote and both wait a whole timeout more). Ticks
    /// missed while asleep are not replayed.
    pub fn expire_election_clock(&mut self, first: bool) {
        // At least the election timeout: no vote is refused as within a
        // lease any more.
        let at = if first {
            self.randomized_election_timeout.saturating_sub(1)
        } else {
            // Not at once: half a timeout at least for the first one to
            // win (campaigning at the same tick splits the vote).
            let hold = (self.election_timeout / 2).max(1);
            self.randomized_election_timeout = self
                .randomized_election_timeout
                .max(self.election_timeout + hold);
            0
        };
        self.election_elapsed = self.election_elapsed.max(at).max(self.election_timeout);
        self.start_lease = false;
    }

    /// The store found the leader's store gone and this node is its
    /// group's first campaigner: a follower campaigns now, as if its
    /// election clock ran out at this tick (the clock starts afresh for
    /// the next round, so a pre-campaign is not started twice). No vote is
    /// refused as within a lease afterwards, even if it could not
    /// campaign.
    pub fn campaign_now(&mut self) {
        self.start_lease = false;
        // A node campaigning already keeps its round (and the votes it
        // counted).
        if self.promotable && self.state == StateRole::Follower {
            self.election_elapsed = 0;
            let _ = self.step(Message {
                msg_type: MessageType::MsgHup as i32,
                from: self.id,
                ..Default::default()
            });
        }
        if self.state == StateRole::Follower {
            self.election_elapsed = self.election_elapsed.max(self.election_timeout);
        }
    }

    /// Hibernation: a leader wakes. Its check-quorum window starts afresh
    /// with every peer counted active (it heard from them all before it
    /// slept, or knew their stores down; it learns of them again within
    /// one window); without this the first check after a long sleep would
    /// find nobody active and step down.
    pub fn resume_after_sleep(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        for (_, pr) in self.prs.iter_mut() {
            pr.recent_active = true;
            // An append before the sleep covers no heartbeat after it.
            pr.appended_since_beat = false;
        }
    }

    /// Hibernation: frees the buffers an idle group does not need (the
    /// inflight windows, message vectors); they grow again on demand.
    pub fn free_idle_buffers(&mut self) {
        for (_, pr) in self.prs.iter_mut() {
            pr.ins.free_buffer();
        }
        self.msgs.shrink_to_fit();
        self.msgs_after_persist.shrink_to_fit();
        self.read_states.shrink_to_fit();
        self.pending_read_index_messages.shrink_to_fit();
    }

    /// Resets the volatile state for `term`.
    pub(crate) fn reset(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.vote = INVALID_ID;
            // Asked of the old leader, over a tail the new one may not
            // have: asked again (by the application) once this node
            // follows the new leader's log.
            self.snapshot_requested = false;
        }
        self.leader_id = INVALID_ID;
        self.reset_randomized_election_timeout();
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.abort_leader_transfer();
        self.prs.reset_votes();
        self.pending_conf_index = 0;
        self.bcast_commit_through = 0;
        self.read_only.reset();
        self.pending_read_index_messages = Vec::new();
        self.uncommitted_size = 0;
        // A new term or role: whatever a leader owed its followers is moot.
        self.pending_bcast = PendingBroadcast::default();
        let next = self.raft_log.last_index() + 1;
        let persisted = self.raft_log.persisted;
        let id = self.id;
        for (pid, pr) in self.prs.iter_mut() {
            pr.reset(next);
            if pid == id {
                pr.matched = persisted;
                pr.recent_active = true;
            }
        }
    }

    /// Becomes a follower of `leader_id` (possibly unknown) in `term`.
    pub fn become_follower(&mut self, term: u64, leader_id: u64) {
        self.reset(term);
        self.leader_id = leader_id;
        self.state = StateRole::Follower;
        slog::debug!(self.logger, "became follower"; "id" => self.id, "term" => term,
            "leader" => leader_id);
    }

    /// Becomes a candidate: increments the term and votes for itself.
    ///
    /// # Panics
    ///
    /// If called on a leader (an internal invariant).
    pub fn become_candidate(&mut self) {
        assert_ne!(
            self.state,
            StateRole::Leader,
            "leader cannot become candidate"
        );
        let term = self.term + 1;
        self.reset(term);
        self.vote = self.id;
        self.state = StateRole::Candidate;
        self.start_lease = false;
        slog::debug!(self.logger, "became candidate"; "id" => self.id, "term" => term);
    }

    /// Becomes a pre-candidate: the term and vote are unchanged.
    ///
    /// # Panics
    ///
    /// If called on a leader (an internal invariant).
    pub fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.state,
            StateRole::Leader,
            "leader cannot become pre-candidate"
        );
        self.state = StateRole::PreCandidate;
        self.prs.reset_votes();
        self.leader_id = INVALID_ID;
        self.start_lease = false;
        slog::debug!(self.logger, "became pre-candidate"; "id" => self.id, "term" => self.term);
    }

    /// Becomes the leader of the current term and appends an empty entry.
    ///
    /// # Panics
    ///
    /// If called on a follower (only candidates win elections).
    pub fn become_leader(&mut self) {
        assert_ne!(
            self.state,
            StateRole::Follower,
            "follower cannot become leader"
        );
        let term = self.term;
        self.reset(term);
        self.leader_id = self.id;
        self.state = StateRole::Leader;
        let last = self.raft_log.last_index();
        let id = self.id;
        if let Some(pr) = self.prs.get_mut(id) {
            pr.become_replicate();
            pr.next_idx = last + 1;
        }
        // Any conf change in the uncommitted tail may be unapplied: be
        // conservative and treat the whole log as possibly pending.
        self.pending_conf_index = last;
        // The empty entry of the new term commits the previous terms' entries
        // (paper fig. 8); it never counts toward the uncommitted limit.
        let accepted = self.append_entry(vec![Entry::default()]);
        debug_assert!(accepted, "the empty entry is never dropped");
        slog::debug!(self.logger, "became leader"; "id" => self.id, "term" => term);
    }

    /// Ticks from now until [`tick`](Self::tick) may do more than count
    /// (at least 1). A leader acts when its next heartbeat is due or its
    /// election timeout (check-quorum, the end of a transfer) comes. A
    /// promotable follower or candidate campaigns when its randomized
    /// election timeout runs out. A peer that may not campaign never acts
    /// on a tick: `usize::MAX`.
    ///
    /// The ticks before that one are silent: running them later, in a
    /// row, leaves the same state as running them on time (the store
    /// delivers only the ticks that may act, DESIGN §5).
    pub fn ticks_to_event(&self) -> usize {
        if self.state == StateRole::Leader {
            let beat = self
                .heartbeat_timeout
                .saturating_sub(self.heartbeat_elapsed);
            let quorum = self.election_timeout.saturating_sub(self.election_elapsed);
            return beat.min(quorum).max(1);
        }
        if !self.promotable {
            return usize::MAX;
        }
        self.randomized_election_timeout
            .saturating_sub(self.election_elapsed)
            .max(1)
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) -> bool {
        match self.state {
            StateRole::Leader => self.tick_heartbeat(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) -> bool {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_timeout {
            self.start_lease = false;
        }
        if !self.promotable || !self.past_election_timeout() {
            return false;
        }
        self.election_elapsed = 0;
        let m = Message {
            msg_type: MessageType::MsgHup as i32,
            from: self.id,
            ..Default::default()
        };
        let _ = self.step(m);
        true
    }

    fn tick_heartbeat(&mut self) -> bool {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        let mut has_ready = false;
        if self.election_elapsed >= self.election_timeout {
            self.election_elapsed = 0;
            if self.check_quorum {
                let m = Message {
                    msg_type: MessageType::MsgCheckQuorum as i32,
                    from: self.id,
                    ..Default::default()
                };
                has_ready = true;
                let _ = self.step(m);
            }
            if self.state == StateRole::Leader && self.lead_transferee.is_some() {
                self.abort_leader_transfer();
            }
        }
        if self.state != StateRole::Leader {
            return has_ready;
        }
        if self.heartbeat_elapsed >= self.heartbeat_timeout {
            self.heartbeat_elapsed = 0;
            has_ready = true;
            for (_, pr) in self.prs.iter_mut() {
                pr.ins.maybe_free_idle();
            }
            self.bcast_periodic_heartbeat();
        }
        has_ready
    }

    /// Frees every empty inflight buffer now. Returns the bytes freed.
    pub fn maybe_free_inflight_buffers(&mut self) -> usize {
        let mut freed = 0;
        for (_, pr) in self.prs.iter_mut() {
            let before = pr.ins.heap_bytes();
            if pr.ins.free_buffer() {
                freed += before;
            }
        }
        freed
    }

    /// Heap bytes held by inflight buffers.
    pub fn inflight_heap_bytes(&self) -> usize {
        self.prs.inflight_heap_bytes()
    }

    /// An estimate of the heap bytes this node holds (excluding the storage
    /// and the shared logger).
    pub fn heap_size(&self) -> usize {
        let msg = std::mem::size_of::<Message>();
        self.prs.heap_bytes()
            + self.raft_log.unstable.heap_bytes()
            + (self.msgs.capacity() + self.msgs_after_persist.capacity()) * msg
            + self.pending_read_index_messages.capacity() * msg
            + self.read_states.capacity() * std::mem::size_of::<ReadState>()
            + self.read_only.pending_read_count()
                * std::mem::size_of::<super::read_only::ReadIndexStatus>()
    }

    /// A message of type `t` to `to` (the rest default).
    pub(crate) fn new_message(to: u64, t: MessageType) -> Message {
        Message {
            msg_type: t as i32,
            to,
            ..Default::default()
        }
    }

    /// A context carrying `data` (e.g. the transfer marker).
    pub(crate) fn ctx(data: &'static [u8]) -> Bytes {
        Bytes::from_static(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::MemStorage;

    fn raft(id: u64, voters: &[u64]) -> Raft<MemStorage> {
        let log = Logger::root(slog::Discard, slog::o!());
        Raft::new(&Config::new(id), MemStorage::with_voters(voters, &[]), &log).unwrap()
    }

    /// checklist: election-2 (role transitions keep the documented invariants)
    #[test]
    fn role_transitions() {
        let mut r = raft(1, &[1, 2, 3]);
        r.become_candidate();
        assert_eq!(
            (r.state(), r.term(), r.vote()),
            (StateRole::Candidate, 1, 1)
        );
        r.become_leader();
        assert_eq!((r.state(), r.leader_id()), (StateRole::Leader, 1));
        assert_eq!(r.raft_log().last_index(), 1);
        assert_eq!(r.pending_conf_index(), 0);
        r.become_follower(3, 2);
        assert_eq!(
            (r.state(), r.term(), r.vote(), r.leader_id()),
            (StateRole::Follower, 3, 0, 2)
        );
    }

    /// checklist: election-2
    #[test]
    #[should_panic(expected = "follower cannot become leader")]
    fn follower_cannot_become_leader() {
        raft(1, &[1, 2, 3]).become_leader();
    }

    /// checklist: election-9 (pre-candidate keeps term and vote)
    #[test]
    fn pre_candidate_keeps_term_and_vote() {
        let mut r = raft(1, &[1, 2, 3]);
        r.become_follower(4, 2);
        r.vote = 2;
        r.become_pre_candidate();
        assert_eq!(
            (r.state(), r.term(), r.vote(), r.leader_id()),
            (StateRole::PreCandidate, 4, 2, 0)
        );
    }

    /// checklist: ready-2 (only a leader's messages are sendable at once)
    #[test]
    fn send_classifies_by_role() {
        let mut r = raft(1, &[1, 2, 3]);
        r.send(Raft::<MemStorage>::new_message(
            2,
            MessageType::MsgHeartbeatResponse,
        ));
        assert_eq!((r.msgs().len(), r.msgs_after_persist().len()), (0, 1));
        r.become_candidate();
        r.become_leader();
        r.send(Raft::<MemStorage>::new_message(
            2,
            MessageType::MsgHeartbeat,
        ));
        assert_eq!(r.msgs().len(), 1);
        assert_eq!(r.msgs()[0].term, 1, "term filled in");
        assert_eq!(r.msgs()[0].from, 1, "from filled in");
    }

    fn with_check_quorum(id: u64) -> Raft<MemStorage> {
        let log = Logger::root(slog::Discard, slog::o!());
        let mut c = Config::new(id);
        c.check_quorum = true;
        c.pre_vote = true;
        Raft::new(&c, MemStorage::with_voters(&[1, 2, 3], &[]), &log).unwrap()
    }

    /// A pre-vote request from `from` for the next term, as up to date as
    /// the receiver.
    fn pre_vote(r: &Raft<MemStorage>, from: u64) -> Message {
        let mut m = Raft::<MemStorage>::new_message(r.id, MessageType::MsgRequestPreVote);
        m.from = from;
        m.term = r.term() + 1;
        m.log_term = r.raft_log().last_term();
        m.index = r.raft_log().last_index();
        m
    }

    fn granted(r: &mut Raft<MemStorage>) -> Option<bool> {
        let msgs = r.take_all_msgs();
        msgs.iter()
            .find(|m| m.msg_type() == MessageType::MsgRequestPreVoteResponse)
            .map(|m| !m.reject)
    }

    /// checklist: quorum-2 (a follower that heard its leader ignores votes
    /// within the lease). Hibernation: once its leader's store is gone,
    /// expire_election_clock ends that lease at once; the first campaigner
    /// campaigns at its next tick, the others hold half a timeout.
    #[test]
    fn expired_election_clock_ends_the_vote_lease() {
        let mut r = with_check_quorum(1);
        r.become_follower(2, 2);
        r.step(pre_vote(&r, 3)).unwrap();
        assert_eq!(granted(&mut r), None, "ignored within the lease");
        r.expire_election_clock(false);
        r.step(pre_vote(&r, 3)).unwrap();
        assert_eq!(granted(&mut r), Some(true), "granted once expired");
        // Not first: no campaign before half a timeout, then one within
        // the rest of the randomized timeout.
        let mut r = with_check_quorum(1);
        r.become_follower(2, 2);
        r.expire_election_clock(false);
        let half = r.election_timeout() / 2;
        for _ in 1..half {
            r.tick();
            assert_eq!(r.state(), StateRole::Follower, "campaigned too soon");
        }
        for _ in half..r.election_timeout() {
            r.tick();
        }
        assert_eq!(r.state(), StateRole::PreCandidate, "never campaigned");
        // First: campaigns at the next tick.
        let mut r = with_check_quorum(1);
        r.become_follower(2, 2);
        r.expire_election_clock(true);
        r.tick();
        assert_eq!(r.state(), StateRole::PreCandidate);
    }

    /// checklist: quorum-1 (a leader that hears from no majority within an
    /// election timeout steps down). Hibernation: a leader waking from a
    /// long sleep starts a fresh window with its peers counted active, so
    /// its first check does not step it down; the next one, with no
    /// answer, does.
    #[test]
    fn a_woken_leader_gets_a_fresh_check_quorum_window() {
        let mut r = with_check_quorum(1);
        r.become_candidate();
        r.become_leader();
        for (_, pr) in r.prs.iter_mut() {
            pr.recent_active = false;
        }
        r.election_elapsed = r.election_timeout() - 1;
        r.resume_after_sleep();
        for _ in 0..r.election_timeout() {
            r.tick();
        }
        assert_eq!(r.state(), StateRole::Leader, "stepped down on waking");
        for _ in 0..r.election_timeout() {
            r.tick();
        }
        assert_eq!(r.state(), StateRole::Follower, "no answer in a window");
    }

    /// checklist: mem-1 (explicit free only when empty). Hibernation frees
    /// the inflight windows and message vectors of an idle group.
    #[test]
    fn idle_buffers_are_freed() {
        let mut r = raft(1, &[1, 2, 3]);
        r.become_candidate();
        r.become_leader();
        for (_, pr) in r.prs.iter_mut() {
            pr.ins.add(5);
            pr.ins.free_to(5);
        }
        r.msgs.reserve(64);
        assert!(r.prs.inflight_heap_bytes() > 0);
        r.free_idle_buffers();
        assert_eq!(r.prs.inflight_heap_bytes(), 0);
        assert_eq!(r.msgs.capacity(), 0);
    }
}
