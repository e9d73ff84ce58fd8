//! BatchSplit as pure functions (admin.md §1.1): which keys may split a
//! region, and the regions a split makes. The leader checks the keys
//! before it proposes (and allocates the new ids); every replica checks
//! them again and computes the same regions when the entry applies.

use flotilla_proto::metapb::{Peer, Region, RegionEpoch};
use flotilla_proto::raft_cmdpb::{BatchSplitRequest, SplitRequest};

use super::error::{AdminError, SplitKeyFault};
use crate::store::error::{Error, Result};
use crate::store::util::key_in_region;

/// Split keys one BatchSplit takes by default (TiKV's `batch_split_limit`).
pub const DEFAULT_SPLIT_MAX_KEYS: u64 = 10;

/// Checks `keys` against `region`: at least one, at most `max`, each
/// inside the range and not its start, strictly ascending.
///
/// # Errors
/// [`AdminError::NoSplitKeys`], [`AdminError::TooManySplitKeys`],
/// [`AdminError::SplitKeyInvalid`] naming the first bad key.
pub fn check_split_keys<'a>(
    keys: impl ExactSizeIterator<Item = &'a [u8]>,
    region: &Region,
    max: u64,
) -> Result<()> {
    let count = keys.len() as u64;
    if count == 0 {
        return Err(Error::Admin(AdminError::NoSplitKeys));
    }
    if count > max {
        return Err(Error::Admin(AdminError::TooManySplitKeys { count, max }));
    }
    let mut prev: Option<&[u8]> = None;
    for key in keys {
        let fault = if key.is_empty() || !key_in_region(key, region) {
            Some(SplitKeyFault::OutOfRange)
        } else if key == &region.start_key[..] {
            Some(SplitKeyFault::RegionStart)
        } else if prev.is_some_and(|p| key <= p) {
            Some(SplitKeyFault::NotAscending)
        } else {
            None
        };
        if let Some(fault) = fault {
            return Err(Error::Admin(AdminError::SplitKeyInvalid {
                key: key.to_vec(),
                fault,
            }));
        }
        prev = Some(key);
    }
    Ok(())
}

/// Checks the ids a split names (every replica alike): one non-zero new
/// region id per key and one non-zero peer id per peer, all distinct, none
/// the region's own id or one of its peers'.
fn check_split_ids(req: &BatchSplitRequest, region: &Region) -> Result<()> {
    let bad = |why: &str| Err(Error::InvalidRequest(format!("split ids: {why}")));
    let mut seen: std::collections::HashSet<u64> = region.peers.iter().map(|p| p.id).collect();
    seen.insert(region.id);
    for r in &req.requests {
        if r.new_peer_ids.len() != region.peers.len() {
            return bad("not one new peer id per peer");
        }
        for &id in std::iter::once(&r.new_region_id).chain(&r.new_peer_ids) {
            if id == 0 || !seen.insert(id) {
                return bad("an id is 0, repeated, or the region's or a peer's own");
            }
        }
    }
    Ok(())
}

/// The regions a checked split of `region` makes: the derived region
/// (the original id, keeping the leftmost range, or the rightmost one if
/// `right_derive`) and the new ones, every one at `version` + the number
/// of new regions, with the original's `conf_ver` and one peer per
/// original peer on the same store, in the same role.
///
/// # Errors
/// The key errors of [`check_split_keys`];
/// [`AdminError::ConfChangeInJoint`] while the region is joint (a new
/// region could not be told which configuration it is in);
/// [`Error::InvalidRequest`] if a
/// split names no region id or not one new peer id per peer (the leader
/// fills them in; a replica refuses an entry without them).
pub fn split_regions(
    req: &BatchSplitRequest,
    region: &Region,
    max: u64,
) -> Result<(Region, Vec<Region>)> {
    check_split_keys(req.requests.iter().map(|r| &r.split_key[..]), region, max)?;
    if super::conf_change::is_joint(region) {
        return Err(Error::Admin(AdminError::ConfChangeInJoint {
            region_id: region.id,
        }));
    }
    check_split_ids(req, region)?;
    let epoch = region.region_epoch.unwrap_or_default();
    let new_count = req.requests.len() as u64;
    let epoch = RegionEpoch {
        conf_ver: epoch.conf_ver,
        version: epoch.version + new_count,
    };
    let region_of = |r: &SplitRequest, start: &[u8], end: &[u8]| Region {
        id: r.new_region_id,
        start_key: start.to_vec().into(),
        end_key: end.to_vec().into(),
        region_epoch: Some(epoch),
        peers: region
            .peers
            .iter()
            .zip(&r.new_peer_ids)
            .map(|(p, &id)| Peer { id, ..*p })
            .collect(),
    };
    let mut derived = region.clone();
    derived.region_epoch = Some(epoch);
    let keys: Vec<&[u8]> = req.requests.iter().map(|r| &r.split_key[..]).collect();
    let mut new = Vec::with_capacity(req.requests.len());
    if req.right_derive {
        // [start, k1), [k1, k2), ... are new; the original keeps [kn, end).
        let mut start: &[u8] = &region.start_key;
        for (r, key) in req.requests.iter().zip(&keys) {
            new.push(region_of(r, start, key));
            start = key;
        }
        derived.start_key = start.to_vec().into();
    } else {
        // The original keeps [start, k1); [k1, k2), ..., [kn, end) are new.
        for (i, r) in req.requests.iter().enumerate() {
            let end: &[u8] = keys.get(i + 1).copied().unwrap_or(&region.end_key[..]);
            new.push(region_of(r, keys[i], end));
        }
        derived.end_key = keys[0].to_vec().into();
    }
    Ok((derived, new))
}

#[cfg(test)]
mod tests {
    use flotilla_proto::metapb::PeerRole;

    use super::*;

    fn region(start: &[u8], end: &[u8]) -> Region {
        Region {
            id: 1,
            start_key: start.to_vec().into(),
            end_key: end.to_vec().into(),
            region_epoch: Some(RegionEpoch {
                conf_ver: 3,
                version: 5,
            }),
            peers: vec![
                Peer {
                    id: 11,
                    store_id: 1,
                    role: PeerRole::Voter as i32,
                },
                Peer {
                    id: 12,
                    store_id: 2,
                    role: PeerRole::Learner as i32,
                },
            ],
        }
    }

    fn fault(keys: &[&[u8]], r: &Region, max: u64) -> Option<SplitKeyFault> {
        match check_split_keys(keys.iter().copied(), r, max) {
            Err(Error::Admin(AdminError::SplitKeyInvalid { fault, .. })) => Some(fault),
            Err(e) => panic!("unexpected {e:?}"),
            Ok(()) => None,
        }
    }

    fn request(keys: &[&[u8]], right_derive: bool) -> BatchSplitRequest {
        BatchSplitRequest {
            requests: keys
                .iter()
                .enumerate()
                .map(|(i, k)| SplitRequest {
                    split_key: k.to_vec().into(),
                    new_region_id: 100 + i as u64,
                    new_peer_ids: vec![200 + 2 * i as u64, 201 + 2 * i as u64],
                })
                .collect(),
            right_derive,
        }
    }

    /// admin.md §5.3: every bad split key has its own typed refusal.
    #[test]
    fn split_keys_are_checked_one_fault_each() {
        let r = region(b"b", b"m");
        assert_eq!(fault(&[b"c", b"d"], &r, 10), None);
        assert_eq!(fault(&[b"a"], &r, 10), Some(SplitKeyFault::OutOfRange));
        assert_eq!(fault(&[b"m"], &r, 10), Some(SplitKeyFault::OutOfRange));
        assert_eq!(fault(&[b""], &r, 10), Some(SplitKeyFault::OutOfRange));
        assert_eq!(fault(&[b"b"], &r, 10), Some(SplitKeyFault::RegionStart));
        assert_eq!(
            fault(&[b"d", b"c"], &r, 10),
            Some(SplitKeyFault::NotAscending)
        );
        assert_eq!(
            fault(&[b"d", b"d"], &r, 10),
            Some(SplitKeyFault::NotAscending)
        );
        assert!(matches!(
            check_split_keys(std::iter::empty(), &r, 10),
            Err(Error::Admin(AdminError::NoSplitKeys))
        ));
        assert!(matches!(
            check_split_keys([&b"c"[..], b"d", b"e"].into_iter(), &r, 2),
            Err(Error::Admin(AdminError::TooManySplitKeys {
                count: 3,
                max: 2
            }))
        ));
        // An unbounded region takes any non-empty key.
        assert_eq!(fault(&[b"zzz"], &region(b"", b""), 10), None);
    }

    /// A split tiles the original range exactly, bumps `version` by the
    /// number of new regions, keeps `conf_ver`, and gives each new region
    /// one peer per original peer on the same store in the same role.
    #[test]
    fn split_regions_tile_the_range_left_and_right_derived() {
        let r = region(b"b", b"m");
        let (derived, new) = split_regions(&request(&[b"d", b"h"], false), &r, 10).unwrap();
        let ranges: Vec<(&[u8], &[u8])> = std::iter::once(&derived)
            .chain(&new)
            .map(|r| (&r.start_key[..], &r.end_key[..]))
            .collect();
        assert_eq!(
            ranges,
            vec![(&b"b"[..], &b"d"[..]), (b"d", b"h"), (b"h", b"m")]
        );
        assert_eq!(derived.id, 1);
        assert_eq!(new[0].id, 100);
        assert_eq!(new[1].id, 101);
        for x in std::iter::once(&derived).chain(&new) {
            assert_eq!(x.region_epoch.unwrap().version, 7);
            assert_eq!(x.region_epoch.unwrap().conf_ver, 3);
        }
        assert_eq!(new[1].peers[0].id, 202);
        assert_eq!(new[1].peers[1].store_id, 2);
        assert_eq!(new[1].peers[1].role, PeerRole::Learner as i32);

        let (derived, new) = split_regions(&request(&[b"d", b"h"], true), &r, 10).unwrap();
        assert_eq!(
            (&derived.start_key[..], &derived.end_key[..]),
            (&b"h"[..], &b"m"[..])
        );
        assert_eq!(
            (&new[0].start_key[..], &new[0].end_key[..]),
            (&b"b"[..], &b"d"[..])
        );
        assert_eq!(
            (&new[1].start_key[..], &new[1].end_key[..]),
            (&b"d"[..], &b"h"[..])
        );
    }

    /// A replica refuses a split entry whose ids are missing, zero,
    /// repeated, or the region's own or one of its peers'.
    #[test]
    fn split_with_bad_ids_is_refused() {
        let r = region(b"b", b"m");
        let refused = |req: &BatchSplitRequest| {
            matches!(split_regions(req, &r, 10), Err(Error::InvalidRequest(_)))
        };
        let good = request(&[b"d", b"f"], false);
        assert!(!refused(&good));
        let mut req = good.clone();
        req.requests[0].new_peer_ids.pop();
        assert!(refused(&req), "too few peer ids");
        let mut req = good.clone();
        req.requests[0].new_region_id = 0;
        assert!(refused(&req), "region id 0");
        let mut req = good.clone();
        req.requests[1].new_peer_ids[0] = 0;
        assert!(refused(&req), "peer id 0");
        let mut req = good.clone();
        req.requests[0].new_peer_ids[1] = req.requests[0].new_peer_ids[0];
        assert!(refused(&req), "one peer id twice");
        let mut req = good.clone();
        req.requests[1].new_region_id = req.requests[0].new_region_id;
        assert!(refused(&req), "one region id twice");
        let mut req = good.clone();
        req.requests[0].new_region_id = r.id;
        assert!(refused(&req), "the parent's id");
        let mut req = good;
        req.requests[1].new_peer_ids[0] = r.peers[0].id;
        assert!(refused(&req), "an existing peer's id");
    }
}
