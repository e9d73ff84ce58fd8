//! The store keeps its promises under faults (issue #9): a failed engine
//! write stops the store loudly and loses nothing acknowledged, a panicking
//! callback kills no poller, a single voter persists its commit index, votes
//! are synced even with `sync_log = false`, a lease-reading leader never
//! serves a read its successor's write should be in, and a client's
//! operation has one deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use flotilla_engine::{Cf, WriteOrigin, keys};
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{RaftCmdRequest, response};
use flotilla_proto::raft_serverpb::{RaftApplyState, RaftLocalState};
use flotilla_raftstore::store::{
    Client, ClientConfig, Cluster, Config, Error, callback_panics, response_error,
};
use flotilla_tests::harness::{
    FAST_TICK_MS, busiest_leader, eventually, fast_config, leaders, logger, wait_leader,
};
use flotilla_tests::requests::{command, get, propose_to, put};

fn client_cfg() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

fn put_req(region: &Region, store_id: u64, key: &[u8], value: &[u8]) -> RaftCmdRequest {
    command(region, store_id, vec![put(key, value)])
}

fn get_req(region: &Region, store_id: u64, key: &[u8]) -> RaftCmdRequest {
    command(region, store_id, vec![get(key)])
}

/// Proposes `req` at store `store_id` and waits up to `wait` for the answer.
fn propose(
    cluster: &Cluster,
    store_id: u64,
    req: RaftCmdRequest,
    wait: Duration,
) -> Result<Vec<flotilla_proto::raft_cmdpb::Response>, Error> {
    propose_to(cluster, store_id, req, wait).map(|r| r.responses)
}

/// The value a store's engine holds for `key` (bypassing raft).
fn engine_value(cluster: &Cluster, store_id: u64, key: &[u8]) -> Option<Vec<u8>> {
    cluster
        .store(store_id)?
        .engine()
        .get(Cf::Default, &keys::data_key(key))
        .ok()?
}

/// A 3-store, 1-region cluster holding `before = 1`, whose leader's next
/// write of `origin` will fail.
fn leader_with_fault(
    dir: &tempfile::TempDir,
    origin: WriteOrigin,
) -> (Cluster, u64, Client, Region) {
    leader_with_fault_in(dir, origin, fast_config(FAST_TICK_MS))
}

fn leader_with_fault_in(
    dir: &tempfile::TempDir,
    origin: WriteOrigin,
    cfg: Config,
) -> (Cluster, u64, Client, Region) {
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, cfg, &logger()).unwrap();
    let leader = wait_leader(&cluster, 1).expect("leader");
    let client = Client::new(cluster.stores(), cluster.regions(), client_cfg());
    client.put(b"before", b"1").unwrap();
    let region = cluster.regions()[0].clone();
    cluster
        .store(leader)
        .unwrap()
        .engine()
        .inject_write_faults(origin, 1);
    (cluster, leader, client, region)
}

/// A failed raft-log write stops the store at once (typed fatal error, every
/// later command `StoreStopped`), the writer hears "outcome unknown", the
/// other stores go on, and after a restart nothing acknowledged is lost.
/// (On b7200a8 the poller thread panicked and left a zombie store.)
#[test]
fn raft_log_write_failure_stops_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client, region) = leader_with_fault(&dir, WriteOrigin::RaftLog);
    let res = propose(
        &cluster,
        leader,
        put_req(&region, leader, b"doomed", b"x"),
        Duration::from_secs(10),
    );
    let err = res.expect_err("a write whose raft write failed was acknowledged");
    assert!(
        err.is_outcome_unknown(),
        "{err:?} reported as a definite failure"
    );
    let fatal = cluster.store(leader).unwrap().fatal_error();
    assert!(
        matches!(fatal, Some(Error::Engine(_))),
        "no fatal error: {fatal:?}"
    );
    assert!(cluster.store(leader).unwrap().handle().is_stopped());
    let leaders = cluster
        .store(leader)
        .unwrap()
        .metrics()
        .leaders
        .load(Ordering::Relaxed);
    assert_eq!(leaders, 0, "a stopped store still counts leaders");
    assert_eq!(
        propose(
            &cluster,
            leader,
            get_req(&region, leader, b"before"),
            Duration::from_secs(5)
        ),
        Err(Error::StoreStopped { in_flight: false })
    );

    // The others elect a leader and serve; the client finds it.
    client.put(b"after", b"2").unwrap();
    assert_eq!(client.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));

    // Restart from disk: the store catches up and serves again.
    cluster.stop_store(leader);
    cluster.start_store(leader).unwrap();
    assert!(cluster.store(leader).unwrap().fatal_error().is_none());
    assert!(eventually(
        || engine_value(&cluster, leader, b"after").is_some()
    ));
    assert_eq!(client.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(client.get(b"after").unwrap().as_deref(), Some(&b"2"[..]));
    cluster.shutdown();
}

/// A failed apply write stops the store; the writer hears `ApplyFailed`
/// (outcome unknown, never a definite failure); the entry is committed, so
/// it is readable from the other stores and re-applied on the failed one
/// when it restarts. (On b7200a8 the in-memory applied index moved on and
/// the next round persisted it: the replica skipped the entry for good,
/// and the client was told the write failed.) The same whether the raft
/// poller applied the entry itself (`Config::apply_inline`) or the apply
/// pool did.
#[test]
fn apply_write_failure_stops_the_store_and_loses_nothing() {
    for apply_inline in [true, false] {
        apply_write_failure_case(Config {
            apply_inline,
            ..fast_config(FAST_TICK_MS)
        });
    }
}

fn apply_write_failure_case(cfg: Config) {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client, region) = leader_with_fault_in(&dir, WriteOrigin::Apply, cfg);
    let err = propose(
        &cluster,
        leader,
        put_req(&region, leader, b"k", b"committed"),
        Duration::from_secs(10),
    )
    .expect_err("acknowledged although its apply failed");
    assert!(
        matches!(err, Error::ApplyFailed(_)),
        "expected ApplyFailed, got {err:?}"
    );
    assert!(err.is_outcome_unknown());
    assert!(cluster.store(leader).unwrap().fatal_error().is_some());

    // Committed by the quorum: the new leader serves it.
    assert_eq!(
        client.get(b"k").unwrap().as_deref(),
        Some(&b"committed"[..])
    );
    // The failed store re-applies it after a restart.
    cluster.stop_store(leader);
    cluster.start_store(leader).unwrap();
    assert!(eventually(|| engine_value(&cluster, leader, b"k")
        .as_deref()
        == Some(&b"committed"[..])));
    cluster.shutdown();
}

/// A callback that panics is caught: the apply poller (one thread by
/// default) and the raft pollers keep running, and later writes and reads
/// on the same store succeed. (On b7200a8 the panic killed the only apply
/// poller and every later write timed out.)
#[test]
fn panicking_callback_kills_no_poller() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        Cluster::bootstrap(dir.path(), 3, 2, fast_config(FAST_TICK_MS), &logger()).unwrap();
    let leader = wait_leader(&cluster, 1).expect("leader");
    let region = cluster.regions()[0].clone();
    let client = cluster.client(client_cfg());
    let panics_before = callback_panics();
    let (tx, rx) = mpsc::sync_channel(2);
    for (key, answer_first) in [(&b"p1"[..], false), (b"p2", true)] {
        let tx = tx.clone();
        cluster.store(leader).unwrap().handle().propose(
            put_req(&region, leader, key, b"v"),
            Box::new(move |_| {
                if answer_first {
                    let _ = tx.send(());
                }
                panic!("embedder bug in a callback");
            }),
        );
    }
    rx.recv_timeout(Duration::from_secs(10))
        .expect("callback ran");
    assert!(eventually(|| callback_panics() >= panics_before + 2));
    for i in 0..20u32 {
        let key = format!("after{i}");
        client.put(key.as_bytes(), b"ok").unwrap();
        assert_eq!(
            client.get(key.as_bytes()).unwrap().as_deref(),
            Some(&b"ok"[..])
        );
    }
    assert_eq!(client.get(b"p1").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(cluster.store(leader).unwrap().fatal_error().is_none());
    cluster.shutdown();
}

/// Region 1's persisted (commit, applied, last index) on store `id`.
fn persisted_states(cluster: &Cluster, id: u64) -> (u64, u64, u64) {
    let engine = cluster.store(id).unwrap().engine().clone();
    let raft: RaftLocalState = engine
        .get_msg(Cf::Raft, &keys::raft_state_key(1))
        .unwrap()
        .unwrap();
    let apply: RaftApplyState = engine
        .get_msg(Cf::Raft, &keys::apply_state_key(1))
        .unwrap()
        .unwrap();
    (
        raft.hard_state.unwrap_or_default().commit,
        apply.applied_index,
        raft.last_index,
    )
}

/// A single voter commits every entry when its own write becomes durable
/// (a LightReady commit). The commit index is volatile: it is written only
/// with the next entries, so the persisted one may trail the persisted
/// applied index; a restart forwards it to the applied index, so it
/// reloads nothing it already applied and serves every acknowledged write.
/// (On b7200a8 the restart clamped the applied index to the persisted
/// commit, which stayed at 5 for good, and replayed the whole log.)
#[test]
fn single_voter_restarts_at_its_applied_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        Cluster::bootstrap(dir.path(), 1, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    wait_leader(&cluster, 1).expect("leader");
    let client = Client::new(cluster.stores(), cluster.regions(), client_cfg());
    for i in 0..20u32 {
        client.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let states = |cluster: &Cluster| {
        let (commit, applied, _) = persisted_states(cluster, 1);
        (commit, applied)
    };
    assert!(
        eventually(|| states(&cluster).1 >= 25),
        "persisted (commit, applied) = {:?}",
        states(&cluster)
    );
    let (_, applied) = states(&cluster);
    cluster.stop_store(1);
    cluster.start_store(1).unwrap();
    let status = cluster
        .store(1)
        .unwrap()
        .handle()
        .region_status(1, Duration::from_secs(10))
        .unwrap();
    assert!(
        status.applied_index >= applied && status.commit_index >= applied,
        "restarted at {status:?}, persisted applied {applied}"
    );
    for i in 0..20u32 {
        assert_eq!(
            client.get(format!("k{i}").as_bytes()).unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }
    cluster.shutdown();
}

/// With `sync_log = false`, changes of term and vote are still synced
/// (elections sync), and with `sync_log = true` rounds that only move the
/// commit index write nothing: once every store applied the last write,
/// whose commit reached the followers (and the leader) alone, no store's
/// persisted commit index covers it. (On b7200a8 `sync_log = false` synced
/// nothing, so a node could vote twice in a term after a power loss; until
/// session 12 commit-only rounds wrote the raft state unsynced.)
#[test]
fn sync_policy_syncs_votes_always_and_commit_only_rounds_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        sync_log: false,
        ..fast_config(FAST_TICK_MS)
    };
    let cluster = Cluster::bootstrap(dir.path(), 3, 4, cfg, &logger()).unwrap();
    assert!(cluster.wait_for_leaders(4, Duration::from_secs(30)));
    let synced: u64 = cluster
        .store_ids()
        .iter()
        .map(|&id| cluster.store(id).unwrap().engine().stats().synced_writes())
        .sum();
    assert!(synced > 0, "elections ran without a single synced write");
    cluster.shutdown();

    let dir = tempfile::tempdir().unwrap();
    let cluster =
        Cluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    wait_leader(&cluster, 1).expect("leader");
    let client = cluster.client(client_cfg());
    for i in 0..30u32 {
        client.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    let synced: u64 = cluster
        .store_ids()
        .iter()
        .map(|&id| {
            let m = cluster.store(id).unwrap().metrics();
            m.raft_synced_writes.load(Ordering::Relaxed)
        })
        .sum();
    assert!(synced > 0);
    let states = |id: u64| persisted_states(&cluster, id);
    for &id in cluster.store_ids() {
        assert!(
            eventually(|| {
                let (_, applied, last) = states(id);
                applied == last && applied >= 35
            }),
            "store {id}: persisted (commit, applied, last) = {:?}",
            states(id)
        );
        let (commit, applied, _) = states(id);
        assert!(
            commit < applied,
            "store {id} wrote a commit-only round: persisted commit {commit}, applied {applied}"
        );
    }
    cluster.shutdown();
}

/// A lease-reading leader cut off from its followers never serves a read
/// that misses a write its successor acknowledged: reads sent to it all
/// through the partition either fail or see the new value once that value
/// was acknowledged. Several regions led by the cut-off store run the race
/// at once, so a store without a real lease loses at least one of them.
/// (On b7200a8 `lease_read` had no lease at all: the old leader answered
/// from its stale state until check-quorum deposed it.)
#[test]
fn lease_read_leader_partitioned_never_serves_stale() {
    const TICK_MS: u64 = 20;
    const REGIONS: u64 = 9;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        lease_read: true,
        lease_drift_margin_ms: TICK_MS,
        ..fast_config(TICK_MS)
    };
    let cluster = Cluster::bootstrap(dir.path(), 3, REGIONS, cfg, &logger()).unwrap();
    let leaders = leaders(&cluster);
    // The store leading the most regions is cut off.
    let old = busiest_leader(&leaders).expect("a leader");
    let led: Vec<(Region, Vec<u8>)> = leaders
        .iter()
        .filter(|(_, l)| *l == old)
        .map(|(r, _)| {
            // Just past the region's start (the first region starts at "").
            let mut key = r.start_key.to_vec();
            key.extend_from_slice(b"\0lease");
            (r.clone(), key)
        })
        .collect();
    // Short attempts: a write first sent to the cut-off leader times out
    // fast and goes to the new leader as soon as there is one.
    let client = Arc::new(cluster.client(ClientConfig {
        request_timeout: Duration::from_millis(50),
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        max_attempts: usize::MAX,
        ..Default::default()
    }));
    for (region, key) in &led {
        client.put(key, b"old").unwrap();
        // Reads at the leader: the first runs ReadIndex and takes the
        // lease, the next ones may be served from it.
        for _ in 0..3 {
            let got = propose(
                &cluster,
                old,
                get_req(region, old, key),
                Duration::from_secs(5),
            );
            assert!(got.is_ok(), "{got:?}");
        }
    }

    // Cut the leader off, and read at it in a loop while the majority
    // elects new leaders and writes.
    cluster.transport().isolate(old);
    let stop = Arc::new(AtomicBool::new(false));
    let acked_at: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; led.len()]));
    let handle = cluster.store(old).unwrap().handle();
    let (stale, served) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (stop, acked_at, stale, served, led) = (
            stop.clone(),
            acked_at.clone(),
            stale.clone(),
            served.clone(),
            led.clone(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                for (i, (region, key)) in led.iter().enumerate() {
                    let started = Instant::now();
                    let (tx, rx) = mpsc::sync_channel(1);
                    handle.propose(
                        get_req(region, old, key),
                        Box::new(move |r| drop(tx.send(r))),
                    );
                    let Ok(resp) = rx.recv_timeout(Duration::from_millis(20)) else {
                        continue;
                    };
                    if response_error(&resp).is_some() {
                        continue;
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                    let value = resp.responses.into_iter().next().and_then(|r| match r.cmd {
                        Some(response::Cmd::Get(g)) => g.value,
                        _ => None,
                    });
                    let after_ack = acked_at.lock().unwrap()[i].is_some_and(|t| started > t);
                    if after_ack && value.as_deref() != Some(&b"new"[..]) {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // The first attempts may go to the cut-off leader and time out (outcome
    // unknown); the write is idempotent, so retry until it is acknowledged.
    let writers: Vec<_> = led
        .iter()
        .enumerate()
        .map(|(i, (_, key))| {
            let (client, acked_at, key) = (client.clone(), acked_at.clone(), key.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while let Err(e) = client.put(&key, b"new") {
                    assert!(e.is_outcome_unknown() || e.is_retryable(), "{e:?}");
                    assert!(
                        Instant::now() < deadline,
                        "the majority never took the write"
                    );
                }
                acked_at.lock().unwrap()[i] = Some(Instant::now());
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // Keep reading at the old leader for a while after the new writes.
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    reader.join().unwrap();
    assert_eq!(
        stale.load(Ordering::Relaxed),
        0,
        "the deposed leader served stale reads ({} served in all)",
        served.load(Ordering::Relaxed)
    );
    // The race was run: the cut-off leader did serve from its lease while
    // the lease lasted.
    assert!(
        served.load(Ordering::Relaxed) > 0,
        "no read was served from the lease"
    );
    cluster.transport().clear_filters();
    for (_, key) in &led {
        assert_eq!(client.get(key).unwrap().as_deref(), Some(&b"new"[..]));
    }
    cluster.shutdown();
}

/// One deadline covers all of an operation's attempts: with every store
/// stopped, a read returns a retryable `StoreStopped` once the deadline has
/// passed, instead of retrying for minutes. (On b7200a8 there was no
/// operation deadline: 60 attempts of up to 5 s each.)
#[test]
fn client_operation_has_one_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        Cluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    wait_leader(&cluster, 1).expect("leader");
    let op_timeout = Duration::from_secs(1);
    let client = Client::new(
        cluster.stores(),
        cluster.regions(),
        ClientConfig {
            operation_timeout: op_timeout,
            request_timeout: Duration::from_secs(5),
            max_attempts: usize::MAX,
            ..Default::default()
        },
    );
    client.put(b"k", b"v").unwrap();
    for id in cluster.store_ids().to_vec() {
        cluster.stop_store(id);
    }
    let started = Instant::now();
    let err = client.get(b"k").expect_err("no store is running");
    let took = started.elapsed();
    assert_eq!(err, Error::StoreStopped { in_flight: false });
    assert!(took >= op_timeout, "gave up before the deadline: {took:?}");
    // Generous: the deadline plus one backoff, far from 60 x 5 s.
    assert!(took < op_timeout * 10, "ran past its deadline: {took:?}");
    cluster.shutdown();
}

/// A client made from the cluster's shared store handles keeps working
/// while the store leading its region is stopped and restarted through
/// `&mut Cluster`; every write it saw acknowledged is there afterwards.
#[test]
fn client_outlives_store_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        Cluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    let leader = wait_leader(&cluster, 1).expect("leader");
    let client = Arc::new(Client::new(
        cluster.stores(),
        cluster.regions(),
        client_cfg(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Acquire) || acked.len() < 10 {
                let key = format!("w{i}");
                i += 1;
                match client.put(key.as_bytes(), b"v") {
                    Ok(()) => acked.push(key),
                    Err(e) => assert!(
                        e.is_outcome_unknown() || e.is_retryable(),
                        "unexpected error {e:?}"
                    ),
                }
            }
            acked
        })
    };
    thread::sleep(Duration::from_millis(200));
    cluster.stop_store(leader);
    thread::sleep(Duration::from_millis(300));
    cluster.start_store(leader).unwrap();
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    let acked = writer.join().unwrap();
    assert!(acked.len() >= 10);
    for key in &acked {
        assert_eq!(
            client.get(key.as_bytes()).unwrap().as_deref(),
            Some(&b"v"[..]),
            "acknowledged {key} lost"
        );
    }
    cluster.shutdown();
}
