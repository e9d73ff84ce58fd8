//! Hibernation and store liveness in the simulator (DESIGN §5): a model of
//! the store's protocol, driven by the same seed as everything else, over
//! the consensus core's hooks (`campaign_now`, `expire_election_clock`,
//! `reset_election_clock`, `resume_after_sleep`, `ping`,
//! `ignores_votes_in_lease`). The simulated group stands for one region
//! and each node for its store; the model follows the store's rules:
//!
//! - every running node beats every other node every heartbeat interval,
//!   and any packet heard counts; a node silent for the support duration
//!   (one election timeout), or heard in a new incarnation, loses its
//!   support;
//! - an idle leader (everything committed, applied and matched by every
//!   node, no conf change or transfer pending) asks its followers to sleep
//!   and stops ticking; a follower in the same state that supports the
//!   leader's node sleeps too (it takes the commit from the ask, and if
//!   what that commit covers is not applied yet it sleeps once it is,
//!   unless a raft message or a change of leader or of the leader's
//!   incarnation comes first), any other asks the leader to wake;
//! - a sleeping node ticks not at all; any raft message, and a proposal,
//!   wakes it; an awake follower that has not heard its leader for half an
//!   election timeout asks it to wake once;
//! - when a node loses its leader's node, its region's first campaigner
//!   campaigns at once and the others run their clocks out; a vote refused
//!   as within the lease is kept and answered when the lease is over;
//! - when a node hears that another restarted, it asks it to sleep again
//!   if it is a sleeping leader (staying asleep); a follower that knows no
//!   leader takes the asker up if its log provably is the asker's whole
//!   log (same term, last entry at the asker's commit and of that term).
//!
//! Sleep packets travel through the simulated network with raft's, so they
//! are delayed, reordered, duplicated and dropped the same way; they are
//! `MsgUnreachable` messages (a local type raft never puts on the wire)
//! tagged in `context`, and never reach the core.

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_proto::eraftpb::{Message, MessageType};
use flotilla_raftstore::raft::StateRole;

use super::net::Packet;
use super::world::{ELECTION_TICK, HEARTBEAT_TICK, Mutation, World};

/// Ticks without a packet from a node before its support is withdrawn
/// (the store's support duration: one election timeout).
pub const SUPPORT_TICKS: u64 = ELECTION_TICK as u64;
/// Ticks between two liveness beats of a node to each other node.
const BEAT_TICKS: u64 = HEARTBEAT_TICK as u64;
/// Ticks an idle leader waits before it hibernates (the store's default
/// is 3 base ticks).
const HIBERNATE_IDLE_TICKS: u64 = 3;
/// Tags of the sleep packets (`context`).
const LIVE: &[u8] = b"sleep:live";
const SLEEP: &[u8] = b"sleep:request";
const WAKE: &[u8] = b"sleep:wake";

/// What one node knows of another's liveness.
#[derive(Debug, Default, Clone, Copy)]
struct Support {
    /// Virtual tick of the last packet heard from it.
    last_heard: u64,
    /// The incarnation it was last heard in.
    incarnation: u64,
    /// Supported (heard within the support duration, in this incarnation).
    supported: bool,
}

/// One node's side of hibernation; lost with the node at a crash.
#[derive(Debug, Default)]
pub struct Sleep {
    /// It sleeps: no ticks.
    pub asleep: bool,
    /// Follower: it slept under this leader and has not heard it since.
    quiet_under: Option<u64>,
    /// Leader: ticks it has been idle.
    idle_ticks: u64,
    /// Follower: it asked its silent leader to wake (once per silence).
    nudged: bool,
    /// Follower: the last vote request it ignored as within the lease.
    asked: Option<Message>,
    /// Follower: asked to sleep by this leader, in this incarnation of the
    /// leader's node, while what the ask told it is committed was not
    /// applied yet; it sleeps once it is, if nothing changed.
    deferred: Option<(u64, u64)>,
    /// Liveness of the other nodes.
    support: BTreeMap<u64, Support>,
}

/// A sleep packet of `kind` from `from` to `to`.
fn packet(kind: &'static [u8], from: u64, to: u64, term: u64, commit: u64) -> Message {
    Message {
        msg_type: MessageType::MsgUnreachable as i32,
        from,
        to,
        term,
        commit,
        context: Bytes::from_static(kind),
        ..Default::default()
    }
}

/// Whether `m` is a sleep packet.
pub fn is_sleep_packet(m: &Message) -> bool {
    m.msg_type() == MessageType::MsgUnreachable && m.context.starts_with(b"sleep:")
}

impl World {
    /// Whether `id` runs and sleeps.
    pub(super) fn is_asleep(&self, id: u64) -> bool {
        self.nodes
            .get(&id)
            .is_some_and(|n| n.raw.is_some() && n.sleep.asleep)
    }

    /// The model's part of a tick, after the awake nodes ticked: beats,
    /// withdrawals, nudges, answers to kept votes, hibernation.
    pub(super) fn sleep_tick(&mut self) {
        let now = self.stats.ticks;
        let all: Vec<u64> = (self.nodes.iter())
            .filter(|(_, n)| !n.destroyed)
            .map(|(id, _)| *id)
            .collect();
        for id in self.live_ids() {
            if now.is_multiple_of(BEAT_TICKS) {
                for &to in all.iter().filter(|&&to| to != id) {
                    self.send_sleep(id, packet(LIVE, id, to, 0, 0));
                }
            }
            let lapsed: Vec<u64> = (self.nodes[&id].sleep.support.iter())
                .filter(|(_, s)| s.supported && now.saturating_sub(s.last_heard) > SUPPORT_TICKS)
                .map(|(r, _)| *r)
                .collect();
            for remote in lapsed {
                self.withdraw(id, remote);
            }
            if self.is_asleep(id) {
                continue;
            }
            self.maybe_nudge(id);
            self.answer_kept_ask(id);
            self.maybe_hibernate(id);
        }
    }

    /// Puts a sleep packet from `id` on the wire.
    fn send_sleep(&mut self, id: u64, m: Message) {
        let inc = self.nodes[&id].incarnation;
        self.net.send(m, inc);
    }

    /// `id` hears a packet of `from` sent in incarnation `inc`.
    fn hear(&mut self, id: u64, from: u64, inc: u64) {
        let now = self.stats.ticks;
        let Some(s) = self
            .nodes
            .get(&id)
            .map(|n| n.sleep.support.get(&from).copied())
        else {
            return;
        };
        let mut s = s.unwrap_or_default();
        if inc < s.incarnation {
            // A packet of an older life proves nothing.
            return;
        }
        let restarted = inc > s.incarnation && s.incarnation > 0;
        if inc > s.incarnation && s.supported {
            // It restarted: its leaders of the old life are gone.
            self.withdraw(id, from);
        }
        s.incarnation = inc;
        s.last_heard = now;
        s.supported = true;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.sleep.support.insert(from, s);
        }
        if restarted {
            self.resend_sleep(id, from);
        }
    }

    /// `id`, if it is a sleeping leader, asks its follower `to`, whose
    /// node restarted, to sleep again (the store's
    /// `SleepMsg::FollowerStoreRestarted`): it stays asleep.
    fn resend_sleep(&mut self, id: u64, to: u64) {
        if !self.is_asleep(id) {
            return;
        }
        let Some(raw) = self.raw(id) else { return };
        if raw.raft.state() != StateRole::Leader {
            return;
        }
        let (term, commit) = (raw.raft.term(), raw.raft.raft_log().committed);
        self.stats.resent_sleeps += 1;
        tr!(
            self,
            "  n{id} asks restarted n{to} to sleep again (t{term}, c{commit})"
        );
        self.send_sleep(id, packet(SLEEP, id, to, term, commit));
    }

    fn supports(&self, id: u64, remote: u64) -> bool {
        self.nodes[&id]
            .sleep
            .support
            .get(&remote)
            .is_some_and(|s| s.supported)
    }

    /// `id` withdraws its support from `remote`: its follower of a leader
    /// there (asleep or awake) finds the leader gone.
    fn withdraw(&mut self, id: u64, remote: u64) {
        self.stats.withdrawals += 1;
        tr!(self, "  n{id} withdraws support from n{remote}");
        if let Some(s) = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.sleep.support.get_mut(&remote))
        {
            s.supported = false;
        }
        if self.mutation == Mutation::SleepThroughWithdrawal {
            return;
        }
        let follows = self
            .raw(id)
            .is_some_and(|r| r.raft.state() != StateRole::Leader && r.raft.leader_id() == remote);
        if !follows {
            return;
        }
        self.wake(id);
        self.leader_lost(id, remote);
    }

    /// `id` found its leader's node `down` gone: it answers a kept vote
    /// request, or campaigns at once as its group's first campaigner, or
    /// runs its clock out.
    fn leader_lost(&mut self, id: u64, down: u64) {
        let first = self.first_campaigner(id, down);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        n.sleep.quiet_under = None;
        let kept = n.sleep.asked.is_some();
        let Some(raw) = n.raw.as_mut() else { return };
        if first && !kept {
            raw.raft.campaign_now();
        } else {
            raw.raft.expire_election_clock(false);
        }
        tr!(
            self,
            "  n{id} lost its leader n{down} (first {first}, kept ask {kept})"
        );
        self.answer_kept_ask(id);
    }

    /// Whether `id` campaigns first when `down` is gone: the lowest voter
    /// elsewhere.
    fn first_campaigner(&mut self, id: u64, down: u64) -> bool {
        let Some(raw) = self.raw(id) else {
            return false;
        };
        let cs = raw.raft.prs().conf_state();
        cs.voters
            .iter()
            .chain(&cs.voters_outgoing)
            .copied()
            .filter(|&v| v != down)
            .min()
            == Some(id)
    }

    /// Answers the vote request `id` kept, once its lease is over.
    fn answer_kept_ask(&mut self, id: u64) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(raw) = n.raw.as_mut() else { return };
        if n.sleep.asked.is_none() || raw.raft.ignores_votes_in_lease() {
            return;
        }
        if let Some(m) = n.sleep.asked.take() {
            let _ = raw.step(m);
            tr!(self, "  n{id} answers a vote request it kept");
        }
    }

    /// An awake follower silent-led for half an election timeout asks its
    /// (supported) leader to wake, once.
    fn maybe_nudge(&mut self, id: u64) {
        let Some(raw) = self.raw(id) else { return };
        let (leader, elapsed) = (raw.raft.leader_id(), raw.raft.election_elapsed());
        if raw.raft.state() != StateRole::Follower
            || leader == 0
            || elapsed < ELECTION_TICK / 2
            || self.nodes[&id].sleep.nudged
            || !self.supports(id, leader)
        {
            return;
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.sleep.nudged = true;
        }
        self.send_sleep(id, packet(WAKE, id, leader, 0, 0));
    }

    /// An idle leader hibernates: asks every follower to sleep and sleeps.
    fn maybe_hibernate(&mut self, id: u64) {
        let applied = self.nodes[&id].store.app().applied;
        let Some(raw) = self.raw(id) else { return };
        let raft = &raw.raft;
        let log = raft.raft_log();
        let last = log.last_index();
        let idle = raft.state() == StateRole::Leader
            && log.committed == last
            && applied == last
            && raft.lead_transferee().is_none()
            && raft.pending_conf_index() <= log.committed
            && raft.prs().iter().all(|(_, p)| p.matched == last);
        let (term, followers): (u64, Vec<u64>) = (
            raft.term(),
            raft.prs()
                .iter()
                .map(|(f, _)| f)
                .filter(|&f| f != id)
                .collect(),
        );
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if !idle {
            n.sleep.idle_ticks = 0;
            return;
        }
        n.sleep.idle_ticks += 1;
        if n.sleep.idle_ticks < HIBERNATE_IDLE_TICKS {
            return;
        }
        n.sleep.idle_ticks = 0;
        n.sleep.asleep = true;
        self.stats.sleeps += 1;
        tr!(self, "  n{id} hibernates (leader, t{term}, c{last})");
        for f in followers {
            self.send_sleep(id, packet(SLEEP, id, f, term, last));
        }
    }

    /// Wakes `id`: a leader heartbeats at once.
    pub(super) fn wake(&mut self, id: u64) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if !n.sleep.asleep {
            return;
        }
        n.sleep.asleep = false;
        n.sleep.idle_ticks = 0;
        n.sleep.nudged = false;
        self.stats.wakes += 1;
        if let Some(raw) = n.raw.as_mut()
            && raw.raft.state() == StateRole::Leader
        {
            raw.raft.resume_after_sleep();
            raw.ping();
        }
        tr!(self, "  n{id} wakes");
    }

    /// Delivers a packet under the model: every packet is heard; a sleep
    /// packet is handled here; a raft message wakes its target first, and
    /// a vote its target ignores as within the lease is kept. Returns
    /// whether the packet still goes to the core.
    pub(super) fn sleep_deliver(&mut self, p: &Packet) -> bool {
        let (from, to) = (p.msg.from, p.msg.to);
        self.hear(to, from, p.from_incarnation);
        if is_sleep_packet(&p.msg) {
            match p.msg.context.as_ref() {
                SLEEP => self.on_sleep_request(to, &p.msg),
                WAKE => self.wake(to),
                _ => {}
            }
            return false;
        }
        // A raft message: the leader is not quiet after all.
        if let Some(n) = self.nodes.get_mut(&to) {
            n.sleep.deferred = None;
        }
        self.wake(to);
        let Some(raw) = self.raw(to) else {
            return true;
        };
        let leader = raw.raft.leader_id();
        let t = p.msg.msg_type();
        let in_lease = raw.raft.ignores_votes_in_lease();
        let follower = raw.raft.state() == StateRole::Follower;
        let term = raw.raft.term();
        if from == leader
            && leader != 0
            && let Some(n) = self.nodes.get_mut(&to)
        {
            n.sleep.quiet_under = None;
            n.sleep.nudged = false;
            n.sleep.asked = None;
        }
        let vote = matches!(
            t,
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        );
        if !(vote && follower && in_lease && p.msg.term > term) {
            return true;
        }
        if self.supports(to, leader) {
            if let Some(n) = self.nodes.get_mut(&to) {
                n.sleep.asked = Some(p.msg.clone());
            }
        } else {
            // Its node lost the leader's already: the lease is over.
            self.leader_lost(to, leader);
        }
        true
    }

    /// A follower asked to sleep by its leader takes the commit from the
    /// ask (the store's `skip_bcast_commit`: a commit advance is not sent
    /// on its own) and sleeps if it is in the same state and supports the
    /// leader's node; if only the apply of what it just learned is
    /// committed is missing, it defers until its application loop has
    /// applied it ([`World::retry_deferred_sleep`]); otherwise it wakes
    /// the leader.
    fn on_sleep_request(&mut self, id: u64, m: &Message) {
        let applied = match self.nodes.get_mut(&id) {
            Some(n) => {
                n.sleep.deferred = None;
                n.store.app().applied
            }
            None => return,
        };
        let supported = self.supports(id, m.from);
        let Some(raw) = self.raw(id) else { return };
        // A follower that knows no leader (its node restarted) takes the
        // asker up when its log provably is the asker's whole log: same
        // term, last entry at the asker's commit and of that term (the
        // store's `adopt_sleeping_leader`).
        let log = raw.raft.raft_log();
        let adopt = raw.raft.state() != StateRole::Leader
            && raw.raft.leader_id() == 0
            && raw.raft.term() == m.term
            && log.last_index() == m.commit
            && log.term(m.commit).is_ok_and(|t| t == m.term);
        if adopt {
            raw.raft.become_follower(m.term, m.from);
            self.stats.adopted_leaders += 1;
            tr!(self, "  n{id} takes up sleeping leader n{}", m.from);
        }
        let Some(raw) = self.raw(id) else { return };
        let same_leader = raw.raft.state() == StateRole::Follower
            && raw.raft.term() == m.term
            && raw.raft.leader_id() == m.from;
        let log = raw.raft.raft_log_mut();
        if same_leader && log.last_index() == m.commit && log.committed < m.commit {
            log.commit_to(m.commit);
        }
        let caught_up =
            same_leader && supported && log.committed == m.commit && log.last_index() == m.commit;
        if caught_up && applied < m.commit {
            let inc = self.nodes[&id].sleep.support[&m.from].incarnation;
            if let Some(n) = self.nodes.get_mut(&id) {
                n.sleep.deferred = Some((m.from, inc));
            }
            self.stats.deferred_sleeps += 1;
            tr!(
                self,
                "  n{id} defers its sleep under n{} (applied {applied})",
                m.from
            );
            return;
        }
        if !(caught_up && applied == m.commit) {
            self.send_sleep(id, packet(WAKE, id, m.from, 0, 0));
            return;
        }
        self.fall_asleep(id, m.from);
    }

    /// After `id`'s application loop: a deferred sleep goes ahead if
    /// everything committed is applied and nothing changed (same leader,
    /// its node supported in the same incarnation, no raft message since);
    /// otherwise it is dropped, with no word to the leader (the follower's
    /// nudge covers a leader still asleep).
    pub(super) fn retry_deferred_sleep(&mut self, id: u64) {
        let Some(n) = self.nodes.get(&id) else { return };
        let Some((leader, inc)) = n.sleep.deferred else {
            return;
        };
        let applied = n.store.app().applied;
        let support = n.sleep.support.get(&leader).copied();
        let Some(raw) = self.raw(id) else { return };
        let log = raw.raft.raft_log();
        if applied < log.committed {
            return;
        }
        let same = raw.raft.state() == StateRole::Follower
            && raw.raft.leader_id() == leader
            && log.last_index() == log.committed
            && support.is_some_and(|s| s.supported && s.incarnation == inc);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.sleep.deferred = None;
        }
        if same {
            self.fall_asleep(id, leader);
        } else {
            tr!(self, "  n{id} drops its deferred sleep");
        }
    }

    /// Follower `id` sleeps under `leader`.
    fn fall_asleep(&mut self, id: u64, leader: u64) {
        let Some(raw) = self.raw(id) else { return };
        raw.raft.reset_election_clock();
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if !n.sleep.asleep {
            n.sleep.asleep = true;
            self.stats.sleeps += 1;
        }
        n.sleep.quiet_under = Some(leader);
        n.sleep.nudged = false;
        n.sleep.asked = None;
        tr!(self, "  n{id} sleeps under n{leader}");
    }
}
