//! Small helpers shared by the store's modules.

use flotilla_engine::{Cf, WriteBatch, keys};
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{RaftCmdResponse, RaftResponseHeader};

use super::error::{Error, Result};

/// Whether `key` lies in `[region.start_key, region.end_key)` (an empty end
/// key is unbounded).
pub fn key_in_region(key: &[u8], region: &Region) -> bool {
    key >= &region.start_key[..] && (region.end_key.is_empty() || key < &region.end_key[..])
}

/// [`Error::KeyNotInRegion`] unless `key` lies in `region`.
///
/// # Errors
/// As described.
pub fn check_key_in_region(key: &[u8], region: &Region) -> Result<()> {
    if key_in_region(key, region) {
        Ok(())
    } else {
        Err(Error::KeyNotInRegion {
            key: key.to_vec(),
            region_id: region.id,
            start_key: region.start_key.to_vec(),
            end_key: region.end_key.to_vec(),
        })
    }
}

/// A response carrying only `e`.
pub fn err_response(e: Error) -> RaftCmdResponse {
    RaftCmdResponse {
        header: Some(RaftResponseHeader {
            error: Some(e.to_proto()),
            ..Default::default()
        }),
        responses: Vec::new(),
        admin_response: None,
    }
}

/// The error in `resp`'s header, if any.
pub fn response_error(resp: &RaftCmdResponse) -> Option<Error> {
    resp.header
        .as_ref()
        .and_then(|h| h.error.clone())
        .map(Error::from_proto)
}

/// The parts of `range`'s keys that none of `owned` covers, in key order,
/// each as a region with only its keys set (`owned` may be in any order;
/// an empty end key is +inf).
pub fn uncovered_parts(range: &Region, owned: &[Region]) -> Vec<Region> {
    let part = |start: &bytes::Bytes, end: &bytes::Bytes| Region {
        id: range.id,
        start_key: start.clone(),
        end_key: end.clone(),
        ..Default::default()
    };
    // A range starting at `start` begins before `end` (empty = +inf).
    let before = |start: &[u8], end: &[u8]| end.is_empty() || start < end;
    let mut sorted: Vec<&Region> = owned
        .iter()
        .filter(|r| before(&r.start_key, &range.end_key) && before(&range.start_key, &r.end_key))
        .collect();
    sorted.sort_by(|a, b| a.start_key.cmp(&b.start_key));
    let mut parts = Vec::new();
    let mut cursor = range.start_key.clone();
    for r in sorted {
        if r.start_key > cursor {
            parts.push(part(&cursor, &r.start_key));
        }
        if r.end_key.is_empty() {
            return parts;
        }
        if r.end_key > cursor {
            cursor = r.end_key.clone();
        }
    }
    if before(&cursor, &range.end_key) {
        parts.push(part(&cursor, &range.end_key));
    }
    parts
}

/// Puts the deletion of every data key in `region`'s range into `wb`
/// (nothing for an empty range).
///
/// # Errors
/// The engine's refusal of the range.
pub fn clear_data_range(wb: &mut WriteBatch, region: &Region) -> flotilla_engine::Result<()> {
    let (start, end) = (
        keys::data_key(&region.start_key),
        keys::data_end_key(&region.end_key),
    );
    if start < end {
        wb.delete_range(Cf::Default, &start, &end)?;
    }
    Ok(())
}

/// The version of region `region_id` as its state in `engine` says, if
/// the state is a live one (not a tombstone, with a region).
///
/// # Errors
/// Engine reads.
pub(crate) fn live_version(
    engine: &flotilla_engine::Engine,
    region_id: u64,
) -> Result<Option<u64>> {
    use flotilla_proto::raft_serverpb::{PeerState, RegionLocalState};
    Ok(engine
        .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(region_id))?
        .filter(|s| s.state() != PeerState::Tombstone)
        .and_then(|s| s.region)
        .map(|r| r.region_epoch.map_or(0, |e| e.version)))
}

/// A failpoint of the tests that fires on every store, or only on the
/// store its `return(store_id)` action names; always false without the
/// `failpoints` feature.
pub(crate) fn failpoint_on_store(name: &str, store_id: u64) -> bool {
    let _ = (name, store_id); // unused without the feature
    fail::fail_point!(name, |on: Option<String>| on
        .is_none_or(|s| s == store_id.to_string()));
    false
}

#[cfg(test)]
mod range_tests {
    use bytes::Bytes;

    use super::*;

    fn r(start: &'static [u8], end: &'static [u8]) -> Region {
        Region {
            start_key: Bytes::from_static(start),
            end_key: Bytes::from_static(end),
            ..Default::default()
        }
    }

    fn keys(parts: &[Region]) -> Vec<(&[u8], &[u8])> {
        parts
            .iter()
            .map(|p| (&p.start_key[..], &p.end_key[..]))
            .collect()
    }

    /// The keys a tombstone's range still holds that no live region owns:
    /// gaps between owned ranges, bounded and unbounded ends alike.
    #[test]
    fn uncovered_parts_are_the_gaps() {
        let whole = r(b"", b"");
        assert_eq!(
            keys(&uncovered_parts(&whole, &[])),
            vec![(&b""[..], &b""[..])]
        );
        assert_eq!(
            keys(&uncovered_parts(&whole, &[r(b"m", b"t"), r(b"c", b"f")])),
            vec![
                (&b""[..], &b"c"[..]),
                (&b"f"[..], &b"m"[..]),
                (&b"t"[..], &b""[..])
            ]
        );
        assert!(uncovered_parts(&r(b"c", b"m"), &[r(b"a", b"")]).is_empty());
        assert_eq!(
            keys(&uncovered_parts(
                &r(b"c", b"m"),
                &[r(b"a", b"e"), r(b"k", b"z")]
            )),
            vec![(&b"e"[..], &b"k"[..])]
        );
        assert_eq!(
            keys(&uncovered_parts(
                &r(b"c", b"m"),
                &[r(b"m", b"z"), r(b"a", b"c")]
            )),
            vec![(&b"c"[..], &b"m"[..])],
            "touching ranges own nothing of it"
        );
    }
}
