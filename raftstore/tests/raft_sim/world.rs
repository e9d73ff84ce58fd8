//! The simulated world: nodes with their durable storage, the network, and
//! the application loop around each `RawNode` (Ready → persist → advance →
//! send → apply). The fault schedule and the client are in `actions`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::AddAssign;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use flotilla_proto::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use flotilla_raftstore::raft::{Config, RawNode, StateRole, Storage, decode_conf_change};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checker::{Check, Checker, NodeView, Violation, conf_state_hash, entry_hash, mix};
use super::net::{Network, Packet, describe};
use super::sleep::{Sleep, is_sleep_packet};
use super::storage::{AppState, SimStorage, data_to_digest, digest_to_data};

/// Election timeout of every node, in ticks.
pub const ELECTION_TICK: usize = 10;
/// Heartbeat interval of every leader, in ticks.
pub const HEARTBEAT_TICK: usize = 2;
/// Index of the bootstrap snapshot every initial member starts from (so a
/// node added later must catch up from a snapshot, as in TiKV).
pub const INIT_INDEX: u64 = 5;
/// Term of the bootstrap snapshot.
pub const INIT_TERM: u64 = 5;
/// State-machine digest of the bootstrap snapshot.
const INIT_DIGEST: u64 = 0x0B00_7571_2A90;
/// Mixed into an entry's hash when applying its conf change failed.
const CONF_CHANGE_REFUSED: u64 = 0x00DE_ADCC;
/// Choices of `max_inflight_msgs` (one per run): tiny windows exercise
/// the inflight cap, the large one pipelining.
const MAX_INFLIGHT_CHOICES: [usize; 3] = [1, 4, 256];
/// Choices of `max_size_per_msg` (one per run): the small one splits
/// appends, the large one does not.
const MAX_SIZE_PER_MSG_CHOICES: [u64; 2] = [64, 1024 * 1024];
/// Every this many steps, the checker re-reads every live log in full.
const FULL_CHECK_INTERVAL: usize = 64;
/// Mixed into the seed for the RNG that decides whether a run hibernates
/// (a separate RNG: runs without hibernation replay as before it existed).
const HIBERNATE_SEED_MIX: u64 = 0x5EE9_0000_0000_0001;
/// Mixed into the seed for the run's `skip_bcast_commit` choice (its own
/// stream, so adding the choice changed no other run's schedule).
const SKIP_BCAST_SEED_MIX: u64 = 0xB0CA_0000_0000_0002;

/// The initial membership of a simulated group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Initial voters (ids `1..=voters`).
    pub voters: u64,
    /// Initial learners (the ids after the voters).
    pub learners: u64,
}

/// Counters of what a run did (to show the faults really happened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Steps run (fault phase).
    pub steps: u64,
    /// Ticks of the virtual clock.
    pub ticks: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost (dropped, or sent across a partition / to a down node).
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Client proposals made.
    pub proposals: u64,
    /// Conf changes proposed.
    pub conf_changes: u64,
    /// Conf changes applied (summed over nodes).
    pub conf_applied: u64,
    /// Leader transfers requested.
    pub transfers: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Crashes between Readies.
    pub crashes: u64,
    /// Crashes in the middle of a Ready (after sending `messages`).
    pub mid_ready_crashes: u64,
    /// Restarts from durable state.
    pub restarts: u64,
    /// Log compactions.
    pub compactions: u64,
    /// Snapshots made durable by followers.
    pub snapshots: u64,
    /// Terms that had a leader.
    pub leader_terms: u64,
    /// Highest index applied.
    pub max_applied: u64,
    /// Sum over steps of the messages in flight (mean = this / steps).
    pub in_flight_sum: u64,
    /// Runs with the hibernation model on.
    pub hibernating_runs: u64,
    /// Nodes that went to sleep (hibernation model).
    pub sleeps: u64,
    /// Sleeping nodes woken.
    pub wakes: u64,
    /// Sleep asks a follower deferred until it applied what they told it
    /// is committed.
    pub deferred_sleeps: u64,
    /// Support withdrawals (store liveness).
    pub withdrawals: u64,
    /// Hibernate asks a sleeping leader sent again to a follower whose
    /// node restarted.
    pub resent_sleeps: u64,
    /// Followers that knew no leader and took up a sleeping leader from
    /// its ask.
    pub adopted_leaders: u64,
    /// Leader deaths whose failover the liveness phase timed.
    pub failovers: u64,
    /// The slowest of those failovers, in ticks from the death.
    pub failover_ticks_max: u64,
}

impl AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.steps += o.steps;
        self.ticks += o.ticks;
        self.delivered += o.delivered;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.proposals += o.proposals;
        self.conf_changes += o.conf_changes;
        self.conf_applied += o.conf_applied;
        self.transfers += o.transfers;
        self.partitions += o.partitions;
        self.crashes += o.crashes;
        self.mid_ready_crashes += o.mid_ready_crashes;
        self.restarts += o.restarts;
        self.compactions += o.compactions;
        self.snapshots += o.snapshots;
        self.leader_terms += o.leader_terms;
        self.max_applied = self.max_applied.max(o.max_applied);
        self.in_flight_sum += o.in_flight_sum;
        self.hibernating_runs += o.hibernating_runs;
        self.sleeps += o.sleeps;
        self.resent_sleeps += o.resent_sleeps;
        self.adopted_leaders += o.adopted_leaders;
        self.wakes += o.wakes;
        self.deferred_sleeps += o.deferred_sleeps;
        self.withdrawals += o.withdrawals;
        self.failovers += o.failovers;
        self.failover_ticks_max = self.failover_ticks_max.max(o.failover_ticks_max);
    }
}

/// A deliberate bug in the simulated application, to show the checker
/// catches what it claims to (the sweeps run with `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mutation {
    /// A faithful application.
    #[default]
    None,
    /// A crash loses the durable log's uncommitted tail, though the node
    /// acknowledged those entries (a disk that lies about fsync).
    LoseAckedTail,
    /// The hibernation model withdraws support from a dead node but wakes
    /// none of the followers asleep under it (they never campaign).
    SleepThroughWithdrawal,
}

/// Raft settings chosen once per run.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunOpts {
    /// `Config::pre_vote` of every node.
    pub pre_vote: bool,
    /// `Config::check_quorum` of every node.
    pub check_quorum: bool,
    /// `Config::max_inflight_msgs` of every node.
    pub max_inflight: usize,
    /// `Config::max_size_per_msg` of every node.
    pub max_size_per_msg: u64,
    /// The hibernation and store-liveness model is on (`sleep`).
    pub hibernate: bool,
    /// `Config::skip_bcast_commit` of every node (the store's setting): a
    /// commit advance alone is not broadcast, except one that reaches a
    /// conf change or a new leader's inherited tail.
    pub skip_bcast_commit: bool,
}

/// One simulated node.
pub(super) struct Node {
    /// Durable state; survives crashes.
    pub store: SimStorage,
    /// The running node (`None`: crashed or destroyed).
    pub raw: Option<RawNode<SimStorage>>,
    /// Bumped on every start, to tell messages of old incarnations apart.
    pub incarnation: u64,
    /// Removed from the group and shut down for good.
    pub destroyed: bool,
    /// Entries this node applied, in order: (index, term, data).
    pub applied_log: Vec<(u64, u64, Bytes)>,
    /// Its side of hibernation (a fresh one at every start).
    pub sleep: Sleep,
}

/// The whole simulation state.
pub struct World {
    pub(super) seed: u64,
    pub(super) rng: ChaCha8Rng,
    pub(super) shape: Shape,
    pub(super) opts: RunOpts,
    pub(super) nodes: BTreeMap<u64, Node>,
    pub(super) net: Network,
    pub(super) checker: Checker,
    /// The conf state applied at the highest index, and that index.
    pub(super) latest_conf: (u64, ConfState),
    /// Ids that were ever in an applied configuration.
    pub(super) ever_member: BTreeSet<u64>,
    /// The node the client sends proposals to.
    pub(super) believed_leader: u64,
    /// Every payload the client proposed.
    pub(super) proposed: BTreeSet<Bytes>,
    pub(super) next_payload: u64,
    /// The final (liveness) payload and the index it was applied at.
    pub(super) final_payload: Option<(Bytes, Option<u64>)>,
    pub(super) step: usize,
    pub(super) trace: Option<String>,
    pub(super) stats: Stats,
    pub(super) mutation: Mutation,
    logger: slog::Logger,
}

/// Runs one seed for `steps` steps plus the liveness phase. Returns the
/// run's counters and its trace (if `trace`); on failure, the violated
/// property (a panic inside the core becomes a `core-panic` violation).
#[allow(clippy::result_large_err)]
pub fn run_seed(
    seed: u64,
    shape: Shape,
    steps: usize,
    trace: bool,
    mutation: Mutation,
) -> Result<(Stats, Option<String>), (Violation, Option<String>)> {
    let mut w = World::new(seed, shape, trace);
    w.mutation = mutation;
    let res = catch_unwind(AssertUnwindSafe(|| w.run(steps)));
    let res = match res {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(Violation {
                property: "core-panic",
                details: format!("at step {}: {msg}", w.step),
            })
        }
    };
    match res {
        Ok(()) => {
            w.stats.leader_terms = w.checker.leader_terms() as u64;
            w.stats.max_applied = w.checker.max_applied();
            Ok((w.stats, w.trace))
        }
        Err(v) => Err((v, w.trace)),
    }
}

impl World {
    fn new(seed: u64, shape: Shape, trace: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut opts = RunOpts {
            pre_vote: rng.random(),
            check_quorum: rng.random(),
            max_inflight: MAX_INFLIGHT_CHOICES[rng.random_range(0..MAX_INFLIGHT_CHOICES.len())],
            max_size_per_msg: MAX_SIZE_PER_MSG_CHOICES
                [rng.random_range(0..MAX_SIZE_PER_MSG_CHOICES.len())],
            hibernate: ChaCha8Rng::seed_from_u64(seed ^ HIBERNATE_SEED_MIX).random(),
            skip_bcast_commit: ChaCha8Rng::seed_from_u64(seed ^ SKIP_BCAST_SEED_MIX).random(),
        };
        if opts.hibernate {
            // The store's settings, whose protocol the model follows.
            opts.pre_vote = true;
            opts.check_quorum = true;
            opts.skip_bcast_commit = true;
        }
        let total = shape.voters + shape.learners;
        let conf = ConfState {
            voters: (1..=shape.voters).collect(),
            learners: (shape.voters + 1..=total).collect(),
            ..Default::default()
        };
        let mut w = World {
            seed,
            rng,
            shape,
            opts,
            nodes: BTreeMap::new(),
            net: Network::default(),
            checker: Checker::default(),
            latest_conf: (INIT_INDEX, conf.clone()),
            ever_member: (1..=total).collect(),
            believed_leader: 1,
            proposed: BTreeSet::new(),
            next_payload: 0,
            final_payload: None,
            step: 0,
            trace: trace.then(String::new),
            stats: Stats::default(),
            mutation: Mutation::None,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
        };
        tr!(w, "seed {seed} shape {shape:?} opts {opts:?}");
        w.stats.hibernating_runs = u64::from(opts.hibernate);
        w.checker.bootstrap(INIT_INDEX, INIT_TERM, INIT_DIGEST);
        for id in 1..=total {
            let store = SimStorage::default();
            let snap = Snapshot {
                data: digest_to_data(INIT_DIGEST),
                metadata: Some(flotilla_proto::eraftpb::SnapshotMetadata {
                    index: INIT_INDEX,
                    term: INIT_TERM,
                    conf_state: Some(conf.clone()),
                }),
            };
            store
                .mem
                .wl()
                .apply_snapshot(snap)
                .expect("bootstrap snapshot");
            store.set_app(AppState {
                applied: INIT_INDEX,
                digest: INIT_DIGEST,
            });
            w.add_node(id, store);
        }
        w
    }

    /// Adds a node with `store` and starts it.
    pub(super) fn add_node(&mut self, id: u64, store: SimStorage) {
        self.nodes.insert(
            id,
            Node {
                store,
                raw: None,
                incarnation: 0,
                destroyed: false,
                applied_log: Vec::new(),
                sleep: Sleep::default(),
            },
        );
        // A bootstrap or empty storage always yields a valid node.
        self.start(id).expect("new node starts");
    }

    fn run(&mut self, steps: usize) -> Check {
        for step in 0..steps {
            self.step = step;
            self.stats.steps += 1;
            self.random_action()?;
            self.settle()?;
            self.stats.in_flight_sum += self.net.len() as u64;
            if step % FULL_CHECK_INTERVAL == 0 {
                self.full_check()?;
            }
        }
        self.liveness()?;
        self.full_check()
    }

    /// The node config for `id` (a fresh `rng_seed` from the run's RNG).
    fn config(&mut self, id: u64, applied: u64) -> Config {
        Config {
            election_tick: ELECTION_TICK,
            heartbeat_tick: HEARTBEAT_TICK,
            applied,
            pre_vote: self.opts.pre_vote,
            check_quorum: self.opts.check_quorum,
            skip_bcast_commit: self.opts.skip_bcast_commit,
            max_inflight_msgs: self.opts.max_inflight,
            max_size_per_msg: self.opts.max_size_per_msg,
            rng_seed: Some(self.rng.random()),
            ..Config::new(id)
        }
    }

    /// Starts (or restarts) `id` from its durable state only.
    pub(super) fn start(&mut self, id: u64) -> Check {
        let applied = self.nodes[&id].store.app().applied;
        let cfg = self.config(id, applied);
        let node = self.nodes.get_mut(&id).expect("node exists");
        let raw = match RawNode::new(&cfg, node.store.clone(), &self.logger) {
            Ok(r) => r,
            Err(e) => violation!("restart", "n{id} cannot restart: {e:?}"),
        };
        let (term, vote, commit) = node.store.hard_state();
        let hs = raw.raft.hard_state();
        if (hs.term, hs.vote, hs.commit) != (term, vote, commit) {
            violation!(
                "restart-state",
                "n{id} restarted with {hs:?}, persisted term {term} vote {vote} commit {commit}"
            );
        }
        node.raw = Some(raw);
        node.incarnation += 1;
        node.sleep = Sleep::default();
        self.checker.on_restart(id, commit);
        tr!(
            self,
            "  n{id} start #{} t{term} v{vote} c{commit} applied {applied}",
            node.incarnation
        );
        Ok(())
    }

    /// Drops `id`'s running node: everything not persisted is lost.
    pub(super) fn crash(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.raw = None;
            if self.mutation == Mutation::LoseAckedTail {
                lose_uncommitted_tail(&mut n.store);
            }
        }
        tr!(self, "  n{id} crash");
    }

    /// True if `id` runs.
    pub(super) fn is_live(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.raw.is_some())
    }

    /// Ids of running nodes.
    pub(super) fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.raw.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The running node `id`.
    pub(super) fn raw(&mut self, id: u64) -> Option<&mut RawNode<SimStorage>> {
        self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut())
    }

    /// Runs every node's Ready loop, then checks the safety properties.
    pub(super) fn settle(&mut self) -> Check {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.process(id)?;
        }
        self.check()
    }

    /// The per-step safety check (and a state line per node in the trace).
    pub(super) fn check(&mut self) -> Check {
        if self.trace.is_some() {
            let mut line = String::from("  state");
            for (id, n) in &self.nodes {
                let a = n.store.app().applied;
                match &n.raw {
                    Some(r) => {
                        let role = match r.raft.state() {
                            StateRole::Leader => 'L',
                            StateRole::Candidate => 'C',
                            StateRole::PreCandidate => 'P',
                            StateRole::Follower => 'F',
                        };
                        let log = r.raft.raft_log();
                        line += &format!(
                            " n{id}:{role}t{}c{}a{a}li{}",
                            r.raft.term(),
                            log.committed,
                            log.last_index()
                        );
                    }
                    None if n.destroyed => line += &format!(" n{id}:gone"),
                    None => line += &format!(" n{id}:down,a{a}"),
                }
            }
            tr!(self, "{line}");
        }
        let views = views(&self.nodes);
        self.checker.check_step(&views)
    }

    /// Re-reads every live log in full.
    pub(super) fn full_check(&mut self) -> Check {
        let views = views(&self.nodes);
        self.checker.full_check(&views)
    }

    /// The application loop of node `id` until it has nothing to do.
    pub(super) fn process(&mut self, id: u64) -> Check {
        loop {
            let Some(node) = self.nodes.get_mut(&id) else {
                return Ok(());
            };
            let inc = node.incarnation;
            let store = node.store.clone();
            let Some(raw) = node.raw.as_mut() else {
                return Ok(());
            };
            if !raw.has_ready() {
                if self.opts.hibernate {
                    self.retry_deferred_sleep(id);
                }
                return Ok(());
            }
            let mut rd = raw.ready();
            tr!(
                self,
                "  n{id} ready #{}: ss {:?} hs {:?} ents {:?} snap {} committed {:?} msgs {}+{}",
                rd.number(),
                rd.ss.map(|s| (s.raft_state, s.leader_id)),
                rd.hs.map(|h| (h.term, h.vote, h.commit)),
                rd.entries
                    .first()
                    .zip(rd.entries.last())
                    .map(|(f, l)| (f.index, l.index, l.term)),
                rd.snapshot.is_some(),
                rd.committed_entries
                    .first()
                    .zip(rd.committed_entries.last())
                    .map(|(f, l)| (f.index, l.index)),
                rd.messages.len(),
                rd.persisted_messages.len()
            );
            // A leader's appends and heartbeats may leave before its own
            // write is durable (its self-ack waits for `advance_append`).
            let early = rd.take_messages();
            self.send_msgs(id, inc, &store, early)?;
            self.persist(id, &store, &rd)?;
            let committed = rd.take_committed_entries();
            let after = rd.take_persisted_messages();
            let Some(raw) = self.raw(id) else {
                return Ok(());
            };
            let mut lr = raw.advance_append(rd);
            if let Some(c) = lr.commit_index {
                store.mem.wl().mut_hard_state().commit = c;
            }
            // Acks and votes only once the write is durable.
            self.send_msgs(id, inc, &store, after)?;
            let late = std::mem::take(&mut lr.messages);
            self.send_msgs(id, inc, &store, late)?;
            self.apply(id, committed)?;
            self.apply(id, std::mem::take(&mut lr.committed_entries))?;
        }
    }

    /// Persists a Ready synchronously: snapshot, then entries, then the
    /// hard state.
    fn persist(
        &mut self,
        id: u64,
        store: &SimStorage,
        rd: &flotilla_raftstore::raft::Ready,
    ) -> Check {
        if let Some(snap) = &rd.snapshot {
            let md = snap.metadata.clone().unwrap_or_default();
            let Some(digest) = data_to_digest(&snap.data) else {
                violation!(
                    "snapshot-data",
                    "n{id}: snapshot {md:?} carries no state digest"
                );
            };
            if let Err(e) = store.mem.wl().apply_snapshot(Snapshot::clone(snap)) {
                violation!("persist", "n{id}: storage refused snapshot {md:?}: {e:?}");
            }
            store.set_app(AppState {
                applied: md.index,
                digest,
            });
            self.checker.on_snapshot(id, md.index, md.term, digest)?;
            self.stats.snapshots += 1;
            tr!(self, "  n{id} installed snapshot {}/{}", md.index, md.term);
        }
        if let Some(first) = rd.entries.first() {
            let prev_term = self.nodes[&id]
                .raw
                .as_ref()
                .and_then(|r| r.raft.raft_log().term(first.index - 1).ok());
            self.checker.on_append(id, prev_term, &rd.entries)?;
            if let Err(e) = store.mem.wl().append(&rd.entries) {
                violation!(
                    "persist",
                    "n{id}: storage refused entries from {}: {e:?}",
                    first.index
                );
            }
        }
        if let Some(hs) = rd.hs {
            store.mem.wl().set_hardstate(hs);
        }
        Ok(())
    }

    /// Puts messages on the wire, checking first that what they acknowledge
    /// is durable (DESIGN.md §9 rule 1).
    pub(super) fn send_msgs(
        &mut self,
        id: u64,
        inc: u64,
        store: &SimStorage,
        msgs: Vec<Message>,
    ) -> Check {
        for m in msgs {
            durable_before_send(id, store, &m)?;
            let d = self.trace.is_some().then(|| describe(&m));
            let seq = self.net.send(m, inc);
            tr!(self, "  send #{seq} {}", d.unwrap_or_default());
        }
        Ok(())
    }

    /// Applies committed entries as the application would: normal entries
    /// change the state machine, conf changes go to the node and the conf
    /// state is persisted with the applied index.
    fn apply(&mut self, id: u64, ents: Vec<Entry>) -> Check {
        let Some(last) = ents.last().map(|e| e.index) else {
            return Ok(());
        };
        let node = self.nodes.get_mut(&id).expect("node exists");
        let Some(raw) = node.raw.as_mut() else {
            return Ok(());
        };
        let mut app = node.store.app();
        for e in &ents {
            if e.index != app.applied + 1 {
                violation!(
                    "apply-order",
                    "n{id} applied {} after {}",
                    e.index,
                    app.applied
                );
            }
            let mut h = entry_hash(e);
            if e.entry_type() == EntryType::EntryNormal {
                if !e.data.is_empty() && !self.proposed.contains(&e.data) {
                    violation!(
                        "integrity",
                        "n{id} applied data nobody proposed at {}",
                        e.index
                    );
                }
                if let Some((p, at)) = &mut self.final_payload
                    && *p == e.data
                    && at.is_none()
                {
                    *at = Some(e.index);
                }
            } else {
                let cc = match decode_conf_change(e) {
                    Ok(cc) => cc,
                    Err(err) => violation!("conf-change-decode", "n{id} at {}: {err:?}", e.index),
                };
                match raw.apply_conf_change_v2(&cc) {
                    Ok(cs) => {
                        h = mix(h, conf_state_hash(&cs));
                        tr!(self, "  n{id} applied conf change at {}: {cs:?}", e.index);
                        node.store.mem.wl().set_conf_state(cs.clone());
                        if e.index > self.latest_conf.0 {
                            self.ever_member
                                .extend(cs.voters.iter().chain(&cs.learners));
                            self.latest_conf = (e.index, cs);
                        }
                        self.stats.conf_applied += 1;
                    }
                    Err(err) => {
                        h = mix(h, CONF_CHANGE_REFUSED);
                        tr!(self, "  n{id} conf change at {} refused: {err:?}", e.index);
                    }
                }
            }
            let digest = mix(app.digest, h);
            self.checker.on_apply(id, e.index, e.term, h, digest)?;
            app = AppState {
                applied: e.index,
                digest,
            };
            node.store.set_app(app);
            node.applied_log.push((e.index, e.term, e.data.clone()));
        }
        raw.advance_apply_to(last);
        Ok(())
    }

    /// Delivers one packet (or loses it if its link is cut or the target is
    /// down), reporting snapshot outcomes and unreachable peers to the
    /// sender as a transport would.
    pub(super) fn deliver(&mut self, p: Packet) -> Check {
        let (from, to, t) = (p.msg.from, p.msg.to, p.msg.msg_type());
        let cut = self.net.is_cut(from, to);
        if cut || !self.is_live(to) {
            tr!(
                self,
                "  lose #{} ({})",
                p.seq,
                if cut { "partition" } else { "target down" }
            );
            self.stats.dropped += 1;
            if !is_sleep_packet(&p.msg) {
                self.report(&p, false, cut);
            }
            return Ok(());
        }
        if self.opts.hibernate && !self.sleep_deliver(&p) {
            tr!(self, "  deliver #{} {}", p.seq, describe(&p.msg));
            return Ok(());
        }
        tr!(self, "  deliver #{} {}", p.seq, describe(&p.msg));
        self.stats.delivered += 1;
        let msg = p.msg.clone();
        if is_sleep_packet(&msg) {
            // A sleep packet of a run that no longer models sleep (never).
            return Ok(());
        }
        if let Some(raw) = self.raw(to)
            && let Err(e) = raw.step(msg)
        {
            tr!(self, "  n{to} step error: {e:?}");
        }
        if t == MessageType::MsgSnapshot {
            self.report(&p, true, false);
        }
        Ok(())
    }

    /// Tells the sender of `p` (if it still runs the same incarnation) that
    /// its snapshot went through or not, or that the peer is unreachable.
    pub(super) fn report(&mut self, p: &Packet, delivered: bool, unreachable: bool) {
        let (from, to) = (p.msg.from, p.msg.to);
        let Some(node) = self.nodes.get_mut(&from) else {
            return;
        };
        if node.incarnation != p.from_incarnation {
            return;
        }
        let Some(raw) = node.raw.as_mut() else {
            return;
        };
        if p.msg.msg_type() == MessageType::MsgSnapshot {
            raw.report_snapshot(to, delivered);
        }
        if unreachable {
            raw.report_unreachable(to);
        }
    }
}

/// The `LoseAckedTail` bug: keeps only the durable entries up to the
/// persisted commit (or applied) index.
fn lose_uncommitted_tail(store: &mut SimStorage) {
    let (term, vote, commit) = store.hard_state();
    let keep = commit.max(store.app().applied);
    let (Ok(first), Ok(last), Ok(rs)) = (
        store.first_index(),
        store.last_index(),
        store.initial_state(),
    ) else {
        return;
    };
    if last <= keep || !rs.initialized() {
        return;
    }
    let (Ok(snap_term), Ok(ents)) = (store.term(first - 1), store.entries(first, keep + 1, None))
    else {
        return;
    };
    let mem = flotilla_raftstore::raft::MemStorage::new();
    let snap = Snapshot {
        data: Bytes::new(),
        metadata: Some(flotilla_proto::eraftpb::SnapshotMetadata {
            index: first - 1,
            term: snap_term,
            conf_state: Some(rs.conf_state.clone()),
        }),
    };
    let mut core = mem.wl();
    if core.apply_snapshot(snap).is_err() || core.append(&ents).is_err() {
        return;
    }
    core.set_hardstate(flotilla_proto::eraftpb::HardState { term, vote, commit });
    core.set_conf_state(rs.conf_state);
    drop(core);
    store.mem = mem;
}

/// The checker's view of every node.
fn views(nodes: &BTreeMap<u64, Node>) -> Vec<NodeView<'_>> {
    nodes
        .iter()
        .map(|(id, n)| NodeView {
            id: *id,
            store: &n.store,
            raw: n.raw.as_ref(),
        })
        .collect()
}

/// DESIGN.md §9 rule 1: a vote (or a candidate's vote for itself) and an
/// append acknowledgement leave only once the state they vouch for is
/// durable (or superseded by a durable higher term).
fn durable_before_send(id: u64, store: &SimStorage, m: &Message) -> Check {
    let (term, vote, _) = store.hard_state();
    let ok = match m.msg_type() {
        MessageType::MsgRequestVoteResponse if !m.reject => {
            term > m.term || (term == m.term && vote == m.to)
        }
        MessageType::MsgRequestVote => term > m.term || (term == m.term && vote == id),
        MessageType::MsgAppendResponse if !m.reject => {
            term > m.term || store.last_index().is_ok_and(|li| li >= m.index)
        }
        _ => true,
    };
    if !ok {
        violation!(
            "durable-before-send",
            "n{id} sends {} with persisted term {term} vote {vote}",
            describe(m)
        );
    }
    Ok(())
}
