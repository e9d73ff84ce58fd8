//! Scenario tests: snapshots.

mod raft_common;

use flotilla_proto::eraftpb::MessageType;
use flotilla_raftstore::raft::tracker::ProgressState;
use flotilla_raftstore::raft::{StateRole, Storage};
use raft_common::*;

/// A 3-node cluster where node 3 missed entries the leader then compacted.
fn lagging_and_compacted() -> Network {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    for i in 0..5u8 {
        net.propose(1, &[i]).unwrap();
    }
    let applied = net.raft(1).raft_log().applied;
    net.storage[&1].wl().compact(applied).unwrap();
    net.recover();
    net
}

/// checklist: snap-1
#[test]
fn compacted_follower_gets_snapshot() {
    let mut net = lagging_and_compacted();
    net.tick(1, HEARTBEAT_TICK);
    assert!(
        net.delivered
            .iter()
            .any(|m| m.msg_type() == MessageType::MsgSnapshot && m.to == 3)
    );
    assert!(
        !net.delivered
            .iter()
            .any(|m| m.msg_type() == MessageType::MsgSnapshot && m.to == 2),
        "an up-to-date follower never gets one"
    );
}

/// checklist: snap-1 (progress in snapshot state while the snapshot is out)
#[test]
fn progress_enters_snapshot_state() {
    let mut net = lagging_and_compacted();
    // Deliver the heartbeat but drop 3's answers to the snapshot.
    net.ignore(MessageType::MsgSnapshot);
    net.tick(1, HEARTBEAT_TICK);
    let pr = net.raft(1).prs().get(3).unwrap();
    assert_eq!(pr.state, ProgressState::Snapshot);
    assert!(pr.pending_snapshot > 0);
    assert!(pr.is_paused(), "no appends while the snapshot is in flight");
}

/// checklist: snap-1, snap-3 (the follower restores and catches up)
#[test]
fn follower_catches_up_via_snapshot() {
    let mut net = lagging_and_compacted();
    net.tick(1, HEARTBEAT_TICK);
    let li = net.raft(1).raft_log().last_index();
    assert_eq!(net.raft(3).raft_log().committed, li);
    assert_eq!(
        net.raft(1).prs().get(3).unwrap().state,
        ProgressState::Replicate
    );
    net.propose(1, b"after").unwrap();
    assert_eq!(
        net.applied[&3],
        vec![b"after".to_vec()],
        "log resumes after the snapshot"
    );
}

/// checklist: snap-1 (a temporarily unavailable snapshot is retried later)
#[test]
fn snapshot_temporarily_unavailable_retried() {
    let mut net = lagging_and_compacted();
    net.storage[&1].wl().trigger_snap_unavailable(true);
    net.tick(1, HEARTBEAT_TICK);
    assert!(
        !net.delivered
            .iter()
            .any(|m| m.msg_type() == MessageType::MsgSnapshot)
    );
    assert_eq!(
        net.raft(1).prs().get(3).unwrap().state,
        ProgressState::Probe
    );
    net.storage[&1].wl().trigger_snap_unavailable(false);
    net.tick(1, HEARTBEAT_TICK);
    assert!(
        net.delivered
            .iter()
            .any(|m| m.msg_type() == MessageType::MsgSnapshot)
    );
}

/// checklist: snap-2
#[test]
fn report_snapshot_moves_back_to_probe() {
    for success in [true, false] {
        let mut net = lagging_and_compacted();
        net.ignore(MessageType::MsgSnapshot);
        net.tick(1, HEARTBEAT_TICK);
        let pending = net.raft(1).prs().get(3).unwrap().pending_snapshot;
        net.node(1).report_snapshot(3, success);
        let pr = net.raft(1).prs().get(3).unwrap();
        assert_eq!(pr.state, ProgressState::Probe);
        assert!(pr.probe_sent, "waits for a heartbeat before probing");
        if success {
            assert_eq!(pr.next_idx, pending + 1);
        } else {
            assert_eq!(pr.next_idx, pr.matched + 1);
        }
    }
}

/// checklist: snap-3
#[test]
fn follower_restores_newer_ignores_older() {
    let mut n = new_node(2, &[1, 2, 3], &[]);
    let mut m = msg(MessageType::MsgSnapshot, 1, 2, 2);
    m.snapshot = Some(Box::new(snapshot(10, 2, &[1, 2, 3])));
    n.step(m).unwrap();
    assert_eq!(n.raft.raft_log().committed, 10);
    assert_eq!(n.raft.raft_log().last_index(), 10);
    let resp = n.raft.take_all_msgs().pop().unwrap();
    assert_eq!(
        (resp.msg_type(), resp.index),
        (MessageType::MsgAppendResponse, 10)
    );
    let mut old = msg(MessageType::MsgSnapshot, 1, 2, 2);
    old.snapshot = Some(Box::new(snapshot(5, 1, &[1, 2, 3])));
    n.step(old).unwrap();
    assert_eq!(n.raft.raft_log().last_index(), 10, "older snapshot ignored");
    let resp = n.raft.take_all_msgs().pop().unwrap();
    assert_eq!(resp.index, 10, "answers with its commit index");
    // The snapshot is handed out once in a Ready and then persisted.
    let rd = n.ready();
    assert_eq!(
        rd.snapshot
            .as_ref()
            .and_then(|s| s.metadata.as_ref())
            .map(|m| m.index),
        Some(10)
    );
    assert!(rd.committed_entries.is_empty());
    let s = n.store().clone();
    persist(&s, &rd);
    n.advance(rd);
    assert_eq!(s.first_index().unwrap(), 11);
    assert_eq!(n.raft.raft_log().applied, 10);
    assert!(!n.has_ready());
}

/// checklist: snap-4
#[test]
fn restore_takes_conf_state_from_snapshot() {
    let mut n = new_node(2, &[1, 2, 3], &[]);
    let mut m = msg(MessageType::MsgSnapshot, 1, 2, 2);
    m.snapshot = Some(Box::new(snapshot(10, 2, &[1, 2, 4, 5])));
    n.step(m).unwrap();
    assert_eq!(n.raft.prs().conf_state().voters, vec![1, 2, 4, 5]);
    assert!(n.raft.prs().get(3).is_none());
    // A snapshot that does not include us is refused.
    let mut x = new_node(2, &[1, 2, 3], &[]);
    let mut m = msg(MessageType::MsgSnapshot, 1, 2, 2);
    m.snapshot = Some(Box::new(snapshot(10, 2, &[1, 3])));
    x.step(m).unwrap();
    assert_eq!(x.raft.raft_log().last_index(), 0);
    assert_eq!(x.raft.state(), StateRole::Follower);
}

/// checklist: snap-5
#[test]
fn compaction_respects_applied_index() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..3u8 {
        net.propose(1, &[i]).unwrap();
    }
    let applied = net.raft(2).raft_log().applied;
    net.storage[&2].wl().compact(applied).unwrap();
    assert!(net.raft(2).raft_log().first_index() - 1 <= applied);
    assert!(net.storage[&2].wl().compact(applied + 100).is_err());
    // The node keeps working and restarts from its compacted storage.
    net.propose(1, b"z").unwrap();
    net.restart(2, config(2));
    assert_eq!(
        net.raft(2).raft_log().committed,
        net.raft(1).raft_log().committed
    );
}

/// checklist: snap-1, snap-3 (a follower's snapshot request, as an
/// application that cannot apply its log from where it is makes it): a
/// leader may not request; a follower's request makes the leader send a
/// snapshot at or past the follower's commit index although the
/// follower's log is complete, and the follower restores it over its
/// matching log (no fast-forward), then follows the log again.
#[test]
fn a_requested_snapshot_is_restored_over_a_matching_log() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..3u8 {
        net.propose(1, &[i]).unwrap();
    }
    net.settle();
    assert!(matches!(
        net.node(1).request_snapshot(),
        Err(flotilla_raftstore::raft::Error::RequestSnapshotDropped)
    ));
    let committed = net.raft(3).raft_log().committed;
    assert!(
        net.raft(3)
            .raft_log()
            .match_term(committed, net.raft(1).term())
    );
    net.delivered.clear();
    net.node(3).request_snapshot().unwrap();
    net.settle();
    let snaps: Vec<u64> = net
        .delivered
        .iter()
        .filter(|m| m.msg_type() == MessageType::MsgSnapshot)
        .map(|m| {
            assert_eq!(m.to, 3, "only the asker gets one");
            m.snapshot
                .as_ref()
                .unwrap()
                .metadata
                .as_ref()
                .unwrap()
                .index
        })
        .collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0] >= committed);
    assert_eq!(
        net.storage[&3].first_index().unwrap(),
        snaps[0] + 1,
        "restored although the log held it"
    );
    net.propose(1, b"after").unwrap();
    net.settle();
    assert_eq!(
        net.raft(3).raft_log().last_index(),
        net.raft(1).raft_log().last_index()
    );
    assert_eq!(
        net.raft(1).prs().get(3).unwrap().state,
        ProgressState::Replicate
    );
}

/// checklist: snap-3 (a requested restore never drops acknowledged
/// entries; session 23's review): a follower whose log runs past its
/// commit index asks for a snapshot at or past its last index, and
/// refuses a snapshot between the two, which would replace entries it
/// may have acknowledged; one at its last index is restored.
#[test]
fn a_requested_snapshot_never_drops_the_tail() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..3u8 {
        net.propose(1, &[i]).unwrap();
    }
    net.settle();
    // An entry the followers hold but the leader never hears them ack.
    net.ignore(MessageType::MsgAppendResponse);
    net.propose(1, b"tail").unwrap();
    net.settle();
    let (committed, last) = (
        net.raft(3).raft_log().committed,
        net.raft(3).raft_log().last_index(),
    );
    let term = net.raft(1).term();
    net.node(3).request_snapshot().unwrap();
    let conf = net.storage[&1]
        .snapshot(0, 0)
        .unwrap()
        .metadata
        .unwrap()
        .conf_state;
    let snapshot_at = |index: u64| {
        let mut m = msg(MessageType::MsgSnapshot, 1, 3, term);
        m.snapshot = Some(Box::new(flotilla_proto::eraftpb::Snapshot {
            data: Default::default(),
            metadata: Some(flotilla_proto::eraftpb::SnapshotMetadata {
                conf_state: conf.clone(),
                index,
                term,
            }),
        }));
        m
    };
    assert!(committed < last, "the follower learns the commit later");
    net.node(3).step(snapshot_at(committed)).unwrap();
    assert_eq!(net.raft(3).raft_log().last_index(), last, "the tail stays");
    assert!(net.raft(3).snapshot_requested(), "still asking");
    net.node(3).step(snapshot_at(last)).unwrap();
    assert!(!net.raft(3).snapshot_requested(), "restored");
    assert_eq!(net.raft(3).raft_log().last_index(), last);
}
