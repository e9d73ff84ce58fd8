//! [`StoreMeta`]: the store-wide index of which hosted region owns which
//! key range (admin.md §1.7), behind one lock ([`SharedMeta`]).
//!
//! Lifecycle of an entry: a region's range enters when the store opens
//! with it initialized, when a snapshot is admitted for it (reserved at
//! admission, so two pollers cannot admit overlapping snapshots at once,
//! and given back if raft does not install it), or when a split creates
//! it; it changes when a split shrinks its region; it leaves when the peer
//! is destroyed. Uninitialized peers own no range.
//!
//! What reads it: peer creation from a message (a vote for a range some
//! live region here covers is not for this store yet), snapshot admission
//! (a snapshot whose range overlaps another region here is refused), and
//! key lookup for clients whose cache misses.
//!
//! Invariant: the ranges in the index never overlap. Every insertion checks
//! it and refuses (returning the region in the way) rather than break it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_serverpb::RaftMessage;
use fxhash::{FxHashMap, FxHashSet};
use parking_lot::Mutex;

/// The index shared by a store's pollers.
pub type SharedMeta = Arc<Mutex<StoreMeta>>;

/// A range's end key, ordered with the empty (unbounded) end after every
/// other. It shares its bytes with the region's (`Bytes` clones do not
/// copy), so the index costs no key memory of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EndKey(Bytes);

impl Ord for EndKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.0.is_empty(), other.0.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => self.0.cmp(&other.0),
        }
    }
}

impl PartialOrd for EndKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A region's range in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RangeEntry {
    region_id: u64,
    start_key: Bytes,
}

/// Initialized regions of one store by key range.
#[derive(Debug, Default)]
pub struct StoreMeta {
    /// Keyed by each range's end, so the first entry ending after a key is
    /// the only range that may hold it. `ranges[k].start_key < k` for
    /// every entry.
    ranges: BTreeMap<EndKey, RangeEntry>,
    /// Regions a split applied here is creating a peer for: no message
    /// may create another peer of them meanwhile (the split's states are
    /// written and its peer registered after the claim).
    split_claims: FxHashSet<u64>,
    /// The last vote (or pre-vote) per region that arrived for a range a
    /// live region here still covers: most likely from a region split off
    /// it whose split this store has not applied yet. The split hands it
    /// to the new peer, which answers at once instead of an election
    /// timeout later (TiKV's `pending_msgs`). At most
    /// [`PENDING_VOTES_MAX`] regions.
    pending_votes: FxHashMap<u64, RaftMessage>,
    /// Regions whose peer here is being destroyed: until its apply side
    /// has written the tombstone and deleted its data, its range stays
    /// held and no new peer of it is created (by a message or a split).
    destroying: FxHashSet<u64>,
    /// Regions here that a store where they were merged away said so,
    /// with where they went. Its peer waits for this store's peer of the
    /// target, which catches up from its log (asking the source), or for
    /// a snapshot past the merge (which destroys the source; see
    /// [`StoreMeta::superseded_by`]).
    merged: FxHashMap<u64, MergedInto>,
}

/// The region a region here was merged away into, as the merge left it
/// (a store where the merge happened said so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedInto {
    /// The target region.
    pub target: u64,
    /// The target's version right after the merge.
    pub version: u64,
    /// The target's range right after the merge (it holds the source's).
    pub start_key: Bytes,
    /// Its end (empty: unbounded).
    pub end_key: Bytes,
}

impl MergedInto {
    /// `target` as a merge left it.
    pub fn of(target: &Region) -> MergedInto {
        MergedInto {
            target: target.id,
            version: target.region_epoch.map_or(0, |e| e.version),
            start_key: target.start_key.clone(),
            end_key: target.end_key.clone(),
        }
    }
}

/// Regions whose early votes a store keeps (bounded: garbage votes cannot
/// grow it).
pub const PENDING_VOTES_MAX: usize = 4096;

/// `region` widened to cover `other`'s range too (the smallest range
/// holding both; the id and epoch stay `region`'s).
pub fn range_hull(region: &Region, other: &Region) -> Region {
    let mut hull = region.clone();
    hull.start_key = hull.start_key.min(other.start_key.clone());
    if !hull.end_key.is_empty() && (other.end_key.is_empty() || other.end_key > hull.end_key) {
        hull.end_key = other.end_key.clone();
    }
    hull
}

/// Whether the ranges of `a` and `b` overlap or touch (their hull holds
/// no key of neither).
pub fn touches(a: &Region, b: &Region) -> bool {
    let gap_after =
        |left: &Region, right: &Region| !left.end_key.is_empty() && left.end_key < right.start_key;
    !gap_after(a, b) && !gap_after(b, a)
}

/// The bound "ranges ending after `key`" (every range, for the empty key).
fn ending_after(key: &[u8]) -> Bound<EndKey> {
    if key.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(EndKey(Bytes::copy_from_slice(key)))
    }
}

/// Whether a range starting at `start` begins before `end` (empty = none).
fn starts_before(start: &[u8], end: &[u8]) -> bool {
    end.is_empty() || start < end
}

impl StoreMeta {
    /// An empty index.
    pub fn new() -> StoreMeta {
        StoreMeta::default()
    }

    /// The index as shared by pollers.
    pub fn shared(self) -> SharedMeta {
        Arc::new(Mutex::new(self))
    }

    /// How many ranges the index holds.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// The regions whose ranges overlap `[start, end)` (an empty `end` is
    /// unbounded), other than `except`, in key order.
    pub fn overlapping(&self, start: &[u8], end: &[u8], except: u64) -> Vec<u64> {
        // Ranges ending after `start` (an end equal to it is exclusive).
        self.ranges
            .range((ending_after(start), Bound::Unbounded))
            .take_while(|(_, e)| starts_before(&e.start_key, end))
            .map(|(_, e)| e.region_id)
            .filter(|&id| id != except)
            .collect()
    }

    /// The region whose range holds `key`, if one here does.
    pub fn locate(&self, key: &[u8]) -> Option<u64> {
        self.ranges
            .range((ending_after(key), Bound::Unbounded))
            .next()
            .filter(|(_, e)| &e.start_key[..] <= key)
            .map(|(_, e)| e.region_id)
    }

    /// Records that `region` owns its range, replacing the range `old` of
    /// the same region (if given and still recorded).
    ///
    /// # Errors
    /// The first other region in the way; the index is then unchanged.
    pub fn set(&mut self, old: Option<&Region>, region: &Region) -> Result<(), u64> {
        if let Some(&other) = self
            .overlapping(&region.start_key, &region.end_key, region.id)
            .first()
        {
            return Err(other);
        }
        if let Some(old) = old {
            self.remove(old);
        }
        self.ranges.insert(
            EndKey(region.end_key.clone()),
            RangeEntry {
                region_id: region.id,
                start_key: region.start_key.clone(),
            },
        );
        Ok(())
    }

    /// Claims region `region_id` for a split that creates its peer here.
    pub fn claim_for_split(&mut self, region_id: u64) {
        self.split_claims.insert(region_id);
    }

    /// The split's peer of `region_id` is registered (or will not be).
    pub fn release_split_claim(&mut self, region_id: u64) {
        self.split_claims.remove(&region_id);
    }

    /// Whether a split is creating the peer of `region_id` here.
    pub fn claimed_by_split(&self, region_id: u64) -> bool {
        self.split_claims.contains(&region_id)
    }

    /// Region `source` was merged into `target` (as the merge left it).
    pub fn note_merged(&mut self, source: u64, target: &Region) {
        self.merged.insert(source, MergedInto::of(target));
    }

    /// What region `source` was merged into, if this store heard.
    pub fn merged_into(&self, source: u64) -> Option<&MergedInto> {
        self.merged.get(&source)
    }

    /// Whether a region here other than `source` may still apply the
    /// merge of `source` into `m.target` from its log, or create a peer of
    /// the target that would: a split is creating the target's peer, or a
    /// live region whose range meets the target's merged range is older
    /// than the merge (a lower version: the versions of the regions
    /// covering a key only grow, a split and a merge each leaving one past
    /// those before, so only the target's own older self or a region that
    /// may still split it off can be). A region merged away itself counts
    /// only while something here may still apply its own merge (the same
    /// question, asked again for it): that CommitMerge commits its log's
    /// tail, splits included; without one nothing does (its peers
    /// elsewhere are gone). `at`: a region about to take a snapshot,
    /// counted at the snapshot's version. `live_version` reads a region's
    /// version from its state here: `Ok(None)` without a live one; an
    /// error counts as older.
    pub fn may_apply_merge<E>(
        &self,
        source: u64,
        m: &MergedInto,
        at: Option<(u64, u64)>,
        live_version: impl Fn(u64) -> Result<Option<u64>, E>,
    ) -> bool {
        self.may_apply_merge_seen(source, m, at, &live_version, &mut vec![source])
    }

    /// [`StoreMeta::may_apply_merge`], with the sources already asked
    /// about (`seen`: a chain of merges here is asked about once per
    /// source; one seen again does not count).
    fn may_apply_merge_seen<E>(
        &self,
        source: u64,
        m: &MergedInto,
        at: Option<(u64, u64)>,
        live_version: &impl Fn(u64) -> Result<Option<u64>, E>,
        seen: &mut Vec<u64>,
    ) -> bool {
        if self.split_claims.contains(&m.target) {
            return true;
        }
        let older = |r: u64| match at {
            Some((id, version)) if id == r => version < m.version,
            _ => live_version(r).map_or(true, |v| v.is_some_and(|v| v < m.version)),
        };
        self.overlapping(&m.start_key, &m.end_key, source)
            .into_iter()
            .any(|r| {
                if !older(r) {
                    return false;
                }
                let Some(own) = self.merged.get(&r) else {
                    return true;
                };
                if seen.contains(&r) {
                    return false;
                }
                seen.push(r);
                self.may_apply_merge_seen(r, own, at, live_version, seen)
            })
    }

    /// The regions in the way of a snapshot of `snapshot` here that may go
    /// first, each with the target it was merged into: those merged away
    /// before the snapshot's state (at or before its version) into the
    /// snapshot's own region (whose peer here then jumps past the merge),
    /// or into another region when, with the snapshot's region counted at
    /// the snapshot's version, nothing else here may still apply that
    /// merge ([`StoreMeta::may_apply_merge`]). The others in the way (if
    /// any) stay; with this list empty the snapshot is refused for them.
    pub fn superseded_by<E>(
        &self,
        snapshot: &Region,
        live_version: impl Fn(u64) -> Result<Option<u64>, E>,
    ) -> Vec<(u64, u64)> {
        let version = snapshot.region_epoch.map_or(0, |e| e.version);
        self.overlapping(&snapshot.start_key, &snapshot.end_key, snapshot.id)
            .into_iter()
            .filter_map(|r| {
                let m = self.merged.get(&r)?;
                let past = version >= m.version
                    && (m.target == snapshot.id
                        || !self.may_apply_merge(
                            r,
                            m,
                            Some((snapshot.id, version)),
                            &live_version,
                        ));
                past.then_some((r, m.target))
            })
            .collect()
    }

    /// The peer of `region_id` here is being destroyed (see `destroying`).
    pub fn start_destroy(&mut self, region_id: u64) {
        self.destroying.insert(region_id);
    }

    /// The destroyed peer of `region_id` is cleared from the engine.
    pub fn finish_destroy(&mut self, region_id: u64) {
        self.destroying.remove(&region_id);
        self.merged.remove(&region_id);
    }

    /// Whether the peer of `region_id` here is being destroyed.
    pub fn is_destroying(&self, region_id: u64) -> bool {
        self.destroying.contains(&region_id)
    }

    /// Keeps `msg`, a vote for region `region_id` that came before this
    /// store's peer of it (see `pending_votes`). Returns whether it was
    /// kept (always: a full table is emptied first).
    pub fn keep_early_vote(&mut self, region_id: u64, msg: RaftMessage) -> bool {
        if self.pending_votes.len() >= PENDING_VOTES_MAX
            && !self.pending_votes.contains_key(&region_id)
        {
            // Full of votes for regions that never came (this store was
            // removed from them, or garbage): start over. A vote lost
            // here costs its region an election timeout, nothing more.
            self.pending_votes.clear();
        }
        self.pending_votes.insert(region_id, msg);
        true
    }

    /// The early vote kept for region `region_id`, if any (taken).
    pub fn take_early_vote(&mut self, region_id: u64) -> Option<RaftMessage> {
        self.pending_votes.remove(&region_id)
    }

    /// Removes `region`'s range if the index records it for that region.
    /// Returns whether it did.
    pub fn remove(&mut self, region: &Region) -> bool {
        let k = EndKey(region.end_key.clone());
        let ours = self
            .ranges
            .get(&k)
            .is_some_and(|e| e.region_id == region.id && e.start_key[..] == region.start_key[..]);
        if ours {
            self.ranges.remove(&k);
        }
        ours
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u64, start: &[u8], end: &[u8]) -> Region {
        Region {
            id,
            start_key: Bytes::copy_from_slice(start),
            end_key: Bytes::copy_from_slice(end),
            ..Default::default()
        }
    }

    /// Ranges touch when they overlap or meet; a key between them (or an
    /// unbounded end) decides.
    #[test]
    fn ranges_touch_when_no_key_lies_between() {
        assert!(touches(&region(1, b"a", b"m"), &region(2, b"m", b"t")));
        assert!(touches(&region(1, b"a", b"m"), &region(2, b"c", b"d")));
        assert!(!touches(&region(1, b"m", b""), &region(2, b"", b"a")));
        assert!(!touches(&region(1, b"a", b"c"), &region(2, b"d", b"")));
        assert!(!touches(&region(1, b"x", b""), &region(2, b"a", b"c")));
        assert!(touches(&region(1, b"", b""), &region(2, b"q", b"r")));
    }

    fn meta(regions: &[Region]) -> StoreMeta {
        let mut m = StoreMeta::new();
        for r in regions {
            m.set(None, r).unwrap();
        }
        m
    }

    fn at_version(mut r: Region, version: u64) -> Region {
        r.region_epoch = Some(flotilla_proto::metapb::RegionEpoch {
            version,
            conf_ver: 1,
        });
        r
    }

    /// Live versions for `may_apply_merge` / `superseded_by`.
    fn versions(v: &[(u64, u64)]) -> impl Fn(u64) -> Result<Option<u64>, ()> + '_ {
        move |r| Ok(v.iter().find(|(id, _)| *id == r).map(|(_, v)| *v))
    }

    /// Session 15's reviews: who may still apply a merge here. S (11) went
    /// into T (20) = [b, e) at version 3. An older live region meeting
    /// T's range counts (it may split T off: seed 18's case), and so does
    /// T's own older self; a region at or past 3 does not; a region merged
    /// away itself counts only while its own target lives here; a split
    /// creating T counts.
    #[test]
    fn who_may_still_apply_a_merge() {
        let m = MergedInto::of(&at_version(region(20, b"b", b"e"), 3));
        let parent = meta(&[region(10, b"a", b"c"), region(11, b"c", b"e")]);
        assert!(parent.may_apply_merge(11, &m, None, versions(&[(10, 1), (11, 1)])));
        assert!(!parent.may_apply_merge(11, &m, None, versions(&[(10, 4), (11, 1)])));
        assert!(
            !parent.may_apply_merge(11, &m, Some((10, 4)), versions(&[(10, 1)])),
            "counted at its snapshot's version"
        );
        let own_older_self = meta(&[region(20, b"b", b"c"), region(11, b"c", b"e")]);
        assert!(own_older_self.may_apply_merge(11, &m, None, versions(&[(20, 2)])));
        // P (10) merged away itself into W (40) = ["", c): it counts only
        // while something here may still apply that merge (W's older self
        // here), recursively (the third review's chain: T merged into a U
        // that an older P here may still split off).
        let mut merged_parent = meta(&[
            region(40, b"", b"a"),
            region(10, b"a", b"c"),
            region(11, b"c", b"e"),
        ]);
        merged_parent.note_merged(10, &at_version(region(40, b"", b"c"), 9));
        let live = [(40, 2), (10, 1), (11, 1)];
        assert!(merged_parent.may_apply_merge(11, &m, None, versions(&live)));
        let mut no_w = meta(&[region(10, b"a", b"c"), region(11, b"c", b"e")]);
        no_w.note_merged(10, &at_version(region(40, b"", b"c"), 9));
        assert!(
            !no_w.may_apply_merge(11, &m, None, versions(&live)),
            "nothing here applies its own merge: nothing commits its log"
        );
        let mut chain = meta(&[
            region(10, b"a", b"c"),
            region(12, b"c", b"d"),
            region(11, b"d", b"e"),
        ]);
        let into_t = MergedInto::of(&at_version(region(12, b"c", b"e"), 3));
        chain.note_merged(11, &at_version(region(12, b"c", b"e"), 3));
        chain.note_merged(12, &at_version(region(30, b"b", b"e"), 5));
        let live = [(10, 1), (12, 2), (11, 1)];
        assert!(
            chain.may_apply_merge(11, &into_t, None, versions(&live)),
            "P may split U off, U applies T's merge, T then applies S's"
        );
        let mut alone = meta(&[region(11, b"c", b"e")]);
        assert!(!alone.may_apply_merge(11, &m, None, versions(&[])));
        alone.claim_for_split(20);
        assert!(alone.may_apply_merge(11, &m, None, versions(&[])));
    }

    /// Session 15's reviews: a snapshot past a merge supersedes its source
    /// when nothing else here may still apply the merge. S (11) went into
    /// T (20) = [b, e) at 3; T later went into P (10) = [a, e) at 4, or T
    /// split and P took [b, f) at 5. P's snapshot at 4 (or 5) supersedes
    /// S (before, S waited for a T that never came here and P's snapshot
    /// was refused for good); one older than the merge does not, nor one
    /// of another region while P's stale self here may still split T off.
    #[test]
    fn a_snapshot_past_a_merge_supersedes_its_source() {
        let mut m = meta(&[region(10, b"a", b"c"), region(11, b"c", b"e")]);
        m.note_merged(11, &at_version(region(20, b"b", b"e"), 3));
        let live = [(10, 1), (11, 1)];
        let snap = |id, start: &[u8], end: &[u8], v| at_version(region(id, start, end), v);
        assert_eq!(
            m.superseded_by(&snap(10, b"a", b"e", 4), versions(&live)),
            vec![(11, 20)]
        );
        assert_eq!(
            m.superseded_by(&snap(10, b"a", b"d", 5), versions(&live)),
            vec![(11, 20)],
            "covering part of T's range is enough once P is past the merge"
        );
        assert!(
            m.superseded_by(&snap(10, b"a", b"e", 2), versions(&live))
                .is_empty(),
            "older than the merge"
        );
        assert!(
            m.superseded_by(&snap(30, b"d", b"e", 9), versions(&live))
                .is_empty(),
            "P's stale self may still split T off"
        );
        // T's own snapshot at or past the merge: its peer here jumps past.
        assert_eq!(
            m.superseded_by(&snap(20, b"c", b"e", 3), versions(&live)),
            vec![(11, 20)]
        );
        // Nothing merged in the way.
        assert!(
            m.superseded_by(&snap(50, b"", b"b", 9), versions(&live))
                .is_empty()
        );
    }

    /// Overlap is half-open on both sides; an empty end is unbounded.
    #[test]
    fn overlapping_ranges_are_found_and_ends_are_exclusive() {
        let m = meta(&[
            region(1, b"", b"b"),
            region(2, b"d", b"f"),
            region(3, b"k", b""),
        ]);
        assert_eq!(m.overlapping(b"a", b"b", 0), vec![1]);
        assert_eq!(m.overlapping(b"b", b"d", 0), Vec::<u64>::new());
        assert_eq!(m.overlapping(b"b", b"e", 0), vec![2]);
        assert_eq!(m.overlapping(b"e", b"", 0), vec![2, 3]);
        assert_eq!(m.overlapping(b"", b"", 0), vec![1, 2, 3]);
        assert_eq!(m.overlapping(b"", b"", 2), vec![1, 3]);
        assert_eq!(m.overlapping(b"f", b"k", 0), Vec::<u64>::new());
        assert_eq!(m.overlapping(b"z", b"", 0), vec![3]);
    }

    /// A key is located in the one range holding it, or nowhere.
    #[test]
    fn keys_are_located_in_their_range() {
        let m = meta(&[
            region(1, b"", b"b"),
            region(2, b"d", b"f"),
            region(3, b"k", b""),
        ]);
        assert_eq!(m.locate(b""), Some(1));
        assert_eq!(m.locate(b"a"), Some(1));
        assert_eq!(m.locate(b"b"), None);
        assert_eq!(m.locate(b"d"), Some(2));
        assert_eq!(m.locate(b"f"), None);
        assert_eq!(m.locate(b"k"), Some(3));
        assert_eq!(m.locate(b"zzz"), Some(3));
    }

    /// An overlapping insertion is refused and changes nothing; a region
    /// replaces its own old range (a split shrinking it).
    #[test]
    fn overlaps_are_refused_and_regions_replace_their_own_range() {
        let mut m = meta(&[region(1, b"a", b"m")]);
        assert_eq!(m.set(None, &region(2, b"c", b"d")), Err(1));
        assert_eq!(m.len(), 1);
        // Region 1 shrinks to [a, c) and region 2 takes [c, m).
        m.set(Some(&region(1, b"a", b"m")), &region(1, b"a", b"c"))
            .unwrap();
        m.set(None, &region(2, b"c", b"m")).unwrap();
        assert_eq!(m.locate(b"b"), Some(1));
        assert_eq!(m.locate(b"c"), Some(2));
        // Removing a range recorded for another region does nothing.
        assert!(!m.remove(&region(3, b"c", b"m")));
        assert!(m.remove(&region(2, b"c", b"m")));
        assert_eq!(m.locate(b"c"), None);
        assert_eq!(m.len(), 1);
    }
}
