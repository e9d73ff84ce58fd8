//! The command language: parses one datadriven test case and runs it
//! against the [`InteractionEnv`].
//!
//! The datadriven crate keeps a directive's arguments in a hash map, so
//! their order on the line is lost. The language therefore uses *bare*
//! arguments only where order does not matter: bare numbers are node ids
//! (a set), one bare non-numeric word is the payload (`propose 1 foo`,
//! `read-index 1 ctx`, `log-level info`); everything else is `key=value`.
//! Conf changes whose order matters go in the input block below the
//! directive (`v2 l4 r3`, one or more per line, in order); on the
//! directive line they are sorted by node id.

use std::collections::{BTreeSet, HashMap};

use datadriven::TestCase;
use flotilla_proto::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    MessageType, Snapshot, SnapshotMetadata,
};
use flotilla_raftstore::raft::{
    Config, DEFAULT_MAX_INFLIGHT_MSGS, MemStorage, ReadOnlyOption, confchange,
};

use super::env::{InteractionEnv, LogLevel};
use super::format::{
    describe_entry, describe_hard_state, describe_progress, msg_type_name, role_name,
};

/// Election timeout (ticks) of the nodes unless `election-tick=` says
/// otherwise.
pub const DEFAULT_ELECTION_TICK: usize = 3;
/// Heartbeat interval (ticks) unless `heartbeat-tick=` says otherwise.
pub const DEFAULT_HEARTBEAT_TICK: usize = 1;
/// Term of the bootstrap snapshot written by `add-nodes ... index=I`.
pub const BOOTSTRAP_TERM: u64 = 1;
/// Added to a node's id to form its fixed election-timeout seed.
pub const RNG_SEED_BASE: u64 = 0xF107_111A;

/// Bare arguments split into node ids and at most one word.
struct Bare {
    ids: BTreeSet<u64>,
    word: Option<String>,
}

/// The arguments of one command, consumed as they are read; anything left
/// over is an error (a misspelt option must not be silently ignored).
struct Args {
    map: HashMap<String, Vec<String>>,
}

impl Args {
    fn new(tc: &TestCase) -> Self {
        Args {
            map: tc.args.clone(),
        }
    }

    fn bare(&mut self) -> Result<Bare, String> {
        let keys: Vec<String> = self
            .map
            .iter()
            .filter(|(_, v)| v.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        let mut b = Bare {
            ids: BTreeSet::new(),
            word: None,
        };
        let mut words = Vec::new();
        for k in keys {
            self.map.remove(&k);
            match k.parse::<u64>() {
                Ok(id) => {
                    b.ids.insert(id);
                }
                Err(_) => words.push(k),
            }
        }
        words.sort();
        match words.len() {
            0 => {}
            1 => b.word = words.pop(),
            _ => return Err(format!("more than one bare word: {words:?}")),
        }
        Ok(b)
    }

    fn bare_changes(&mut self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .map
            .iter()
            .filter(|(k, v)| v.is_empty() && parse_change(k).is_ok())
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.map.remove(k);
        }
        keys.sort_by_key(|k| (k[1..].parse::<u64>().unwrap_or(0), k.clone()));
        keys
    }

    fn opt<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>, String> {
        let Some(vals) = self.map.remove(key) else {
            return Ok(None);
        };
        match vals.as_slice() {
            [v] => v
                .parse()
                .map(Some)
                .map_err(|_| format!("bad value for {key}: {v}")),
            _ => Err(format!("{key} takes one value")),
        }
    }

    fn list(&mut self, key: &str) -> Result<Option<Vec<u64>>, String> {
        let Some(vals) = self.map.remove(key) else {
            return Ok(None);
        };
        vals.iter()
            .map(|v| v.parse().map_err(|_| format!("bad id in {key}: {v}")))
            .collect::<Result<Vec<u64>, String>>()
            .map(Some)
    }

    fn flag(&mut self, key: &str) -> Result<bool, String> {
        Ok(self.opt::<bool>(key)?.unwrap_or(false))
    }

    fn finish(self) -> Result<(), String> {
        if self.map.is_empty() {
            return Ok(());
        }
        let mut left: Vec<&String> = self.map.keys().collect();
        left.sort();
        Err(format!("unknown arguments: {left:?}"))
    }
}

fn one_id(b: &Bare) -> Result<u64, String> {
    match b.ids.iter().collect::<Vec<_>>().as_slice() {
        [id] => Ok(**id),
        _ => Err("expected exactly one node id".to_string()),
    }
}

fn parse_change(s: &str) -> Result<ConfChangeSingle, String> {
    let t = match s.chars().next() {
        Some('v') => ConfChangeType::AddNode,
        Some('l') => ConfChangeType::AddLearnerNode,
        Some('r') => ConfChangeType::RemoveNode,
        _ => return Err(format!("bad change {s:?}")),
    };
    let id = s[1..]
        .parse::<u64>()
        .map_err(|_| format!("bad change {s:?}"))?;
    Ok(confchange::single(t, id))
}

/// Runs one test case and returns its output.
pub fn run(env: &mut InteractionEnv, tc: &TestCase) -> String {
    env.out.clear();
    if let Err(e) = dispatch(env, tc) {
        env.line("", format!("ERROR {e}"));
    }
    env.flush_logs("");
    if env.out.is_empty() {
        "ok\n".to_string()
    } else {
        std::mem::take(&mut env.out)
    }
}

fn dispatch(env: &mut InteractionEnv, tc: &TestCase) -> Result<(), String> {
    let mut a = Args::new(tc);
    match tc.directive.as_str() {
        "add-nodes" => add_nodes(env, &mut a)?,
        "campaign" => {
            let id = one_id(&a.bare()?)?;
            let r = env.node(id)?.raw.campaign();
            r.map_err(|e| e.to_string())?;
        }
        "propose" => {
            let b = a.bare()?;
            let data = a
                .opt::<String>("data")?
                .or(b.word.clone())
                .unwrap_or_default();
            let r = env
                .node(one_id(&b)?)?
                .raw
                .propose(vec![], data.into_bytes());
            r.map_err(|e| e.to_string())?;
        }
        "propose-conf-change" => propose_conf_change(env, &mut a, &tc.input)?,
        "process-ready" => {
            let ids = a.bare()?.ids;
            let indent = if ids.len() > 1 { "  " } else { "" };
            for id in ids {
                if !indent.is_empty() {
                    env.info("", format!("> {id} handling Ready"));
                }
                env.process_ready(id, indent)?;
            }
        }
        "process-append-thread" => {
            let ids = a.bare()?.ids;
            let indent = if ids.len() > 1 { "  " } else { "" };
            for id in ids {
                if !indent.is_empty() {
                    env.info("", format!("> {id} processing append thread"));
                }
                env.process_append_thread(id, indent)?;
            }
        }
        "deliver-msgs" => {
            let b = a.bare()?;
            let drop: BTreeSet<u64> = a.list("drop")?.unwrap_or_default().into_iter().collect();
            let only = match a.opt::<String>("type")? {
                None => None,
                Some(name) => Some(msg_type_by_name(&name)?),
            };
            env.deliver(&b.ids, &drop, only, "");
        }
        "stabilize" => {
            let ids = a.bare()?.ids;
            env.stabilize(&ids)?;
        }
        "tick" => {
            let id = one_id(&a.bare()?)?;
            let n: usize = a.opt("n")?.unwrap_or(1);
            tick(env, id, n)?;
        }
        "tick-election" => {
            let id = one_id(&a.bare()?)?;
            let n = env.node(id)?.config.election_tick;
            tick(env, id, n)?;
        }
        "tick-heartbeat" => {
            let id = one_id(&a.bare()?)?;
            let n = env.node(id)?.config.heartbeat_tick;
            tick(env, id, n)?;
        }
        "transfer-leader" => {
            let from: u64 = a.opt("from")?.ok_or("from= is required")?;
            let to: u64 = a.opt("to")?.ok_or("to= is required")?;
            env.node(from)?.raw.transfer_leader(to);
        }
        "read-index" => {
            let b = a.bare()?;
            let ctx = a
                .opt::<String>("ctx")?
                .or(b.word.clone())
                .unwrap_or_default();
            let r = env.node(one_id(&b)?)?.raw.read_index(ctx.into_bytes());
            r.map_err(|e| e.to_string())?;
        }
        "report-unreachable" => {
            let id = one_id(&a.bare()?)?;
            let peer: u64 = a.opt("peer")?.ok_or("peer= is required")?;
            env.node(id)?.raw.report_unreachable(peer);
        }
        "report-snapshot" => {
            let id = one_id(&a.bare()?)?;
            let peer: u64 = a.opt("peer")?.ok_or("peer= is required")?;
            let reject = a.flag("reject")?;
            env.node(id)?.raw.report_snapshot(peer, !reject);
        }
        "compact" => {
            let id = one_id(&a.bare()?)?;
            let index: u64 = a.opt("index")?.ok_or("index= is required")?;
            compact(env, id, index)?;
        }
        "restart" => {
            let id = one_id(&a.bare()?)?;
            env.restart(id)?;
        }
        "isolate" => {
            let ids = a.bare()?.ids;
            env.outbox
                .retain(|m| !ids.contains(&m.from) && !ids.contains(&m.to));
            env.isolated.extend(ids);
        }
        "heal" => env.isolated.clear(),
        "status" => {
            let id = one_id(&a.bare()?)?;
            status(env, id)?;
        }
        "raft-log" => {
            let id = one_id(&a.bare()?)?;
            raft_log(env, id)?;
        }
        "raft-state" => raft_state(env),
        "log-level" => {
            let word = a.bare()?.word.ok_or("log-level needs a level")?;
            env.level = match word.as_str() {
                "none" => LogLevel::None,
                "info" => LogLevel::Info,
                "debug" => LogLevel::Debug,
                other => return Err(format!("unknown log level {other}")),
            };
        }
        other => return Err(format!("unknown command {other}")),
    }
    a.finish()
}

fn add_nodes(env: &mut InteractionEnv, a: &mut Args) -> Result<(), String> {
    let b = a.bare()?;
    let n = one_id(&b)?;
    let voters = a.list("voters")?.unwrap_or_default();
    let learners = a.list("learners")?.unwrap_or_default();
    let index: u64 = a.opt("index")?.unwrap_or(0);
    let election_tick = a.opt("election-tick")?.unwrap_or(DEFAULT_ELECTION_TICK);
    let randomized = a.flag("randomized-election")?;
    let read_only = match a.opt::<String>("read-only")?.as_deref() {
        None | Some("safe") => ReadOnlyOption::Safe,
        Some("lease") => ReadOnlyOption::LeaseBased,
        Some(other) => return Err(format!("unknown read-only option {other}")),
    };
    let base = Config {
        election_tick,
        heartbeat_tick: a.opt("heartbeat-tick")?.unwrap_or(DEFAULT_HEARTBEAT_TICK),
        // Without randomization every follower times out after exactly
        // `election_tick` ticks, which `tick-election` relies on.
        max_election_tick: if randomized { 0 } else { election_tick + 1 },
        pre_vote: a.flag("prevote")?,
        check_quorum: a.flag("checkquorum")?,
        read_only_option: read_only,
        max_inflight_msgs: a.opt("max-inflight")?.unwrap_or(DEFAULT_MAX_INFLIGHT_MSGS),
        max_size_per_msg: a.opt("max-size-per-msg")?.unwrap_or(u64::MAX),
        max_uncommitted_size: a.opt("max-uncommitted-size")?.unwrap_or(u64::MAX),
        max_committed_size_per_ready: a.opt("max-committed-size-per-ready")?.unwrap_or(u64::MAX),
        disable_proposal_forwarding: a.flag("disable-proposal-forwarding")?,
        priority: a.opt("priority")?.unwrap_or(0),
        skip_bcast_commit: a.flag("skip-bcast-commit")?,
        ..Config::default()
    };
    let async_writes = a.flag("async-storage-writes")?;
    let first = env.nodes.keys().next_back().copied().unwrap_or(0) + 1;
    for id in first..first + n {
        let store = if voters.is_empty() && learners.is_empty() {
            MemStorage::new()
        } else if index == 0 {
            MemStorage::with_voters(&voters, &learners)
        } else {
            let cs = ConfState {
                voters: voters.clone(),
                learners: learners.clone(),
                ..Default::default()
            };
            let s = MemStorage::new_with_conf_state(cs.clone());
            let snap = Snapshot {
                data: Default::default(),
                metadata: Some(SnapshotMetadata {
                    conf_state: Some(cs),
                    index,
                    term: BOOTSTRAP_TERM,
                }),
            };
            s.wl().apply_snapshot(snap).map_err(|e| e.to_string())?;
            s
        };
        let config = Config {
            id,
            rng_seed: Some(RNG_SEED_BASE + id),
            ..base.clone()
        };
        env.add_node(config, store, async_writes)?;
    }
    Ok(())
}

fn propose_conf_change(env: &mut InteractionEnv, a: &mut Args, input: &str) -> Result<(), String> {
    // `v1=true` selects the v1 format; a bare `v1` is the change "voter 1".
    let v1 = if a.map.get("v1").is_some_and(|v| !v.is_empty()) {
        a.flag("v1")?
    } else {
        false
    };
    let transition = match a.opt::<String>("transition")?.as_deref() {
        None | Some("auto") => ConfChangeTransition::Auto,
        Some("implicit") => ConfChangeTransition::Implicit,
        Some("explicit") => ConfChangeTransition::Explicit,
        Some(other) => return Err(format!("unknown transition {other}")),
    };
    let mut words = a.bare_changes();
    words.extend(input.split_whitespace().map(str::to_string));
    let changes = words
        .iter()
        .map(|w| parse_change(w))
        .collect::<Result<Vec<_>, String>>()?;
    let id = one_id(&a.bare()?)?;
    let node = &mut env.node(id)?.raw;
    let r = if v1 {
        let [c] = changes.as_slice() else {
            return Err("a v1 conf change has exactly one change".to_string());
        };
        let mut cc = ConfChange {
            node_id: c.node_id,
            ..Default::default()
        };
        cc.set_change_type(c.change_type());
        node.propose_conf_change(vec![], &cc)
    } else {
        let mut cc = ConfChangeV2 {
            changes,
            ..Default::default()
        };
        cc.set_transition(transition);
        node.propose_conf_change_v2(vec![], &cc)
    };
    r.map_err(|e| e.to_string())
}

fn msg_type_by_name(name: &str) -> Result<MessageType, String> {
    const LAST_TYPE: i32 = MessageType::MsgRequestPreVoteResponse as i32;
    (0..=LAST_TYPE)
        .filter_map(|i| MessageType::try_from(i).ok())
        .find(|t| msg_type_name(*t) == name)
        .ok_or_else(|| format!("unknown message type {name}"))
}

fn tick(env: &mut InteractionEnv, id: u64, n: usize) -> Result<(), String> {
    for _ in 0..n {
        env.node(id)?.raw.tick();
        env.flush_logs("");
    }
    Ok(())
}

fn compact(env: &mut InteractionEnv, id: u64, index: u64) -> Result<(), String> {
    let node = env.node(id)?;
    let applied = node.raw.raft.raft_log().applied;
    if index > applied {
        return Err(format!("cannot compact to {index}: only {applied} applied"));
    }
    // `MemStorage::compact(i)` keeps entries from `i` on: compacting
    // "through index" means starting at index + 1.
    let r = node.store.wl().compact(index + 1);
    r.map_err(|e| e.to_string())?;
    raft_log(env, id)
}

fn status(env: &mut InteractionEnv, id: u64) -> Result<(), String> {
    let node = env.node(id)?;
    let st = node.raw.status();
    let mut lines = vec![format!(
        "{id}: {} Lead:{} {} Applied:{}",
        role_name(st.ss.raft_state),
        st.ss.leader_id,
        describe_hard_state(&st.hs),
        st.applied
    )];
    if let Some(t) = node.raw.raft.lead_transferee() {
        lines.push(format!("LeadTransferee:{t}"));
    }
    if let Some(prs) = st.progress {
        lines.extend(
            prs.iter()
                .map(|(pid, pr)| format!("{pid}: {}", describe_progress(pr))),
        );
    }
    for l in lines {
        env.line("", l);
    }
    Ok(())
}

fn raft_log(env: &mut InteractionEnv, id: u64) -> Result<(), String> {
    let node = env.node(id)?;
    let core = node.store.rl();
    let ents = core.entries_ref().to_vec();
    let mut lines: Vec<String> = ents.iter().map(describe_entry).collect();
    drop(core);
    if lines.is_empty() {
        let s = &node.store;
        use flotilla_raftstore::raft::Storage as _;
        lines.push(format!(
            "log is empty: first index={}, last index={}",
            s.first_index().map_err(|e| e.to_string())?,
            s.last_index().map_err(|e| e.to_string())?
        ));
    }
    let unstable = node.raw.raft.raft_log().unstable.entries.clone();
    if !unstable.is_empty() {
        lines.push("Unstable:".to_string());
        lines.extend(unstable.iter().map(describe_entry));
    }
    for l in lines {
        env.line("", l);
    }
    Ok(())
}

fn raft_state(env: &mut InteractionEnv) {
    let lines: Vec<String> = env
        .nodes
        .iter()
        .map(|(id, n)| {
            let r = &n.raw.raft;
            let conf = r.prs().conf();
            let membership = if conf.voters.contains(*id) {
                "Voter"
            } else if conf.learners.contains(id) {
                "Learner"
            } else {
                "Non-member"
            };
            format!(
                "{id}: {} ({membership}) Term:{} Lead:{}",
                role_name(r.state()),
                r.term(),
                r.leader_id()
            )
        })
        .collect();
    for l in lines {
        env.line("", l);
    }
}
