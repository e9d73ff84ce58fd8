//! flotilla's consensus core against raft-rs 0.7 (the `raft` crate), on the
//! same workload with the same driver:
//!
//! - `vs_raft_rs::pipeline_<n>_per_round/{flotilla,raft-rs}`: a 3-voter
//!   in-memory cluster, the leader proposes n 128-byte entries, and the round
//!   ends when all three nodes have committed and applied them (elements =
//!   proposals). The delivery loop, persistence into each library's
//!   `MemStorage` and apply accounting are one generic driver
//!   (`raft_pipeline::Cluster`); each library only supplies adapters.
//! - Idle-leader heap: bytes held by a 3-voter leader `RawNode` with
//!   `MemStorage` after its appends were acknowledged and a few idle,
//!   answered heartbeats, counted by a per-thread counting global allocator;
//!   raft-rs both before and after its explicit
//!   `Raft::maybe_free_inflight_buffers`, flotilla without any free call.
//!
//! - The same pipelines measured in alternating pairs (about 100 ms of
//!   flotilla, then 100 ms of raft-rs, 31 times), whose per-pair ratio is
//!   robust against the machine's noise drifting between criterion's
//!   back-to-back runs.
//!
//! Prints a table of throughputs, heap bytes and ratios after criterion.

mod raft_pipeline;

use std::time::Instant;

use criterion::{Criterion, Throughput};
use raft::eraftpb::{Entry, Message, MessageType};
use raft::storage::MemStorage;
use raft::{Config, LightReady, RawNode, Ready, StateRole};
use raft_pipeline::{
    BenchNode, Cluster, ELECTION_TICK, Flotilla, HEARTBEAT_TICK, MAX_INFLIGHT_MSGS,
    MAX_SIZE_PER_MSG, PROPOSAL_SIZE, PROPOSALS_PER_ROUND, Response, Samples, idle_leader_heap,
    logger,
};

/// Measurement time of each pipeline bench.
const MEASURE: std::time::Duration = std::time::Duration::from_secs(3);
/// Warm-up time of each pipeline bench.
const WARM_UP: std::time::Duration = std::time::Duration::from_secs(1);
/// Samples per pipeline bench.
const SAMPLES: usize = 30;
/// Goal: flotilla's pipeline throughput at least this multiple of raft-rs's.
const THROUGHPUT_GOAL: f64 = 1.5;
/// Goal: flotilla's idle-leader heap at most this fraction of raft-rs's.
const HEAP_GOAL: f64 = 0.5;
/// Rounds run to count messages and readies per proposal.
const ROUNDS_FOR_COUNTS: usize = 1000;
/// Alternating (flotilla, raft-rs) pairs of the paired measurement.
const PAIRS: usize = 31;
/// Wall time each library runs per half of a pair.
const PAIR_HALF: std::time::Duration = std::time::Duration::from_millis(100);
/// Bench id of flotilla's runs.
const OURS: &str = "flotilla";
/// Bench id of raft-rs's runs.
const THEIRS: &str = "raft-rs";

/// raft-rs 0.7's `RawNode` over its `MemStorage`.
struct RaftRs {
    node: RawNode<MemStorage>,
    store: MemStorage,
}

impl BenchNode for RaftRs {
    type Msg = Message;
    type Entry = Entry;
    type Ready = Ready;
    type LightReady = LightReady;

    fn new(id: u64, voters: &[u64], logger: &slog::Logger) -> Self {
        let store = MemStorage::new_with_conf_state((voters.to_vec(), Vec::<u64>::new()));
        let config = Config {
            election_tick: ELECTION_TICK,
            heartbeat_tick: HEARTBEAT_TICK,
            max_inflight_msgs: MAX_INFLIGHT_MSGS,
            max_size_per_msg: MAX_SIZE_PER_MSG,
            ..Config::new(id)
        };
        let node = RawNode::new(&config, store.clone(), logger).expect("valid node");
        RaftRs { node, store }
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
        out.append(&mut rd.take_messages());
    }

    fn persist(&self, rd: &Ready) {
        let mut s = self.store.wl();
        if !rd.snapshot().is_empty() {
            s.apply_snapshot(rd.snapshot().clone())
                .expect("apply snapshot");
        }
        s.append(rd.entries()).expect("append");
        if let Some(hs) = rd.hs() {
            s.set_hardstate(hs.clone());
        }
    }

    fn take_persisted_messages(rd: &mut Ready, out: &mut Vec<Message>) {
        out.append(&mut rd.take_persisted_messages());
    }

    fn take_committed_entries(rd: &mut Ready) -> Vec<Entry> {
        rd.take_committed_entries()
    }

    fn advance(&mut self, rd: Ready) -> LightReady {
        self.node.advance(rd)
    }

    fn persist_commit(&self, lr: &LightReady) {
        if let Some(commit) = lr.commit_index() {
            self.store.wl().mut_hard_state().set_commit(commit);
        }
    }

    fn light_take_messages(lr: &mut LightReady, out: &mut Vec<Message>) {
        out.append(&mut lr.take_messages());
    }

    fn light_take_committed_entries(lr: &mut LightReady) -> Vec<Entry> {
        lr.take_committed_entries()
    }

    fn advance_apply(&mut self) {
        self.node.advance_apply();
    }

    fn compact(&self, index: u64) {
        self.store.wl().compact(index).expect("compact");
    }

    fn msg_to(m: &Message) -> u64 {
        m.get_to()
    }

    fn entry_index_len(e: &Entry) -> (u64, usize) {
        (e.get_index(), e.get_data().len())
    }

    fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    fn term(&self) -> u64 {
        self.node.raft.term
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    fn response(r: Response, from: u64, to: u64, term: u64, index: u64) -> Message {
        let t = match r {
            Response::Vote => MessageType::MsgRequestVoteResponse,
            Response::Append => MessageType::MsgAppendResponse,
            Response::Heartbeat => MessageType::MsgHeartbeatResponse,
        };
        let mut m = Message::default();
        m.set_msg_type(t);
        m.set_from(from);
        m.set_to(to);
        m.set_term(term);
        m.set_index(index);
        m
    }

    fn free_inflight_buffers(&mut self) {
        self.node.raft.maybe_free_inflight_buffers();
    }
}

fn pipeline_name(per_round: u64) -> String {
    format!("vs_raft_rs::pipeline_{per_round}_per_round")
}

fn run_pipeline<N: BenchNode>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    per_round: u64,
    samples: &Samples,
) {
    let key = format!("{}/{id}", pipeline_name(per_round));
    c.bench_function(id, |b| {
        let log = logger();
        let mut cluster = Cluster::<N>::new(&log);
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                cluster.round(per_round);
            }
            let d = start.elapsed();
            samples.record(&key, iters, d);
            d
        });
        let applied = cluster.applied_proposals();
        assert!(applied.iter().all(|&a| a == applied[0]), "{applied:?}");
    });
}

fn bench_pipelines(c: &mut Criterion, samples: &Samples) {
    for per_round in PROPOSALS_PER_ROUND {
        let mut group = c.benchmark_group(pipeline_name(per_round));
        group
            .warm_up_time(WARM_UP)
            .measurement_time(MEASURE)
            .sample_size(SAMPLES)
            .throughput(Throughput::Elements(per_round));
        run_pipeline::<Flotilla>(&mut group, OURS, per_round, samples);
        run_pipeline::<RaftRs>(&mut group, THEIRS, per_round, samples);
        group.finish();
    }
}

fn ops_per_sec(samples: &Samples, per_round: u64, id: &str) -> Option<f64> {
    let key = format!("{}/{id}", pipeline_name(per_round));
    samples
        .median_secs(&key, SAMPLES)
        .map(|s| per_round as f64 / s)
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0} {unit}"))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "goal met" } else { "goal MISSED" }
}

/// Messages and `Ready`s per proposal over `ROUNDS_FOR_COUNTS` rounds.
fn work_per_proposal<N: BenchNode>(per_round: u64) -> (f64, f64) {
    let log = logger();
    let mut c = Cluster::<N>::new(&log);
    for _ in 0..ROUNDS_FOR_COUNTS {
        c.round(per_round);
    }
    c.work_per_proposal()
}

/// Runs `per_round`-proposal rounds on `c` for about `d`; returns how many.
fn rounds_in<N: BenchNode>(c: &mut Cluster<N>, per_round: u64, d: std::time::Duration) -> u64 {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < d {
        c.round(per_round);
        n += 1;
    }
    n.max(1)
}

/// Proposals per second over `rounds` rounds of `per_round` on `c`.
fn ops_over<N: BenchNode>(c: &mut Cluster<N>, per_round: u64, rounds: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..rounds {
        c.round(per_round);
    }
    (rounds * per_round) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The pipeline measured in alternating pairs: [`PAIRS`] times, flotilla
/// then raft-rs each run for about [`PAIR_HALF`]. Noise on a shared machine
/// drifts over seconds; criterion's back-to-back runs of several seconds
/// each can land in different regimes, while the two halves of a pair
/// share one. Returns the medians of (flotilla ops/s, raft-rs ops/s,
/// per-pair ratio).
fn paired(per_round: u64) -> (f64, f64, f64) {
    let log = logger();
    let mut ours = Cluster::<Flotilla>::new(&log);
    let mut theirs = Cluster::<RaftRs>::new(&log);
    let our_rounds = rounds_in(&mut ours, per_round, PAIR_HALF);
    let their_rounds = rounds_in(&mut theirs, per_round, PAIR_HALF);
    let (mut o, mut t, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let a = ops_over(&mut ours, per_round, our_rounds);
        let b = ops_over(&mut theirs, per_round, their_rounds);
        o.push(a);
        t.push(b);
        r.push(a / b);
    }
    (median(o), median(t), median(r))
}

fn print_table(samples: &Samples) {
    println!();
    println!("flotilla vs raft-rs 0.7 (3 voters, {PROPOSAL_SIZE}-byte proposals, MemStorage)");
    println!(
        "{:<34} {:>16} {:>16} {:>8}  goal",
        "metric", OURS, THEIRS, "ratio"
    );
    for per_round in PROPOSALS_PER_ROUND {
        let ours = ops_per_sec(samples, per_round, OURS);
        let theirs = ops_per_sec(samples, per_round, THEIRS);
        let ratio = ours.zip(theirs).map(|(o, t)| o / t);
        println!(
            "{:<34} {:>16} {:>16} {:>8}  {}",
            format!("pipeline, {per_round} per round (median)"),
            fmt_opt(ours, "ops/s"),
            fmt_opt(theirs, "ops/s"),
            ratio.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}x")),
            ratio.map_or("n/a", |r| verdict(r >= THROUGHPUT_GOAL)),
        );
    }
    for per_round in PROPOSALS_PER_ROUND {
        let (ours, theirs, ratio) = paired(per_round);
        println!(
            "{:<34} {:>16} {:>16} {:>8}  {}",
            format!("pipeline, {per_round}/round, paired"),
            format!("{ours:.0} ops/s"),
            format!("{theirs:.0} ops/s"),
            format!("{ratio:.2}x"),
            verdict(ratio >= THROUGHPUT_GOAL),
        );
    }
    for per_round in PROPOSALS_PER_ROUND {
        let (om, or) = work_per_proposal::<Flotilla>(per_round);
        let (tm, tr) = work_per_proposal::<RaftRs>(per_round);
        println!(
            "{:<34} {:>16} {:>16} {:>8}",
            format!("msgs / readies per op, {per_round}/round"),
            format!("{om:.2} / {or:.2}"),
            format!("{tm:.2} / {tr:.2}"),
            format!("{:.2}x", om / tm),
        );
    }
    let (ours, ours_freed) = idle_leader_heap::<Flotilla>();
    let (theirs, theirs_freed) = idle_leader_heap::<RaftRs>();
    let row = |label: &str, o: isize, t: isize, goal: bool| {
        let r = o as f64 / t as f64;
        let g = if goal { verdict(r <= HEAP_GOAL) } else { "-" };
        println!(
            "{label:<34} {:>16} {:>16} {:>8}  {g}",
            format!("{o} B"),
            format!("{t} B"),
            format!("{r:.2}x"),
        );
    };
    row("idle leader heap, no explicit free", ours, theirs, true);
    row(
        "ours (no free) vs theirs after free",
        ours,
        theirs_freed,
        false,
    );
    row("both after explicit free", ours_freed, theirs_freed, false);
    let ours_sz = std::mem::size_of::<flotilla_proto::eraftpb::Message>();
    let theirs_sz = std::mem::size_of::<Message>();
    println!(
        "{:<34} {:>16} {:>16} {:>8}",
        "size_of::<Message>()",
        format!("{ours_sz} B"),
        format!("{theirs_sz} B"),
        format!("{:.2}x", ours_sz as f64 / theirs_sz as f64),
    );
}

fn main() {
    let samples = Samples::default();
    let mut c = Criterion::default().configure_from_args();
    bench_pipelines(&mut c, &samples);
    c.final_summary();
    print_table(&samples);
}
