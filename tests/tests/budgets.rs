//! The store's budgets hold under load, on a real 3-store cluster on
//! RocksDB: a flood of raft messages into one peer's mailbox is cut at
//! `raft_message_capacity` (the excess dropped and counted) while the store
//! keeps serving, and committed entries handed to apply in pieces of
//! `max_apply_bytes_per_ready` lose and strand no write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use flotilla_engine::{Cf, keys};
use flotilla_proto::eraftpb::{Message, MessageType};
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::RaftCmdResponse;
use flotilla_proto::raft_serverpb::RaftMessage;
use flotilla_raftstore::store::{
    Client, ClientConfig, Cluster, Config, Error, MessageSink, StoreHandle, response_error,
};
use flotilla_tests::harness::{
    FAST_TICK_MS, SETTLE, busiest_leader, eventually, fast_config, leaders, logger, wait_leader,
};
use flotilla_tests::requests::{command, propose_to, put};

/// Queued messages per peer mailbox before client commands are refused
/// `ServerIsBusy` in the flood test.
const MAILBOX_CAPACITY: usize = 64;
/// Queued messages per peer mailbox before inbound raft messages are
/// dropped in the flood test.
const RAFT_MESSAGE_CAPACITY: usize = 256;
/// Raft messages the flood delivers at least before it is looked at.
const FLOOD_MIN: u64 = 50_000;
/// Regions of the flood test: with 4 regions on 3 stores one store leads
/// at least two of them.
const FLOOD_REGIONS: u64 = 4;
/// Probe commands sent straight to the flooded peer at least.
const PROBES: usize = 20;

/// Bytes of committed entries handed to apply per Ready in the apply test.
const APPLY_BYTES_PER_READY: u64 = 4 << 10;
/// Value size of the apply test's writes: a few fit in one piece.
const VALUE_LEN: usize = 1 << 10;
/// Writes proposed at once in the apply test (200 KiB of entries, some 50
/// times the apply budget).
const BURST: usize = 200;

/// A client whose operations may take `SETTLE` (one attempt too), and
/// that retries `ServerIsBusy` quickly: many attempts, short backoff.
fn patient_client(cluster: &Cluster) -> Client {
    cluster.client(ClientConfig {
        request_timeout: SETTLE,
        operation_timeout: SETTLE,
        max_attempts: usize::MAX,
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        ..Default::default()
    })
}

/// `suffix` placed just past `region`'s start key (inside the region).
fn key_in(region: &Region, suffix: &[u8]) -> Vec<u8> {
    [&region.start_key[..], b"\0", suffix].concat()
}

/// The value store `store_id`'s engine holds for `key` (bypassing raft).
fn engine_value(cluster: &Cluster, store_id: u64, key: &[u8]) -> Option<Vec<u8>> {
    cluster
        .store(store_id)?
        .engine()
        .get(Cf::Default, &keys::data_key(key))
        .ok()?
}

/// A thread delivering well-formed but useless raft messages for one peer
/// through its store's [`MessageSink`], as fast as it can, until dropped:
/// heartbeat and append responses from another peer of the region, of term
/// 1 (older than any term the region reaches after bootstrap), which the
/// peer ignores.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    /// Floods the peer of `region` on `handle`'s store.
    fn start(handle: StoreHandle, region: &Region) -> Flood {
        let store = handle.store_id();
        let to = *region
            .peers
            .iter()
            .find(|p| p.store_id == store)
            .expect("a peer on the flooded store");
        let from = *region
            .peers
            .iter()
            .find(|p| p.store_id != store)
            .expect("a peer on another store");
        let msg = |t: MessageType| RaftMessage {
            region_id: region.id,
            from_peer: Some(from),
            to_peer: Some(to),
            region_epoch: region.region_epoch,
            message: Some(Message {
                msg_type: t as i32,
                from: from.id,
                to: to.id,
                term: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let msgs = [
            msg(MessageType::MsgHeartbeatResponse),
            msg(MessageType::MsgAppendResponse),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::spawn(move || {
                for m in msgs.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    handle.deliver(m.clone());
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Flood {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Messages delivered so far.
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A flood of raft messages into one peer's mailbox is held to the
/// mailbox's raft budget, and the store keeps serving.
///
/// A thread delivers harmless raft messages (stale-term heartbeat and
/// append responses) for region F into store S, the store leading F and at
/// least one more region O, faster than S drains them (`mailbox_capacity`
/// 64, `raft_message_capacity` 256). Checked:
/// - the budget: once the flood has delivered 50,000 messages, S has
///   counted dropped raft messages (`raft_messages_dropped > 0`);
/// - no starvation: every command sent straight to S's peer of F while
///   the flood runs is answered, with success, `ServerIsBusy` (the flood
///   filled the client budget: the command is refused at once, not
///   queued behind the flood), `NotLeader` or `StaleCommand` (S lost F's
///   leadership meanwhile: its followers' answers may be dropped too),
///   and at least one is refused `ServerIsBusy`, so the flood did fill the
///   mailbox past the client budget;
/// - serving during the flood: every region has a leader, and a client
///   that retries `ServerIsBusy` writes and reads a key of F and of O; the
///   flood still drops messages after that (it was running throughout);
/// - after the flood: every region has a leader and serves a write and a
///   read, every write acknowledged during the flood is readable, S
///   applied F's write made during the flood (its peer of F caught up),
///   and S never stopped.
#[test]
fn raft_message_flood_is_held_to_its_budget_and_the_store_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        mailbox_capacity: MAILBOX_CAPACITY,
        raft_message_capacity: RAFT_MESSAGE_CAPACITY,
        ..fast_config(FAST_TICK_MS)
    };
    let cluster = Cluster::bootstrap(dir.path(), 3, FLOOD_REGIONS, cfg, &logger()).unwrap();
    let leaders = leaders(&cluster);
    // The store leading the most regions leads two at least.
    let store = busiest_leader(&leaders).expect("a leader");
    let led: Vec<Region> = leaders
        .iter()
        .filter(|(_, l)| *l == store)
        .map(|(r, _)| r.clone())
        .collect();
    assert!(led.len() >= 2, "pigeonhole: {leaders:?}");
    let (flooded, other) = (&led[0], &led[1]);
    let dropped = || {
        cluster
            .store(store)
            .unwrap()
            .metrics()
            .raft_messages_dropped
            .load(Ordering::Relaxed)
    };
    assert_eq!(dropped(), 0, "dropped raft messages before the flood");
    let client = patient_client(&cluster);

    let flood = Flood::start(cluster.stores().get(store).unwrap(), flooded);
    assert!(
        eventually(|| flood.sent() >= FLOOD_MIN && dropped() > 0),
        "{} raft messages delivered, {} dropped",
        flood.sent(),
        dropped()
    );

    // Commands straight to the flooded peer are answered, never starved.
    let mut answers: BTreeMap<&str, usize> = BTreeMap::new();
    let mut acked = Vec::new();
    let deadline = Instant::now() + SETTLE;
    let mut i = 0;
    while i < PROBES || !answers.contains_key("ServerIsBusy") {
        assert!(
            Instant::now() < deadline,
            "no probe refused ServerIsBusy: {answers:?}"
        );
        let key = key_in(flooded, format!("probe{i}").as_bytes());
        let req = command(flooded, store, vec![put(&key, b"probe")]);
        let kind = match propose_to(&cluster, store, req, SETTLE) {
            Ok(_) => {
                acked.push(key);
                "ok"
            }
            Err(Error::ServerIsBusy(_)) => "ServerIsBusy",
            Err(Error::NotLeader { .. }) => "NotLeader",
            Err(Error::StaleCommand) => "StaleCommand",
            Err(Error::Timeout) => panic!("probe {i} got no answer during the flood"),
            Err(e) => panic!("probe {i}: unexpected answer {e:?}"),
        };
        *answers.entry(kind).or_default() += 1;
        i += 1;
    }

    // The cluster serves through the flood.
    for r in cluster.regions() {
        assert!(wait_leader(&cluster, r.id).is_some(), "region {}", r.id);
    }
    let drops_before = dropped();
    for (region, value) in [(flooded, &b"flooded"[..]), (other, b"other")] {
        let key = key_in(region, b"during-flood");
        client.put(&key, value).expect("write during the flood");
        assert_eq!(
            client.get(&key).expect("read during the flood").as_deref(),
            Some(value)
        );
    }
    assert!(
        eventually(|| dropped() > drops_before),
        "the flood stopped dropping messages during the client's operations"
    );
    let sent = flood.sent();
    drop(flood);
    assert!(sent >= FLOOD_MIN);

    // And after it.
    for r in cluster.regions() {
        assert!(wait_leader(&cluster, r.id).is_some(), "region {}", r.id);
        let key = key_in(r, b"after-flood");
        client.put(&key, b"after").expect("write after the flood");
        assert_eq!(client.get(&key).unwrap().as_deref(), Some(&b"after"[..]));
    }
    for (region, value) in [(flooded, &b"flooded"[..]), (other, b"other")] {
        let key = key_in(region, b"during-flood");
        assert_eq!(client.get(&key).unwrap().as_deref(), Some(value));
    }
    for key in &acked {
        assert_eq!(client.get(key).unwrap().as_deref(), Some(&b"probe"[..]));
    }
    let during = key_in(flooded, b"during-flood");
    assert!(
        eventually(|| engine_value(&cluster, store, &during).as_deref() == Some(&b"flooded"[..])),
        "the flooded peer never applied the write made during the flood"
    );
    assert!(cluster.store(store).unwrap().fatal_error().is_none());
    cluster.shutdown();
}

/// The key and value of the apply test's write `i` (values differ in their
/// first bytes and fill `VALUE_LEN`).
fn burst_pair(i: usize) -> (Vec<u8>, Vec<u8>) {
    let key = format!("burst{i:04}").into_bytes();
    let mut value = format!("value{i:04}-").into_bytes();
    value.resize(VALUE_LEN, b'a' + (i % 26) as u8);
    (key, value)
}

/// Committed entries handed to apply in pieces lose and strand no write.
///
/// With `max_apply_bytes_per_ready` 4 KiB, 200 writes of 1 KiB values
/// (200 KiB of entries) are proposed at once through
/// `StoreHandle::propose` to region 1's leader, so they are appended and
/// committed in few rounds, and each store hands them to apply a few
/// entries at a time (each Ready carries at most 4 KiB of them). Checked: every write is acknowledged (each callback
/// answers within `SETTLE`; a write refused or left with an unknown
/// outcome by a leader change is proposed again, in the next burst, to
/// the new leader); every value reads back through the client, and a scan
/// returns exactly the 200 pairs; every store's engine eventually holds
/// every value (the followers applied every piece too). No store counter
/// shows how many pieces apply received, so the pieces themselves are not
/// counted.
#[test]
fn writes_committed_past_the_apply_budget_are_all_applied() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        max_apply_bytes_per_ready: APPLY_BYTES_PER_READY,
        ..fast_config(FAST_TICK_MS)
    };
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, cfg, &logger()).unwrap();
    let region = cluster.regions()[0].clone();
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..BURST).map(burst_pair).collect();

    let mut pending: Vec<usize> = (0..BURST).collect();
    let mut bursts = 0;
    let deadline = Instant::now() + SETTLE;
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} writes still not acknowledged after {bursts} bursts",
            pending.len()
        );
        bursts += 1;
        let leader = wait_leader(&cluster, region.id).expect("leader");
        let handle = cluster.store(leader).expect("running").handle();
        let (tx, rx) = mpsc::channel::<(usize, RaftCmdResponse)>();
        for &i in &pending {
            let tx = tx.clone();
            let (key, value) = &pairs[i];
            handle.propose(
                command(&region, leader, vec![put(key, value)]),
                Box::new(move |resp| drop(tx.send((i, resp)))),
            );
        }
        drop(tx);
        let mut retry = Vec::new();
        for _ in 0..pending.len() {
            let (i, resp) = rx
                .recv_timeout(SETTLE)
                .expect("a write got no answer: stuck between commit and apply");
            match response_error(&resp) {
                None => {}
                Some(e) if e.is_retryable() || e.is_outcome_unknown() => retry.push(i),
                Some(e) => panic!("write {i}: unexpected answer {e:?}"),
            }
        }
        retry.sort_unstable();
        pending = retry;
    }

    let client = patient_client(&cluster);
    for (key, value) in &pairs {
        assert_eq!(
            client.get(key).unwrap().as_deref(),
            Some(&value[..]),
            "{}",
            String::from_utf8_lossy(key)
        );
    }
    let scanned = client.scan(b"burst", b"burst\xff", BURST + 1).unwrap();
    assert_eq!(scanned, pairs, "a scan over the written keys");
    for &store in cluster.store_ids() {
        assert!(
            eventually(|| pairs
                .iter()
                .all(|(k, v)| engine_value(&cluster, store, k).as_ref() == Some(v))),
            "store {store} never applied every write"
        );
    }
    cluster.shutdown();
}
