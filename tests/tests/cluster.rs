//! Cluster tests: stores on real RocksDB in temp dirs, in one process over
//! the channel transport.

use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_engine::{Cf, keys};
use flotilla_raftstore::store::{ClientConfig, Cluster, Config, bootstrap::split_key};
use flotilla_tests::harness::{FAST_TICK_MS, SETTLE, eventually, fast_config, logger, wait_leader};

fn cluster(dir: &tempfile::TempDir, regions: u64, tick_ms: u64) -> Cluster {
    Cluster::bootstrap(dir.path(), 3, regions, fast_config(tick_ms), &logger()).expect("bootstrap")
}

fn client_cfg() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    }
}

/// A key inside region `i + 1` of `n` (regions split the 8-byte space).
fn key_in(i: u64, n: u64, suffix: &str) -> Vec<u8> {
    let mut k = split_key(i, n);
    k.extend_from_slice(suffix.as_bytes());
    k
}

/// 3 stores, 1 region: a leader is elected; a write through the client is
/// readable through it and lands in every store's RocksDB.
#[test]
fn one_region_write_read_and_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir, 1, FAST_TICK_MS);
    assert!(wait_leader(&cluster, 1).is_some(), "no leader elected");
    let client = cluster.client(client_cfg());
    client.put(b"hello", b"world").unwrap();
    assert_eq!(
        client.get(b"hello").unwrap().as_deref(),
        Some(&b"world"[..])
    );
    assert_eq!(client.get(b"absent").unwrap(), None);
    for &id in cluster.store_ids() {
        let engine = cluster.store(id).unwrap().engine().clone();
        assert!(
            eventually(|| engine
                .get(Cf::Default, &keys::data_key(b"hello"))
                .unwrap()
                .is_some()),
            "store {id} never applied the write"
        );
    }
    client.delete(b"hello").unwrap();
    assert_eq!(client.get(b"hello").unwrap(), None);
    cluster.shutdown();
}

/// 3 stores, 1,000 regions: every region elects a leader and serves a write
/// and a read of its own key; a scan crosses region boundaries in order.
#[test]
fn thousand_regions_all_elect_and_serve() {
    const REGIONS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir, REGIONS, 50);
    assert!(
        cluster.wait_for_leaders(REGIONS, SETTLE * 2),
        "only {} of {REGIONS} regions have a leader",
        cluster.leader_count()
    );
    let client = cluster.client(client_cfg());
    for i in 0..REGIONS {
        client
            .put(&key_in(i, REGIONS, "k"), format!("v{i}").as_bytes())
            .unwrap();
    }
    for i in (0..REGIONS).step_by(97) {
        assert_eq!(
            client.get(&key_in(i, REGIONS, "k")).unwrap(),
            Some(format!("v{i}").into_bytes())
        );
    }
    let all = client.scan(b"", b"", usize::MAX).unwrap();
    assert_eq!(all.len() as u64, REGIONS);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "scan out of order");
    let some = client
        .scan(&key_in(10, REGIONS, ""), &key_in(20, REGIONS, ""), 5)
        .unwrap();
    assert_eq!(some.len(), 5);
    assert_eq!(some[0].0, key_in(10, REGIONS, "k"));
    cluster.shutdown();
}

/// Stopping the store that leads a region: the region re-elects and writes
/// continue; the restarted store catches up on what it missed.
#[test]
fn leader_stop_reelects_and_restart_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir, 4, FAST_TICK_MS);
    let leader = wait_leader(&cluster, 1).expect("leader");
    let client = cluster.client(client_cfg());
    client.put(&key_in(0, 4, "before"), b"1").unwrap();
    assert!(cluster.stop_store(leader));
    for i in 0..20 {
        client
            .put(&key_in(0, 4, &format!("during{i}")), b"2")
            .unwrap();
    }
    let new_leader = wait_leader(&cluster, 1).expect("re-elected");
    assert_ne!(new_leader, leader);
    cluster.start_store(leader).unwrap();
    let engine = cluster.store(leader).unwrap().engine().clone();
    for i in 0..20 {
        let key = keys::data_key(&key_in(0, 4, &format!("during{i}")));
        assert!(
            eventually(|| engine.get(Cf::Default, &key).unwrap().is_some()),
            "restarted store {leader} never caught up on key {i}"
        );
    }
    cluster.shutdown();
}

/// Every acknowledged write survives a restart of the whole cluster.
#[test]
fn whole_cluster_restart_keeps_acknowledged_writes() {
    const REGIONS: u64 = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir, REGIONS, FAST_TICK_MS);
    let client = cluster.client(client_cfg());
    let mut acked = Vec::new();
    for i in 0..200u64 {
        let key = key_in(i % REGIONS, REGIONS, &format!("k{i}"));
        client.put(&key, &i.to_be_bytes()).unwrap();
        acked.push((key, i));
    }
    drop(client);
    cluster.restart_all().unwrap();
    let client = cluster.client(client_cfg());
    for (key, i) in &acked {
        assert_eq!(
            client.get(key).unwrap(),
            Some(i.to_be_bytes().to_vec()),
            "lost {key:?}"
        );
    }
    cluster.shutdown();
}

/// Bad input to `Cluster::add_store`: an id that cannot prefix the ids a
/// store allocates (0, or past 2^24) is refused with `Error::Config`
/// before anything is written, and the cluster does not list it (it used
/// to bootstrap a directory for it, list it, then fail to start it); an id
/// the cluster has is refused too. A good id still joins.
#[test]
fn add_store_refuses_bad_ids_and_lists_only_started_stores() {
    use flotilla_raftstore::store::{Error, ID_COUNTER_BITS};
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(&dir, 1, FAST_TICK_MS);
    let too_large = 1u64 << (u64::BITS - ID_COUNTER_BITS);
    for id in [0, too_large, 1] {
        assert!(
            matches!(c.add_store(id), Err(Error::Config(_))),
            "store id {id}"
        );
    }
    assert_eq!(c.store_ids(), &[1, 2, 3]);
    c.add_store(4).expect("a good id");
    assert_eq!(c.store_ids(), &[1, 2, 3, 4]);
    assert!(c.store(4).is_some());
    c.shutdown();
}

/// Bad input: a bootstrap of more stores or regions than any cluster can
/// have is refused with `Error::Config` before anything is allocated or
/// written (a store count of `usize::MAX` used to overflow while listing
/// the ids, a region count of `u64::MAX` to exhaust memory).
#[test]
fn bootstraps_past_the_bounds_are_refused_before_allocating() {
    use flotilla_raftstore::store::Error;
    use flotilla_raftstore::store::bootstrap::{MAX_INITIAL_REGIONS, initial_regions};
    let dir = tempfile::tempdir().unwrap();
    let cfg = fast_config(FAST_TICK_MS);
    for (stores, regions) in [(usize::MAX, 1), (3, u64::MAX), (3, MAX_INITIAL_REGIONS + 1)] {
        assert!(
            matches!(
                Cluster::bootstrap(dir.path(), stores, regions, cfg.clone(), &logger()),
                Err(Error::Config(_))
            ),
            "{stores} stores, {regions} regions"
        );
    }
    assert!(matches!(
        initial_regions(&[1, 2, 3], u64::MAX),
        Err(Error::Config(_))
    ));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a refused bootstrap wrote a store directory"
    );
}

/// Bad input: client timeouts and a backoff cap too long for the clock
/// (`Duration::MAX`) mean "wait as long as it takes", not a panic adding
/// them to `Instant::now()`.
#[test]
fn a_client_with_extreme_timeouts_serves() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster(&dir, 2, FAST_TICK_MS);
    let client = c.client(ClientConfig {
        operation_timeout: Duration::MAX,
        request_timeout: Duration::MAX,
        max_backoff: Duration::MAX,
        ..ClientConfig::default()
    });
    client.put(b"forever", b"v").expect("put");
    assert_eq!(client.get(b"forever").unwrap().as_deref(), Some(&b"v"[..]));
    let pairs = client.scan(b"", b"", 10).expect("scan");
    assert_eq!(pairs, vec![(b"forever".to_vec(), b"v".to_vec())]);
    let regions = c.regions().to_vec();
    let merged = client.merge(regions[1].id, regions[0].id).expect("merge");
    assert!(merged.start_key.is_empty() && merged.end_key.is_empty());
    assert!(c.wait_for_leaders(1, Duration::MAX));
    c.shutdown();
}

/// Committed entries apply in the raft poller that committed them when the
/// region's apply delegate is idle (`Config::apply_inline`), and through
/// the apply pool otherwise: the same writes, before and after a split
/// (whose admin result reaches the peer by message), read back the same
/// and land on every store either way. Only the inline run counts inline
/// applies, and it counts them on every store (followers apply inline
/// too).
#[test]
fn writes_apply_inline_or_through_the_apply_pool_alike() {
    const REGIONS: u64 = 4;
    const WRITES: u64 = 40;
    for inline in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            apply_inline: inline,
            ..fast_config(FAST_TICK_MS)
        };
        let cluster =
            Cluster::bootstrap(dir.path(), 3, REGIONS, cfg, &logger()).expect("bootstrap");
        assert!(cluster.wait_for_leaders(REGIONS, SETTLE), "no leaders");
        let client = cluster.client(client_cfg());
        let key = |i: u64| key_in(i % REGIONS, REGIONS, &format!("k{i:03}"));
        let value = |i: u64| format!("v{i}").into_bytes();
        for i in 0..WRITES {
            client.put(&key(i), &value(i)).unwrap();
        }
        let born = client.split_at(&key(WRITES + 1)).expect("split");
        assert_eq!(born.len(), 2, "the split made two regions: {born:?}");
        for i in WRITES..2 * WRITES {
            client.put(&key(i), &value(i)).unwrap();
        }
        for i in 0..2 * WRITES {
            assert_eq!(client.get(&key(i)).unwrap(), Some(value(i)), "key {i}");
        }
        for &id in cluster.store_ids() {
            let store = cluster.store(id).unwrap();
            let engine = store.engine().clone();
            assert!(
                eventually(|| (0..2 * WRITES).all(|i| engine
                    .get(Cf::Default, &keys::data_key(&key(i)))
                    .unwrap()
                    .is_some_and(|v| v == value(i)))),
                "store {id} (inline {inline}) is missing writes"
            );
            let applied_inline = store.metrics().applies_inline.load(Ordering::Relaxed);
            assert_eq!(
                applied_inline > 0,
                inline,
                "store {id}: {applied_inline} inline applies with apply_inline {inline}"
            );
        }
        cluster.shutdown();
    }
}
