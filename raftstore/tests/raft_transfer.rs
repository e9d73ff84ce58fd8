//! Scenario tests: leader transfer.

mod raft_common;

use flotilla_proto::eraftpb::MessageType;
use flotilla_raftstore::raft::{Error, StateRole};
use raft_common::*;

/// checklist: transfer-1
#[test]
fn transfer_to_up_to_date_follower() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.node(1).transfer_leader(2);
    let m = net.process(1);
    assert!(
        m.iter()
            .any(|m| m.msg_type() == MessageType::MsgTimeoutNow && m.to == 2)
    );
    net.send(m);
    assert_eq!(net.raft(2).state(), StateRole::Leader);
    assert_eq!(net.raft(1).state(), StateRole::Follower);
    assert_eq!(net.raft(1).leader_id(), 2);
}

/// checklist: transfer-1 (works through the leader lease)
#[test]
fn transfer_with_check_quorum_overrides_lease() {
    let mut net = Network::new_with(&[1, 2, 3], |c| {
        c.check_quorum = true;
        c.pre_vote = true;
    });
    net.elect(1);
    net.node(1).transfer_leader(3);
    net.settle();
    assert_eq!(net.raft(3).state(), StateRole::Leader);
}

/// checklist: transfer-2
#[test]
fn transfer_to_lagging_follower_catches_it_up_first() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    for _ in 0..5 {
        net.propose(1, b"x").unwrap();
    }
    net.recover();
    net.node(1).transfer_leader(3);
    let m = net.process(1);
    assert!(
        !m.iter().any(|m| m.msg_type() == MessageType::MsgTimeoutNow),
        "not yet"
    );
    assert_eq!(net.raft(1).lead_transferee(), Some(3));
    net.send(m);
    assert_eq!(net.raft(3).state(), StateRole::Leader);
    assert_eq!(net.applied[&3].len(), 5);
}

/// checklist: transfer-3
#[test]
fn proposals_dropped_during_transfer() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.node(1).transfer_leader(3);
    assert_eq!(net.propose(1, b"x"), Err(Error::ProposalDropped));
}

/// checklist: transfer-4
#[test]
fn transfer_aborts_after_election_timeout() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.node(1).transfer_leader(3);
    assert_eq!(net.raft(1).lead_transferee(), Some(3));
    net.tick(1, ELECTION_TICK);
    assert_eq!(net.raft(1).lead_transferee(), None);
    assert_eq!(net.raft(1).state(), StateRole::Leader);
    net.propose(1, b"after").unwrap();
    assert_eq!(net.applied[&2], vec![b"after".to_vec()]);
}

/// checklist: transfer-5
#[test]
fn transfer_to_self_learner_or_unknown_ignored() {
    let mut net = Network::new_with_members(&[1, 2, 3], &[1, 2], &[3], |_| {});
    net.elect(1);
    for to in [1, 3, 9] {
        net.node(1).transfer_leader(to);
        assert_eq!(net.raft(1).lead_transferee(), None, "to {to}");
        net.settle();
        assert_eq!(net.raft(1).state(), StateRole::Leader);
    }
}

/// checklist: transfer-6
#[test]
fn second_transfer_replaces_first() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.node(1).transfer_leader(3);
    assert_eq!(net.raft(1).lead_transferee(), Some(3));
    net.node(1).transfer_leader(2);
    net.settle();
    assert_eq!(net.raft(2).state(), StateRole::Leader);
}

/// checklist: transfer-1 (a transfer request on a follower is forwarded)
#[test]
fn transfer_request_forwarded_from_follower() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.node(2).transfer_leader(2);
    let m = net.process(2);
    net.send(m);
    assert_eq!(net.raft(2).state(), StateRole::Leader);
}
