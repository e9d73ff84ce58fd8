//! The store's range index (issue #11 item 1, admin.md §1.7) seen through
//! the public API: key lookup on a store, and votes for key ranges a live
//! region of the store already covers, which must not create peers (a
//! store that has not applied a split yet, or garbage delivered through
//! `MessageSink::deliver`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use flotilla_proto::eraftpb::{Message, MessageType};
use flotilla_proto::metapb::{Peer, RegionEpoch};
use flotilla_proto::raft_serverpb::RaftMessage;
use flotilla_raftstore::store::{Cluster, MessageSink};
use flotilla_tests::harness::{FAST_TICK_MS, eventually, fast_config, logger, wait_leader};

/// Failure guard for one lookup.
const ANSWER: Duration = Duration::from_secs(10);
/// A region id no store hosts.
const UNKNOWN: u64 = 9_999;

/// A pre-vote for region `UNKNOWN` over `[start, end)` to peer `to` on
/// `store`, as a peer of a region just split off would send it.
fn vote(store: u64, to: u64, start: &[u8], end: &[u8]) -> RaftMessage {
    let from = Peer {
        id: to + 1,
        store_id: store + 1,
        ..Default::default()
    };
    RaftMessage {
        region_id: UNKNOWN,
        from_peer: Some(from),
        to_peer: Some(Peer {
            id: to,
            store_id: store,
            ..Default::default()
        }),
        region_epoch: Some(RegionEpoch {
            conf_ver: 1,
            version: 2,
        }),
        start_key: Bytes::copy_from_slice(start),
        end_key: Bytes::copy_from_slice(end),
        message: Some(Message {
            msg_type: MessageType::MsgRequestPreVote as i32,
            from: from.id,
            to,
            term: 7,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A store locates a key in the region whose range holds it, and answers
/// `None` where it hosts no region (a new, empty store).
#[test]
fn stores_locate_keys_in_their_regions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        Cluster::bootstrap(dir.path(), 3, 2, fast_config(FAST_TICK_MS), &logger()).unwrap();
    let regions = cluster.regions().to_vec();
    for r in &regions {
        wait_leader(&cluster, r.id).expect("leader");
    }
    let store = cluster.store(1).unwrap();
    assert_eq!(store.region_count(), regions.len());
    for r in &regions {
        let found = store
            .locate(&r.start_key, ANSWER)
            .unwrap()
            .expect("a region");
        assert_eq!(found.id, r.id);
        assert_eq!(found.start_key, r.start_key);
    }
    // A proper prefix of the second region's start sorts before it: it is
    // in the first region.
    let start = &regions[1].start_key;
    let before = &start[..start.len() - 1];
    let found = store.locate(before, ANSWER).unwrap().expect("a region");
    assert_eq!(found.id, regions[0].id);

    cluster.add_store(4).unwrap();
    let empty = cluster.store(4).unwrap();
    assert_eq!(empty.region_count(), 0);
    assert_eq!(empty.locate(b"a", ANSWER).unwrap(), None);
}

/// A vote for a range that a live region of the store covers creates no
/// peer (the store has not applied the split that made that region, or
/// the message is garbage); the same vote to a store whose ranges leave
/// the range free does.
#[test]
fn votes_for_covered_ranges_create_no_peer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        Cluster::bootstrap(dir.path(), 3, 2, fast_config(FAST_TICK_MS), &logger()).unwrap();
    for r in cluster.regions().to_vec() {
        wait_leader(&cluster, r.id).expect("leader");
    }
    let store = cluster.store(1).unwrap();
    let dropped_before = store
        .metrics()
        .raft_messages_unknown_region
        .load(Ordering::Relaxed);
    store.handle().deliver(vote(1, 50, b"a", b"b"));
    store.handle().deliver(vote(1, 50, b"", b""));
    assert!(
        eventually(|| store
            .metrics()
            .raft_messages_unknown_region
            .load(Ordering::Relaxed)
            >= dropped_before + 2),
        "the votes were not dropped"
    );
    assert_eq!(store.metrics().peers_created.load(Ordering::Relaxed), 0);
    assert!(
        store
            .handle()
            .region_status(UNKNOWN, ANSWER)
            .is_err_and(|e| matches!(e, flotilla_raftstore::store::Error::RegionNotFound(_))),
        "a peer of the unknown region exists"
    );

    // A store with no region: the range is free, the peer is created.
    cluster.add_store(4).unwrap();
    let empty = cluster.store(4).unwrap();
    empty.handle().deliver(vote(4, 60, b"a", b"b"));
    assert!(
        eventually(|| empty.metrics().peers_created.load(Ordering::Relaxed) == 1),
        "no peer was created on the empty store"
    );
    let status = empty.handle().region_status(UNKNOWN, ANSWER).unwrap();
    assert_eq!(status.region.id, UNKNOWN);
    // Uninitialized: it owns no range yet.
    assert_eq!(empty.region_count(), 0);
}
