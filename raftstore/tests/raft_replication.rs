//! Scenario tests: log replication, commit rules, flow control.

mod raft_common;

use flotilla_proto::eraftpb::{Entry, Message, MessageType};
use flotilla_raftstore::raft::tracker::ProgressState;
use flotilla_raftstore::raft::{Error, MAX_TERM, MemStorage, StateRole, entry_size};
use raft_common::*;

fn terms(net: &Network, id: u64) -> Vec<u64> {
    let log = net.raft(id).raft_log();
    log.slice(log.first_index(), log.last_index() + 1, None)
        .unwrap()
        .iter()
        .map(|e| e.term)
        .collect()
}

/// Appends carrying entries (commit-only appends excluded).
fn appends_to(msgs: &[flotilla_proto::eraftpb::Message], to: u64) -> usize {
    msgs.iter()
        .filter(|m| m.msg_type() == MessageType::MsgAppend && m.to == to && !m.entries.is_empty())
        .count()
}

/// checklist: log-1
#[test]
fn proposal_replicated_committed_and_applied_everywhere() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, b"hello").unwrap();
    let li = net.raft(1).raft_log().last_index();
    for id in [1, 2, 3] {
        assert_eq!(net.raft(id).raft_log().committed, li, "node {id}");
        assert_eq!(net.applied[&id], vec![b"hello".to_vec()], "node {id}");
        assert_eq!(last_index(&net.storage[&id]), li);
    }
}

/// checklist: log-1 (a minority partition cannot commit)
#[test]
fn no_commit_without_majority() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let c = net.raft(1).raft_log().committed;
    net.isolate(2);
    net.isolate(3);
    net.propose(1, b"x").unwrap();
    assert_eq!(net.raft(1).raft_log().committed, c);
    assert!(net.applied[&1].is_empty());
    net.recover();
    net.tick(1, HEARTBEAT_TICK);
    assert_eq!(net.raft(1).raft_log().committed, c + 1);
}

/// checklist: log-2 (paper fig. 8: an old-term entry is not committed by counting replicas)
#[test]
fn old_term_entry_not_committed_by_replica_count() {
    // Node 1 holds (1,1),(2,1) and becomes leader of term 2.
    let s = storage_with(&[1, 2, 3], &ents(&[(1, 1), (2, 1)]), 1);
    let mut n = new_node_with(config(1), s.clone());
    n.campaign().unwrap();
    let mut vr = msg(MessageType::MsgRequestVoteResponse, 2, 1, 2);
    vr.reject = false;
    n.step(vr).unwrap();
    assert_eq!(n.raft.state(), StateRole::Leader);
    let rd = n.ready();
    persist(&s, &rd);
    n.advance(rd);
    // Follower 2 acknowledges index 2 (the old-term entry) only.
    let mut ack = msg(MessageType::MsgAppendResponse, 2, 1, 2);
    ack.index = 2;
    n.step(ack).unwrap();
    assert_eq!(
        n.raft.raft_log().committed,
        0,
        "index 2 is of term 1: not committed"
    );
    // Once the current-term empty entry is replicated, everything commits.
    let mut ack = msg(MessageType::MsgAppendResponse, 2, 1, 2);
    ack.index = 3;
    n.step(ack).unwrap();
    assert_eq!(n.raft.raft_log().committed, 3);
}

/// checklist: log-2 (fig. 8 in a cluster: a new leader commits old entries only via its own)
#[test]
fn figure_8_leader_commits_previous_terms_via_current_term() {
    let mut net = Network::new(&[1, 2, 3, 4, 5]);
    net.elect(1);
    // Leader 1 replicates an entry of term 1 to node 2 only, then crashes.
    for id in [3, 4, 5] {
        net.cut(1, id);
    }
    net.propose(1, b"old").unwrap();
    let idx = net.raft(1).raft_log().last_index();
    assert_eq!(net.raft(2).raft_log().last_index(), idx);
    assert!(net.raft(1).raft_log().committed < idx);
    net.isolate(1);
    net.recover();
    net.isolate(1);
    // Node 2 (with the old entry) is elected in term 2 by 3 and 4.
    net.elect(2);
    let t = net.raft(2).term();
    assert_eq!(t, 2);
    // The old-term entry commits only together with the term-2 empty entry.
    let c = net.raft(2).raft_log().committed;
    assert!(c > idx);
    assert_eq!(net.raft(2).raft_log().term(c).unwrap(), t);
    assert_eq!(net.applied[&3], vec![b"old".to_vec()]);
}

/// checklist: log-3
#[test]
fn heartbeat_commit_is_min_of_match_and_committed() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.cut(1, 3);
    for _ in 0..3 {
        net.propose(1, b"x").unwrap();
    }
    let committed = net.raft(1).raft_log().committed;
    let match3 = net.raft(1).prs().get(3).unwrap().matched;
    assert!(match3 < committed);
    // The first interval skips 2: it acknowledged the appends sent since
    // its last heartbeat. 3, behind, gets one.
    net.node(1).tick();
    let msgs = net.process(1);
    let beats_to = |msgs: &[Message]| -> Vec<u64> {
        msgs.iter()
            .filter(|m| m.msg_type() == MessageType::MsgHeartbeat)
            .map(|m| m.to)
            .collect()
    };
    assert_eq!(beats_to(&msgs), vec![3]);
    net.node(1).tick();
    let msgs = net.process(1);
    let hb: Vec<_> = msgs
        .iter()
        .filter(|m| m.msg_type() == MessageType::MsgHeartbeat)
        .collect();
    assert_eq!(hb.iter().find(|m| m.to == 2).unwrap().commit, committed);
    assert_eq!(hb.iter().find(|m| m.to == 3).unwrap().commit, match3);
    // Followers learn the commit index from heartbeats.
    let mut n = new_node_with(
        config(2),
        storage_with(&[1, 2], &ents(&[(1, 1), (2, 1)]), 1),
    );
    let mut h = msg(MessageType::MsgHeartbeat, 1, 2, 1);
    h.commit = 2;
    n.step(h).unwrap();
    assert_eq!(n.raft.raft_log().committed, 2);
}

/// checklist: log-4
#[test]
fn follower_rejects_append_without_matching_prev() {
    let s = storage_with(&[1, 2], &ents(&[(1, 1), (2, 2)]), 2);
    let mut n = new_node_with(config(2), s);
    // (An append at term 2 after an entry of term 3 is malformed, refused
    // before the log is looked at: `malformed_appends_are_refused_...`.)
    for (prev, reject) in [
        ((2, 2), false),
        ((2, 1), true),
        ((3, 2), true),
        ((1, 1), false),
    ] {
        n.step(append_msg(1, 2, 2, prev, vec![], 0)).unwrap();
        let m = n.raft.take_all_msgs().pop().unwrap();
        assert_eq!(m.msg_type(), MessageType::MsgAppendResponse);
        assert_eq!(m.reject, reject, "prev {prev:?}");
    }
}

/// checklist: log-5 (paper fig. 7: the leader makes every follower's log match its own)
#[test]
fn figure_7_follower_logs_converge() {
    let leader = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let cases: [(&str, &[u64]); 6] = [
        ("a", &[1, 1, 1, 4, 4, 5, 5, 6, 6]),
        ("b", &[1, 1, 1, 4]),
        ("c", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),
        ("d", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]),
        ("e", &[1, 1, 1, 4, 4, 4, 4]),
        ("f", &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),
    ];
    for (name, follower) in cases {
        let mut net = Network::new(&[]);
        net.add_node(
            1,
            config(1),
            storage_with(&[1, 2, 3], &ents_terms(&leader), 7),
        );
        net.add_node(
            2,
            config(2),
            storage_with(&[1, 2, 3], &ents_terms(follower), 7),
        );
        net.add_node(
            3,
            config(3),
            storage_with(&[1, 2, 3], &ents_terms(&leader), 7),
        );
        net.elect(1);
        net.propose(1, b"p").unwrap();
        assert_eq!(terms(&net, 2), terms(&net, 1), "case {name}");
        assert_eq!(
            net.raft(2).raft_log().committed,
            net.raft(1).raft_log().last_index(),
            "case {name}"
        );
    }
}

/// checklist: log-6
#[test]
fn fast_rejection_skips_whole_terms() {
    // Leader: 1 entry of term 1 then 30 of term 3. Follower: 1 of term 1
    // then 40 of term 2 (a divergent tail).
    let mut lt = vec![1];
    lt.extend(std::iter::repeat_n(3, 30));
    let mut ft = vec![1];
    ft.extend(std::iter::repeat_n(2, 40));
    let mut net = Network::new(&[]);
    net.add_node(1, config(1), storage_with(&[1, 2, 3], &ents_terms(&lt), 3));
    net.add_node(2, config(2), storage_with(&[1, 2, 3], &ents_terms(&ft), 3));
    net.add_node(3, config(3), storage_with(&[1, 2, 3], &ents_terms(&lt), 3));
    net.elect(1);
    let rejects = net
        .delivered
        .iter()
        .filter(|m| m.msg_type() == MessageType::MsgAppendResponse && m.from == 2 && m.reject)
        .count();
    assert!(rejects <= 2, "{rejects} rejections; one per term expected");
    assert_eq!(terms(&net, 2), terms(&net, 1));
}

/// checklist: log-7
#[test]
fn probe_sends_one_append_replicate_pipelines() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    // Force 2 back to probe and drop its answers.
    net.node(1).report_unreachable(2);
    assert_eq!(
        net.raft(1).prs().get(2).unwrap().state,
        ProgressState::Probe
    );
    net.cut_one_way(2, 1);
    let before = net.delivered.len();
    for _ in 0..5 {
        net.propose(1, b"x").unwrap();
    }
    assert_eq!(
        appends_to(&net.delivered[before..], 2),
        1,
        "probe: one in flight"
    );
    // Node 3 is replicating: every proposal is sent at once.
    assert_eq!(appends_to(&net.delivered[before..], 3), 5);
    assert_eq!(
        net.raft(1).prs().get(3).unwrap().state,
        ProgressState::Replicate
    );
}

/// checklist: log-8
#[test]
fn inflights_cap_pauses_and_acks_resume() {
    let mut net = Network::new_with(&[1, 2, 3], |c| c.max_inflight_msgs = 3);
    net.elect(1);
    net.cut_one_way(2, 1);
    let before = net.delivered.len();
    for _ in 0..10 {
        net.propose(1, b"x").unwrap();
    }
    assert_eq!(appends_to(&net.delivered[before..], 2), 3, "window of 3");
    let pr = net.raft(1).prs().get(2).unwrap();
    assert!(pr.ins.full() && pr.is_paused());
    assert!(pr.ins.count() <= pr.ins.cap());
    net.recover();
    net.tick(1, HEARTBEAT_TICK);
    let li = net.raft(1).raft_log().last_index();
    assert_eq!(
        net.raft(2).raft_log().last_index(),
        li,
        "acks freed the window"
    );
    assert_eq!(net.raft(1).prs().get(2).unwrap().ins.count(), 0);
}

/// checklist: log-9
#[test]
fn max_size_per_msg_bounds_appends() {
    let payload = vec![7u8; 100];
    let one = entry_size(&Entry {
        index: 10,
        term: 1,
        data: payload.clone().into(),
        ..Default::default()
    });
    let mut net = Network::new_with(&[1, 2, 3], |c| c.max_size_per_msg = one * 2);
    net.elect(1);
    net.isolate(2);
    for _ in 0..6 {
        net.propose(1, &payload).unwrap();
    }
    net.recover();
    let before = net.delivered.len();
    net.tick(1, HEARTBEAT_TICK);
    let sizes: Vec<usize> = net.delivered[before..]
        .iter()
        .filter(|m| m.msg_type() == MessageType::MsgAppend && m.to == 2 && !m.entries.is_empty())
        .map(|m| m.entries.len())
        .collect();
    assert!(sizes.len() >= 3, "{sizes:?}");
    assert!(sizes.iter().all(|&n| (1..=2).contains(&n)), "{sizes:?}");
    // A single entry larger than the limit still goes.
    let mut net = Network::new_with(&[1, 2], |c| c.max_size_per_msg = 1);
    net.elect(1);
    net.propose(1, &payload).unwrap();
    assert_eq!(net.applied[&2], vec![payload]);
}

/// checklist: log-10
#[test]
fn max_uncommitted_size_drops_proposals() {
    let mut net = Network::new_with(&[1, 2, 3], |c| c.max_uncommitted_size = 250);
    net.elect(1);
    net.isolate(2);
    net.isolate(3);
    let data = vec![1u8; 100];
    net.propose(1, &data).unwrap();
    net.propose(1, &data).unwrap();
    assert_eq!(net.propose(1, &data), Err(Error::ProposalDropped));
    assert_eq!(net.raft(1).uncommitted_size(), 200);
    // Empty entries are never dropped.
    net.propose(1, b"").unwrap();
    net.recover();
    net.tick(1, HEARTBEAT_TICK);
    assert_eq!(
        net.raft(1).uncommitted_size(),
        0,
        "committed entries released the budget"
    );
    net.propose(1, &data).unwrap();
}

/// checklist: log-11
#[test]
fn follower_forwards_proposals_or_drops() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(2, b"fwd").unwrap();
    assert_eq!(net.applied[&1], vec![b"fwd".to_vec()]);
    let mut net = Network::new_with(&[1, 2, 3], |c| c.disable_proposal_forwarding = true);
    net.elect(1);
    assert_eq!(net.propose(2, b"x"), Err(Error::ProposalDropped));
    let mut lone = new_node(1, &[1, 2, 3], &[]);
    assert_eq!(
        lone.propose(vec![], b"x".to_vec()),
        Err(Error::ProposalDropped),
        "no leader"
    );
    lone.campaign().unwrap();
    assert_eq!(
        lone.propose(vec![], b"x".to_vec()),
        Err(Error::ProposalDropped),
        "candidate"
    );
}

/// checklist: log-12
#[test]
fn duplicate_and_reordered_appends_are_harmless() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    for d in [b"a", b"b", b"c"] {
        net.propose(1, d).unwrap();
    }
    let appends: Vec<_> = net
        .delivered
        .iter()
        .filter(|m| m.msg_type() == MessageType::MsgAppend && m.to == 2)
        .cloned()
        .collect();
    let before = terms(&net, 2);
    let committed = net.raft(2).raft_log().committed;
    for m in appends.into_iter().rev() {
        net.send(vec![m]);
    }
    assert_eq!(terms(&net, 2), before);
    assert_eq!(net.raft(2).raft_log().committed, committed);
    assert_eq!(net.applied[&2].len(), 3, "nothing applied twice");
}

/// checklist: log-13
#[test]
fn report_unreachable_moves_replicate_to_probe() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    assert_eq!(
        net.raft(1).prs().get(2).unwrap().state,
        ProgressState::Replicate
    );
    net.node(1).report_unreachable(2);
    let pr = net.raft(1).prs().get(2).unwrap();
    assert_eq!(pr.state, ProgressState::Probe);
    assert_eq!(pr.next_idx, pr.matched + 1);
}

/// checklist: log-14
#[test]
fn leader_never_overwrites_its_log() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, b"a").unwrap();
    let before = terms(&net, 1);
    // A stale leader's conflicting append is ignored by the current leader.
    let stale = append_msg(2, 1, 0, (1, 1), ents(&[(2, 0), (3, 0)]), 0);
    let _ = net.node(1).step(stale);
    assert_eq!(terms(&net, 1), before);
    assert_eq!(net.raft(1).state(), StateRole::Leader);
    // Rejections from followers never truncate the leader either.
    let mut rej = msg(MessageType::MsgAppendResponse, 2, 1, 1);
    rej.reject = true;
    rej.index = 1;
    rej.reject_hint = 0;
    net.node(1).step(rej).unwrap();
    assert_eq!(terms(&net, 1), before);
}

/// checklist: log-3, log-1 (a lagging follower catches up from probe)
#[test]
fn lagging_follower_catches_up() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    for i in 0..20u8 {
        net.propose(1, &[i]).unwrap();
    }
    net.recover();
    net.tick(1, HEARTBEAT_TICK);
    assert_eq!(net.applied[&3].len(), 20);
    assert_eq!(
        net.raft(3).raft_log().committed,
        net.raft(1).raft_log().committed
    );
}

/// checklist: log-12 (stale append responses do not move progress backwards)
#[test]
fn stale_append_response_ignored() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, b"x").unwrap();
    let matched = net.raft(1).prs().get(2).unwrap().matched;
    let mut old = msg(MessageType::MsgAppendResponse, 2, 1, 1);
    old.index = 1;
    net.node(1).step(old).unwrap();
    assert_eq!(net.raft(1).prs().get(2).unwrap().matched, matched);
}

/// checklist: log-4 (the reject hint is capped by the follower's last index)
#[test]
fn reject_hint_points_at_follower_last_index() {
    let mut n = new_node_with(
        config(2),
        storage_with(&[1, 2], &ents(&[(1, 1), (2, 1)]), 2),
    );
    n.step(append_msg(1, 2, 2, (10, 2), vec![], 0)).unwrap();
    let m = n.raft.take_all_msgs().pop().unwrap();
    assert!(m.reject);
    assert_eq!((m.index, m.reject_hint, m.log_term), (10, 2, 1));
    let _ = MemStorage::new();
}

/// checklist: log-1, log-7 (proposals made between two Readies reach each
/// follower as one append carrying all of them, in order; the batch takes
/// one inflight slot, and every proposal still commits and applies)
#[test]
fn proposals_between_readies_share_one_append() {
    const PROPOSALS: usize = 10;
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let before = net.raft(1).raft_log().last_index();
    for i in 0..PROPOSALS {
        net.node(1).propose(Vec::new(), vec![i as u8]).unwrap();
    }
    let msgs = net.process(1);
    for to in [2, 3] {
        assert_eq!(appends_to(&msgs, to), 1, "one append to {to}: {msgs:?}");
        let m = msgs
            .iter()
            .find(|m| m.msg_type() == MessageType::MsgAppend && m.to == to)
            .unwrap();
        assert_eq!(m.index, before, "the append starts after the old tail");
        let idx: Vec<u64> = m.entries.iter().map(|e| e.index).collect();
        let want: Vec<u64> = (before + 1..=before + PROPOSALS as u64).collect();
        assert_eq!(idx, want, "all proposals, in order");
        let pr = net.raft(1).prs().get(to).unwrap();
        assert_eq!(pr.ins.count(), 1, "one inflight slot for the batch");
    }
    net.send(msgs);
    let want: Vec<Vec<u8>> = (0..PROPOSALS).map(|i| vec![i as u8]).collect();
    for id in [1, 2, 3] {
        assert_eq!(net.applied[&id], want, "node {id} applied every proposal");
    }
}

/// checklist: log-3 (commit advances caused by several acknowledgements
/// between two Readies are told to each follower once, and only to
/// followers that do not know the new commit index yet)
#[test]
fn commit_advance_broadcast_once_per_ready() {
    let mut net = Network::new(&[1, 2, 3, 4, 5]);
    net.elect(1);
    net.node(1).propose(Vec::new(), b"x".to_vec()).unwrap();
    let msgs = net.process(1);
    let li = net.raft(1).raft_log().last_index();
    // Every follower acknowledges; the leader steps all the acks before its
    // next Ready. Acks from 2 and 3 each could move the commit index.
    let mut acks = Vec::new();
    for to in [2, 3, 4, 5] {
        let m = msgs
            .iter()
            .find(|m| m.msg_type() == MessageType::MsgAppend && m.to == to)
            .unwrap()
            .clone();
        net.node(to).step(m).unwrap();
        acks.extend(net.process(to));
    }
    assert_eq!(acks.len(), 4, "{acks:?}");
    for a in acks {
        net.node(1).step(a).unwrap();
    }
    assert_eq!(net.raft(1).raft_log().committed, li);
    let out = net.process(1);
    for to in [2, 3, 4, 5] {
        let to_peer: Vec<_> = out
            .iter()
            .filter(|m| m.msg_type() == MessageType::MsgAppend && m.to == to)
            .collect();
        assert_eq!(to_peer.len(), 1, "one commit append to {to}: {out:?}");
        assert_eq!(to_peer[0].commit, li);
    }
}

/// checklist: log-3 (a commit-index update to a replicating follower is
/// marked `no_ack`; the follower commits without answering, but still
/// answers a `no_ack` append it must reject)
#[test]
fn commit_only_append_is_not_acknowledged() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.node(1).propose(Vec::new(), b"x".to_vec()).unwrap();
    let appends = net.process(1);
    assert!(
        appends.iter().all(|m| !m.no_ack),
        "appends with entries want acks"
    );
    let mut acks = Vec::new();
    for m in appends {
        let to = m.to;
        net.node(to).step(m).unwrap();
        acks.extend(net.process(to));
    }
    for a in acks {
        net.node(1).step(a).unwrap();
    }
    let li = net.raft(1).raft_log().last_index();
    let commits = net.process(1);
    let to2 = commits
        .iter()
        .find(|m| m.msg_type() == MessageType::MsgAppend && m.to == 2)
        .unwrap()
        .clone();
    assert!(to2.entries.is_empty() && to2.no_ack, "{to2:?}");
    assert_eq!(to2.commit, li);
    net.node(2).step(to2.clone()).unwrap();
    assert!(net.process(2).is_empty(), "accepted: no answer");
    assert_eq!(net.raft(2).raft_log().committed, li);

    // The same append with a previous entry node 3 does not have.
    let mut bad = to2;
    bad.to = 3;
    bad.index = li + 5;
    net.node(3).step(bad).unwrap();
    let out = net.process(3);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].msg_type(), MessageType::MsgAppendResponse);
    assert!(out[0].reject, "a rejection is always answered");
}

/// checklist: log-9, log-7 (a batch of proposals larger than
/// `max_size_per_msg` goes out as several pipelined appends in the same
/// Ready, not one append per round trip)
#[test]
fn batched_proposals_split_by_max_size_are_pipelined() {
    const PROPOSALS: usize = 4;
    let mut net = Network::new_with(&[1, 2, 3], |c| c.max_size_per_msg = 1);
    net.elect(1);
    for i in 0..PROPOSALS {
        net.node(1).propose(Vec::new(), vec![i as u8; 8]).unwrap();
    }
    let msgs = net.process(1);
    for to in [2, 3] {
        assert_eq!(appends_to(&msgs, to), PROPOSALS, "to {to}: {msgs:?}");
        let pr = net.raft(1).prs().get(to).unwrap();
        assert_eq!(pr.ins.count(), PROPOSALS, "each append holds a slot");
    }
    net.send(msgs);
    for id in [1, 2, 3] {
        assert_eq!(net.applied[&id].len(), PROPOSALS, "node {id}");
    }
}

/// Leader 1 of {1, 2, 3} with 3 cut off proposes one entry; follower 2
/// stores it but its ack is lost. Returns the entry's index.
fn lose_one_ack(net: &mut Network) -> u64 {
    net.elect(1);
    net.isolate(3);
    net.node(1).propose(Vec::new(), b"x".to_vec()).unwrap();
    let li = net.raft(1).raft_log().last_index();
    let to2 = net
        .process(1)
        .into_iter()
        .find(|m| m.msg_type() == MessageType::MsgAppend && m.to == 2)
        .unwrap();
    net.node(2).step(to2).unwrap();
    let lost = net.process(2);
    assert_eq!(lost.len(), 1, "the ack, dropped: {lost:?}");
    assert!(net.raft(1).raft_log().committed < li);
    li
}

/// checklist: log-3, log-12 (a lost append ack is recovered on the next
/// heartbeat: the empty append the leader sends then asks for an answer,
/// and the answer commits the entry)
#[test]
fn lost_append_ack_recovered_by_heartbeat() {
    let mut net = Network::new(&[1, 2, 3]);
    let li = lose_one_ack(&mut net);
    net.tick(1, HEARTBEAT_TICK);
    assert_eq!(net.raft(1).raft_log().committed, li);
    assert_eq!(net.raft(2).raft_log().committed, li);
}

/// checklist: transfer-2 (a transfer to a follower whose ack was lost
/// completes: the catch-up append asks for an answer, which triggers
/// `MsgTimeoutNow`)
#[test]
fn transfer_completes_after_lost_ack() {
    let mut net = Network::new(&[1, 2, 3]);
    lose_one_ack(&mut net);
    net.node(1).transfer_leader(2);
    let msgs = net.process(1);
    net.send(msgs);
    assert_eq!(net.raft(2).state(), StateRole::Leader);
}

/// checklist: log-4, log-12 (malformed appends: no correct leader sends
/// them, and stepping one must neither panic nor touch the log). Each is
/// refused with `InvalidMessage`: entries that do not run on from the
/// previous index (one reaching back under the commit index used to trip
/// the "conflicts with committed entry" assertion), terms past the
/// message's or falling below the previous entry's, a previous term past
/// the message's. The same append well formed is taken.
#[test]
fn malformed_appends_are_refused_and_change_nothing() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    for d in [b"a", b"b"] {
        net.propose(1, d).unwrap();
    }
    let term = net.raft(2).term();
    let last = net.raft(2).raft_log().last_index();
    let committed = net.raft(2).raft_log().committed;
    assert_eq!(committed, last, "the follower committed everything");
    let before = terms(&net, 2);
    let prev = (last, term);
    let malformed = [
        (
            "reaches back under the commit",
            append_msg(1, 2, term, prev, ents(&[(last - 1, term)]), 0),
        ),
        (
            "skips an index",
            append_msg(1, 2, term, prev, ents(&[(last + 2, term)]), 0),
        ),
        (
            "entry term past the message's",
            append_msg(1, 2, term, prev, ents(&[(last + 1, term + 1)]), 0),
        ),
        (
            "entry term below the previous",
            append_msg(1, 2, term, prev, ents(&[(last + 1, term - 1)]), 0),
        ),
        (
            "terms fall",
            append_msg(
                1,
                2,
                term,
                prev,
                ents(&[(last + 1, term), (last + 2, term - 1)]),
                0,
            ),
        ),
        (
            "previous term past the message's",
            append_msg(1, 2, term, (last, term + 1), vec![], 0),
        ),
        (
            "index overflows",
            append_msg(1, 2, term, (u64::MAX, term), ents(&[(0, term)]), 0),
        ),
    ];
    for (what, m) in malformed {
        match net.node(2).step(m) {
            Err(Error::InvalidMessage(_)) => {}
            other => panic!("{what}: expected InvalidMessage, got {other:?}"),
        }
        assert_eq!(terms(&net, 2), before, "{what}: the log changed");
        assert_eq!(net.raft(2).raft_log().committed, committed, "{what}");
        assert_eq!(net.raft(2).term(), term, "{what}");
    }
    net.node(2)
        .step(append_msg(1, 2, term, prev, ents(&[(last + 1, term)]), 0))
        .expect("the well-formed append");
    assert_eq!(net.raft(2).raft_log().last_index(), last + 1);
}

/// checklist: election-7 (the term rule, bounded): a message whose term is
/// past `MAX_TERM` is refused and the node keeps its term and role. Taken,
/// it moved every node it reached to `u64::MAX`, where no election could
/// follow: one message made a region unavailable for good.
#[test]
fn a_term_past_the_highest_is_refused() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.raft(2).term();
    for t in [
        MessageType::MsgHeartbeat,
        MessageType::MsgRequestVote,
        MessageType::MsgAppend,
    ] {
        let m = msg(t, 3, 2, MAX_TERM + 1);
        match net.node(2).step(m) {
            Err(Error::InvalidMessage(_)) => {}
            other => panic!("{t:?}: expected InvalidMessage, got {other:?}"),
        }
        assert_eq!(net.raft(2).term(), term, "{t:?}");
        assert_eq!(net.raft(2).state(), StateRole::Follower, "{t:?}");
    }
    // MAX_TERM itself is a term like any other.
    net.node(2)
        .step(msg(MessageType::MsgHeartbeat, 3, 2, MAX_TERM))
        .expect("a term at the bound");
    assert_eq!(net.raft(2).term(), MAX_TERM);
}

/// checklist: log-12 (an append response past the leader's log, which no
/// follower can send, is ignored: it would count entries nobody has as
/// replicated, and `index + 1` overflowed at `u64::MAX`).
#[test]
fn an_append_response_past_the_log_is_ignored() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, b"x").unwrap();
    let term = net.raft(1).term();
    let matched = net.raft(1).prs().get(2).unwrap().matched;
    let committed = net.raft(1).raft_log().committed;
    let last = net.raft(1).raft_log().last_index();
    for index in [last + 1, u64::MAX] {
        let mut m = msg(MessageType::MsgAppendResponse, 2, 1, term);
        m.index = index;
        net.node(1).step(m).unwrap();
        let pr = net.raft(1).prs().get(2).unwrap();
        assert_eq!(pr.matched, matched, "index {index}");
        assert!(pr.next_idx <= last + 1, "index {index}");
        assert_eq!(net.raft(1).raft_log().committed, committed);
    }
    net.propose(1, b"y").unwrap();
    assert_eq!(
        net.raft(2).raft_log().committed,
        last + 1,
        "replication goes on"
    );
}
