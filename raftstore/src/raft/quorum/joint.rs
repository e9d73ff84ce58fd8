//! A joint configuration: decisions need a majority of both the incoming
//! and the outgoing voter sets.

use super::VoteResult;
use super::majority::MajorityConfig;

/// Two majority configurations; the outgoing one is empty unless the group
/// is in joint consensus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JointConfig {
    /// The configuration being moved to (the only one outside joint consensus).
    pub incoming: MajorityConfig,
    /// The configuration being left; empty outside joint consensus.
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    /// A non-joint configuration of `voters`.
    pub fn new(voters: Vec<u64>) -> Self {
        JointConfig {
            incoming: MajorityConfig::new(voters),
            outgoing: MajorityConfig::default(),
        }
    }

    /// True while in joint consensus.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether `id` is a voter of either half.
    pub fn contains(&self, id: u64) -> bool {
        self.incoming.contains(id) || self.outgoing.contains(id)
    }

    /// All voter ids of both halves, sorted and deduplicated.
    pub fn ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .incoming
            .ids()
            .iter()
            .chain(self.outgoing.ids())
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// True if the only voter is `id` (a single-voter group).
    pub fn is_singleton(&self, id: u64) -> bool {
        !self.is_joint() && self.incoming.ids() == [id]
    }

    /// The largest index acknowledged by a majority of both halves.
    pub fn committed_index(&self, acked: impl Fn(u64) -> Option<u64>) -> u64 {
        committed_index(&self.incoming, &self.outgoing, acked)
    }

    /// The election outcome across both halves.
    pub fn vote_result(&self, votes: impl Fn(u64) -> Option<bool>) -> VoteResult {
        vote_result(&self.incoming, &self.outgoing, votes)
    }
}

/// The committed index of a joint configuration: the minimum of both halves
/// (an empty half does not constrain).
pub fn committed_index(
    incoming: &MajorityConfig,
    outgoing: &MajorityConfig,
    acked: impl Fn(u64) -> Option<u64>,
) -> u64 {
    incoming
        .committed_index(&acked)
        .min(outgoing.committed_index(&acked))
}

/// The election outcome of a joint configuration: won only if both halves
/// won, lost if either lost.
pub fn vote_result(
    incoming: &MajorityConfig,
    outgoing: &MajorityConfig,
    votes: impl Fn(u64) -> Option<bool>,
) -> VoteResult {
    let a = incoming.vote_result(&votes);
    let b = outgoing.vote_result(&votes);
    match (a, b) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jc(inc: &[u64], out: &[u64]) -> JointConfig {
        JointConfig {
            incoming: MajorityConfig::new(inc.to_vec()),
            outgoing: MajorityConfig::new(out.to_vec()),
        }
    }

    /// checklist: conf-3 (joint commit is the minimum over both majorities)
    #[test]
    #[allow(clippy::type_complexity)] // table rows
    fn joint_committed_table() {
        let cases: &[(&[u64], &[u64], &[(u64, u64)], u64)] = &[
            (&[1, 2, 3], &[], &[(1, 5), (2, 5), (3, 1)], 5),
            (&[1, 2, 3], &[1, 2, 3], &[(1, 5), (2, 5), (3, 1)], 5),
            (&[1, 2, 3], &[4, 5, 6], &[(1, 5), (2, 5), (4, 3), (5, 2)], 2),
            (&[1, 2, 3], &[3, 4, 5], &[(1, 7), (2, 7), (3, 1)], 0),
            (&[1, 2, 3], &[3, 4, 5], &[(1, 7), (2, 7), (3, 1), (4, 6)], 1),
            (&[1, 2, 3], &[3, 4, 5], &[(1, 7), (2, 7), (3, 6), (4, 6)], 6),
            (&[], &[], &[], u64::MAX),
            (&[1], &[2], &[(1, 4), (2, 9)], 4),
        ];
        for (inc, out, pairs, want) in cases {
            let acked = |id| pairs.iter().find(|p| p.0 == id).map(|p| p.1);
            assert_eq!(
                jc(inc, out).committed_index(acked),
                *want,
                "{inc:?} {out:?}"
            );
        }
    }

    /// checklist: conf-3 (joint elections need both majorities)
    #[test]
    #[allow(clippy::type_complexity)] // table rows
    fn joint_vote_table() {
        use VoteResult::*;
        let cases: &[(&[u64], &[u64], &[(u64, bool)], VoteResult)] = &[
            (&[1, 2, 3], &[], &[(1, true), (2, true)], Won),
            (&[1, 2, 3], &[4, 5, 6], &[(1, true), (2, true)], Pending),
            (
                &[1, 2, 3],
                &[4, 5, 6],
                &[(1, true), (2, true), (4, true), (5, true)],
                Won,
            ),
            (
                &[1, 2, 3],
                &[4, 5, 6],
                &[(1, true), (2, true), (4, false), (5, false)],
                Lost,
            ),
            (&[1, 2, 3], &[3, 4, 5], &[(1, false), (2, false)], Lost),
            (
                &[1, 2, 3],
                &[3, 4, 5],
                &[(3, true), (4, true), (1, true)],
                Won,
            ),
        ];
        for (inc, out, pairs, want) in cases {
            let votes = |id| pairs.iter().find(|p| p.0 == id).map(|p| p.1);
            assert_eq!(
                jc(inc, out).vote_result(votes),
                *want,
                "{inc:?} {out:?} {pairs:?}"
            );
        }
    }

    /// checklist: conf-3 (joint membership helpers)
    #[test]
    fn joint_ids() {
        let c = jc(&[1, 2, 3], &[3, 4]);
        assert!(c.is_joint());
        assert_eq!(c.ids(), vec![1, 2, 3, 4]);
        assert!(c.contains(4));
        assert!(!c.is_singleton(1));
        assert!(jc(&[1], &[]).is_singleton(1));
    }
}
