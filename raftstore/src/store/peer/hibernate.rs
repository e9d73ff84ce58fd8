//! The peer's side of hibernation (DESIGN §5, `store::hibernation`): when
//! an idle leader sleeps and asks its followers to, when a follower agrees,
//! what wakes a peer, and how followers react to store liveness (running
//! their election clocks out when their leader's store lost support,
//! nudging a leader that may sleep, the first election after bootstrap).

use std::num::NonZeroU64;
use std::time::Instant;

use flotilla_proto::eraftpb::{Message, MessageType};
use flotilla_proto::metapb;
use flotilla_proto::raft_serverpb::{Beat, RaftMessage};

use super::Peer;
use crate::raft::{self, tracker::ProgressState};
use crate::store::hibernation::{Hibernation, OutBeat, SleepMsg, WakeReason};
use crate::store::liveness::SupportStatus;

/// Election timeouts a fresh region's peers wait at most for their stores
/// to hear each other before the first election.
pub(super) const FRESH_HOLD_TIMEOUTS: usize = 5;

/// What an idle leader's hibernation would involve.
#[derive(Debug, Default)]
pub(super) struct SleepPlan {
    /// (peer, store) of the followers asked to sleep.
    followers: Vec<(u64, u64)>,
    /// Follower stores slept without.
    lagging: Vec<u64>,
}

impl Peer {
    /// Whether the peer hibernates.
    pub fn is_asleep(&self) -> bool {
        self.sleep.asleep
    }

    /// The hibernation beats to send (taken).
    pub fn take_sleep_beats(&mut self) -> Vec<OutBeat> {
        std::mem::take(&mut self.sleep.outbox)
    }

    /// Wakes the peer if it hibernates. Returns whether it did.
    pub fn wake(&mut self, reason: WakeReason, hib: &Hibernation) -> bool {
        if !self.sleep.asleep {
            return false;
        }
        self.sleep.asleep = false;
        self.sleep.idle_ticks = 0;
        // A request to sleep made earlier in this round must not go out
        // after what woke the peer (a follower could ack a new lease round
        // and then sleep on it).
        self.sleep.outbox.retain(|b| !b.beat.quiesce);
        hib.wake(self.region_id());
        if self.is_leader() {
            self.raft.raft.resume_after_sleep();
            // Heartbeat at once: a follower awake since this leader slept
            // hears it before its election clock runs out.
            self.raft.ping();
        } else if !matches!(
            reason,
            WakeReason::LeaderMessage | WakeReason::LeaderStoreDown
        ) {
            // The leader may sleep too: wake it rather than campaign.
            self.wake_leader();
        }
        true
    }

    /// Steps a raft message, waking the peer first if it hibernates.
    /// Returns the reason it woke for, if it did. A sleeping leader stays
    /// asleep for a heartbeat response that asks nothing of it (the late
    /// answer to its last heartbeat before it slept).
    pub fn step_raft_message(&mut self, msg: RaftMessage, hib: &Hibernation) -> Option<WakeReason> {
        if msg.gc_ack {
            self.on_gc_ack(&msg);
            return None;
        }
        if msg.is_tombstone {
            self.on_tombstone_message(&msg);
            return None;
        }
        if msg.merge_refused > 0 {
            self.on_refusal_note(&msg);
            return None;
        }
        if msg.merge_check {
            self.on_merge_check_note(&msg);
            return None;
        }
        let Some(m) = msg.message.as_ref() else {
            // A membership probe: answered without waking.
            self.on_membership_probe(&msg);
            return None;
        };
        if msg.to_peer.is_none_or(|p| p.id != self.meta.id) {
            // Not for this peer: dropped without waking it.
            self.on_raft_message(msg);
            return None;
        }
        if matches!(
            m.msg_type(),
            MessageType::MsgRequestPreVote | MessageType::MsgRequestVote
        ) {
            self.on_vote_request(m, hib);
        }
        // A deferred sleep waited for a quiet leader: not quiet after all.
        self.sleep.deferred = None;
        if !self.sleep.asleep {
            self.on_raft_message(msg);
            return None;
        }
        let benign = self.is_leader()
            && m.msg_type() == MessageType::MsgHeartbeatResponse
            && m.term == self.raft.raft.term()
            && m.context.is_empty();
        let reason = if m.from == self.raft.raft.leader_id() {
            WakeReason::LeaderMessage
        } else {
            WakeReason::PeerMessage
        };
        if benign {
            self.on_raft_message(msg);
            if !self.raft.has_ready() {
                return None;
            }
            return self.wake(reason, hib).then_some(reason);
        }
        let woke = self.wake(reason, hib);
        self.on_raft_message(msg);
        woke.then_some(reason)
    }

    /// A fresh peer's first election: holds its election clock (returns
    /// true: skip this tick) until its store supports every other store of
    /// the region or the hold runs out; then the designated one campaigns
    /// at once. A leader heard first ends the hold.
    pub(super) fn hold_fresh_election(&mut self, hib: &Hibernation) -> bool {
        let Some(left) = self.sleep.fresh_hold else {
            return false;
        };
        if self.raft.raft.leader_id() != raft::INVALID_ID {
            self.sleep.fresh_hold = None;
            return false;
        }
        let all_heard = hib.supports_all(
            self.region().peers.iter().map(|p| p.store_id),
            Instant::now(),
        );
        if !all_heard && left > 0 {
            self.sleep.fresh_hold = Some(left - 1);
            return true;
        }
        self.sleep.fresh_hold = None;
        if self.sleep.campaigns_first {
            self.raft.raft.expire_election_clock(true);
        }
        false
    }

    /// An awake follower whose leader's store lost this store's support
    /// runs its election clock out, as a withdrawal does for a sleeping
    /// one (the withdrawal messages only sleeping peers): one still quiet
    /// (woken by a peer, not its leader) looks each tick; one that heard
    /// its leader looks once the leader has been silent for half an
    /// election timeout, and again only after a withdrawal anywhere.
    ///
    /// Lease safety: support is withdrawn only after the support duration
    /// (one election timeout, longer than any lease) without an accepted
    /// batch from the store, and every lease round this follower
    /// acknowledged came in such a batch; the lease it confirmed is over.
    pub(super) fn check_leader_store(&mut self, hib: &Hibernation) {
        if self.is_leader() {
            return;
        }
        let Some((store, epoch)) = self.sleep.quiet_under else {
            self.check_silent_leader_store(hib);
            return;
        };
        match hib.support_status(store, Instant::now()) {
            SupportStatus::Supported(e) if e == epoch => {}
            SupportStatus::Lost(e) if e == epoch => {
                let first = self.campaigns_first_without(store);
                self.leader_store_lost(store, epoch, first);
            }
            // Supported again under a newer epoch (the store lived after
            // the withdrawal), or a newer support lost too: this follower
            // slept under older support and is past that.
            _ => self.sleep.quiet_under = None,
        }
    }

    pub(super) fn check_silent_leader_store(&mut self, hib: &Hibernation) {
        let raft = &self.raft.raft;
        if raft.election_elapsed() < raft.election_timeout() / 2 {
            return;
        }
        let seen = hib.withdrawal_count();
        if seen == self.sleep.seen_withdrawals {
            return;
        }
        self.sleep.seen_withdrawals = seen;
        let Some(leader) = self.leader() else { return };
        let store = leader.store_id;
        // Only a real loss of support: a store never heard in this life
        // (just restarted) proves nothing about the leader.
        let SupportStatus::Lost(lost) = hib.support_status(store, Instant::now()) else {
            return;
        };
        if store == self.meta.store_id || self.sleep.woken_by == Some((store, lost)) {
            return;
        }
        let first = self.campaigns_first_without(store);
        self.leader_store_lost(store, lost, first);
    }

    /// This follower's leader's store lost this store's support under
    /// `epoch`: it stops refusing votes as within a lease and runs its
    /// election clock out, campaigning at once if `first` (see
    /// `check_leader_store` for why this is lease-safe). A vote request it
    /// refused as within the lease meanwhile is answered now, as if it
    /// arrived late: the asker, still campaigning, needs only that answer,
    /// so this follower does not campaign itself then.
    fn leader_store_lost(&mut self, store: u64, epoch: u64, first: bool) {
        self.sleep.quiet_under = None;
        self.sleep.woken_by = Some((store, epoch));
        // The asker of a kept request that would be granted is
        // campaigning already; one that would be refused (its log is
        // behind, its term stale) is no reason to hold back.
        let answer_grants = self
            .sleep
            .asked
            .as_deref()
            .is_some_and(|m| self.raft.raft.could_grant_vote(m));
        if first && !answer_grants {
            // Not at the next tick: at a store's death the first
            // campaigners of tens of thousands of regions start in the
            // rounds their wakes arrive in, instead of all at one tick.
            self.raft.raft.campaign_now();
        } else {
            self.raft.raft.expire_election_clock(false);
        }
        self.answer_refused_ask();
    }

    /// Answers the vote request kept by [`Peer::keep_refused_ask`] once
    /// this follower's lease is over (its store lost the leader's, or its
    /// election clock ran past the timeout), as if it arrived only now.
    /// Unanswered, the asker would wait out a whole randomized election
    /// timeout, and as a pre-candidate it refuses a pre-vote of a peer
    /// with a higher id meanwhile.
    pub(super) fn answer_refused_ask(&mut self) {
        if self.sleep.asked.is_none() || self.raft.raft.ignores_votes_in_lease() {
            return;
        }
        if let Some(m) = self.sleep.asked.take()
            && let Err(e) = self.raft.step(*m)
        {
            slog::debug!(self.logger, "answering a refused vote request failed"; "err" => %e);
        }
    }

    /// A peer of the region asks for a vote while this follower is quiet
    /// (it slept under its leader's store and has not heard the leader
    /// since). If this store no longer supports that store either (its
    /// support lapsed, whether or not a tick withdrew it yet), the leader
    /// is gone here too: the clock runs out now, as a withdrawal would
    /// make it, so the vote is not refused as within a lease. Otherwise
    /// the refusal stands, and the request is kept to be answered when the
    /// withdrawal comes (a peer already found the leader gone).
    fn on_vote_while_quiet(&mut self, m: &Message, hib: &Hibernation) {
        let Some((store, epoch)) = self.sleep.quiet_under else {
            return;
        };
        match hib.support_status(store, Instant::now()) {
            SupportStatus::Supported(e) if e == epoch => self.keep_refused_ask(m),
            SupportStatus::Lost(e) if e == epoch => self.leader_store_lost(store, epoch, false),
            // Supported again under a newer epoch: the store lived after
            // the withdrawal; its leader may be alive.
            _ => {}
        }
    }

    /// A peer of the region asks this follower for a vote. A quiet one
    /// goes by [`Peer::on_vote_while_quiet`]. An awake one that still hears
    /// its leader (or its store) refuses the vote as within the lease, and
    /// the asker, hearing nothing, would wait a whole randomized election
    /// timeout; so the request is kept and answered when this store later
    /// loses the leader's store ([`Peer::leader_store_lost`]). Should this
    /// store have lost the leader's store already, the clock runs out now,
    /// as [`Peer::check_silent_leader_store`] would make it at the next
    /// tick.
    fn on_vote_request(&mut self, m: &Message, hib: &Hibernation) {
        if self.is_leader() {
            return;
        }
        if self.sleep.quiet_under.is_some() {
            self.on_vote_while_quiet(m, hib);
            return;
        }
        let Some(store) = self
            .leader()
            .filter(|l| l.id != self.meta.id)
            .map(|l| l.store_id)
        else {
            return;
        };
        if store == self.meta.store_id {
            return;
        }
        match hib.support_status(store, Instant::now()) {
            SupportStatus::Lost(lost) if self.sleep.woken_by != Some((store, lost)) => {
                self.leader_store_lost(store, lost, false);
            }
            SupportStatus::Lost(_) => {}
            _ => self.keep_refused_ask(m),
        }
    }

    /// Keeps `m`, a vote request raft is about to ignore as within the
    /// lease (the latest such request wins).
    /// Only a current voter's request is kept (a removed peer that keeps
    /// campaigning must not hold the slot).
    fn keep_refused_ask(&mut self, m: &Message) {
        let voter = self
            .region()
            .peers
            .iter()
            .any(|p| p.id == m.from && p.role() != metapb::PeerRole::Learner);
        if voter && self.raft.raft.ignores_vote(m) {
            self.sleep.asked = Some(Box::new(m.clone()));
        }
    }

    /// Handles a hibernation message. Returns the reason the peer woke
    /// for, if it did.
    pub fn on_sleep_msg(&mut self, msg: SleepMsg, hib: &Hibernation) -> Option<WakeReason> {
        match msg {
            SleepMsg::Request {
                from,
                from_store,
                term,
                commit,
            } => {
                self.on_sleep_request(from, from_store, term, commit, hib);
                None
            }
            SleepMsg::WakeLeader { .. } => self
                .wake(WakeReason::PeerMessage, hib)
                .then_some(WakeReason::PeerMessage),
            SleepMsg::LeaderStoreDown { store, epoch } => {
                // Only for a follower that slept under that very support of
                // its leader's store and has not heard the leader since: a
                // late message (the follower woke, heard its leader, or
                // slept again under newer support) changes nothing.
                if self.is_leader() || self.sleep.quiet_under != Some((store, epoch)) {
                    // Stale for this peer; but a peer asleep here that the
                    // registry no longer files asleep would never tick
                    // again: wake it (without running its clock out).
                    if self.sleep.asleep && !hib.is_asleep(self.region_id()) {
                        return self
                            .wake(WakeReason::LeaderStoreDown, hib)
                            .then_some(WakeReason::LeaderStoreDown);
                    }
                    return None;
                }
                let woke = self.wake(WakeReason::LeaderStoreDown, hib);
                // Its leader is gone: campaign now, not a whole election
                // timeout after the withdrawal; one follower per region
                // first, the others a little later.
                let first = self.campaigns_first_without(store);
                self.leader_store_lost(store, epoch, first);
                woke.then_some(WakeReason::LeaderStoreDown)
            }
            SleepMsg::SupportWithdrawn => {
                if !self.sleep.asleep && self.sleep.quiet_under.is_none() {
                    self.check_silent_leader_store(hib);
                }
                None
            }
            SleepMsg::LaggingStoreBack { .. } => self
                .wake(WakeReason::LaggingStoreBack, hib)
                .then_some(WakeReason::LaggingStoreBack),
            SleepMsg::FollowerStoreRestarted { store } => {
                self.resend_sleep_request(store);
                None
            }
        }
    }

    /// A sleeping leader whose follower's store `store` restarted sends
    /// that follower its hibernate beat again, staying asleep. The
    /// follower, which lost track of its leader with the restart, takes
    /// it up and sleeps too if its log still ends at this leader's commit
    /// in this term (see [`Peer::on_sleep_request`]); otherwise it wakes
    /// this leader, as any follower missing a sleep does. Without it the
    /// follower would campaign once its election clock ran out, and a
    /// store's restart would wake every region it has a peer of. Sent
    /// once: if it is lost, the follower's clock runs out and its
    /// pre-vote wakes the region, as before.
    fn resend_sleep_request(&mut self, store: u64) {
        if !self.sleep.asleep || !self.is_leader() {
            return;
        }
        let me = self.meta.id;
        let beats: Vec<OutBeat> = self
            .region()
            .peers
            .iter()
            .filter(|p| p.store_id == store && p.id != me)
            .map(|p| self.sleep_request_to(p.id, store))
            .collect();
        self.sleep.outbox.extend(beats);
    }

    /// A follower that has not heard its leader for half an election
    /// timeout while the leader's store is supported asks the leader to
    /// wake: it may hibernate, having missed this follower's sleep (a lost
    /// request). The woken leader heartbeats at once, well before the
    /// follower's clock runs out; the clock itself is left alone, so a
    /// leader that is really gone costs no extra timeout.
    pub(super) fn maybe_nudge_leader(&mut self, hib: &Hibernation) {
        let raft = &self.raft.raft;
        if self.is_leader()
            || self.sleep.nudged
            || raft.election_elapsed() < raft.election_timeout() / 2
        {
            return;
        }
        let Some(leader) = self.leader() else {
            return;
        };
        if leader.id == self.meta.id {
            return;
        }
        let Some(support) = hib.supports(leader.store_id, Instant::now()) else {
            return;
        };
        if let Some((store, lost)) = self.sleep.woken_by
            && store == leader.store_id
        {
            if support <= lost {
                return;
            }
            // Supported again since it was withdrawn: the store is back.
            self.sleep.woken_by = None;
        }
        self.sleep.nudged = true;
        self.wake_leader();
    }

    /// Whether this peer is the one of its region to campaign first when
    /// the leader's store `down` is gone: the region's voters on other
    /// stores take turns by region id, so the new leaders of a dead
    /// store's regions spread over the surviving stores. (`down` = 0, no
    /// store, counts every voter.)
    pub(super) fn campaigns_first_without(&self, down: u64) -> bool {
        let mut ids: Vec<u64> = self
            .region()
            .peers
            .iter()
            .filter(|p| p.store_id != down && p.role() != metapb::PeerRole::Learner)
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        let Some(n) = u64::try_from(ids.len()).ok().filter(|&n| n > 0) else {
            return false;
        };
        usize::try_from(self.region_id() % n)
            .ok()
            .and_then(|i| ids.get(i))
            == Some(&self.meta.id)
    }

    pub(super) fn wake_leader(&mut self) {
        let Some(leader) = self.leader() else { return };
        if leader.id == self.meta.id {
            return;
        }
        let beat = Beat {
            region_id: self.region_id(),
            from_peer: self.meta.id,
            to_peer: leader.id,
            term: self.raft.raft.term(),
            wake: true,
            ..Default::default()
        };
        self.sleep.outbox.push(OutBeat {
            to_store: leader.store_id,
            beat,
            response: true,
        });
    }

    /// The followers a leader hibernating now would ask to sleep, and the
    /// follower stores it would sleep without (not supported by store
    /// liveness). `None` if the region is not idle: something pending, not
    /// everything applied, a live follower behind, or the matched peers
    /// not a quorum.
    pub(super) fn hibernate_plan(&self, hib: &Hibernation, now: Instant) -> Option<SleepPlan> {
        let raft = &self.raft.raft;
        let log = raft.raft_log();
        let last = log.last_index();
        let idle = self.is_leader()
            && raft.lead_transferee().is_none()
            && self.pending_ready.is_none()
            && !self.raft.has_pending_state()
            && self.proposals.is_empty()
            && self.reads.is_empty()
            && self.lease.expires_at.is_none_or(|e| e <= now)
            && log.committed == last
            && self.raft.store().applied_index() == last
            && log.term(last).is_ok_and(|t| t == raft.term())
            && raft.pending_conf_index() <= last
            && raft.uncommitted_size() == 0
            // A merging region's peers keep checking on the merge.
            && !self.is_merging()
            && self
                .merge
                .as_ref()
                .is_none_or(|m| m.is_idle(self.raft.store().applied_index()));
        if !idle {
            return None;
        }
        let region = self.region();
        let mut plan = SleepPlan::default();
        let mut matched = vec![self.meta.id];
        for (id, pr) in raft.prs().iter() {
            if id == self.meta.id {
                continue;
            }
            let store = region.peers.iter().find(|p| p.id == id)?.store_id;
            if hib.supports(store, now).is_none() {
                if !plan.lagging.contains(&store) {
                    plan.lagging.push(store);
                }
            } else if pr.state == ProgressState::Replicate && pr.matched == last {
                matched.push(id);
                plan.followers.push((id, store));
            } else {
                return None;
            }
        }
        // Removed peers not yet confirmed gone: told while their store is
        // live, and once it is back.
        for store in self.unconfirmed_removals() {
            if hib.supports(store, now).is_some() {
                return None;
            }
            if !plan.lagging.contains(&store) {
                plan.lagging.push(store);
            }
        }
        raft.prs().has_quorum(&matched).then_some(plan)
    }

    /// An idle leader hibernates: it files itself asleep and asks its
    /// matched followers to sleep too.
    pub(super) fn try_hibernate(&mut self, hib: &Hibernation) {
        let now = Instant::now();
        let Some(plan) = self.hibernate_plan(hib, now) else {
            return;
        };
        if !hib.sleep_leader(self.region_id(), &plan.lagging, now) {
            return;
        }
        self.sleep.asleep = true;
        for (peer, store) in plan.followers {
            let beat = self.sleep_request_to(peer, store);
            self.sleep.outbox.push(beat);
        }
        self.free_idle_buffers();
    }

    /// This leader's hibernate beat (its term, and its commit, which is its
    /// last index) for its follower `peer` on `store`.
    fn sleep_request_to(&self, peer: u64, store: u64) -> OutBeat {
        OutBeat {
            to_store: store,
            beat: Beat {
                region_id: self.region_id(),
                from_peer: self.meta.id,
                to_peer: peer,
                term: self.raft.raft.term(),
                commit: self.raft.raft.raft_log().committed,
                quiesce: true,
                ..Default::default()
            },
            response: false,
        }
    }

    /// A follower asked to hibernate by its leader: it sleeps if it is in
    /// the same state (term, leader, log ending at the leader's commit,
    /// everything applied) and supports the leader's store; otherwise it
    /// takes the beat as a heartbeat and wakes the leader. It takes the
    /// commit from the request (commit advances go out with the next
    /// append or beat, not on their own), and if what it just learned is
    /// committed is not applied yet, it defers: see `PeerSleep::deferred`
    /// and [`Peer::retry_deferred_sleep`].
    pub(super) fn on_sleep_request(
        &mut self,
        from: u64,
        from_store: u64,
        term: u64,
        commit: u64,
        hib: &Hibernation,
    ) {
        self.sleep.deferred = None;
        if self.sleep.asleep {
            return;
        }
        // Taken up, it is the same leader below; its changed soft state
        // makes the sleep wait for the round's end.
        self.adopt_sleeping_leader(from, from_store, term, commit);
        let same_leader = !self.is_leader()
            && self.raft.raft.term() == term
            && self.raft.raft.leader_id() == from
            && self
                .region()
                .peers
                .iter()
                .any(|p| p.id == from && p.store_id == from_store);
        let log = self.raft.raft.raft_log_mut();
        if same_leader && log.last_index() == commit && log.committed < commit {
            // As a heartbeat would: the request goes only to a follower
            // the leader knows holds its whole log in this term.
            log.commit_to(commit);
        }
        let caught_up = same_leader && self.settled_at(commit);
        let applied = self.raft.store().applied_index();
        let support = || {
            hib.supports(from_store, Instant::now())
                .and_then(NonZeroU64::new)
        };
        if caught_up && applied < commit {
            let support = support();
            if support.is_some() {
                // Sleeps once the apply side has the entries; the leader
                // sleeps meanwhile, so nothing is sent.
                self.sleep.deferred = support;
                return;
            }
        }
        if caught_up && applied == commit {
            if self.sleep_under(from_store, None, hib) {
                return;
            }
            // Only a change of this round not yet handed over stands in
            // the way (say the same request came twice in one round, the
            // first taken up by `adopt_sleeping_leader`): sleep at the
            // round's end, as a deferral does.
            let unsaved = self.pending_ready.is_some() || self.raft.has_pending_state();
            if let Some(support) = support().filter(|_| unsaved) {
                self.sleep.deferred = Some(support);
                return;
            }
        }
        // As a heartbeat, with the commit only if this log provably holds
        // the leader's entry there (its term): a follower that lost an
        // unsynced tail in a crash may hold an older entry at that index
        // than the one the leader saw it acknowledge.
        let log = self.raft.raft.raft_log();
        let at = commit.min(log.last_index());
        let commit = if log.term(at).is_ok_and(|t| t == term) {
            commit
        } else {
            0
        };
        let m = Message {
            msg_type: MessageType::MsgHeartbeat as i32,
            from,
            to: self.meta.id,
            term,
            commit,
            ..Default::default()
        };
        if let Err(e) = self.raft.step(m) {
            slog::debug!(self.logger, "hibernate beat refused"; "err" => %e);
        }
        self.wake_leader();
    }

    /// A follower that knows no leader takes the sleeping leader `from`
    /// on `from_store` as its leader, as a heartbeat of the leader's would
    /// make it, when its log provably is the leader's whole log: same
    /// term, and its last entry, at the leader's `commit`, is of that term
    /// (only that term's leader wrote it, and logs that agree on an entry
    /// agree before it). The leader sent the request only to a follower it
    /// knew matched its whole log, so the commit holds. Asked of every
    /// request; in practice it is a follower whose store restarted (see
    /// [`SleepMsg::FollowerStoreRestarted`]), or a pre-candidate of the
    /// same term.
    fn adopt_sleeping_leader(&mut self, from: u64, from_store: u64, term: u64, commit: u64) {
        let raft = &self.raft.raft;
        let log = raft.raft_log();
        let adopt = !self.is_leader()
            && raft.leader_id() == raft::INVALID_ID
            && raft.term() == term
            && log.last_index() == commit
            && log.term(commit).is_ok_and(|t| t == term)
            && self
                .region()
                .peers
                .iter()
                .any(|p| p.id == from && p.store_id == from_store && p.id != self.meta.id);
        if !adopt {
            return;
        }
        self.raft.raft.become_follower(term, from);
        let log = self.raft.raft.raft_log_mut();
        if log.committed < commit {
            log.commit_to(commit);
        }
    }

    /// Files this follower asleep under its leader on `store` if nothing
    /// is pending and the store is supported (under `epoch`, if given).
    /// Returns whether it sleeps.
    fn sleep_under(&mut self, store: u64, epoch: Option<u64>, hib: &Hibernation) -> bool {
        if self.pending_ready.is_some() || self.raft.has_pending_state() {
            return false;
        }
        let now = Instant::now();
        if epoch.is_some_and(|e| hib.supports(store, now) != Some(e)) {
            return false;
        }
        let not_before = self
            .sleep
            .woken_by
            .and_then(|(s, e)| (s == store).then_some(e));
        let first = self.campaigns_first_without(store);
        let Some(epoch) = hib.sleep_follower(self.region_id(), store, not_before, first, now)
        else {
            return false;
        };
        self.sleep.asleep = true;
        self.sleep.quiet_under = Some((store, epoch));
        self.sleep.asked = None;
        self.sleep.woken_by = None;
        self.sleep.nudged = false;
        self.raft.raft.reset_election_clock();
        self.free_idle_buffers();
        true
    }

    /// Whether this peer's log ends at `commit`, committed through it,
    /// with no read or proposal waiting: the state a sleep request asks a
    /// follower to be in (applying aside).
    fn settled_at(&self, commit: u64) -> bool {
        let log = self.raft.raft.raft_log();
        log.committed == commit
            && log.last_index() == commit
            && self.reads.is_empty()
            && self.proposals.is_empty()
    }

    /// A follower whose sleep waited for its apply side (see
    /// `PeerSleep::deferred`): once everything up to its commit is
    /// applied, it sleeps if nothing changed since the request; if
    /// something did, it only drops the deferral (no heartbeat is made up
    /// for a leader it may no longer have: its clock runs on, and a leader
    /// still asleep is nudged at half an election timeout). Returns
    /// whether it fell asleep.
    pub fn retry_deferred_sleep(&mut self, hib: &Hibernation) -> bool {
        let Some(epoch) = self.sleep.deferred else {
            return false;
        };
        let commit = self.raft.raft.raft_log().committed;
        if self.raft.store().applied_index() < commit {
            return false;
        }
        self.sleep.deferred = None;
        let unchanged = !self.is_leader() && self.settled_at(commit);
        // No leader: an election began since (this peer's clock ran out).
        self.leader()
            .filter(|_| unchanged)
            .is_some_and(|leader| self.sleep_under(leader.store_id, Some(epoch.get()), hib))
    }

    /// Frees what an idle peer does not need; it grows back on demand.
    pub(super) fn free_idle_buffers(&mut self) {
        self.raft.raft.free_idle_buffers();
        let applied = self.raft.store().applied_index();
        // Every applied entry leaves the cache, and so does its buffer: the
        // term of the last one is the storage's `last_term` (a hibernated
        // peer has applied its whole log) and, once the next append moves
        // past it, its `prev_tail`, which the leader's next append asks
        // for; anything older is read from the engine.
        self.raft
            .raft
            .raft_log_mut()
            .store
            .release_cache_to(applied);
        self.proposals.shrink_to_fit();
        self.reads.shrink_to_fit();
        self.sleep.outbox.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flotilla_engine::{Durability, Engine, EngineOptions};
    use slog::Logger;

    use super::*;
    use crate::raft::StateRole;
    use crate::store::bootstrap::{bootstrap_store, initial_regions};
    use crate::store::config::Config;
    use crate::store::meta::StoreMeta;
    use flotilla_proto::eraftpb::Entry;

    /// The store under test: 3 of a region on stores 1 (leader), 2 (the
    /// asker) and 3 (this follower, the region's designated first
    /// campaigner when store 1 is gone).
    const ME: u64 = 3;
    const LEADER: u64 = 1;
    const ASKER: u64 = 2;

    struct Follower {
        peer: Peer,
        region: metapb::Region,
        hib: Hibernation,
        cfg: Config,
        _dir: tempfile::TempDir,
    }

    impl Follower {
        fn new(support: Duration) -> Follower {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
            let region = initial_regions(&[LEADER, ASKER, ME], 1).unwrap().remove(0);
            bootstrap_store(&engine, 1, ME, std::slice::from_ref(&region)).unwrap();
            let cfg = Config::default();
            let logger = Logger::root(slog::Discard, slog::o!());
            let me = region.peers.iter().find(|p| p.store_id == ME).unwrap().id;
            let peer = Peer::new(
                &cfg,
                engine,
                region.clone(),
                me,
                &StoreMeta::new().shared(),
                &logger,
            )
            .unwrap();
            let hib = Hibernation::new(ME, 1, [region.id], [LEADER, ASKER], support);
            let now = Instant::now();
            hib.heard(LEADER, 1, (0, 0), now);
            hib.heard(ASKER, 1, (0, 0), now);
            Follower {
                peer,
                region,
                hib,
                cfg,
                _dir: dir,
            }
        }

        fn peer_on(&self, store: u64) -> metapb::Peer {
            *self
                .region
                .peers
                .iter()
                .find(|p| p.store_id == store)
                .unwrap()
        }

        fn deliver(&mut self, from_store: u64, m: Message) {
            let msg = RaftMessage {
                region_id: self.region.id,
                from_peer: Some(self.peer_on(from_store)),
                to_peer: Some(self.peer_on(ME)),
                message: Some(m),
                region_epoch: self.region.region_epoch,
                ..Default::default()
            };
            self.peer.step_raft_message(msg, &self.hib);
        }

        /// The leader on store 1 heartbeats in a new term, which this
        /// follower takes (its lease starts). Returns the term.
        fn hear_the_leader(&mut self) -> u64 {
            let term = self.peer.raft.raft.term() + 1;
            self.leader_beat(term, 0);
            self.sent();
            assert_eq!(self.peer.leader().map(|l| l.store_id), Some(LEADER));
            term
        }

        /// A heartbeat from the leader on store 1 in `term`.
        fn leader_beat(&mut self, term: u64, commit: u64) {
            let (leader, me) = (self.peer_on(LEADER).id, self.peer_on(ME).id);
            self.deliver(
                LEADER,
                Message {
                    msg_type: MessageType::MsgHeartbeat as i32,
                    from: leader,
                    to: me,
                    term,
                    commit,
                    ..Default::default()
                },
            );
        }

        /// The messages of the peer's Ready, the round's write made
        /// durable in between (as a poller does).
        fn sent(&mut self) -> Vec<Message> {
            let mut out = Vec::new();
            let mut wb = self.peer.engine.write_batch();
            self.peer
                .collect_ready(&mut wb, &mut |_, m| out.push(m))
                .unwrap();
            self.peer.engine.write(wb, Durability::Sync).unwrap();
            self.peer.finish_ready(&mut |_, m| out.push(m));
            out
        }

        /// The leader on store 1 heartbeats (in a new term), then the peer
        /// on store 2 asks for a pre-vote, which this follower ignores as
        /// within the lease. Returns the term of the pre-vote.
        fn ignore_a_pre_vote(&mut self) -> u64 {
            self.ignore_a_pre_vote_behind(0)
        }

        /// As [`Follower::ignore_a_pre_vote`], the asker's log `behind`
        /// entries behind this follower's.
        fn ignore_a_pre_vote_behind(&mut self, behind: u64) -> u64 {
            let term = self.hear_the_leader();
            let me = self.peer_on(ME).id;
            let log = self.peer.raft.raft.raft_log();
            let (index, log_term) = (log.last_index() - behind, log.last_term());
            self.deliver(
                ASKER,
                Message {
                    msg_type: MessageType::MsgRequestPreVote as i32,
                    from: self.peer_on(ASKER).id,
                    to: me,
                    term: term + 1,
                    index,
                    log_term,
                    ..Default::default()
                },
            );
            assert!(
                self.pre_vote_answers().is_empty(),
                "answered within the lease"
            );
            assert!(self.peer.sleep.asked.is_some(), "the ask was not kept");
            term + 1
        }

        /// The leader appends one entry, which this follower persists,
        /// then asks it to sleep with that entry committed: the follower
        /// learns the commit from the ask and, the entry not applied yet,
        /// defers without a word to the leader. Returns the entry's index.
        fn defer_a_sleep(&mut self) -> u64 {
            let term = self.hear_the_leader();
            let last = self.append_one(term);
            let ask = self.ask(term, last + 1);
            self.peer.on_sleep_msg(ask, &self.hib);
            assert_eq!(self.peer.raft.raft.raft_log().committed, last + 1);
            assert!(self.peer.sleep.deferred.is_some(), "did not defer");
            assert!(!self.peer.is_asleep(), "slept with the entry unapplied");
            assert!(self.peer.take_sleep_beats().is_empty(), "woke the leader");
            last + 1
        }

        /// The leader on store 1 appends one entry of `term` after this
        /// follower's last, committing nothing new; the round is written.
        /// Returns the follower's last index before it.
        fn append_one(&mut self, term: u64) -> u64 {
            let (leader, me) = (self.peer_on(LEADER).id, self.peer_on(ME).id);
            let log = self.peer.raft.raft.raft_log();
            let (last, last_term, committed) = (log.last_index(), log.last_term(), log.committed);
            self.deliver(
                LEADER,
                Message {
                    msg_type: MessageType::MsgAppend as i32,
                    from: leader,
                    to: me,
                    term,
                    index: last,
                    log_term: last_term,
                    commit: committed,
                    entries: vec![Entry {
                        index: last + 1,
                        term,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            );
            self.sent();
            last
        }

        /// The leader on store 1's request to sleep at (`term`, `commit`).
        fn ask(&self, term: u64, commit: u64) -> SleepMsg {
            SleepMsg::Request {
                from: self.peer_on(LEADER).id,
                from_store: LEADER,
                term,
                commit,
            }
        }

        /// The round that hands the committed entries over, then the apply
        /// side's report that everything through `index` applied.
        fn apply_through(&mut self, index: u64) {
            self.sent();
            let mut apply_state = *self.peer.raft.store().apply_state();
            apply_state.applied_index = index;
            let peer_id = self.peer_on(ME).id;
            self.peer.on_apply_res(crate::store::msg::ApplyRes {
                peer_id,
                apply_state,
                results: Vec::new(),
            });
            self.peer.retry_deferred_sleep(&self.hib);
        }

        fn pre_vote_answers(&mut self) -> Vec<Message> {
            self.sent()
                .into_iter()
                .filter(|m| m.msg_type() == MessageType::MsgRequestPreVoteResponse)
                .collect()
        }
    }

    /// A pre-vote this follower ignored as within the lease is answered
    /// (granted) when its store loses the leader's store, and the
    /// follower, though its region's designated campaigner, does not
    /// campaign itself: the asker is campaigning already. Unanswered, the
    /// asker waited a whole randomized election timeout (`flotilla load`'s
    /// failover tail).
    #[test]
    fn a_refused_pre_vote_is_answered_when_the_leader_store_is_lost() {
        let support = Duration::from_millis(50);
        let mut f = Follower::new(support);
        let term = f.ignore_a_pre_vote();
        assert!(f.peer.campaigns_first_without(LEADER));
        std::thread::sleep(support * 2);
        let now = Instant::now();
        f.hib.heard(ASKER, 1, (0, 0), now);
        let (withdrawn, _) = f.hib.expire(now);
        assert_eq!(withdrawn, vec![LEADER]);
        let mut answers = Vec::new();
        for tick in 1..=f.cfg.election_ticks as u64 {
            f.peer.on_tick(tick, &f.cfg, &f.hib);
            answers.extend(f.pre_vote_answers());
            if !answers.is_empty() {
                assert!(
                    tick < f.cfg.election_ticks as u64,
                    "answered only when the lease ran out by itself"
                );
                break;
            }
        }
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(!answers[0].reject);
        assert_eq!(answers[0].term, term);
        assert_eq!(answers[0].to, f.peer_on(ASKER).id);
        assert_eq!(f.peer.raft.raft.state(), StateRole::Follower);
        assert!(f.peer.sleep.asked.is_none());
    }

    /// An awake follower (it heard its leader until the leader's store
    /// died) is told of the withdrawal by a message and, as its region's
    /// first campaigner, campaigns at once, not at its next due tick.
    #[test]
    fn an_awake_follower_campaigns_when_told_of_a_withdrawal() {
        let support = Duration::from_millis(50);
        let mut f = Follower::new(support);
        f.hear_the_leader();
        let half = f.cfg.election_ticks as u64 / 2;
        for tick in 1..=half {
            f.peer.on_tick(tick, &f.cfg, &f.hib);
            f.sent();
        }
        std::thread::sleep(support * 2);
        let now = Instant::now();
        f.hib.heard(ASKER, 1, (0, 0), now);
        assert_eq!(f.hib.expire(now).0, vec![LEADER]);
        assert_eq!(f.peer.raft.raft.state(), StateRole::Follower);
        f.peer.on_sleep_msg(SleepMsg::SupportWithdrawn, &f.hib);
        assert_eq!(f.peer.raft.raft.state(), StateRole::PreCandidate);
        let pre_votes = f
            .sent()
            .into_iter()
            .filter(|m| m.msg_type() == MessageType::MsgRequestPreVote)
            .count();
        assert_eq!(pre_votes, 2);
    }

    /// A kept request that would be refused (the asker's log is behind)
    /// does not hold the region's first campaigner back: when the
    /// leader's store is lost it refuses the asker and campaigns itself.
    #[test]
    fn a_kept_ask_from_a_lagging_asker_does_not_stop_the_first_campaigner() {
        let support = Duration::from_millis(50);
        let mut f = Follower::new(support);
        f.ignore_a_pre_vote_behind(1);
        std::thread::sleep(support * 2);
        let now = Instant::now();
        f.hib.heard(ASKER, 1, (0, 0), now);
        assert_eq!(f.hib.expire(now).0, vec![LEADER]);
        let half = f.cfg.election_ticks as u64 / 2;
        let mut answers = Vec::new();
        for tick in 1..=half + 1 {
            f.peer.on_tick(tick, &f.cfg, &f.hib);
            answers.extend(f.pre_vote_answers());
            if f.peer.raft.raft.state() == StateRole::PreCandidate {
                break;
            }
        }
        assert_eq!(f.peer.raft.raft.state(), StateRole::PreCandidate);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(answers[0].reject, "a lagging log was granted");
    }

    /// With the leader's store still supported, the kept pre-vote is
    /// answered at the tick the lease runs out, not later, though the
    /// store clock sends the peer only its due ticks (a follower whose
    /// leader is silent for half an election timeout is due every tick).
    #[test]
    fn a_refused_pre_vote_is_answered_when_the_lease_runs_out() {
        let mut f = Follower::new(Duration::from_secs(600));
        let term = f.ignore_a_pre_vote();
        let timeout = f.peer.raft.raft.election_timeout() as u64;
        let mut answered_at = None;
        while answered_at.is_none() && f.peer.clock < timeout {
            let tick = f.peer.tick_due();
            f.peer.on_tick(tick, &f.cfg, &f.hib);
            let answers = f.pre_vote_answers();
            if let Some(a) = answers.first() {
                assert!(!a.reject);
                assert_eq!(a.term, term);
                answered_at = Some(tick);
                break;
            }
        }
        assert_eq!(answered_at, Some(timeout));
    }

    /// A follower asked to sleep before it applied what the ask told it is
    /// committed sleeps once its apply side reports it, without waking the
    /// leader (commit advances no longer travel in an append of their own,
    /// so this is the usual case after a write).
    #[test]
    fn a_follower_asked_to_sleep_before_it_applied_sleeps_once_it_has() {
        let mut f = Follower::new(Duration::from_secs(600));
        let index = f.defer_a_sleep();
        f.apply_through(index);
        assert!(f.peer.is_asleep());
        assert_eq!(f.peer.sleep.quiet_under, Some((LEADER, 1)));
        assert!(f.peer.take_sleep_beats().is_empty());
    }

    /// A deferred sleep whose leader's store restarted meanwhile (its
    /// support epoch moved on) is dropped: the follower neither sleeps
    /// under the store's new life nor makes up a heartbeat from a leader
    /// it may no longer have.
    #[test]
    fn a_deferred_sleep_is_dropped_when_the_leaders_store_restarted() {
        let mut f = Follower::new(Duration::from_secs(600));
        let index = f.defer_a_sleep();
        let _ = f.hib.heard(LEADER, 2, (0, 0), Instant::now());
        assert_eq!(f.hib.supports(LEADER, Instant::now()), Some(2));
        let clock = f.peer.raft.raft.election_elapsed();
        f.apply_through(index);
        assert!(!f.peer.is_asleep(), "slept under the restarted store");
        assert_eq!(f.peer.sleep.deferred, None);
        assert!(f.peer.take_sleep_beats().is_empty(), "woke a dead leader");
        assert_eq!(f.peer.raft.raft.election_elapsed(), clock);
    }

    impl Follower {
        /// This follower's store restarts: the peer is loaded again from
        /// its engine (it knows no leader), under a new store life that
        /// has heard the other stores.
        fn restart(&mut self) {
            let me = self.peer_on(ME).id;
            let engine = self.peer.engine.clone();
            let logger = Logger::root(slog::Discard, slog::o!());
            self.peer = Peer::new(
                &self.cfg,
                engine,
                self.region.clone(),
                me,
                &StoreMeta::new().shared(),
                &logger,
            )
            .unwrap();
            self.hib = Hibernation::new(
                ME,
                2,
                [self.region.id],
                [LEADER, ASKER],
                Duration::from_secs(600),
            );
            let now = Instant::now();
            self.hib.heard(LEADER, 1, (0, 0), now);
            self.hib.heard(ASKER, 1, (0, 0), now);
        }
    }

    /// A follower whose store restarted knows no leader; the sleeping
    /// leader's hibernate beat, sent again for the restart, is taken up
    /// without a word to the leader (no heartbeat answer, no wake request,
    /// no vote), and the follower sleeps under it once it applied the
    /// log again.
    #[test]
    fn a_restarted_follower_takes_up_its_sleeping_leader_without_waking_it() {
        let mut f = Follower::new(Duration::from_secs(600));
        let index = f.defer_a_sleep();
        f.apply_through(index);
        assert!(f.peer.is_asleep());
        let term = f.peer.raft.raft.term();
        f.restart();
        assert_eq!(f.peer.leader(), None);
        let ask = f.ask(term, index);
        f.peer.on_sleep_msg(ask, &f.hib);
        assert!(f.peer.take_sleep_beats().is_empty(), "woke the leader");
        assert_eq!(f.peer.leader().map(|l| l.store_id), Some(LEADER));
        assert_eq!(f.peer.raft.raft.raft_log().committed, index);
        let sent = f.sent();
        assert!(sent.is_empty(), "{sent:?}");
        assert!(!f.peer.is_asleep(), "slept before applying again");
        f.apply_through(index);
        assert!(f.peer.is_asleep());
        assert_eq!(f.peer.sleep.quiet_under, Some((LEADER, 1)));
    }

    /// The same request twice in one round (the note's resend and a fresh
    /// sleep of a leader that woke in between): the second does not undo
    /// the first's deferral and wake the leader.
    #[test]
    fn a_restarted_follower_asked_twice_in_a_round_still_sleeps() {
        let mut f = Follower::new(Duration::from_secs(600));
        let index = f.defer_a_sleep();
        f.apply_through(index);
        let term = f.peer.raft.raft.term();
        // Everything was applied before the restart (the apply side wrote
        // it): nothing waits for the apply side after it.
        let apply_state = *f.peer.raft.store().apply_state();
        f.peer
            .engine
            .put_msg(
                flotilla_engine::Cf::Raft,
                &flotilla_engine::keys::apply_state_key(f.region.id),
                &apply_state,
            )
            .unwrap();
        f.restart();
        assert_eq!(f.peer.raft.store().applied_index(), index);
        let ask = f.ask(term, index);
        f.peer.on_sleep_msg(ask.clone(), &f.hib);
        f.peer.on_sleep_msg(ask, &f.hib);
        assert!(f.peer.take_sleep_beats().is_empty(), "woke the leader");
        assert!(f.peer.sleep.deferred.is_some());
        let sent = f.sent();
        assert!(sent.is_empty(), "{sent:?}");
        // The round's end (see `RaftPoller::end_round`).
        f.peer.retry_deferred_sleep(&f.hib);
        assert!(f.peer.is_asleep());
    }

    /// A restarted follower whose last entry, at the leader's commit, is
    /// of an older term than the request's cannot prove it holds the
    /// leader's entry there: it neither takes the leader up nor takes the
    /// commit, and wakes the leader, which checks its log.
    #[test]
    fn a_restarted_follower_with_an_older_entry_at_the_commit_takes_no_commit() {
        let mut f = Follower::new(Duration::from_secs(600));
        let term = f.hear_the_leader();
        let committed = f.peer.raft.raft.raft_log().committed;
        // An entry of this term, not committed.
        let last = f.append_one(term);
        // A later term begins (no entry of it reached this follower).
        f.leader_beat(term + 1, 0);
        f.sent();
        f.restart();
        assert_eq!(f.peer.raft.raft.raft_log().committed, committed);
        let ask = f.ask(term + 1, last + 1);
        f.peer.on_sleep_msg(ask, &f.hib);
        assert_eq!(f.peer.sleep.deferred, None, "took up the leader");
        assert!(
            !f.peer.take_sleep_beats().is_empty(),
            "did not wake the leader"
        );
        assert_eq!(
            f.peer.raft.raft.raft_log().committed,
            committed,
            "committed an entry of an older term on the request's word"
        );
        assert!(!f.peer.is_asleep());
    }

    /// A restarted follower does not take up a leader whose log it cannot
    /// prove it holds (a later term than its own): it takes the beat as a
    /// heartbeat and wakes the leader, which catches it up.
    #[test]
    fn a_restarted_follower_wakes_a_leader_of_a_later_term() {
        let mut f = Follower::new(Duration::from_secs(600));
        let index = f.defer_a_sleep();
        f.apply_through(index);
        let term = f.peer.raft.raft.term() + 1;
        f.restart();
        let ask = f.ask(term, index + 1);
        f.peer.on_sleep_msg(ask, &f.hib);
        assert!(
            !f.peer.take_sleep_beats().is_empty(),
            "did not wake the leader"
        );
        assert_eq!(f.peer.sleep.deferred, None);
        assert!(!f.peer.is_asleep());
    }

    /// A raft message before the apply report ends the deferral: the
    /// leader is not quiet after all.
    #[test]
    fn a_raft_message_ends_a_deferred_sleep() {
        let mut f = Follower::new(Duration::from_secs(600));
        let index = f.defer_a_sleep();
        let term = f.peer.raft.raft.term();
        f.leader_beat(term, index);
        assert_eq!(f.peer.sleep.deferred, None);
        f.apply_through(index);
        assert!(!f.peer.is_asleep());
    }
}
