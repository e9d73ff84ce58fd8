//! Crash points (issue #11, admin.md §5.2) hit through failpoints
//! (fail-rs, the `failpoints` feature of flotilla-raftstore): the store
//! stops at the point as a crash would (a fatal stop: nothing after it is
//! written), then restarts from its directory, and the invariants of
//! admin.md §5.4 hold.
//!
//! Failpoints are process-wide: the tests here run one at a time.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_engine::{Cf, Engine, keys};
use flotilla_proto::eraftpb::ConfChangeType;
use flotilla_proto::metapb::{Peer, PeerRole};
use flotilla_proto::raft_serverpb::PeerState;
use flotilla_raftstore::store::{AdminError, Client, ClientConfig, Cluster, Error};
use flotilla_tests::harness::{FAST_TICK_MS, eventually, holds_values, region_state};

/// One test at a time: failpoints are global to the process.
static SERIAL: Mutex<()> = Mutex::new(());
/// The bootstrapped region.
const REGION: u64 = 1;
/// Keys written before the crash.
const KEYS: u64 = 40;

fn key(i: u64) -> Vec<u8> {
    format!("fp{i:05}").into_bytes()
}

fn write(client: &Client, range: std::ops::Range<u64>) {
    for i in range {
        client.put(&key(i), &i.to_be_bytes()).expect("put");
    }
}

fn holds(engine: &Engine, range: std::ops::Range<u64>) -> bool {
    holds_values(engine, range, key)
}

/// Three stores with one region and `KEYS` keys written: the cluster,
/// the region's leader store, a client.
fn started(dir: &tempfile::TempDir) -> (Cluster, u64, Client) {
    flotilla_tests::harness::three_stores_serving(dir.path(), |c| write(c, 0..KEYS))
}

/// The stores that stopped on a fatal error (a failpoint's crash).
fn crashed(cluster: &Cluster) -> Vec<u64> {
    cluster
        .store_ids()
        .iter()
        .copied()
        .filter(|&s| {
            cluster
                .store(s)
                .is_some_and(|st| st.fatal_error().is_some())
        })
        .collect()
}

/// Restarts every store a failpoint stopped (with the failpoint off).
fn restart_crashed(cluster: &mut Cluster, crashed: &[u64]) {
    for &s in crashed {
        cluster.stop_store(s);
        cluster.start_store(s).expect("restart");
    }
}

/// Crash point: a snapshot's keys are all written but its region is still
/// `Applying` (admin.md §5.2, snapshot step 3). At restart the store
/// writes the snapshot again from its file and the region is `Normal`
/// with every key.
#[test]
fn snapshot_apply_crash_before_normal_is_redone_at_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = started(&dir);
    cluster.add_store(4).unwrap();
    fail::cfg("snapshot_apply_before_normal", "1*return").unwrap();
    let learner = Peer {
        id: cluster.store(leader).unwrap().alloc_id().unwrap(),
        store_id: 4,
        role: PeerRole::Learner as i32,
    };
    client
        .change_peer(REGION, ConfChangeType::AddLearnerNode, learner)
        .expect("add learner");
    assert!(
        eventually(|| crashed(&cluster) == vec![4]),
        "store 4 did not stop at the crash point"
    );
    let engine = cluster.store(4).unwrap().engine().clone();
    assert_eq!(
        region_state(&engine, REGION).map(|s| s.state()),
        Some(PeerState::Applying),
        "the crash point is after the keys, before Normal"
    );
    assert!(holds(&engine, 0..KEYS), "the keys were written before it");
    drop(engine);
    fail::remove("snapshot_apply_before_normal");
    restart_crashed(&mut cluster, &[4]);
    let engine = cluster.store(4).unwrap().engine().clone();
    assert!(
        eventually(|| region_state(&engine, REGION)
            .is_some_and(|s| s.state() == PeerState::Normal)
            && holds(&engine, 0..KEYS)),
        "the snapshot was not redone: {:?}",
        region_state(&engine, REGION)
    );
    write(&client, KEYS..KEYS + 10);
    assert!(eventually(|| holds(&engine, 0..KEYS + 10)));
    drop(engine);
    cluster.shutdown();
    scenario.teardown();
}

/// Crash point: a split is applied (the parent's new range and the new
/// region's states written) but the new peer is not registered yet
/// (admin.md §5.2, split). At restart the store loads both regions from
/// disk; every key stays readable and the store serves both regions.
#[test]
fn split_crash_before_register_recovers_at_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, _, client) = started(&dir);
    fail::cfg("split_before_register", "1*return").unwrap();
    // The store that crashes may be the leader, so the answer may be lost.
    let _ = client.split_at(&key(KEYS / 2));
    assert!(
        eventually(|| crashed(&cluster).len() == 1),
        "no store stopped at the crash point"
    );
    let down = crashed(&cluster);
    fail::remove("split_before_register");
    restart_crashed(&mut cluster, &down);
    for &s in cluster.store_ids() {
        let store = cluster.store(s).unwrap();
        assert!(
            eventually(|| store.region_count() == 2),
            "store {s} has {} regions",
            store.region_count()
        );
        assert!(
            eventually(|| holds(store.engine(), 0..KEYS)),
            "store {s} lost keys"
        );
    }
    let fresh = cluster.client(ClientConfig::default());
    write(&fresh, 0..KEYS);
    for i in 0..KEYS {
        assert_eq!(
            fresh.get(&key(i)).expect("get").as_deref(),
            Some(&i.to_be_bytes()[..])
        );
    }
    assert!(crashed(&cluster).is_empty());
    cluster.shutdown();
    scenario.teardown();
}

/// Crash point: a peer's removal is applied (its region state is a
/// tombstone) but its destruction is not written (admin.md §5.2, conf
/// change). At restart the store clears what the tombstone names: no raft
/// log, raft or apply state, no data; the region serves on without it.
#[test]
fn destroy_crash_before_write_is_cleared_at_restart() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = started(&dir);
    let gone = *cluster
        .store_ids()
        .iter()
        .find(|&&s| s != leader)
        .expect("a follower");
    let removed = cluster.regions()[0]
        .peers
        .iter()
        .find(|p| p.store_id == gone)
        .copied()
        .unwrap();
    fail::cfg("destroy_before_write", "1*return").unwrap();
    client
        .change_peer(REGION, ConfChangeType::RemoveNode, removed)
        .expect("remove");
    assert!(
        eventually(|| crashed(&cluster) == vec![gone]),
        "store {gone} did not stop at the crash point"
    );
    assert_eq!(
        cluster
            .store(gone)
            .unwrap()
            .metrics()
            .peers_destroyed
            .load(Ordering::Relaxed),
        1
    );
    fail::remove("destroy_before_write");
    restart_crashed(&mut cluster, &[gone]);
    let engine = cluster.store(gone).unwrap().engine().clone();
    let cleared = || {
        region_state(&engine, REGION).is_some_and(|s| s.state() == PeerState::Tombstone)
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
        eventually(cleared),
        "not cleared at restart: {:?}",
        region_state(&engine, REGION)
    );
    assert_eq!(cluster.store(gone).unwrap().region_count(), 0);
    drop(engine);
    write(&client, KEYS..KEYS + 10);
    std::thread::sleep(Duration::from_millis(FAST_TICK_MS * 20));
    assert!(crashed(&cluster).is_empty());
    cluster.shutdown();
    scenario.teardown();
}

/// Splits the region in the middle and writes every key again (both new
/// regions have heard from all their peers: a merge's log check passes).
fn split_in_two(
    client: &Client,
) -> (
    flotilla_proto::metapb::Region,
    flotilla_proto::metapb::Region,
) {
    let regions = client.split_at(&key(KEYS / 2)).expect("split");
    write(client, 0..KEYS);
    (regions[0].clone(), regions[1].clone())
}

/// A client whose operations give up after `ms` milliseconds.
fn quick_client(cluster: &Cluster, ms: u64) -> Client {
    cluster.client(ClientConfig {
        operation_timeout: Duration::from_millis(ms),
        ..ClientConfig::default()
    })
}

/// Merges `right` into `left` with the target's commit held back (the
/// `merge_commit_hold` failpoint, left on): the merge times out and the
/// source is `Merging` on every store.
fn prepare_merge_held(
    cluster: &Cluster,
    client: &Client,
    left: &flotilla_proto::metapb::Region,
    right: &flotilla_proto::metapb::Region,
) {
    fail::cfg("merge_commit_hold", "return").unwrap();
    let held = client.merge(right.id, left.id);
    assert!(
        matches!(held, Err(Error::Timeout)),
        "the merge ended with its commit held back: {held:?}"
    );
    assert!(eventually(|| everywhere_in(
        cluster,
        right.id,
        PeerState::Merging
    )));
}

/// Whether every running store has region `id` in `state`.
fn everywhere_in(cluster: &Cluster, id: u64, state: PeerState) -> bool {
    cluster.store_ids().iter().all(|&s| {
        cluster
            .store(s)
            .is_none_or(|st| region_state(st.engine(), id).is_some_and(|r| r.state() == state))
    })
}

fn merging_refusal(e: &Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(e, Err(Error::Admin(AdminError::RegionMerging { .. })))
}

/// admin.md scenario 22: the target's leader holds back the CommitMerge,
/// so the source stays `Merging` (on every store) after its PrepareMerge
/// applied; it takes no write and no log compaction, also after every
/// store restarted (the state is on disk and the gate comes back with
/// it). Released, the merge completes and no key is lost.
#[test]
fn merge_survives_a_restart_between_prepare_and_commit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, _, client) = started(&dir);
    let (left, right) = split_in_two(&client);
    let quick = quick_client(&cluster, 1500);
    prepare_merge_held(&cluster, &quick, &left, &right);
    let source_key = key(KEYS - 1);
    assert!(merging_refusal(&quick.put(&source_key, b"x")));
    assert!(merging_refusal(&quick.compact_log(right.id, 1)));

    cluster.restart_all().expect("restart");
    assert!(everywhere_in(&cluster, right.id, PeerState::Merging));
    let quick = quick_client(&cluster, 1500);
    assert!(
        eventually(|| merging_refusal(&quick.put(&source_key, b"x"))),
        "a restarted merging source took a write"
    );

    fail::remove("merge_commit_hold");
    assert!(
        eventually(|| everywhere_in(&cluster, right.id, PeerState::Tombstone)),
        "the merge did not complete after the restart"
    );
    let fresh = cluster.client(ClientConfig::default());
    for i in 0..KEYS {
        assert_eq!(
            fresh.get(&key(i)).expect("get").as_deref(),
            Some(&i.to_be_bytes()[..]),
            "key {i}"
        );
    }
    fresh.put(&source_key, b"after").expect("put");
    for &s in cluster.store_ids() {
        assert!(eventually(|| cluster.store(s).unwrap().region_count() == 1));
    }
    cluster.shutdown();
    scenario.teardown();
}

/// admin.md scenario 24 (TiKV's `test_node_failed_merge_before_succeed_merge`,
/// tikv#6584): the target splits while the CommitMerge is held back, so
/// the CommitMerge, proposed under the epoch the source recorded (after
/// every store restarted), is refused by every target replica; that
/// refusal (final: the target moved past the epoch) rolls the source
/// back, which serves again with its
/// `version` bumped twice. A second merge, into the region now adjacent,
/// succeeds, and no key is lost on the way.
#[test]
fn merge_rolls_back_when_the_target_splits_then_merges_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, _, client) = started(&dir);
    let (left, right) = split_in_two(&client);
    let quick = quick_client(&cluster, 1500);
    prepare_merge_held(&cluster, &quick, &left, &right);
    // The target changes under the merge.
    let pieces = client.split_at(&key(KEYS / 4)).expect("split the target");
    let adjacent = pieces
        .iter()
        .find(|r| r.end_key == right.start_key)
        .expect("the piece next to the source")
        .clone();
    // Restarted, every store still proves the refusal: its target peer
    // applied everything since the recorded epoch from the log, as its
    // apply origin on disk says.
    cluster.restart_all().expect("restart");
    fail::remove("merge_commit_hold");
    assert!(
        eventually(|| everywhere_in(&cluster, right.id, PeerState::Normal)),
        "the merge was not rolled back"
    );
    let rolled = client.locate(&key(KEYS - 1)).expect("locate");
    let fresh = cluster.client(ClientConfig::default());
    let version = fresh
        .locate(&key(KEYS - 1))
        .map(|r| (r.id, r.region_epoch.unwrap().version));
    assert!(
        eventually(|| fresh.put(&key(KEYS - 1), &(KEYS - 1).to_be_bytes()).is_ok()),
        "the rolled-back source does not serve: {rolled:?} {version:?}"
    );
    let store = cluster.store(cluster.store_ids()[0]).unwrap();
    let state = region_state(store.engine(), right.id).unwrap();
    assert_eq!(
        state.region.and_then(|r| r.region_epoch).map(|e| e.version),
        right.region_epoch.map(|e| e.version + 2),
        "prepare and rollback each bump the version"
    );

    let merged = fresh.merge(right.id, adjacent.id).expect("second merge");
    assert_eq!(merged.id, adjacent.id);
    assert_eq!(merged.end_key, right.end_key);
    assert!(eventually(|| everywhere_in(
        &cluster,
        right.id,
        PeerState::Tombstone
    )));
    for i in 0..KEYS {
        assert_eq!(
            fresh.get(&key(i)).expect("get").as_deref(),
            Some(&i.to_be_bytes()[..]),
            "key {i}"
        );
    }
    cluster.shutdown();
    scenario.teardown();
}

/// Changes `region_id`'s membership by one peer, retrying while the
/// region is busy (a change or merge pending, leadership moving).
fn change(
    client: &Client,
    region_id: u64,
    t: ConfChangeType,
    peer: Peer,
) -> flotilla_proto::metapb::Region {
    for _ in 0..200 {
        match client.change_peer(region_id, t, peer) {
            Ok(r) => return r,
            Err(Error::Admin(AdminError::ConfChangePending { .. })) => {}
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("{t:?} of {peer:?}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{t:?} of {peer:?} never applied");
}

/// A merge whose target waits at its CommitMerge on one store.
struct WaitingTarget {
    /// The target before the merge.
    left: flotilla_proto::metapb::Region,
    /// The target after it.
    merged: flotilla_proto::metapb::Region,
    /// The store whose target waits.
    lagging: u64,
    /// The cut of the source's messages to that store.
    cut: flotilla_raftstore::store::FilterId,
}

/// Splits the region in two and merges the right half into the left one
/// while one store (leading neither) hears nothing of the right half: its
/// source misses a few writes (within the merge's log gap), so its target
/// waits at the CommitMerge; `failpoint` (left on, on that store) loses
/// its ask to catch up (`merge_catch_up_lost`), has the source stall on
/// it (`merge_catch_up_stalls`) or find no source peer
/// (`merge_source_gone`). Returns once the other
/// stores finished the merge and the waiting target is still at its old
/// range on disk.
fn merge_with_target_waiting(cluster: &Cluster, client: &Client, failpoint: &str) -> WaitingTarget {
    let (left, right) = split_in_two(client);
    let lagging = flotilla_tests::harness::store_leading_none(cluster, &[left.id, right.id]);
    let cut = flotilla_tests::harness::cut_region_to(cluster, right.id, lagging);
    write(client, KEYS..KEYS + 5);
    // On the lagging store only: elsewhere a target may apply the
    // CommitMerge just before its own source applied the PrepareMerge,
    // and must hear from it.
    fail::cfg(failpoint, &format!("return({lagging})")).unwrap();
    let merged = client.merge(right.id, left.id).expect("merge");
    assert!(eventually(|| cluster.store_ids().iter().all(|&s| s
        == lagging
        || region_state(cluster.store(s).unwrap().engine(), right.id)
            .is_some_and(|r| r.state() == PeerState::Tombstone))));
    let waiting = region_state(cluster.store(lagging).unwrap().engine(), left.id).unwrap();
    assert_eq!(
        (waiting.state(), waiting.region.as_ref()),
        (PeerState::Normal, Some(&left)),
        "the lagging store's target waits before the merge"
    );
    WaitingTarget {
        left,
        merged,
        lagging,
        cut,
    }
}

/// Merge GC hole 4 (session 15's note): an apply delegate stopped at a
/// CommitMerge until its source caught up kept everything behind it in
/// its backlog, a `Destroy` too. A target peer whose source never caught
/// up (here the source stalls on the ask: the `merge_catch_up_stalls`
/// failpoint, as one whose log does not meet the carried tail) and which
/// its region then removed was never cleared: its region stayed `Normal`
/// on disk with its old range, and its id stayed half destroyed on that
/// store for good. Now a removed peer goes while it waits (what it had
/// not applied, its region's members apply) and tells the source it gave
/// up (review of session 23: else the source waits for it and is never
/// superseded). A new peer of the region on that store then takes a
/// snapshot past the merge and holds every key of both halves.
#[test]
fn a_peer_removed_while_its_merge_waits_for_the_source_is_destroyed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _, client) = started(&dir);
    let waiting = merge_with_target_waiting(&cluster, &client, "merge_catch_up_stalls");
    let WaitingTarget {
        left,
        merged,
        lagging,
        cut,
    } = waiting;
    let engine = cluster.store(lagging).unwrap().engine().clone();
    let version = |r: &flotilla_proto::metapb::Region| r.region_epoch.unwrap().version;
    let at_lagging = |id| region_state(&engine, id).expect("region state");

    let removed = *merged.peers.iter().find(|p| p.store_id == lagging).unwrap();
    let shrunk = change(&client, left.id, ConfChangeType::RemoveNode, removed);
    assert!(
        eventually(|| at_lagging(left.id).state() == PeerState::Tombstone),
        "the removed peer waiting at its merge was never destroyed: {:?}",
        at_lagging(left.id)
    );

    // A new peer of the merged region on that store catches up by a
    // snapshot and holds every key: the stale source there, which the
    // destroyed target had asked to catch up, heard that it gave up and
    // gives way (else it would wait for that target for good).
    fail::remove("merge_catch_up_stalls");
    cluster.transport().remove_filter(cut);
    let added = Peer {
        id: cluster.store(lagging).unwrap().alloc_id().unwrap(),
        store_id: lagging,
        role: PeerRole::Learner as i32,
    };
    let grown = change(&client, left.id, ConfChangeType::AddLearnerNode, added);
    assert_eq!(grown.peers.len(), shrunk.peers.len() + 1);
    assert!(
        eventually(|| holds(&engine, 0..KEYS + 5)),
        "the new peer on the lagging store does not hold every key"
    );
    let state = at_lagging(left.id);
    assert_eq!(state.state(), PeerState::Normal);
    assert_eq!(state.region.as_ref().map(version), Some(version(&merged)));
    drop(engine);
    cluster.shutdown();
    scenario.teardown();
}

/// A peer whose apply waits at a CommitMerge could serve nothing if it
/// were elected (for good if its source never comes): it holds its
/// campaigns until the merge applies. Leadership handed to it again and
/// again never arrives, and the merged region keeps taking writes.
/// (Before, the transfer made it the leader, and every write to the
/// region timed out.)
#[test]
fn a_peer_waiting_at_a_merge_does_not_take_leadership() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _, client) = started(&dir);
    let WaitingTarget {
        left, lagging, cut, ..
    } = merge_with_target_waiting(&cluster, &client, "merge_catch_up_lost");
    let quick = quick_client(&cluster, 3_000);
    for round in 0..3 {
        quick
            .transfer_leader(left.id, lagging)
            .unwrap_or_else(|e| panic!("transfer {round} not started: {e}"));
        // Past the transfer's election timeout.
        std::thread::sleep(Duration::from_millis(20 * FAST_TICK_MS));
        let at = KEYS + 5 + round;
        quick
            .put(&key(at), &at.to_be_bytes())
            .expect("the merged region takes writes");
    }
    assert_ne!(
        flotilla_tests::harness::inspected_leader(&cluster, left.id),
        Some(lagging)
    );
    assert!(holds(cluster.store(lagging).unwrap().engine(), 0..KEYS / 2));
    fail::remove("merge_catch_up_lost");
    cluster.transport().remove_filter(cut);
    cluster.shutdown();
    scenario.teardown();
}

/// "Merge source has no peer here" (session 15's note): a target peer
/// whose CommitMerge finds no peer of the source on its store (the
/// `merge_source_gone` failpoint) has nothing that could resume its wait.
/// It asks its leader for a snapshot (`RawNode::request_snapshot`), which
/// is past its commit index, so past the merge. While the store is cut
/// off from the source, the stale source there keeps the range and the
/// snapshot is refused; healed, the source learns it was merged away and
/// gives way, the snapshot lands with the writes the source missed, and
/// the peer's campaigns are released: it takes leadership. (Before, it
/// waited for good.)
#[test]
fn a_target_whose_source_has_no_peer_here_takes_a_snapshot_past_the_merge() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _, client) = started(&dir);
    let WaitingTarget {
        left,
        merged,
        lagging,
        cut,
    } = merge_with_target_waiting(&cluster, &client, "merge_source_gone");
    write(&client, KEYS + 5..KEYS + 8);
    fail::remove("merge_source_gone");
    cluster.transport().remove_filter(cut);
    let engine = cluster.store(lagging).unwrap().engine().clone();
    assert!(
        eventually(|| holds(&engine, 0..KEYS + 8)
            && region_state(&engine, left.id)
                .and_then(|s| s.region)
                .is_some_and(|r| r.region_epoch == merged.region_epoch)),
        "the waiting peer never took a snapshot past the merge: {:?}",
        region_state(&engine, left.id)
    );
    let quick = quick_client(&cluster, 3_000);
    assert!(
        eventually(|| {
            let _ = quick.transfer_leader(left.id, lagging);
            flotilla_tests::harness::inspected_leader(&cluster, left.id) == Some(lagging)
        }),
        "its campaigns were never released"
    );
    drop(engine);
    cluster.shutdown();
    scenario.teardown();
}
