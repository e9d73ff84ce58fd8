//! Applies membership changes to a configuration.

use flotilla_proto::eraftpb::{ConfChangeSingle, ConfChangeType};

use crate::raft::errors::{Error, Result};
use crate::raft::tracker::{Configuration, sorted_insert, sorted_remove};

/// Computes the next configuration from the current one. Pure: the caller
/// installs the result (see
/// [`ProgressTracker::apply_conf`](crate::raft::tracker::ProgressTracker::apply_conf)).
#[derive(Debug)]
pub struct Changer<'a> {
    conf: &'a Configuration,
}

fn err(msg: impl Into<String>) -> Error {
    Error::ConfChangeError(msg.into())
}

impl<'a> Changer<'a> {
    /// A changer starting from `conf`.
    pub fn new(conf: &'a Configuration) -> Self {
        Changer { conf }
    }

    /// Enters a joint configuration: the current voters become the outgoing
    /// half and `ccs` apply to the incoming half.
    ///
    /// # Errors
    ///
    /// If already joint, if there are no voters, or if a change is invalid.
    pub fn enter_joint(&self, auto_leave: bool, ccs: &[ConfChangeSingle]) -> Result<Configuration> {
        if self.conf.voters.is_joint() {
            return Err(err("configuration is already joint"));
        }
        if self.conf.voters.incoming.is_empty() {
            return Err(err("can't make a zero-voter configuration joint"));
        }
        let mut cfg = self.conf.clone();
        cfg.voters.outgoing = cfg.voters.incoming.clone();
        apply(&mut cfg, ccs)?;
        cfg.auto_leave = auto_leave;
        check(&cfg)?;
        Ok(cfg)
    }

    /// Leaves a joint configuration: the outgoing half is dropped and
    /// `learners_next` become learners.
    ///
    /// # Errors
    ///
    /// If not in a joint configuration.
    pub fn leave_joint(&self) -> Result<Configuration> {
        if !self.conf.voters.is_joint() {
            return Err(err("can't leave a non-joint configuration"));
        }
        let mut cfg = self.conf.clone();
        for id in std::mem::take(&mut cfg.learners_next) {
            sorted_insert(&mut cfg.learners, id);
        }
        cfg.voters.outgoing.clear();
        cfg.auto_leave = false;
        check(&cfg)?;
        Ok(cfg)
    }

    /// Applies changes that alter at most one voter, without joint consensus.
    ///
    /// # Errors
    ///
    /// If joint, if more than one voter would change, or a change is invalid.
    pub fn simple(&self, ccs: &[ConfChangeSingle]) -> Result<Configuration> {
        if self.conf.voters.is_joint() {
            return Err(err("can't apply a simple change in a joint configuration"));
        }
        let mut cfg = self.conf.clone();
        apply(&mut cfg, ccs)?;
        let old = self.conf.voters.incoming.ids();
        let new = cfg.voters.incoming.ids();
        let changed = old.iter().filter(|id| !new.contains(id)).count()
            + new.iter().filter(|id| !old.contains(id)).count();
        if changed > 1 {
            return Err(err(
                "more than one voter changed without entering joint config",
            ));
        }
        check(&cfg)?;
        Ok(cfg)
    }
}

fn apply(cfg: &mut Configuration, ccs: &[ConfChangeSingle]) -> Result<()> {
    for cc in ccs {
        if cc.node_id == 0 {
            continue;
        }
        match ConfChangeType::try_from(cc.change_type) {
            Ok(ConfChangeType::AddNode) => make_voter(cfg, cc.node_id),
            Ok(ConfChangeType::AddLearnerNode) => make_learner(cfg, cc.node_id),
            Ok(ConfChangeType::RemoveNode) => remove(cfg, cc.node_id),
            Err(_) => return Err(err(format!("unknown change type {}", cc.change_type))),
        }
    }
    if cfg.voters.incoming.is_empty() {
        return Err(err("removed all voters"));
    }
    Ok(())
}

fn make_voter(cfg: &mut Configuration, id: u64) {
    cfg.voters.incoming.insert(id);
    sorted_remove(&mut cfg.learners, id);
    sorted_remove(&mut cfg.learners_next, id);
}

fn make_learner(cfg: &mut Configuration, id: u64) {
    if cfg.learners.binary_search(&id).is_ok() {
        return;
    }
    cfg.voters.incoming.remove(id);
    sorted_remove(&mut cfg.learners_next, id);
    // A demoted voter that is still an outgoing voter can only become a
    // learner once the joint configuration is left.
    if cfg.voters.outgoing.contains(id) {
        sorted_insert(&mut cfg.learners_next, id);
    } else {
        sorted_insert(&mut cfg.learners, id);
    }
}

fn remove(cfg: &mut Configuration, id: u64) {
    cfg.voters.incoming.remove(id);
    sorted_remove(&mut cfg.learners, id);
    sorted_remove(&mut cfg.learners_next, id);
}

/// Checks the configuration invariants.
fn check(cfg: &Configuration) -> Result<()> {
    for id in &cfg.learners {
        if cfg.voters.contains(*id) {
            return Err(err(format!("{id} is both a learner and a voter")));
        }
    }
    for id in &cfg.learners_next {
        if !cfg.voters.outgoing.contains(*id) {
            return Err(err(format!(
                "{id} is in learners_next but not an outgoing voter"
            )));
        }
    }
    if !cfg.voters.is_joint() && (!cfg.learners_next.is_empty() || cfg.auto_leave) {
        return Err(err(
            "learners_next or auto_leave set outside a joint configuration",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::confchange::single;
    use crate::raft::quorum::joint::JointConfig;
    use ConfChangeType::*;

    fn cfg(voters: &[u64], learners: &[u64]) -> Configuration {
        Configuration {
            voters: JointConfig::new(voters.to_vec()),
            learners: learners.to_vec(),
            ..Default::default()
        }
    }

    /// checklist: conf-1
    #[test]
    fn simple_add_remove_promote() {
        let c = cfg(&[1], &[]);
        let c = Changer::new(&c).simple(&[single(AddNode, 2)]).unwrap();
        assert_eq!(c.voters.incoming.ids(), &[1, 2]);
        let c = Changer::new(&c)
            .simple(&[single(AddLearnerNode, 3)])
            .unwrap();
        assert_eq!(c.learners, vec![3]);
        let c = Changer::new(&c).simple(&[single(AddNode, 3)]).unwrap();
        assert_eq!(c.voters.incoming.ids(), &[1, 2, 3]);
        assert!(c.learners.is_empty());
        let c = Changer::new(&c).simple(&[single(RemoveNode, 2)]).unwrap();
        assert_eq!(c.voters.incoming.ids(), &[1, 3]);
    }

    /// checklist: conf-3 (simple changes may not touch two voters)
    #[test]
    fn simple_rejects_two_voters() {
        let c = cfg(&[1], &[]);
        assert!(
            Changer::new(&c)
                .simple(&[single(AddNode, 2), single(AddNode, 3)])
                .is_err()
        );
        assert!(
            Changer::new(&c).simple(&[single(RemoveNode, 1)]).is_err(),
            "no voters left"
        );
    }

    /// checklist: conf-3, conf-4
    #[test]
    fn enter_and_leave_joint() {
        let c = cfg(&[1, 2, 3], &[]);
        let j = Changer::new(&c)
            .enter_joint(true, &[single(AddNode, 4), single(RemoveNode, 1)])
            .unwrap();
        assert!(j.voters.is_joint());
        assert_eq!(j.voters.incoming.ids(), &[2, 3, 4]);
        assert_eq!(j.voters.outgoing.ids(), &[1, 2, 3]);
        assert!(j.auto_leave);
        assert!(
            Changer::new(&j).enter_joint(false, &[]).is_err(),
            "already joint"
        );
        assert!(Changer::new(&j).simple(&[single(AddNode, 5)]).is_err());
        let l = Changer::new(&j).leave_joint().unwrap();
        assert!(!l.voters.is_joint());
        assert_eq!(l.voters.incoming.ids(), &[2, 3, 4]);
        assert!(!l.auto_leave);
        assert!(Changer::new(&l).leave_joint().is_err());
    }

    /// checklist: conf-7 (a demoted outgoing voter waits in learners_next)
    #[test]
    fn demote_voter_in_joint() {
        let c = cfg(&[1, 2, 3], &[]);
        let j = Changer::new(&c)
            .enter_joint(false, &[single(AddLearnerNode, 3)])
            .unwrap();
        assert_eq!(j.learners_next, vec![3]);
        assert!(j.learners.is_empty());
        assert!(j.voters.contains(3), "still an outgoing voter");
        let l = Changer::new(&j).leave_joint().unwrap();
        assert_eq!(l.learners, vec![3]);
        assert!(l.learners_next.is_empty());
        assert!(!l.voters.contains(3));
    }
}
