//! Log replication: proposals, appends, heartbeats, acknowledgements and
//! the commit rule.

use bytes::Bytes;
use flotilla_proto::eraftpb::{Entry, EntryType, Message, MessageType};

use super::Raft;
use crate::raft::errors::{Error, Result};
use crate::raft::storage::Storage;
use crate::raft::tracker::ProgressState;
use crate::raft::util::payload_size;

impl<S: Storage> Raft<S> {
    /// Leader: appends a proposal (checking conf changes, transfers and the
    /// uncommitted limit) and replicates it.
    pub(crate) fn handle_propose(&mut self, mut m: Message) -> Result<()> {
        if m.entries.is_empty() {
            return Err(Error::ProposalDropped);
        }
        if self.prs.get(self.id).is_none() {
            // Removed from the group: stop accepting writes.
            return Err(Error::ProposalDropped);
        }
        if self.lead_transferee.is_some() {
            slog::debug!(self.logger, "proposal dropped: transfer in progress"; "id" => self.id);
            return Err(Error::ProposalDropped);
        }
        let last = self.raft_log.last_index();
        for (i, e) in m.entries.iter_mut().enumerate() {
            if e.entry_type() == EntryType::EntryNormal {
                continue;
            }
            if self.refuse_conf_change(e) {
                slog::debug!(self.logger, "conf change refused; replaced by an empty entry";
                    "id" => self.id, "pending" => self.pending_conf_index);
                *e = Entry::default();
            } else {
                self.pending_conf_index = last + i as u64 + 1;
            }
        }
        if !self.append_entry(std::mem::take(&mut m.entries)) {
            return Err(Error::ProposalDropped);
        }
        // Replicated at the next flush (once per Ready), together with
        // every other proposal made until then.
        self.pending_bcast.entries = true;
        Ok(())
    }

    /// Appends entries of the current term to the leader's log. Returns false
    /// (appending nothing) if they exceed the uncommitted-size limit.
    pub(crate) fn append_entry(&mut self, mut es: Vec<Entry>) -> bool {
        let size: u64 = es.iter().map(payload_size).sum();
        if !self.increase_uncommitted_size(size) {
            return false;
        }
        let mut li = self.raft_log.last_index();
        for e in es.iter_mut() {
            li += 1;
            e.term = self.term;
            e.index = li;
        }
        self.raft_log.append(es);
        // The leader's own match moves only once the entries are persisted
        // (`on_persist_entries`): it may replicate before its own write.
        true
    }

    fn increase_uncommitted_size(&mut self, size: u64) -> bool {
        // Empty entries are never dropped; one oversized proposal is allowed
        // when nothing is uncommitted so progress is always possible.
        if size > 0
            && self.uncommitted_size > 0
            && self.uncommitted_size.saturating_add(size) > self.max_uncommitted_size
        {
            return false;
        }
        self.uncommitted_size = self.uncommitted_size.saturating_add(size);
        true
    }

    /// Entries handed out as committed no longer count as uncommitted.
    pub(crate) fn reduce_uncommitted_size(&mut self, ents: &[Entry]) {
        if self.state != super::StateRole::Leader {
            return;
        }
        let size: u64 = ents.iter().map(payload_size).sum();
        self.uncommitted_size = self.uncommitted_size.saturating_sub(size);
    }

    /// Sends appends (or heartbeats-as-appends) to every peer that is not
    /// paused.
    pub(crate) fn bcast_append(&mut self) {
        self.for_each_peer(|r, id| {
            r.maybe_send_append(id, true);
        });
    }

    /// Calls `f` for every peer but this node, in id order, without
    /// collecting the ids. `f` may send: sending never changes the
    /// membership, so walking the tracker by position stays stable.
    pub(crate) fn for_each_peer(&mut self, mut f: impl FnMut(&mut Self, u64)) {
        let mut i = 0;
        while let Some(id) = self.prs.id_at(i) {
            i += 1;
            if id != self.id {
                f(self, id);
            }
        }
    }

    /// Leader: sends what the followers are owed since the last flush
    /// (proposals and commit advances are batched until then): new entries
    /// to every follower whose progress allows, and the
    /// new commit index to those that were not sent it yet. A no-op on a
    /// non-leader or when nothing is owed.
    pub fn flush_broadcast(&mut self) {
        let pending = std::mem::take(&mut self.pending_bcast);
        if pending.is_empty() || self.state != super::StateRole::Leader {
            return;
        }
        let committed = self.raft_log.committed;
        // Sending neither compacts nor commits: both bounds hold for the walk.
        let first = self.raft_log.first_index();
        self.for_each_peer(|r, id| {
            // Fill the pipeline: with `max_size_per_msg` the new entries
            // may need several appends.
            let mut sent = false;
            while r.maybe_send_append(id, false) {
                sent = true;
            }
            if sent || !pending.commit {
                return;
            }
            // A follower whose next entries are compacted waits for a
            // snapshot; the loop above already asked for one.
            let behind = r
                .prs
                .get(id)
                .is_some_and(|pr| pr.committed_index < committed && pr.next_idx >= first);
            if behind {
                r.maybe_send_append(id, true);
            }
        });
    }

    /// Drops from `msgs` every heartbeat without a read context that goes
    /// to a follower which an append of the same term in `msgs`, one that
    /// asks for an answer, reaches too: the append resets the follower's
    /// election clock and carries the commit index (bounded by what it
    /// matches, as the heartbeat's is), and its answer marks the follower
    /// active and drives catch-up as the heartbeat's would. A heartbeat
    /// with a read context stays (only its answer acknowledges the read),
    /// and so does one with commit 0: to a peer the leader has not matched
    /// (one just added), where only a heartbeat may create the peer on its
    /// store. Typical case: a woken leader's first heartbeats and the
    /// append of the proposal that woke it, sent in one round. Dropping a
    /// heartbeat is what a lossy network may do to any of them.
    pub(crate) fn elide_covered_heartbeats(msgs: &mut Vec<Message>) {
        let plain_beat = |m: &Message| {
            m.msg_type() == MessageType::MsgHeartbeat && m.context.is_empty() && m.commit > 0
        };
        if !msgs.iter().any(plain_beat) {
            return;
        }
        // (to, term) of the appends that ask for an answer.
        let covering: Vec<(u64, u64)> = msgs
            .iter()
            .filter(|a| a.msg_type() == MessageType::MsgAppend && !a.no_ack)
            .map(|a| (a.to, a.term))
            .collect();
        msgs.retain(|m| !(plain_beat(m) && covering.contains(&(m.to, m.term))));
    }

    /// True if a leader owes its followers entries or a commit index.
    pub fn has_pending_broadcast(&self) -> bool {
        !self.pending_bcast.is_empty() && self.state == super::StateRole::Leader
    }

    /// Sends one append to `to` if its progress allows; sends a snapshot
    /// instead when the needed entries are compacted. Returns whether a
    /// message was sent.
    pub(crate) fn maybe_send_append(&mut self, to: u64, send_if_empty: bool) -> bool {
        let Some(pr) = self.prs.get(to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        if pr.snapshot_request > 0 {
            let at_least = pr.snapshot_request;
            return self.send_snapshot_at_least(to, at_least);
        }
        let next = pr.next_idx;
        let term = self.raft_log.term(next - 1);
        let ents = self.raft_log.entries(next, Some(self.max_msg_size));
        let (term, ents) = match (term, ents) {
            (Ok(t), Ok(e)) => (t, e),
            _ => return self.send_snapshot(to),
        };
        if ents.is_empty() && !send_if_empty {
            return false;
        }
        let committed = self.raft_log.committed;
        let Some(pr) = self.prs.get_mut(to) else {
            return false;
        };
        // A commit-index update to a replicating follower that is known to
        // hold everything sent needs no answer: the ack would repeat a
        // match the leader has (no inflight slot, no probe). With entries
        // still unacknowledged the ack is what advances `matched` when an
        // earlier one was lost (heartbeat responses and leader transfer
        // send such empty appends), so it is requested.
        let no_ack =
            ents.is_empty() && pr.state == ProgressState::Replicate && pr.matched + 1 == next;
        if let Some(last) = ents.last().map(|e| e.index) {
            match pr.state {
                ProgressState::Replicate => {
                    pr.optimistic_update(last);
                    pr.ins.add(last);
                }
                ProgressState::Probe => pr.probe_sent = true,
                ProgressState::Snapshot => {
                    unreachable!("append to peer {to} in snapshot state (is_paused checked)")
                }
            }
        } else if pr.state == ProgressState::Probe {
            pr.probe_sent = true;
        }
        pr.update_committed(committed);
        pr.appended_since_beat |= !no_ack;
        let mut m = Self::new_message(to, MessageType::MsgAppend);
        m.index = next - 1;
        m.log_term = term;
        m.entries = ents;
        m.commit = committed;
        m.no_ack = no_ack;
        self.send(m);
        true
    }

    /// Sends heartbeats to every peer (carrying the newest pending read's
    /// context, if any).
    pub(crate) fn bcast_heartbeat(&mut self) {
        let ctx = self.read_only.last_pending_request_ctx();
        self.bcast_heartbeat_with_ctx(ctx);
    }

    /// The heartbeat of the leader's heartbeat tick: as
    /// [`Raft::bcast_heartbeat`], except that a replicating follower which
    /// an append asking for an answer reached since its last heartbeat,
    /// and which has acknowledged everything sent to it, is skipped when
    /// no read waits: that append reset its election clock, and its answer
    /// marked it active for check-quorum, as the heartbeat would. (It
    /// carried the commit index from before its own ack: with
    /// `skip_bcast_commit` the follower may learn the commit its ack made
    /// only at the next heartbeat, up to two intervals later.) A follower
    /// with appends unacknowledged gets its heartbeat: the answer is what
    /// recovers a lost ack.
    ///
    /// A skip can leave a follower up to two heartbeat intervals without a
    /// message (an append just after one heartbeat, the next heartbeat two
    /// intervals later), so nothing is skipped unless the shortest election
    /// timeout exceeds that with a tick to spare. Under steady writes
    /// spread over many regions (each awake a few ticks after a write)
    /// this halves the heartbeats.
    pub(crate) fn bcast_periodic_heartbeat(&mut self) {
        let ctx = self.read_only.last_pending_request_ctx();
        let gap_fits = self.min_election_timeout > 2 * self.heartbeat_timeout + 1;
        if ctx.is_some() || !gap_fits {
            self.bcast_heartbeat_with_ctx(ctx);
            return;
        }
        self.for_each_peer(|r, id| {
            let Some(pr) = r.prs.get_mut(id) else { return };
            let covered = pr.appended_since_beat
                && pr.state == ProgressState::Replicate
                && pr.matched + 1 == pr.next_idx;
            if covered {
                pr.appended_since_beat = false;
            } else {
                r.send_heartbeat(id, None);
            }
        });
    }

    pub(crate) fn bcast_heartbeat_with_ctx(&mut self, ctx: Option<Bytes>) {
        self.for_each_peer(|r, id| r.send_heartbeat(id, ctx.clone()));
    }

    /// Sends one heartbeat to `id` (no-op for an unknown peer).
    fn send_heartbeat(&mut self, id: u64, ctx: Option<Bytes>) {
        let committed = self.raft_log.committed;
        let Some(pr) = self.prs.get_mut(id) else {
            return;
        };
        pr.appended_since_beat = false;
        // A follower may not have the leader's commit index entries yet:
        // never tell it more than it has matched.
        let commit = pr.matched.min(committed);
        let mut m = Self::new_message(id, MessageType::MsgHeartbeat);
        m.commit = commit;
        if let Some(c) = ctx {
            m.context = c;
        }
        self.send(m);
    }

    /// Follower: handles an append from the leader.
    pub(crate) fn handle_append_entries(&mut self, mut m: Message) {
        if self.snapshot_requested {
            // Nothing appended until the snapshot is here.
            self.send_snapshot_request(m.from);
            return;
        }
        let mut resp = Self::new_message(m.from, MessageType::MsgAppendResponse);
        if m.index < self.raft_log.committed {
            // Already committed past it (a duplicate or reordered append).
            resp.index = self.raft_log.committed;
            self.send(resp);
            return;
        }
        match self.raft_log.maybe_append(
            m.index,
            m.log_term,
            m.commit,
            std::mem::take(&mut m.entries),
        ) {
            Some((_, last_new)) => {
                if m.no_ack {
                    return;
                }
                resp.index = last_new;
                resp.commit = self.raft_log.committed;
            }
            None => {
                // Fast rejection: hint the largest index whose term is at most
                // the leader's term at m.index, so the leader can skip terms.
                let hint = m.index.min(self.raft_log.last_index());
                let (hint_index, hint_term) = self.raft_log.find_conflict_by_term(hint, m.log_term);
                slog::debug!(self.logger, "rejected append"; "id" => self.id,
                    "index" => m.index, "log_term" => m.log_term, "hint" => hint_index);
                resp.index = m.index;
                resp.reject = true;
                resp.reject_hint = hint_index;
                resp.log_term = hint_term;
            }
        }
        self.send(resp);
    }

    /// Leader: handles an append acknowledgement or rejection.
    pub(crate) fn handle_append_response(&mut self, m: &Message) {
        let last_index = self.raft_log.last_index();
        let first_index = self.raft_log.first_index();
        if m.index > last_index {
            // Past anything this leader sent (it never truncates its own
            // log, and older terms' responses stopped at the term check):
            // garbage. Taking it would count entries nobody has as
            // replicated.
            slog::debug!(self.logger, "ignored append response past the log";
                "id" => self.id, "from" => m.from, "index" => m.index, "last" => last_index);
            return;
        }
        let next_probe = if m.reject && m.log_term > 0 {
            self.raft_log
                .find_conflict_by_term(m.reject_hint, m.log_term)
                .0
        } else {
            m.reject_hint
        };
        let Some(pr) = self.prs.get_mut(m.from) else {
            return;
        };
        pr.recent_active = true;
        if m.reject && m.request_snapshot > 0 {
            // The follower asks for a snapshot (one being sent serves).
            if pr.state != ProgressState::Snapshot {
                // Never below what the follower holds: restoring it
                // replaces its whole log, acknowledged entries included.
                let at_least = m.request_snapshot.max(pr.matched);
                pr.become_probe();
                pr.snapshot_request = at_least;
                self.maybe_send_append(m.from, true);
            }
            return;
        }
        if m.reject {
            if pr.maybe_decr_to(m.index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.maybe_send_append(m.from, true);
            }
            return;
        }
        let old_paused = pr.is_paused();
        // The ack of a snapshot sent on request may match no more than the
        // follower had (its log held the snapshot's index): it still ends
        // the snapshot state.
        let snapshot_acked = pr.state == ProgressState::Snapshot && m.index >= pr.pending_snapshot;
        if !pr.maybe_update(m.index) && !snapshot_acked {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot if pr.matched + 1 >= first_index => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.ins.free_to(m.index),
        }
        let matched = pr.matched;
        if !self.commit_and_announce() && old_paused {
            self.maybe_send_append(m.from, true);
        }
        // Keep the pipeline full.
        while self.maybe_send_append(m.from, false) {}
        if self.lead_transferee == Some(m.from) && matched == last_index {
            self.send_timeout_now(m.from);
        }
    }

    /// Leader: advances the commit index as far as a quorum allows, and
    /// marks the advance for the next flush if it goes to the followers at
    /// once ([`Raft::should_bcast_commit`]). Returns whether it moved.
    fn commit_and_announce(&mut self) -> bool {
        let prev_commit = self.raft_log.committed;
        if !self.maybe_commit() {
            return false;
        }
        if self.should_bcast_commit(prev_commit) {
            self.pending_bcast.commit = true;
        }
        true
    }

    /// Whether a commit advance from `prev_commit` to the current commit
    /// goes to the followers at once. With `skip_bcast_commit` only one
    /// that covers (reaches, from below) a conf change or the tail a new
    /// leader inherited (`pending_conf_index`), or an index marked by
    /// [`Raft::broadcast_commit_through`], does; the others ride on the
    /// next append or heartbeat (sleep beats included).
    fn should_bcast_commit(&self, prev_commit: u64) -> bool {
        let committed = self.raft_log.committed;
        let covers = |mark: u64| prev_commit < mark && mark <= committed;
        !self.skip_bcast_commit
            || covers(self.pending_conf_index)
            || covers(self.bcast_commit_through)
    }

    /// Follower: handles a heartbeat.
    pub(crate) fn handle_heartbeat(&mut self, m: &Message) {
        self.raft_log
            .commit_to(m.commit.min(self.raft_log.last_index()));
        let mut resp = Self::new_message(m.from, MessageType::MsgHeartbeatResponse);
        resp.context = m.context.clone();
        self.send(resp);
        if self.snapshot_requested {
            // The request again, in case it was lost.
            self.send_snapshot_request(m.from);
        }
    }

    /// Leader: handles a heartbeat response (resumes probing, confirms reads).
    pub(crate) fn handle_heartbeat_response(&mut self, m: &Message) {
        let last_index = self.raft_log.last_index();
        let Some(pr) = self.prs.get_mut(m.from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.ins.full() {
            pr.ins.free_first_one();
        }
        if pr.matched < last_index || pr.snapshot_request > 0 {
            self.maybe_send_append(m.from, true);
        }
        if !m.context.is_empty() {
            self.confirm_read(m.from, &m.context);
        }
    }

    /// Leader: commits what a quorum has (current-term entries only).
    /// Returns whether the commit index moved.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let mci = self.prs.committed();
        let term = self.term;
        let was_committed_in_term = self.committed_entry_in_current_term();
        if !self.raft_log.maybe_commit(mci, term) {
            return false;
        }
        if !was_committed_in_term && self.committed_entry_in_current_term() {
            self.release_pending_read_index();
        }
        true
    }

    /// Entries up to (`index`, `term`) are durable on this node.
    pub fn on_persist_entries(&mut self, index: u64, term: u64) {
        self.raft_log.stable_entries(index, term);
        if self.state != super::StateRole::Leader {
            return;
        }
        let persisted = self.raft_log.persisted;
        let id = self.id;
        let updated = self
            .prs
            .get_mut(id)
            .is_some_and(|pr| pr.maybe_update(persisted));
        if updated {
            self.commit_and_announce();
        }
    }

    /// The application applied up to `applied`; a leader with an
    /// auto-leave joint configuration proposes leaving it.
    pub fn commit_apply(&mut self, applied: u64) {
        self.raft_log.applied_to(applied);
        self.maybe_auto_leave_joint();
    }
}
