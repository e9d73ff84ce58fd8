//! Scenario tests: leader election, pre-vote and check-quorum.

mod raft_common;

use flotilla_proto::eraftpb::{EntryType, MessageType};
use flotilla_raftstore::raft::{CAMPAIGN_TRANSFER, Config, MemStorage, StateRole};
use raft_common::*;

fn vote_req(from: u64, to: u64, term: u64, last: (u64, u64)) -> flotilla_proto::eraftpb::Message {
    let mut m = msg(MessageType::MsgRequestVote, from, to, term);
    m.index = last.0;
    m.log_term = last.1;
    m
}

/// checklist: election-1
#[test]
fn follower_campaigns_after_randomized_timeout_in_range() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..40u64 {
        let mut c = config(1);
        c.rng_seed = Some(seed);
        let mut n = new_node_with(c, MemStorage::with_voters(&[1, 2, 3], &[]));
        let mut ticks = 0;
        while n.raft.state() == StateRole::Follower {
            n.tick();
            ticks += 1;
            assert!(ticks < 2 * ELECTION_TICK, "no campaign within 2x election");
        }
        assert!(ticks >= ELECTION_TICK, "campaigned after {ticks} ticks");
        assert_eq!(n.raft.state(), StateRole::Candidate);
        seen.insert(ticks);
    }
    assert!(seen.len() > 3, "timeouts are randomized: {seen:?}");
}

/// checklist: election-1 (`ticks_to_event` names the tick that campaigns:
/// every tick before it only counts, which lets the store skip delivering
/// them; a leader acts at its heartbeats, a learner never)
#[test]
fn ticks_to_event_is_the_campaigning_tick() {
    for seed in 0..20u64 {
        let mut c = config(1);
        c.rng_seed = Some(seed);
        let mut n = new_node_with(c, MemStorage::with_voters(&[1, 2, 3], &[]));
        let left = n.raft.ticks_to_event();
        assert_eq!(left, n.raft.randomized_election_timeout());
        for i in 1..left {
            assert!(!n.tick(), "tick {i} of {left} acted");
            assert_eq!(n.raft.state(), StateRole::Follower);
            assert_eq!(n.raft.ticks_to_event(), left - i);
        }
        assert!(n.tick(), "the due tick campaigns");
        assert_eq!(n.raft.state(), StateRole::Candidate);
    }
    // A leader acts at each heartbeat (and at its election timeout): the
    // ticks in between only count.
    const BEAT: usize = 3;
    let mut net = Network::new_with_members(&[1, 2, 3], &[1, 2, 3], &[], |c| {
        c.heartbeat_tick = BEAT;
    });
    net.elect(1);
    let mut beats = 0;
    for _ in 0..3 * ELECTION_TICK {
        let left = net.raft(1).ticks_to_event();
        assert!((1..=BEAT).contains(&left), "{left}");
        for i in 1..left {
            net.node(1).tick();
            assert!(
                net.raft(1).msgs().is_empty(),
                "silent leader tick {i} of {left} sent"
            );
        }
        net.node(1).tick();
        beats += usize::from(!net.raft(1).msgs().is_empty());
        net.settle();
        assert_eq!(net.raft(1).state(), StateRole::Leader);
    }
    // Every due tick but the check-quorum ones heartbeats.
    assert!(beats >= 2 * ELECTION_TICK, "{beats} heartbeats");
    let learner = Network::new_with_members(&[1, 2], &[1], &[2], |_| {});
    assert_eq!(learner.raft(2).ticks_to_event(), usize::MAX);
}

/// checklist: election-1 (a fixed seed fixes the timeout; simulators rely on it)
#[test]
fn same_seed_same_timeout() {
    let timeout = |seed| {
        let mut c = config(1);
        c.rng_seed = Some(seed);
        let n = new_node_with(c, MemStorage::with_voters(&[1, 2, 3], &[]));
        n.raft.randomized_election_timeout()
    };
    assert_eq!(timeout(42), timeout(42));
    let all: std::collections::BTreeSet<_> = (0..50).map(timeout).collect();
    assert!(
        all.iter()
            .all(|t| (ELECTION_TICK..2 * ELECTION_TICK).contains(t))
    );
}

/// checklist: election-2
#[test]
fn majority_elects_leader_with_empty_entry() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let r = net.raft(1);
    assert_eq!(r.term(), 1);
    let last = r.raft_log().last_index();
    let e = &r.raft_log().slice(last, last + 1, None).unwrap()[0];
    assert_eq!((e.term, e.data.is_empty()), (1, true));
    assert_eq!(e.entry_type(), EntryType::EntryNormal);
    for id in [2, 3] {
        assert_eq!(net.raft(id).state(), StateRole::Follower);
        assert_eq!(net.raft(id).leader_id(), 1);
        assert_eq!(net.raft(id).raft_log().committed, last);
    }
}

/// checklist: election-2 (a minority of votes is not enough)
#[test]
fn minority_does_not_elect() {
    let mut net = Network::new(&[1, 2, 3, 4, 5]);
    net.isolate(4);
    net.isolate(5);
    net.cut(1, 3);
    net.campaign(1);
    assert_eq!(net.raft(1).state(), StateRole::Candidate);
}

/// checklist: election-3
#[test]
fn votes_once_per_term_and_vote_is_persisted_first() {
    let mut n = new_node(1, &[1, 2, 3], &[]);
    n.step(vote_req(2, 1, 2, (0, 0))).unwrap();
    let rd = n.ready();
    assert_eq!(rd.hs.as_ref().map(|h| (h.term, h.vote)), Some((2, 2)));
    assert!(
        rd.messages.is_empty(),
        "a vote is never sent before persistence"
    );
    assert_eq!(rd.persisted_messages.len(), 1);
    assert!(!rd.persisted_messages[0].reject);
    n.advance(rd);
    n.step(vote_req(3, 1, 2, (0, 0))).unwrap();
    let rd = n.ready();
    assert!(
        rd.persisted_messages[0].reject,
        "second candidate of the term refused"
    );
    assert_eq!(n.raft.vote(), 2);
    n.advance(rd);
    // The same candidate asking again gets the same answer.
    n.step(vote_req(2, 1, 2, (0, 0))).unwrap();
    let rd = n.ready();
    assert!(!rd.persisted_messages[0].reject);
}

/// checklist: election-4
#[test]
fn vote_refused_to_less_up_to_date_log() {
    // The voter's log ends at (index 2, term 2).
    let cases = [
        ((1, 1), true),
        ((3, 1), true),
        ((1, 2), true),
        ((2, 2), false),
        ((3, 2), false),
        ((1, 3), false),
    ];
    for (last, reject) in cases {
        let s = storage_with(&[1, 2, 3], &ents(&[(1, 1), (2, 2)]), 2);
        let mut n = new_node_with(config(1), s);
        n.step(vote_req(2, 1, 3, last)).unwrap();
        let m = n.raft.take_all_msgs().pop().unwrap();
        assert_eq!(m.msg_type(), MessageType::MsgRequestVoteResponse);
        assert_eq!(m.reject, reject, "candidate last {last:?}");
    }
}

/// checklist: election-5
#[test]
fn split_vote_resolved_in_later_term() {
    let mut net = Network::new(&[1, 2, 3, 4]);
    net.cut(1, 4);
    net.cut(2, 3);
    net.cut(1, 2);
    let _ = net.node(1).campaign();
    let _ = net.node(2).campaign();
    net.settle();
    assert!(net.leaders().is_empty(), "split vote: no leader");
    assert_eq!(net.raft(1).term(), 1);
    net.recover();
    net.tick_all(4 * ELECTION_TICK);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert!(leaders[0].1 > 1, "resolved in a later term");
}

/// checklist: election-6
#[test]
fn candidate_steps_down_on_append_from_leader_of_its_term() {
    for t in [MessageType::MsgAppend, MessageType::MsgHeartbeat] {
        let mut n = new_node(1, &[1, 2, 3], &[]);
        n.campaign().unwrap();
        assert_eq!(n.raft.state(), StateRole::Candidate);
        let term = n.raft.term();
        n.step(msg(t, 2, 1, term)).unwrap();
        assert_eq!(n.raft.state(), StateRole::Follower, "{t:?}");
        assert_eq!(n.raft.leader_id(), 2);
        assert_eq!(n.raft.term(), term);
    }
}

/// checklist: election-7
#[test]
fn higher_term_message_makes_follower() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let n = net.node(1);
    n.step(msg(MessageType::MsgAppendResponse, 2, 1, 5))
        .unwrap();
    assert_eq!(n.raft.state(), StateRole::Follower);
    assert_eq!(n.raft.term(), 5);
    assert_eq!(n.raft.leader_id(), 0);
    // An append of a higher term also sets the leader.
    n.step(append_msg(3, 1, 6, (0, 0), vec![], 0)).unwrap();
    assert_eq!((n.raft.term(), n.raft.leader_id()), (6, 3));
}

/// checklist: election-8 (a stale append is not applied; the stale leader
/// is told the current term even without check-quorum or pre-vote)
#[test]
fn stale_term_message_ignored() {
    let mut n = new_node(1, &[1, 2, 3], &[]);
    n.step(append_msg(2, 1, 3, (0, 0), vec![], 0)).unwrap();
    n.raft.take_all_msgs();
    n.step(append_msg(3, 1, 2, (0, 0), ents(&[(1, 2)]), 0))
        .unwrap();
    assert_eq!(n.raft.term(), 3);
    assert_eq!(n.raft.leader_id(), 2);
    assert_eq!(
        n.raft.raft_log().last_index(),
        0,
        "stale append not applied"
    );
    let msgs = n.raft.take_all_msgs();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0].msg_type(), MessageType::MsgAppendResponse);
    assert_eq!(
        (msgs[0].to, msgs[0].term),
        (3, 3),
        "the stale leader learns term 3"
    );
}

/// checklist: election-8 (with check-quorum a stale leader is told the term)
#[test]
fn stale_append_answered_with_current_term_under_check_quorum() {
    let mut c = config(1);
    c.check_quorum = true;
    let mut n = new_node_with(c, MemStorage::with_voters(&[1, 2, 3], &[]));
    n.step(append_msg(2, 1, 3, (0, 0), vec![], 0)).unwrap();
    n.raft.take_all_msgs();
    n.step(msg(MessageType::MsgHeartbeat, 3, 1, 2)).unwrap();
    let msgs = n.raft.take_all_msgs();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].msg_type(), MessageType::MsgAppendResponse);
    assert_eq!((msgs[0].to, msgs[0].term), (3, 3));
}

/// checklist: election-9
#[test]
fn single_voter_elects_itself() {
    let mut n = new_node(1, &[1], &[]);
    n.campaign().unwrap();
    assert_eq!(n.raft.state(), StateRole::Leader);
    assert_eq!(n.raft.term(), 1);
    let mut c = config(1);
    c.pre_vote = true;
    let mut p = new_node_with(c, MemStorage::with_voters(&[1], &[]));
    p.campaign().unwrap();
    assert_eq!(p.raft.state(), StateRole::Leader, "pre-vote too");
}

/// checklist: election-10
#[test]
fn learner_never_campaigns_until_promoted() {
    let mut net = Network::new_with_members(&[1, 2], &[1], &[2], |_| {});
    net.tick(2, 5 * ELECTION_TICK);
    assert_eq!(net.raft(2).state(), StateRole::Follower);
    assert_eq!(net.raft(2).term(), 0);
    assert!(!net.raft(2).promotable());
    let _ = net.node(2).campaign();
    assert_eq!(
        net.raft(2).state(),
        StateRole::Follower,
        "explicit campaign ignored"
    );
    net.elect(1);
    net.node(1)
        .propose_conf_change(
            vec![],
            &conf_change(flotilla_proto::eraftpb::ConfChangeType::AddNode, 2),
        )
        .unwrap();
    net.settle();
    assert!(net.raft(2).promotable());
    net.isolate(1);
    net.tick(2, 2 * ELECTION_TICK);
    assert_ne!(
        net.raft(2).state(),
        StateRole::Follower,
        "promoted learner campaigns"
    );
}

/// checklist: election-10 (a learner's vote never counts)
#[test]
fn learner_votes_do_not_count() {
    let mut net = Network::new_with_members(&[1, 2, 3], &[1, 2], &[3], |_| {});
    net.isolate(2);
    net.campaign(1);
    assert_eq!(
        net.raft(1).state(),
        StateRole::Candidate,
        "learner 3 cannot make a quorum"
    );
}

/// checklist: election-11
#[test]
fn higher_priority_voter_refuses_lower_priority_equal_log() {
    let mut c = config(1);
    c.priority = 5;
    let mut n = new_node_with(c, MemStorage::with_voters(&[1, 2, 3], &[]));
    let mut m = vote_req(2, 1, 1, (0, 0));
    m.priority = 1;
    n.step(m.clone()).unwrap();
    assert!(
        n.raft.take_all_msgs()[0].reject,
        "lower priority, equal log"
    );
    let mut m2 = vote_req(3, 1, 2, (0, 0));
    m2.priority = 5;
    n.step(m2).unwrap();
    assert!(!n.raft.take_all_msgs()[0].reject, "equal priority");
    // A strictly longer log wins even with lower priority.
    let mut c = config(1);
    c.priority = 5;
    let mut n = new_node_with(c, MemStorage::with_voters(&[1, 2, 3], &[]));
    let mut m3 = vote_req(2, 1, 1, (1, 1));
    m3.priority = 1;
    n.step(m3).unwrap();
    assert!(!n.raft.take_all_msgs()[0].reject);
}

/// checklist: election-11 (in a cluster, the high-priority node ends up leading)
#[test]
fn priority_decides_the_election() {
    let mut net = Network::new_with(&[1, 2, 3], |c| c.priority = if c.id == 1 { 0 } else { 10 });
    net.campaign(1);
    assert_ne!(
        net.raft(1).state(),
        StateRole::Leader,
        "2 and 3 refuse the low-priority node"
    );
    net.campaign(3);
    assert_eq!(net.raft(3).state(), StateRole::Leader);
}

/// checklist: prevote-1
#[test]
fn pre_candidate_keeps_its_term() {
    let mut c = config(1);
    c.pre_vote = true;
    let mut n = new_node_with(c, MemStorage::with_voters(&[1, 2, 3], &[]));
    n.campaign().unwrap();
    assert_eq!(n.raft.state(), StateRole::PreCandidate);
    assert_eq!(n.raft.term(), 0);
    let msgs = n.raft.take_all_msgs();
    assert!(
        msgs.iter()
            .all(|m| m.msg_type() == MessageType::MsgRequestPreVote && m.term == 1)
    );
    let mut grant = msg(MessageType::MsgRequestPreVoteResponse, 2, 1, 1);
    grant.reject = false;
    n.step(grant).unwrap();
    assert_eq!(
        n.raft.state(),
        StateRole::Candidate,
        "pre-vote majority starts the election"
    );
    assert_eq!(n.raft.term(), 1);
}

/// checklist: prevote-1 (pre-vote rejections by a majority end the pre-campaign)
#[test]
fn pre_vote_lost_returns_to_follower() {
    let mut c = config(1);
    c.pre_vote = true;
    let mut n = new_node_with(c, MemStorage::with_voters(&[1, 2, 3], &[]));
    n.campaign().unwrap();
    for from in [2, 3] {
        let mut r = msg(MessageType::MsgRequestPreVoteResponse, from, 1, 0);
        r.reject = true;
        n.step(r).unwrap();
    }
    assert_eq!(n.raft.state(), StateRole::Follower);
    assert_eq!(n.raft.term(), 0);
}

/// checklist: prevote-2
#[test]
fn rejoining_node_does_not_disrupt_with_pre_vote() {
    let mut net = Network::new_with(&[1, 2, 3], |c| c.pre_vote = true);
    net.elect(1);
    net.isolate(3);
    net.propose(1, b"x").unwrap();
    net.tick(3, 5 * ELECTION_TICK);
    assert_eq!(net.raft(3).term(), 1, "pre-vote keeps the term");
    net.recover();
    net.tick_all(3);
    assert_eq!(net.raft(1).state(), StateRole::Leader);
    assert_eq!(net.raft(1).term(), 1);
}

/// checklist: prevote-2 (without pre-vote the same rejoin disrupts: the test could fail)
#[test]
fn rejoining_node_disrupts_without_pre_vote() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.tick(3, 3 * ELECTION_TICK);
    assert!(net.raft(3).term() > 1);
    net.recover();
    net.tick_all(2 * ELECTION_TICK);
    assert!(net.raft(1).term() > 1, "leader pushed to a higher term");
}

/// checklist: prevote-3
#[test]
fn pre_vote_refused_with_live_leader_or_stale_log() {
    let mut net = Network::new_with(&[1, 2, 3], |c| {
        c.pre_vote = true;
        c.check_quorum = true;
    });
    net.elect(1);
    // 2 has a live leader: a pre-vote from 3 is ignored.
    let mut pv = msg(MessageType::MsgRequestPreVote, 3, 2, 2);
    pv.index = 100;
    pv.log_term = 1;
    net.node(2).step(pv).unwrap();
    assert!(net.node(2).raft.take_all_msgs().is_empty());
    // A voter without a leader grants only to an up-to-date log.
    let mut n = new_node_with(
        config(1),
        storage_with(&[1, 2, 3], &ents(&[(1, 1), (2, 1)]), 1),
    );
    let mut stale = msg(MessageType::MsgRequestPreVote, 2, 1, 2);
    stale.index = 1;
    stale.log_term = 1;
    n.step(stale).unwrap();
    let r = n.raft.take_all_msgs();
    assert!(r[0].reject);
    assert_eq!(n.raft.term(), 1, "pre-vote never bumps the voter's term");
    let mut fresh = msg(MessageType::MsgRequestPreVote, 2, 1, 2);
    fresh.index = 2;
    fresh.log_term = 1;
    n.step(fresh).unwrap();
    let r = n.raft.take_all_msgs();
    assert!(!r[0].reject);
    assert_eq!(r[0].term, 2, "grant carries the requested term");
}

/// checklist: prevote-1, prevote-3 (two pre-candidates at once: the one
/// with the lower id goes on, the other grants it; with two live voters of
/// three, granting each other would split the real vote every time)
#[test]
fn simultaneous_pre_candidates_do_not_split_the_vote() {
    let mut net = Network::new_with(&[1, 2, 3], |c| {
        c.pre_vote = true;
        c.check_quorum = true;
    });
    net.elect(1);
    net.isolate(1);
    // 2 and 3 both find the leader gone and pre-campaign in the same
    // instant: neither has seen the other's request yet.
    net.node(2).raft.campaign_now();
    net.node(3).raft.campaign_now();
    let from2 = net.process(2);
    let from3 = net.process(3);
    assert_eq!(net.raft(2).state(), StateRole::PreCandidate);
    assert_eq!(net.raft(3).state(), StateRole::PreCandidate);
    let mut msgs = from2;
    msgs.extend(from3);
    net.send(msgs);
    assert_eq!(net.raft(2).state(), StateRole::Leader, "the lower id won");
    assert_eq!(net.raft(2).term(), 2, "one election, no split vote");
    assert_eq!(net.raft(3).state(), StateRole::Follower);
    assert_eq!(net.raft(3).term(), 2);
    // A pre-candidate still grants a newer log, whatever its id.
    let mut n = new_node_with(
        {
            let mut c = config(1);
            c.pre_vote = true;
            c
        },
        storage_with(&[1, 2, 3], &ents(&[(1, 1)]), 1),
    );
    n.campaign().unwrap();
    assert_eq!(n.raft.state(), StateRole::PreCandidate);
    n.raft.take_all_msgs();
    let mut newer = msg(MessageType::MsgRequestPreVote, 3, 1, 2);
    newer.index = 2;
    newer.log_term = 1;
    n.step(newer).unwrap();
    let r = n.raft.take_all_msgs();
    assert!(!r[0].reject, "a newer log is granted");
    let mut same = msg(MessageType::MsgRequestPreVote, 3, 1, 2);
    same.index = 1;
    same.log_term = 1;
    n.step(same).unwrap();
    let r = n.raft.take_all_msgs();
    assert!(r[0].reject, "an equal log with a higher id is refused");
    // Priority comes before the id: a higher priority is granted even
    // with a higher id, a lower one refused even with a lower id (as the
    // priority check does for everyone: no two pre-candidates refuse each
    // other).
    let mut p = {
        let mut c = config(2);
        c.pre_vote = true;
        c.priority = 5;
        new_node_with(c, storage_with(&[1, 2, 3], &ents(&[(1, 1)]), 1))
    };
    p.campaign().unwrap();
    p.raft.take_all_msgs();
    let mut higher = msg(MessageType::MsgRequestPreVote, 3, 2, 2);
    (higher.index, higher.log_term, higher.priority) = (1, 1, 9);
    p.step(higher).unwrap();
    assert!(
        !p.raft.take_all_msgs()[0].reject,
        "a higher priority is granted"
    );
    let mut lower = msg(MessageType::MsgRequestPreVote, 1, 2, 2);
    (lower.index, lower.log_term, lower.priority) = (1, 1, 1);
    p.step(lower).unwrap();
    assert!(
        p.raft.take_all_msgs()[0].reject,
        "a lower priority is refused"
    );
}

/// checklist: quorum-2 (a store that knows the leader gone campaigns at
/// once, and its clock starts afresh: the next tick does not pre-campaign
/// again; a voter that knew the leader is no longer within its lease)
#[test]
fn campaign_now_campaigns_once_and_ends_the_lease() {
    let mut net = Network::new_with(&[1, 2, 3], |c| {
        c.pre_vote = true;
        c.check_quorum = true;
    });
    net.elect(1);
    net.isolate(1);
    assert!(net.raft(2).ignores_votes_in_lease());
    net.node(2).raft.campaign_now();
    assert_eq!(net.raft(2).state(), StateRole::PreCandidate);
    let first = net.process(2);
    assert_eq!(
        first
            .iter()
            .filter(|m| m.msg_type() == MessageType::MsgRequestPreVote)
            .count(),
        2
    );
    net.node(2).tick();
    assert!(
        net.process(2).is_empty(),
        "no second pre-campaign at the next tick"
    );
    // 3 still hears nothing of 1 but is within the lease: it ignores 2.
    assert!(net.raft(3).ignores_votes_in_lease());
    // Asked again while it campaigns, 2 keeps its round: no new requests.
    net.node(2).raft.campaign_now();
    assert_eq!(net.raft(2).state(), StateRole::PreCandidate);
    assert!(net.process(2).is_empty(), "a second pre-campaign started");
    // A learner cannot campaign; its lease ends all the same.
    let mut l = new_node_with(
        {
            let mut c = config(4);
            c.check_quorum = true;
            c
        },
        MemStorage::with_voters(&[1, 2, 3], &[4]),
    );
    l.step(append_msg(1, 4, 1, (0, 0), vec![], 0)).unwrap();
    assert!(l.raft.ignores_votes_in_lease());
    l.raft.campaign_now();
    assert_eq!(l.raft.state(), StateRole::Follower);
    assert!(!l.raft.ignores_votes_in_lease());
}

/// checklist: prevote-4
#[test]
fn pre_vote_with_node_ahead_in_term_converges() {
    let mut net = Network::new_with(&[1, 2, 3], |c| c.pre_vote = true);
    net.elect(1);
    net.isolate(3);
    net.propose(1, b"a").unwrap();
    // Node 3 somehow reached a higher term while partitioned (e.g. before
    // pre-vote was enabled).
    net.node(3).raft.become_candidate();
    net.node(3).raft.become_candidate();
    net.process(3);
    assert_eq!(net.raft(3).term(), 3);
    net.recover();
    net.tick_all(6 * ELECTION_TICK);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    let term = leaders[0].1;
    for id in [1, 2, 3] {
        assert_eq!(net.raft(id).term(), term, "node {id}");
    }
    assert_ne!(leaders[0].0, 3, "the stale-log node cannot win");
}

/// checklist: quorum-1
#[test]
fn check_quorum_leader_steps_down_when_isolated() {
    let mut net = Network::new_with(&[1, 2, 3], |c| c.check_quorum = true);
    net.elect(1);
    net.isolate(1);
    // The first check still sees the activity from before the partition.
    net.tick(1, ELECTION_TICK);
    assert_eq!(net.raft(1).state(), StateRole::Leader);
    net.tick(1, ELECTION_TICK);
    assert_eq!(net.raft(1).state(), StateRole::Follower);
    // Without isolation the leader stays.
    let mut net = Network::new_with(&[1, 2, 3], |c| c.check_quorum = true);
    net.elect(1);
    net.tick(1, 3 * ELECTION_TICK);
    assert_eq!(net.raft(1).state(), StateRole::Leader);
}

/// checklist: quorum-2
#[test]
fn leader_lease_ignores_votes_unless_forced() {
    let mut net = Network::new_with(&[1, 2, 3], |c| c.check_quorum = true);
    net.elect(1);
    let n = net.node(2);
    n.step(vote_req(3, 2, 5, (10, 5))).unwrap();
    assert_eq!(n.raft.term(), 1, "vote request within the lease ignored");
    assert!(n.raft.take_all_msgs().is_empty());
    let mut forced = vote_req(3, 2, 5, (10, 5));
    forced.context = CAMPAIGN_TRANSFER.to_vec().into();
    n.step(forced).unwrap();
    assert_eq!(n.raft.term(), 5, "a transfer campaign overrides the lease");
    assert!(!n.raft.take_all_msgs()[0].reject);
}

/// checklist: quorum-2 (a node just started keeps the lease it may have
/// acknowledged before a restart: with `refuse_votes_after_start` it
/// ignores vote requests until it counted one election timeout of ticks;
/// without the option the same request is granted at once)
#[test]
fn restarted_node_refuses_votes_for_one_election_timeout() {
    for refuse in [true, false] {
        let mut c = config(2);
        c.check_quorum = true;
        c.refuse_votes_after_start = refuse;
        let mut n = new_node_with(c, MemStorage::with_voters(&[1, 2, 3], &[]));
        n.step(vote_req(3, 2, 5, (10, 5))).unwrap();
        if !refuse {
            assert_eq!(n.raft.term(), 5, "granted at once without the option");
            assert!(!n.raft.take_all_msgs()[0].reject);
            continue;
        }
        assert_eq!(n.raft.term(), 0, "vote granted right after start");
        assert!(n.raft.take_all_msgs().is_empty());
        for _ in 0..ELECTION_TICK - 1 {
            n.raft.tick();
        }
        n.step(vote_req(3, 2, 5, (10, 5))).unwrap();
        assert_eq!(n.raft.term(), 0, "vote granted before an election timeout");
        n.raft.tick();
        n.step(vote_req(3, 2, 5, (10, 5))).unwrap();
        assert_eq!(n.raft.term(), 5, "still refusing after an election timeout");
        let granted =
            n.raft.take_all_msgs().into_iter().any(|m| {
                m.to == 3 && m.msg_type() == MessageType::MsgRequestVoteResponse && !m.reject
            });
        assert!(granted, "no vote granted after an election timeout");
    }
}

/// checklist: quorum-3
#[test]
fn only_voters_keep_the_leader_alive() {
    let mut net = Network::new_with_members(&[1, 2, 3, 4, 5], &[1, 2, 3], &[4, 5], |c| {
        c.check_quorum = true
    });
    net.elect(1);
    net.isolate(2);
    net.isolate(3);
    net.tick(1, 2 * ELECTION_TICK);
    assert_eq!(
        net.raft(1).state(),
        StateRole::Follower,
        "learners' activity does not count"
    );
}

/// checklist: election-7, prevote-1 (restart keeps term and vote)
#[test]
fn config_errors_surface_from_new() {
    let bad = Config {
        election_tick: 1,
        heartbeat_tick: 1,
        ..Config::new(1)
    };
    assert!(flotilla_raftstore::raft::RawNode::new(&bad, MemStorage::new(), &logger()).is_err());
}

/// checklist: election-1, transfer-1 (an application's hold on a node's
/// campaigns): a held node campaigns neither on its election timeout,
/// nor on `campaign`, nor on a leader transfer to it, yet votes another
/// node in; released, it campaigns again.
#[test]
fn held_campaigns_wait_for_the_release() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.node(3).hold_campaigns(true);
    net.node(1).transfer_leader(3);
    net.settle();
    assert_eq!(
        net.raft(1).state(),
        StateRole::Leader,
        "transfer to a held node"
    );
    assert_eq!(net.raft(3).state(), StateRole::Follower);
    let _ = net.node(3).campaign();
    net.settle();
    assert_eq!(
        net.raft(3).state(),
        StateRole::Follower,
        "explicit campaign"
    );
    let term = net.raft(1).term();
    net.isolate(1);
    net.tick(3, 5 * ELECTION_TICK);
    assert_eq!(net.raft(3).state(), StateRole::Follower, "election timeout");
    assert_eq!(net.raft(3).term(), term, "no campaign of its own");
    net.tick(2, 5 * ELECTION_TICK);
    net.settle();
    assert_eq!(net.raft(2).state(), StateRole::Leader, "it still votes");
    net.node(3).hold_campaigns(false);
    net.node(2).transfer_leader(3);
    net.settle();
    assert_eq!(net.raft(3).state(), StateRole::Leader, "released");
}
