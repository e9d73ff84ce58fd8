//! Fault tests: a leader partitioned into a minority, bad requests, and a
//! concurrent history under a partition and a leader restart checked for
//! linearizability.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use flotilla_engine::WriteOrigin;
use flotilla_proto::raft_cmdpb::RaftCmdRequest;
use flotilla_raftstore::store::{ClientConfig, Cluster, Error};
use flotilla_tests::harness::{FAST_TICK_MS, eventually, fast_config, logger, wait_leader};
use flotilla_tests::linearizability::History;
use flotilla_tests::requests::{command, propose_to, put};
use flotilla_tests::workload::{
    Workload, check_history, history_client, history_seed, spawn_history_clients,
};

fn cluster(dir: &tempfile::TempDir, regions: u64) -> Cluster {
    Cluster::bootstrap(dir.path(), 3, regions, fast_config(FAST_TICK_MS), &logger())
        .expect("bootstrap")
}

fn put_request(
    region: &flotilla_proto::metapb::Region,
    store_id: u64,
    key: &[u8],
    value: &[u8],
) -> RaftCmdRequest {
    command(region, store_id, vec![put(key, value)])
}

/// Sends `req` straight to store `store_id`, waiting up to `wait`.
fn send_direct(
    cluster: &Cluster,
    store_id: u64,
    req: RaftCmdRequest,
    wait: Duration,
) -> Result<(), Error> {
    propose_to(cluster, store_id, req, wait).map(|_| ())
}

/// A leader cut off into a minority cannot acknowledge writes; the majority
/// elects a new leader and keeps serving; after healing no acknowledged
/// write is lost and the old leader's unacknowledged write never appears.
#[test]
fn minority_leader_cannot_acknowledge() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir, 1);
    let old = wait_leader(&cluster, 1).expect("leader");
    let client = cluster.client(ClientConfig {
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    });
    client.put(b"a", b"1").unwrap();
    cluster.transport().isolate(old);
    let region = cluster.regions()[0].clone();
    let res = send_direct(
        &cluster,
        old,
        put_request(&region, old, b"lost", b"x"),
        Duration::from_millis(800),
    );
    assert!(res.is_err(), "isolated leader acknowledged a write");
    // The majority moves on.
    let new = wait_leader(&cluster, 1).expect("majority elects");
    assert_ne!(new, old);
    client.put(b"b", b"2").unwrap();
    cluster.transport().clear_filters();
    assert_eq!(client.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(client.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    cluster.shutdown();
}

/// Bad requests each get their typed error, and the store keeps serving.
#[test]
fn bad_requests_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir, 2);
    let leader = wait_leader(&cluster, 1).expect("leader");
    let region = cluster.regions()[0].clone();
    let wait = Duration::from_secs(2);

    // Unknown region.
    let mut req = put_request(&region, leader, b"k", b"v");
    req.header.as_mut().unwrap().region_id = 999;
    assert_eq!(
        send_direct(&cluster, leader, req, wait),
        Err(Error::RegionNotFound(999))
    );

    // Stale epoch.
    let mut req = put_request(&region, leader, b"k", b"v");
    req.header
        .as_mut()
        .unwrap()
        .region_epoch
        .as_mut()
        .unwrap()
        .version = 0;
    assert!(matches!(
        send_direct(&cluster, leader, req, wait),
        Err(Error::EpochNotMatch { .. })
    ));

    // A key of region 2 sent to region 1.
    let outside = cluster.regions()[1].start_key.to_vec();
    let req = put_request(&region, leader, &outside, b"v");
    assert!(matches!(
        send_direct(&cluster, leader, req, wait),
        Err(Error::KeyNotInRegion { .. })
    ));

    // A peer on another store.
    let mut req = put_request(&region, leader, b"k", b"v");
    req.header.as_mut().unwrap().peer.as_mut().unwrap().store_id = 77;
    assert!(matches!(
        send_direct(&cluster, leader, req, wait),
        Err(Error::StoreNotMatch {
            request_store_id: 77,
            ..
        })
    ));

    // No header, and no requests.
    let mut req = put_request(&region, leader, b"k", b"v");
    req.header = None;
    assert!(matches!(
        send_direct(&cluster, leader, req, wait),
        Err(Error::InvalidRequest(_))
    ));
    let mut req = put_request(&region, leader, b"k", b"v");
    req.requests.clear();
    assert!(matches!(
        send_direct(&cluster, leader, req, wait),
        Err(Error::InvalidRequest(_))
    ));

    // An entry over the size limit.
    let big = vec![0u8; (flotilla_raftstore::store::Config::default().entry_max_size + 1) as usize];
    let req = put_request(&region, leader, b"k", &big);
    assert!(matches!(
        send_direct(&cluster, leader, req, wait),
        Err(Error::EntryTooLarge { .. })
    ));

    // And it still serves.
    let req = put_request(&region, leader, b"k", b"v");
    assert_eq!(send_direct(&cluster, leader, req, wait), Ok(()));
    cluster.shutdown();
}

/// The concurrent-history tests' workload, `pause` between operations.
fn workload(pause: Duration) -> Workload {
    Workload {
        clients: 4,
        keys: 3,
        ops_per_client: 60,
        pause,
        seed: history_seed(7),
    }
}

/// Operations a history test must complete at least.
const MIN_OPS: usize = 40;

/// Several clients do random puts and gets on a few keys while the leader
/// is partitioned away and later restarted; the recorded history must be
/// linearizable per key.
#[test]
fn concurrent_history_is_linearizable_under_faults() {
    let w = workload(Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir, 1);
    let leader = wait_leader(&cluster, 1).expect("leader");
    let history: Arc<History<u64, u64>> = Arc::new(History::new());
    let workers = spawn_history_clients(&history_client(&cluster), &history, w);
    thread::sleep(Duration::from_millis(300));
    cluster.transport().isolate(leader);
    thread::sleep(Duration::from_millis(600));
    cluster.transport().clear_filters();
    let second = wait_leader(&cluster, 1).expect("leader after heal");
    cluster.stop_store(second);
    thread::sleep(Duration::from_millis(400));
    cluster.start_store(second).unwrap();
    check_history(workers, &history, w.seed, MIN_OPS);
    cluster.shutdown();
}

/// The same concurrent history while engine writes fail: the leader's raft
/// log write fails (its store stops, in-flight writes are outcome unknown),
/// it is restarted from disk, then the next leader's apply write fails and
/// it is restarted too. Every acknowledged write must stay, nothing failed
/// may appear: the history must be linearizable per key.
#[test]
fn concurrent_history_is_linearizable_through_fatal_stops() {
    let w = workload(Duration::from_millis(15));
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir, 1);
    wait_leader(&cluster, 1).expect("leader");
    let history: Arc<History<u64, u64>> = Arc::new(History::new());
    let client = history_client(&cluster);
    // Paced, so the history spans both faults and restarts.
    let workers = spawn_history_clients(&client, &history, w);
    for origin in [WriteOrigin::RaftLog, WriteOrigin::Apply] {
        thread::sleep(Duration::from_millis(200));
        let leader = wait_leader(&cluster, 1).expect("leader");
        cluster
            .store(leader)
            .unwrap()
            .engine()
            .inject_write_faults(origin, 1);
        // The next write of that kind on the leader fails and stops it:
        // the clients' writes, or this one to a key outside the history.
        assert!(
            eventually(|| {
                let _ = client.put(b"outside-history", b"x");
                cluster.store(leader).unwrap().fatal_error().is_some()
            }),
            "{origin:?} fault never hit the leader"
        );
        thread::sleep(Duration::from_millis(200));
        cluster.stop_store(leader);
        cluster.start_store(leader).unwrap();
    }
    check_history(workers, &history, w.seed, MIN_OPS);
    cluster.shutdown();
}
