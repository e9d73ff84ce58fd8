//! Merge (admin.md §1.2) as pure functions: which regions may merge, what
//! the source's log tail may hold when PrepareMerge is proposed, and the
//! region a merge makes. The protocol itself (PrepareMerge on the source,
//! CommitMerge on the target, RollbackMerge) lives with the peer and the
//! apply side.

use flotilla_proto::eraftpb::{Entry, EntryType};
use flotilla_proto::metapb::{Region, RegionEpoch};
use flotilla_proto::raft_cmdpb::RaftCmdRequest;
use prost::Message as _;

use super::{AdminError, is_joint};

/// Checks that `source` may merge into `target`: two regions, neither in
/// a joint configuration, whose ranges touch, with their peers on the
/// same stores in the same roles (every store of the target then holds
/// the source's data when the merge applies there).
///
/// # Errors
/// `MergeIntoSelf`, `MergeInJoint`, `MergeNotAdjacent`,
/// `MergeNotColocated`.
pub fn check_merge_regions(source: &Region, target: &Region) -> Result<(), AdminError> {
    if source.id == target.id {
        return Err(AdminError::MergeIntoSelf {
            region_id: source.id,
        });
    }
    for r in [source, target] {
        if is_joint(r) {
            return Err(AdminError::MergeInJoint { region_id: r.id });
        }
    }
    if !adjacent(source, target) {
        return Err(AdminError::MergeNotAdjacent {
            source_id: source.id,
            target: target.id,
        });
    }
    let placement = |r: &Region| {
        let mut v: Vec<(u64, i32)> = r.peers.iter().map(|p| (p.store_id, p.role)).collect();
        v.sort_unstable();
        v
    };
    if placement(source) != placement(target) {
        return Err(AdminError::MergeNotColocated {
            source_id: source.id,
            target: target.id,
        });
    }
    Ok(())
}

/// Whether the ranges of `a` and `b` touch (one ends where the other
/// starts; an empty end is +inf, an empty start -inf, and neither touches
/// anything).
pub fn adjacent(a: &Region, b: &Region) -> bool {
    let touches =
        |left: &Region, right: &Region| !left.end_key.is_empty() && left.end_key == right.start_key;
    touches(a, b) || touches(b, a)
}

/// Checks the log tail a PrepareMerge would leave for the target to
/// carry: `entries` are the leader's entries after the least index every
/// peer matched. None may be an admin command or a conf change (a
/// compaction could delete what the target must carry; a split or
/// membership change would apply on some replicas of the source before
/// the merge and not be known by the target), and together they must fit
/// in `limit` bytes.
///
/// # Errors
/// `MergeGapHasAdmin`, `MergeEntriesTooLarge`.
pub fn check_merge_tail(entries: &[Entry], limit: u64) -> Result<(), AdminError> {
    let mut size = 0u64;
    for e in entries {
        size = size.saturating_add(e.encoded_len() as u64);
        let admin = match e.entry_type() {
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => true,
            EntryType::EntryNormal if e.data.is_empty() => false,
            // Undecodable entries are refused at apply; an admin one is
            // what matters here.
            EntryType::EntryNormal => RaftCmdRequest::decode(e.data.clone())
                .map(|r| r.admin_request.is_some())
                .unwrap_or(false),
        };
        if admin {
            return Err(AdminError::MergeGapHasAdmin { index: e.index });
        }
    }
    if size > limit {
        return Err(AdminError::MergeEntriesTooLarge { size, limit });
    }
    Ok(())
}

/// The region `target` becomes when it absorbs `source` (adjacent, see
/// [`check_merge_regions`]): its range grows by the source's, its
/// `version` passes both regions' (every cache entry of either is then
/// older), its peers and `conf_ver` stay.
pub fn merged_region(source: &Region, target: &Region) -> Region {
    let mut merged = target.clone();
    if !source.end_key.is_empty() && source.end_key == target.start_key {
        merged.start_key = source.start_key.clone();
    } else {
        merged.end_key = source.end_key.clone();
    }
    let version = |r: &Region| r.region_epoch.map_or(0, |e| e.version);
    merged.region_epoch = Some(RegionEpoch {
        conf_ver: target.region_epoch.map_or(0, |e| e.conf_ver),
        version: version(source).max(version(target)) + 1,
    });
    merged
}

/// Whether epoch `a` is at or before `b` in one region's history (both
/// parts only grow, so two epochs of a region are always ordered).
pub fn epoch_at_or_before(a: Option<RegionEpoch>, b: Option<RegionEpoch>) -> bool {
    let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
    a.version <= b.version && a.conf_ver <= b.conf_ver
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use flotilla_proto::metapb::{Peer, PeerRole};
    use flotilla_proto::raft_cmdpb::{AdminRequest, CompactLogRequest, admin_request};

    use super::*;

    fn region(id: u64, start: &'static [u8], end: &'static [u8], stores: &[u64]) -> Region {
        Region {
            id,
            start_key: Bytes::from_static(start),
            end_key: Bytes::from_static(end),
            region_epoch: Some(RegionEpoch {
                conf_ver: id,
                version: id * 10,
            }),
            peers: stores
                .iter()
                .map(|&s| Peer {
                    id: id * 100 + s,
                    store_id: s,
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// admin.md scenario 27 (pure part): every refusal of a merge's
    /// regions has its own variant; adjacent colocated regions pass in
    /// both directions.
    #[test]
    fn merge_regions_refusals_are_typed() {
        let a = region(1, b"", b"m", &[1, 2, 3]);
        let b = region(2, b"m", b"t", &[3, 2, 1]);
        let c = region(3, b"t", b"", &[1, 2, 3]);
        assert_eq!(check_merge_regions(&a, &b), Ok(()));
        assert_eq!(check_merge_regions(&b, &a), Ok(()));
        assert_eq!(
            check_merge_regions(&a, &a),
            Err(AdminError::MergeIntoSelf { region_id: 1 })
        );
        assert_eq!(
            check_merge_regions(&a, &c),
            Err(AdminError::MergeNotAdjacent {
                source_id: 1,
                target: 3
            })
        );
        let elsewhere = region(2, b"m", b"t", &[1, 2, 4]);
        assert_eq!(
            check_merge_regions(&a, &elsewhere),
            Err(AdminError::MergeNotColocated {
                source_id: 1,
                target: 2
            })
        );
        let mut learner = b.clone();
        learner.peers[0].set_role(PeerRole::Learner);
        assert_eq!(
            check_merge_regions(&a, &learner),
            Err(AdminError::MergeNotColocated {
                source_id: 1,
                target: 2
            }),
            "same stores, another role"
        );
        let mut joint = b.clone();
        joint.peers[1].set_role(PeerRole::IncomingVoter);
        assert_eq!(
            check_merge_regions(&a, &joint),
            Err(AdminError::MergeInJoint { region_id: 2 })
        );
    }

    /// The merged region spans both ranges whichever side the source is
    /// on, keeps the target's id, peers and conf_ver, and its version
    /// passes both.
    #[test]
    fn merged_region_spans_both_and_passes_both_versions() {
        let left = region(1, b"a", b"m", &[1]);
        let right = region(2, b"m", b"t", &[1]);
        let m = merged_region(&left, &right);
        assert_eq!(
            (m.id, &m.start_key[..], &m.end_key[..]),
            (2, &b"a"[..], &b"t"[..])
        );
        assert_eq!(
            m.region_epoch,
            Some(RegionEpoch {
                conf_ver: 2,
                version: 21
            })
        );
        assert_eq!(m.peers, right.peers);
        let m = merged_region(&right, &left);
        assert_eq!(
            (m.id, &m.start_key[..], &m.end_key[..]),
            (1, &b"a"[..], &b"t"[..])
        );
        assert_eq!(m.region_epoch.map(|e| e.version), Some(21));
    }

    fn normal(index: u64, req: Option<RaftCmdRequest>) -> Entry {
        Entry {
            index,
            term: 1,
            data: req.map(|r| r.encode_to_vec().into()).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// The tail a merge leaves for the target holds no admin command and
    /// no conf change, and fits the limit.
    #[test]
    fn merge_tail_refuses_admin_entries_and_oversize() {
        let write = RaftCmdRequest::default();
        let compact = RaftCmdRequest {
            admin_request: Some(AdminRequest {
                cmd: Some(admin_request::Cmd::CompactLog(CompactLogRequest::default())),
            }),
            ..Default::default()
        };
        let plain = vec![normal(5, None), normal(6, Some(write.clone()))];
        assert_eq!(check_merge_tail(&plain, 1 << 20), Ok(()));
        let with_admin = vec![normal(5, Some(write)), normal(6, Some(compact))];
        assert_eq!(
            check_merge_tail(&with_admin, 1 << 20),
            Err(AdminError::MergeGapHasAdmin { index: 6 })
        );
        let mut cc = normal(7, None);
        cc.set_entry_type(EntryType::EntryConfChangeV2);
        assert_eq!(
            check_merge_tail(&[cc], 1 << 20),
            Err(AdminError::MergeGapHasAdmin { index: 7 })
        );
        assert!(matches!(
            check_merge_tail(&plain, 4),
            Err(AdminError::MergeEntriesTooLarge { limit: 4, .. })
        ));
    }

    /// Epochs of one region compare part by part.
    #[test]
    fn epochs_order_part_by_part() {
        let e = |conf_ver, version| Some(RegionEpoch { conf_ver, version });
        assert!(epoch_at_or_before(e(1, 1), e(1, 1)));
        assert!(epoch_at_or_before(e(1, 1), e(2, 1)));
        assert!(!epoch_at_or_before(e(1, 2), e(2, 1)));
        assert!(!epoch_at_or_before(e(3, 1), e(2, 5)));
    }
}
