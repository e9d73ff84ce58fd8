//! Text renderings of messages, entries, readies, configurations and
//! progress, modelled on etcd/raft's `Describe*` helpers so that the
//! transcripts read like etcd's interaction tests.

use std::fmt::Write as _;

use flotilla_proto::eraftpb::{
    ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState,
    Message, MessageType, Snapshot,
};
use flotilla_raftstore::raft::tracker::{Progress, ProgressState};
use flotilla_raftstore::raft::{
    LightReady, ReadState, Ready, SoftState, StateRole, decode_conf_change,
};

/// etcd's short name of a message type (`MsgApp`, `MsgVoteResp`, ...).
pub fn msg_type_name(t: MessageType) -> &'static str {
    match t {
        MessageType::MsgHup => "MsgHup",
        MessageType::MsgBeat => "MsgBeat",
        MessageType::MsgPropose => "MsgProp",
        MessageType::MsgAppend => "MsgApp",
        MessageType::MsgAppendResponse => "MsgAppResp",
        MessageType::MsgRequestVote => "MsgVote",
        MessageType::MsgRequestVoteResponse => "MsgVoteResp",
        MessageType::MsgSnapshot => "MsgSnap",
        MessageType::MsgHeartbeat => "MsgHeartbeat",
        MessageType::MsgHeartbeatResponse => "MsgHeartbeatResp",
        MessageType::MsgUnreachable => "MsgUnreachable",
        MessageType::MsgSnapStatus => "MsgSnapStatus",
        MessageType::MsgCheckQuorum => "MsgCheckQuorum",
        MessageType::MsgTransferLeader => "MsgTransferLeader",
        MessageType::MsgTimeoutNow => "MsgTimeoutNow",
        MessageType::MsgReadIndex => "MsgReadIndex",
        MessageType::MsgReadIndexResp => "MsgReadIndexResp",
        MessageType::MsgRequestPreVote => "MsgPreVote",
        MessageType::MsgRequestPreVoteResponse => "MsgPreVoteResp",
    }
}

/// etcd's name of a role (`StateLeader`, ...).
pub fn role_name(r: StateRole) -> &'static str {
    match r {
        StateRole::Follower => "StateFollower",
        StateRole::Candidate => "StateCandidate",
        StateRole::Leader => "StateLeader",
        StateRole::PreCandidate => "StatePreCandidate",
    }
}

/// Bytes as a quoted, escaped string.
pub fn quoted(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// `v2 l4 r3`: the changes of a conf change in the command language.
pub fn describe_changes(cc: &ConfChangeV2) -> String {
    let parts: Vec<String> = cc
        .changes
        .iter()
        .map(|c| {
            let p = match c.change_type() {
                ConfChangeType::AddNode => 'v',
                ConfChangeType::AddLearnerNode => 'l',
                ConfChangeType::RemoveNode => 'r',
            };
            format!("{p}{}", c.node_id)
        })
        .collect();
    parts.join(" ")
}

/// `1/3 EntryNormal "foo"` or `1/4 EntryConfChangeV2 v4 l5 (explicit)`.
pub fn describe_entry(e: &Entry) -> String {
    let ty = match e.entry_type() {
        EntryType::EntryNormal => "EntryNormal",
        EntryType::EntryConfChange => "EntryConfChange",
        EntryType::EntryConfChangeV2 => "EntryConfChangeV2",
    };
    let payload = match e.entry_type() {
        EntryType::EntryNormal => quoted(&e.data),
        _ => match decode_conf_change(e) {
            Ok(cc) if cc.changes.is_empty() => "leave-joint".to_string(),
            Ok(cc) => {
                let mut s = describe_changes(&cc);
                if e.entry_type() == EntryType::EntryConfChangeV2 {
                    match cc.transition() {
                        ConfChangeTransition::Auto => {}
                        ConfChangeTransition::Implicit => s.push_str(" (implicit)"),
                        ConfChangeTransition::Explicit => s.push_str(" (explicit)"),
                    }
                }
                s
            }
            Err(err) => format!("<undecodable: {err}>"),
        },
    };
    format!("{}/{} {ty} {payload}", e.term, e.index)
}

/// Entries on one line: `[1/3 EntryNormal "a", 1/4 EntryNormal "b"]`.
pub fn describe_entries_inline(ents: &[Entry]) -> String {
    let parts: Vec<String> = ents.iter().map(describe_entry).collect();
    format!("[{}]", parts.join(", "))
}

fn ids(v: &[u64]) -> String {
    let parts: Vec<String> = v.iter().map(u64::to_string).collect();
    format!("({})", parts.join(" "))
}

/// `voters=(1 2 3)&&(1 2) learners=(4) learners_next=(3) autoleave`.
pub fn describe_conf_state(cs: &ConfState) -> String {
    let mut s = format!("voters={}", ids(&cs.voters));
    if !cs.voters_outgoing.is_empty() {
        let _ = write!(s, "&&{}", ids(&cs.voters_outgoing));
    }
    if !cs.learners.is_empty() {
        let _ = write!(s, " learners={}", ids(&cs.learners));
    }
    if !cs.learners_next.is_empty() {
        let _ = write!(s, " learners_next={}", ids(&cs.learners_next));
    }
    if cs.auto_leave {
        s.push_str(" autoleave");
    }
    s
}

/// `Index:10 Term:1 ConfState:voters=(1 2 3)`.
pub fn describe_snapshot(s: &Snapshot) -> String {
    let meta = s.metadata.clone().unwrap_or_default();
    format!(
        "Index:{} Term:{} ConfState:{}",
        meta.index,
        meta.term,
        describe_conf_state(&meta.conf_state.unwrap_or_default())
    )
}

/// `HardState Term:1 Vote:1 Commit:2`.
pub fn describe_hard_state(hs: &HardState) -> String {
    format!(
        "HardState Term:{} Vote:{} Commit:{}",
        hs.term, hs.vote, hs.commit
    )
}

/// `1->2 MsgApp Term:1 Log:1/10 Commit:10 Entries:[1/11 EntryNormal "foo"]`.
pub fn describe_message(m: &Message) -> String {
    let mut s = format!(
        "{}->{} {} Term:{} Log:{}/{}",
        m.from,
        m.to,
        msg_type_name(m.msg_type()),
        m.term,
        m.log_term,
        m.index
    );
    if m.reject {
        let _ = write!(s, " Rejected (Hint: {})", m.reject_hint);
    }
    if m.commit != 0 {
        let _ = write!(s, " Commit:{}", m.commit);
    }
    if m.priority != 0 {
        let _ = write!(s, " Priority:{}", m.priority);
    }
    if m.no_ack {
        s.push_str(" NoAck");
    }
    if !m.context.is_empty() {
        let _ = write!(s, " Context:{}", quoted(&m.context));
    }
    if !m.entries.is_empty() {
        let _ = write!(s, " Entries:{}", describe_entries_inline(&m.entries));
    }
    if let Some(snap) = &m.snapshot
        && snap.metadata.as_ref().is_some_and(|md| md.index != 0)
    {
        let _ = write!(s, " Snapshot: {}", describe_snapshot(snap));
    }
    s
}

/// `Index:3 Ctx:"r1"`.
pub fn describe_read_state(rs: &ReadState) -> String {
    format!("Index:{} Ctx:{}", rs.index, quoted(&rs.request_ctx))
}

/// `Lead:1 State:StateLeader`.
pub fn describe_soft_state(ss: &SoftState) -> String {
    format!("Lead:{} State:{}", ss.leader_id, role_name(ss.raft_state))
}

fn push_section<T>(out: &mut Vec<String>, title: &str, items: &[T], f: impl Fn(&T) -> String) {
    if items.is_empty() {
        return;
    }
    out.push(format!("{title}:"));
    out.extend(items.iter().map(f));
}

/// The lines describing a `Ready` (header first).
pub fn describe_ready(rd: &Ready) -> Vec<String> {
    let mut out = vec![format!("Ready MustSync={}:", rd.must_sync)];
    if let Some(ss) = &rd.ss {
        out.push(describe_soft_state(ss));
    }
    if let Some(hs) = &rd.hs {
        out.push(describe_hard_state(hs));
    }
    if let Some(snap) = &rd.snapshot {
        out.push(format!("Snapshot {}", describe_snapshot(snap)));
    }
    push_section(&mut out, "Entries", &rd.entries, describe_entry);
    push_section(
        &mut out,
        "CommittedEntries",
        &rd.committed_entries,
        describe_entry,
    );
    push_section(&mut out, "Messages", &rd.messages, describe_message);
    push_section(
        &mut out,
        "PersistedMessages",
        &rd.persisted_messages,
        describe_message,
    );
    push_section(&mut out, "ReadStates", &rd.read_states, describe_read_state);
    out
}

/// The lines describing a non-empty `LightReady` (none if it is empty).
pub fn describe_light_ready(lr: &LightReady) -> Vec<String> {
    if *lr == LightReady::default() {
        return Vec::new();
    }
    let mut out = vec!["LightReady:".to_string()];
    if let Some(c) = lr.commit_index {
        out.push(format!("Commit:{c}"));
    }
    push_section(
        &mut out,
        "CommittedEntries",
        &lr.committed_entries,
        describe_entry,
    );
    push_section(&mut out, "Messages", &lr.messages, describe_message);
    out
}

/// `StateReplicate match=11 next=12 inflight=2` (etcd's progress string).
pub fn describe_progress(pr: &Progress) -> String {
    let state = match pr.state {
        ProgressState::Probe => "StateProbe",
        ProgressState::Replicate => "StateReplicate",
        ProgressState::Snapshot => "StateSnapshot",
    };
    let mut s = format!("{state} match={} next={}", pr.matched, pr.next_idx);
    if pr.is_learner {
        s.push_str(" learner");
    }
    if pr.is_paused() {
        s.push_str(" paused");
    }
    if pr.pending_snapshot > 0 {
        let _ = write!(s, " pendingSnap={}", pr.pending_snapshot);
    }
    if !pr.recent_active {
        s.push_str(" inactive");
    }
    let n = pr.ins.count();
    if n > 0 {
        let _ = write!(s, " inflight={n}");
        if pr.ins.full() {
            s.push_str("[full]");
        }
    }
    s
}
