//! Scenario tests: ReadIndex (Safe and LeaseBased), on leaders and followers.

mod raft_common;

use flotilla_proto::eraftpb::MessageType;
use flotilla_raftstore::raft::{Error, MemStorage, ReadOnlyOption, StateRole};
use raft_common::*;

fn take_reads(net: &mut Network, id: u64) -> Vec<(u64, Vec<u8>)> {
    let msgs = net.process(id);
    net.send(msgs);
    net.reads
        .get_mut(&id)
        .map(std::mem::take)
        .unwrap_or_default()
}

fn read_collecting(net: &mut Network, at: u64, ctx: &[u8]) -> Vec<(u64, Vec<u8>)> {
    net.read_index(at, ctx);
    net.reads
        .get_mut(&at)
        .map(std::mem::take)
        .unwrap_or_default()
}

/// checklist: read-1
#[test]
fn safe_read_index_needs_heartbeat_quorum() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, b"x").unwrap();
    let committed = net.raft(1).raft_log().committed;
    net.isolate(2);
    net.isolate(3);
    let reads = read_collecting(&mut net, 1, b"r1");
    assert!(reads.is_empty(), "no quorum acknowledged");
    net.recover();
    net.reads.clear();
    let reads = read_collecting(&mut net, 1, b"r2");
    assert_eq!(
        reads,
        vec![(committed, b"r1".to_vec()), (committed, b"r2".to_vec())]
    );
}

/// checklist: read-2
#[test]
fn read_index_deferred_until_commit_in_term() {
    let mut n = new_node(1, &[1, 2, 3], &[]);
    n.campaign().unwrap();
    for from in [2, 3] {
        let mut v = msg(MessageType::MsgRequestVoteResponse, from, 1, 1);
        v.reject = false;
        n.step(v).unwrap();
    }
    assert_eq!(n.raft.state(), StateRole::Leader);
    n.read_index(b"early".to_vec()).unwrap();
    n.raft.take_all_msgs();
    assert!(n.raft.read_states().is_empty());
    // Commit the term's empty entry: persist, then a follower's ack.
    let s = n.store().clone();
    let rd = n.ready();
    persist(&s, &rd);
    n.advance(rd);
    let mut ack = msg(MessageType::MsgAppendResponse, 2, 1, 1);
    ack.index = 1;
    n.step(ack).unwrap();
    assert_eq!(n.raft.raft_log().committed, 1);
    // The deferred read now goes out with a heartbeat carrying its context.
    let hbs: Vec<_> = n
        .raft
        .take_all_msgs()
        .into_iter()
        .filter(|m| m.msg_type() == MessageType::MsgHeartbeat)
        .collect();
    assert!(!hbs.is_empty());
    assert_eq!(hbs[0].context.as_ref(), b"early");
    let mut hr = msg(MessageType::MsgHeartbeatResponse, 2, 1, 1);
    hr.context = hbs[0].context.clone();
    n.step(hr).unwrap();
    assert_eq!(n.raft.read_states()[0].index, 1);
}

/// checklist: read-3
#[test]
fn follower_read_index_forwarded_to_leader() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, b"x").unwrap();
    let committed = net.raft(1).raft_log().committed;
    let reads = read_collecting(&mut net, 2, b"f");
    assert_eq!(reads, vec![(committed, b"f".to_vec())]);
    assert!(
        net.delivered
            .iter()
            .any(|m| m.msg_type() == MessageType::MsgReadIndex && m.to == 1 && m.from == 2)
    );
    let mut lone = new_node(2, &[1, 2, 3], &[]);
    assert_eq!(
        lone.read_index(b"x".to_vec()),
        Err(Error::ProposalDropped),
        "no leader"
    );
}

/// checklist: read-4
#[test]
fn lease_read_answers_without_round_trip() {
    let mut net = Network::new_with(&[1, 2, 3], |c| {
        c.check_quorum = true;
        c.read_only_option = ReadOnlyOption::LeaseBased;
    });
    net.elect(1);
    net.isolate(2);
    net.isolate(3);
    let committed = net.raft(1).raft_log().committed;
    net.node(1).read_index(b"l".to_vec()).unwrap();
    assert_eq!(net.raft(1).read_states().len(), 1, "answered at once");
    assert_eq!(net.raft(1).read_states()[0].index, committed);
    assert!(net.raft(1).msgs().is_empty(), "no heartbeat round");
}

/// checklist: read-5
#[test]
fn single_voter_read_index_immediate() {
    let mut n = new_node(1, &[1], &[]);
    n.campaign().unwrap();
    let s = n.store().clone();
    let rd = n.ready();
    persist(&s, &rd);
    n.advance(rd);
    n.read_index(b"s".to_vec()).unwrap();
    assert_eq!(n.raft.read_states().len(), 1);
    assert_eq!(n.raft.read_states()[0].index, n.raft.raft_log().committed);
    let _ = MemStorage::new();
}

/// checklist: read-2, read-5 (a single voter defers too: after a restart
/// its persisted commit can lag entries it had applied and acknowledged, so
/// before its own term's entry commits its commit index is not the group's)
#[test]
fn single_voter_defers_read_index_until_commit_in_term() {
    // A log of 3 entries of term 1, of which the persisted commit knows 1.
    let s = storage_with(&[1], &ents(&[(1, 1), (2, 1), (3, 1)]), 1);
    s.wl().mut_hard_state().commit = 1;
    let mut n = new_node_with(config(1), s.clone());
    n.campaign().unwrap();
    assert_eq!(n.raft.state(), StateRole::Leader);
    n.read_index(b"early".to_vec()).unwrap();
    assert!(
        n.raft.read_states().is_empty(),
        "answered with a commit index that may lag the group's"
    );
    // The term's empty entry persists and commits, and with it all of 1..=4.
    let rd = n.ready();
    persist(&s, &rd);
    n.advance(rd);
    assert_eq!(n.raft.raft_log().committed, 4);
    assert_eq!(n.raft.read_states().len(), 1);
    assert_eq!(n.raft.read_states()[0].index, 4);
    assert_eq!(n.raft.read_states()[0].request_ctx.as_ref(), b"early");
}

/// checklist: read-6
#[test]
fn pending_reads_dropped_on_leadership_loss() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(1);
    net.node(1).read_index(b"lost".to_vec()).unwrap();
    net.process(1);
    net.node(1)
        .step(msg(MessageType::MsgAppendResponse, 2, 1, 5))
        .unwrap();
    assert_eq!(net.raft(1).state(), StateRole::Follower);
    // Even a late heartbeat ack cannot release it.
    let mut hr = msg(MessageType::MsgHeartbeatResponse, 2, 1, 5);
    hr.context = b"lost".to_vec().into();
    let _ = net.node(1).step(hr);
    assert!(net.raft(1).read_states().is_empty());
    assert!(take_reads(&mut net, 1).is_empty());
}
