//! Fault tests: a leader partitioned into a minority, bad requests, and a
//! concurrent history under a partition and a leader restart checked for
//! linearizability.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use flotilla_proto::raft_cmdpb::RaftCmdRequest;
use flotilla_raftstore::store::{ClientConfig, Cluster, Error};
use flotilla_tests::harness::{FAST_TICK_MS, fast_config, is_unknown_outcome, logger, wait_leader};
use flotilla_tests::linearizability::{History, check};
use flotilla_tests::requests::{command, propose_to, put};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

/// Several clients do random puts and gets on a few keys while the leader
/// is partitioned away and later restarted; the recorded history must be
/// linearizable per key.
#[test]
fn concurrent_history_is_linearizable_under_faults() {
    const CLIENTS: usize = 4;
    const KEYS: u64 = 3;
    const OPS_PER_CLIENT: usize = 60;
    let seed: u64 = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir, 1);
    let leader = wait_leader(&cluster, 1).expect("leader");
    let history: Arc<History<u64, u64>> = Arc::new(History::new());
    let client = Arc::new(cluster.client(ClientConfig {
        request_timeout: Duration::from_millis(500),
        max_attempts: 10,
        ..Default::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (history, client, stop) = (history.clone(), client.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ c as u64);
                for n in 0..OPS_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = rng.random_range(0..KEYS);
                    let kb = key.to_be_bytes();
                    if rng.random_bool(0.5) {
                        let value = (c * OPS_PER_CLIENT + n) as u64 + 1;
                        let id = history.invoke_write(c, key, value);
                        match client.put(&kb, &value.to_be_bytes()) {
                            Ok(()) => history.complete_write(id),
                            Err(e) if is_unknown_outcome(&e) => {} // stays pending
                            Err(_) => history.fail(id),
                        }
                    } else {
                        let id = history.invoke_read(c, key);
                        match client.get(&kb) {
                            Ok(v) => history.complete_read(
                                id,
                                v.map(|b| u64::from_be_bytes(b.try_into().expect("8-byte value"))),
                            ),
                            Err(_) => history.fail(id),
                        }
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    cluster.transport().isolate(leader);
    thread::sleep(Duration::from_millis(600));
    cluster.transport().clear_filters();
    let second = wait_leader(&cluster, 1).expect("leader after heal");
    cluster.stop_store(second);
    thread::sleep(Duration::from_millis(400));
    cluster.start_store(second).unwrap();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let ops = history.operations();
    assert!(
        ops.len() > CLIENTS * 10,
        "too few operations completed: {}",
        ops.len()
    );
    if let Err(v) = check(&ops) {
        panic!("history not linearizable (seed {seed}): {v}");
    }
    cluster.shutdown();
}
