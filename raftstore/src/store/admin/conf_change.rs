//! ChangePeer and ChangePeerV2 on both sides: the membership a change
//! leads to, checked alike on every replica at apply ([`change_region`]),
//! and the leader's checks before it proposes one ([`check_change_peers`]),
//! the quorum's hold on the log among them ([`check_new_quorum`]).

use flotilla_proto::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2,
};
use flotilla_proto::metapb::{Peer, PeerRole, Region, RegionEpoch};
use flotilla_proto::raft_cmdpb::ChangePeerRequest;

use super::error::AdminError;
use crate::raft::quorum::joint;
use crate::raft::quorum::majority::MajorityConfig;
use crate::store::error::{Error, Result};
use crate::store::peer_storage::conf_state_from_region;

/// A learner is promoted only once it has matched up to this many entries
/// below the leader's last index (it then counts toward the quorum
/// holding the data, not catching up by a snapshot).
pub const PROMOTE_MAX_LAG: u64 = 128;

/// The most peers one ChangePeerV2 may change: a joint change replacing
/// every voter of a large region takes a few dozen; more is a malformed
/// request (and each replica checks every change at apply).
pub const MAX_CHANGES: usize = 32;

/// What the leader knows when it checks a change.
#[derive(Debug, Clone, Copy)]
pub struct LeaderView {
    /// The leader's peer id.
    pub leader_id: u64,
    /// The leader's applied index.
    pub applied_index: u64,
    /// The index up to which a conf change may be pending.
    pub pending_conf_index: u64,
    /// The leader's last log index.
    pub last_index: u64,
    /// The leader's truncated index (its first log index minus one): a
    /// peer that matched less needs a snapshot to catch up.
    pub truncated_index: u64,
}

/// The peer a change names, checked for shape.
///
/// # Errors
/// [`Error::InvalidRequest`] for a change type this version does not know
/// (prost's getter would read it as `AddNode`, while raft refuses it, so
/// the region and raft would disagree on the membership), without a
/// peer, or with a zero id or store.
pub fn change_peer_of(req: &ChangePeerRequest) -> Result<Peer> {
    if ConfChangeType::try_from(req.change_type).is_err() {
        return Err(Error::InvalidRequest(format!(
            "unknown conf change type {}",
            req.change_type
        )));
    }
    let peer = req
        .peer
        .ok_or_else(|| Error::InvalidRequest("change_peer without a peer".into()))?;
    if peer.id == 0 || peer.store_id == 0 {
        return Err(Error::InvalidRequest(
            "change_peer needs a peer id and a store id".into(),
        ));
    }
    Ok(peer)
}

/// The region after `req`, with `conf_ver` bumped: a voter added or a
/// learner promoted (AddNode), a learner added (AddLearnerNode), a peer
/// removed (RemoveNode). Every replica decides alike.
///
/// # Errors
/// [`AdminError::PeerAlreadyPresent`] for a peer id or store the region
/// has already (a voter asked to become one again included);
/// [`AdminError::ConfChangePeerNotFound`] for removing or promoting a peer
/// it does not have; [`AdminError::ConfChangeRemovesLastVoter`];
/// [`Error::InvalidRequest`] for a malformed request.
pub fn change_region(req: &ChangePeerRequest, region: &Region) -> Result<Region> {
    let peer = change_peer_of(req)?;
    let same_id = region.peers.iter().position(|p| p.id == peer.id);
    let same_store = region.peers.iter().find(|p| p.store_id == peer.store_id);
    let present = |p: &Peer| {
        Error::Admin(AdminError::PeerAlreadyPresent {
            peer_id: p.id,
            store_id: p.store_id,
        })
    };
    let not_found = || {
        Error::Admin(AdminError::ConfChangePeerNotFound {
            peer_id: peer.id,
            store_id: peer.store_id,
        })
    };
    let mut next = region.clone();
    match req.change_type() {
        ConfChangeType::AddNode => match same_id.map(|i| &region.peers[i]) {
            Some(p) if p.store_id != peer.store_id => return Err(not_found()),
            Some(p) if p.role() == PeerRole::Learner => {
                if let Some(i) = same_id {
                    next.peers[i].set_role(PeerRole::Voter);
                }
            }
            Some(p) => return Err(present(p)),
            None => {
                if let Some(p) = same_store {
                    return Err(present(p));
                }
                let mut voter = peer;
                voter.set_role(PeerRole::Voter);
                next.peers.push(voter);
            }
        },
        ConfChangeType::AddLearnerNode => {
            if let Some(p) = same_id.map(|i| &region.peers[i]).or(same_store) {
                return Err(present(p));
            }
            let mut learner = peer;
            learner.set_role(PeerRole::Learner);
            next.peers.push(learner);
        }
        ConfChangeType::RemoveNode => {
            let Some(i) = same_id.filter(|&i| region.peers[i].store_id == peer.store_id) else {
                return Err(not_found());
            };
            let removed = next.peers.remove(i);
            if removed.role() != PeerRole::Learner
                && !next.peers.iter().any(|p| p.role() != PeerRole::Learner)
            {
                return Err(Error::Admin(AdminError::ConfChangeRemovesLastVoter {
                    peer_id: peer.id,
                }));
            }
        }
    }
    let epoch = region.region_epoch.unwrap_or_default();
    next.region_epoch = Some(RegionEpoch {
        conf_ver: epoch.conf_ver + 1,
        version: epoch.version,
    });
    Ok(next)
}

/// The raft change of a ChangePeer(V2) request's `changes` (one change:
/// a simple change; more: a joint configuration the leader leaves on its
/// own; none: leaving a joint configuration).
pub fn conf_change_v2(changes: &[ChangePeerRequest]) -> ConfChangeV2 {
    let mut cc = ConfChangeV2 {
        changes: changes
            .iter()
            .map(|c| ConfChangeSingle {
                change_type: c.change_type,
                node_id: c.peer.map_or(0, |p| p.id),
            })
            .collect(),
        ..Default::default()
    };
    cc.set_transition(ConfChangeTransition::Auto);
    cc
}

/// Whether `region` is in a joint configuration (a peer is an incoming
/// or a demoting voter).
pub fn is_joint(region: &Region) -> bool {
    region
        .peers
        .iter()
        .any(|p| matches!(p.role(), PeerRole::IncomingVoter | PeerRole::DemotingVoter))
}

/// The peers `before` lists and `after` does not (by id): those a change
/// removed.
pub fn removed_peers(before: &Region, after: &Region) -> Vec<Peer> {
    before
        .peers
        .iter()
        .filter(|p| !after.peers.iter().any(|q| q.id == p.id))
        .copied()
        .collect()
}

/// The leader refuses adding a peer whose id its region removed before:
/// peer ids are never reused (the store it was removed from keeps a
/// tombstone naming it and drops every message to it, so there the id
/// would never serve again; a removed peer told it is gone by a removal
/// note must not be taken for a member by id). `removed`
/// looks up the region's record of a removed peer id (the leader's own:
/// it applied every earlier change, so its records are the region's).
/// Promoting a learner the region lists is not an addition.
///
/// # Errors
/// [`AdminError::PeerIdRemoved`]; the lookup's errors.
pub fn check_ids_not_removed(
    changes: &[ChangePeerRequest],
    region: &Region,
    removed: impl Fn(u64) -> Result<Option<Peer>>,
) -> Result<()> {
    for req in changes {
        let adds = matches!(
            req.change_type(),
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode
        );
        let Some(peer) = req
            .peer
            .filter(|p| adds && !region.peers.iter().any(|q| q.id == p.id))
        else {
            continue;
        };
        if let Some(gone) = removed(peer.id)? {
            return Err(Error::Admin(AdminError::PeerIdRemoved {
                peer_id: gone.id,
                store_id: gone.store_id,
            }));
        }
    }
    Ok(())
}

fn bump_conf_ver(region: &mut Region) {
    let epoch = region.region_epoch.unwrap_or_default();
    region.region_epoch = Some(RegionEpoch {
        conf_ver: epoch.conf_ver + 1,
        version: epoch.version,
    });
}

/// The region after a ChangePeerV2 of `changes`, with `conf_ver` bumped:
/// no change leaves the joint configuration (incoming voters become
/// voters, demoting ones learners); one change is a simple change
/// ([`change_region`]); more enter a joint configuration: a new voter or a
/// promoted learner is an incoming voter, a demoted voter a demoting one,
/// a learner may be added or removed, and a voter may not be removed
/// (demote it, then remove the learner). Every replica decides alike.
///
/// # Errors
/// [`AdminError::ConfChangeNotInJoint`] leaving a configuration that is not
/// joint; [`AdminError::ConfChangeInJoint`] changing one that is;
/// [`AdminError::ConfChangeRemovesVoterInJoint`]; those of
/// [`change_region`] for each change; [`Error::InvalidRequest`] for two
/// changes of one peer or more than [`MAX_CHANGES`].
pub fn change_region_v2(changes: &[ChangePeerRequest], region: &Region) -> Result<Region> {
    if changes.len() > MAX_CHANGES {
        return Err(Error::InvalidRequest(format!(
            "{} changes in one conf change (at most {MAX_CHANGES})",
            changes.len()
        )));
    }
    for req in changes {
        change_peer_of(req)?;
    }
    let joint = is_joint(region);
    if changes.is_empty() {
        if !joint {
            return Err(Error::Admin(AdminError::ConfChangeNotInJoint {
                region_id: region.id,
            }));
        }
        let mut next = region.clone();
        for p in &mut next.peers {
            match p.role() {
                PeerRole::IncomingVoter => p.set_role(PeerRole::Voter),
                PeerRole::DemotingVoter => p.set_role(PeerRole::Learner),
                _ => {}
            }
        }
        bump_conf_ver(&mut next);
        return Ok(next);
    }
    if joint {
        return Err(Error::Admin(AdminError::ConfChangeInJoint {
            region_id: region.id,
        }));
    }
    if let [one] = changes {
        return change_region(one, region);
    }
    // Raft enters a joint configuration for any change of two or more;
    // the region records one only through incoming or demoting voters, so
    // a change that moves no voter would leave raft joint and the region
    // not (and the leave refused for good). Learners change one at a time.
    let moves_a_voter = changes.iter().any(|c| match c.change_type() {
        ConfChangeType::AddNode => true,
        ConfChangeType::AddLearnerNode => region
            .peers
            .iter()
            .any(|p| Some(p.id) == c.peer.map(|q| q.id) && p.role() == PeerRole::Voter),
        ConfChangeType::RemoveNode => false,
    });
    if !moves_a_voter {
        return Err(Error::InvalidRequest(
            "a change of two or more peers must add, promote or demote a voter \
             (learners change one at a time)"
                .into(),
        ));
    }
    let mut next = region.clone();
    let mut seen = Vec::with_capacity(changes.len());
    for req in changes {
        let peer = change_peer_of(req)?;
        if seen.contains(&peer.id) {
            return Err(Error::InvalidRequest(format!(
                "peer {} changes twice in one change",
                peer.id
            )));
        }
        seen.push(peer.id);
        let same_id = next.peers.iter().position(|p| p.id == peer.id);
        let present = |p: &Peer| {
            Error::Admin(AdminError::PeerAlreadyPresent {
                peer_id: p.id,
                store_id: p.store_id,
            })
        };
        let not_found = Error::Admin(AdminError::ConfChangePeerNotFound {
            peer_id: peer.id,
            store_id: peer.store_id,
        });
        if let Some(i) = same_id
            && next.peers[i].store_id != peer.store_id
        {
            return Err(not_found);
        }
        match (req.change_type(), same_id) {
            (ConfChangeType::AddNode, Some(i)) => match next.peers[i].role() {
                PeerRole::Learner => next.peers[i].set_role(PeerRole::IncomingVoter),
                _ => return Err(present(&next.peers[i])),
            },
            (ConfChangeType::AddLearnerNode, Some(i)) => match next.peers[i].role() {
                PeerRole::Voter => next.peers[i].set_role(PeerRole::DemotingVoter),
                _ => return Err(present(&next.peers[i])),
            },
            (ConfChangeType::AddNode | ConfChangeType::AddLearnerNode, None) => {
                if let Some(p) = next.peers.iter().find(|p| p.store_id == peer.store_id) {
                    return Err(present(p));
                }
                let mut added = peer;
                added.set_role(if req.change_type() == ConfChangeType::AddNode {
                    PeerRole::IncomingVoter
                } else {
                    PeerRole::Learner
                });
                next.peers.push(added);
            }
            (ConfChangeType::RemoveNode, Some(i)) => {
                if next.peers[i].role() != PeerRole::Learner {
                    return Err(Error::Admin(AdminError::ConfChangeRemovesVoterInJoint {
                        peer_id: peer.id,
                    }));
                }
                next.peers.remove(i);
            }
            (ConfChangeType::RemoveNode, None) => return Err(not_found),
        }
    }
    let incoming = next
        .peers
        .iter()
        .filter(|p| matches!(p.role(), PeerRole::Voter | PeerRole::IncomingVoter))
        .count();
    if incoming == 0 {
        return Err(Error::Admin(AdminError::ConfChangeRemovesLastVoter {
            peer_id: seen.first().copied().unwrap_or_default(),
        }));
    }
    bump_conf_ver(&mut next);
    Ok(next)
}

/// The leader's checks before it proposes a ChangePeerV2 of `changes`:
/// one conf change at a time, then the membership every replica will
/// check ([`change_region_v2`]), then the leader's own: it is neither
/// removed nor demoted in place, a promoted learner has caught up, and
/// the new voters' quorum holds the log ([`check_new_quorum`]).
/// `matched` gives what a peer has matched as far as the leader can
/// count on it (0 for a peer on a store it no longer hears). Returns the
/// region the change leads to.
///
/// # Errors
/// [`AdminError::ConfChangePending`], those of [`change_region_v2`],
/// [`AdminError::ConfChangeRemovesLeader`], [`AdminError::LearnerNotCaughtUp`],
/// [`AdminError::ConfChangeUnsafe`].
pub fn check_change_peers(
    changes: &[ChangePeerRequest],
    region: &Region,
    view: &LeaderView,
    matched: impl Fn(u64) -> u64,
) -> Result<Region> {
    if view.pending_conf_index > view.applied_index {
        return Err(Error::Admin(AdminError::ConfChangePending {
            pending_index: view.pending_conf_index,
        }));
    }
    let next = change_region_v2(changes, region)?;
    for req in changes {
        let peer = change_peer_of(req)?;
        let is_learner = region
            .peers
            .iter()
            .any(|p| p.id == peer.id && p.role() == PeerRole::Learner);
        match req.change_type() {
            ConfChangeType::RemoveNode | ConfChangeType::AddLearnerNode
                if peer.id == view.leader_id =>
            {
                return Err(Error::Admin(AdminError::ConfChangeRemovesLeader {
                    peer_id: peer.id,
                }));
            }
            ConfChangeType::AddNode if is_learner => {
                let matched = matched(peer.id);
                if matched == 0 || matched + PROMOTE_MAX_LAG < view.last_index {
                    return Err(Error::Admin(AdminError::LearnerNotCaughtUp {
                        peer_id: peer.id,
                        matched,
                    }));
                }
            }
            _ => {}
        }
    }
    if !changes.is_empty() {
        check_new_quorum(region, &next, view, matched)?;
    }
    Ok(next)
}

/// TiKV's safety rule for a membership change (its `check_conf_change`):
/// after the change, a quorum of the voters (of both halves, in a joint
/// configuration) must have matched the log at least to the leader's
/// truncated index, so that the region can go on committing with log
/// appends alone. A new voter counts as having matched nothing, and so
/// does (through `matched`) a voter on a store the leader no longer
/// hears. This refuses, for example, a third voter added on stores that
/// do not exist, or removing a live voter while another one is dead:
/// either would leave the region unable to commit.
///
/// A change that keeps the voters as they are (a learner added or
/// removed) cannot make things worse and passes. Unlike TiKV, a region
/// with a single voter is not exempt: a second voter added directly is
/// half of the new quorum and has nothing, so on a store that does not
/// exist it would wedge the region for good (no election can win, and no
/// change can commit to undo it). Grow a region by adding a learner and
/// promoting it once it caught up.
///
/// # Errors
/// [`AdminError::ConfChangeUnsafe`].
pub fn check_new_quorum(
    region: &Region,
    next: &Region,
    view: &LeaderView,
    matched: impl Fn(u64) -> u64,
) -> Result<()> {
    let voters = |r: &Region| {
        let cs = conf_state_from_region(r);
        let mut incoming = cs.voters;
        let mut outgoing = cs.voters_outgoing;
        incoming.sort_unstable();
        outgoing.sort_unstable();
        (incoming, outgoing)
    };
    let before = voters(region);
    let after = voters(next);
    if before == after {
        return Ok(());
    }
    let quorum_matched = joint::committed_index(
        &MajorityConfig::new(after.0),
        &MajorityConfig::new(after.1),
        |id| Some(matched(id)),
    );
    if quorum_matched < view.truncated_index {
        return Err(Error::Admin(AdminError::ConfChangeUnsafe {
            quorum_matched,
            truncated_index: view.truncated_index,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, store_id: u64, role: PeerRole) -> Peer {
        Peer {
            id,
            store_id,
            role: role as i32,
        }
    }

    fn region() -> Region {
        Region {
            id: 1,
            region_epoch: Some(RegionEpoch {
                conf_ver: 4,
                version: 2,
            }),
            peers: vec![
                peer(10, 1, PeerRole::Voter),
                peer(11, 2, PeerRole::Voter),
                peer(12, 3, PeerRole::Learner),
            ],
            ..Default::default()
        }
    }

    fn req(t: ConfChangeType, id: u64, store_id: u64) -> ChangePeerRequest {
        ChangePeerRequest {
            change_type: t as i32,
            peer: Some(peer(id, store_id, PeerRole::Voter)),
        }
    }

    fn view() -> LeaderView {
        LeaderView {
            leader_id: 10,
            applied_index: 100,
            pending_conf_index: 90,
            last_index: 100,
            truncated_index: 5,
        }
    }

    fn admin(r: Result<Region>) -> AdminError {
        match r {
            Err(Error::Admin(e)) => e,
            other => panic!("not an admin error: {other:?}"),
        }
    }

    /// Each change's membership and the conf_ver bump.
    #[test]
    fn changes_add_promote_and_remove_with_a_conf_ver_bump() {
        let r = region();
        let added = change_region(&req(ConfChangeType::AddNode, 13, 4), &r).unwrap();
        assert!(added.peers.contains(&peer(13, 4, PeerRole::Voter)));
        assert_eq!(added.region_epoch.unwrap().conf_ver, 5);
        assert_eq!(added.region_epoch.unwrap().version, 2);
        let learner = change_region(&req(ConfChangeType::AddLearnerNode, 13, 4), &r).unwrap();
        assert!(learner.peers.contains(&peer(13, 4, PeerRole::Learner)));
        let promoted = change_region(&req(ConfChangeType::AddNode, 12, 3), &r).unwrap();
        assert!(promoted.peers.contains(&peer(12, 3, PeerRole::Voter)));
        assert_eq!(promoted.peers.len(), 3);
        let removed = change_region(&req(ConfChangeType::RemoveNode, 11, 2), &r).unwrap();
        assert_eq!(removed.peers.len(), 2);
        assert!(removed.peers.iter().all(|p| p.id != 11));
    }

    /// The peers a change removed, v1 or v2, for the records every
    /// replica writes; promotions and demotions remove nobody.
    #[test]
    fn a_change_names_the_peers_it_removed() {
        let r = region();
        let v1 = change_region(&req(ConfChangeType::RemoveNode, 11, 2), &r).unwrap();
        assert_eq!(removed_peers(&r, &v1), vec![peer(11, 2, PeerRole::Voter)]);
        let joint = change_region_v2(
            &[
                req(ConfChangeType::AddNode, 13, 4),
                req(ConfChangeType::AddLearnerNode, 11, 2),
                req(ConfChangeType::RemoveNode, 12, 3),
            ],
            &r,
        )
        .unwrap();
        assert_eq!(
            removed_peers(&r, &joint),
            vec![peer(12, 3, PeerRole::Learner)]
        );
        let left = change_region_v2(&[], &joint).unwrap();
        assert!(removed_peers(&joint, &left).is_empty());
        let promoted = change_region(&req(ConfChangeType::AddNode, 12, 3), &r).unwrap();
        assert!(removed_peers(&r, &promoted).is_empty());
    }

    /// admin.md scenario 12 (`conf_change_typed_rejections`): adding, as a
    /// voter or a learner, alone or in a joint change, on its store or
    /// another, a peer whose id the region removed is refused, typed; a
    /// new id passes, and so does promoting a learner the region lists
    /// (whatever the lookup says); a failed lookup is an error.
    #[test]
    fn a_removed_peer_id_is_never_added_back() {
        let r = region();
        let gone = peer(9, 3, PeerRole::Voter);
        let lookup = |id: u64| Ok((id == gone.id).then_some(gone));
        let refused = AdminError::PeerIdRemoved {
            peer_id: 9,
            store_id: 3,
        };
        for t in [ConfChangeType::AddNode, ConfChangeType::AddLearnerNode] {
            for store in [3, 4] {
                assert_eq!(
                    admin(
                        check_ids_not_removed(&[req(t, 9, store)], &r, lookup).map(|()| r.clone())
                    ),
                    refused
                );
            }
        }
        let joint = [
            req(ConfChangeType::AddNode, 13, 4),
            req(ConfChangeType::AddLearnerNode, 9, 5),
        ];
        assert_eq!(
            admin(check_ids_not_removed(&joint, &r, lookup).map(|()| r.clone())),
            refused
        );
        assert!(check_ids_not_removed(&[req(ConfChangeType::AddNode, 14, 4)], &r, lookup).is_ok());
        assert!(
            check_ids_not_removed(&[req(ConfChangeType::RemoveNode, 9, 3)], &r, lookup).is_ok()
        );
        let always = |_| Ok(Some(gone));
        assert!(check_ids_not_removed(&[req(ConfChangeType::AddNode, 12, 3)], &r, always).is_ok());
        let broken = |_| Err(Error::Engine("read".into()));
        assert!(matches!(
            check_ids_not_removed(&[req(ConfChangeType::AddNode, 14, 4)], &r, broken),
            Err(Error::Engine(_))
        ));
    }

    /// admin.md scenario 12 (`conf_change_typed_rejections`), the
    /// membership part: each refusal has its variant.
    #[test]
    fn refusals_are_typed() {
        let r = region();
        assert_eq!(
            admin(change_region(&req(ConfChangeType::AddNode, 11, 2), &r)),
            AdminError::PeerAlreadyPresent {
                peer_id: 11,
                store_id: 2
            }
        );
        assert_eq!(
            admin(change_region(
                &req(ConfChangeType::AddLearnerNode, 20, 1),
                &r
            )),
            AdminError::PeerAlreadyPresent {
                peer_id: 10,
                store_id: 1
            },
            "a second peer on a store"
        );
        assert_eq!(
            admin(change_region(&req(ConfChangeType::RemoveNode, 11, 3), &r)),
            AdminError::ConfChangePeerNotFound {
                peer_id: 11,
                store_id: 3
            }
        );
        let single = Region {
            peers: vec![peer(10, 1, PeerRole::Voter), peer(12, 3, PeerRole::Learner)],
            ..region()
        };
        assert_eq!(
            admin(change_region(
                &req(ConfChangeType::RemoveNode, 10, 1),
                &single
            )),
            AdminError::ConfChangeRemovesLastVoter { peer_id: 10 }
        );
        assert!(matches!(
            change_region(
                &ChangePeerRequest {
                    change_type: ConfChangeType::AddNode as i32,
                    peer: Some(peer(0, 4, PeerRole::Voter)),
                },
                &r
            ),
            Err(Error::InvalidRequest(_))
        ));
    }

    /// Bad input: a change type this version does not know is refused
    /// (prost would read it as AddNode, raft refuses it: the region and
    /// raft would disagree), and so is a request of more than
    /// [`MAX_CHANGES`] changes.
    #[test]
    fn unknown_change_types_and_huge_changes_are_refused() {
        let r = region();
        let unknown = ChangePeerRequest {
            change_type: 7,
            peer: Some(peer(13, 4, PeerRole::Voter)),
        };
        assert!(matches!(
            change_region(&unknown, &r),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            change_region_v2(&[unknown, req(ConfChangeType::AddNode, 14, 5)], &r),
            Err(Error::InvalidRequest(_))
        ));
        let many: Vec<_> = (0..=MAX_CHANGES as u64)
            .map(|i| req(ConfChangeType::AddLearnerNode, 100 + i, 100 + i))
            .chain([req(ConfChangeType::AddLearnerNode, 11, 2)])
            .collect();
        assert!(matches!(
            change_region_v2(&many, &r),
            Err(Error::InvalidRequest(_))
        ));
        assert!(change_region_v2(&many[MAX_CHANGES - 2..], &r).is_ok());
    }

    /// Scenario 11's membership: replacing two of three voters enters a
    /// joint configuration (incoming and demoting voters), leaving it
    /// settles the roles; each step bumps conf_ver once.
    #[test]
    fn joint_change_enters_and_leaves() {
        let r = Region {
            peers: vec![
                peer(10, 1, PeerRole::Voter),
                peer(11, 2, PeerRole::Voter),
                peer(12, 3, PeerRole::Voter),
                peer(13, 4, PeerRole::Learner),
                peer(14, 5, PeerRole::Learner),
            ],
            ..region()
        };
        let changes = [
            req(ConfChangeType::AddNode, 13, 4),
            req(ConfChangeType::AddNode, 14, 5),
            req(ConfChangeType::AddLearnerNode, 11, 2),
            req(ConfChangeType::AddLearnerNode, 12, 3),
        ];
        let joint = change_region_v2(&changes, &r).unwrap();
        assert!(is_joint(&joint));
        assert_eq!(joint.region_epoch.unwrap().conf_ver, 5);
        let role = |r: &Region, id| r.peers.iter().find(|p| p.id == id).unwrap().role();
        assert_eq!(role(&joint, 13), PeerRole::IncomingVoter);
        assert_eq!(role(&joint, 11), PeerRole::DemotingVoter);
        let cs = crate::store::peer_storage::conf_state_from_region(&joint);
        assert!(cs.auto_leave);
        let mut outgoing = cs.voters_outgoing.clone();
        outgoing.sort_unstable();
        assert_eq!(outgoing, vec![10, 11, 12]);
        assert_eq!(
            admin(change_region_v2(&changes[..1], &joint)),
            AdminError::ConfChangeInJoint { region_id: 1 }
        );
        let left = change_region_v2(&[], &joint).unwrap();
        assert!(!is_joint(&left));
        assert_eq!(left.region_epoch.unwrap().conf_ver, 6);
        assert_eq!(role(&left, 14), PeerRole::Voter);
        assert_eq!(role(&left, 12), PeerRole::Learner);
        assert_eq!(
            admin(change_region_v2(&[], &left)),
            AdminError::ConfChangeNotInJoint { region_id: 1 }
        );
        assert_eq!(
            admin(change_region_v2(
                &[
                    req(ConfChangeType::AddNode, 13, 4),
                    req(ConfChangeType::RemoveNode, 11, 2)
                ],
                &r
            )),
            AdminError::ConfChangeRemovesVoterInJoint { peer_id: 11 }
        );
        // Two learners at once would make raft joint with no region role
        // to show it.
        assert!(matches!(
            change_region_v2(
                &[
                    req(ConfChangeType::AddLearnerNode, 20, 6),
                    req(ConfChangeType::RemoveNode, 13, 4)
                ],
                &r
            ),
            Err(Error::InvalidRequest(_))
        ));
        assert_eq!(
            admin(check_change_peers(
                &[
                    req(ConfChangeType::AddNode, 13, 4),
                    req(ConfChangeType::AddLearnerNode, 10, 1)
                ],
                &r,
                &view(),
                |_| 100
            )),
            AdminError::ConfChangeRemovesLeader { peer_id: 10 },
            "the leader demoted"
        );
    }

    /// admin.md scenario 12, the leader's part: one change at a time, no
    /// removing the leader in place, no promoting a learner far behind.
    #[test]
    fn leader_checks_pending_self_removal_and_lagging_learners() {
        let r = region();
        let pending = LeaderView {
            pending_conf_index: 101,
            ..view()
        };
        assert_eq!(
            admin(check_change_peers(
                &[req(ConfChangeType::AddNode, 13, 4)],
                &r,
                &pending,
                |_| 100
            )),
            AdminError::ConfChangePending { pending_index: 101 }
        );
        assert_eq!(
            admin(check_change_peers(
                &[req(ConfChangeType::RemoveNode, 10, 1)],
                &r,
                &view(),
                |_| 100
            )),
            AdminError::ConfChangeRemovesLeader { peer_id: 10 }
        );
        let far = LeaderView {
            last_index: 1000,
            ..view()
        };
        assert_eq!(
            admin(check_change_peers(
                &[req(ConfChangeType::AddNode, 12, 3)],
                &r,
                &far,
                |_| 500
            )),
            AdminError::LearnerNotCaughtUp {
                peer_id: 12,
                matched: 500
            }
        );
        assert!(
            check_change_peers(&[req(ConfChangeType::AddNode, 12, 3)], &r, &far, |_| 990).is_ok()
        );
        assert!(
            check_change_peers(
                &[req(ConfChangeType::RemoveNode, 11, 2)],
                &r,
                &view(),
                |id| if id == 10 { 100 } else { 0 }
            )
            .is_ok(),
            "removing a voter that matched nothing leaves the leader's quorum"
        );
    }

    /// admin.md scenario 12, the quorum's hold on the log (TiKV's
    /// `check_conf_change`): a change whose new voters could not commit
    /// without a snapshot (new voters and voters on silent stores match
    /// nothing) is refused; one that keeps the voters, or grows a single
    /// voter, passes.
    #[test]
    fn a_change_whose_quorum_lacks_the_log_is_refused() {
        let three = Region {
            peers: vec![
                peer(10, 1, PeerRole::Voter),
                peer(11, 2, PeerRole::Voter),
                peer(12, 3, PeerRole::Voter),
            ],
            ..region()
        };
        let all = |id: u64| if id <= 12 { 100 } else { 0 };
        let add = |r: &Region, id, store| {
            check_change_peers(&[req(ConfChangeType::AddNode, id, store)], r, &view(), all)
        };
        // Voters on stores that do not exist: the fourth and fifth leave
        // the three real ones a quorum, the sixth does not.
        let four = add(&three, 13, 4).unwrap();
        let five = add(&four, 14, 5).unwrap();
        assert_eq!(
            admin(add(&five, 15, 6)),
            AdminError::ConfChangeUnsafe {
                quorum_matched: 0,
                truncated_index: 5
            }
        );
        // Store 3 is silent (its voter counts nothing): removing a live
        // voter leaves {10, 12}, which cannot commit.
        let store3_silent = |id: u64| if id == 12 { 0 } else { 100 };
        assert_eq!(
            admin(check_change_peers(
                &[req(ConfChangeType::RemoveNode, 11, 2)],
                &three,
                &view(),
                store3_silent
            )),
            AdminError::ConfChangeUnsafe {
                quorum_matched: 0,
                truncated_index: 5
            }
        );
        // Removing the silent voter itself is the way out.
        assert!(
            check_change_peers(
                &[req(ConfChangeType::RemoveNode, 12, 3)],
                &three,
                &view(),
                store3_silent
            )
            .is_ok()
        );
        // Matched below the truncation point is as good as nothing.
        let behind = |id: u64| if id == 10 { 100 } else { 4 };
        assert!(matches!(
            check_change_peers(
                &[req(ConfChangeType::AddNode, 13, 4)],
                &three,
                &view(),
                behind
            ),
            Err(Error::Admin(AdminError::ConfChangeUnsafe {
                quorum_matched: 4,
                ..
            }))
        ));
        // A learner changes no quorum.
        assert!(
            check_change_peers(
                &[req(ConfChangeType::AddLearnerNode, 13, 4)],
                &three,
                &view(),
                |_| 0
            )
            .is_ok()
        );
        // A single voter grows through a caught-up learner, never by a
        // voter that has nothing (on a store that does not exist, that
        // would wedge the region for good).
        let single = Region {
            peers: vec![peer(10, 1, PeerRole::Voter), peer(12, 3, PeerRole::Learner)],
            ..region()
        };
        let leader_only = |id: u64| if id == 10 { 100 } else { 0 };
        assert!(matches!(
            check_change_peers(
                &[req(ConfChangeType::AddNode, 11, 2)],
                &single,
                &view(),
                leader_only
            ),
            Err(Error::Admin(AdminError::ConfChangeUnsafe {
                quorum_matched: 0,
                ..
            }))
        ));
        assert!(
            check_change_peers(
                &[req(ConfChangeType::AddNode, 12, 3)],
                &single,
                &view(),
                |_| 100
            )
            .is_ok(),
            "promoting the caught-up learner"
        );
        // A joint change counts both halves: replacing two of three voters
        // by voters that have nothing leaves the incoming half without a
        // quorum.
        let joint = [
            req(ConfChangeType::AddNode, 13, 4),
            req(ConfChangeType::AddNode, 14, 5),
            req(ConfChangeType::AddLearnerNode, 11, 2),
            req(ConfChangeType::AddLearnerNode, 12, 3),
        ];
        assert!(matches!(
            check_change_peers(&joint, &three, &view(), all),
            Err(Error::Admin(AdminError::ConfChangeUnsafe { .. }))
        ));
        assert!(check_change_peers(&joint, &three, &view(), |_| 100).is_ok());
    }
}
