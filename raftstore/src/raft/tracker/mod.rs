//! The leader's bookkeeping: one [`Progress`] per peer, the current
//! [`Configuration`], and the votes of an election.

mod inflights;
mod progress;
mod state;

pub use inflights::{IDLE_CHECKS_BEFORE_FREE, INITIAL_INFLIGHT_SLOTS, Inflights};
pub use progress::Progress;
pub use state::ProgressState;

use flotilla_proto::eraftpb::ConfState;

use super::quorum::VoteResult;
use super::quorum::joint::JointConfig;

/// A group's membership.
///
/// Invariants: `learners` and `learners_next` are sorted and deduplicated;
/// no learner is a voter of either half; `learners_next` is non-empty only
/// in joint consensus and its members are outgoing voters that become
/// learners when the joint configuration is left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configuration {
    /// The voters (both halves in joint consensus).
    pub voters: JointConfig,
    /// Learners: receive the log, never vote.
    pub learners: Vec<u64>,
    /// Outgoing voters that turn into learners when leaving joint consensus.
    pub learners_next: Vec<u64>,
    /// Leave joint consensus automatically once the joint entry is applied.
    pub auto_leave: bool,
}

impl Configuration {
    /// The conf state describing this configuration.
    pub fn to_conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.incoming.ids().to_vec(),
            voters_outgoing: self.voters.outgoing.ids().to_vec(),
            learners: self.learners.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
        }
    }
}

/// Up to this many peers, [`ProgressTracker`] finds a peer by linear scan.
const LINEAR_SCAN_MAX: usize = 8;

/// Inserts `id` into a sorted, deduplicated vector.
pub(crate) fn sorted_insert(v: &mut Vec<u64>, id: u64) {
    if let Err(pos) = v.binary_search(&id) {
        v.insert(pos, id);
    }
}

/// Removes `id` from a sorted vector.
pub(crate) fn sorted_remove(v: &mut Vec<u64>, id: u64) {
    if let Ok(pos) = v.binary_search(&id) {
        v.remove(pos);
    }
    if v.is_empty() {
        *v = Vec::new();
    }
}

/// Progress of every peer plus the membership and election votes.
///
/// Invariant: `progress` is sorted by id and holds exactly the voters and
/// learners of `conf`.
#[derive(Debug, Clone)]
pub struct ProgressTracker {
    progress: Vec<(u64, Progress)>,
    conf: Configuration,
    /// Votes of the current election, sorted by id; empty (no heap) outside
    /// elections.
    votes: Vec<(u64, bool)>,
    max_inflight: usize,
}

impl ProgressTracker {
    /// An empty tracker whose inflight windows will hold `max_inflight`.
    pub fn new(max_inflight: usize) -> Self {
        ProgressTracker {
            progress: Vec::new(),
            conf: Configuration::default(),
            votes: Vec::new(),
            max_inflight,
        }
    }

    /// The membership.
    pub fn conf(&self) -> &Configuration {
        &self.conf
    }

    /// The membership as a conf state.
    pub fn conf_state(&self) -> ConfState {
        self.conf.to_conf_state()
    }

    /// The progress of `id`.
    #[inline]
    pub fn get(&self, id: u64) -> Option<&Progress> {
        self.position(id).map(|i| &self.progress[i].1)
    }

    /// The progress of `id`, mutably.
    #[inline]
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Progress> {
        self.position(id).map(|i| &mut self.progress[i].1)
    }

    /// Where `id` sits in `progress`. Groups are small (3 to 7 peers) and
    /// this runs several times per message: a linear scan over so few ids
    /// beats a binary search's unpredictable branches.
    #[inline]
    fn position(&self, id: u64) -> Option<usize> {
        if self.progress.len() <= LINEAR_SCAN_MAX {
            self.progress.iter().position(|p| p.0 == id)
        } else {
            self.progress.binary_search_by_key(&id, |p| p.0).ok()
        }
    }

    /// Every peer's progress, by id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Progress)> {
        self.progress.iter().map(|(id, p)| (*id, p))
    }

    /// Every peer's progress, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut Progress)> {
        self.progress.iter_mut().map(|(id, p)| (*id, p))
    }

    /// The id of the `i`-th peer in id order (voters and learners), if
    /// there are more than `i` peers. Lets a caller walk the peers while
    /// mutating the tracker, without collecting their ids.
    #[inline]
    pub fn id_at(&self, i: usize) -> Option<u64> {
        self.progress.get(i).map(|p| p.0)
    }

    /// Ids of every peer (voters and learners), sorted.
    pub fn ids(&self) -> Vec<u64> {
        self.progress.iter().map(|p| p.0).collect()
    }

    /// Whether `id` is a voter (of either half).
    pub fn is_voter(&self, id: u64) -> bool {
        self.conf.voters.contains(id)
    }

    /// True if `id` is the only voter.
    pub fn is_singleton(&self, id: u64) -> bool {
        self.conf.voters.is_singleton(id)
    }

    /// Replaces the membership, keeping the progress of remaining peers and
    /// creating a fresh one (next index `next_idx`) for new peers.
    pub fn apply_conf(&mut self, conf: Configuration, next_idx: u64) {
        let mut ids: Vec<u64> = conf.voters.ids();
        ids.extend_from_slice(&conf.learners);
        ids.extend_from_slice(&conf.learners_next);
        ids.sort_unstable();
        ids.dedup();
        let mut old = std::mem::take(&mut self.progress);
        let mut progress = Vec::with_capacity(ids.len());
        for id in ids {
            let pr = match old.binary_search_by_key(&id, |p| p.0) {
                Ok(i) => old.swap_remove(i).1,
                Err(_) => {
                    let mut p = Progress::new(next_idx, self.max_inflight);
                    // A new peer counts as active so check-quorum does not
                    // step down right after adding it.
                    p.recent_active = true;
                    p
                }
            };
            old.sort_unstable_by_key(|p| p.0);
            progress.push((id, pr));
        }
        for (id, pr) in progress.iter_mut() {
            pr.is_learner = !conf.voters.contains(*id);
        }
        self.progress = progress;
        self.conf = conf;
    }

    /// The largest index replicated on a quorum (both halves when joint).
    #[inline]
    pub fn committed(&self) -> u64 {
        self.conf
            .voters
            .committed_index(|id| self.get(id).map(|p| p.matched))
    }

    /// Forgets the votes (and frees their buffer).
    pub fn reset_votes(&mut self) {
        self.votes = Vec::new();
    }

    /// Records `id`'s vote unless it already voted.
    pub fn record_vote(&mut self, id: u64, granted: bool) {
        if let Err(pos) = self.votes.binary_search_by_key(&id, |v| v.0) {
            self.votes.insert(pos, (id, granted));
        }
    }

    /// Counts the votes: (granted, rejected, outcome). Only voters count.
    pub fn tally_votes(&self) -> (usize, usize, VoteResult) {
        let (mut granted, mut rejected) = (0, 0);
        for &(id, g) in &self.votes {
            if !self.is_voter(id) {
                continue;
            }
            if g {
                granted += 1;
            } else {
                rejected += 1;
            }
        }
        let vote_of = |id| {
            self.votes
                .binary_search_by_key(&id, |v| v.0)
                .ok()
                .map(|i| self.votes[i].1)
        };
        (granted, rejected, self.conf.voters.vote_result(vote_of))
    }

    /// True if a quorum of voters was recently active (`self_id` always
    /// counts); resets every peer's `recent_active` except `self_id`'s.
    pub fn quorum_recently_active(&mut self, self_id: u64) -> bool {
        let mut active: Vec<u64> = Vec::with_capacity(self.progress.len());
        for (id, pr) in self.progress.iter_mut() {
            if *id == self_id {
                pr.recent_active = true;
                active.push(*id);
                continue;
            }
            if pr.recent_active && !pr.is_learner {
                active.push(*id);
            }
            pr.recent_active = false;
        }
        let res = self
            .conf
            .voters
            .vote_result(|id| Some(active.binary_search(&id).is_ok()));
        res == VoteResult::Won
    }

    /// True if the voters in `ids` form a quorum.
    pub fn has_quorum(&self, ids: &[u64]) -> bool {
        self.conf.voters.vote_result(|id| Some(ids.contains(&id))) == VoteResult::Won
    }

    /// Heap bytes held by the tracker (progress vector, inflight buffers,
    /// membership vectors, votes).
    pub fn heap_bytes(&self) -> usize {
        let inflights: usize = self.progress.iter().map(|p| p.1.ins.heap_bytes()).sum();
        self.progress.capacity() * std::mem::size_of::<(u64, Progress)>()
            + inflights
            + self.inflight_free_heap()
    }

    fn inflight_free_heap(&self) -> usize {
        let w = std::mem::size_of::<u64>();
        (self.conf.voters.incoming.ids().len()
            + self.conf.voters.outgoing.ids().len()
            + self.conf.learners.capacity()
            + self.conf.learners_next.capacity())
            * w
            + self.votes.capacity() * std::mem::size_of::<(u64, bool)>()
    }

    /// Heap bytes held by the inflight windows.
    pub fn inflight_heap_bytes(&self) -> usize {
        self.progress.iter().map(|p| p.1.ins.heap_bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(voters: &[u64], learners: &[u64]) -> ProgressTracker {
        let mut t = ProgressTracker::new(16);
        t.apply_conf(
            Configuration {
                voters: JointConfig::new(voters.to_vec()),
                learners: learners.to_vec(),
                ..Default::default()
            },
            1,
        );
        t
    }

    /// checklist: conf-1 (progress exists for exactly the members; learners flagged)
    #[test]
    fn apply_conf_keeps_and_creates_progress() {
        let mut t = tracker(&[1, 2, 3], &[4]);
        assert_eq!(t.ids(), vec![1, 2, 3, 4]);
        assert!(t.get(4).unwrap().is_learner);
        t.get_mut(2).unwrap().matched = 7;
        t.apply_conf(
            Configuration {
                voters: JointConfig::new(vec![1, 2, 4]),
                ..Default::default()
            },
            9,
        );
        assert_eq!(t.ids(), vec![1, 2, 4]);
        assert_eq!(t.get(2).unwrap().matched, 7, "kept");
        assert!(!t.get(4).unwrap().is_learner, "promoted");
        assert!(t.get(3).is_none());
    }

    /// checklist: election-10 (learner votes never count)
    #[test]
    fn tally_ignores_learners() {
        let mut t = tracker(&[1, 2, 3], &[4, 5]);
        t.record_vote(1, true);
        t.record_vote(4, true);
        t.record_vote(5, true);
        assert_eq!(t.tally_votes(), (1, 0, VoteResult::Pending));
        t.record_vote(2, true);
        t.record_vote(2, false);
        assert_eq!(
            t.tally_votes(),
            (2, 0, VoteResult::Won),
            "first vote sticks"
        );
        t.reset_votes();
        assert_eq!(t.tally_votes().2, VoteResult::Pending);
    }

    /// checklist: quorum-3 (only voters count toward recent activity)
    #[test]
    fn quorum_recently_active_only_voters() {
        let mut t = tracker(&[1, 2, 3], &[4, 5]);
        for id in [4, 5] {
            t.get_mut(id).unwrap().recent_active = true;
        }
        t.get_mut(2).unwrap().recent_active = false;
        t.get_mut(3).unwrap().recent_active = false;
        assert!(!t.quorum_recently_active(1));
        t.get_mut(2).unwrap().recent_active = true;
        assert!(t.quorum_recently_active(1));
        assert!(!t.get(2).unwrap().recent_active, "reset after the check");
    }

    /// checklist: log-2 (committed from voters' match only)
    #[test]
    fn committed_ignores_learners() {
        let mut t = tracker(&[1, 2, 3], &[4]);
        t.get_mut(1).unwrap().matched = 5;
        t.get_mut(4).unwrap().matched = 5;
        assert_eq!(t.committed(), 0);
        t.get_mut(2).unwrap().matched = 3;
        assert_eq!(t.committed(), 3);
    }
}
