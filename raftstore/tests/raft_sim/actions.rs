//! The fault schedule and the client: what happens at each step, chosen by
//! the run's RNG, and the fault-free liveness phase that ends every run.

use bytes::Bytes;
use flotilla_proto::eraftpb::{
    ConfChange, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
};
use flotilla_raftstore::raft::confchange::single;
use flotilla_raftstore::raft::{StateRole, Storage};
use rand::Rng;

use super::checker::Check;
use super::storage::SimStorage;
use super::world::{ELECTION_TICK, World};

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Advance the virtual clock: every running node ticks once.
    Tick,
    /// Deliver a few messages (the oldest, or a random one: reordering).
    Deliver,
    /// Lose a random message in flight.
    Drop,
    /// Duplicate a random message in flight.
    Duplicate,
    /// The client proposes a unique payload.
    Propose,
    /// The client proposes a membership change.
    ConfChange,
    /// The client asks the leader to transfer leadership.
    Transfer,
    /// Cut some links.
    Partition,
    /// Heal every partition.
    Heal,
    /// Crash a node between Readies.
    Crash,
    /// Crash a node after it sent a Ready's `messages`, before persisting.
    CrashMidReady,
    /// Restart a crashed node from its durable state.
    Restart,
    /// Compact a node's log up to (at most) its applied index.
    Compact,
}

/// Relative weights of the actions (out of their sum, per step).
const ACTIONS: [(Action, u32); 13] = [
    (Action::Tick, 20),
    (Action::Deliver, 50),
    (Action::Drop, 3),
    (Action::Duplicate, 3),
    (Action::Propose, 8),
    (Action::ConfChange, 1),
    (Action::Transfer, 1),
    (Action::Partition, 1),
    (Action::Heal, 2),
    (Action::Crash, 1),
    (Action::CrashMidReady, 1),
    (Action::Restart, 3),
    (Action::Compact, 1),
];
/// Most messages one `Deliver` step delivers.
const DELIVER_BATCH_MAX: usize = 4;
/// A `Deliver` step may deliver up to this fraction of the messages in
/// flight (so the backlog, hence the latency, stays bounded).
const DELIVER_QUEUE_FRACTION: usize = 4;
/// Percentage of deliveries that pick a random message instead of the
/// oldest one.
const REORDER_PERCENT: u32 = 30;
/// The denominator of a percentage.
const PERCENT: u32 = 100;
/// Longest random padding of a client payload (so the small
/// `max_size_per_msg` splits appends).
const PAYLOAD_MAX_PAD: usize = 40;
/// Kinds of partition: isolate one node, split in two, cut one link one way.
const PARTITION_KINDS: u32 = 3;
/// A membership change never leaves fewer voters than this.
const MIN_VOTERS: usize = 3;
/// Most nodes the client adds to a group during a run.
const MAX_ADDED_NODES: u64 = 3;
/// Ticks the liveness phase may take before it fails.
const LIVENESS_MAX_TICKS: usize = 30 * ELECTION_TICK;
/// Ticks between re-proposals of the final payload (a proposal can be lost
/// to a leader change).
const LIVENESS_RETRY_TICKS: usize = 2 * ELECTION_TICK;
/// Deliveries after one liveness tick before the network must be quiet.
const LIVENESS_MAX_DELIVERIES: usize = 10_000;
/// Ticks the failover check waits for the group to hibernate before its
/// leader dies (it dies anyway after them, asleep or not).
const FAILOVER_SLEEP_TICKS: usize = 6 * ELECTION_TICK;
/// Election timeouts within which a group whose leader died must have a
/// new leader (with the hibernation model): issue #10's goal, one to
/// notice (the support duration), one for the election.
const FAILOVER_MAX_TIMEOUTS: usize = 2;

/// A membership change the client may propose.
#[derive(Debug, Clone, Copy)]
enum ConfOp {
    /// Add a new node as a learner.
    AddLearner(u64),
    /// Make a caught-up learner a voter.
    Promote(u64),
    /// Remove a voter.
    Remove(u64),
    /// Make a voter a learner.
    Demote(u64),
    /// Joint: promote `promote`, and remove (or demote) `out`.
    Swap {
        promote: u64,
        out: u64,
        demote: bool,
    },
    LeaveJoint,
}

impl World {
    /// Picks and performs this step's action.
    pub(super) fn random_action(&mut self) -> Check {
        let total: u32 = ACTIONS.iter().map(|(_, w)| w).sum();
        let mut x = self.rng.random_range(0..total);
        let mut action = Action::Tick;
        for (a, w) in ACTIONS {
            if x < w {
                action = a;
                break;
            }
            x -= w;
        }
        tr!(self, "step {} {action:?}", self.step);
        match action {
            Action::Tick => self.tick_all(),
            Action::Deliver => {
                let most = DELIVER_BATCH_MAX.max(self.net.len() / DELIVER_QUEUE_FRACTION);
                let n = self.rng.random_range(1..=most);
                for _ in 0..n {
                    let len = self.net.len();
                    if len == 0 {
                        break;
                    }
                    let i = if self.rng.random_ratio(REORDER_PERCENT, PERCENT) {
                        self.rng.random_range(0..len)
                    } else {
                        0
                    };
                    if let Some(p) = self.net.take(i) {
                        self.deliver(p)?;
                    }
                }
            }
            Action::Drop => {
                if !self.net.is_empty() {
                    let i = self.rng.random_range(0..self.net.len());
                    if let Some(p) = self.net.take(i) {
                        tr!(self, "  lose #{}", p.seq);
                        self.stats.dropped += 1;
                        self.report(&p, false, false);
                    }
                }
            }
            Action::Duplicate => {
                if !self.net.is_empty() {
                    let i = self.rng.random_range(0..self.net.len());
                    let t = self.net.duplicate(i);
                    tr!(self, "  duplicate {i} {t:?}");
                    self.stats.duplicated += 1;
                }
            }
            Action::Propose => self.client_propose(),
            Action::ConfChange => self.client_conf_change(),
            Action::Transfer => self.client_transfer(),
            Action::Partition => self.partition(),
            Action::Heal => {
                tr!(self, "  heal {} cut links", self.net.cut_links());
                self.net.heal();
            }
            Action::Crash => {
                if let Some(id) = self.crash_candidate() {
                    self.stats.crashes += 1;
                    self.crash(id);
                }
            }
            Action::CrashMidReady => {
                // Half the time the leader, whose appends may leave before
                // its own write is durable.
                let leader = self.believed_leader;
                if let Some(mut id) = self.crash_candidate() {
                    if self.rng.random::<bool>() && self.is_live(leader) {
                        id = leader;
                    }
                    self.crash_mid_ready(id)?;
                }
            }
            Action::Restart => {
                let down: Vec<u64> = (self.nodes.iter())
                    .filter(|(_, n)| n.raw.is_none() && !n.destroyed)
                    .map(|(id, _)| *id)
                    .collect();
                if !down.is_empty() {
                    let id = down[self.rng.random_range(0..down.len())];
                    self.stats.restarts += 1;
                    self.start(id)?;
                }
            }
            Action::Compact => self.compact()?,
        }
        Ok(())
    }

    /// Ticks every running node once.
    pub(super) fn tick_all(&mut self) {
        self.stats.ticks += 1;
        for n in self.nodes.values_mut() {
            if n.sleep.asleep {
                continue;
            }
            if let Some(raw) = n.raw.as_mut() {
                raw.tick();
            }
        }
        if self.opts.hibernate {
            self.sleep_tick();
        }
    }

    /// A random running node, if fewer than a minority of the initial
    /// voters are down.
    fn crash_candidate(&mut self) -> Option<u64> {
        let max_down = ((self.shape.voters - 1) / 2) as usize;
        let down = (self.nodes.values())
            .filter(|n| n.raw.is_none() && !n.destroyed)
            .count();
        let live = self.live_ids();
        if down >= max_down || live.is_empty() {
            return None;
        }
        Some(live[self.rng.random_range(0..live.len())])
    }

    /// Gives `id` something to do (a proposal if it leads, else a message
    /// or a tick), hands out the Ready, sends only its immediate `messages`
    /// and crashes before persisting anything.
    fn crash_mid_ready(&mut self, id: u64) -> Check {
        let leads = self
            .raw(id)
            .is_some_and(|r| r.raft.state() == StateRole::Leader);
        if leads {
            let data = self.new_payload();
            if let Some(raw) = self.raw(id) {
                let _ = raw.propose(vec![], data.to_vec());
            }
        } else if let Some(i) = self.net.position_to(id) {
            if let Some(p) = self.net.take(i) {
                self.deliver(p)?;
            }
        } else if let Some(raw) = self.raw(id) {
            raw.tick();
        }
        let node = self.nodes.get_mut(&id).expect("node exists");
        let (inc, store) = (node.incarnation, node.store.clone());
        let mut sent = 0;
        if let Some(raw) = node.raw.as_mut()
            && raw.has_ready()
        {
            let mut rd = raw.ready();
            let early = rd.take_messages();
            sent = early.len();
            self.send_msgs(id, inc, &store, early)?;
        }
        tr!(
            self,
            "  n{id} crashes mid-ready after sending {sent} messages"
        );
        self.stats.mid_ready_crashes += 1;
        self.crash(id);
        Ok(())
    }

    fn partition(&mut self) {
        let ids: Vec<u64> = (self.nodes.iter())
            .filter(|(_, n)| !n.destroyed)
            .map(|(id, _)| *id)
            .collect();
        if ids.len() < 2 {
            return;
        }
        self.stats.partitions += 1;
        match self.rng.random_range(0..PARTITION_KINDS) {
            0 => {
                let a = ids[self.rng.random_range(0..ids.len())];
                tr!(self, "  isolate n{a}");
                for &b in &ids {
                    if b != a {
                        self.net.cut(a, b);
                    }
                }
            }
            1 => {
                let side: Vec<bool> = ids.iter().map(|_| self.rng.random()).collect();
                tr!(self, "  split {ids:?} by {side:?}");
                for (i, &a) in ids.iter().enumerate() {
                    for (j, &b) in ids.iter().enumerate() {
                        if side[i] != side[j] {
                            self.net.cut_one_way(a, b);
                        }
                    }
                }
            }
            _ => {
                let a = ids[self.rng.random_range(0..ids.len())];
                let b = ids[self.rng.random_range(0..ids.len())];
                if a != b {
                    tr!(self, "  cut n{a} -> n{b}");
                    self.net.cut_one_way(a, b);
                }
            }
        }
    }

    fn compact(&mut self) -> Check {
        let live = self.live_ids();
        if live.is_empty() {
            return Ok(());
        }
        let id = live[self.rng.random_range(0..live.len())];
        let store = self.nodes[&id].store.clone();
        let first = store.first_index().unwrap_or(1);
        let applied = store.app().applied;
        if applied < first {
            return Ok(());
        }
        // Keep everything from `to` on; never drop an unapplied entry.
        let to = self.rng.random_range(first + 1..=applied + 1);
        if let Err(e) = store.mem.wl().compact(to) {
            violation!("compact", "n{id}: compact({to}) failed: {e:?}");
        }
        self.stats.compactions += 1;
        tr!(self, "  n{id} compacted to {to}");
        Ok(())
    }

    /// A fresh unique payload (registered as proposed).
    fn new_payload(&mut self) -> Bytes {
        self.next_payload += 1;
        let pad = self.rng.random_range(0..=PAYLOAD_MAX_PAD);
        let data = Bytes::from(format!("p{}:{}", self.next_payload, "x".repeat(pad)));
        self.proposed.insert(data.clone());
        data
    }

    /// The node the client talks to: its believed leader if running, else
    /// a random running node.
    fn client_target(&mut self) -> Option<u64> {
        if self.is_live(self.believed_leader) {
            return Some(self.believed_leader);
        }
        let live = self.live_ids();
        if live.is_empty() {
            return None;
        }
        Some(live[self.rng.random_range(0..live.len())])
    }

    /// Learns the leader from `id`'s view (or forgets it).
    fn client_learn(&mut self, id: u64) {
        let lead = self.raw(id).map_or(0, |r| r.raft.leader_id());
        self.believed_leader = lead;
    }

    fn client_propose(&mut self) {
        let Some(id) = self.client_target() else {
            return;
        };
        let data = self.new_payload();
        self.stats.proposals += 1;
        self.wake(id);
        let res = self.raw(id).map(|r| r.propose(vec![], data.to_vec()));
        tr!(
            self,
            "  propose {} at n{id}: {res:?}",
            String::from_utf8_lossy(&data)
        );
        self.client_learn(id);
    }

    fn client_transfer(&mut self) {
        let Some(id) = self.client_target() else {
            return;
        };
        self.wake(id);
        let Some(raw) = self.raw(id) else { return };
        if raw.raft.state() != StateRole::Leader {
            self.client_learn(id);
            return;
        }
        let voters: Vec<u64> = raw.raft.prs().conf_state().voters;
        let to = voters[self.rng.random_range(0..voters.len())];
        if let Some(raw) = self.raw(id) {
            raw.transfer_leader(to);
        }
        self.stats.transfers += 1;
        tr!(self, "  n{id} transfer leadership to n{to}");
    }

    fn client_conf_change(&mut self) {
        let Some(id) = self.client_target() else {
            return;
        };
        self.wake(id);
        let Some(raw) = self.raw(id) else { return };
        if raw.raft.state() != StateRole::Leader {
            self.client_learn(id);
            return;
        }
        let cs = raw.raft.prs().conf_state();
        let committed = raw.raft.raft_log().committed;
        let caught_up = |l: &u64| {
            raw.raft
                .prs()
                .get(*l)
                .is_some_and(|p| p.matched >= committed)
        };
        let mut ops = Vec::new();
        if !cs.voters_outgoing.is_empty() {
            if !cs.auto_leave {
                ops.push(ConfOp::LeaveJoint);
            }
        } else {
            let ready_learners: Vec<u64> = cs.learners.iter().copied().filter(caught_up).collect();
            let added = self.nodes.len() as u64 - (self.shape.voters + self.shape.learners);
            if added < MAX_ADDED_NODES {
                ops.push(ConfOp::AddLearner(
                    self.nodes.keys().next_back().copied().unwrap_or(0) + 1,
                ));
            }
            for &l in &ready_learners {
                ops.push(ConfOp::Promote(l));
            }
            if cs.voters.len() > MIN_VOTERS {
                for &v in &cs.voters {
                    ops.push(ConfOp::Remove(v));
                    ops.push(ConfOp::Demote(v));
                }
            }
            for &l in &ready_learners {
                for &v in &cs.voters {
                    ops.push(ConfOp::Swap {
                        promote: l,
                        out: v,
                        demote: false,
                    });
                    ops.push(ConfOp::Swap {
                        promote: l,
                        out: v,
                        demote: true,
                    });
                }
            }
        }
        if ops.is_empty() {
            return;
        }
        let op = ops[self.rng.random_range(0..ops.len())];
        if let ConfOp::AddLearner(new) = op {
            self.add_node(new, SimStorage::default());
        }
        let v1 = self.rng.random::<bool>();
        let cc = self.encode(op);
        let Some(raw) = self.raw(id) else { return };
        let res = match (v1, single_change(op)) {
            (true, Some((t, node_id))) => {
                let mut cc1 = ConfChange {
                    node_id,
                    ..Default::default()
                };
                cc1.set_change_type(t);
                raw.propose_conf_change(vec![], &cc1)
            }
            _ => raw.propose_conf_change_v2(vec![], &cc),
        };
        self.stats.conf_changes += 1;
        tr!(
            self,
            "  n{id} propose conf change {op:?} (v1: {v1}): {res:?}"
        );
    }

    fn encode(&mut self, op: ConfOp) -> ConfChangeV2 {
        let mut cc = ConfChangeV2::default();
        match op {
            ConfOp::LeaveJoint => return cc,
            ConfOp::Swap {
                promote,
                out,
                demote,
            } => {
                let out_type = if demote {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::RemoveNode
                };
                cc.changes = vec![
                    single(ConfChangeType::AddNode, promote),
                    single(out_type, out),
                ];
                let explicit = self.rng.random::<bool>();
                cc.set_transition(if explicit {
                    ConfChangeTransition::Explicit
                } else {
                    ConfChangeTransition::Auto
                });
            }
            _ => {
                let (t, id) = single_change(op).expect("a single change");
                cc.changes = vec![single(t, id)];
            }
        }
        cc
    }

    /// The fault-free end of a run: heal, restart every member, destroy
    /// removed nodes, then tick and deliver until a leader exists and a
    /// final proposal is applied by every voter of the latest configuration.
    pub(super) fn liveness(&mut self) -> Check {
        tr!(self, "liveness phase");
        self.net.heal();
        let payload = Bytes::from(format!("final-{}", self.seed));
        self.proposed.insert(payload.clone());
        self.final_payload = Some((payload.clone(), None));
        let mut proposed_at: Option<usize> = None;
        for round in 0..LIVENESS_MAX_TICKS {
            self.reconcile_members()?;
            self.fault_free_round()?;
            let applied_at = self.final_payload.as_ref().and_then(|(_, at)| *at);
            if let Some(index) = applied_at {
                if self.voters_applied(index) {
                    tr!(self, "liveness ok after {round} ticks (final at {index})");
                    return self.failover();
                }
            } else if proposed_at.is_none_or(|r| round >= r + LIVENESS_RETRY_TICKS)
                && let Some(leader) = self.current_leader()
            {
                self.wake(leader);
                let res = self
                    .raw(leader)
                    .map(|r| r.propose(vec![], payload.to_vec()));
                tr!(self, "  final proposal at n{leader}: {res:?}");
                proposed_at = Some(round);
            }
        }
        let conf = self.latest_conf.1.clone();
        violation!(
            "liveness",
            "no leader committed the final proposal on every voter of {conf:?} within {LIVENESS_MAX_TICKS} fault-free ticks (leader: {:?}, final applied at {:?})",
            self.current_leader(),
            self.final_payload.as_ref().and_then(|(_, at)| *at)
        );
    }

    /// One fault-free tick: every node ticks, then every message in flight
    /// (and every message that causes) is delivered.
    fn fault_free_round(&mut self) -> Check {
        self.step += 1;
        self.tick_all();
        self.settle()?;
        let mut delivered = 0;
        while let Some(p) = self.net.take(0) {
            let to = p.msg.to;
            self.deliver(p)?;
            self.process(to)?;
            delivered += 1;
            if delivered > LIVENESS_MAX_DELIVERIES {
                violation!("liveness", "the network never quiesces");
            }
        }
        self.settle()
    }

    /// With the hibernation model on, the end of a run that passed the
    /// liveness phase: the group goes to sleep (if it can within
    /// [`FAILOVER_SLEEP_TICKS`]), then its leader's node dies. Store
    /// liveness must wake the sleeping followers and one of them must lead
    /// within [`FAILOVER_MAX_TIMEOUTS`] election timeouts.
    fn failover(&mut self) -> Check {
        let cs = self.latest_conf.1.clone();
        let Some(old) = self.current_leader() else {
            return Ok(());
        };
        if !self.opts.hibernate || cs.voters.len() < MIN_VOTERS || !cs.voters_outgoing.is_empty() {
            return Ok(());
        }
        for _ in 0..FAILOVER_SLEEP_TICKS {
            if self.is_asleep(old) {
                break;
            }
            self.fault_free_round()?;
        }
        let slept = self.is_asleep(old);
        tr!(self, "failover: leader n{old} dies (asleep: {slept})");
        self.crash(old);
        let max = FAILOVER_MAX_TIMEOUTS * ELECTION_TICK;
        for tick in 0..max {
            self.fault_free_round()?;
            if let Some(new) = self.current_leader().filter(|&l| l != old) {
                tr!(self, "failover: n{new} leads after {tick} ticks");
                self.stats.failovers += 1;
                self.stats.failover_ticks_max = self.stats.failover_ticks_max.max(tick as u64 + 1);
                return Ok(());
            }
        }
        violation!(
            "failover",
            "no leader within {max} ticks after leader n{old} died (it slept: {slept}; voters {:?})",
            cs.voters
        );
    }

    /// Restarts crashed members of the latest configuration; destroys
    /// running nodes that were members once and are no longer.
    fn reconcile_members(&mut self) -> Check {
        let members = members(&self.latest_conf.1);
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let n = &self.nodes[&id];
            if n.destroyed {
                continue;
            }
            if !members.contains(&id) && self.ever_member.contains(&id) {
                tr!(self, "  n{id} destroyed (removed)");
                let n = self.nodes.get_mut(&id).expect("node exists");
                n.raw = None;
                n.destroyed = true;
            } else if n.raw.is_none() {
                self.stats.restarts += 1;
                self.start(id)?;
            }
        }
        Ok(())
    }

    /// The running voter leader of the highest term, if any.
    fn current_leader(&self) -> Option<u64> {
        (self.nodes.iter())
            .filter_map(|(id, n)| n.raw.as_ref().map(|r| (*id, r)))
            .filter(|(_, r)| r.raft.state() == StateRole::Leader && r.raft.promotable())
            .max_by_key(|(_, r)| r.raft.term())
            .map(|(id, _)| id)
    }

    /// True if every voter of the latest configuration runs and applied
    /// `index`.
    fn voters_applied(&self, index: u64) -> bool {
        let cs = &self.latest_conf.1;
        cs.voters.iter().chain(&cs.voters_outgoing).all(|v| {
            self.nodes
                .get(v)
                .is_some_and(|n| n.raw.is_some() && n.store.app().applied >= index)
        })
    }
}

/// Every member (voter or learner, either half) of `cs`.
fn members(cs: &ConfState) -> Vec<u64> {
    let mut m: Vec<u64> = (cs.voters.iter())
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners)
        .chain(&cs.learners_next)
        .copied()
        .collect();
    m.sort_unstable();
    m.dedup();
    m
}

/// The single v1-expressible change of `op`, if it has one.
fn single_change(op: ConfOp) -> Option<(ConfChangeType, u64)> {
    match op {
        ConfOp::AddLearner(id) | ConfOp::Demote(id) => Some((ConfChangeType::AddLearnerNode, id)),
        ConfOp::Promote(id) => Some((ConfChangeType::AddNode, id)),
        ConfOp::Remove(id) => Some((ConfChangeType::RemoveNode, id)),
        ConfOp::Swap { .. } | ConfOp::LeaveJoint => None,
    }
}
