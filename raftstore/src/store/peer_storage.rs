//! [`PeerStorage`]: the consensus core's [`Storage`] on the store's RocksDB,
//! with the key layout of DESIGN §3 and an entry cache for the hot tail.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

use flotilla_engine::{Cf, Engine, WriteBatch, keys};
use flotilla_proto::eraftpb::{ConfState, Entry, HardState, Snapshot};
use flotilla_proto::metapb::{PeerRole, Region};
use flotilla_proto::raft_serverpb::{
    MergeState, PeerState, RaftApplyState, RaftLocalState, RaftTruncatedState, RegionLocalState,
};
use prost::Message as _;

use super::snapshot::{GenSlot, snapshot_apply_state, snapshot_index, snapshot_meta};
use crate::raft::{self, RaftState, Storage, StorageError};

/// The term and index every bootstrapped region's log starts at. Every store
/// writes the same initial states, so all peers of a new region agree on a
/// log prefix `[.., RAFT_INIT_LOG_INDEX]` without exchanging entries.
pub const RAFT_INIT_LOG_TERM: u64 = 5;
/// See [`RAFT_INIT_LOG_TERM`].
pub const RAFT_INIT_LOG_INDEX: u64 = 5;
/// Entries kept in the in-memory tail cache at most.
pub const ENTRY_CACHE_CAPACITY: usize = 1024;

/// The membership of `region` as a raft [`ConfState`]. A region with an
/// incoming or demoting voter is in a joint configuration: the outgoing
/// half is every voter and demoting voter.
pub fn conf_state_from_region(region: &Region) -> ConfState {
    let mut cs = ConfState::default();
    let mut joint = false;
    for p in &region.peers {
        match p.role() {
            PeerRole::Voter => cs.voters.push(p.id),
            PeerRole::Learner => cs.learners.push(p.id),
            PeerRole::IncomingVoter => {
                joint = true;
                cs.voters.push(p.id);
            }
            PeerRole::DemotingVoter => {
                joint = true;
                cs.learners_next.push(p.id);
            }
        }
    }
    if joint {
        // A joint configuration is left as soon as possible: by whichever
        // leader finds itself in one (after a restart too).
        cs.auto_leave = true;
        cs.voters_outgoing = region
            .peers
            .iter()
            .filter(|p| matches!(p.role(), PeerRole::Voter | PeerRole::DemotingVoter))
            .map(|p| p.id)
            .collect();
    }
    cs
}

/// Why a region's persisted state could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine failed to read or decode a state.
    #[error(transparent)]
    Engine(#[from] flotilla_engine::Error),
    /// The persisted states contradict each other.
    #[error("region {region_id}: corrupt raft state: {what}")]
    Corrupt {
        /// The region.
        region_id: u64,
        /// What is wrong.
        what: String,
    },
}

impl From<LoadError> for super::error::Error {
    fn from(e: LoadError) -> Self {
        super::error::Error::Engine(e.to_string())
    }
}

/// `PeerStorage::prev_tail` when no entry is remembered (no log entry has
/// index 0).
const NO_PREV_TAIL: (u64, u64) = (0, 0);

/// An error of the engine, wrapped for the consensus core.
fn other(e: flotilla_engine::Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// A region's durable raft state on this store.
///
/// Invariants: the log holds `[truncated.index + 1, raft_state.last_index]`;
/// `cache` is a contiguous suffix of that log (`cache[i]` has index
/// `cache[0].index + i`); `last_term` is the term of `last_index`;
/// `prev_tail`, unless it is `NO_PREV_TAIL`, is the index and term of an
/// entry of the log at or below `last_index`; the engine holds no log entry below
/// `deleted_below`.
#[derive(Debug)]
pub struct PeerStorage {
    engine: Engine,
    region: Region,
    raft_state: RaftLocalState,
    apply_state: RaftApplyState,
    last_term: u64,
    /// The last entry before the latest append (its index and term), so
    /// that the term a leader's next append asks for (`prev_log_term` of
    /// the entry after it) needs no read even when the cache is empty, as
    /// it is after hibernation. Cleared when an append overwrites it or a
    /// snapshot replaces the log. A pair, not an `Option`: the 8 bytes
    /// saved keep `PeerFsm` in its allocation class.
    prev_tail: (u64, u64),
    cache: VecDeque<Entry>,
    /// Compacted entries in `[deleted_below, truncated.index + 1)` may
    /// still be in the engine: [`PeerStorage::delete_compacted`] deletes
    /// them (only after the apply state that compacted them was written).
    deleted_below: u64,
    /// An engine failure behind a read of the core (see `take_read_error`).
    /// A `RefCell`: the storage belongs to one peer, polled by one thread
    /// at a time, and the check runs every round.
    read_error: RefCell<Option<String>>,
    /// A leader's snapshot generation (boxed: most peers never have one).
    /// A `RefCell` for the same reason as `read_error`.
    snap_gen: RefCell<Option<Box<SnapGen>>>,
    /// A received snapshot is persisted (the region is `Applying`) and not
    /// yet written into the engine: the data range is not the applied
    /// index's, so no read may be served.
    applying_snapshot: bool,
    /// The region is `Merging` (a PrepareMerge applied): no snapshot of it
    /// is generated, its log is not compacted, and it takes no command but
    /// the merge's end (boxed: rare).
    merge_state: Option<Box<MergeState>>,
}

/// Where a leader's snapshot generation stands.
#[derive(Debug)]
enum SnapGen {
    /// The core asked for a snapshot; the poller has not scheduled it yet.
    Wanted(Arc<GenSlot>),
    /// The snapshot worker is generating it.
    Running(Arc<GenSlot>),
    /// Generated; handed out as long as it is not older than the log.
    Ready(Snapshot),
}

impl PeerStorage {
    /// Loads region `region.id`'s raft and apply states from `engine`. A
    /// region without persisted raft state (a peer created by a message,
    /// waiting for a snapshot) starts empty at index 0.
    ///
    /// The persisted commit index may lag the applied index (a commit
    /// index is written only with the next entries or term, never on its
    /// own); it is forwarded to the applied index, which
    /// only ever covers committed entries that are in the log (the apply
    /// write follows the log write in the WAL).
    ///
    /// # Errors
    /// [`flotilla_engine::Error`] for read or decode failures, and
    /// [`LoadError::Corrupt`] for states that contradict each other
    /// (truncated > applied, applied > last index, a missing last entry).
    pub fn load(engine: Engine, region: Region) -> Result<PeerStorage, LoadError> {
        let mut raft_state: RaftLocalState = engine
            .get_msg(Cf::Raft, &keys::raft_state_key(region.id))?
            .unwrap_or_default();
        let mut apply_state: RaftApplyState = engine
            .get_msg(Cf::Raft, &keys::apply_state_key(region.id))?
            .unwrap_or_default();
        let region_state: Option<RegionLocalState> =
            engine.get_msg(Cf::Raft, &keys::region_state_key(region.id))?;
        // A snapshot being written into the engine: the log and raft state
        // are the snapshot's, and so is the apply state (the apply side may
        // have written an older one after it; the snapshot is written
        // again at start, see `applying_snapshot`).
        let applying = region_state
            .as_ref()
            .filter(|s| s.state() == PeerState::Applying)
            .and_then(|s| s.applying_snapshot);
        if let Some(snap) = applying {
            apply_state = snapshot_apply_state(snap.index, snap.term);
        }
        let region_id = region.id;
        let corrupt = |what: String| LoadError::Corrupt { region_id, what };
        let truncated = apply_state.truncated_state.unwrap_or_default().index;
        let applied = apply_state.applied_index;
        if truncated > applied {
            return Err(corrupt(format!(
                "truncated index {truncated} > applied index {applied}"
            )));
        }
        if applied > raft_state.last_index {
            return Err(corrupt(format!(
                "applied index {applied} > last log index {}",
                raft_state.last_index
            )));
        }
        if let Some(hs) = raft_state.hard_state.as_mut()
            && hs.commit < applied
        {
            hs.commit = applied;
        }
        let mut storage = PeerStorage {
            engine,
            region,
            raft_state,
            apply_state,
            last_term: 0,
            prev_tail: NO_PREV_TAIL,
            cache: VecDeque::new(),
            deleted_below: 0,
            read_error: RefCell::new(None),
            snap_gen: RefCell::new(None),
            applying_snapshot: applying.is_some(),
            merge_state: region_state
                .as_ref()
                .filter(|s| s.state() == PeerState::Merging)
                .and_then(|s| s.merge_state.clone())
                .map(Box::new),
        };
        storage.deleted_below = storage.find_compacted_leftover()?;
        storage.last_term = storage.load_last_term()?;
        if storage.last_term == 0 && storage.raft_state.last_index > 0 {
            return Err(corrupt(format!(
                "last log entry {} is missing",
                storage.raft_state.last_index
            )));
        }
        Ok(storage)
    }

    /// Where the entries compacted before a restart are known deleted from:
    /// a crash between a compaction's apply write and the deletion leaves
    /// the entry at the truncated index in the engine (the deletion takes
    /// the whole compacted range in one write), and then everything below
    /// it is deleted with this peer's first write. A log never compacted
    /// (truncated at the bootstrap index) has nothing below.
    fn find_compacted_leftover(&self) -> Result<u64, flotilla_engine::Error> {
        let truncated = self.truncated().index;
        if truncated <= RAFT_INIT_LOG_INDEX {
            return Ok(truncated + 1);
        }
        let key = keys::raft_log_key(self.region.id, truncated);
        Ok(if self.engine.get(Cf::Raft, &key)?.is_some() {
            0
        } else {
            truncated + 1
        })
    }

    /// Puts the deletion of the compacted entries still in the engine into
    /// `wb`. Returns whether there were any. The caller writes `wb` after
    /// the apply state that compacted them (one engine, one WAL: if the
    /// deletion survives a crash, so does that state).
    pub fn delete_compacted(&mut self, wb: &mut WriteBatch) -> bool {
        let below = self.truncated().index + 1;
        if self.deleted_below >= below {
            return false;
        }
        let (lo, hi) = keys::raft_log_range(self.region.id, self.deleted_below, below);
        // Non-empty: `deleted_below < below`.
        let res = wb.delete_range(Cf::Raft, &lo, &hi);
        debug_assert!(res.is_ok(), "{res:?}");
        self.deleted_below = below;
        true
    }

    fn load_last_term(&self) -> Result<u64, flotilla_engine::Error> {
        let last = self.raft_state.last_index;
        if last == self.truncated().index {
            return Ok(self.truncated().term);
        }
        let entry: Option<Entry> = self
            .engine
            .get_msg(Cf::Raft, &keys::raft_log_key(self.region.id, last))?;
        Ok(entry.map_or(0, |e| e.term))
    }

    /// The snapshot being written into the engine ((index, term)), if the
    /// region is `Applying`.
    pub fn applying_snapshot(&self) -> Option<(u64, u64)> {
        self.applying_snapshot
            .then(|| (self.truncated().index, self.truncated().term))
    }

    /// The merge state while the region is `Merging`.
    pub fn merge_state(&self) -> Option<&MergeState> {
        self.merge_state.as_deref()
    }

    /// The region became `Merging` (`Some`) or `Normal` again (a rollback).
    pub fn set_merge_state(&mut self, state: Option<MergeState>) {
        self.merge_state = state.map(Box::new);
    }

    /// The apply side wrote the snapshot: the region is `Normal` again.
    pub fn snapshot_applied(&mut self) {
        self.applying_snapshot = false;
    }

    /// Persists a received snapshot at (`index`, `term`) of `region` into
    /// `wb` (step 4 of `snapshot`): the region `Applying`, the apply state
    /// at the snapshot, the whole old log deleted; the raft state follows
    /// with the Ready's hard state. The caller hands the snapshot to the
    /// apply side once `wb` is written.
    pub fn persist_snapshot(&mut self, index: u64, term: u64, region: Region, wb: &mut WriteBatch) {
        let region_id = self.region.id;
        let end = self.raft_state.last_index.max(index) + 1;
        let (lo, hi) = keys::raft_log_range(region_id, self.deleted_below.min(end), end);
        if lo < hi {
            let res = wb.delete_range(Cf::Raft, &lo, &hi);
            debug_assert!(res.is_ok(), "{res:?}");
        }
        // An initialized peer whose bounds the snapshot moves: its old
        // range is cleared with the snapshot (recorded for a restart).
        let old = &self.region;
        let moved = !old.peers.is_empty()
            && (old.start_key != region.start_key || old.end_key != region.end_key);
        let mut state = RegionLocalState {
            region: Some(region.clone()),
            applying_snapshot: Some(RaftTruncatedState { index, term }),
            applying_old_range: moved.then(|| Region {
                id: old.id,
                start_key: old.start_key.clone(),
                end_key: old.end_key.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        state.set_state(PeerState::Applying);
        wb.put_msg(Cf::Raft, &keys::region_state_key(region_id), &state);
        // From here on this peer applies the log from the snapshot's
        // epoch (see `keys::apply_origin_key`).
        wb.put_msg(
            Cf::Raft,
            &keys::apply_origin_key(region_id),
            &region.region_epoch.unwrap_or_default(),
        );
        self.apply_state = snapshot_apply_state(index, term);
        wb.put_msg(
            Cf::Raft,
            &keys::apply_state_key(region_id),
            &self.apply_state,
        );
        self.raft_state.last_index = index;
        self.last_term = term;
        self.prev_tail = NO_PREV_TAIL;
        self.cache.clear();
        self.deleted_below = index + 1;
        self.region = region;
        self.applying_snapshot = true;
        // Only a leader that is not merging sends snapshots: one that
        // reaches a merging peer says the merge was rolled back.
        self.merge_state = None;
        *self.snap_gen.borrow_mut() = None;
    }

    /// The generation the core asked for since the last call, for the
    /// poller to schedule on the snapshot worker (its outcome goes into
    /// the returned slot).
    pub fn take_snapshot_wanted(&self) -> Option<Arc<GenSlot>> {
        let mut state = self.snap_gen.borrow_mut();
        let Some(SnapGen::Wanted(slot)) = state.as_deref() else {
            return None;
        };
        let slot = slot.clone();
        *state = Some(Box::new(SnapGen::Running(slot.clone())));
        Some(slot)
    }

    /// The region this storage belongs to.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Replaces the region (after a conf change, split or merge applied).
    pub fn set_region(&mut self, region: Region) {
        self.region = region;
    }

    /// The persisted raft state (as of the last [`PeerStorage::append`]).
    pub fn raft_state(&self) -> &RaftLocalState {
        &self.raft_state
    }

    /// The apply state last reported by the apply side.
    pub fn apply_state(&self) -> &RaftApplyState {
        &self.apply_state
    }

    /// Records the apply state the apply side persisted. A truncated
    /// state that moved compacts the log: entries at or below it are gone
    /// from the cache at once and from the engine with the next
    /// [`PeerStorage::delete_compacted`].
    pub fn set_apply_state(&mut self, state: RaftApplyState) {
        self.apply_state = state;
        self.compact_cache_to(self.truncated().index);
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.apply_state.applied_index
    }

    /// Whether the peer has a log (false for a peer waiting for a snapshot).
    pub fn is_initialized(&self) -> bool {
        !self.region.peers.is_empty()
    }

    fn truncated(&self) -> RaftTruncatedState {
        self.apply_state.truncated_state.unwrap_or_default()
    }

    /// Adds `entries` (contiguous, from the consensus core's `Ready`) to the
    /// log in `wb`, deleting any old entries past the new last index, and
    /// updates the in-memory state. The caller writes `wb` and must not
    /// report the entries persisted before that write is durable.
    pub fn append(&mut self, entries: &[Entry], wb: &mut WriteBatch) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        let region_id = self.region.id;
        for e in entries {
            wb.put_msg(Cf::Raft, &keys::raft_log_key(region_id, e.index), e);
        }
        let prev_last = self.raft_state.last_index;
        if last.index < prev_last {
            let (lo, hi) = keys::raft_log_range(region_id, last.index + 1, prev_last + 1);
            // `last.index < prev_last`: the range is non-empty, so the
            // engine takes it.
            let res = wb.delete_range(Cf::Raft, &lo, &hi);
            debug_assert!(res.is_ok(), "{res:?}");
        }
        if first.index == prev_last + 1 {
            self.prev_tail = (prev_last, self.last_term);
        } else if self.prev_tail.0 >= first.index {
            self.prev_tail = NO_PREV_TAIL;
        }
        self.raft_state.last_index = last.index;
        self.last_term = last.term;
        // Keep the cache a contiguous suffix ending at the new last entry.
        while self.cache.back().is_some_and(|e| e.index >= first.index) {
            self.cache.pop_back();
        }
        if self
            .cache
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            self.cache.clear();
        }
        self.cache.extend(entries.iter().cloned());
        while self.cache.len() > ENTRY_CACHE_CAPACITY {
            self.cache.pop_front();
        }
    }

    /// Records a commit index, persisted with the next raft-state write.
    pub fn set_commit(&mut self, commit: u64) {
        let hs = self
            .raft_state
            .hard_state
            .get_or_insert_with(HardState::default);
        if commit > hs.commit {
            hs.commit = commit;
        }
    }

    /// Records `hs` as the hard state to persist with the next raft-state write.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.raft_state.hard_state = Some(hs);
    }

    /// Puts the raft state into `wb`.
    pub fn write_raft_state(&self, wb: &mut WriteBatch) {
        wb.put_msg(
            Cf::Raft,
            &keys::raft_state_key(self.region.id),
            &self.raft_state,
        );
    }

    /// As [`PeerStorage::compact_cache_to`], then gives the cache's spare
    /// capacity back (an idle peer's cache grows again on its next append).
    pub fn release_cache_to(&mut self, index: u64) {
        self.compact_cache_to(index);
        self.cache.shrink_to_fit();
    }

    /// Entries in the cache (for tests and memory accounting).
    pub fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    /// Drops cached entries at or below `index` (they are applied and the
    /// cache only serves replication of the recent tail).
    pub fn compact_cache_to(&mut self, index: u64) {
        while self.cache.front().is_some_and(|e| e.index <= index) {
            self.cache.pop_front();
        }
    }

    fn check_range(&self, low: u64, high: u64) -> raft::Result<()> {
        if low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low <= self.truncated().index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.raft_state.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(())
    }
}

impl Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let hard_state = self.raft_state.hard_state.unwrap_or_default();
        if !self.is_initialized() {
            return Ok(RaftState::new(hard_state, ConfState::default()));
        }
        Ok(RaftState::new(
            hard_state,
            conf_state_from_region(&self.region),
        ))
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        let res = self.read_entries(low, high, max_size);
        self.note_read_error(&res);
        res
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let res = self.read_term(idx);
        self.note_read_error(&res);
        res
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated().index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.raft_state.last_index)
    }

    /// The latest generated snapshot if it is not older than the log's
    /// start nor `request_index`; otherwise a generation is asked for (see
    /// [`PeerStorage::take_snapshot_wanted`]) and the core hears
    /// `SnapshotTemporarilyUnavailable` until it is done (it asks again at
    /// the follower's next heartbeat response).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.merge_state.is_some() {
            // A merging region's followers catch up from the log (it is
            // not compacted meanwhile) or from the target's carried tail.
            return Err(StorageError::SnapshotTemporarilyUnavailable.into());
        }
        let mut state = self.snap_gen.borrow_mut();
        let wanted = request_index.max(self.truncated().index);
        match state.as_deref() {
            Some(SnapGen::Wanted(_)) => {
                return Err(StorageError::SnapshotTemporarilyUnavailable.into());
            }
            Some(SnapGen::Running(slot)) => match slot.take() {
                None => return Err(StorageError::SnapshotTemporarilyUnavailable.into()),
                Some(Ok(snap)) => *state = Some(Box::new(SnapGen::Ready(snap))),
                // Asked again below (the failure was counted and logged).
                Some(Err(_)) => *state = None,
            },
            Some(SnapGen::Ready(_)) | None => {}
        }
        // Reused while it is not older than the log's start and carries
        // the current membership and range (a peer added since is not in
        // an older one, and would refuse it for good: a snapshot loop; an
        // older range may overlap a region split off since, which the
        // receiver has already: refused for good too).
        let epoch = |r: &Region| r.region_epoch.map_or((0, 0), |e| (e.conf_ver, e.version));
        if let Some(SnapGen::Ready(snap)) = state.as_deref()
            && snapshot_index(snap).0 >= wanted
            && snapshot_meta(snap)
                .ok()
                .and_then(|m| m.region)
                .is_some_and(|r| {
                    let (ours, theirs) = (epoch(&self.region), epoch(&r));
                    theirs.0 >= ours.0 && theirs.1 >= ours.1
                })
        {
            return Ok(snap.clone());
        }
        *state = Some(Box::new(SnapGen::Wanted(Arc::new(GenSlot::default()))));
        Err(StorageError::SnapshotTemporarilyUnavailable.into())
    }
}
impl PeerStorage {
    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> raft::Result<Vec<Entry>> {
        self.check_range(low, high)?;
        if low == high {
            return Ok(Vec::new());
        }
        let limit = max_size.unwrap_or(u64::MAX);
        let cache_first = self.cache.front().map_or(u64::MAX, |e| e.index);
        let mut out = Vec::with_capacity((high - low).min(ENTRY_CACHE_CAPACITY as u64) as usize);
        let mut size = 0u64;
        let mut push = |out: &mut Vec<Entry>, e: Entry| -> bool {
            size += e.encoded_len() as u64;
            if !out.is_empty() && size > limit {
                return false;
            }
            out.push(e);
            true
        };
        // The part below the cache comes from RocksDB.
        if low < cache_first {
            let db_high = high.min(cache_first);
            let (lo, hi) = keys::raft_log_range(self.region.id, low, db_high);
            let snap = self.engine.snapshot();
            let mut expected = low;
            let mut err = None;
            let mut full = false;
            snap.scan(Cf::Raft, &lo, &hi, |_, v| match Entry::decode(v) {
                Ok(e) if e.index == expected => {
                    expected += 1;
                    if push(&mut out, e) {
                        std::ops::ControlFlow::Continue(())
                    } else {
                        full = true;
                        std::ops::ControlFlow::Break(())
                    }
                }
                Ok(_) => std::ops::ControlFlow::Break(()),
                Err(e) => {
                    err = Some(e);
                    std::ops::ControlFlow::Break(())
                }
            })
            .map_err(other)?;
            if let Some(e) = err {
                return Err(raft::Error::Store(StorageError::Other(Box::new(e))));
            }
            if full {
                return Ok(out);
            }
            if expected != db_high {
                // A hole in the log: it was compacted under us.
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        for e in self.cache.iter() {
            if e.index < low.max(cache_first) {
                continue;
            }
            if e.index >= high || !push(&mut out, e.clone()) {
                break;
            }
        }
        Ok(out)
    }

    fn read_term(&self, idx: u64) -> raft::Result<u64> {
        let truncated = self.truncated();
        if idx == truncated.index {
            return Ok(truncated.term);
        }
        if idx == self.raft_state.last_index {
            return Ok(self.last_term);
        }
        self.check_range(idx, idx + 1)?;
        if idx == self.prev_tail.0 && idx != NO_PREV_TAIL.0 {
            return Ok(self.prev_tail.1);
        }
        if let Some(first) = self.cache.front()
            && idx >= first.index
        {
            return Ok(self.cache[(idx - first.index) as usize].term);
        }
        let entry: Option<Entry> = self
            .engine
            .get_msg(Cf::Raft, &keys::raft_log_key(self.region.id, idx))
            .map_err(other)?;
        entry
            .map(|e| e.term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    /// Remembers an engine failure behind a read the consensus core asked
    /// for: the core treats it as "not available yet" and would ask again
    /// forever, so the peer takes it with [`PeerStorage::take_read_error`]
    /// and stops the store.
    fn note_read_error<T>(&self, res: &raft::Result<T>) {
        if let Err(raft::Error::Store(StorageError::Other(e))) = res {
            *self.read_error.borrow_mut() = Some(e.to_string());
        }
    }

    /// The engine failure of a read since the last call, if any.
    pub fn take_read_error(&self) -> Option<String> {
        self.read_error.borrow_mut().take()
    }
}

#[cfg(test)]
mod tests {
    use flotilla_engine::{Durability, EngineOptions};
    use flotilla_proto::metapb::{Peer, RegionEpoch};

    use super::*;

    fn region() -> Region {
        Region {
            id: 9,
            start_key: Vec::new().into(),
            end_key: Vec::new().into(),
            region_epoch: Some(RegionEpoch {
                conf_ver: 1,
                version: 1,
            }),
            peers: (1..=3)
                .map(|i| Peer {
                    id: i,
                    store_id: i,
                    role: PeerRole::Voter as i32,
                })
                .collect(),
        }
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 10].into(),
            ..Default::default()
        }
    }

    /// A storage bootstrapped at (5, 5) exactly as every initial region is.
    fn storage(dir: &tempfile::TempDir) -> PeerStorage {
        let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
        super::super::bootstrap::bootstrap_store(&engine, 1, 1, &[region()]).unwrap();
        PeerStorage::load(engine, region()).unwrap()
    }

    fn append(s: &mut PeerStorage, entries: &[Entry]) {
        let mut wb = s.engine.write_batch();
        s.append(entries, &mut wb);
        s.write_raft_state(&mut wb);
        s.engine.write(wb, Durability::Sync).unwrap();
    }

    #[test]
    fn bootstrapped_state_answers_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let s = storage(&dir);
        assert_eq!(s.first_index().unwrap(), RAFT_INIT_LOG_INDEX + 1);
        assert_eq!(s.last_index().unwrap(), RAFT_INIT_LOG_INDEX);
        assert_eq!(s.term(RAFT_INIT_LOG_INDEX).unwrap(), RAFT_INIT_LOG_TERM);
        let state = s.initial_state().unwrap();
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(state.hard_state.commit, RAFT_INIT_LOG_INDEX);
        assert!(matches!(
            s.term(RAFT_INIT_LOG_INDEX - 1),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            s.entries(6, 7, None),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
        assert!(s.entries(6, 6, None).unwrap().is_empty());
    }

    /// Entries come from the cache and, below it, from RocksDB, in order and
    /// within the size limit (at least one entry).
    #[test]
    fn entries_from_cache_and_disk_with_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(&dir);
        let ents: Vec<Entry> = (6..=20).map(|i| entry(i, 6)).collect();
        append(&mut s, &ents);
        assert_eq!(s.entries(6, 21, None).unwrap(), ents);
        // Drop the cache below 15: the head now comes from RocksDB.
        s.compact_cache_to(14);
        assert_eq!(s.entries(6, 21, None).unwrap(), ents);
        assert_eq!(s.entries(10, 17, None).unwrap(), ents[4..11].to_vec());
        let one = ents[0].encoded_len() as u64;
        assert_eq!(s.entries(6, 21, Some(one * 3)).unwrap().len(), 3);
        assert_eq!(s.entries(6, 21, Some(0)).unwrap().len(), 1);
        for e in &ents {
            assert_eq!(s.term(e.index).unwrap(), 6);
        }
        // After a reload (restart) everything comes from RocksDB.
        let reloaded = PeerStorage::load(s.engine.clone(), region()).unwrap();
        assert_eq!(reloaded.entries(6, 21, None).unwrap(), ents);
        assert_eq!(reloaded.last_index().unwrap(), 20);
        assert_eq!(reloaded.term(20).unwrap(), 6);
    }

    /// A hibernating peer releases its whole cache: the last entry's term
    /// still answers (from `last_term`), older entries come from RocksDB,
    /// and the next append is cached again after the released tail.
    #[test]
    fn a_released_cache_still_serves_terms_entries_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(&dir);
        let ents: Vec<Entry> = (6..=12).map(|i| entry(i, 6)).collect();
        append(&mut s, &ents);
        assert_eq!(s.cached_entries(), ents.len());
        s.release_cache_to(12);
        assert_eq!(s.cached_entries(), 0);
        assert_eq!(s.term(12).unwrap(), 6);
        assert_eq!(s.term(7).unwrap(), 6);
        assert_eq!(s.entries(6, 13, None).unwrap(), ents);
        append(&mut s, &[entry(13, 7)]);
        assert_eq!(s.cached_entries(), 1);
        assert_eq!(s.term(13).unwrap(), 7);
        // The entry before the append answers without a read: with its
        // engine copy gone, its term still comes (from `prev_tail`).
        s.engine
            .delete(Cf::Raft, &keys::raft_log_key(9, 12))
            .unwrap();
        assert_eq!(s.term(12).unwrap(), 6);
        append(&mut s, &[entry(12, 7), entry(13, 7)]);
        assert_eq!(
            s.term(12).unwrap(),
            7,
            "an overwritten prev_tail is not used"
        );
        assert_eq!(s.entries(11, 14, None).unwrap().len(), 3);
        // A conflicting append below the released tail still truncates,
        // and the terms below it come from the engine again.
        s.release_cache_to(13);
        append(&mut s, &[entry(11, 8)]);
        assert_eq!(s.last_index().unwrap(), 11);
        assert_eq!(s.term(11).unwrap(), 8);
        assert_eq!(s.term(10).unwrap(), 6);
        assert!(matches!(
            s.term(12),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
    }

    /// Appending over a suffix replaces it and deletes the old tail.
    #[test]
    fn conflicting_append_truncates_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(&dir);
        append(&mut s, &(6..=12).map(|i| entry(i, 6)).collect::<Vec<_>>());
        append(&mut s, &[entry(9, 7), entry(10, 7)]);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(10).unwrap(), 7);
        assert_eq!(s.term(8).unwrap(), 6);
        let reloaded = PeerStorage::load(s.engine.clone(), region()).unwrap();
        assert_eq!(reloaded.last_index().unwrap(), 10);
        assert!(
            s.engine
                .get(Cf::Raft, &keys::raft_log_key(9, 11))
                .unwrap()
                .is_none(),
            "old tail entry 11 must be deleted"
        );
        assert_eq!(
            reloaded
                .entries(6, 11, None)
                .unwrap()
                .iter()
                .map(|e| e.term)
                .collect::<Vec<_>>(),
            vec![6, 6, 6, 7, 7]
        );
    }

    /// A leader's snapshot: the core hears "temporarily unavailable" until
    /// the worker generated it (the poller takes the wanted generation
    /// once); then it gets the snapshot, whose file holds the region's
    /// data as of the applied index. A snapshot older than the log's start
    /// is generated again.
    #[test]
    fn snapshot_is_generated_off_the_core_and_reused_while_fresh() {
        use crate::store::snapshot::{SnapManager, SnapReader, generate_snapshot, snapshot_meta};
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(&dir);
        let mgr = SnapManager::new(dir.path().join("snap"), 1).unwrap();
        s.engine
            .put(Cf::Default, &keys::data_key(b"a"), b"1")
            .unwrap();
        s.engine
            .put(Cf::Default, &keys::data_key(b"b"), b"2")
            .unwrap();
        let unavailable = |s: &PeerStorage| {
            matches!(
                s.snapshot(0, 2),
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable
                ))
            )
        };
        assert!(unavailable(&s));
        let slot = s.take_snapshot_wanted().expect("a generation is wanted");
        assert!(s.take_snapshot_wanted().is_none(), "scheduled twice");
        assert!(unavailable(&s), "handed out before it was generated");
        slot.put(generate_snapshot(&s.engine, &mgr, 9));
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(
            snapshot_index(&snap),
            (RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM)
        );
        let meta = snapshot_meta(&snap).unwrap();
        assert_eq!((meta.kv_count, meta.region.unwrap().id), (2, 9));
        let mut r =
            SnapReader::open(&mgr.gen_path(9, RAFT_INIT_LOG_TERM, RAFT_INIT_LOG_INDEX)).unwrap();
        assert_eq!(r.next_kv().unwrap(), Some((b"a".to_vec(), b"1".to_vec())));
        // Reused for another follower while the log starts at or below it.
        assert_eq!(s.snapshot(0, 3).unwrap(), snap);
        // A membership change since: a new one is wanted (a peer added
        // since would refuse the older one for good).
        let mut changed = region();
        changed.region_epoch = Some(RegionEpoch {
            conf_ver: 2,
            version: 1,
        });
        s.set_region(changed);
        assert!(unavailable(&s), "a snapshot of an older membership reused");
        let slot = s.take_snapshot_wanted().expect("a generation is wanted");
        slot.put(generate_snapshot(&s.engine, &mgr, 9));
        // (The engine's region state still says conf_ver 1: the storage
        // asks again rather than hand it out.)
        assert!(unavailable(&s));
        s.set_region(region());
        // A split or merge since (the range moved): a new one is wanted
        // too (found by the chaos suite: an older, wider range overlapped
        // a region split off since, which the receiver had already, and
        // was refused for good).
        let slot = s.take_snapshot_wanted().expect("a generation is wanted");
        slot.put(generate_snapshot(&s.engine, &mgr, 9));
        assert!(!unavailable(&s), "a fresh one for the current epoch");
        let mut moved = region();
        moved.region_epoch = Some(RegionEpoch {
            conf_ver: 1,
            version: 2,
        });
        s.set_region(moved);
        assert!(unavailable(&s), "a snapshot of an older range reused");
        s.set_region(region());
        // A compaction past it: a new one is wanted.
        append(&mut s, &(6..=9).map(|i| entry(i, 6)).collect::<Vec<_>>());
        s.set_apply_state(snapshot_apply_state(8, 6));
        assert!(unavailable(&s));
        assert!(s.take_snapshot_wanted().is_some());
    }

    /// A follower persists a received snapshot: region `Applying`, apply
    /// state and log at the snapshot, old log gone. A restart before the
    /// apply side finished loads the same state, even if the apply side
    /// wrote an older apply state after it.
    #[test]
    fn persisted_snapshot_survives_a_restart_while_applying() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(&dir);
        append(&mut s, &(6..=9).map(|i| entry(i, 6)).collect::<Vec<_>>());
        let mut wb = s.engine.write_batch();
        s.persist_snapshot(30, 8, region(), &mut wb);
        s.write_raft_state(&mut wb);
        s.engine.write(wb, Durability::Sync).unwrap();
        assert_eq!(s.applying_snapshot(), Some((30, 8)));
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (31, 30)
        );
        assert_eq!(s.term(30).unwrap(), 8);
        for i in 6..=9 {
            assert!(
                s.engine
                    .get(Cf::Raft, &keys::raft_log_key(9, i))
                    .unwrap()
                    .is_none(),
                "entry {i} of the old log is still there"
            );
        }
        // The apply side finishes an older entry after the persist.
        s.engine
            .put_msg(
                Cf::Raft,
                &keys::apply_state_key(9),
                &snapshot_apply_state(7, 6),
            )
            .unwrap();
        let reloaded = PeerStorage::load(s.engine.clone(), region()).unwrap();
        assert_eq!(reloaded.applying_snapshot(), Some((30, 8)));
        assert_eq!(reloaded.applied_index(), 30);
        assert_eq!(reloaded.last_index().unwrap(), 30);
        assert_eq!(reloaded.term(30).unwrap(), 8);
    }

    /// A snapshot that moves an initialized region's bounds (a split it
    /// missed) records the old range with `Applying`, so a restart in the
    /// middle clears the old keys too; one that keeps them records none.
    #[test]
    fn a_snapshot_moving_the_bounds_records_the_old_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(&dir);
        let old_range = |s: &PeerStorage| {
            s.engine
                .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(9))
                .unwrap()
                .and_then(|st| st.applying_old_range)
        };
        let mut wb = s.engine.write_batch();
        s.persist_snapshot(30, 8, region(), &mut wb);
        s.engine.write(wb, Durability::Sync).unwrap();
        assert_eq!(old_range(&s), None, "same bounds");
        let mut shrunk = region();
        shrunk.end_key = b"k".to_vec().into();
        let mut wb = s.engine.write_batch();
        s.persist_snapshot(40, 8, shrunk, &mut wb);
        s.engine.write(wb, Durability::Sync).unwrap();
        let old = old_range(&s).expect("the old range");
        assert_eq!(
            (old.start_key, old.end_key),
            (region().start_key, region().end_key)
        );
    }

    /// F4: a persisted commit behind the persisted applied index (a commit
    /// from a light ready not yet written) is forwarded to it on load.
    #[test]
    fn load_forwards_commit_to_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(&dir);
        append(&mut s, &(6..=9).map(|i| entry(i, 6)).collect::<Vec<_>>());
        let mut apply = *s.apply_state();
        apply.applied_index = 8;
        s.engine
            .put_msg(Cf::Raft, &keys::apply_state_key(9), &apply)
            .unwrap();
        let reloaded = PeerStorage::load(s.engine.clone(), region()).unwrap();
        assert_eq!(reloaded.initial_state().unwrap().hard_state.commit, 8);
    }

    /// F13: states that contradict each other are a typed error on load,
    /// not a silent `last_index 0` and a confusing failure later.
    #[test]
    fn load_refuses_contradicting_states() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(&dir);
        append(&mut s, &(6..=9).map(|i| entry(i, 6)).collect::<Vec<_>>());
        let engine = s.engine.clone();
        let corrupt = |engine: &Engine| {
            matches!(
                PeerStorage::load(engine.clone(), region()),
                Err(LoadError::Corrupt { region_id: 9, .. })
            )
        };
        // Applied past the last index.
        let mut apply = *s.apply_state();
        apply.applied_index = 12;
        engine
            .put_msg(Cf::Raft, &keys::apply_state_key(9), &apply)
            .unwrap();
        assert!(corrupt(&engine));
        // Truncated past applied.
        apply.applied_index = 5;
        apply.truncated_state = Some(RaftTruncatedState { index: 7, term: 6 });
        engine
            .put_msg(Cf::Raft, &keys::apply_state_key(9), &apply)
            .unwrap();
        assert!(corrupt(&engine));
        // The last entry missing.
        apply.truncated_state = Some(RaftTruncatedState { index: 5, term: 5 });
        engine
            .put_msg(Cf::Raft, &keys::apply_state_key(9), &apply)
            .unwrap();
        engine.delete(Cf::Raft, &keys::raft_log_key(9, 9)).unwrap();
        assert!(corrupt(&engine));
        // Back to consistent: loads.
        engine
            .put_msg(Cf::Raft, &keys::raft_log_key(9, 9), &entry(9, 6))
            .unwrap();
        assert!(PeerStorage::load(engine, region()).is_ok());
    }

    /// admin.md §5.2 CompactLog restart rule: a crash between the apply
    /// write that truncated the log and the deletion of the entries leaves
    /// them in the engine; the storage loaded after it deletes everything
    /// at or below the truncated index with its first write, and a
    /// storage whose compaction was deleted has nothing left to delete.
    #[test]
    fn compacted_entries_left_by_a_crash_are_deleted_after_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(&dir);
        append(&mut s, &(6..=30).map(|i| entry(i, 6)).collect::<Vec<_>>());
        let engine = s.engine.clone();
        let mut apply = *s.apply_state();
        apply.applied_index = 30;
        apply.truncated_state = Some(RaftTruncatedState { index: 20, term: 6 });
        engine
            .put_msg(Cf::Raft, &keys::apply_state_key(9), &apply)
            .unwrap();
        let indices = |engine: &Engine| {
            let (lo, hi) = keys::raft_log_range(9, 0, u64::MAX);
            engine
                .snapshot()
                .iter(Cf::Raft, &lo, &hi)
                .inspect(|kv| assert!(kv.is_ok(), "{kv:?}"))
                .count()
        };
        assert_eq!(indices(&engine), 25);
        let mut loaded = PeerStorage::load(engine.clone(), region()).unwrap();
        assert_eq!(loaded.first_index().unwrap(), 21);
        let mut wb = engine.write_batch();
        assert!(loaded.delete_compacted(&mut wb));
        engine.write(wb, Durability::Sync).unwrap();
        assert_eq!(indices(&engine), 10, "entries 21..=30 are left");
        assert_eq!(loaded.entries(21, 31, None).unwrap().len(), 10);
        let mut wb = engine.write_batch();
        assert!(!loaded.delete_compacted(&mut wb), "nothing left to delete");
        let mut reloaded = PeerStorage::load(engine, region()).unwrap();
        let mut wb = reloaded.engine.write_batch();
        assert!(
            !reloaded.delete_compacted(&mut wb),
            "nothing left after a clean deletion"
        );
    }

    /// F13: an entry that no longer decodes is an engine failure the
    /// storage remembers (the peer then stops the store), not a silent
    /// "unavailable" the core would retry forever.
    #[test]
    fn unreadable_log_entry_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(&dir);
        append(&mut s, &(6..=9).map(|i| entry(i, 6)).collect::<Vec<_>>());
        s.compact_cache_to(9);
        assert!(s.take_read_error().is_none());
        s.engine
            .put(Cf::Raft, &keys::raft_log_key(9, 7), b"\xff\xff garbage")
            .unwrap();
        assert!(s.entries(6, 9, None).is_err());
        let e = s.take_read_error().expect("read error remembered");
        assert!(e.contains("decod"), "{e}");
        assert!(s.take_read_error().is_none(), "taken once");
        assert!(s.term(7).is_err());
        assert!(s.take_read_error().is_some());
    }
}
