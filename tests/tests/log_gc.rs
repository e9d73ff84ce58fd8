//! Raft log GC, conservative mode (issue #11 item 2, admin.md phase B):
//! leaders compact their regions' logs to what every peer matched, every
//! replica moves its truncated state and deletes the compacted entries
//! from its engine, and a follower that is down holds the log back (up to
//! the count limit, see `snapshot.rs`), so it catches up from entries (no
//! snapshot) when it returns.

use std::ops::ControlFlow;

use flotilla_engine::{Cf, Engine, keys};
use flotilla_proto::raft_serverpb::{RaftApplyState, RaftLocalState};
use flotilla_raftstore::store::{
    Client, ClientConfig, Cluster, Config, RAFT_INIT_LOG_INDEX, Store,
};
use flotilla_tests::harness::{self, FAST_TICK_MS, eventually, fast_config, logger, wait_leader};

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
    harness::last_index(engine, REGION)
}

fn truncated(store: &Store) -> u64 {
    apply_state(store.engine())
        .truncated_state
        .unwrap_or_default()
        .index
}

/// The region's log as one engine snapshot sees it: truncated index, last
/// index, and the indices of the entries in the engine.
#[derive(Debug)]
struct LogView {
    truncated: u64,
    last: u64,
    indices: Vec<u64>,
}

fn log_view(engine: &Engine) -> LogView {
    let snap = engine.snapshot();
    let apply: RaftApplyState = snap
        .get_msg(Cf::Raft, &keys::apply_state_key(REGION))
        .expect("read apply state")
        .expect("apply state");
    let raft: RaftLocalState = snap
        .get_msg(Cf::Raft, &keys::raft_state_key(REGION))
        .expect("read raft state")
        .expect("raft state");
    let (lo, hi) = keys::raft_log_range(REGION, 0, u64::MAX);
    let mut indices = Vec::new();
    snap.scan(Cf::Raft, &lo, &hi, |k, _| {
        let idx = k.get(k.len() - 8..).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        });
        indices.extend(idx);
        ControlFlow::Continue(())
    })
    .expect("scan log");
    LogView {
        truncated: apply.truncated_state.unwrap_or_default().index,
        last: raft.last_index,
        indices,
    }
}

impl LogView {
    /// Every entry in `(truncated, last]` is in the engine: no entry is
    /// deleted before the apply state that compacted it (admin.md §5.4
    /// invariant 4). Holds at every instant.
    fn assert_complete(&self, store: u64) {
        let kept: Vec<u64> = self
            .indices
            .iter()
            .copied()
            .filter(|&i| i > self.truncated)
            .collect();
        let want: Vec<u64> = (self.truncated + 1..=self.last).collect();
        assert_eq!(kept, want, "store {store}: entries missing from {self:?}");
    }

    /// Nothing at or below the truncated index is left (true once the
    /// deletion that follows each compaction was written).
    fn only_untruncated(&self) -> bool {
        self.indices.first().is_none_or(|&i| i > self.truncated)
    }
}

/// On every store the log is complete now, and soon holds exactly
/// `(truncated, last]`.
fn assert_logs_exact(cluster: &Cluster, ids: &[u64]) {
    for &id in ids {
        let engine = cluster.store(id).unwrap().engine();
        log_view(engine).assert_complete(id);
        assert!(
            eventually(|| {
                let v = log_view(engine);
                v.assert_complete(id);
                v.only_untruncated()
            }),
            "store {id}: compacted entries left: {:?}",
            log_view(engine)
        );
    }
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
    assert_logs_exact(&cluster, &ids);
    assert_all_readable(&client(&cluster), 0..WRITES);

    cluster.restart_all().unwrap();
    wait_leader(&cluster, REGION).expect("leader after restart");
    let c = client(&cluster);
    write(&c, WRITES..WRITES + 20);
    assert_all_readable(&c, 0..WRITES + 20);
    for &id in &ids {
        assert!(cluster.store(id).unwrap().fatal_error().is_none());
    }
    assert_logs_exact(&cluster, &ids);
    cluster.shutdown();
}

/// admin.md scenario 1 (`gc_never_cuts_live_followers`, conservative
/// mode): with one store down and the log below the count limit, the
/// others compact no further than what it had matched, so when it returns
/// it catches up from entries (no snapshot) and serves every key.
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
    let snapshots: u64 = cluster
        .store_ids()
        .iter()
        .map(|&id| {
            cluster
                .store(id)
                .unwrap()
                .metrics()
                .snapshots_sent
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(
        snapshots, 0,
        "a follower that was never cut off got a snapshot"
    );
    cluster.shutdown();
}

/// Entries of the region's log in `engine` (one engine snapshot).
fn log_len(engine: &Engine) -> usize {
    log_view(engine).indices.len()
}

/// #11 "a long-running write test shows the raft log staying bounded":
/// with one follower down for the whole run, the live stores' logs never
/// hold more than the count limit plus what one log-GC period writes
/// (forced GC cuts the down follower off); back, it catches up by a
/// snapshot and holds every key.
#[test]
fn the_log_stays_bounded_with_a_follower_down() {
    const LIMIT: u64 = 60;
    const WRITES: u64 = 600;
    /// Entries written between two log checks at most, with room for a
    /// slow machine: the bound is the limit plus this.
    const MARGIN: usize = 120;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        raft_log_gc_count_limit: LIMIT,
        ..config()
    };
    let mut cluster = Cluster::bootstrap(dir.path(), 3, 1, cfg, &logger()).unwrap();
    let leader = wait_leader(&cluster, REGION).expect("leader");
    let down = *cluster
        .store_ids()
        .iter()
        .find(|&&id| id != leader)
        .expect("a follower");
    cluster.stop_store(down);
    let up: Vec<u64> = cluster
        .store_ids()
        .iter()
        .copied()
        .filter(|&id| id != down)
        .collect();
    let c = client(&cluster);
    let mut longest = 0;
    for chunk in (0..WRITES).collect::<Vec<_>>().chunks(20) {
        write(&c, chunk[0]..chunk[chunk.len() - 1] + 1);
        for &id in &up {
            longest = longest.max(log_len(cluster.store(id).unwrap().engine()));
        }
        assert!(
            longest <= LIMIT as usize + MARGIN,
            "a log of {longest} entries (limit {LIMIT})"
        );
    }
    assert!(longest > 0);
    cluster.start_store(down).unwrap();
    let engine = cluster.store(down).unwrap().engine().clone();
    assert!(
        eventually(|| (0..WRITES).all(|i| engine
            .get(Cf::Default, &keys::data_key(&key(i)))
            .unwrap()
            .is_some())),
        "the returning follower did not catch up"
    );
    assert!(
        cluster
            .store(down)
            .unwrap()
            .metrics()
            .snapshots_received
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "caught up without a snapshot: the log was not cut"
    );
    cluster.shutdown();
}

/// #11 item 7: `Client::compact_log` compacts a region's log on demand
/// (the store's own log GC off): every replica moves its truncated index
/// to the asked one and deletes the entries; a compaction past the
/// applied index is refused typed; the data stays readable.
#[test]
fn client_compact_log_truncates_every_replica() {
    let cfg = Config {
        raft_log_gc_tick_ticks: 0,
        ..config()
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, cfg, &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let client = client(&cluster);
    write(&client, 0..WRITES);
    let store1 = cluster.store(1).unwrap();
    let applied = apply_state(store1.engine()).applied_index;
    assert!(matches!(
        client.compact_log(REGION, applied + 1_000_000),
        Err(flotilla_raftstore::store::Error::Admin(
            flotilla_raftstore::store::AdminError::CompactIndexAhead { .. }
        ))
    ));
    let to = applied - 5;
    client.compact_log(REGION, to).expect("compact");
    for &s in cluster.store_ids() {
        let store = cluster.store(s).unwrap();
        assert!(
            eventually(|| truncated(store) >= to
                && log_view(store.engine()).indices.iter().all(|&i| i > to)),
            "store {s}: {:?}",
            log_view(store.engine())
        );
    }
    assert_all_readable(&client, 0..WRITES);
    cluster.shutdown();
}
