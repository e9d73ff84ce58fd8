//! Raft log GC, conservative mode (issue #11 item 2, admin.md phase B):
//! leaders compact their regions' logs to what every peer matched, every
//! replica moves its truncated state and deletes the compacted entries
//! from its engine, and a follower that is down holds the log back, so
//! it catches up from entries (no snapshot) when it returns.

use std::ops::ControlFlow;

use flotilla_engine::{Cf, Engine, keys};
use flotilla_proto::raft_serverpb::{RaftApplyState, RaftLocalState};
use flotilla_raftstore::store::{
    Client, ClientConfig, Cluster, Config, RAFT_INIT_LOG_INDEX, Store,
};
use flotilla_tests::harness::{FAST_TICK_MS, eventually, fast_config, logger, wait_leader};

/// The region the tests write to.
const REGION: u64 = 1;
/// Writes per batch of the tests.
const WRITES: u64 = 120;
/// A compaction drops at least this many entries at once.
const THRESHOLD: u64 = 10;

fn config() -> Config {
    Config {
        raft_log_gc_tick_ticks: 2,
        raft_log_gc_threshold: THRESHOLD,
        ..fast_config(FAST_TICK_MS)
    }
}

fn client(cluster: &Cluster) -> Client {
    cluster.client(ClientConfig::default())
}

fn key(i: u64) -> Vec<u8> {
    format!("gc{i:05}").into_bytes()
}

fn write(client: &Client, range: std::ops::Range<u64>) {
    for i in range {
        client.put(&key(i), &i.to_be_bytes()).expect("put");
    }
}

fn apply_state(engine: &Engine) -> RaftApplyState {
    engine
        .get_msg(Cf::Raft, &keys::apply_state_key(REGION))
        .expect("read apply state")
        .expect("apply state")
}

fn last_index(engine: &Engine) -> u64 {
    let state: RaftLocalState = engine
        .get_msg(Cf::Raft, &keys::raft_state_key(REGION))
        .expect("read raft state")
        .expect("raft state");
    state.last_index
}

fn truncated(store: &Store) -> u64 {
    apply_state(store.engine())
        .truncated_state
        .unwrap_or_default()
        .index
}

/// The indices of the region's log entries in the engine.
fn log_indices(engine: &Engine) -> Vec<u64> {
    let (lo, hi) = keys::raft_log_range(REGION, 0, u64::MAX);
    let mut out = Vec::new();
    engine
        .snapshot()
        .scan(Cf::Raft, &lo, &hi, |k, _| {
            let idx = k.get(k.len() - 8..).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_be_bytes(a)
            });
            out.extend(idx);
            ControlFlow::Continue(())
        })
        .expect("scan log");
    out
}

/// Every entry at or below the truncated index is gone from the engine,
/// and every entry above it up to the last index is there (admin.md §5.4
/// invariant 4).
fn assert_log_exactly_untruncated(store: &Store) {
    let engine = store.engine();
    let t = truncated(store);
    let last = last_index(engine);
    let want: Vec<u64> = (t + 1..=last).collect();
    assert_eq!(
        log_indices(engine),
        want,
        "store {}: log after truncation at {t}",
        store.store_id()
    );
}

fn assert_all_readable(client: &Client, range: std::ops::Range<u64>) {
    for i in range {
        assert_eq!(
            client.get(&key(i)).expect("get").as_deref(),
            Some(&i.to_be_bytes()[..]),
            "key {i}"
        );
    }
}

/// admin.md scenario 1 and 3's restart rule: under writes, every replica
/// compacts its log (truncated state moved, the entries deleted from the
/// engine, the rest kept); after a restart of every store the log is
/// still exactly `(truncated, last]`, and the region serves old and new
/// keys.
#[test]
fn every_replica_compacts_and_deletes_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    write(&client(&cluster), 0..WRITES);
    let ids = cluster.store_ids().to_vec();
    assert!(
        eventually(|| ids.iter().all(|&id| {
            truncated(cluster.store(id).unwrap()) >= RAFT_INIT_LOG_INDEX + WRITES / 2
        })),
        "not compacted on every store: {:?}",
        ids.iter()
            .map(|&id| truncated(cluster.store(id).unwrap()))
            .collect::<Vec<_>>()
    );
    // The deletion follows the apply write within a round or two.
    assert!(eventually(|| ids.iter().all(|&id| {
        let s = cluster.store(id).unwrap();
        log_indices(s.engine()).first().copied() > Some(truncated(s))
    })));
    for &id in &ids {
        assert_log_exactly_untruncated(cluster.store(id).unwrap());
    }
    assert_all_readable(&client(&cluster), 0..WRITES);

    cluster.restart_all().unwrap();
    wait_leader(&cluster, REGION).expect("leader after restart");
    let c = client(&cluster);
    write(&c, WRITES..WRITES + 20);
    assert_all_readable(&c, 0..WRITES + 20);
    for &id in &ids {
        let s = cluster.store(id).unwrap();
        assert!(s.fatal_error().is_none());
        assert!(
            log_indices(s.engine()).first().copied() > Some(truncated(s)),
            "store {id}: compacted entries back after restart"
        );
    }
    cluster.shutdown();
}

/// admin.md scenario 1 (`gc_never_cuts_live_followers`, conservative
/// mode): with one store down, the others compact no further than what it
/// had matched, so when it returns it catches up from entries (a snapshot
/// would stop it: stores do not install snapshots yet) and serves every
/// key.
#[test]
fn a_stopped_follower_holds_the_log_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    let leader = wait_leader(&cluster, REGION).expect("leader");
    let down = *cluster
        .store_ids()
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");
    write(&client(&cluster), 0..WRITES / 2);
    // Everything written is applied on the follower before it stops.
    let written_last = last_index(cluster.store(leader).unwrap().engine());
    assert!(eventually(|| {
        apply_state(cluster.store(down).unwrap().engine()).applied_index >= written_last
    }));
    let down_last = last_index(cluster.store(down).unwrap().engine());
    cluster.stop_store(down);

    write(&client(&cluster), WRITES / 2..WRITES);
    let up: Vec<u64> = cluster
        .store_ids()
        .iter()
        .copied()
        .filter(|&id| id != down)
        .collect();
    // The live stores compact (their log grew far past the threshold)...
    assert!(eventually(|| up.iter().all(|&id| truncated(
        cluster.store(id).unwrap()
    ) > RAFT_INIT_LOG_INDEX)));
    // ...but never past what the stopped store has.
    for _ in 0..20 {
        for &id in &up {
            let t = truncated(cluster.store(id).unwrap());
            assert!(
                t <= down_last,
                "store {id} truncated at {t}, past the stopped store's last index {down_last}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5 * FAST_TICK_MS));
    }

    cluster.start_store(down).unwrap();
    let leader_last = || last_index(cluster.store(leader).unwrap().engine());
    assert!(
        eventually(
            || apply_state(cluster.store(down).unwrap().engine()).applied_index
                >= leader_last().saturating_sub(1)
        ),
        "the returning store did not catch up"
    );
    assert!(cluster.store(down).unwrap().fatal_error().is_none());
    assert_all_readable(&client(&cluster), 0..WRITES);
    cluster.shutdown();
}
