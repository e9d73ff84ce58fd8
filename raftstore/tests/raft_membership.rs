//! Scenario tests: membership changes, joint consensus, learners.

mod raft_common;

use flotilla_proto::eraftpb::ConfChangeTransition as Tr;
use flotilla_proto::eraftpb::ConfChangeType::*;
use flotilla_proto::eraftpb::{ConfChangeV2, EntryType, MessageType};
use flotilla_raftstore::raft::{Config, StateRole};
use raft_common::*;

fn voters(net: &Network, id: u64) -> (Vec<u64>, Vec<u64>) {
    let c = net.raft(id).prs().conf_state();
    (c.voters, c.voters_outgoing)
}

/// checklist: conf-1
#[test]
fn add_remove_voter_and_learner_then_promote() {
    let mut net = Network::new(&[1, 2, 3, 4]);
    // Start with voters {1,2,3}; node 4 exists but is not a member yet.
    for id in [1, 2, 3, 4] {
        net.storage[&id]
            .wl()
            .set_conf_state(flotilla_proto::eraftpb::ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            });
        net.restart(id, config(id));
    }
    net.elect(1);
    net.node(1)
        .propose_conf_change(vec![], &conf_change(AddLearnerNode, 4))
        .unwrap();
    net.settle();
    assert_eq!(net.raft(1).prs().conf_state().learners, vec![4]);
    assert!(net.raft(1).prs().get(4).unwrap().is_learner);
    net.propose(1, b"x").unwrap();
    assert_eq!(
        net.applied[&4],
        vec![b"x".to_vec()],
        "learners receive the log"
    );
    net.node(1)
        .propose_conf_change(vec![], &conf_change(AddNode, 4))
        .unwrap();
    net.settle();
    assert_eq!(voters(&net, 1).0, vec![1, 2, 3, 4]);
    assert!(net.raft(4).promotable());
    net.node(1)
        .propose_conf_change(vec![], &conf_change(RemoveNode, 3))
        .unwrap();
    net.settle();
    assert_eq!(voters(&net, 1).0, vec![1, 2, 4]);
    assert!(net.raft(1).prs().get(3).is_none());
    assert!(!net.storage[&2].rl().entries_ref().is_empty());
}

/// checklist: conf-2
#[test]
fn second_pending_conf_change_replaced_by_empty_entry() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(2);
    net.isolate(3);
    net.node(1)
        .propose_conf_change(vec![], &conf_change(AddNode, 4))
        .unwrap();
    let first = net.raft(1).raft_log().last_index();
    assert_eq!(net.raft(1).pending_conf_index(), first);
    net.node(1)
        .propose_conf_change(vec![], &conf_change(AddNode, 5))
        .unwrap();
    let li = net.raft(1).raft_log().last_index();
    let e = &net.raft(1).raft_log().slice(li, li + 1, None).unwrap()[0];
    assert_eq!(e.entry_type(), EntryType::EntryNormal);
    assert!(e.data.is_empty(), "refused change became an empty entry");
    assert_eq!(net.raft(1).pending_conf_index(), first);
    // Once applied, a new change is accepted.
    net.recover();
    net.tick(1, HEARTBEAT_TICK);
    assert_eq!(voters(&net, 1).0, vec![1, 2, 3, 4]);
    net.node(1)
        .propose_conf_change(vec![], &conf_change(AddNode, 5))
        .unwrap();
    let li = net.raft(1).raft_log().last_index();
    let e = &net.raft(1).raft_log().slice(li, li + 1, None).unwrap()[0];
    assert_eq!(e.entry_type(), EntryType::EntryConfChange);
}

/// checklist: conf-3
#[test]
fn joint_config_needs_both_majorities() {
    let mut net = Network::new(&[1, 2, 3, 4, 5, 6]);
    for id in 1..=6 {
        net.storage[&id]
            .wl()
            .set_conf_state(flotilla_proto::eraftpb::ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            });
        net.restart(id, config(id));
    }
    net.elect(1);
    let cc = conf_change_v2(
        Tr::Explicit,
        &[
            (AddNode, 4),
            (AddNode, 5),
            (AddNode, 6),
            (RemoveNode, 2),
            (RemoveNode, 3),
        ],
    );
    net.node(1).propose_conf_change_v2(vec![], &cc).unwrap();
    net.settle();
    assert_eq!(voters(&net, 1), (vec![1, 4, 5, 6], vec![1, 2, 3]));
    // Old majority {1,2,3} alone cannot commit.
    for id in [4, 5, 6] {
        net.isolate(id);
    }
    let c = net.raft(1).raft_log().committed;
    net.propose(1, b"x").unwrap();
    assert_eq!(
        net.raft(1).raft_log().committed,
        c,
        "incoming majority missing"
    );
    net.recover();
    // New majority {1,4,5,6} alone cannot commit either.
    net.isolate(2);
    net.isolate(3);
    net.propose(1, b"y").unwrap();
    assert_eq!(
        net.raft(1).raft_log().committed,
        c,
        "outgoing majority missing"
    );
    net.recover();
    net.tick(1, HEARTBEAT_TICK);
    assert!(net.raft(1).raft_log().committed > c);
}

/// checklist: conf-3 (joint elections need both majorities)
#[test]
fn joint_election_needs_both_majorities() {
    let mut net = Network::new(&[1, 2, 3, 4]);
    for id in 1..=4 {
        net.storage[&id]
            .wl()
            .set_conf_state(flotilla_proto::eraftpb::ConfState {
                voters: vec![1, 2, 4],
                voters_outgoing: vec![1, 2, 3],
                ..Default::default()
            });
        net.restart(id, config(id));
    }
    net.isolate(2);
    net.isolate(3);
    net.campaign(1);
    assert_eq!(
        net.raft(1).state(),
        StateRole::Candidate,
        "1+4 is a majority of the incoming half only"
    );
    net.recover();
    net.isolate(4);
    net.isolate(3);
    net.campaign(1);
    assert_eq!(
        net.raft(1).state(),
        StateRole::Leader,
        "1+2 is a majority of both"
    );
}

/// checklist: conf-4
#[test]
fn leave_joint_explicitly() {
    let mut net = Network::new(&[1, 2, 3, 4]);
    net.elect(1);
    let cc = conf_change_v2(Tr::Explicit, &[(RemoveNode, 4), (AddLearnerNode, 4)]);
    let cc = ConfChangeV2 {
        changes: vec![cc.changes[0]],
        ..cc
    };
    net.node(1).propose_conf_change_v2(vec![], &cc).unwrap();
    net.settle();
    assert_eq!(voters(&net, 1), (vec![1, 2, 3], vec![1, 2, 3, 4]));
    net.tick_all(3);
    assert!(
        net.raft(1).prs().conf().voters.is_joint(),
        "explicit: stays joint"
    );
    net.node(1)
        .propose_conf_change_v2(vec![], &ConfChangeV2::default())
        .unwrap();
    net.settle();
    assert_eq!(voters(&net, 1), (vec![1, 2, 3], vec![]));
    assert_eq!(voters(&net, 2), (vec![1, 2, 3], vec![]));
}

/// checklist: conf-4 (auto-leave once the joint entry is applied)
#[test]
fn leave_joint_automatically() {
    let mut net = Network::new(&[1, 2, 3, 4, 5]);
    net.elect(1);
    let cc = conf_change_v2(Tr::Auto, &[(RemoveNode, 4), (RemoveNode, 5)]);
    net.node(1).propose_conf_change_v2(vec![], &cc).unwrap();
    net.settle();
    for id in [1, 2, 3] {
        assert_eq!(voters(&net, id), (vec![1, 2, 3], vec![]), "node {id}");
    }
    assert!(!net.raft(1).prs().conf().auto_leave);
}

/// checklist: conf-4 (leaving while not joint / entering while joint is refused)
#[test]
fn mismatched_joint_transitions_refused() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.node(1)
        .propose_conf_change_v2(vec![], &ConfChangeV2::default())
        .unwrap();
    let li = net.raft(1).raft_log().last_index();
    let e = &net.raft(1).raft_log().slice(li, li + 1, None).unwrap()[0];
    assert_eq!(
        e.entry_type(),
        EntryType::EntryNormal,
        "leave while not joint refused"
    );
}

/// checklist: conf-5
#[test]
fn removed_leader_steps_down_after_commit() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.node(1)
        .propose_conf_change(vec![], &conf_change(RemoveNode, 1))
        .unwrap();
    net.settle();
    assert_ne!(net.raft(1).state(), StateRole::Leader);
    assert_eq!(voters(&net, 2).0, vec![2, 3]);
    net.tick_all(3 * ELECTION_TICK);
    let leaders: Vec<u64> = net.leaders().iter().map(|l| l.0).collect();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1);
}

/// checklist: conf-5 (until the change commits, the leader keeps leading)
#[test]
fn leader_keeps_leading_until_removal_commits() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(2);
    net.isolate(3);
    net.node(1)
        .propose_conf_change(vec![], &conf_change(RemoveNode, 1))
        .unwrap();
    net.settle();
    assert_eq!(net.raft(1).state(), StateRole::Leader);
}

/// checklist: conf-6
#[test]
fn removed_node_does_not_disrupt() {
    let mut net = Network::new_with(&[1, 2, 3], |c| {
        c.check_quorum = true;
        c.pre_vote = true;
    });
    net.elect(1);
    net.node(1)
        .propose_conf_change(vec![], &conf_change(RemoveNode, 3))
        .unwrap();
    net.settle();
    net.tick_all(1);
    net.tick(3, 5 * ELECTION_TICK);
    net.tick_all(2 * ELECTION_TICK);
    assert_eq!(net.raft(1).state(), StateRole::Leader);
    assert_eq!(net.raft(1).term(), 1);
    // Its votes are ignored even if it answers a candidate.
    let mut n = new_node(1, &[1, 2], &[]);
    n.campaign().unwrap();
    let mut v = msg(MessageType::MsgRequestVoteResponse, 3, 1, 1);
    v.reject = false;
    assert!(n.step(v).is_err(), "response from a non-member is refused");
    assert_eq!(n.raft.state(), StateRole::Candidate);
}

/// checklist: conf-7
#[test]
fn demote_voter_via_joint_learners_next() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let cc = conf_change_v2(Tr::Explicit, &[(AddLearnerNode, 3)]);
    net.node(1).propose_conf_change_v2(vec![], &cc).unwrap();
    net.settle();
    let cs = net.raft(1).prs().conf_state();
    assert_eq!(cs.learners_next, vec![3]);
    assert!(net.raft(1).prs().is_voter(3), "still an outgoing voter");
    net.node(1)
        .propose_conf_change_v2(vec![], &ConfChangeV2::default())
        .unwrap();
    net.settle();
    let cs = net.raft(1).prs().conf_state();
    assert_eq!((cs.voters, cs.learners), (vec![1, 2], vec![3]));
    assert!(!net.raft(3).promotable());
}

/// checklist: conf-8
#[test]
fn conf_state_survives_restart() {
    let mut net = Network::new(&[1, 2, 3, 4]);
    net.elect(1);
    let cc = conf_change_v2(Tr::Explicit, &[(AddLearnerNode, 4)]);
    net.node(1).propose_conf_change_v2(vec![], &cc).unwrap();
    net.settle();
    let before = net.raft(2).prs().conf_state();
    net.restart(2, config(2));
    assert_eq!(net.raft(2).prs().conf_state(), before);
    assert!(net.raft(2).prs().conf().voters.is_joint());
}

/// checklist: conf-1 (an invalid change is reported, the config unchanged)
#[test]
fn invalid_conf_change_is_an_error() {
    let mut n = new_node(1, &[1], &[]);
    let before = n.raft.prs().conf_state();
    assert!(n.apply_conf_change(&conf_change(RemoveNode, 1)).is_err());
    assert_eq!(n.raft.prs().conf_state(), before);
    let _ = Config::new(1);
}
