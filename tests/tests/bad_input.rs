//! Bad input as a user would send it: raw `RaftCmdRequest`s proposed
//! through the public [`StoreHandle::propose`] to a real 3-store cluster on
//! RocksDB (two regions, in a temp dir). Every malformed, misrouted or
//! oversized request must be answered with its precise typed error, write
//! nothing, and leave the cluster serving.
//!
//! Validation runs before the leadership check, so the refusals asserted
//! here do not depend on which store leads; only the requests that must
//! succeed (limits exactly at the boundary, the final reads and writes) go
//! to the current leader, with retries.

use std::time::{Duration, Instant};

use flotilla_proto::ProstMessage;
use flotilla_proto::eraftpb::ConfChangeType;
use flotilla_proto::metapb::{Peer, PeerRole, Region};
use flotilla_proto::raft_cmdpb::{
    AdminRequest, ChangePeerRequest, ChangePeerV2Request, CommitMergeRequest, CompactLogRequest,
    PrepareMergeRequest, RaftCmdRequest, RaftCmdResponse, Request, admin_request, request,
    response,
};
use flotilla_raftstore::store::{
    AdminError, Client, ClientConfig, Cluster, Config, Error, StoreHandle, region_states,
};
use flotilla_tests::harness::{FAST_TICK_MS, SETTLE, fast_config, logger, wait_leader};
use flotilla_tests::requests::{
    command, delete, delete_range, get, propose_to, propose_via, put, scan,
};

/// Largest entry the test stores accept (bytes).
const ENTRY_MAX: u64 = 64 << 10;
/// Most pairs a scan may ask for in the test stores.
const MAX_SCAN: u32 = 100;
/// Failure guard for one answer; bad requests are answered at once.
const ANSWER: Duration = Duration::from_secs(10);
/// Region 1 covers `["", 0x80..)`; these keys lie in it.
const IN_REGION_1: [&[u8]; 3] = [b"a", b"b", b"c"];

fn config() -> Config {
    Config {
        entry_max_size: ENTRY_MAX,
        max_scan_limit: MAX_SCAN,
        ..fast_config(FAST_TICK_MS)
    }
}

/// Three stores, two regions, every region with a leader.
fn cluster(dir: &tempfile::TempDir) -> Cluster {
    let cluster = Cluster::bootstrap(dir.path(), 3, 2, config(), &logger()).expect("bootstrap");
    for r in cluster.regions() {
        wait_leader(&cluster, r.id).expect("leader elected");
    }
    cluster
}

fn client(cluster: &Cluster) -> Client {
    let cfg = ClientConfig {
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    Client::new(cluster.stores(), cluster.regions(), cfg)
}

fn region(cluster: &Cluster, id: u64) -> Region {
    cluster.regions()[usize::try_from(id - 1).unwrap()].clone()
}

/// Proposes `req` through `handle` and waits for the answer.
fn propose(handle: &StoreHandle, req: RaftCmdRequest) -> Result<RaftCmdResponse, Error> {
    propose_via(handle, req, ANSWER)
}

/// Proposes `req` to the running store `store_id`.
fn send(cluster: &Cluster, store_id: u64, req: RaftCmdRequest) -> Result<RaftCmdResponse, Error> {
    propose_to(cluster, store_id, req, ANSWER)
}

/// Sends `cmds` to `region`'s current leader, retrying while leadership
/// moves; any other answer is returned.
fn send_to_leader(
    cluster: &Cluster,
    region: &Region,
    cmds: Vec<request::Cmd>,
) -> Result<RaftCmdResponse, Error> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let leader = wait_leader(cluster, region.id).expect("leader");
        match send(cluster, leader, command(region, leader, cmds.clone())) {
            Err(Error::NotLeader { .. }) if Instant::now() < deadline => continue,
            other => return other,
        }
    }
}

/// Asserts `res` is `Error::InvalidRequest`.
#[track_caller]
fn assert_invalid(res: Result<RaftCmdResponse, Error>, what: &str) {
    match res {
        Err(Error::InvalidRequest(reason)) => assert!(!reason.is_empty(), "{what}"),
        other => panic!("{what}: expected InvalidRequest, got {other:?}"),
    }
}

/// Writes `IN_REGION_1` keys, each with its own name as value.
fn write_abc(client: &Client) {
    for k in IN_REGION_1 {
        client.put(k, k).expect("put");
    }
}

/// Asserts `IN_REGION_1` keys all hold their value, and nothing else lies
/// between them.
fn assert_abc_intact(client: &Client) {
    for k in IN_REGION_1 {
        assert_eq!(client.get(k).expect("get").as_deref(), Some(k), "{k:?}");
    }
    let pairs = client.scan(b"a", b"d", 10).expect("scan");
    let want: Vec<(Vec<u8>, Vec<u8>)> = IN_REGION_1
        .iter()
        .map(|k| (k.to_vec(), k.to_vec()))
        .collect();
    assert_eq!(pairs, want);
}

/// A write and a read-back succeed in every region of `ids`.
fn assert_serving(cluster: &Cluster, ids: &[u64]) {
    let client = client(cluster);
    for &id in ids {
        let key = [&region(cluster, id).start_key[..], b"still-serving"].concat();
        client.put(&key, b"yes").expect("put after bad input");
        assert_eq!(client.get(&key).expect("get").as_deref(), Some(&b"yes"[..]));
    }
}

/// The poison `DeleteRange { start: "b", end: "a" }` is refused with
/// `InvalidRequest` at the leader, as are the empty range `["b", "b")`
/// (`InvalidRequest`) and a range ending past the region's end
/// (`KeyNotInRegion` naming that end and region 1's bounds); none deletes
/// anything, and both regions keep serving.
#[test]
fn poison_delete_range_is_refused_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir);
    let client = client(&cluster);
    write_abc(&client);
    let r1 = region(&cluster, 1);
    let leader = wait_leader(&cluster, 1).expect("leader");
    let send_cmd = |c| send(&cluster, leader, command(&r1, leader, vec![c]));

    assert_invalid(send_cmd(delete_range(b"b", b"a")), "inverted range");
    assert_invalid(send_cmd(delete_range(b"b", b"b")), "empty range");
    let past_end = [&r1.end_key[..], b"x"].concat();
    assert_eq!(
        send_cmd(delete_range(b"b", &past_end)).err(),
        Some(Error::KeyNotInRegion {
            key: past_end.clone(),
            region_id: 1,
            start_key: r1.start_key.to_vec(),
            end_key: r1.end_key.to_vec(),
        })
    );
    assert_abc_intact(&client);
    assert_serving(&cluster, &[1, 2]);
    assert_abc_intact(&client);
    cluster.shutdown();
}

/// The poison `DeleteRange { "b", "a" }` sent to a follower is refused
/// with `InvalidRequest` too (validation comes before the leadership
/// check), observed at least once while a harmless `Get` at the same store
/// just before and after answered `NotLeader`; nothing is deleted.
#[test]
fn poison_delete_range_is_refused_at_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir);
    let client = client(&cluster);
    write_abc(&client);
    let r1 = region(&cluster, 1);
    let deadline = Instant::now() + SETTLE;
    let mut confirmed_follower = false;
    while !confirmed_follower {
        assert!(Instant::now() < deadline, "never saw a stable follower");
        let leader = wait_leader(&cluster, 1).expect("leader");
        for &f in cluster.store_ids().iter().filter(|&&s| s != leader) {
            let probe = || send(&cluster, f, command(&r1, f, vec![get(b"a")]));
            let before = probe();
            let poison = send(&cluster, f, command(&r1, f, vec![delete_range(b"b", b"a")]));
            let after = probe();
            assert_invalid(poison, "poison at a follower");
            let not_leader =
                |r: &Result<_, _>| matches!(r, Err(Error::NotLeader { region_id: 1, .. }));
            confirmed_follower |= not_leader(&before) && not_leader(&after);
        }
    }
    assert_abc_intact(&client);
    assert_serving(&cluster, &[1]);
    cluster.shutdown();
}

/// Empty keys (`Put`, `Get`, `Delete`) and keys one byte over
/// `max_key_size` are refused with `InvalidRequest`; a key of exactly
/// `max_key_size` is accepted. A `Put` whose encoded command exceeds
/// `entry_max_size` (64 KiB) is refused with `EntryTooLarge` carrying the
/// region and the command's encoded size, while one of exactly
/// `entry_max_size` is accepted.
#[test]
fn bad_keys_and_oversized_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir);
    let r1 = region(&cluster, 1);
    let leader = wait_leader(&cluster, 1).expect("leader");
    let send_cmd = |c| send(&cluster, leader, command(&r1, leader, vec![c]));

    assert_invalid(send_cmd(put(b"", b"v")), "empty key put");
    assert_invalid(send_cmd(get(b"")), "empty key get");
    assert_invalid(send_cmd(delete(b"")), "empty key delete");
    let max_key = config().max_key_size;
    let long = vec![b'k'; max_key + 1];
    assert_invalid(send_cmd(put(&long, b"v")), "long key put");
    assert_invalid(send_cmd(get(&long)), "long key get");
    assert_invalid(send_cmd(delete(&long)), "long key delete");
    let longest = vec![b'k'; max_key];
    send_to_leader(&cluster, &r1, vec![put(&longest, b"v")]).expect("key of max_key_size");

    // The largest value whose command encodes to at most ENTRY_MAX bytes.
    let encoded = |len: usize| {
        let req = command(&r1, leader, vec![put(b"big", &vec![0; len])]);
        req.encoded_len() as u64
    };
    let mut fits = usize::try_from(ENTRY_MAX).unwrap();
    while encoded(fits) > ENTRY_MAX {
        fits -= 1;
    }
    assert_eq!(encoded(fits), ENTRY_MAX, "a value hits the limit exactly");
    let too_big = command(&r1, leader, vec![put(b"big", &vec![1; fits + 1])]);
    let size = too_big.encoded_len() as u64;
    assert_eq!(
        send(&cluster, leader, too_big).err(),
        Some(Error::EntryTooLarge {
            region_id: 1,
            entry_size: size,
        })
    );
    send_to_leader(&cluster, &r1, vec![put(b"big", &vec![0; fits])]).expect("entry at the limit");

    let client = client(&cluster);
    assert_eq!(client.get(&longest).unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(client.get(b"big").unwrap().map(|v| v.len()), Some(fits));
    assert_serving(&cluster, &[1]);
    cluster.shutdown();
}

/// Scans with limit 0, with `end < start`, or with a limit over
/// `max_scan_limit` are refused with `InvalidRequest`; a scan at exactly
/// `max_scan_limit` is served.
#[test]
fn malformed_scans_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir);
    let client = client(&cluster);
    write_abc(&client);
    let r1 = region(&cluster, 1);
    let leader = wait_leader(&cluster, 1).expect("leader");
    let send_cmd = |c| send(&cluster, leader, command(&r1, leader, vec![c]));

    assert_invalid(send_cmd(scan(b"a", b"", 0)), "scan limit 0");
    assert_invalid(send_cmd(scan(b"c", b"b", 10)), "inverted scan");
    assert_invalid(send_cmd(scan(b"a", b"", MAX_SCAN + 1)), "scan over limit");
    let resp = send_to_leader(&cluster, &r1, vec![scan(b"a", b"d", MAX_SCAN)]).expect("scan");
    match resp.responses.into_iter().next().and_then(|r| r.cmd) {
        Some(response::Cmd::Scan(s)) => assert_eq!(s.kvs.len(), IN_REGION_1.len()),
        other => panic!("expected a scan response, got {other:?}"),
    }
    assert_serving(&cluster, &[1]);
    cluster.shutdown();
}

/// A command mixing a `Put` and a `Get`, a request with `cmd: None`, an
/// empty request list and an admin command are each refused with
/// `InvalidRequest`, and the mixed command's `Put` is not applied. So are
/// conf changes of an unknown type or of too many peers; an admin command
/// past the entry size limit gets `EntryTooLarge`. The membership stays.
#[test]
fn malformed_commands_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir);
    let r1 = region(&cluster, 1);
    let leader = wait_leader(&cluster, 1).expect("leader");
    let well_formed = || command(&r1, leader, vec![put(b"mixed", b"v")]);

    let mixed = command(&r1, leader, vec![put(b"mixed", b"v"), get(b"a")]);
    assert_invalid(send(&cluster, leader, mixed), "put and get mixed");
    let mut no_cmd = well_formed();
    no_cmd.requests.push(Request { cmd: None });
    assert_invalid(send(&cluster, leader, no_cmd), "request without cmd");
    let mut empty = well_formed();
    empty.requests.clear();
    assert_invalid(send(&cluster, leader, empty), "no requests");
    let mut admin = well_formed();
    admin.requests.clear();
    admin.admin_request = Some(AdminRequest {
        cmd: Some(admin_request::Cmd::PrepareMerge(
            PrepareMergeRequest::default(),
        )),
    });
    // A merge without a target, into itself, and the store's own merge
    // steps sent by a client: refused, nothing proposed.
    assert_invalid(
        send(&cluster, leader, admin.clone()),
        "merge without a target",
    );
    admin.admin_request = Some(AdminRequest {
        cmd: Some(admin_request::Cmd::PrepareMerge(PrepareMergeRequest {
            min_index: 0,
            target: Some(r1.clone()),
        })),
    });
    assert!(matches!(
        send(&cluster, leader, admin.clone()),
        Err(Error::Admin(AdminError::MergeIntoSelf { region_id: 1 }))
    ));
    admin.admin_request = Some(AdminRequest {
        cmd: Some(admin_request::Cmd::CommitMerge(CommitMergeRequest {
            source: Some(r1.clone()),
            commit: 5,
            entries: Vec::new(),
        })),
    });
    assert_invalid(send(&cluster, leader, admin), "a client's commit_merge");
    // A CompactLog past the applied index is refused typed; one at 0
    // (below the log) does nothing and succeeds.
    let mut compact = well_formed();
    compact.requests.clear();
    compact.admin_request = Some(AdminRequest {
        cmd: Some(admin_request::Cmd::CompactLog(CompactLogRequest {
            compact_index: u64::MAX,
            compact_term: 0,
        })),
    });
    assert!(matches!(
        send(&cluster, leader, compact.clone()),
        Err(Error::Admin(AdminError::CompactIndexAhead { .. }))
    ));
    compact.admin_request = Some(AdminRequest {
        cmd: Some(admin_request::Cmd::CompactLog(CompactLogRequest::default())),
    });
    assert!(send(&cluster, leader, compact).is_ok());
    let mut no_admin_cmd = well_formed();
    no_admin_cmd.requests.clear();
    no_admin_cmd.admin_request = Some(AdminRequest { cmd: None });
    assert_invalid(
        send(&cluster, leader, no_admin_cmd),
        "admin request without cmd",
    );

    // Conf changes: a change type this version does not know (prost
    // would read it as AddNode while raft refuses it, and the region and
    // raft would disagree on the membership), more changes than one
    // request may carry, and an admin entry past the entry size limit.
    let ghost = |i: u64| Peer {
        id: 1_000 + i,
        store_id: 100 + i,
        role: PeerRole::Learner as i32,
    };
    let change = |change_type: i32, peer: Peer| ChangePeerRequest {
        change_type,
        peer: Some(peer),
    };
    let conf_change = |changes: Vec<ChangePeerRequest>| {
        let mut req = well_formed();
        req.requests.clear();
        req.admin_request = Some(AdminRequest {
            cmd: Some(admin_request::Cmd::ChangePeerV2(ChangePeerV2Request {
                changes,
            })),
        });
        req
    };
    let unknown = conf_change(vec![change(7, ghost(0))]);
    assert_invalid(send(&cluster, leader, unknown), "unknown change type");
    let learner = ConfChangeType::AddLearnerNode as i32;
    let many = conf_change((0..40).map(|i| change(learner, ghost(i))).collect());
    assert_invalid(send(&cluster, leader, many), "40 changes at once");
    let huge = conf_change((0..8_000).map(|i| change(learner, ghost(i))).collect());
    assert!(matches!(
        send(&cluster, leader, huge),
        Err(Error::EntryTooLarge { region_id: 1, .. })
    ));
    let engine = cluster.store(leader).unwrap().engine();
    let membership = region_states(engine)
        .unwrap()
        .into_iter()
        .find_map(|s| s.region.filter(|r| r.id == 1))
        .unwrap();
    assert_eq!(membership.peers, r1.peers, "the membership changed");

    assert_eq!(client(&cluster).get(b"mixed").unwrap(), None);
    assert_serving(&cluster, &[1]);
    cluster.shutdown();
}

/// A request without a header is malformed, so it is refused with
/// `InvalidRequest` (as `Error::InvalidRequest`'s documentation and the
/// peer's own header check say), not with a retryable routing error.
#[test]
fn missing_header_is_invalid_request() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir);
    let r1 = region(&cluster, 1);
    let leader = wait_leader(&cluster, 1).expect("leader");
    let mut req = command(&r1, leader, vec![put(b"headless", b"v")]);
    req.header = None;
    assert_invalid(send(&cluster, leader, req), "missing header");
    assert_eq!(client(&cluster).get(b"headless").unwrap(), None);
    assert_serving(&cluster, &[1]);
    cluster.shutdown();
}

/// Misrouted requests get routing errors: an unknown region id
/// `RegionNotFound(id)`; a stale epoch (`version - 1` or `version + 1`)
/// `EpochNotMatch` carrying exactly the current region; a header peer on
/// another store `StoreNotMatch` naming both stores. Checked on both
/// regions.
#[test]
fn misrouted_requests_get_routing_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir);
    for id in [1, 2] {
        let r = region(&cluster, id);
        let leader = wait_leader(&cluster, id).expect("leader");
        let key = [&r.start_key[..], b"k"].concat();
        let req = || command(&r, leader, vec![put(&key, b"v")]);

        let mut unknown = req();
        unknown.header.as_mut().unwrap().region_id = 999;
        assert_eq!(
            send(&cluster, leader, unknown).err(),
            Some(Error::RegionNotFound(999))
        );

        let version = r.region_epoch.unwrap().version;
        for stale in [version - 1, version + 1] {
            let mut req = req();
            let header = req.header.as_mut().unwrap();
            header.region_epoch.as_mut().unwrap().version = stale;
            assert_eq!(
                send(&cluster, leader, req).err(),
                Some(Error::EpochNotMatch {
                    current_regions: vec![r.clone()],
                }),
                "region {id}, version {stale}"
            );
        }

        let other = cluster
            .store_ids()
            .iter()
            .copied()
            .find(|&s| s != leader)
            .unwrap();
        let mut wrong_store = req();
        wrong_store.header.as_mut().unwrap().peer =
            r.peers.iter().find(|p| p.store_id == other).copied();
        assert_eq!(
            send(&cluster, leader, wrong_store).err(),
            Some(Error::StoreNotMatch {
                request_store_id: other,
                actual_store_id: leader,
            })
        );
        assert_eq!(client(&cluster).get(&key).unwrap(), None, "nothing written");
    }
    assert_serving(&cluster, &[1, 2]);
    cluster.shutdown();
}

/// A request through the handle of a store that was stopped (region 1's
/// leader) is answered `StoreStopped { in_flight: false }`, for a valid
/// and for a malformed request alike; the remaining two stores elect new
/// leaders and keep serving both regions.
#[test]
fn stopped_store_answers_store_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(&dir);
    let r1 = region(&cluster, 1);
    let victim = wait_leader(&cluster, 1).expect("leader");
    let handle = cluster.store(victim).expect("running").handle();
    assert!(cluster.stop_store(victim));
    assert!(handle.is_stopped());

    let stopped = Some(Error::StoreStopped { in_flight: false });
    let valid = command(&r1, victim, vec![put(b"a", b"after-stop")]);
    assert_eq!(propose(&handle, valid).err(), stopped);
    let poison = command(&r1, victim, vec![delete_range(b"b", b"a")]);
    assert_eq!(propose(&handle, poison).err(), stopped);

    assert_serving(&cluster, &[1, 2]);
    assert_eq!(client(&cluster).get(b"a").unwrap(), None, "nothing written");
    cluster.shutdown();
}

/// Garbage raft messages, delivered through the public `MessageSink` of a
/// store as a hostile or broken peer would send them, are refused by the
/// consensus core (`InvalidMessage`) without touching any state: a term
/// of `u64::MAX` (taken, it moved every peer of region 1 to a term no
/// election could follow, and the region never served again), an append
/// whose entry reaches back under the follower's commit index (it tripped
/// an assertion and stopped the follower's store), an append whose indexes
/// overflow, and an append response past the leader's log. Afterwards no
/// store has stopped, no peer of region 1 is at a term past `MAX_TERM`,
/// and both regions serve.
#[test]
fn garbage_raft_messages_are_refused_and_the_regions_serve() {
    use flotilla_proto::eraftpb::{Entry, Message, MessageType};
    use flotilla_proto::raft_serverpb::RaftMessage;
    use flotilla_raftstore::raft::MAX_TERM;
    use flotilla_raftstore::store::MessageSink;

    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(&dir);
    let r1 = region(&cluster, 1);
    write_abc(&client(&cluster));
    let leader = wait_leader(&cluster, 1).expect("leader");
    let follower = cluster
        .store_ids()
        .iter()
        .copied()
        .find(|&s| s != leader)
        .unwrap();
    let peer_on = |s: u64| *r1.peers.iter().find(|p| p.store_id == s).unwrap();
    let status = |s: u64| {
        cluster
            .store(s)
            .unwrap()
            .handle()
            .region_status(1, ANSWER)
            .expect("status")
    };
    let st = status(follower);
    let wrap = |from: u64, to: u64, m: Message| RaftMessage {
        region_id: 1,
        from_peer: Some(peer_on(from)),
        to_peer: Some(peer_on(to)),
        region_epoch: r1.region_epoch,
        message: Some(Message {
            from: peer_on(from).id,
            to: peer_on(to).id,
            ..m
        }),
        ..Default::default()
    };
    let raft = |t: MessageType, term, index, log_term, entries: &[(u64, u64)]| Message {
        msg_type: t as i32,
        term,
        index,
        log_term,
        entries: entries
            .iter()
            .map(|&(index, term)| Entry {
                index,
                term,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let (t, c) = (st.term, st.commit_index);
    let garbage = [
        wrap(
            leader,
            follower,
            raft(MessageType::MsgHeartbeat, u64::MAX, 0, 0, &[]),
        ),
        // An entry of a newer term at an index the follower committed.
        wrap(
            leader,
            follower,
            raft(MessageType::MsgAppend, t + 1, c, t, &[(c - 1, t + 1)]),
        ),
        wrap(
            leader,
            follower,
            raft(MessageType::MsgAppend, t, u64::MAX, t, &[(0, t)]),
        ),
        wrap(
            follower,
            leader,
            raft(MessageType::MsgAppendResponse, t, u64::MAX, 0, &[]),
        ),
    ];
    for m in garbage {
        let to = m.to_peer.unwrap().store_id;
        cluster.store(to).unwrap().handle().deliver(m);
        // The peer steps its messages in order: once it answers this, it
        // has stepped the garbage.
        status(to);
    }
    assert_serving(&cluster, &[1, 2]);
    assert_abc_intact(&client(&cluster));
    for &s in cluster.store_ids() {
        assert!(
            cluster.store(s).unwrap().fatal_error().is_none(),
            "store {s} stopped"
        );
        assert!(
            status(s).term <= MAX_TERM,
            "store {s}: term {}",
            status(s).term
        );
    }
    cluster.shutdown();
}
