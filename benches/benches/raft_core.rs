//! Benchmarks of the consensus core (`flotilla_raftstore::raft`), with the
//! scenario names of raft-rs's own bench suite (`benches/suites/raft.rs`,
//! `raw_node.rs`) so the numbers can be read side by side:
//!
//! - `Raft::new (voters, learners)`: construct a `Raft` over a bootstrapped
//!   `MemStorage` (a shared, pre-built storage is cloned per iteration).
//! - `Raft::campaign (voters, learners, Campaign*)`: construct a `Raft` and
//!   run one campaign of the given kind (as in raft-rs, construction is
//!   inside the timed loop; subtract `Raft::new` for the campaign alone).
//! - `RawNode::new`: a single-voter node.
//! - `RawNode::leader_propose/<bytes>`: one proposal on a single-voter
//!   leader; only the `propose` calls are timed (payload allocation and the
//!   periodic draining of the log are not).
//! - `RawNode::ready/Default`: one `ready()` handing out 100 new entries and
//!   100 committed entries of 32 KiB each plus 100 messages.
//! - `Cluster3::propose_apply_128B/<n>_per_round`: a 3-voter in-memory
//!   cluster; the leader proposes n 128-byte entries and the round ends when
//!   all three nodes have committed and applied them (elements = proposals).
//!
//! Also prints the heap held by an idle 3-voter leader.

mod raft_pipeline;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use flotilla_proto::eraftpb::{Entry, HardState, MessageType};
use flotilla_raftstore::raft::{Config, MemStorage, Raft, RawNode, Ready};
use raft_pipeline::{
    BenchNode, Cluster, Flotilla, LEADER_ID, PROPOSAL_SIZE, PROPOSALS_PER_ROUND, Response, Samples,
    flotilla_config, idle_leader_heap, logger,
};

/// The (voters, learners) sets of raft-rs's suite.
const RAFT_SETS: [(u64, u64); 4] = [(0, 0), (3, 1), (5, 2), (7, 3)];
/// Campaign kinds, named as in raft-rs.
const CAMPAIGNS: [&str; 3] = [
    "CampaignPreElection",
    "CampaignElection",
    "CampaignTransfer",
];
/// One kibibyte.
const KIB: usize = 1024;
/// Proposal sizes of `RawNode::leader_propose`.
const PROPOSE_SIZES: [usize; 10] = [
    0,
    32,
    128,
    512,
    KIB,
    4 * KIB,
    16 * KIB,
    64 * KIB,
    256 * KIB,
    KIB * KIB,
];
/// Context bytes of each `leader_propose` proposal (as in raft-rs).
const PROPOSE_CONTEXT: usize = 8;
/// Payload bytes prepared per timed chunk of `leader_propose`; the log is
/// drained between chunks.
const PROPOSE_CHUNK_BYTES: usize = 8 * KIB * KIB;
/// Most proposals per timed chunk.
const PROPOSE_CHUNK_MAX: usize = 1024;
/// Entries (and messages) of the `RawNode::ready` scenario.
const READY_ITEMS: u64 = 100;
/// Payload of each entry of the `RawNode::ready` scenario.
const READY_ENTRY_SIZE: usize = 32 * KIB;
/// Voters of the `RawNode::ready` scenario's group (heartbeats to the two
/// followers are its messages).
const READY_VOTERS: [u64; 3] = [1, 2, 3];
/// Measurement time of most groups.
const MEASURE: Duration = Duration::from_secs(3);
/// Warm-up time of every group.
const WARM_UP: Duration = Duration::from_secs(1);
/// Sample count of the slower groups.
const SMALL_SAMPLES: usize = 20;
/// Sample count of the pipeline group.
const PIPELINE_SAMPLES: usize = 30;

fn new_storage(voters: u64, learners: u64) -> MemStorage {
    let v: Vec<u64> = (1..=voters).collect();
    let l: Vec<u64> = (voters + 1..=voters + learners).collect();
    MemStorage::with_voters(&v, &l)
}

fn bench_raft_new(c: &mut Criterion) {
    let log = logger();
    for (v, l) in RAFT_SETS {
        let storage = new_storage(v, l);
        let config = Config::new(LEADER_ID);
        c.bench_function(&format!("Raft::new ({v}, {l})"), |b| {
            b.iter(|| Raft::new(&config, storage.clone(), &log).expect("raft"))
        });
    }
}

fn campaign_message(kind: &str) -> flotilla_proto::eraftpb::Message {
    // Term 0 marks a local message; a follower answers `MsgTimeoutNow` with
    // a transfer campaign and `MsgHup` with a (pre-)election.
    let t = if kind == "CampaignTransfer" {
        MessageType::MsgTimeoutNow
    } else {
        MessageType::MsgHup
    };
    flotilla_proto::eraftpb::Message {
        msg_type: t as i32,
        from: LEADER_ID + 1,
        to: LEADER_ID,
        ..Default::default()
    }
}

fn bench_raft_campaign(c: &mut Criterion) {
    let log = logger();
    for (v, l) in RAFT_SETS.into_iter().skip(1) {
        let storage = new_storage(v, l);
        for kind in CAMPAIGNS {
            let config = Config {
                pre_vote: kind == "CampaignPreElection",
                ..Config::new(LEADER_ID)
            };
            let m = campaign_message(kind);
            c.bench_function(&format!("Raft::campaign ({v}, {l}, {kind})"), |b| {
                b.iter(|| {
                    let mut r = Raft::new(&config, storage.clone(), &log).expect("raft");
                    r.step(m.clone()).expect("campaign");
                    r
                })
            });
        }
    }
}

fn quick_raw_node(log: &slog::Logger) -> RawNode<MemStorage> {
    RawNode::new(
        &Config::new(LEADER_ID),
        MemStorage::with_voters(&[LEADER_ID], &[]),
        log,
    )
    .expect("raw node")
}

fn bench_raw_node_new(c: &mut Criterion) {
    let log = logger();
    c.bench_function("RawNode::new", |b| b.iter(|| quick_raw_node(&log)));
}

/// Persists, applies and compacts everything a single-voter leader has, and
/// returns the proposals' payload buffers for reuse.
fn drain_single(node: &mut RawNode<MemStorage>, pool: &mut Vec<Vec<u8>>) {
    let store = node.store().clone();
    let mut handed: Vec<Entry> = Vec::new();
    while node.has_ready() {
        let mut rd = node.ready();
        store.wl().append(&rd.entries).expect("append");
        if let Some(hs) = rd.hs {
            store.wl().set_hardstate(hs);
        }
        handed.append(&mut rd.entries);
        drop(rd.take_committed_entries());
        let lr = node.advance(rd);
        if let Some(commit) = lr.commit_index {
            store.wl().commit_to(commit);
        }
        drop(lr);
        node.advance_apply();
    }
    let last = node.raft.raft_log().last_index();
    assert_eq!(
        node.raft.raft_log().applied,
        last,
        "single voter applied all"
    );
    store.wl().compact(last + 1).expect("compact");
    // Every other copy is gone: the payloads come back without copying.
    pool.extend(handed.into_iter().map(|e| Vec::from(e.data)));
}

fn bench_raw_node_leader_propose(c: &mut Criterion) {
    let mut group = c.benchmark_group("RawNode::leader_propose");
    group
        .warm_up_time(WARM_UP)
        .measurement_time(MEASURE)
        .sampling_mode(SamplingMode::Flat)
        .sample_size(SMALL_SAMPLES);
    for size in PROPOSE_SIZES {
        let chunk = (PROPOSE_CHUNK_BYTES / size.max(1)).clamp(1, PROPOSE_CHUNK_MAX);
        group
            .throughput(Throughput::Bytes(size as u64))
            .bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
                let log = logger();
                let mut node = quick_raw_node(&log);
                node.campaign().expect("campaign");
                let mut pool: Vec<Vec<u8>> = Vec::new();
                drain_single(&mut node, &mut pool);
                let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(chunk);
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(chunk as u64);
                        left -= n;
                        for _ in 0..n {
                            let data = match pool.pop() {
                                Some(mut v) if v.capacity() >= size => {
                                    v.resize(size, 0);
                                    v
                                }
                                _ => vec![0; size],
                            };
                            batch.push((vec![0; PROPOSE_CONTEXT], data));
                        }
                        let start = Instant::now();
                        for (ctx, data) in batch.drain(..) {
                            node.propose(ctx, data).expect("propose");
                        }
                        total += start.elapsed();
                        drain_single(&mut node, &mut pool);
                    }
                    total
                });
            });
    }
    group.finish();
}

/// A leader whose next `ready()` hands out `READY_ITEMS` new entries,
/// `READY_ITEMS` committed entries (both of `READY_ENTRY_SIZE` bytes) and
/// `READY_ITEMS` heartbeats: the equivalent of raft-rs's
/// `test_ready_raft_node` through flotilla's public API.
fn ready_node(log: &slog::Logger, stable: &[Entry], unstable: &[Entry]) -> RawNode<MemStorage> {
    let storage = MemStorage::with_voters(&READY_VOTERS, &[]);
    storage.wl().append(stable).expect("append");
    storage.wl().set_hardstate(HardState {
        term: 1,
        ..Default::default()
    });
    let mut node = RawNode::new(&flotilla_config(LEADER_ID), storage.clone(), log).expect("node");
    node.campaign().expect("campaign");
    let term = node.raft.term();
    for from in &READY_VOTERS[1..] {
        node.step(Flotilla::response(
            Response::Vote,
            *from,
            LEADER_ID,
            term,
            0,
        ))
        .expect("vote");
    }
    // Persist the leader's empty entry and drop the first appends.
    let rd = node.ready();
    storage.wl().append(&rd.entries).expect("append");
    if let Some(hs) = rd.hs {
        storage.wl().set_hardstate(hs);
    }
    drop(node.advance(rd));
    let mut unstable = unstable.to_vec();
    let next = node.raft.raft_log().last_index() + 1;
    for (i, e) in unstable.iter_mut().enumerate() {
        e.index = next + i as u64;
        e.term = term;
    }
    node.raft.raft_log_mut().append(unstable);
    let followers = (READY_VOTERS.len() - 1) as u64;
    for _ in 0..READY_ITEMS / followers {
        node.tick();
    }
    node.raft.raft_log_mut().committed = READY_ITEMS;
    node
}

fn bench_raw_node_ready(c: &mut Criterion) {
    let log = logger();
    let data = Bytes::from(vec![0u8; READY_ENTRY_SIZE]);
    let stable: Vec<Entry> = (1..=READY_ITEMS)
        .map(|i| Entry {
            index: i,
            term: 1,
            data: data.clone(),
            ..Default::default()
        })
        .collect();
    let unstable = stable.clone();
    {
        let mut probe = ready_node(&log, &stable, &unstable);
        let rd: Ready = probe.ready();
        assert_eq!(rd.entries.len() as u64, READY_ITEMS, "new entries");
        assert_eq!(rd.committed_entries.len() as u64, READY_ITEMS, "committed");
        assert!(rd.messages.len() as u64 >= READY_ITEMS, "messages");
    }
    let mut group = c.benchmark_group("RawNode::ready");
    group
        .warm_up_time(WARM_UP)
        .measurement_time(MEASURE)
        .sample_size(SMALL_SAMPLES);
    group.bench_function("Default", |b| {
        b.iter_batched(
            || ready_node(&log, &stable, &unstable),
            |mut node| node.ready(),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_pipeline(c: &mut Criterion) {
    let samples = Samples::default();
    let mut group = c.benchmark_group(format!("Cluster3::propose_apply_{PROPOSAL_SIZE}B"));
    group
        .warm_up_time(WARM_UP)
        .measurement_time(MEASURE)
        .sample_size(PIPELINE_SAMPLES);
    let log = logger();
    let mut work = Vec::new();
    for per_round in PROPOSALS_PER_ROUND {
        let name = format!("{per_round}_per_round");
        // Criterion calls the closure once per sample: keep the last cluster's.
        let mut last = (0.0, 0.0);
        group
            .throughput(Throughput::Elements(per_round))
            .bench_function(&name, |b| {
                let mut cluster = Cluster::<Flotilla>::new(&log);
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        cluster.round(per_round);
                    }
                    let d = start.elapsed();
                    samples.record(&name, iters, d);
                    d
                });
                let applied = cluster.applied_proposals();
                assert!(applied.iter().all(|&a| a == applied[0]), "{applied:?}");
                last = cluster.work_per_proposal();
            });
        work.push((per_round, last));
    }
    group.finish();
    for (per_round, (msgs, readies)) in work {
        let name = format!("{per_round}_per_round");
        if let Some(s) = samples.median_secs(&name, PIPELINE_SAMPLES) {
            println!(
                "flotilla 3-node pipeline, {per_round:>2} per round: {:>10.0} ops/s \
                 ({msgs:.2} messages, {readies:.2} readies per op)",
                per_round as f64 / s
            );
        }
    }
}

fn report_idle_leader_heap(_c: &mut Criterion) {
    let (held, _) = idle_leader_heap::<Flotilla>();
    println!("flotilla idle 3-voter leader heap (no explicit free): {held} bytes");
}

criterion_group!(
    benches,
    bench_raft_new,
    bench_raft_campaign,
    bench_raw_node_new,
    bench_raw_node_leader_propose,
    bench_raw_node_ready,
    bench_pipeline,
    report_idle_leader_heap
);

criterion_main!(benches);
