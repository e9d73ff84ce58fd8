//! Conf change (issue #11 items 4-5, admin.md phases D-E): a learner added
//! on a new store is created there by its leader's first heartbeat,
//! initialized by a snapshot, promoted once caught up; a removed peer is
//! destroyed (tombstone, no log, no data) and late messages never bring it
//! back, while a newer peer on the same store may be added again. Refusals
//! are typed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_engine::{Cf, Engine, keys};
use flotilla_proto::ProstMessage as _;
use flotilla_proto::eraftpb::{ConfChangeType, Message, MessageType};
use flotilla_proto::metapb::{Peer, PeerRole, Region, RegionEpoch};
use flotilla_proto::raft_serverpb::{PeerState, RaftMessage, RegionLocalState, RemovedPeer};
use flotilla_raftstore::store::{
    AdminError, Client, ClientConfig, Cluster, Config, Error, Filter, MessageSink,
};
use flotilla_tests::harness::{
    FAST_TICK_MS, eventually, fast_config, holds_values, logger, wait_leader,
};

/// The region the tests change.
const REGION: u64 = 1;
/// Keys written before each change.
const KEYS: u64 = 40;
/// How long a test waits for a store's answer.
const ANSWER: Duration = Duration::from_secs(10);

fn config() -> Config {
    fast_config(FAST_TICK_MS)
}

fn key(i: u64) -> Vec<u8> {
    format!("cc{i:05}").into_bytes()
}

fn write(client: &Client, range: std::ops::Range<u64>) {
    for i in range {
        client.put(&key(i), &i.to_be_bytes()).expect("put");
    }
}

fn holds(engine: &Engine, range: std::ops::Range<u64>) -> bool {
    holds_values(engine, range, key)
}

fn region_state(engine: &Engine) -> Option<RegionLocalState> {
    engine
        .get_msg(Cf::Raft, &keys::region_state_key(REGION))
        .expect("read region state")
}

fn state_is(engine: &Engine, want: PeerState) -> bool {
    region_state(engine).is_some_and(|s| s.state() == want)
}

/// The region's records of its removed peers on a store, with the
/// conf_ver of each removal.
fn removal_records(engine: &Engine) -> Vec<(Peer, u64)> {
    let (lo, hi) = keys::removed_peers_range(REGION);
    let mut records = Vec::new();
    engine
        .snapshot()
        .scan(Cf::Raft, &lo, &hi, |_, v| {
            let r = RemovedPeer::decode(v).expect("a removed-peer record");
            records.push((r.peer.expect("a peer"), r.conf_ver));
            std::ops::ControlFlow::Continue(())
        })
        .expect("scan");
    records
}

fn peer_on(region: &Region, store: u64) -> Option<Peer> {
    region.peers.iter().find(|p| p.store_id == store).copied()
}

/// Three stores with the region, its leader's store, and a client that
/// wrote keys `0..KEYS`.
fn started(dir: &tempfile::TempDir) -> (Cluster, u64, Client) {
    flotilla_tests::harness::three_stores_serving(dir.path(), |c| write(c, 0..KEYS))
}

/// The store of the three that is neither `a` nor `b`.
fn third_store(cluster: &Cluster, a: u64, b: u64) -> u64 {
    *cluster
        .store_ids()
        .iter()
        .find(|&&s| s != a && s != b)
        .expect("a third store")
}

/// A store other than `leader`'s, and its peer of the region.
fn a_follower(cluster: &Cluster, leader: u64) -> (u64, Peer) {
    let store = *cluster
        .store_ids()
        .iter()
        .find(|&&s| s != leader)
        .expect("a follower");
    (store, peer_on(&cluster.regions()[0], store).unwrap())
}

fn admin_err(r: Result<Region, Error>) -> AdminError {
    match r {
        Err(Error::Admin(e)) => e,
        other => panic!("not an admin refusal: {other:?}"),
    }
}

/// Changes the membership, retrying while the last change is still being
/// applied or a learner catches up.
fn change(client: &Client, t: ConfChangeType, peer: Peer) -> Region {
    let mut last = None;
    for _ in 0..200 {
        match client.change_peer(REGION, t, peer) {
            Ok(r) => return r,
            Err(Error::Admin(
                AdminError::ConfChangePending { .. }
                | AdminError::LearnerNotCaughtUp { .. }
                | AdminError::ConfChangeInJoint { .. },
            )) => {}
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("{t:?} of {peer:?}: {e}"),
        }
        last = Some(());
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{t:?} of {peer:?} never applied ({last:?})");
}

/// admin.md scenario 10 (`add_learner_snapshot_promote`): a learner on a
/// new store is created by a message, initialized by a snapshot (it holds
/// every key written before), follows the log, is promoted to voter, and
/// keeps everything across a restart. conf_ver moves by one per change.
#[test]
fn add_learner_snapshot_promote() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = started(&dir);
    cluster.add_store(4).unwrap();
    let id = cluster.store(leader).unwrap().alloc_id().unwrap();
    let learner = Peer {
        id,
        store_id: 4,
        role: PeerRole::Learner as i32,
    };
    let conf_ver = cluster.regions()[0].region_epoch.unwrap().conf_ver;
    let region = change(&client, ConfChangeType::AddLearnerNode, learner);
    assert_eq!(region.region_epoch.unwrap().conf_ver, conf_ver + 1);
    assert_eq!(
        peer_on(&region, 4).map(|p| p.role()),
        Some(PeerRole::Learner)
    );

    let engine = cluster.store(4).unwrap().engine().clone();
    assert!(
        eventually(|| holds(&engine, 0..KEYS) && state_is(&engine, PeerState::Normal)),
        "the learner was not initialized: {:?}",
        region_state(&engine)
    );
    let m = cluster.store(4).unwrap().metrics();
    assert_eq!(m.peers_created.load(Ordering::Relaxed), 1);
    assert!(eventually(
        || m.snapshots_applied.load(Ordering::Relaxed) == 1
    ));
    write(&client, KEYS..KEYS + 10);
    assert!(
        eventually(|| holds(&engine, KEYS..KEYS + 10)),
        "the learner does not follow the log"
    );

    let region = change(&client, ConfChangeType::AddNode, learner);
    assert_eq!(region.region_epoch.unwrap().conf_ver, conf_ver + 2);
    assert_eq!(peer_on(&region, 4).map(|p| p.role()), Some(PeerRole::Voter));
    assert!(eventually(|| region_state(&engine)
        .and_then(|s| s.region)
        .is_some_and(
            |r| peer_on(&r, 4).is_some_and(|p| p.role() == PeerRole::Voter)
        )));
    write(&client, KEYS + 10..KEYS + 20);
    assert!(eventually(|| holds(&engine, KEYS + 10..KEYS + 20)));

    drop(engine);
    cluster.stop_store(4);
    cluster.start_store(4).unwrap();
    let engine = cluster.store(4).unwrap().engine().clone();
    assert!(holds(&engine, 0..KEYS + 20), "data lost across the restart");
    write(&client, KEYS + 20..KEYS + 30);
    assert!(eventually(|| holds(&engine, KEYS + 20..KEYS + 30)));
    for &s in cluster.store_ids() {
        assert!(
            cluster.store(s).unwrap().fatal_error().is_none(),
            "store {s} stopped"
        );
    }
    cluster.shutdown();
}

/// A pre-vote from the region's other peer to `to` on `store`, as an
/// isolated old peer would send.
fn pre_vote(region: &Region, store: u64, to: Peer) -> RaftMessage {
    let from = *region
        .peers
        .iter()
        .find(|p| p.store_id != store)
        .expect("another peer");
    RaftMessage {
        region_id: REGION,
        from_peer: Some(from),
        to_peer: Some(to),
        region_epoch: region.region_epoch,
        message: Some(Message {
            msg_type: MessageType::MsgRequestPreVote as i32,
            from: from.id,
            to: to.id,
            term: 100,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// admin.md scenario 9 (`removed_peer_never_resurrects`): a removed
/// follower is destroyed (its region a tombstone naming it, its log,
/// states and data gone), the region serves on without it, a late vote to
/// the removed peer never recreates it (not even after a restart), and a
/// new peer with a newer id on the same store is added and initialized.
#[test]
fn removed_peer_is_destroyed_and_never_resurrects() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = started(&dir);
    let old_region = cluster.regions()[0].clone();
    let (gone, removed) = a_follower(&cluster, leader);
    let region = change(&client, ConfChangeType::RemoveNode, removed);
    assert!(peer_on(&region, gone).is_none());

    let engine = cluster.store(gone).unwrap().engine().clone();
    assert!(
        eventually(|| cluster
            .store(gone)
            .unwrap()
            .metrics()
            .peers_destroyed
            .load(Ordering::Relaxed)
            == 1),
        "the removed peer was not destroyed"
    );
    // Its apply delegate clears it after everything it applied.
    let cleared = |engine: &Engine| {
        state_is(engine, PeerState::Tombstone)
            && engine
                .get(Cf::Raft, &keys::raft_state_key(REGION))
                .unwrap()
                .is_none()
            && engine
                .get(Cf::Raft, &keys::apply_state_key(REGION))
                .unwrap()
                .is_none()
            && (0..KEYS).all(|i| {
                engine
                    .get(Cf::Default, &keys::data_key(&key(i)))
                    .unwrap()
                    .is_none()
            })
    };
    assert!(
        eventually(|| cleared(&engine)),
        "not cleared: {:?}",
        region_state(&engine)
    );
    let tomb = region_state(&engine).expect("a region state");
    assert!(
        tomb.region
            .as_ref()
            .is_some_and(|r| r.peers.contains(&removed)),
        "the tombstone does not name the removed peer: {tomb:?}"
    );
    write(&client, KEYS..KEYS + 10);

    // A late pre-vote to the removed peer: dropped, never a new peer.
    let store = cluster.store(gone).unwrap();
    store.handle().deliver(pre_vote(&old_region, gone, removed));
    std::thread::sleep(Duration::from_millis(FAST_TICK_MS * 10));
    assert_eq!(store.metrics().peers_created.load(Ordering::Relaxed), 0);
    assert_eq!(region_state(&engine).unwrap().state(), PeerState::Tombstone);
    drop(engine);
    cluster.stop_store(gone);
    cluster.start_store(gone).unwrap();
    let store = cluster.store(gone).unwrap();
    store.handle().deliver(pre_vote(&old_region, gone, removed));
    std::thread::sleep(Duration::from_millis(FAST_TICK_MS * 10));
    assert_eq!(store.metrics().peers_created.load(Ordering::Relaxed), 0);
    let engine = store.engine().clone();
    assert_eq!(region_state(&engine).unwrap().state(), PeerState::Tombstone);

    // Back with a newer peer id: created, initialized by a snapshot.
    let id = cluster.store(leader).unwrap().alloc_id().unwrap();
    let again = Peer {
        id,
        store_id: gone,
        role: PeerRole::Learner as i32,
    };
    change(&client, ConfChangeType::AddLearnerNode, again);
    assert!(
        eventually(|| holds(&engine, 0..KEYS + 10) && state_is(&engine, PeerState::Normal)),
        "the re-added peer was not initialized: {:?}",
        region_state(&engine)
    );
    cluster.shutdown();
}

/// admin.md scenario 12 (`conf_change_typed_rejections`) through the
/// client: removing the leader, a second peer on a store, removing a
/// peer the region does not have.
#[test]
fn conf_change_typed_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    let leader = wait_leader(&cluster, REGION).expect("leader");
    let client = cluster.client(ClientConfig::default());
    let region = cluster.regions()[0].clone();
    let leader_peer = peer_on(&region, leader).unwrap();
    assert_eq!(
        admin_err(client.change_peer(REGION, ConfChangeType::RemoveNode, leader_peer)),
        AdminError::ConfChangeRemovesLeader {
            peer_id: leader_peer.id
        }
    );
    let id = cluster.store(leader).unwrap().alloc_id().unwrap();
    assert_eq!(
        admin_err(client.change_peer(
            REGION,
            ConfChangeType::AddLearnerNode,
            Peer {
                id,
                store_id: leader,
                role: PeerRole::Learner as i32
            }
        )),
        AdminError::PeerAlreadyPresent {
            peer_id: leader_peer.id,
            store_id: leader
        }
    );
    assert_eq!(
        admin_err(client.change_peer(
            REGION,
            ConfChangeType::RemoveNode,
            Peer {
                id,
                store_id: 9,
                role: PeerRole::Voter as i32
            }
        )),
        AdminError::ConfChangePeerNotFound {
            peer_id: id,
            store_id: 9
        }
    );
    // Nothing changed.
    client.put(b"k", b"v").unwrap();
    assert_eq!(client.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    cluster.shutdown();
}

/// admin.md scenario 12, the quorum's hold on the log (TiKV's
/// `check_conf_change`) through the client: voters added on stores that do
/// not exist are accepted while the real voters still make a quorum of the
/// new membership, and the one that would take that quorum away is
/// refused with `ConfChangeUnsafe`. The region serves throughout.
#[test]
fn a_voter_that_would_take_the_quorum_away_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, leader, client) = started(&dir);
    let ghost = |store| Peer {
        id: cluster.store(leader).unwrap().alloc_id().unwrap(),
        store_id: store,
        role: PeerRole::Voter as i32,
    };
    // Five voters, three real: the real ones are still a quorum.
    change(&client, ConfChangeType::AddNode, ghost(7));
    change(&client, ConfChangeType::AddNode, ghost(8));
    let refused = loop {
        match client.change_peer(REGION, ConfChangeType::AddNode, ghost(9)) {
            Err(Error::Admin(AdminError::ConfChangePending { .. })) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break admin_err(other),
        }
    };
    assert!(
        matches!(
            refused,
            AdminError::ConfChangeUnsafe {
                quorum_matched: 0,
                ..
            }
        ),
        "{refused:?}"
    );
    let state = region_state(cluster.store(leader).unwrap().engine());
    let voters = state.and_then(|s| s.region).unwrap().peers.len();
    assert_eq!(voters, 5, "the refused voter was not added");
    write(&client, KEYS..KEYS + 10);
    for &s in cluster.store_ids() {
        assert!(
            eventually(|| holds(cluster.store(s).unwrap().engine(), 0..KEYS + 10)),
            "store {s} lacks the writes"
        );
    }
    cluster.shutdown();
}

/// The same rule for a single voter (where TiKV makes an exception): a
/// second voter added directly on a store that does not exist would be
/// half of the new quorum with nothing, and the region could never elect
/// or commit again. It is refused; a learner on a real store, promoted
/// once caught up, grows the region.
#[test]
fn a_single_voter_grows_only_through_a_caught_up_learner() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::bootstrap(dir.path(), 1, 1, config(), &logger()).unwrap();
    let leader = wait_leader(&cluster, REGION).expect("leader");
    let client = cluster.client(ClientConfig::default());
    write(&client, 0..KEYS);
    let peer = |cluster: &Cluster, store, role: PeerRole| Peer {
        id: cluster.store(leader).unwrap().alloc_id().unwrap(),
        store_id: store,
        role: role as i32,
    };
    let ghost = peer(&cluster, 9, PeerRole::Voter);
    let refused = client.change_peer(REGION, ConfChangeType::AddNode, ghost);
    assert!(
        matches!(
            admin_err(refused),
            AdminError::ConfChangeUnsafe {
                quorum_matched: 0,
                ..
            }
        ),
        "a voter on a store that does not exist"
    );
    write(&client, KEYS..KEYS + 10);
    cluster.add_store(2).unwrap();
    let learner = peer(&cluster, 2, PeerRole::Learner);
    change(&client, ConfChangeType::AddLearnerNode, learner);
    let region = change(&client, ConfChangeType::AddNode, learner);
    assert_eq!(region.peers.len(), 2);
    write(&client, KEYS + 10..KEYS + 20);
    assert!(eventually(|| holds(
        cluster.store(2).unwrap().engine(),
        0..KEYS + 20
    )));
    cluster.shutdown();
}

/// admin.md scenario 12 with a dead store: once the leader's store stops
/// hearing a follower's store (its support is withdrawn), that follower
/// counts as holding nothing, so removing the other, live follower (which
/// would leave the leader and the dead one, no quorum) is refused with
/// `ConfChangeUnsafe`; removing the dead one is the way out, and the
/// region serves on two stores.
#[test]
fn removing_a_live_voter_while_another_is_dead_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = started(&dir);
    let region = cluster.regions()[0].clone();
    let mut followers = cluster.store_ids().to_vec();
    followers.retain(|&s| s != leader);
    let (live, dead) = (followers[0], followers[1]);
    let withdrawals = |c: &Cluster| {
        c.store(leader)
            .unwrap()
            .metrics()
            .support_withdrawals
            .load(Ordering::Relaxed)
    };
    let before = withdrawals(&cluster);
    assert!(cluster.stop_store(dead));
    assert!(
        eventually(|| withdrawals(&cluster) > before),
        "store {leader} never withdrew its support of store {dead}"
    );
    assert_eq!(
        wait_leader(&cluster, REGION),
        Some(leader),
        "the leader moved"
    );
    let refused = client.change_peer(
        REGION,
        ConfChangeType::RemoveNode,
        peer_on(&region, live).unwrap(),
    );
    assert!(
        matches!(
            admin_err(refused),
            AdminError::ConfChangeUnsafe {
                quorum_matched: 0,
                ..
            }
        ),
        "removing the live voter was not refused"
    );
    let after = change(
        &client,
        ConfChangeType::RemoveNode,
        peer_on(&region, dead).unwrap(),
    );
    assert_eq!(after.peers.len(), 2);
    write(&client, KEYS..KEYS + 10);
    for s in [leader, live] {
        assert!(
            eventually(|| holds(cluster.store(s).unwrap().engine(), 0..KEYS + 10)),
            "store {s} lacks the writes"
        );
    }
    cluster.shutdown();
}

/// Moves the region's leadership to `store`, retrying until it leads.
fn lead_from(cluster: &Cluster, client: &Client, store: u64) {
    for _ in 0..200 {
        if flotilla_tests::harness::leader_store(cluster, REGION) == Some(store) {
            return;
        }
        let _ = client.transfer_leader(REGION, store);
        std::thread::sleep(Duration::from_millis(FAST_TICK_MS * 3));
    }
    panic!("store {store} never took the leadership");
}

/// admin.md §5.5 (#11 "a concurrent history across conf changes and
/// leader transfers"): clients read and write a few keys while a driver
/// adds a learner on a new store, promotes it, moves the leadership to it,
/// removes an original voter, adds a new peer back on that store, moves
/// the leadership again and removes the first new peer. The history is
/// linearizable, and every peer of the final membership holds the same
/// data. `SIM_SEED` replays a seed.
#[test]
fn history_is_linearizable_across_conf_changes_and_transfers() {
    use flotilla_tests::linearizability::History;
    use flotilla_tests::workload::{
        Workload, check_history, history_client, history_seed, spawn_history_clients, stored_values,
    };
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    cluster.add_store(4).unwrap();
    let w = Workload {
        clients: 4,
        keys: 5,
        ops_per_client: 120,
        pause: Duration::from_millis(4),
        seed: history_seed(11),
    };
    let history = Arc::new(History::new());
    let workers = spawn_history_clients(&history_client(&cluster), &history, w);
    let admin = cluster.client(ClientConfig::default());
    let alloc = |c: &Cluster| c.store(2).unwrap().alloc_id().unwrap();

    let four = Peer {
        id: alloc(&cluster),
        store_id: 4,
        role: PeerRole::Learner as i32,
    };
    change(&admin, ConfChangeType::AddLearnerNode, four);
    change(&admin, ConfChangeType::AddNode, four);
    lead_from(&cluster, &admin, 4);
    let one = peer_on(&cluster.regions()[0], 1).unwrap();
    change(&admin, ConfChangeType::RemoveNode, one);
    let one_again = Peer {
        id: alloc(&cluster),
        store_id: 1,
        role: PeerRole::Learner as i32,
    };
    change(&admin, ConfChangeType::AddLearnerNode, one_again);
    change(&admin, ConfChangeType::AddNode, one_again);
    lead_from(&cluster, &admin, 2);
    let region = change(&admin, ConfChangeType::RemoveNode, four);

    check_history(workers, &history, w.seed, 100);
    // Every member converges on the same data.
    let data = |s: u64| stored_values(&cluster, s, w.keys);
    let members: Vec<u64> = region.peers.iter().map(|p| p.store_id).collect();
    assert_eq!(members.len(), 3, "{region:?}");
    assert!(
        eventually(|| members.iter().all(|&s| data(s) == data(members[0]))),
        "members disagree (seed {}): {:?}",
        w.seed,
        members
            .iter()
            .map(|&s| (
                s,
                data(s)
                    .into_iter()
                    .map(|v| v.map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default())))
                    .collect::<Vec<_>>(),
                region_state(cluster.store(s).unwrap().engine())
            ))
            .collect::<Vec<_>>()
    );
    assert!(
        eventually(|| state_is(cluster.store(4).unwrap().engine(), PeerState::Tombstone)),
        "store 4 kept its removed peer"
    );
    for &s in cluster.store_ids() {
        assert!(
            cluster.store(s).unwrap().fatal_error().is_none(),
            "store {s} stopped"
        );
    }
    cluster.shutdown();
}

/// admin.md scenario 9, the isolated case: a follower is removed while
/// partitioned away, so it never applies its removal. Healed, it goes on
/// campaigning under the old membership; a member answers with a
/// tombstone message (stale-peer GC without a placement service) and the
/// store destroys it: tombstone naming it, no raft log or states.
#[test]
fn peer_removed_while_isolated_is_destroyed_after_the_heal() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, leader, client) = started(&dir);
    let (gone, removed) = a_follower(&cluster, leader);
    let filter = cluster.transport().isolate(gone);
    change(&client, ConfChangeType::RemoveNode, removed);
    write(&client, KEYS..KEYS + 10);
    let store = cluster.store(gone).unwrap();
    assert_eq!(
        store.metrics().peers_destroyed.load(Ordering::Relaxed),
        0,
        "destroyed without hearing of it"
    );
    cluster.transport().remove_filter(filter);
    assert!(
        eventually(|| store.metrics().peers_destroyed.load(Ordering::Relaxed) == 1),
        "the removed peer was never told"
    );
    let engine = store.engine();
    assert!(
        eventually(|| state_is(engine, PeerState::Tombstone)
            && engine
                .get(Cf::Raft, &keys::raft_state_key(REGION))
                .unwrap()
                .is_none()
            && (0..KEYS).all(|i| engine
                .get(Cf::Default, &keys::data_key(&key(i)))
                .unwrap()
                .is_none())),
        "not cleared: {:?}",
        region_state(engine)
    );
    let tomb = region_state(engine).expect("a region state");
    assert!(
        tomb.region
            .as_ref()
            .is_some_and(|r| r.peers.iter().any(|p| p.id == removed.id))
    );
    // The region serves on with its two members.
    write(&client, KEYS + 10..KEYS + 20);
    assert!(cluster.store(leader).unwrap().fatal_error().is_none());
    cluster.shutdown();
}

/// How long [`learner_removed_while_cut_off`] cuts the learner's store off.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Until the store withdraws its support of the others (its sleeping
    /// peers wake), then through the removal.
    PastSupport,
    /// Only through the removal, with the learner asleep at the cut (the
    /// removal is quicker than one election timeout, the support window).
    WhileAsleep,
}

/// admin.md scenario 9, the isolated learner: a learner is removed while
/// its store is cut off. A learner never campaigns and its former leader
/// no longer writes to it, so after the heal nothing reaches it; heard
/// from no leader for `PROBE_ELECTION_TIMEOUTS` election timeouts, it asks
/// a voter of its region about its membership, is told it was removed,
/// and its store destroys it. (Before the probe covered learners it
/// lingered for good.)
fn learner_removed_while_cut_off(cut: Cut) {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = started(&dir);
    cluster.add_store(4).unwrap();
    let learner = Peer {
        id: cluster.store(leader).unwrap().alloc_id().unwrap(),
        store_id: 4,
        role: PeerRole::Learner as i32,
    };
    change(&client, ConfChangeType::AddLearnerNode, learner);
    let store = cluster.store(4).unwrap();
    let engine = store.engine().clone();
    assert!(
        eventually(|| holds(&engine, 0..KEYS)),
        "the learner was not initialized"
    );
    let withdrawals = || store.metrics().support_withdrawals.load(Ordering::Relaxed);
    let handle = store.handle();
    if matches!(cut, Cut::WhileAsleep) {
        assert!(
            eventually(|| handle
                .region_status(REGION, ANSWER)
                .is_ok_and(|st| st.hibernating)),
            "the learner never hibernated"
        );
    }
    let before = withdrawals();
    let filter = cluster.transport().isolate(4);
    if matches!(cut, Cut::PastSupport) {
        assert!(
            eventually(|| withdrawals() > before),
            "store 4 never withdrew its support"
        );
    }
    change(&client, ConfChangeType::RemoveNode, learner);
    write(&client, KEYS..KEYS + 10);
    assert_eq!(
        store.metrics().peers_destroyed.load(Ordering::Relaxed),
        0,
        "destroyed without hearing of it"
    );
    cluster.transport().remove_filter(filter);
    assert!(
        eventually(|| store.metrics().peers_destroyed.load(Ordering::Relaxed) == 1),
        "the removed learner was never told"
    );
    assert!(
        eventually(|| state_is(&engine, PeerState::Tombstone)
            && (0..KEYS).all(|i| engine
                .get(Cf::Default, &keys::data_key(&key(i)))
                .unwrap()
                .is_none())),
        "not cleared: {:?}",
        region_state(&engine)
    );
    write(&client, KEYS + 10..KEYS + 20);
    drop((handle, engine));
    cluster.shutdown();
}

/// See [`learner_removed_while_cut_off`]: cut off past the support window,
/// its store's liveness wakes the sleeping learner, which then asks.
#[test]
fn learner_removed_while_isolated_is_destroyed_after_the_heal() {
    learner_removed_while_cut_off(Cut::PastSupport);
}

/// See [`learner_removed_while_cut_off`]: asleep at the cut, and the cut
/// heals before its store withdraws support, so nothing of its own wakes
/// it: no liveness withdrawal, no message, no tick (a sleeping peer has no
/// clock). The leader that removed it keeps telling it (a tombstone note
/// each tick, and the region stays awake) until its store confirms it is
/// gone. (Before, it slept on for good.)
#[test]
fn learner_asleep_when_removed_in_a_short_cut_is_destroyed_after_the_heal() {
    learner_removed_while_cut_off(Cut::WhileAsleep);
}

/// The voter in the place of
/// [`learner_asleep_when_removed_in_a_short_cut_is_destroyed_after_the_heal`]:
/// asleep at the cut, removed, healed before its store withdraws support
/// (usually: a slower cut is the pre-vote path of
/// [`peer_removed_while_isolated_is_destroyed_after_the_heal`]). Nothing of
/// its own would wake it; its leader's removal notes destroy it. With
/// `move_leader`, the leadership moves to the third store during the cut:
/// the leader that removed it stops telling it, and the new one takes the
/// notes up from the region's record of removed peers.
fn voter_asleep_when_removed_in_a_short_cut(move_leader: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, leader, client) = started(&dir);
    let (gone, removed) = a_follower(&cluster, leader);
    let store = cluster.store(gone).unwrap();
    let handle = store.handle();
    assert!(
        eventually(|| handle
            .region_status(REGION, ANSWER)
            .is_ok_and(|st| st.hibernating)),
        "the follower never hibernated"
    );
    let filter = cluster.transport().isolate(gone);
    change(&client, ConfChangeType::RemoveNode, removed);
    if move_leader {
        lead_from(&cluster, &client, third_store(&cluster, leader, gone));
    }
    cluster.transport().remove_filter(filter);
    assert!(
        eventually(|| store.metrics().peers_destroyed.load(Ordering::Relaxed) == 1),
        "the removed voter was never told"
    );
    assert!(
        eventually(|| state_is(store.engine(), PeerState::Tombstone)),
        "no tombstone: {:?}",
        region_state(store.engine())
    );
    write(&client, KEYS..KEYS + 10);
    drop(handle);
    cluster.shutdown();
}

/// See [`voter_asleep_when_removed_in_a_short_cut`].
#[test]
fn voter_asleep_when_removed_in_a_short_cut_is_destroyed_after_the_heal() {
    voter_asleep_when_removed_in_a_short_cut(false);
}

/// See [`voter_asleep_when_removed_in_a_short_cut`]: the next leader tells
/// it. (Before the region recorded its removed peers, the leader's notes
/// died with its leadership and the voter slept on for good.)
#[test]
fn voter_asleep_when_removed_is_told_by_the_next_leader() {
    voter_asleep_when_removed_in_a_short_cut(true);
}

/// admin.md scenario 12 (`conf_change_typed_rejections`), a removed
/// peer's id: the store it was removed from keeps a tombstone naming it
/// and drops every message to it, so the id would never serve again.
/// Adding it back, as a learner or a voter, on its store or another, is
/// refused with `PeerIdRemoved`, also by a later leader and after every
/// store restarted (the region records its removed peers), and nothing
/// changes; a new id on the same store is added.
#[test]
fn a_removed_peer_id_is_refused_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = started(&dir);
    let (gone, removed) = a_follower(&cluster, leader);
    let region = change(&client, ConfChangeType::RemoveNode, removed);
    let conf_ver = region.region_epoch.unwrap().conf_ver;
    let refused = AdminError::PeerIdRemoved {
        peer_id: removed.id,
        store_id: gone,
    };
    let try_add_back = |client: &Client| {
        for t in [ConfChangeType::AddLearnerNode, ConfChangeType::AddNode] {
            for store_id in [gone, 4] {
                let peer = Peer {
                    store_id,
                    ..removed
                };
                assert_eq!(
                    admin_err(client.change_peer(REGION, t, peer)),
                    refused,
                    "{t:?} of {peer:?}"
                );
            }
        }
    };
    try_add_back(&client);
    let third = third_store(&cluster, leader, gone);
    lead_from(&cluster, &client, third);
    try_add_back(&client);
    drop(client);
    for s in cluster.store_ids().to_vec() {
        cluster.stop_store(s);
    }
    for s in cluster.store_ids().to_vec() {
        cluster.start_store(s).unwrap();
    }
    wait_leader(&cluster, REGION).expect("a leader after the restart");
    let client = cluster.client(ClientConfig::default());
    try_add_back(&client);
    write(&client, KEYS..KEYS + 10);
    for s in [leader, third] {
        let engine = cluster.store(s).unwrap().engine();
        assert_eq!(
            removal_records(engine),
            vec![(removed, conf_ver)],
            "store {s}"
        );
    }
    let again = Peer {
        id: cluster.store(third).unwrap().alloc_id().unwrap(),
        store_id: gone,
        role: PeerRole::Learner as i32,
    };
    let region = change(&client, ConfChangeType::AddLearnerNode, again);
    assert_eq!(region.region_epoch.unwrap().conf_ver, conf_ver + 1);
    let engine = cluster.store(gone).unwrap().engine().clone();
    assert!(
        eventually(|| holds(&engine, 0..KEYS + 10) && state_is(&engine, PeerState::Normal)),
        "the new peer was not initialized: {:?}",
        region_state(&engine)
    );
    // Its snapshot carried the record.
    assert_eq!(removal_records(&engine), vec![(removed, conf_ver)]);
    // Removed in turn: its store clears its records with it.
    change(&client, ConfChangeType::RemoveNode, again);
    assert!(
        eventually(
            || state_is(&engine, PeerState::Tombstone) && removal_records(&engine).is_empty()
        ),
        "not cleared: {:?} {:?}",
        region_state(&engine),
        removal_records(&engine)
    );
    assert_eq!(
        admin_err(client.change_peer(REGION, ConfChangeType::AddLearnerNode, again)),
        AdminError::PeerIdRemoved {
            peer_id: again.id,
            store_id: gone
        }
    );
    drop(engine);
    cluster.shutdown();
}

/// A leader that removed the peer of a dead store does not wait for its
/// confirmation to hibernate (a dead store must not keep its leaders
/// awake, TiKV #19070): the store is remembered as lagging, and once it
/// is back the removed peer is destroyed.
#[test]
fn a_removed_peer_on_a_dead_store_does_not_keep_its_region_awake() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = started(&dir);
    let (dead, removed) = a_follower(&cluster, leader);
    let withdrawals = |c: &Cluster| {
        c.store(leader)
            .unwrap()
            .metrics()
            .support_withdrawals
            .load(Ordering::Relaxed)
    };
    let before = withdrawals(&cluster);
    assert!(cluster.stop_store(dead));
    assert!(
        eventually(|| withdrawals(&cluster) > before),
        "store {leader} never withdrew its support of store {dead}"
    );
    change(&client, ConfChangeType::RemoveNode, removed);
    write(&client, KEYS..KEYS + 10);
    let handle = cluster.store(leader).unwrap().handle();
    assert!(
        eventually(|| handle
            .region_status(REGION, ANSWER)
            .is_ok_and(|st| st.hibernating && st.region.peers.len() == 2)),
        "the leader never hibernated without the dead store's confirmation"
    );
    drop(handle);
    cluster.start_store(dead).unwrap();
    let store = cluster.store(dead).unwrap();
    assert!(
        eventually(
            || store.metrics().peers_destroyed.load(Ordering::Relaxed) == 1
                && state_is(store.engine(), PeerState::Tombstone)
        ),
        "the removed peer outlived the restart: {:?}",
        region_state(store.engine())
    );
    cluster.shutdown();
}

/// Counts the messages of one region that pass: confirmations of removal
/// (`gc_ack`) and the rest.
struct CountRegion {
    region: u64,
    acks: AtomicU64,
    other: AtomicU64,
}

impl Filter for CountRegion {
    fn filter(&self, msgs: &mut Vec<RaftMessage>) {
        for m in msgs.iter().filter(|m| m.region_id == self.region) {
            let counter = if m.gc_ack { &self.acks } else { &self.other };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A leader's removal note for a peer a store does not have (no region
/// here) is confirmed once; the confirmation, reaching a store without
/// the region either, goes no further, and a merge notice to such a store
/// is not answered at all: no two stores trade messages for good.
#[test]
fn a_removal_note_for_an_absent_peer_is_confirmed_once() {
    /// A region no store has.
    const GHOST: u64 = 99;
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let counter = Arc::new(CountRegion {
        region: GHOST,
        acks: AtomicU64::new(0),
        other: AtomicU64::new(0),
    });
    cluster.transport().add_filter(counter.clone());
    let note = RaftMessage {
        region_id: GHOST,
        from_peer: Some(Peer {
            id: 1000,
            store_id: 1,
            role: PeerRole::Voter as i32,
        }),
        to_peer: Some(Peer {
            id: 1001,
            store_id: 2,
            role: PeerRole::Voter as i32,
        }),
        region_epoch: Some(RegionEpoch {
            conf_ver: 5,
            version: 1,
        }),
        is_tombstone: true,
        ..Default::default()
    };
    let store = cluster.store(2).unwrap();
    store.handle().deliver(note.clone());
    assert!(
        eventually(|| counter.acks.load(Ordering::Relaxed) >= 1),
        "the note was not confirmed"
    );
    store.handle().deliver(RaftMessage {
        merged_into: Some(Region {
            id: REGION,
            ..Default::default()
        }),
        ..note
    });
    // Long enough for any answer to the answer to go round a few times.
    std::thread::sleep(Duration::from_millis(20 * FAST_TICK_MS));
    assert_eq!(counter.acks.load(Ordering::Relaxed), 1);
    assert_eq!(counter.other.load(Ordering::Relaxed), 0);
    cluster.shutdown();
}

/// Every running store's view of the region (its region state), once it
/// shows `conf_ver`.
fn settled_on(cluster: &Cluster, stores: &[u64], conf_ver: u64) -> bool {
    stores.iter().all(|&s| {
        cluster
            .store(s)
            .and_then(|st| region_state(st.engine()))
            .and_then(|r| r.region)
            .is_some_and(|r| r.region_epoch.is_some_and(|e| e.conf_ver == conf_ver))
    })
}

/// admin.md scenario 11 (`joint_replace_two_voters_leader_crash`): two of
/// three voters are replaced in one joint change (two learners promoted,
/// two voters demoted); the leader's store stops right after the joint
/// entry applied there. The region keeps serving; whichever leader it has
/// leaves the joint configuration (conf_ver moves by one to enter and one
/// to leave, on every store), and the demoted learners are then removed.
#[test]
fn joint_replace_two_voters_leader_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = started(&dir);
    cluster.add_store(4).unwrap();
    cluster.add_store(5).unwrap();
    let original = cluster.regions()[0].clone();
    let conf_ver = original.region_epoch.unwrap().conf_ver;
    let mut new_peers = Vec::new();
    for store in [4, 5] {
        let p = Peer {
            id: cluster.store(leader).unwrap().alloc_id().unwrap(),
            store_id: store,
            role: PeerRole::Learner as i32,
        };
        change(&client, ConfChangeType::AddLearnerNode, p);
        let engine = cluster.store(store).unwrap().engine().clone();
        assert!(
            eventually(|| holds(&engine, 0..KEYS)),
            "learner on {store} not initialized"
        );
        new_peers.push(p);
    }
    let demoted: Vec<Peer> = original
        .peers
        .iter()
        .filter(|p| p.store_id != leader)
        .copied()
        .collect();
    let mut changes: Vec<(ConfChangeType, Peer)> = new_peers
        .iter()
        .map(|&p| (ConfChangeType::AddNode, p))
        .collect();
    changes.extend(demoted.iter().map(|&p| (ConfChangeType::AddLearnerNode, p)));
    let joint = loop {
        match client.change_peers(REGION, &changes) {
            Ok(r) => break r,
            Err(Error::Admin(
                AdminError::LearnerNotCaughtUp { .. } | AdminError::ConfChangePending { .. },
            )) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("joint change: {e}"),
        }
    };
    assert_eq!(joint.region_epoch.unwrap().conf_ver, conf_ver + 3);
    assert!(
        joint
            .peers
            .iter()
            .any(|p| p.role() == PeerRole::IncomingVoter),
        "{joint:?}"
    );
    // The leader's store goes down with the joint entry applied there.
    cluster.stop_store(leader);
    let up: Vec<u64> = cluster
        .store_ids()
        .iter()
        .copied()
        .filter(|&s| s != leader)
        .collect();
    assert!(
        eventually(|| settled_on(&cluster, &up, conf_ver + 4)),
        "the joint configuration was not left"
    );
    write(&client, KEYS..KEYS + 10);
    cluster.start_store(leader).unwrap();
    let all = cluster.store_ids().to_vec();
    assert!(eventually(|| settled_on(&cluster, &all, conf_ver + 4)));
    let left = region_state(cluster.store(4).unwrap().engine())
        .and_then(|s| s.region)
        .unwrap();
    for p in &demoted {
        assert_eq!(
            peer_on(&left, p.store_id).map(|q| q.role()),
            Some(PeerRole::Learner)
        );
        change(&client, ConfChangeType::RemoveNode, *p);
    }
    for p in &demoted {
        let engine = cluster.store(p.store_id).unwrap().engine().clone();
        assert!(
            eventually(|| state_is(&engine, PeerState::Tombstone)),
            "demoted peer on {} not destroyed",
            p.store_id
        );
    }
    write(&client, KEYS + 10..KEYS + 20);
    for s in [4, 5, leader] {
        let engine = cluster.store(s).unwrap().engine().clone();
        assert!(
            eventually(|| holds(&engine, 0..KEYS + 20)),
            "store {s} lacks data"
        );
    }
    cluster.shutdown();
}

/// #11 item 7, inspection: every store's peer reports the region (epoch,
/// members), the same leader, its raft indices (applied within the log,
/// at most the commit), and whether it hibernates; a stopped store's
/// directory lists its region states offline.
#[test]
fn regions_can_be_inspected_online_and_offline() {
    use flotilla_raftstore::store::{region_states, store_dir};
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    let leader = wait_leader(&cluster, REGION).expect("leader");
    let client = cluster.client(ClientConfig::default());
    write(&client, 0..10);
    let status = |s: u64| {
        cluster
            .store(s)
            .unwrap()
            .handle()
            .region_status(REGION, Duration::from_secs(5))
            .expect("status")
    };
    let region = cluster.regions()[0].clone();
    for &s in cluster.store_ids() {
        let st = status(s);
        assert_eq!(st.region.region_epoch, region.region_epoch);
        assert_eq!(st.peer.store_id, s);
        assert_eq!(st.leader.map(|l| l.store_id), Some(leader), "store {s}");
        assert!(st.applied_index <= st.commit_index && st.commit_index <= st.last_index);
        assert!(st.truncated_index <= st.applied_index);
        assert!(!st.applying_snapshot);
    }
    assert!(
        eventually(|| cluster.store_ids().iter().all(|&s| status(s).hibernating)),
        "idle peers do not report hibernating"
    );
    assert!(matches!(
        cluster
            .store(leader)
            .unwrap()
            .handle()
            .region_status(99, Duration::from_secs(1)),
        Err(Error::RegionNotFound(99))
    ));
    cluster.stop_store(leader);
    let engine = Engine::open(
        store_dir(dir.path(), leader),
        &flotilla_engine::EngineOptions::default(),
    )
    .unwrap();
    let states = region_states(&engine).unwrap();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].state(), PeerState::Normal);
    assert_eq!(states[0].region.as_ref().map(|r| r.id), Some(REGION));
    drop(engine);
    cluster.shutdown();
}

/// A learner removed while its store is partitioned away is never told
/// by a vote (learners do not campaign). When the region adds a new peer
/// on that store, the old one learns of it from the first message to the
/// new peer id, goes, and the new peer is created and initialized.
#[test]
fn learner_removed_while_isolated_gives_way_to_a_new_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = started(&dir);
    cluster.add_store(4).unwrap();
    let alloc = |c: &Cluster| c.store(leader).unwrap().alloc_id().unwrap();
    let old = Peer {
        id: alloc(&cluster),
        store_id: 4,
        role: PeerRole::Learner as i32,
    };
    change(&client, ConfChangeType::AddLearnerNode, old);
    let engine = cluster.store(4).unwrap().engine().clone();
    assert!(eventually(|| holds(&engine, 0..KEYS)));
    let filter = cluster.transport().isolate(4);
    change(&client, ConfChangeType::RemoveNode, old);
    write(&client, KEYS..KEYS + 10);
    cluster.transport().remove_filter(filter);
    let new = Peer {
        id: alloc(&cluster),
        store_id: 4,
        role: PeerRole::Learner as i32,
    };
    change(&client, ConfChangeType::AddLearnerNode, new);
    let status = || {
        cluster
            .store(4)
            .unwrap()
            .handle()
            .region_status(REGION, Duration::from_secs(5))
            .ok()
    };
    assert!(
        eventually(
            || status().is_some_and(|s| s.peer.id == new.id && !s.applying_snapshot)
                && holds(&engine, 0..KEYS + 10)
        ),
        "the new peer did not replace the old one: {:?}",
        status()
    );
    assert_eq!(
        cluster
            .store(4)
            .unwrap()
            .metrics()
            .peers_destroyed
            .load(Ordering::Relaxed),
        1
    );
    cluster.shutdown();
}

/// Three stores with one region and `KEYS` keys, and a learner added on
/// a new store 4 that is created there (by its leader's first message)
/// but never gets its snapshot: the cluster, a client, the learner and
/// the region as the addition left it.
fn uninitialized_learner_on_store_4(dir: &tempfile::TempDir) -> (Cluster, Client, Peer, Region) {
    use flotilla_raftstore::store::DropFilter;
    use std::sync::Arc;

    let (mut cluster, leader, client) = started(dir);
    cluster.add_store(4).unwrap();
    cluster.transport().add_filter(Arc::new(DropFilter {
        to_store: Some(4),
        msg_type: Some(MessageType::MsgSnapshot),
        ..Default::default()
    }));
    let learner = Peer {
        id: cluster.store(leader).unwrap().alloc_id().unwrap(),
        store_id: 4,
        role: PeerRole::Learner as i32,
    };
    let region = change(&client, ConfChangeType::AddLearnerNode, learner);
    let store = cluster.store(4).unwrap();
    assert!(
        eventually(|| store.metrics().peers_created.load(Ordering::Relaxed) == 1),
        "the learner was not created on store 4"
    );
    (cluster, client, learner, region)
}

/// #11's stale-peer rule "a peer that has no leader for long asks its
/// peers": a learner added on a new store is created there (uninitialized)
/// but never gets its snapshot, and is removed again. Nobody sends it
/// anything any more; after ten election timeouts it asks a peer it heard
/// from, is told it was removed, and is destroyed.
#[test]
fn uninitialized_peer_whose_addition_was_reverted_is_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, learner, _) = uninitialized_learner_on_store_4(&dir);
    let store = cluster.store(4).unwrap();
    change(&client, ConfChangeType::RemoveNode, learner);
    assert!(
        eventually(|| store.metrics().peers_destroyed.load(Ordering::Relaxed) == 1),
        "the uninitialized peer lingers: {:?}",
        store.handle().region_status(REGION, Duration::from_secs(5))
    );
    assert!(matches!(
        store.handle().region_status(REGION, Duration::from_secs(5)),
        Err(Error::RegionNotFound(_))
    ));
    assert!(eventually(|| state_is(
        store.engine(),
        PeerState::Tombstone
    )));
    cluster.shutdown();
}

/// Review finding (helper, session 7): an uninitialized peer takes the
/// membership it was created under as its epoch. A late message of an
/// older membership to another peer id on its store (a removed
/// predecessor) must not destroy it; one of a newer membership (it was
/// replaced) does.
#[test]
fn uninitialized_peer_ignores_older_memberships_messages_to_other_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _, learner, region) = uninitialized_learner_on_store_4(&dir);
    let conf_ver = region.region_epoch.unwrap().conf_ver;
    let store = cluster.store(4).unwrap();
    let late = |conf_ver: u64| {
        let mut m = pre_vote(
            &region,
            4,
            Peer {
                id: 424_242,
                store_id: 4,
                role: PeerRole::Voter as i32,
            },
        );
        m.region_epoch = Some(flotilla_proto::metapb::RegionEpoch {
            conf_ver,
            version: 1,
        });
        m
    };
    store.handle().deliver(late(conf_ver - 1));
    std::thread::sleep(Duration::from_millis(FAST_TICK_MS * 20));
    assert_eq!(
        store.metrics().peers_destroyed.load(Ordering::Relaxed),
        0,
        "a message of an older membership destroyed the new peer"
    );
    assert_eq!(
        store
            .handle()
            .region_status(REGION, Duration::from_secs(5))
            .unwrap()
            .peer
            .id,
        learner.id
    );
    store.handle().deliver(late(conf_ver + 5));
    assert!(
        eventually(|| store.metrics().peers_destroyed.load(Ordering::Relaxed) == 1),
        "a message of a newer membership to another peer here did not replace it"
    );
    cluster.shutdown();
}
