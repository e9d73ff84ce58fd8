//! Snapshots between stores (issue #11 item 3, admin.md phase C): a
//! follower cut off past a forced log compaction catches up by one
//! snapshot (generated and sent off the pollers, received whole and
//! checked, persisted `Applying`, written into the engine, `Normal`), then
//! follows the log again, and keeps its data across a restart.

use std::sync::atomic::Ordering;

use flotilla_engine::{Cf, Engine, keys};
use flotilla_proto::raft_serverpb::{PeerState, RaftApplyState, RegionLocalState};
use flotilla_raftstore::store::{
    Client, ClientConfig, Cluster, Config, FilterId, SNAP_DIR, StoreMetrics,
};
use flotilla_tests::harness::{self, eventually, gc_config, holds_values, logger, wait_leader};

/// The region the tests write to.
const REGION: u64 = 1;
/// Log length past which leaders compact whatever followers matched.
const COUNT_LIMIT: u64 = 30;
/// Writes while the follower is cut off: far past the count limit.
const CUT_OFF_WRITES: u64 = 150;

fn config() -> Config {
    gc_config(COUNT_LIMIT)
}

fn key(i: u64) -> Vec<u8> {
    format!("snap{i:05}").into_bytes()
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

fn region_state(engine: &Engine) -> PeerState {
    let s: RegionLocalState = engine
        .get_msg(Cf::Raft, &keys::region_state_key(REGION))
        .expect("read region state")
        .expect("region state");
    s.state()
}

fn last_index(engine: &Engine) -> u64 {
    harness::last_index(engine, REGION)
}

/// Whether `engine`'s data holds every key of `range` with its value.
fn holds(engine: &Engine, range: std::ops::Range<u64>) -> bool {
    holds_values(engine, range, key)
}

fn total(cluster: &Cluster, f: impl Fn(&StoreMetrics) -> u64) -> u64 {
    cluster
        .store_ids()
        .iter()
        .filter_map(|&id| cluster.store(id))
        .map(|s| f(s.metrics()))
        .sum()
}

/// Files in a store's snapshot directory.
fn snap_files(dir: &std::path::Path, id: u64) -> Vec<String> {
    std::fs::read_dir(flotilla_raftstore::store::store_dir(dir, id).join(SNAP_DIR))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A cluster whose region's log was compacted past one follower: that
/// follower was partitioned away (`filter`) during `10 + CUT_OFF_WRITES`
/// writes. Returns the follower's store and its last index then.
fn cut_off_follower(cluster: &Cluster, client: &Client) -> (u64, FilterId, u64) {
    let leader = wait_leader(cluster, REGION).expect("leader");
    let cut = *cluster
        .store_ids()
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");
    write(client, 0..10);
    let filter = cluster.transport().isolate(cut);
    write(client, 10..10 + CUT_OFF_WRITES);
    let cut_last = last_index(cluster.store(cut).unwrap().engine());
    let live: Vec<u64> = cluster
        .store_ids()
        .iter()
        .copied()
        .filter(|&id| id != cut)
        .collect();
    assert!(
        eventually(|| live.iter().all(|&id| {
            let t = apply_state(cluster.store(id).unwrap().engine())
                .truncated_state
                .unwrap_or_default()
                .index;
            t > cut_last
        })),
        "the live stores did not compact past the cut-off store's last index {cut_last}"
    );
    assert_eq!(
        total(cluster, |m| m.snapshots_sent.load(Ordering::Relaxed)),
        0,
        "a snapshot went through the partition"
    );
    (cut, filter, cut_last)
}

/// admin.md scenario 2 (`gc_forced_cuts_partitioned_follower_then_snapshot`):
/// a follower is partitioned away while the log grows far past the count
/// limit, so the others compact past it. Healed, it catches up by exactly
/// one snapshot (no snapshot loop, tikv#424): its data equals the
/// leader's, its region is `Normal` at an index past the compaction, it
/// then follows the log, and after a restart it still serves everything.
#[test]
fn gc_forced_cuts_partitioned_follower_then_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    let client = cluster.client(ClientConfig::default());
    let (cut, filter, cut_last) = cut_off_follower(&cluster, &client);
    cluster.transport().remove_filter(filter);
    let cut_engine = cluster.store(cut).unwrap().engine().clone();
    assert!(
        eventually(|| holds(&cut_engine, 0..10 + CUT_OFF_WRITES)
            && region_state(&cut_engine) == PeerState::Normal),
        "the cut-off store did not catch up: applied {:?}, state {:?}",
        apply_state(&cut_engine),
        region_state(&cut_engine)
    );
    let metrics = cluster.store(cut).unwrap().metrics();
    // The peer hears of the apply just after the engine has it.
    assert!(eventually(|| metrics
        .snapshots_applied
        .load(Ordering::Relaxed)
        >= 1));
    assert_eq!(
        metrics.snapshots_applied.load(Ordering::Relaxed),
        1,
        "not exactly one snapshot"
    );
    assert_eq!(metrics.snapshots_received.load(Ordering::Relaxed), 1);
    assert!(apply_state(&cut_engine).applied_index > cut_last);

    // Back on the log: new writes reach it as entries.
    let n = 10 + CUT_OFF_WRITES;
    write(&client, n..n + 20);
    assert!(
        eventually(|| holds(&cut_engine, n..n + 20)),
        "writes after the snapshot did not reach the store"
    );
    assert_eq!(
        metrics.snapshots_applied.load(Ordering::Relaxed),
        1,
        "a second snapshot"
    );
    assert!(
        total(&cluster, |m| m.snapshots_sent.load(Ordering::Relaxed)) <= 2,
        "snapshots sent again and again"
    );
    // The sender's file and the receiver's are gone once used.
    assert!(
        eventually(|| snap_files(dir.path(), cut).is_empty()),
        "received snapshot files left: {:?}",
        snap_files(dir.path(), cut)
    );

    drop(cut_engine);
    cluster.stop_store(cut);
    cluster.start_store(cut).unwrap();
    let engine = cluster.store(cut).unwrap().engine().clone();
    assert_eq!(region_state(&engine), PeerState::Normal);
    assert!(holds(&engine, 0..n + 20), "data lost across the restart");
    assert!(
        last_index(&engine) >= apply_state(&engine).applied_index,
        "log behind the applied index after restart"
    );
    write(&client, n + 20..n + 30);
    assert!(eventually(|| holds(&engine, n + 20..n + 30)));
    for &id in cluster.store_ids() {
        assert!(
            cluster.store(id).unwrap().fatal_error().is_none(),
            "store {id} stopped"
        );
    }
    cluster.shutdown();
}

/// admin.md scenario 6 (`snap_transfer_interrupted`): the first snapshot
/// stream breaks after one chunk. The receiver keeps nothing of it (no
/// partial file), the leader hears the send failed and sends again, and
/// the follower catches up by the second.
#[test]
fn snap_transfer_interrupted_then_resent() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    let client = cluster.client(ClientConfig::default());
    let (cut, filter, _) = cut_off_follower(&cluster, &client);
    cluster.transport().break_snapshot_streams(1);
    cluster.transport().remove_filter(filter);
    let cut_engine = cluster.store(cut).unwrap().engine().clone();
    assert!(
        eventually(|| holds(&cut_engine, 0..10 + CUT_OFF_WRITES)),
        "the follower did not catch up after a broken stream"
    );
    let metrics = cluster.store(cut).unwrap().metrics();
    assert_eq!(
        metrics.snapshot_receive_failures.load(Ordering::Relaxed),
        1,
        "the broken stream was not seen by the receiver"
    );
    assert!(eventually(|| total(&cluster, |m| m
        .snapshot_send_failures
        .load(Ordering::Relaxed))
        == 1));
    assert!(eventually(|| metrics
        .snapshots_applied
        .load(Ordering::Relaxed)
        == 1));
    assert!(
        eventually(|| snap_files(dir.path(), cut).is_empty()),
        "files left on the receiver: {:?}",
        snap_files(dir.path(), cut)
    );
    cluster.shutdown();
}

/// A concurrent history through forced compactions and snapshots: while
/// clients read and write a few keys, a seeded driver cuts off or stops a
/// store (picked at random, the leader included) long enough for the
/// others to compact past it, then heals or restarts it, several times.
/// The history is linearizable, at least one follower caught up by a
/// snapshot, and every store ends with the same data. `SIM_SEED` replays.
#[test]
fn history_is_linearizable_through_snapshots_and_restarts() {
    use std::sync::Arc;

    use flotilla_tests::linearizability::History;
    use flotilla_tests::workload::{
        Workload, check_history, history_client, history_seed, spawn_history_clients, stored_values,
    };
    use rand::{Rng, SeedableRng};

    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let w = Workload {
        clients: 4,
        keys: 5,
        ops_per_client: 150,
        pause: std::time::Duration::from_millis(3),
        seed: history_seed(21),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(w.seed);
    let history = Arc::new(History::new());
    let workers = spawn_history_clients(&history_client(&cluster), &history, w);
    let mut applied_before_stops = 0;
    for _ in 0..4 {
        let victim = cluster.store_ids()[rng.random_range(0..3)];
        let away = std::time::Duration::from_millis(rng.random_range(300..600));
        if rng.random_bool(0.5) {
            let f = cluster.transport().isolate(victim);
            std::thread::sleep(away);
            cluster.transport().remove_filter(f);
        } else {
            // A restarted store's counters start again: keep what it had.
            applied_before_stops += cluster
                .store(victim)
                .unwrap()
                .metrics()
                .snapshots_applied
                .load(Ordering::Relaxed);
            cluster.stop_store(victim);
            std::thread::sleep(away);
            cluster.start_store(victim).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    check_history(workers, &history, w.seed, 100);
    let data = |s: u64| stored_values(&cluster, s, w.keys);
    let ids = cluster.store_ids().to_vec();
    assert!(
        eventually(|| ids.iter().all(|&s| data(s) == data(ids[0]))),
        "stores disagree (seed {})",
        w.seed
    );
    assert!(
        applied_before_stops + total(&cluster, |m| m.snapshots_applied.load(Ordering::Relaxed))
            >= 1,
        "no store caught up by a snapshot (seed {})",
        w.seed
    );
    for &s in &ids {
        assert!(
            cluster.store(s).unwrap().fatal_error().is_none(),
            "store {s} stopped"
        );
    }
    cluster.shutdown();
}
