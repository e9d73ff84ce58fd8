//! A simple majority configuration: a set of voter ids.

use super::VoteResult;

/// Voter sets up to this size are sorted on the stack when computing the
/// committed index (no allocation on the hot path).
const STACK_VOTERS: usize = 7;

/// A set of voters deciding by simple majority.
///
/// Invariant: `voters` is sorted and has no duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    voters: Vec<u64>,
}

impl MajorityConfig {
    /// A configuration with the given voters (sorted and deduplicated here).
    pub fn new(mut voters: Vec<u64>) -> Self {
        voters.sort_unstable();
        voters.dedup();
        MajorityConfig { voters }
    }

    /// The voters, sorted.
    pub fn ids(&self) -> &[u64] {
        &self.voters
    }

    /// Whether `id` is a voter.
    pub fn contains(&self, id: u64) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Number of voters.
    pub fn len(&self) -> usize {
        self.voters.len()
    }

    /// True if there are no voters.
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty()
    }

    /// Adds a voter.
    pub fn insert(&mut self, id: u64) {
        if let Err(pos) = self.voters.binary_search(&id) {
            self.voters.insert(pos, id);
        }
    }

    /// Removes a voter.
    pub fn remove(&mut self, id: u64) {
        if let Ok(pos) = self.voters.binary_search(&id) {
            self.voters.remove(pos);
        }
    }

    /// Removes every voter (and frees the buffer).
    pub fn clear(&mut self) {
        self.voters = Vec::new();
    }

    /// The number of votes that make a majority.
    pub fn quorum(&self) -> usize {
        quorum(self.voters.len())
    }

    /// The largest index acknowledged by a majority; see [`committed_index`].
    pub fn committed_index(&self, acked: impl Fn(u64) -> Option<u64>) -> u64 {
        committed_index(&self.voters, acked)
    }

    /// The election outcome; see [`vote_result`].
    pub fn vote_result(&self, votes: impl Fn(u64) -> Option<bool>) -> VoteResult {
        vote_result(&self.voters, votes)
    }
}

/// The size of a majority of `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The largest index that a majority of `voters` has acknowledged, given
/// each voter's acknowledged index (`None`: nothing acknowledged, counted as
/// 0). An empty configuration returns `u64::MAX` so that it never constrains
/// a joint configuration.
pub fn committed_index(voters: &[u64], acked: impl Fn(u64) -> Option<u64>) -> u64 {
    let n = voters.len();
    if n == 0 {
        return u64::MAX;
    }
    let pick = |srt: &mut [u64]| {
        srt.sort_unstable();
        // The `quorum`-th largest value: a majority has at least this much.
        srt[n - quorum(n)]
    };
    if n <= STACK_VOTERS {
        let mut buf = [0u64; STACK_VOTERS];
        for (slot, id) in buf.iter_mut().zip(voters) {
            *slot = acked(*id).unwrap_or(0);
        }
        pick(&mut buf[..n])
    } else {
        let mut v: Vec<u64> = voters.iter().map(|id| acked(*id).unwrap_or(0)).collect();
        pick(&mut v)
    }
}

/// The election outcome among `voters` given each voter's vote (`None`: not
/// yet voted). An empty configuration wins (so it never blocks a joint one).
pub fn vote_result(voters: &[u64], votes: impl Fn(u64) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for id in voters {
        match votes(*id) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let q = quorum(voters.len());
    if yes >= q {
        VoteResult::Won
    } else if yes + missing >= q {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(pairs: &[(u64, u64)]) -> impl Fn(u64) -> Option<u64> + '_ {
        move |id| pairs.iter().find(|p| p.0 == id).map(|p| p.1)
    }

    /// checklist: log-2 (committed index is the majority-acknowledged index)
    #[test]
    #[allow(clippy::type_complexity)] // table rows
    fn committed_index_table() {
        let cases: &[(&[u64], &[(u64, u64)], u64)] = &[
            (&[], &[], u64::MAX),
            (&[1], &[], 0),
            (&[1], &[(1, 5)], 5),
            (&[1, 2], &[(1, 5)], 0),
            (&[1, 2], &[(1, 5), (2, 4)], 4),
            (&[1, 2, 3], &[(1, 5)], 0),
            (&[1, 2, 3], &[(1, 5), (2, 4)], 4),
            (&[1, 2, 3], &[(1, 5), (2, 4), (3, 9)], 5),
            (&[1, 2, 3, 4], &[(1, 5), (2, 4), (3, 9)], 4),
            (
                &[1, 2, 3, 4, 5],
                &[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)],
                3,
            ),
            (
                &[1, 2, 3, 4, 5, 6, 7, 8, 9],
                &[(1, 9), (2, 8), (3, 7), (4, 6), (5, 5), (6, 4)],
                5,
            ),
        ];
        for (voters, pairs, want) in cases {
            assert_eq!(
                committed_index(voters, acked(pairs)),
                *want,
                "voters {voters:?} acked {pairs:?}"
            );
        }
    }

    /// checklist: election-2, election-5 (vote counting)
    #[test]
    #[allow(clippy::type_complexity)] // table rows
    fn vote_result_table() {
        use VoteResult::*;
        let cases: &[(&[u64], &[(u64, bool)], VoteResult)] = &[
            (&[], &[], Won),
            (&[1], &[], Pending),
            (&[1], &[(1, true)], Won),
            (&[1], &[(1, false)], Lost),
            (&[1, 2], &[(1, true)], Pending),
            (&[1, 2], &[(1, true), (2, false)], Lost),
            (&[1, 2, 3], &[(1, true), (2, true)], Won),
            (&[1, 2, 3], &[(1, true), (2, false)], Pending),
            (&[1, 2, 3], &[(1, false), (2, false)], Lost),
            (&[1, 2, 3, 4], &[(1, true), (2, true)], Pending),
            (
                &[1, 2, 3, 4],
                &[(1, true), (2, true), (3, false), (4, false)],
                Lost,
            ),
        ];
        for (voters, pairs, want) in cases {
            let votes = |id| pairs.iter().find(|p| p.0 == id).map(|p| p.1);
            assert_eq!(vote_result(voters, votes), *want, "{voters:?} {pairs:?}");
        }
    }

    /// checklist: conf-1 (voter set stays sorted and deduplicated)
    #[test]
    fn config_set_ops() {
        let mut c = MajorityConfig::new(vec![3, 1, 3, 2]);
        assert_eq!(c.ids(), &[1, 2, 3]);
        c.insert(0);
        c.insert(2);
        assert_eq!(c.ids(), &[0, 1, 2, 3]);
        c.remove(1);
        assert!(!c.contains(1));
        assert_eq!(c.quorum(), 2);
        c.clear();
        assert!(c.is_empty());
    }
}
