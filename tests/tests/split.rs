//! BatchSplit (issue #12 item 1, admin.md §1.1 and scenarios 15-18): a
//! split divides a region on every store, its new regions elect leaders
//! and serve, a client with a cache from before the split follows it, the
//! split survives restarts, reaches a store that was partitioned away
//! during it, and bad split keys are refused typed. A concurrent history
//! across splits is linearizable.

use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_proto::metapb::Region;
use flotilla_proto::raft_serverpb::PeerState;
use flotilla_raftstore::store::{AdminError, ClientConfig, Cluster, Config, Error, SplitKeyFault};
use flotilla_tests::harness::{
    FAST_TICK_MS, eventually, fast_config, logger, region_state, wait_leader,
};
use flotilla_tests::tagged::Tagged;

/// The bootstrapped region.
const REGION: u64 = 1;
/// Keys written before each split.
const KEYS: u64 = 60;
/// Failure guard for one inspection.
const ANSWER: Duration = Duration::from_secs(10);

fn config() -> Config {
    fast_config(FAST_TICK_MS)
}

/// This file's keys.
const DATA: Tagged = Tagged("sp");

/// The store whose peer of `region_id` says it leads (by inspection).
fn leader_of(cluster: &Cluster, region_id: u64) -> Option<u64> {
    cluster.store_ids().iter().copied().find(|&s| {
        cluster
            .store(s)
            .and_then(|st| st.handle().region_status(region_id, ANSWER).ok())
            .is_some_and(|st| st.leader == Some(st.peer))
    })
}

/// Whether every running store hosts exactly `regions` (by id and range)
/// in its engine, `Normal`.
fn stores_hold(cluster: &Cluster, regions: &[Region]) -> bool {
    cluster.store_ids().iter().all(|&s| {
        let Some(store) = cluster.store(s) else {
            return true;
        };
        store.region_count() == regions.len()
            && regions.iter().all(|r| {
                region_state(store.engine(), r.id).is_some_and(|st| {
                    st.state() == PeerState::Normal
                        && st
                            .region
                            .as_ref()
                            .is_some_and(|x| x.start_key == r.start_key && x.end_key == r.end_key)
                })
            })
    })
}

/// admin.md scenario 15: a split at one key makes two regions on every
/// store, tiling the old range with `version` bumped; the new region
/// elects a leader; a client whose cache predates the split reads every
/// key and writes both halves (it learns the new regions from
/// `EpochNotMatch` and the stores); each store holds the data.
#[test]
fn split_divides_the_region_on_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let admin = cluster.client(ClientConfig::default());
    let stale = cluster.client(ClientConfig::default());
    DATA.write(&admin, 0..KEYS, 1);

    let regions = admin.split_at(&DATA.key(KEYS / 2)).expect("split");
    assert_eq!(regions.len(), 2, "{regions:?}");
    let (left, right) = (&regions[0], &regions[1]);
    assert_eq!(left.id, REGION);
    assert_eq!(&left.end_key[..], &DATA.key(KEYS / 2)[..]);
    assert_eq!(right.start_key, left.end_key);
    assert!(right.end_key.is_empty());
    assert_eq!(left.region_epoch.unwrap().version, 2);
    assert_eq!(right.region_epoch, left.region_epoch);
    assert_ne!(right.id, REGION);
    assert!(
        eventually(|| stores_hold(&cluster, &regions)),
        "the stores did not all split"
    );
    assert!(
        eventually(|| leader_of(&cluster, right.id).is_some()),
        "the new region elected no leader"
    );

    // A client that knew only the old region follows the split.
    DATA.assert_reads(&stale, 0..KEYS, 1);
    DATA.write(&stale, 0..KEYS, 2);
    DATA.assert_reads(&admin, 0..KEYS, 2);
    assert_eq!(stale.locate(&DATA.key(KEYS - 1)).unwrap().id, right.id);
    for &s in cluster.store_ids() {
        let store = cluster.store(s).unwrap();
        assert!(
            eventually(|| DATA.holds(store.engine(), 0..KEYS, 2)),
            "store {s} lacks data"
        );
        assert!(store.fatal_error().is_none());
        assert!(store.metrics().peers_created.load(Ordering::Relaxed) >= 1);
    }
    cluster.shutdown();
}

/// admin.md scenario 16: several keys at once; then the split regions,
/// their data and their leaders survive a restart of every store.
#[test]
fn batch_split_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let admin = cluster.client(ClientConfig::default());
    DATA.write(&admin, 0..KEYS, 1);
    let (k1, k2, k3) = (DATA.key(10), DATA.key(20), DATA.key(40));
    let regions = admin
        .split(REGION, &[&k1[..], &k2[..], &k3[..]])
        .expect("split");
    assert_eq!(regions.len(), 4);
    for w in regions.windows(2) {
        assert_eq!(w[0].end_key, w[1].start_key);
    }
    assert!(regions.iter().all(|r| r.region_epoch.unwrap().version == 4));
    assert!(eventually(|| stores_hold(&cluster, &regions)));
    DATA.write(&admin, 0..KEYS, 2);

    for s in cluster.store_ids().to_vec() {
        cluster.stop_store(s);
    }
    for s in cluster.store_ids().to_vec() {
        cluster.start_store(s).unwrap();
    }
    assert!(eventually(|| stores_hold(&cluster, &regions)));
    let fresh = cluster.client(ClientConfig::default());
    for r in &regions {
        assert!(
            eventually(|| leader_of(&cluster, r.id).is_some()),
            "region {} has no leader after the restart",
            r.id
        );
    }
    DATA.assert_reads(&fresh, 0..KEYS, 2);
    cluster.shutdown();
}

/// admin.md scenario 17: a store partitioned away while the region
/// splits and both halves take writes catches up after the heal (by the
/// log or by snapshots): it hosts both regions with all the data.
#[test]
fn split_reaches_a_store_partitioned_during_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    let leader = wait_leader(&cluster, REGION).expect("leader");
    let admin = cluster.client(ClientConfig::default());
    DATA.write(&admin, 0..KEYS, 1);
    let away = *cluster
        .store_ids()
        .iter()
        .find(|&&s| s != leader)
        .expect("a follower");
    let filter = cluster.transport().isolate(away);
    let regions = admin.split_at(&DATA.key(KEYS / 3)).expect("split");
    DATA.write(&admin, 0..KEYS, 2);
    let store = cluster.store(away).unwrap();
    assert_eq!(store.region_count(), 1, "split without hearing of it");
    cluster.transport().remove_filter(filter);
    assert!(
        eventually(|| stores_hold(&cluster, &regions)),
        "the partitioned store did not catch up: {:?}",
        regions
            .iter()
            .map(|r| region_state(store.engine(), r.id))
            .collect::<Vec<_>>()
    );
    assert!(
        eventually(|| DATA.holds(store.engine(), 0..KEYS, 2)),
        "the partitioned store lacks data"
    );
    assert!(store.fatal_error().is_none());
    cluster.shutdown();
}

/// admin.md §5.3: every bad split is refused with its own typed error
/// and changes nothing; a split while another is unapplied cannot be
/// built from the client (one at a time is checked by unit tests).
#[test]
fn bad_splits_are_refused_typed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::bootstrap(dir.path(), 3, 2, config(), &logger()).unwrap();
    for r in cluster.regions().to_vec() {
        wait_leader(&cluster, r.id).expect("leader");
    }
    let client = cluster.client(ClientConfig::default());
    let first = cluster.regions()[0].clone();
    let second_start = cluster.regions()[1].start_key.to_vec();
    let invalid = |keys: &[&[u8]]| match client.split(first.id, keys) {
        Err(Error::Admin(AdminError::SplitKeyInvalid { fault, .. })) => fault,
        other => panic!("not refused as an invalid key: {other:?}"),
    };
    assert_eq!(invalid(&[&second_start[..]]), SplitKeyFault::OutOfRange);
    assert_eq!(invalid(&[b""]), SplitKeyFault::OutOfRange);
    assert_eq!(invalid(&[b"b", b"a"]), SplitKeyFault::NotAscending);
    assert_eq!(invalid(&[b"a", b"a"]), SplitKeyFault::NotAscending);
    assert_eq!(
        client
            .split(cluster.regions()[1].id, &[&second_start[..]])
            .map(|_| ()),
        Err(Error::Admin(AdminError::SplitKeyInvalid {
            key: second_start.clone(),
            fault: SplitKeyFault::RegionStart,
        }))
    );
    assert_eq!(
        client.split(first.id, &[]).map(|_| ()),
        Err(Error::Admin(AdminError::NoSplitKeys))
    );
    let many: Vec<Vec<u8>> = (0..=Config::default().split_max_keys)
        .map(|i| format!("k{i:03}").into_bytes())
        .collect();
    let many: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    assert!(matches!(
        client.split(first.id, &many),
        Err(Error::Admin(AdminError::TooManySplitKeys { .. }))
    ));
    assert!(matches!(
        client.split(9_999, &[b"a"]),
        Err(Error::RegionNotFound(9_999))
    ));
    let huge = vec![b'k'; Config::default().max_key_size + 1];
    assert!(matches!(
        client.split(first.id, &[&huge[..]]),
        Err(Error::InvalidRequest(_))
    ));
    for &s in cluster.store_ids() {
        assert_eq!(cluster.store(s).unwrap().region_count(), 2, "store {s}");
    }
    cluster.shutdown();
}

/// admin.md scenario 28, the split part: clients read and write a few
/// keys while a driver splits their region three times (each split at a
/// key between the clients' keys, on whichever store leads). The history
/// is linearizable and every store holds the same data. `SIM_SEED`
/// replays a seed.
#[test]
fn history_is_linearizable_across_splits() {
    use flotilla_tests::linearizability::History;
    use flotilla_tests::workload::{
        Workload, check_history, history_client, history_seed, spawn_history_clients, stored_values,
    };
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let w = Workload {
        clients: 4,
        keys: 8,
        ops_per_client: 120,
        pause: Duration::from_millis(4),
        seed: history_seed(28),
    };
    let history = Arc::new(History::new());
    let workers = spawn_history_clients(&history_client(&cluster), &history, w);
    let admin = cluster.client(ClientConfig::default());
    for at in [4u64, 2, 6] {
        std::thread::sleep(Duration::from_millis(150));
        let split_key = at.to_be_bytes();
        let mut tries = 0;
        loop {
            match admin.split_at(&split_key) {
                Ok(_) => break,
                Err(e) if tries < 20 && e.is_retryable() => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("split at {at} failed (seed {}): {e:?}", w.seed),
            }
        }
    }
    check_history(workers, &history, w.seed, 100);
    let data = |s: u64| stored_values(&cluster, s, w.keys);
    assert!(
        eventually(|| cluster.store_ids().iter().all(|&s| data(s) == data(1))),
        "stores disagree (seed {})",
        w.seed
    );
    for &s in cluster.store_ids() {
        let store = cluster.store(s).unwrap();
        assert!(store.fatal_error().is_none(), "store {s} stopped");
        assert!(
            eventually(|| store.region_count() == 4),
            "store {s} has {} regions",
            store.region_count()
        );
    }
    cluster.shutdown();
}

/// Issue #12 item 2: with a small split size, the split checker of a
/// region that keeps taking writes splits it (at middle keys, more than
/// once), every store follows, and every key stays readable.
#[test]
fn split_checker_splits_a_growing_region() {
    const VALUE: usize = 1024;
    const WRITES: u64 = 400;
    let cfg = Config {
        split_check_ticks: 5,
        region_split_size: 64 << 10,
        ..config()
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, cfg, &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let client = cluster.client(ClientConfig::default());
    for i in 0..WRITES {
        client.put(&DATA.key(i), &[i as u8; VALUE]).expect("put");
    }
    // ~400 KiB past a 64 KiB split size: the checker splits until every
    // region is under it (at least 4 regions).
    let count = |s: u64| cluster.store(s).map_or(0, |st| st.region_count());
    assert!(
        eventually(|| cluster.store_ids().iter().all(|&s| count(s) >= 4)),
        "regions: {:?}",
        cluster
            .store_ids()
            .iter()
            .map(|&s| count(s))
            .collect::<Vec<_>>()
    );
    let proposed: u64 = cluster
        .store_ids()
        .iter()
        .map(|&s| {
            cluster
                .store(s)
                .unwrap()
                .metrics()
                .splits_proposed
                .load(Ordering::Relaxed)
        })
        .sum();
    assert!(proposed >= 3, "the checker proposed {proposed} splits");
    for i in 0..WRITES {
        assert_eq!(
            client.get(&DATA.key(i)).expect("get").as_deref(),
            Some(&[i as u8; VALUE][..]),
            "key {i}"
        );
    }
    cluster.shutdown();
}

/// Bad input through `StoreHandle::propose`: a raw BatchSplit naming its
/// own ids (the parent's id for the new region, one peer id for every
/// peer) and one with far more keys than allowed. The leader replaces the
/// ids with ones it allocates (a one-voter group per store, or a region
/// id clash, would split-brain or orphan the range), and refuses the
/// oversized one typed without allocating ids for it.
#[test]
fn client_chosen_split_ids_are_replaced() {
    use flotilla_proto::raft_cmdpb::{
        AdminRequest, BatchSplitRequest, SplitRequest, admin_request, admin_response,
    };
    use flotilla_tests::requests::{command, propose_to};

    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    let leader = wait_leader(&cluster, REGION).expect("leader");
    let region = cluster.regions()[0].clone();
    let split = |keys: Vec<Vec<u8>>| {
        let mut req = command(&region, leader, Vec::new());
        req.admin_request = Some(AdminRequest {
            cmd: Some(admin_request::Cmd::BatchSplit(BatchSplitRequest {
                requests: keys
                    .into_iter()
                    .map(|k| SplitRequest {
                        split_key: k.into(),
                        new_region_id: REGION,
                        new_peer_ids: vec![7, 7, 7],
                    })
                    .collect(),
                right_derive: false,
            })),
        });
        propose_to(&cluster, leader, req, ANSWER)
    };
    let too_many = (0..100_000u32)
        .map(|i| format!("k{i:06}").into_bytes())
        .collect();
    assert!(matches!(
        split(too_many),
        Err(Error::Admin(AdminError::TooManySplitKeys { .. }))
    ));
    let resp = split(vec![DATA.key(30)]).expect("split");
    let Some(admin_response::Cmd::BatchSplit(r)) = resp.admin_response.and_then(|a| a.cmd) else {
        panic!("no split response");
    };
    assert_eq!(r.regions.len(), 2);
    let new = r
        .regions
        .iter()
        .find(|x| x.id != REGION)
        .expect("a new region");
    let mut ids: Vec<u64> = new.peers.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "peer ids not distinct: {new:?}");
    assert!(!ids.contains(&7));
    assert!(eventually(|| stores_hold(&cluster, &r.regions)));
    assert!(
        eventually(|| leader_of(&cluster, new.id).is_some()),
        "the new region elected no leader"
    );
    cluster.shutdown();
}
