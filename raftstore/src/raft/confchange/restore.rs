//! Rebuilds a configuration from a persisted conf state.

use flotilla_proto::eraftpb::ConfState;

use crate::raft::errors::{Error, Result};
use crate::raft::quorum::majority::MajorityConfig;
use crate::raft::tracker::Configuration;

/// The configuration a conf state describes.
///
/// # Errors
///
/// If the conf state violates the configuration invariants (a learner that
/// is also a voter, `learners_next` outside a joint configuration or not an
/// outgoing voter).
pub fn restore(cs: &ConfState) -> Result<Configuration> {
    let mut learners = cs.learners.clone();
    learners.sort_unstable();
    learners.dedup();
    let mut learners_next = cs.learners_next.clone();
    learners_next.sort_unstable();
    learners_next.dedup();
    let mut cfg = Configuration {
        learners,
        learners_next,
        auto_leave: cs.auto_leave,
        ..Default::default()
    };
    cfg.voters.incoming = MajorityConfig::new(cs.voters.clone());
    cfg.voters.outgoing = MajorityConfig::new(cs.voters_outgoing.clone());
    let bad = |m: String| Err(Error::ConfChangeError(m));
    for id in &cfg.learners {
        if cfg.voters.contains(*id) {
            return bad(format!("{id} is both a learner and a voter"));
        }
    }
    for id in &cfg.learners_next {
        if !cfg.voters.outgoing.contains(*id) || cfg.voters.incoming.contains(*id) {
            return bad(format!(
                "{id} in learners_next is not only an outgoing voter"
            ));
        }
    }
    if !cfg.voters.is_joint() && (cfg.auto_leave || !cfg.learners_next.is_empty()) {
        return bad("auto_leave or learners_next set outside a joint config".into());
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// checklist: conf-8 (restore round-trips a joint conf state)
    #[test]
    fn restore_round_trip() {
        let cs = ConfState {
            voters: vec![3, 1, 2],
            voters_outgoing: vec![1, 2, 4],
            learners: vec![5],
            learners_next: vec![4],
            auto_leave: true,
        };
        let cfg = restore(&cs).unwrap();
        let back = cfg.to_conf_state();
        assert_eq!(back.voters, vec![1, 2, 3]);
        assert_eq!(back.voters_outgoing, vec![1, 2, 4]);
        assert_eq!(back.learners, vec![5]);
        assert_eq!(back.learners_next, vec![4]);
        assert!(back.auto_leave);
    }

    /// checklist: conf-8 (invalid conf states are rejected)
    #[test]
    fn restore_rejects_invalid() {
        let both = ConfState {
            voters: vec![1],
            learners: vec![1],
            ..Default::default()
        };
        assert!(restore(&both).is_err());
        let next_outside_joint = ConfState {
            voters: vec![1],
            learners_next: vec![2],
            ..Default::default()
        };
        assert!(restore(&next_outside_joint).is_err());
    }
}
