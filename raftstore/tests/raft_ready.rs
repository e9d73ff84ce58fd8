//! Scenario tests: the Ready protocol, async persistence, restart.

mod raft_common;

use flotilla_proto::eraftpb::{HardState, MessageType};
use flotilla_raftstore::raft::{Config, MemStorage, RawNode, StateRole, Storage};
use raft_common::*;

fn grant(n: &mut RawNode<MemStorage>, from: u64) {
    let mut v = msg(
        MessageType::MsgRequestVoteResponse,
        from,
        n.raft.id(),
        n.raft.term(),
    );
    v.reject = false;
    n.step(v).unwrap();
}

/// checklist: ready-1
#[test]
fn ready_carries_every_part() {
    let mut n = new_node(1, &[1], &[]);
    assert!(!n.has_ready());
    n.campaign().unwrap();
    assert!(n.has_ready());
    let rd = n.ready();
    assert_eq!(rd.ss.map(|s| s.raft_state), Some(StateRole::Leader));
    assert_eq!(rd.hs.as_ref().map(|h| (h.term, h.vote)), Some((1, 1)));
    assert_eq!(rd.entries.len(), 1);
    assert!(rd.must_sync);
    assert!(rd.committed_entries.is_empty(), "not persisted yet");
    let s = n.store().clone();
    persist(&s, &rd);
    let lr = n.advance(rd);
    assert_eq!(lr.commit_index, Some(1));
    assert_eq!(
        lr.committed_entries.len(),
        1,
        "committed once self-persisted"
    );
    n.advance_apply();
    n.read_index(b"ctx".to_vec()).unwrap();
    let rd = n.ready();
    assert_eq!(rd.read_states.len(), 1);
    assert!(rd.ss.is_none() && rd.entries.is_empty());
    n.advance(rd);
    assert!(!n.has_ready());
}

/// checklist: ready-2
#[test]
fn follower_acks_wait_for_persistence() {
    let mut n = new_node(2, &[1, 2], &[]);
    n.step(append_msg(1, 2, 1, (0, 0), ents(&[(1, 1)]), 0))
        .unwrap();
    let rd = n.ready();
    assert!(rd.messages.is_empty());
    assert_eq!(rd.persisted_messages.len(), 1);
    assert_eq!(
        rd.persisted_messages[0].msg_type(),
        MessageType::MsgAppendResponse
    );
    assert_eq!(rd.entries.len(), 1);
}

/// checklist: ready-3
#[test]
fn leader_sends_before_persisting_and_counts_itself_after() {
    let mut n = new_node(1, &[1, 2, 3], &[]);
    n.campaign().unwrap();
    grant(&mut n, 2);
    assert_eq!(n.raft.state(), StateRole::Leader);
    let rd = n.ready();
    assert!(
        rd.messages
            .iter()
            .any(|m| m.msg_type() == MessageType::MsgAppend),
        "appends go out immediately"
    );
    let number = rd.number();
    let entries = rd.entries.clone();
    n.advance_append_async(rd);
    // Follower 2 acknowledges before the leader's own write is durable.
    let mut ack = msg(MessageType::MsgAppendResponse, 2, 1, 1);
    ack.index = entries.last().unwrap().index;
    n.step(ack).unwrap();
    assert_eq!(
        n.raft.raft_log().committed,
        0,
        "1 of 3 persisted: no quorum"
    );
    n.store().wl().append(&entries).unwrap();
    n.on_persist_ready(number);
    assert_eq!(
        n.raft.raft_log().committed,
        1,
        "self-ack counted once persisted"
    );
}

/// checklist: ready-3 (several readies in flight, persisted out of band)
#[test]
fn multiple_async_readies() {
    let mut n = new_node(1, &[1], &[]);
    n.campaign().unwrap();
    let r1 = n.ready();
    let e1 = r1.entries.clone();
    n.advance_append_async(r1);
    n.propose(vec![], b"a".to_vec()).unwrap();
    let r2 = n.ready();
    assert_eq!(r2.entries.len(), 1, "only new entries");
    assert_eq!(r2.entries[0].index, 2);
    let e2 = r2.entries.clone();
    let num2 = r2.number();
    n.advance_append_async(r2);
    n.store().wl().append(&e1).unwrap();
    n.store().wl().append(&e2).unwrap();
    n.on_persist_ready(num2);
    assert_eq!(n.raft.raft_log().committed, 2);
    assert_eq!(n.raft.raft_log().persisted, 2);
}

/// checklist: ready-4
#[test]
fn committed_entries_once_and_in_order() {
    let mut n = new_node(1, &[1], &[]);
    n.campaign().unwrap();
    let s = n.store().clone();
    let mut seen = Vec::new();
    for i in 0..5u8 {
        n.propose(vec![], vec![i]).unwrap();
        let rd = n.ready();
        persist(&s, &rd);
        seen.extend(rd.committed_entries.iter().map(|e| e.index));
        let lr = n.advance(rd);
        seen.extend(lr.committed_entries.iter().map(|e| e.index));
        n.advance_apply();
    }
    let rd = n.ready();
    seen.extend(rd.committed_entries.iter().map(|e| e.index));
    n.advance(rd);
    assert_eq!(seen, (1..=6).collect::<Vec<_>>());
    assert_eq!(n.raft.raft_log().applied, 6);
}

/// checklist: ready-4 (advance_apply_to moves applied step by step)
#[test]
fn advance_apply_to_partial() {
    let mut n = new_node(1, &[1], &[]);
    n.campaign().unwrap();
    let s = n.store().clone();
    n.propose(vec![], b"x".to_vec()).unwrap();
    let rd = n.ready();
    persist(&s, &rd);
    let lr = n.advance_append(rd);
    assert_eq!(lr.committed_entries.len(), 2);
    n.advance_apply_to(1);
    assert_eq!(n.raft.raft_log().applied, 1);
    assert!(!n.has_ready(), "handed-out entries are not returned again");
    n.advance_apply_to(2);
    assert_eq!(n.status().applied, 2);
}

/// checklist: ready-5
#[test]
fn restart_reproduces_term_vote_commit() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, b"x").unwrap();
    let before = net.raft(2).hard_state();
    let last = net.raft(2).raft_log().last_index();
    net.restart(2, config(2));
    let r = net.raft(2);
    assert_eq!(r.hard_state(), before);
    assert_eq!(r.raft_log().last_index(), last);
    assert_eq!(r.state(), StateRole::Follower);
    // Restarted with the applied index, nothing is applied twice.
    let mut c = config(3);
    c.applied = net.raft(3).raft_log().applied;
    net.restart(3, c);
    net.settle();
    assert!(net.applied[&3].is_empty());
    let s = net.storage[&3].clone();
    assert_eq!(s.initial_state().unwrap().hard_state.commit, before.commit);
}

/// checklist: ready-5 (restart from an explicit hard state)
#[test]
fn restart_from_hard_state() {
    let s = storage_with(&[1, 2, 3], &ents(&[(1, 1), (2, 2)]), 2);
    s.wl().set_hardstate(HardState {
        term: 3,
        vote: 2,
        commit: 2,
    });
    let n = new_node_with(config(1), s);
    assert_eq!(
        (n.raft.term(), n.raft.vote(), n.raft.raft_log().committed),
        (3, 2, 2)
    );
    let _ = Config::new(1);
}

/// checklist: ready-1 (a follower's Ready hands entries once)
#[test]
fn entries_handed_out_once() {
    let mut n = new_node(2, &[1, 2], &[]);
    n.step(append_msg(1, 2, 1, (0, 0), ents(&[(1, 1), (2, 1)]), 0))
        .unwrap();
    let rd = n.ready();
    assert_eq!(rd.entries.len(), 2);
    n.advance_append_async(rd);
    n.step(append_msg(1, 2, 1, (2, 1), ents(&[(3, 1)]), 0))
        .unwrap();
    let rd = n.ready();
    assert_eq!(
        rd.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![3]
    );
}
