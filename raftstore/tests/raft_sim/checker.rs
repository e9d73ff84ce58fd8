//! The safety properties, checked incrementally after every step:
//! election safety, log matching, leader completeness, state-machine
//! safety, and monotonic commit (in memory and persisted).

use std::collections::BTreeMap;
use std::fmt;

use flotilla_proto::eraftpb::{ConfState, Entry};
use flotilla_raftstore::raft::{Error, RawNode, StateRole, StorageError};

use super::storage::SimStorage;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a over `bytes` continuing from `h` (deterministic across runs).
pub fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Combines two hashes.
pub fn mix(a: u64, b: u64) -> u64 {
    fnv(fnv(FNV_OFFSET, &a.to_le_bytes()), &b.to_le_bytes())
}

/// Hash of an entry's content (type, data, context; not index or term).
pub fn entry_hash(e: &Entry) -> u64 {
    let h = fnv(FNV_OFFSET, &e.entry_type.to_le_bytes());
    let h = fnv(h, &e.data);
    fnv(fnv(h, b"/"), &e.context)
}

/// Hash of a conf state (the result of applying a conf change).
pub fn conf_state_hash(cs: &ConfState) -> u64 {
    let mut h = FNV_OFFSET;
    for part in [
        &cs.voters,
        &cs.voters_outgoing,
        &cs.learners,
        &cs.learners_next,
    ] {
        for id in part {
            h = fnv(h, &id.to_le_bytes());
        }
        h = fnv(h, b"|");
    }
    fnv(h, &[u8::from(cs.auto_leave)])
}

/// A violated property: its name and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The property (e.g. "log-matching").
    pub property: &'static str,
    /// What was observed.
    pub details: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.property, self.details)
    }
}

/// Result of a check.
pub type Check = Result<(), Violation>;

/// What every node applied at one index (must be the same everywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AppliedAt {
    term: u64,
    /// Entry content hash, combined with the conf-change outcome.
    hash: u64,
    /// State-machine digest after applying it.
    digest: u64,
}

/// Per-node watermarks.
#[derive(Debug, Clone, Copy, Default)]
struct NodeObs {
    /// Commit index of the live incarnation (reset on restart).
    live_commit: u64,
    /// Highest persisted commit index seen.
    persisted_commit: u64,
}

/// A view of one node for the per-step check.
pub struct NodeView<'a> {
    /// Node id.
    pub id: u64,
    /// The durable state.
    pub store: &'a SimStorage,
    /// The running node, if not crashed.
    pub raw: Option<&'a RawNode<SimStorage>>,
}

/// Everything observed so far, and the checks.
#[derive(Debug, Default)]
pub struct Checker {
    /// term -> the only node ever seen leading it.
    leaders: BTreeMap<u64, u64>,
    /// (index, term) -> (term of the previous entry, content hash): the log
    /// matching property, checked entry by entry as logs grow.
    chain: BTreeMap<(u64, u64), (u64, u64)>,
    /// index -> term of the entry known committed there.
    committed: BTreeMap<u64, u64>,
    /// term -> highest commit index observed on a node in that term: an
    /// entry at or below it was committed in a term <= that term.
    commit_by_term: BTreeMap<u64, u64>,
    /// index -> what was applied there.
    applied: BTreeMap<u64, AppliedAt>,
    obs: BTreeMap<u64, NodeObs>,
}

impl Checker {
    /// Number of distinct terms that had a leader.
    pub fn leader_terms(&self) -> usize {
        self.leaders.len()
    }

    /// Highest index applied anywhere.
    pub fn max_applied(&self) -> u64 {
        self.applied.keys().next_back().copied().unwrap_or(0)
    }

    /// Records the bootstrap state every initial member starts from.
    pub fn bootstrap(&mut self, index: u64, term: u64, digest: u64) {
        self.applied.insert(
            index,
            AppliedAt {
                term,
                hash: 0,
                digest,
            },
        );
        self.committed.insert(index, term);
    }

    /// Log matching, incrementally: `ents` were just appended to `id`'s log
    /// after an entry of term `prev_term` (None: unknown, compacted).
    pub fn on_append(&mut self, id: u64, prev_term: Option<u64>, ents: &[Entry]) -> Check {
        let mut prev = prev_term;
        for e in ents {
            let h = entry_hash(e);
            match self.chain.get(&(e.index, e.term)) {
                Some(&(pt, ch)) => {
                    if ch != h {
                        violation!(
                            "log-matching",
                            "n{id}: entry {}/{} differs from another log's entry with the same index and term",
                            e.index,
                            e.term
                        );
                    }
                    if prev.is_some_and(|p| p != pt) {
                        violation!(
                            "log-matching",
                            "n{id}: entry {}/{} follows term {prev:?} here but term {pt} elsewhere",
                            e.index,
                            e.term
                        );
                    }
                }
                None => {
                    if let Some(p) = prev {
                        if p > e.term {
                            violation!(
                                "log-terms",
                                "n{id}: entry {}/{} follows a higher term {p}",
                                e.index,
                                e.term
                            );
                        }
                        self.chain.insert((e.index, e.term), (p, h));
                    }
                }
            }
            prev = Some(e.term);
        }
        Ok(())
    }

    /// State-machine safety: node `id` applied entry (`index`, `term`) whose
    /// content/outcome hash is `hash`, reaching state `digest`.
    pub fn on_apply(&mut self, id: u64, index: u64, term: u64, hash: u64, digest: u64) -> Check {
        let now = AppliedAt { term, hash, digest };
        match self.applied.get(&index) {
            Some(prev) if *prev != now => violation!(
                "state-machine-safety",
                "n{id} applied {now:?} at index {index}, another node applied {prev:?}"
            ),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(index, now);
                Ok(())
            }
        }
    }

    /// A snapshot at (`index`, `term`) with state digest `digest` was made
    /// durable on `id`: it must be a state some node applied.
    pub fn on_snapshot(&mut self, id: u64, index: u64, term: u64, digest: u64) -> Check {
        match self.applied.get(&index) {
            Some(a) if a.term == term && a.digest == digest => Ok(()),
            other => violation!(
                "snapshot-state",
                "n{id} installed snapshot {index}/{term} digest {digest:#x}; applied there: {other:?}"
            ),
        }
    }

    /// A node restarted with commit `commit`.
    pub fn on_restart(&mut self, id: u64, commit: u64) {
        self.obs.entry(id).or_default().live_commit = commit;
    }

    fn record_committed(&mut self, id: u64, index: u64, term: u64) -> Check {
        match self.committed.get(&index) {
            Some(&t) if t != term => violation!(
                "committed-entry-differs",
                "n{id} committed {index}/{term}, another node committed {index}/{t}"
            ),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(index, term);
                Ok(())
            }
        }
    }

    /// The per-step check over every node.
    pub fn check_step(&mut self, nodes: &[NodeView<'_>]) -> Check {
        for n in nodes {
            self.check_node(n)?;
        }
        for n in nodes {
            if let Some(raw) = n.raw
                && raw.raft.state() == StateRole::Leader
            {
                self.check_leader(n.id, raw)?;
            }
        }
        Ok(())
    }

    fn check_node(&mut self, n: &NodeView<'_>) -> Check {
        let id = n.id;
        let (_, _, pcommit) = n.store.hard_state();
        let app = n.store.app();
        let obs = *self.obs.entry(id).or_default();
        if pcommit < obs.persisted_commit {
            violation!(
                "persisted-commit-monotonic",
                "n{id}: persisted commit went from {} to {pcommit}",
                obs.persisted_commit
            );
        }
        if app.applied > pcommit {
            violation!(
                "applied-within-persisted-commit",
                "n{id}: persisted applied {} beyond persisted commit {pcommit}",
                app.applied
            );
        }
        let mut live_commit = obs.live_commit;
        if let Some(raw) = n.raw {
            let log = raw.raft.raft_log();
            let committed = log.committed;
            if committed < obs.live_commit {
                violation!(
                    "commit-monotonic",
                    "n{id}: commit went from {} to {committed}",
                    obs.live_commit
                );
            }
            for i in obs.live_commit + 1..=committed {
                match log.term(i) {
                    Ok(t) if t > 0 => self.record_committed(id, i, t)?,
                    Ok(_) => violation!(
                        "commit-within-log",
                        "n{id}: commit {committed} beyond last index {}",
                        log.last_index()
                    ),
                    Err(_) => {}
                }
            }
            live_commit = committed;
            let term = raw.raft.term();
            let best = self.commit_by_term.entry(term).or_default();
            *best = (*best).max(committed);
        }
        self.obs.insert(
            id,
            NodeObs {
                live_commit,
                persisted_commit: pcommit,
            },
        );
        Ok(())
    }

    /// Election safety and leader completeness for leader `id`.
    fn check_leader(&mut self, id: u64, raw: &RawNode<SimStorage>) -> Check {
        let term = raw.raft.term();
        match self.leaders.get(&term) {
            Some(&other) if other != id => {
                violation!("election-safety", "n{id} and n{other} both led term {term}")
            }
            Some(_) => {}
            None => {
                self.leaders.insert(term, id);
            }
        }
        // Every entry committed in a term <= this one must be in our log;
        // by log matching it is enough to look at the highest one.
        let Some(bound) = self.commit_by_term.range(..=term).map(|(_, c)| *c).max() else {
            return Ok(());
        };
        let Some((&index, &cterm)) = self.committed.range(..=bound).next_back() else {
            return Ok(());
        };
        let log = raw.raft.raft_log();
        match log.term(index) {
            Ok(t) if t == cterm => Ok(()),
            Err(Error::Store(StorageError::Compacted)) if index <= log.applied => Ok(()),
            other => violation!(
                "leader-completeness",
                "n{id} leads term {term} but has {other:?} at {index}, where {index}/{cterm} was committed (by term {term} at the latest)"
            ),
        }
    }

    /// The whole-log check: every entry of every live log is in the chain
    /// (same content, same predecessor) and agrees with the committed map.
    pub fn full_check(&mut self, nodes: &[NodeView<'_>]) -> Check {
        for n in nodes {
            let Some(raw) = n.raw else { continue };
            let log = raw.raft.raft_log();
            let first = log.first_index();
            let ents = match log.slice(first, log.last_index() + 1, None) {
                Ok(e) => e,
                Err(e) => violation!("log-readable", "n{}: cannot read its log: {e:?}", n.id),
            };
            let mut prev = log.term(first - 1).ok();
            for e in &ents {
                match self.chain.get(&(e.index, e.term)) {
                    Some(&(pt, h)) if h == entry_hash(e) && prev.is_none_or(|p| p == pt) => {}
                    other => violation!(
                        "log-matching",
                        "n{}: entry {}/{} after term {prev:?} does not match {other:?}",
                        n.id,
                        e.index,
                        e.term
                    ),
                }
                if e.index <= log.committed
                    && let Some(&t) = self.committed.get(&e.index)
                    && t != e.term
                {
                    violation!(
                        "committed-entry-differs",
                        "n{}: committed {}/{} but {}/{t} was committed elsewhere",
                        n.id,
                        e.index,
                        e.term,
                        e.index
                    );
                }
                prev = Some(e.term);
            }
        }
        Ok(())
    }
}
