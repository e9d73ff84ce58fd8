//! The gRPC raft transport (issue #13 item 1): stores that share nothing
//! but loopback TCP ports replicate writes, catch a restarted store up by
//! a snapshot stream, stop acknowledging when cut off and lose nothing
//! when healed; a store's raft service refuses what is not for it and
//! keeps serving after garbage.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_engine::{Cf, Engine, keys};
use flotilla_proto::eraftpb::{ConfChangeType, Message, MessageType};
use flotilla_proto::metapb::{Peer, PeerRole};
use flotilla_proto::raft_serverpb::{RaftApplyState, RaftMessage};
use flotilla_raftstore::store::{
    AdminError, Client, ClientConfig, Config, Error, MessageSink, SnapError, Stores,
};
use flotilla_server::pb::raft_transport_client::RaftTransportClient;
use flotilla_server::pb::{RaftBatch, SnapshotChunk};
use flotilla_server::{NetConfig, ServerIdentity, StoreServer};
use flotilla_tests::harness::{
    self, FAST_TICK_MS, eventually, fast_config, holds_values, last_index, logger,
};
use flotilla_tests::net::NetCluster;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::Code;

/// The cluster id of the stores in these tests.
const CLUSTER: u64 = flotilla_raftstore::store::CLUSTER_ID;

fn key(i: u64) -> Vec<u8> {
    format!("grpc{i:05}").into_bytes()
}

/// Whether `engine` holds every key of `range` with its value.
fn holds(engine: &Engine, range: std::ops::Range<u64>) -> bool {
    holds_values(engine, range, key)
}

/// Puts `key(i)`, writing again while the outcome is unknown (a leader
/// changed under the write: stores elect at start and under load), which
/// the same value makes harmless.
fn put(client: &Client, k: &[u8], v: &[u8]) {
    retry("put", || client.put(k, v));
}

/// A running store that leads no region (the tests' regions all have
/// leaders elsewhere).
fn follower_store(cluster: &NetCluster) -> u64 {
    *cluster
        .store_ids()
        .iter()
        .find(|&&id| {
            cluster
                .store(id)
                .is_some_and(|s| s.metrics().leaders.load(Ordering::Relaxed) == 0)
        })
        .expect("a follower store")
}

fn wait_leaders(cluster: &NetCluster, n: u64) -> bool {
    eventually(|| cluster.leader_count() >= n)
}

/// Three stores on three ports: every write is acknowledged, read back,
/// and lands on every store, with the raft traffic on the wire (each
/// store's transport sent batches, each server took messages, none
/// refused).
#[test]
fn three_stores_replicate_writes_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        NetCluster::bootstrap(dir.path(), 3, 8, fast_config(FAST_TICK_MS), &logger()).unwrap();
    assert!(
        wait_leaders(&cluster, 8),
        "not every region elected a leader"
    );
    let client = cluster.client(ClientConfig::default());
    for i in 0..200 {
        put(&client, &key(i), &i.to_be_bytes());
    }
    for i in 0..200 {
        assert_eq!(
            client.get(&key(i)).expect("get"),
            Some(i.to_be_bytes().to_vec())
        );
    }
    for &id in cluster.store_ids() {
        let engine = cluster.store(id).unwrap().engine().clone();
        assert!(
            eventually(|| holds(&engine, 0..200)),
            "store {id} did not get every write"
        );
        let sent = cluster.transport(id).unwrap().metrics();
        let got = cluster.server(id).unwrap().metrics();
        assert!(sent.batches_sent.load(Ordering::Relaxed) > 0, "store {id}");
        assert!(
            got.messages_received.load(Ordering::Relaxed) > 0,
            "store {id}"
        );
        assert_eq!(got.streams_refused.load(Ordering::Relaxed), 0, "store {id}");
        assert_eq!(got.messages_misaddressed.load(Ordering::Relaxed), 0);
    }
    cluster.shutdown();
}

/// Log length past which leaders compact what followers matched.
const COUNT_LIMIT: u64 = 30;

fn gc_config() -> Config {
    harness::gc_config(COUNT_LIMIT)
}

fn truncated(engine: &Engine, region: u64) -> u64 {
    let s: RaftApplyState = engine
        .get_msg(Cf::Raft, &keys::apply_state_key(region))
        .expect("read")
        .expect("apply state");
    s.truncated_state.unwrap_or_default().index
}

/// A store stopped while the others compact their log past it comes back
/// on a new port (the address book says where) and catches up by a
/// snapshot sent over its own gRPC stream.
#[test]
fn a_restarted_store_catches_up_by_a_snapshot_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NetCluster::bootstrap(dir.path(), 3, 1, gc_config(), &logger()).unwrap();
    assert!(wait_leaders(&cluster, 1));
    let client = cluster.client(ClientConfig::default());
    for i in 0..10 {
        put(&client, &key(i), &i.to_be_bytes());
    }
    // Stop a store that does not lead the region.
    let region = cluster.regions()[0].id;
    let stopped = follower_store(&cluster);
    let stopped_last = last_index(cluster.store(stopped).unwrap().engine(), region);
    assert!(cluster.stop_store(stopped));
    for i in 10..160 {
        put(&client, &key(i), &i.to_be_bytes());
    }
    let live: Vec<u64> = cluster
        .store_ids()
        .iter()
        .copied()
        .filter(|&id| id != stopped)
        .collect();
    assert!(
        eventually(|| live
            .iter()
            .all(|&id| truncated(cluster.store(id).unwrap().engine(), region) > stopped_last)),
        "the live stores did not compact past the stopped store's log"
    );
    cluster.start_store(stopped).unwrap();
    let engine = cluster.store(stopped).unwrap().engine().clone();
    assert!(
        eventually(|| holds(&engine, 0..160)),
        "the restarted store did not catch up"
    );
    // The sender counts once the receiver's answer is back, which may be
    // after the data is in.
    let sent = || -> u64 {
        live.iter()
            .map(|&id| {
                cluster
                    .transport(id)
                    .unwrap()
                    .metrics()
                    .snapshots_sent
                    .load(Ordering::Relaxed)
            })
            .sum()
    };
    assert!(eventually(|| sent() >= 1), "no snapshot went over the wire");
    let received = &cluster
        .server(stopped)
        .unwrap()
        .metrics()
        .snapshots_received;
    assert!(
        eventually(|| received.load(Ordering::Relaxed) >= 1),
        "the restarted store took no snapshot stream"
    );
    cluster.shutdown();
}

/// A key inside region `r`.
fn minority_key(r: &flotilla_proto::metapb::Region) -> Vec<u8> {
    let mut k = r.start_key.to_vec();
    if k.is_empty() {
        k.push(0);
    }
    k.extend_from_slice(b"minority");
    k
}

/// Tries per write while a cut-off store's leaders are replaced.
const PUT_ATTEMPTS: usize = 20;

/// A store cut off by the transport's test hook (nothing to or from it)
/// stops acknowledging: the majority keeps serving; once healed, the store
/// has every write the majority acknowledged.
#[test]
fn a_cut_off_store_catches_up_when_healed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        NetCluster::bootstrap(dir.path(), 3, 4, fast_config(FAST_TICK_MS), &logger()).unwrap();
    assert!(wait_leaders(&cluster, 4));
    let cut = 3;
    let cut_off = |block: bool| {
        for &id in cluster.store_ids() {
            let t = cluster.transport(id).unwrap();
            let others: Vec<u64> = if id == cut {
                cluster
                    .store_ids()
                    .iter()
                    .copied()
                    .filter(|&o| o != cut)
                    .collect()
            } else {
                vec![cut]
            };
            for o in others {
                if block { t.block(o) } else { t.unblock(o) }
            }
        }
    };
    // A client that reaches only the store to cut off, which leads region
    // 1 and serves its writes before the cut.
    let minority = Stores::default();
    minority.insert(cluster.store(cut).unwrap().handle());
    let lonely = Client::new(
        minority,
        cluster.regions(),
        ClientConfig {
            request_timeout: Duration::from_millis(300),
            operation_timeout: Duration::from_secs(1),
            ..ClientConfig::default()
        },
    );
    let first = &cluster.regions()[0];
    let majority = cluster.client(ClientConfig::default());
    retry("transfer leader", || {
        majority.transfer_leader(first.id, cut)
    });
    retry("write through the store to cut off", || {
        lonely.put(&minority_key(first), b"before")
    });
    cut_off(true);
    // A write that went to a leader on the cut-off store has an unknown
    // outcome (it may be proposed there, never committed): write it again
    // until the majority, with a leader of its own, acknowledges it.
    let client = cluster.client(ClientConfig {
        request_timeout: Duration::from_millis(500),
        operation_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    });
    for i in 0..100 {
        let acked = (0..PUT_ATTEMPTS).any(|_| client.put(&key(i), &i.to_be_bytes()).is_ok());
        assert!(acked, "the majority did not serve key {i}");
    }
    let engine = cluster.store(cut).unwrap().engine().clone();
    assert!(!holds(&engine, 0..100), "writes reached the cut-off store");
    // The minority acknowledges nothing: the client that reaches only the
    // cut-off store, and wrote through it before, gets no write through in
    // any region (its peer is a follower without a reachable leader, or a
    // leader without a quorum).
    for r in cluster.regions() {
        assert!(
            lonely.put(&minority_key(r), b"lost").is_err(),
            "the cut-off store acknowledged a write in region {}",
            r.id
        );
    }
    let blocked: u64 = cluster
        .store_ids()
        .iter()
        .map(|&id| {
            cluster
                .transport(id)
                .unwrap()
                .metrics()
                .dropped_blocked
                .load(Ordering::Relaxed)
        })
        .sum();
    assert!(blocked > 0, "the hook dropped nothing");
    cut_off(false);
    assert!(
        eventually(|| holds(&engine, 0..100)),
        "the healed store did not catch up"
    );
    cluster.shutdown();
}

/// A sink that keeps what it is handed.
#[derive(Default)]
struct Recorder {
    delivered: Mutex<Vec<RaftMessage>>,
}

impl MessageSink for Recorder {
    fn deliver(&self, msg: RaftMessage) {
        self.delivered.lock().push(msg);
    }

    fn receive_snapshot(
        &self,
        msg: RaftMessage,
        chunks: &mut dyn Iterator<Item = Result<Vec<u8>, SnapError>>,
    ) -> Result<(), SnapError> {
        for c in chunks {
            c?;
        }
        Err(SnapError::RegionNotFound(msg.region_id))
    }
}

fn message_to(store: u64, region_id: u64) -> RaftMessage {
    RaftMessage {
        region_id,
        from_peer: Some(Peer {
            id: 1,
            store_id: 9,
            ..Default::default()
        }),
        to_peer: Some(Peer {
            id: 2,
            store_id: store,
            ..Default::default()
        }),
        message: Some(Message {
            msg_type: MessageType::MsgHeartbeat as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Bad input on the wire (issue #13's last test): batches of another
/// cluster or for another store are refused with a typed status, a message
/// for another store inside a good batch is dropped and counted, an
/// oversized message is refused, garbage bytes and a truncated frame close
/// only their own connection, and an empty snapshot stream is refused;
/// after all of it the server still takes a good batch.
#[test]
fn the_raft_service_refuses_bad_input_and_keeps_serving() {
    const STORE: u64 = 4;
    const MAX_MESSAGE: usize = 1 << 20;
    let runtime = flotilla_server::net_runtime(2).unwrap();
    let sink = Arc::new(Recorder::default());
    let cfg = NetConfig {
        max_message_bytes: MAX_MESSAGE,
        batch_bytes: MAX_MESSAGE / 4,
        ..NetConfig::default()
    };
    let server = StoreServer::start(
        runtime.handle(),
        "127.0.0.1:0",
        ServerIdentity {
            cluster_id: CLUSTER,
            store_id: STORE,
        },
        sink.clone(),
        None,
        &cfg,
        &logger(),
    )
    .unwrap();
    let addr = server.local_addr();
    let batch = |cluster_id, to_store, msgs| RaftBatch {
        cluster_id,
        from_store: 9,
        to_store,
        msgs,
    };
    let send = |batches: Vec<RaftBatch>| -> Result<(), tonic::Status> {
        runtime.block_on(async {
            let mut client = RaftTransportClient::connect(format!("http://{addr}"))
                .await
                .expect("connect")
                .max_encoding_message_size(4 * MAX_MESSAGE);
            client.raft(tokio_stream::iter(batches)).await.map(|_| ())
        })
    };
    // Another cluster; another store.
    let err = send(vec![batch(CLUSTER + 1, STORE, vec![message_to(STORE, 1)])]).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let err = send(vec![batch(CLUSTER, STORE + 1, vec![message_to(STORE, 1)])]).unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(sink.delivered.lock().is_empty());
    // A message for another store inside a good batch.
    send(vec![batch(
        CLUSTER,
        STORE,
        vec![message_to(STORE + 1, 1), message_to(STORE, 2)],
    )])
    .expect("a good batch");
    assert_eq!(
        sink.delivered
            .lock()
            .iter()
            .map(|m| m.region_id)
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(
        server
            .metrics()
            .messages_misaddressed
            .load(Ordering::Relaxed),
        1
    );
    // Oversized: one message past the server's limit.
    let mut big = message_to(STORE, 3);
    big.start_key = vec![7u8; 2 * MAX_MESSAGE].into();
    let err = send(vec![batch(CLUSTER, STORE, vec![big])]).unwrap_err();
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{err}"
    );
    // Garbage bytes, then a truncated HTTP/2 preface, on raw connections.
    for junk in [
        &b"\x00\x01garbage that is not http/2 at all\xff\xfe"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x40\x00"[..],
    ] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(junk).unwrap();
        drop(s);
    }
    // An empty snapshot stream, and one whose header names no message.
    let snap = |chunks: Vec<SnapshotChunk>| -> tonic::Status {
        runtime.block_on(async {
            let mut client = RaftTransportClient::connect(format!("http://{addr}"))
                .await
                .expect("connect");
            client
                .snapshot(tokio_stream::iter(chunks))
                .await
                .expect_err("refused")
        })
    };
    assert_eq!(snap(Vec::new()).code(), Code::InvalidArgument);
    let headless = SnapshotChunk {
        cluster_id: CLUSTER,
        to_store: STORE,
        ..Default::default()
    };
    assert_eq!(snap(vec![headless]).code(), Code::InvalidArgument);
    // Still serving.
    send(vec![batch(CLUSTER, STORE, vec![message_to(STORE, 5)])]).expect("still serving");
    assert_eq!(sink.delivered.lock().last().map(|m| m.region_id), Some(5));
    server.shutdown().unwrap();
}

/// Retries `f` while it fails with an error that may pass by itself (a
/// pending conf change, a refusal to try again, a retryable routing
/// error) or leaves the outcome unknown (callers retry only what is
/// idempotent).
fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, Error>) -> T {
    let mut last = None;
    for _ in 0..ADMIN_ATTEMPTS {
        match f() {
            Ok(v) => return v,
            Err(
                e @ Error::Admin(
                    AdminError::ConfChangePending { .. }
                    | AdminError::LearnerNotCaughtUp { .. }
                    | AdminError::SplitPending { .. },
                ),
            ) => last = Some(e),
            Err(e) if e.is_retryable() || e.is_outcome_unknown() => last = Some(e),
            Err(e) => panic!("{what}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: still failing: {last:?}")
}

/// Tries of an admin command that is refused for now.
const ADMIN_ATTEMPTS: usize = 200;

/// A client that reaches the stores only through their client services
/// (it starts knowing no region) writes, reads, scans and deletes, splits
/// a region, merges it back and changes its membership (issue #13's first
/// test, in one process).
#[test]
fn a_remote_client_writes_splits_merges_and_changes_peers() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        NetCluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    assert!(wait_leaders(&cluster, 1));
    let client = cluster.remote_client(ClientConfig::default());
    for i in 0..50 {
        put(&client, &key(i), &i.to_be_bytes());
    }
    assert_eq!(
        client.get(&key(7)).unwrap(),
        Some(7u64.to_be_bytes().to_vec())
    );
    assert_eq!(client.scan(&key(0), &key(50), 100).unwrap().len(), 50);
    retry("delete", || client.delete(&key(0)));
    assert_eq!(client.get(&key(0)).unwrap(), None);

    // Split at key 25; both halves serve.
    let halves = retry("split", || client.split_at(&key(25)));
    assert_eq!(halves.len(), 2, "{halves:?}");
    let left = client.locate(&key(10)).unwrap();
    let right = client.locate(&key(30)).unwrap();
    assert_ne!(left.id, right.id);
    put(&client, &key(10), b"left");
    put(&client, &key(30), b"right");

    // Merge the right half back into the left.
    let merged = retry("merge", || client.merge(right.id, left.id));
    assert_eq!(merged.id, left.id);
    assert!(merged.end_key.is_empty(), "{merged:?}");
    assert_eq!(
        client.get(&key(30)).unwrap().as_deref(),
        Some(&b"right"[..])
    );

    // Remove a voter that does not lead, then add it back as a learner.
    let region = client.locate(&key(30)).unwrap();
    let removed = region
        .peers
        .iter()
        .copied()
        .find(|p| {
            client
                .change_peer(region.id, ConfChangeType::RemoveNode, *p)
                .is_ok()
        })
        .expect("a removable voter");
    let after = client.locate(&key(30)).unwrap();
    assert!(!after.peers.iter().any(|p| p.id == removed.id), "{after:?}");
    let id = cluster.store(removed.store_id).unwrap().alloc_id().unwrap();
    let learner = Peer {
        id,
        store_id: removed.store_id,
        role: PeerRole::Learner as i32,
    };
    let region = retry("add learner", || {
        client.change_peer(after.id, ConfChangeType::AddLearnerNode, learner)
    });
    assert!(region.peers.contains(&learner), "{region:?}");
    // The learner's store catches up over the network.
    let engine = cluster.store(removed.store_id).unwrap().engine().clone();
    let right_value = || {
        engine
            .get(Cf::Default, &keys::data_key(&key(30)))
            .expect("read")
    };
    assert!(
        eventually(|| holds(&engine, 40..50) && right_value().as_deref() == Some(&b"right"[..])),
        "the learner's store did not catch up"
    );
    for i in 40..50 {
        assert_eq!(client.get(&key(i)).unwrap(), Some(i.to_be_bytes().to_vec()));
    }
    cluster.shutdown();
}

/// A remote call past the network's message size limit is a definite,
/// typed refusal (`InvalidRequest`), never `StoreStopped { in_flight }`
/// (which a client must treat as a write in doubt and a read to retry):
/// a write too large to send is refused before it is sent, and is absent;
/// a scan pages at what the link takes, and one whose single pair is too
/// large to take (tonic's size check) is refused; the client then serves
/// small calls.
#[test]
fn a_message_past_the_size_limit_is_refused_not_in_doubt() {
    const LIMIT: usize = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        NetCluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    assert!(wait_leaders(&cluster, 1));
    let big = cluster.remote_client(ClientConfig::default());
    let net = NetConfig {
        max_message_bytes: LIMIT,
        batch_bytes: LIMIT / 4,
        ..NetConfig::default()
    };
    let small = cluster.remote_client_with(&net, ClientConfig::default());

    let err = small.put(&key(1), &vec![1u8; 2 * LIMIT]).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    assert!(!err.is_outcome_unknown() && !err.is_retryable(), "{err}");
    assert_eq!(retry("get", || big.get(&key(1))), None);

    // Pairs that together pass the limit come in pages that fit it: the
    // remote client asks the store to cut them at its link's budget.
    for i in 10..13 {
        put(&big, &key(i), &vec![2u8; LIMIT / 2]);
    }
    let pairs = retry("scan", || small.scan(&key(10), &key(13), 10));
    assert_eq!(
        pairs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        (10..13).map(key).collect::<Vec<_>>()
    );
    assert!(pairs.iter().all(|(_, v)| *v == vec![2u8; LIMIT / 2]));
    assert_eq!(retry("scan", || big.scan(&key(10), &key(13), 10)).len(), 3);
    // A pair that alone passes the limit cannot cross it: refused.
    put(&big, &key(15), &vec![3u8; LIMIT + 1024]);
    let err = small.scan(&key(15), &key(16), 10).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    assert!(!err.is_outcome_unknown() && !err.is_retryable(), "{err}");

    put(&small, &key(20), b"small");
    assert_eq!(
        retry("get", || small.get(&key(20))).as_deref(),
        Some(&b"small"[..])
    );
    cluster.shutdown();
}

/// The servers' message limit in the tests of a client with a larger one.
const SERVER_LIMIT: usize = 256 << 10;

/// A one-region networked cluster whose servers take messages of at most
/// [`SERVER_LIMIT`] bytes, and a client of the default (larger) limit.
fn small_limit_servers(dir: &tempfile::TempDir) -> (NetCluster, Client) {
    let net = NetConfig {
        max_message_bytes: SERVER_LIMIT,
        batch_bytes: SERVER_LIMIT / 4,
        ..NetConfig::default()
    };
    let cluster =
        NetCluster::bootstrap_with(dir.path(), 3, 1, fast_config(FAST_TICK_MS), net, &logger())
            .unwrap();
    assert!(wait_leaders(&cluster, 1));
    let client = cluster.remote_client_with(&NetConfig::default(), ClientConfig::default());
    (cluster, client)
}

/// A write past the *server's* message limit (this client's is larger, so
/// it sends it) is refused by the server before it runs: the error names
/// the server's limit, which the request passes, so the client reports a
/// definite `InvalidRequest`, not a write in doubt; the key is absent.
#[test]
fn a_write_past_the_servers_smaller_limit_is_refused_not_in_doubt() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = small_limit_servers(&dir);
    put(&client, &key(1), b"small");

    let err = client
        .put(&key(2), &vec![9u8; 2 * SERVER_LIMIT])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    assert!(!err.is_outcome_unknown() && !err.is_retryable(), "{err}");
    assert_eq!(retry("get", || client.get(&key(2))), None);
    assert_eq!(
        retry("get", || client.get(&key(1))).as_deref(),
        Some(&b"small"[..])
    );
    cluster.shutdown();
}

/// A server bounds its answers' scan pages by its own message limit: a
/// client with a larger limit (or one that asks no bound) pages through
/// pairs that together pass the server's limit instead of failing on an
/// answer the server could not send.
#[test]
fn a_scan_past_the_servers_smaller_limit_pages_through() {
    const PAIRS: u64 = 6;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = small_limit_servers(&dir);
    let value = vec![4u8; SERVER_LIMIT / 4];
    for i in 0..PAIRS {
        put(&client, &key(i), &value);
    }
    let pairs = retry("scan", || client.scan(&key(0), &key(PAIRS), 100));
    assert_eq!(pairs.len() as u64, PAIRS);
    assert!(pairs.iter().all(|(_, v)| *v == value));
    cluster.shutdown();
}

/// A CA and what it signs, for the TLS test.
struct Pki {
    ca_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        Pki {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    /// A TLS config whose certificate carries `names` (the server name
    /// `flotilla` among them) and serves only peers named `store`.
    fn tls(&self, names: &[&str]) -> flotilla_server::TlsConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        flotilla_server::TlsConfig {
            ca_pem: self.ca_pem.clone().into_bytes(),
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
            server_name: "flotilla".into(),
            allowed_names: vec!["store".into()],
        }
    }
}

/// Mutual TLS (issue #13 item 6): three stores replicate over TLS and a
/// client with a certificate of the cluster's CA is served; a client whose
/// certificate the CA did not sign, one the CA signed for a name not in
/// the allowlist, and a plaintext one are all refused.
#[test]
fn a_tls_cluster_refuses_a_wrong_certificate() {
    let pki = Pki::new();
    let net = NetConfig {
        tls: Some(pki.tls(&["flotilla", "store"])),
        ..NetConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster = NetCluster::bootstrap_with(
        dir.path(),
        3,
        2,
        fast_config(FAST_TICK_MS),
        net.clone(),
        &logger(),
    )
    .unwrap();
    assert!(wait_leaders(&cluster, 2));
    let client = cluster.remote_client_with(&net, ClientConfig::default());
    for i in 0..20 {
        put(&client, &key(i), &i.to_be_bytes());
    }
    for &id in cluster.store_ids() {
        let engine = cluster.store(id).unwrap().engine().clone();
        assert!(eventually(|| holds(&engine, 0..20)), "store {id}");
    }
    let quick = ClientConfig {
        operation_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    };
    let refused = |net: &NetConfig, who: &str| {
        let c = cluster.remote_client_with(net, quick.clone());
        assert!(c.get(&key(1)).is_err(), "{who} was served");
    };
    let other_ca = Pki::new();
    refused(
        &NetConfig {
            tls: Some(other_ca.tls(&["flotilla", "store"])),
            ..NetConfig::default()
        },
        "a certificate of another CA",
    );
    refused(
        &NetConfig {
            tls: Some(pki.tls(&["flotilla", "intruder"])),
            ..NetConfig::default()
        },
        "a certificate not in the allowlist",
    );
    refused(&NetConfig::default(), "a plaintext client");
    // The allowlist's refusal is a typed status, not a broken connection.
    let stranger = NetConfig {
        tls: Some(pki.tls(&["flotilla", "intruder"])),
        ..NetConfig::default()
    };
    let addr = cluster.addr(1).unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(
                    pki.ca_pem.as_bytes(),
                ))
                .identity(tonic::transport::Identity::from_pem(
                    &stranger.tls.as_ref().unwrap().cert_pem,
                    &stranger.tls.as_ref().unwrap().key_pem,
                ))
                .domain_name("flotilla"),
        )
        .unwrap();
    let status = cluster.runtime().block_on(async {
        let channel = endpoint.connect().await.expect("the handshake passes");
        flotilla_server::kvpb::kv_client::KvClient::new(channel)
            .store_info(flotilla_server::kvpb::StoreInfoRequest {})
            .await
            .expect_err("refused")
    });
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    // And the cluster still serves its own.
    assert_eq!(
        client.get(&key(3)).unwrap(),
        Some(3u64.to_be_bytes().to_vec())
    );
    cluster.shutdown();
}

/// Raft message types on the wire are `0..MESSAGE_TYPES`; a few past it
/// test an unknown type.
const MESSAGE_TYPES: i32 = 22;

/// A seeded random raft message for store `to` (the fields a forged or
/// corrupted sender could set; `real` are the region's actual peers).
fn random_message(rng: &mut ChaCha8Rng, to: u64, region: u64, real: &[Peer]) -> RaftMessage {
    let peer = |rng: &mut ChaCha8Rng, store: u64| {
        if !real.is_empty() && rng.random_bool(0.5) {
            let p = real[rng.random_range(0..real.len())];
            Peer {
                store_id: store,
                ..p
            }
        } else {
            Peer {
                id: rng.random_range(0..1_000_000),
                store_id: store,
                role: rng.random_range(0..3),
            }
        }
    };
    let big = |rng: &mut ChaCha8Rng| match rng.random_range(0..4) {
        0 => 0,
        1 => rng.random_range(1..20),
        2 => rng.random_range(1..1_000_000),
        _ => u64::MAX - rng.random_range(0..3),
    };
    let entries = (0..rng.random_range(0..3))
        .map(|_| flotilla_proto::eraftpb::Entry {
            entry_type: rng.random_range(0..4),
            term: big(rng),
            index: big(rng),
            data: (0..rng.random_range(0..16))
                .map(|_| rng.random())
                .collect::<Vec<u8>>()
                .into(),
            ..Default::default()
        })
        .collect();
    let snapshot = rng.random_bool(0.1).then(|| {
        Box::new(flotilla_proto::eraftpb::Snapshot {
            data: vec![rng.random(); rng.random_range(0..32)].into(),
            metadata: Some(flotilla_proto::eraftpb::SnapshotMetadata {
                index: big(rng),
                term: big(rng),
                ..Default::default()
            }),
        })
    });
    let from_store = rng.random_range(0..5);
    RaftMessage {
        region_id: region,
        from_peer: Some(peer(rng, from_store)),
        to_peer: Some(peer(rng, to)),
        message: Some(Message {
            msg_type: rng.random_range(-1..MESSAGE_TYPES),
            to: rng.random_range(0..1_000_000),
            from: rng.random_range(0..1_000_000),
            term: big(rng),
            log_term: big(rng),
            index: big(rng),
            commit: big(rng),
            reject: rng.random_bool(0.2),
            reject_hint: big(rng),
            entries,
            snapshot,
            ..Default::default()
        }),
        region_epoch: rng
            .random_bool(0.7)
            .then(|| flotilla_proto::metapb::RegionEpoch {
                conf_ver: big(rng),
                version: big(rng),
            }),
        is_tombstone: rng.random_bool(0.05),
        start_key: vec![rng.random(); rng.random_range(0..4)].into(),
        end_key: vec![rng.random(); rng.random_range(0..4)].into(),
        ..Default::default()
    }
}

/// Seeded random raft messages over the wire (forged peers, unknown
/// regions and types, huge terms and indexes, garbage entries and
/// snapshots): first only to regions the stores do not host, after which
/// every region must still serve; then to the real regions too, after
/// which no store may have stopped or died (a forged sender may disturb
/// raft, which trusts its peers, but must not crash a store). The seed
/// is printed; `SIM_SEED` replays one.
#[test]
fn random_raft_messages_on_the_wire_do_not_crash_a_store() {
    let seed = flotilla_tests::workload::history_seed(20261202);
    println!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        NetCluster::bootstrap(dir.path(), 3, 2, fast_config(FAST_TICK_MS), &logger()).unwrap();
    assert!(wait_leaders(&cluster, 2));
    let client = cluster.client(ClientConfig::default());
    for i in 0..10 {
        put(&client, &key(i), &i.to_be_bytes());
    }
    let regions: Vec<(u64, Vec<Peer>)> = cluster
        .regions()
        .iter()
        .map(|r| (r.id, r.peers.clone()))
        .collect();
    let send = |to: u64, msgs: Vec<RaftMessage>| {
        let addr = cluster.addr(to).expect("running");
        let batch = RaftBatch {
            cluster_id: CLUSTER,
            from_store: 9,
            to_store: to,
            msgs,
        };
        cluster.runtime().block_on(async {
            let mut c = RaftTransportClient::connect(format!("http://{addr}"))
                .await
                .expect("connect");
            c.raft(tokio_stream::iter(vec![batch])).await
        })
    };
    // Unknown regions only.
    for _ in 0..RANDOM_BATCHES {
        let to = rng.random_range(1..=3);
        let region = [0, 999, u64::MAX][rng.random_range(0..3)];
        let msgs = (0..MESSAGES_PER_BATCH)
            .map(|_| random_message(&mut rng, to, region, &[]))
            .collect();
        send(to, msgs).expect("a well-formed batch is taken");
    }
    for i in 0..10 {
        assert_eq!(
            retry("get", || client.get(&key(i))),
            Some(i.to_be_bytes().to_vec()),
            "seed {seed}"
        );
    }
    put(&client, &key(100), b"after");
    // Real regions too.
    for _ in 0..RANDOM_BATCHES {
        let to = rng.random_range(1..=3);
        let (region, peers) = &regions[rng.random_range(0..regions.len())];
        let msgs = (0..MESSAGES_PER_BATCH)
            .map(|_| random_message(&mut rng, to, *region, peers))
            .collect();
        send(to, msgs).expect("a well-formed batch is taken");
    }
    std::thread::sleep(Duration::from_millis(300));
    for &id in cluster.store_ids() {
        let store = cluster.store(id).unwrap();
        assert!(
            store.fatal_error().is_none(),
            "seed {seed}: store {id} stopped: {:?}",
            store.fatal_error()
        );
        assert!(
            !store.handle().is_stopped(),
            "seed {seed}: store {id} stopped"
        );
    }
    cluster.shutdown();
}

/// Batches of random messages per phase of the random-message test.
const RANDOM_BATCHES: usize = 40;
/// Messages per random batch.
const MESSAGES_PER_BATCH: usize = 25;

/// A store whose server is down is refused by the others' transports
/// once its link fails, and the leaders hear it is unreachable (their
/// appends to it stop, they probe); restarted, it catches up.
#[test]
fn a_down_store_is_reported_unreachable_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        NetCluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    assert!(wait_leaders(&cluster, 1));
    let client = cluster.client(ClientConfig::default());
    put(&client, &key(0), &0u64.to_be_bytes());
    let down = follower_store(&cluster);
    assert!(cluster.stop_store(down));
    let reports = |c: &NetCluster| -> u64 {
        c.store_ids()
            .iter()
            .filter_map(|&id| c.store(id))
            .map(|s| s.metrics().unreachable_reports.load(Ordering::Relaxed))
            .sum()
    };
    let mut i = 1;
    assert!(
        eventually(|| {
            put(&client, &key(i), &i.to_be_bytes());
            i += 1;
            reports(&cluster) > 0
        }),
        "no leader heard the store was unreachable"
    );
    let written = i;
    cluster.start_store(down).unwrap();
    let engine = cluster.store(down).unwrap().engine().clone();
    assert!(
        eventually(|| holds(&engine, 0..written)),
        "the restarted store did not catch up"
    );
    cluster.shutdown();
}

/// A concurrent workload through the client service (every request and
/// every raft message over gRPC) while one store is cut off and healed,
/// then stopped and restarted on a new port: the recorded history must be
/// linearizable per key. The seed is printed; `SIM_SEED` replays one.
#[test]
fn history_over_the_network_is_linearizable_through_a_cut_and_a_restart() {
    use flotilla_tests::linearizability::History;
    use flotilla_tests::workload::{Workload, check_history, history_seed, spawn_history_clients};
    let w = Workload {
        clients: 4,
        keys: 3,
        ops_per_client: 80,
        pause: Duration::from_millis(10),
        seed: history_seed(11),
    };
    println!("seed {}", w.seed);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        NetCluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    assert!(wait_leaders(&cluster, 1));
    let client = Arc::new(cluster.remote_client(ClientConfig {
        request_timeout: Duration::from_millis(500),
        max_attempts: 10,
        ..ClientConfig::default()
    }));
    let history: Arc<History<u64, u64>> = Arc::new(History::new());
    let workers = spawn_history_clients(&client, &history, w);
    std::thread::sleep(Duration::from_millis(200));
    // Cut store 1 off (it may lead), then heal.
    let others = [2, 3];
    cluster.transport(1).unwrap().block(2);
    cluster.transport(1).unwrap().block(3);
    for o in others {
        cluster.transport(o).unwrap().block(1);
    }
    std::thread::sleep(Duration::from_millis(400));
    cluster.transport(1).unwrap().unblock(2);
    cluster.transport(1).unwrap().unblock(3);
    for o in others {
        cluster.transport(o).unwrap().unblock(1);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(cluster.stop_store(2));
    std::thread::sleep(Duration::from_millis(300));
    cluster.start_store(2).unwrap();
    check_history(workers, &history, w.seed, HISTORY_MIN_OPS);
    cluster.shutdown();
}

/// Operations the network history must complete at least.
const HISTORY_MIN_OPS: usize = 60;
