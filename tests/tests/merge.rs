//! Region merge (issue #12 item 3, admin.md §1.2 and scenarios 21, 23,
//! 26, 27): a merge joins two adjacent regions on every store, the data
//! of both is the merged region's, a store whose source fell behind is
//! caught up from the tail the target carries, a merging source serves
//! nothing, and the refusals are typed. Crash and rollback scenarios (22,
//! 24) are in `failpoints.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_proto::eraftpb::ConfChangeType;
use flotilla_proto::metapb::{Peer, PeerRole, Region};
use flotilla_proto::raft_cmdpb::{AdminRequest, PrepareMergeRequest, admin_request};
use flotilla_proto::raft_serverpb::PeerState;
use flotilla_proto::raft_serverpb::RaftMessage;
use flotilla_raftstore::store::{
    AdminError, Client, ClientConfig, Cluster, Config, DropFilter, Error, Filter, MessageSink,
};
use flotilla_tests::harness::{
    FAST_TICK_MS, eventually, fast_config, inspected_leader, logger, region_state,
    store_leading_none, wait_leader,
};
use flotilla_tests::requests::{command, propose_to};
use flotilla_tests::tagged::Tagged;

/// The bootstrapped region.
const REGION: u64 = 1;
/// Keys written before a merge.
const KEYS: u64 = 60;
/// Failure guard for one inspection.
const ANSWER: Duration = Duration::from_secs(10);

fn config() -> Config {
    fast_config(FAST_TICK_MS)
}

/// This file's keys.
const DATA: Tagged = Tagged("mg");

/// Three stores, one region split at `DATA.key(KEYS / 2)` with `KEYS` keys
/// written: the cluster, a client and the two regions (left, right).
fn split_cluster(dir: &tempfile::TempDir) -> (Cluster, Client, Region, Region) {
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let client = cluster.client(ClientConfig::default());
    DATA.write(&client, 0..KEYS, 1);
    let (left, right) = split_and_settle(&cluster, &client);
    (cluster, client, left, right)
}

/// Splits the region in the middle of the keys and writes them all again:
/// both halves serve before a merge starts, and every peer has applied
/// all of both (their leaders know how far each peer got: a merge checks
/// it, and the tests that cut a store off count on it). Returns the two
/// regions (left, right).
fn split_and_settle(cluster: &Cluster, client: &Client) -> (Region, Region) {
    let regions = client.split_at(&DATA.key(KEYS / 2)).expect("split");
    let (left, right) = (regions[0].clone(), regions[1].clone());
    DATA.write(client, 0..KEYS, 1);
    for r in [&left, &right] {
        assert!(
            eventually(|| caught_up(cluster, r.id)),
            "region {} did not catch up everywhere",
            r.id
        );
    }
    (left, right)
}

/// Whether every store's peer of `region_id` has applied its last index,
/// the same everywhere.
fn caught_up(cluster: &Cluster, region_id: u64) -> bool {
    let indexes: Option<Vec<(u64, u64)>> = cluster
        .store_ids()
        .iter()
        .map(|&s| {
            let st = cluster
                .store(s)?
                .handle()
                .region_status(region_id, ANSWER)
                .ok()?;
            Some((st.applied_index, st.last_index))
        })
        .collect();
    indexes.is_some_and(|v| v.windows(2).all(|w| w[0] == w[1]) && v.iter().all(|(a, l)| a == l))
}

/// Every running store's state of the merged pair: the target `Normal`
/// over `merged`'s range, the source a tombstone naming the target.
fn merged_everywhere(cluster: &Cluster, source: u64, merged: &Region) -> bool {
    cluster.store_ids().iter().all(|&s| {
        let Some(store) = cluster.store(s) else {
            return true;
        };
        let engine = store.engine();
        let target_ok = region_state(engine, merged.id).is_some_and(|st| {
            st.state() == PeerState::Normal
                && st.region.as_ref().is_some_and(|r| {
                    r.start_key == merged.start_key
                        && r.end_key == merged.end_key
                        && r.region_epoch == merged.region_epoch
                })
        });
        let source_ok = region_state(engine, source).is_some_and(|st| {
            st.state() == PeerState::Tombstone
                && st
                    .merge_state
                    .as_ref()
                    .and_then(|m| m.target.as_ref())
                    .is_some_and(|t| t.id == merged.id)
        });
        target_ok && source_ok && store.region_count() == 1
    })
}

/// admin.md scenario 21: merging the right region into the left one
/// leaves one region over the whole key space on every store, with a
/// `version` past both (every cached epoch of either is stale); the
/// source is a tombstone naming the target; every key of both is
/// readable through a client whose cache predates the merge, and writable
/// again; all of it survives a restart of every store.
#[test]
fn merge_joins_two_regions_on_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, client, left, right) = split_cluster(&dir);
    let stale = cluster.client(ClientConfig::default());
    DATA.assert_reads(&stale, 0..KEYS, 1);

    let merged = client.merge(right.id, left.id).expect("merge");
    assert_eq!(merged.id, left.id);
    assert!(merged.start_key.is_empty() && merged.end_key.is_empty());
    let version = |r: &Region| r.region_epoch.unwrap().version;
    // The source's PrepareMerge bumped its version once.
    assert_eq!(
        version(&merged),
        version(&left).max(version(&right) + 1) + 1
    );
    assert!(
        eventually(|| merged_everywhere(&cluster, right.id, &merged)),
        "not merged on every store"
    );
    for &s in cluster.store_ids() {
        assert!(
            DATA.holds(cluster.store(s).unwrap().engine(), 0..KEYS, 1),
            "store {s} lost data of the merge"
        );
    }
    DATA.assert_reads(&stale, 0..KEYS, 1);
    DATA.write(&stale, 0..KEYS, 2);
    DATA.assert_reads(&client, 0..KEYS, 2);

    cluster.restart_all().expect("restart");
    assert!(merged_everywhere(&cluster, right.id, &merged));
    let fresh = cluster.client(ClientConfig::default());
    DATA.assert_reads(&fresh, 0..KEYS, 2);
    DATA.write(&fresh, 0..KEYS, 3);
    DATA.assert_reads(&fresh, 0..KEYS, 3);
    cluster.shutdown();
}

/// admin.md scenario 21, the other way round: the left region merges
/// into the right one, whose range grows to the left.
#[test]
fn merge_into_the_right_neighbour_grows_it_leftwards() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, left, right) = split_cluster(&dir);
    let merged = client.merge(left.id, right.id).expect("merge");
    assert_eq!(merged.id, right.id);
    assert!(merged.start_key.is_empty() && merged.end_key.is_empty());
    assert!(eventually(|| merged_everywhere(&cluster, left.id, &merged)));
    DATA.assert_reads(&client, 0..KEYS, 1);
    DATA.write(&client, 0..KEYS, 4);
    DATA.assert_reads(&client, 0..KEYS, 4);
    cluster.shutdown();
}

/// admin.md scenario 23: one store's source peer hears nothing of its
/// region from before the PrepareMerge on (its other peers commit it), so
/// when that store's target applies the CommitMerge its source is behind:
/// it appends the tail the CommitMerge carries, applies it, and the merge
/// completes there with every key of the source (none of the writes it
/// missed is lost).
#[test]
fn lagging_source_catches_up_from_the_carried_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, left, right) = split_cluster(&dir);
    let lagging = store_leading_none(&cluster, &[left.id, right.id]);
    // Writes the lagging store's source misses, then the merge.
    let cut = flotilla_tests::harness::cut_region_to(&cluster, right.id, lagging);
    let right_keys = KEYS / 2..KEYS;
    // A few writes only: within the merge's log gap for the lagging peer.
    DATA.write(&client, right_keys.start..right_keys.start + 5, 5);
    let engine = cluster.store(lagging).unwrap().engine().clone();
    assert!(!DATA.holds(&engine, right_keys.start..right_keys.start + 5, 5));
    let merged = client.merge(right.id, left.id).expect("merge");
    assert!(
        eventually(|| merged_everywhere(&cluster, right.id, &merged)),
        "the lagging store did not finish the merge"
    );
    assert!(
        DATA.holds(&engine, right_keys.start..right_keys.start + 5, 5),
        "the lagging store lost writes of the source"
    );
    cluster.transport().remove_filter(cut);
    DATA.assert_reads(&client, right_keys.start..right_keys.start + 5, 5);
    drop(engine);
    cluster.shutdown();
}

/// admin.md scenario 27: each refusal of a merge is typed and proposes
/// nothing: into itself, regions that do not touch, peers on other
/// stores, a peer too far behind (its store stopped while the log grew),
/// a command the client may not send (CommitMerge is the store's own).
/// Afterwards the regions serve as before.
#[test]
fn merge_refusals_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, client, left, _right) = split_cluster(&dir);
    cluster.add_store(4).unwrap();
    // A third region, not touching the left one.
    let regions = client.split_at(&DATA.key(KEYS * 3 / 4)).expect("split");
    let far = regions
        .iter()
        .find(|r| r.end_key.is_empty())
        .unwrap()
        .clone();
    let admin = |e: Result<Region, Error>| match e {
        Err(Error::Admin(a)) => a,
        other => panic!("not an admin refusal: {other:?}"),
    };
    assert_eq!(
        admin(client.merge(left.id, left.id)),
        AdminError::MergeIntoSelf { region_id: left.id }
    );
    assert_eq!(
        admin(client.merge(left.id, far.id)),
        AdminError::MergeNotAdjacent {
            source_id: left.id,
            target: far.id
        }
    );
    // A learner of the far region on store 4: not on the same stores.
    let leader = inspected_leader(&cluster, far.id).expect("leader");
    let learner = Peer {
        id: cluster.store(leader).unwrap().alloc_id().unwrap(),
        store_id: 4,
        role: PeerRole::Learner as i32,
    };
    client
        .change_peer(far.id, ConfChangeType::AddLearnerNode, learner)
        .expect("add learner");
    let middle = client.locate(&DATA.key(KEYS * 5 / 8)).expect("locate");
    assert_eq!(
        admin(client.merge(middle.id, far.id)),
        AdminError::MergeNotColocated {
            source_id: middle.id,
            target: far.id
        }
    );
    // A follower of the left region stopped while its log grows past the
    // gap.
    let left_leader = inspected_leader(&cluster, left.id).expect("leader");
    let down = *left
        .peers
        .iter()
        .map(|p| &p.store_id)
        .find(|&&s| s != left_leader)
        .unwrap();
    cluster.stop_store(down);
    let gap = Config::default().merge_max_log_gap;
    for i in 0..gap + 5 {
        client.put(&DATA.key(i % (KEYS / 2)), b"gap").expect("put");
    }
    // Refused until the deadline (the client asks again while a peer may
    // catch up): a short one.
    let quick = cluster.client(ClientConfig {
        operation_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    });
    assert!(matches!(
        admin(quick.merge(left.id, middle.id)),
        AdminError::MergeLogGapTooLarge { .. }
    ));
    cluster.start_store(down).expect("restart");
    DATA.write(&client, 0..KEYS, 6);
    DATA.assert_reads(&client, 0..KEYS, 6);
    cluster.shutdown();
}

/// admin.md scenario 26 (and the merging gate): once the source's
/// PrepareMerge applied and before the merge ends, the source's leader
/// serves no read or write (`RegionMerging`, retried by the client until
/// the region is gone); here the target is held back by dropping its
/// messages, so the source stays merging. Once they flow again the merge
/// commits and the client's retried operations land in the target.
#[test]
fn merging_source_serves_nothing_until_the_merge_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, left, right) = split_cluster(&dir);
    // The target's leader cannot commit: its entries reach no follower.
    let hold = cluster
        .transport()
        .add_filter(std::sync::Arc::new(DropFilter {
            region_id: Some(left.id),
            ..Default::default()
        }));
    let quick = cluster.client(ClientConfig {
        operation_timeout: Duration::from_millis(600),
        ..ClientConfig::default()
    });
    // The merge's answer is the commit, which cannot come yet.
    let merging = std::thread::spawn({
        let client = cluster.client(ClientConfig::default());
        let (s, t) = (right.id, left.id);
        move || client.merge(s, t)
    });
    let source_key = DATA.key(KEYS - 1);
    let mut last = None;
    assert!(
        eventually(|| {
            let got = quick.get(&source_key);
            let refused = matches!(got, Err(Error::Admin(AdminError::RegionMerging { .. })));
            last = Some(got);
            refused
        }),
        "a read of the merging source was served: {last:?}"
    );
    assert!(matches!(
        quick.put(&source_key, b"x"),
        Err(Error::Admin(AdminError::RegionMerging { .. }))
    ));
    assert!(matches!(
        quick.split_at(&DATA.key(KEYS - 3)),
        Err(Error::Admin(AdminError::RegionMerging { .. }))
    ));
    cluster.transport().remove_filter(hold);
    let merged = merging.join().unwrap().expect("merge");
    assert!(eventually(|| merged_everywhere(
        &cluster, right.id, &merged
    )));
    DATA.assert_reads(&client, 0..KEYS, 1);
    client
        .put(&source_key, b"after")
        .expect("put after the merge");
    assert_eq!(
        client.get(&source_key).expect("get").as_deref(),
        Some(&b"after"[..])
    );
    cluster.shutdown();
}

/// admin.md scenario 25: a store isolated through a whole merge (its
/// source peer never hears the PrepareMerge) finds, once healed, that the
/// target's log it lacks is compacted: its target peer needs a snapshot,
/// which its stale source's range is in the way of. The source hears from
/// the other stores that it was merged away, and the target's snapshot
/// (past the merge) has it destroyed first; the store ends with the
/// merged region only, holding every key.
#[test]
fn isolated_store_takes_the_merged_target_by_snapshot() {
    isolated_store_catches_up_through_a_merge(false);
}

/// Scenario 25 with the isolated store's source peer hibernated before the
/// cut: its leader is destroyed by the merge, and the isolated store keeps
/// supporting the leader's store (the cut is shorter than the support
/// duration), so no withdrawal wakes it. The target's refused snapshot
/// wakes it (`MergeMsg::RangeWanted`); awake, it hears from the other
/// stores that it was merged away. (Before the fix it slept for good and
/// the target's snapshot was refused forever; in the old timing the source
/// had not yet hibernated when the cut came, so the first test passed.)
#[test]
fn a_source_asleep_through_its_merge_wakes_for_the_target_snapshot() {
    isolated_store_catches_up_through_a_merge(true);
}

/// Merges `source` into `target`, writes every key again (value 7), and
/// compacts the merged region's log up to what its leader applied, so a
/// store that missed the merge can only catch up by snapshot. Returns the
/// merged region.
fn merge_write_and_compact(
    cluster: &Cluster,
    client: &Client,
    source: &Region,
    target: &Region,
) -> Region {
    let merged = client.merge(source.id, target.id).expect("merge");
    DATA.write(client, 0..KEYS, 7);
    let leader = inspected_leader(cluster, merged.id).expect("leader");
    let applied = cluster
        .store(leader)
        .unwrap()
        .handle()
        .region_status(merged.id, ANSWER)
        .expect("status")
        .applied_index;
    client.compact_log(merged.id, applied).expect("compact");
    merged
}

/// The body of the two scenario-25 tests; `source_asleep`: the cut comes
/// once the isolated store's source peer hibernates.
fn isolated_store_catches_up_through_a_merge(source_asleep: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, left, right) = split_cluster(&dir);
    let isolated = store_leading_none(&cluster, &[left.id, right.id]);
    if source_asleep {
        let handle = cluster.store(isolated).unwrap().handle();
        assert!(
            eventually(|| handle
                .region_status(right.id, ANSWER)
                .is_ok_and(|st| st.hibernating)),
            "the isolated store's source never hibernated"
        );
    }
    let cut = cluster.transport().isolate(isolated);
    let merged = merge_write_and_compact(&cluster, &client, &right, &left);
    let engine = cluster.store(isolated).unwrap().engine().clone();
    assert_eq!(
        region_state(&engine, right.id).map(|s| s.state()),
        Some(PeerState::Normal),
        "the isolated store's source heard of the merge"
    );
    cluster.transport().remove_filter(cut);
    assert!(
        eventually(|| merged_everywhere(&cluster, right.id, &merged)
            || cluster.store(isolated).unwrap().region_count() == 1
                && DATA.holds(&engine, 0..KEYS, 7)),
        "the isolated store did not catch up: {:?} / {:?}",
        region_state(&engine, right.id),
        region_state(&engine, left.id)
    );
    assert!(
        eventually(|| DATA.holds(&engine, 0..KEYS, 7)),
        "keys missing"
    );
    let target = region_state(&engine, left.id).expect("target state");
    assert_eq!(target.state(), PeerState::Normal);
    let range = target.region.expect("region");
    assert!(range.start_key.is_empty() && range.end_key.is_empty());
    assert_eq!(
        region_state(&engine, right.id).map(|s| s.state()),
        Some(PeerState::Tombstone)
    );
    drop(engine);
    cluster.shutdown();
}

/// Drops every message to `store` of a region not in `keep`; the
/// store-level heartbeat batches to it pass with the beats of `keep`
/// only.
struct AllBut {
    store: u64,
    keep: Vec<u64>,
}

impl Filter for AllBut {
    fn filter(&self, msgs: &mut Vec<RaftMessage>) {
        msgs.retain_mut(|m| {
            if m.to_peer.is_none_or(|p| p.store_id != self.store)
                || self.keep.contains(&m.region_id)
            {
                return true;
            }
            if let Some(h) = m.heartbeats.as_mut() {
                h.beats.retain(|b| self.keep.contains(&b.region_id));
            }
            if let Some(h) = m.heartbeat_responses.as_mut() {
                h.responses.retain(|b| self.keep.contains(&b.region_id));
            }
            m.region_id == 0
        });
    }
}

/// Chaos seed 18's bug (session 15): a store hears that its source peer
/// was merged away before it has applied the split that creates the
/// target's peer there. The source must wait for that split, not go: the
/// target peer the split creates has the CommitMerge in its log and needs
/// the source's data. Here a store hears nothing but the source's
/// messages while its neighbour splits the target off and the source
/// merges into it; then the neighbour's, so the split applies there; then
/// all. It ends with the target merged from its log, holding the source's
/// keys, and the source a tombstone naming it. (Before the fix the source
/// was destroyed at the notice, and the target's apply waited for it
/// forever.)
#[test]
fn a_merged_source_waits_for_the_split_that_creates_its_target() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, left, right) = split_cluster(&dir);
    let behind = store_leading_none(&cluster, &[left.id, right.id]);
    let only = |keep: Vec<u64>| {
        cluster.transport().add_filter(std::sync::Arc::new(AllBut {
            store: behind,
            keep,
        }))
    };
    let cut = only(vec![right.id]);
    let split = client.split_at(&DATA.key(KEYS / 4)).expect("split");
    let target = split
        .iter()
        .find(|r| r.end_key == right.start_key)
        .expect("the split's right part")
        .clone();
    DATA.write(&client, KEYS / 2..KEYS, 9);
    let merged = client.merge(right.id, target.id).expect("merge");
    let engine = cluster.store(behind).unwrap().engine().clone();
    let metrics = || cluster.store(behind).unwrap().metrics();
    // The behind store's source hears it was merged away (its peers are
    // gone) while its store has no peer of the target.
    assert!(
        eventually(|| metrics()
            .merge_sources_waiting_for_split
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0),
        "the behind store's source did not wait for the split: {:?}",
        region_state(&engine, right.id)
    );
    assert!(region_state(&engine, target.id).is_none());
    // The neighbour's split applies there: the target's peer comes from it.
    let half = only(vec![right.id, left.id]);
    cluster.transport().remove_filter(cut);
    assert!(
        eventually(|| region_state(&engine, target.id).is_some()),
        "the behind store never split the target off"
    );
    cluster.transport().remove_filter(half);
    let done = || {
        let t = region_state(&engine, target.id);
        let s = region_state(&engine, right.id);
        t.is_some_and(|t| t.state() == PeerState::Normal && t.region.as_ref() == Some(&merged))
            && s.is_some_and(|s| {
                s.state() == PeerState::Tombstone
                    && s.merge_state
                        .and_then(|m| m.target)
                        .is_some_and(|t| t.id == target.id)
            })
    };
    assert!(
        eventually(done),
        "the behind store did not finish the merge: target {:?}, source {:?}",
        region_state(&engine, target.id),
        region_state(&engine, right.id)
    );
    assert!(
        DATA.holds(&engine, KEYS / 2..KEYS, 9),
        "the behind store lost the source's keys"
    );
    DATA.assert_reads(&client, KEYS / 2..KEYS, 9);
    drop(engine);
    cluster.shutdown();
}

/// A late message for a region merged away on every store: the store it
/// reaches answers with a notice that the region was merged (for a source
/// left behind), and the store the notice reaches, where the region is
/// gone too, drops it without answering. (Before the fix the
/// two stores traded notices forever, ~10,000 a second, found by a
/// hibernation change that made a leader's heartbeat response arrive
/// after the merge destroyed it.)
#[test]
fn a_message_for_a_merged_away_region_draws_one_notice() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, left, right) = split_cluster(&dir);
    let merged = client.merge(right.id, left.id).expect("merge");
    assert!(
        eventually(|| merged_everywhere(&cluster, right.id, &merged)),
        "not merged on every store"
    );
    let peer_on = |store: u64| *right.peers.iter().find(|p| p.store_id == store).unwrap();
    let (from, to) = (peer_on(1), peer_on(2));
    let unknown = |store: u64| {
        cluster
            .store(store)
            .unwrap()
            .metrics()
            .raft_messages_unknown_region
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = unknown(1);
    let late = flotilla_proto::raft_serverpb::RaftMessage {
        region_id: right.id,
        from_peer: Some(from),
        to_peer: Some(to),
        region_epoch: right.region_epoch,
        message: Some(flotilla_proto::eraftpb::Message {
            msg_type: flotilla_proto::eraftpb::MessageType::MsgHeartbeatResponse as i32,
            from: from.id,
            to: to.id,
            term: 100,
            ..Default::default()
        }),
        ..Default::default()
    };
    cluster.store(2).unwrap().handle().deliver(late);
    assert!(
        eventually(|| unknown(1) > before),
        "store 2's notice never reached store 1"
    );
    // Rounds on every store (writes through the merged region), then the
    // count again after more rounds: notices traded back and forth would
    // still be flowing (thousands a second), a late message of the merge
    // would not.
    let rounds = |v| {
        DATA.write(&client, 0..KEYS, v);
        DATA.assert_reads(&client, 0..KEYS, v);
        unknown(1) + unknown(2)
    };
    let settled = rounds(3);
    assert_eq!(rounds(4), settled, "the stores still trade notices");
    cluster.shutdown();
}

/// Bad input through the public API (admin.md §1.2, TiKV's
/// `check_merge_proposal`): a PrepareMerge whose target is not exactly the
/// region the source leader's store has (a version from the future, a
/// region id no store has) is refused typed before anything is proposed,
/// so the source is never left merging towards a target that could never
/// commit nor prove a refusal; it keeps serving.
#[test]
fn merge_into_a_target_the_store_does_not_have_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, left, right) = split_cluster(&dir);
    let leader = inspected_leader(&cluster, right.id).expect("leader");
    let source = client.locate(&DATA.key(KEYS - 1)).expect("locate");
    let left_now = client.locate(&DATA.key(0)).expect("locate");
    let prepare = |target: Region| {
        let mut req = command(&source, leader, Vec::new());
        req.admin_request = Some(AdminRequest {
            cmd: Some(admin_request::Cmd::PrepareMerge(PrepareMergeRequest {
                min_index: 0,
                target: Some(target),
            })),
        });
        propose_to(&cluster, leader, req, ANSWER)
    };
    let mut future = left_now.clone();
    future.region_epoch = future.region_epoch.map(|mut e| {
        e.version += 5;
        e
    });
    let mut ghost = left_now.clone();
    ghost.id = 999_999;
    for (target, id) in [(future, left.id), (ghost, 999_999)] {
        // The leader's log checks come first: a peer still behind (a
        // moment after the split) is refused as such, and asked again.
        let mut answer = prepare(target.clone());
        for _ in 0..100 {
            if !matches!(
                answer,
                Err(Error::Admin(
                    AdminError::MergeLogGapTooLarge { .. } | AdminError::MergeGapHasAdmin { .. }
                ))
            ) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            answer = prepare(target.clone());
        }
        match answer {
            Err(Error::Admin(AdminError::MergeTargetMismatch { target })) => {
                assert_eq!(target, id);
            }
            other => panic!("expected MergeTargetMismatch, got {other:?}"),
        }
    }
    DATA.write(&client, KEYS / 2..KEYS, 8);
    DATA.assert_reads(&client, KEYS / 2..KEYS, 8);
    // The real target still merges.
    let merged = client.merge(right.id, left.id).expect("merge");
    assert!(eventually(|| merged_everywhere(
        &cluster, right.id, &merged
    )));
    cluster.shutdown();
}

/// When [`learner_store_through_a_merge`] restarts the learner store.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// While it is cut off, after the merge.
    WhileCut,
    /// Right after the cut heals.
    AfterHeal,
    /// Not at all.
    Never,
}

/// Chaos seed 17 (session 20), scenario 25 for a learner: a fourth store
/// holds only learners of both regions; its source peer hibernates, the
/// store is cut off through the merge (the target's log is compacted past
/// it), and perhaps restarted. A learner never campaigns, and the stores
/// where the source is gone drop its wake-up beats, so nothing it sent
/// reached a store that could tell it was merged away, and the target's
/// snapshot was refused for good ("region … here owns part of its
/// range"). Now it asks a voter of its region about its membership after
/// `PROBE_ELECTION_TIMEOUTS` election timeouts without a leader, hears the
/// merge notice, and gives way to the target's snapshot. The store ends
/// with the merged region only, holding every key, and the source a
/// tombstone. (The restart variants also failed while a peer handling a
/// message every few ticks put its probe off with each one.)
fn learner_store_through_a_merge(restart: Restart) {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::bootstrap(dir.path(), 3, 1, config(), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let client = cluster.client(ClientConfig::default());
    DATA.write(&client, 0..KEYS, 1);
    cluster.add_store(4).unwrap();
    let learner = Peer {
        id: cluster.store(1).unwrap().alloc_id().unwrap(),
        store_id: 4,
        role: PeerRole::Learner as i32,
    };
    let mut added = false;
    for _ in 0..200 {
        match client.change_peer(REGION, ConfChangeType::AddLearnerNode, learner) {
            Ok(_) => {
                added = true;
                break;
            }
            Err(e) if e.is_retryable() => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("add learner: {e}"),
        }
    }
    assert!(added, "the learner was never added");
    let (left, right) = split_and_settle(&cluster, &client);
    let handle = cluster.store(4).unwrap().handle();
    assert!(
        eventually(|| handle
            .region_status(right.id, ANSWER)
            .is_ok_and(|st| st.hibernating)),
        "the learner store's source never hibernated"
    );
    drop(handle);
    let withdrawals = |c: &Cluster| {
        c.store(4)
            .unwrap()
            .metrics()
            .support_withdrawals
            .load(Ordering::Relaxed)
    };
    let before = withdrawals(&cluster);
    let cut = cluster.transport().isolate(4);
    // Cut off past the support window: its store's liveness wakes the
    // sleeping learner. (Healed sooner, nothing would wake it: see the
    // ignored `learner_asleep_when_removed_in_a_short_cut_…` in
    // conf_change.rs.)
    assert!(
        eventually(|| withdrawals(&cluster) > before),
        "store 4 never withdrew its support"
    );
    let merged = merge_write_and_compact(&cluster, &client, &right, &left);
    if matches!(restart, Restart::WhileCut) {
        cluster.stop_store(4);
        cluster.start_store(4).unwrap();
    }
    cluster.transport().remove_filter(cut);
    if matches!(restart, Restart::AfterHeal) {
        cluster.stop_store(4);
        cluster.start_store(4).unwrap();
    }
    let engine = cluster.store(4).unwrap().engine().clone();
    // The learner store's source is a tombstone; it names the target if
    // it applied the merge, not if the target's snapshot superseded it.
    let caught_up = || {
        let target = region_state(&engine, left.id);
        let source = region_state(&engine, right.id);
        cluster.store(4).unwrap().region_count() == 1
            && source.is_some_and(|s| s.state() == PeerState::Tombstone)
            && target.is_some_and(|t| {
                t.state() == PeerState::Normal
                    && t.region
                        .is_some_and(|r| r.region_epoch == merged.region_epoch)
            })
            && DATA.holds(&engine, 0..KEYS, 7)
    };
    assert!(
        eventually(caught_up),
        "the learner store did not catch up: {:?} / {:?}",
        region_state(&engine, right.id),
        region_state(&engine, left.id)
    );
    drop(engine);
    cluster.shutdown();
}

/// See [`learner_store_through_a_merge`].
#[test]
fn a_learner_store_restarted_while_cut_off_through_a_merge_catches_up() {
    learner_store_through_a_merge(Restart::WhileCut);
}

/// See [`learner_store_through_a_merge`].
#[test]
fn a_learner_store_restarted_after_a_cut_through_a_merge_catches_up() {
    learner_store_through_a_merge(Restart::AfterHeal);
}

/// See [`learner_store_through_a_merge`].
#[test]
fn a_learner_store_cut_off_through_a_merge_catches_up() {
    learner_store_through_a_merge(Restart::Never);
}
