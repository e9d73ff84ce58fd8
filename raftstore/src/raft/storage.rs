//! The `Storage` trait the consensus core reads its durable state through,
//! and `MemStorage`, an in-memory implementation for tests and simulation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::errors::{Error, Result, StorageError};
use super::util::limit_size;

/// The durable state a node restarts from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftState {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// The configuration in force at the last persisted entry (or snapshot).
    pub conf_state: ConfState,
}

impl RaftState {
    /// A state from its parts.
    pub fn new(hard_state: HardState, conf_state: ConfState) -> Self {
        RaftState {
            hard_state,
            conf_state,
        }
    }

    /// True if the node has never been given a configuration.
    pub fn initialized(&self) -> bool {
        self.conf_state != ConfState::default()
    }
}

/// Read access to a node's durable log, hard state and snapshot.
///
/// The log held by a storage is the contiguous range
/// `[first_index(), last_index()]`; everything before `first_index()` has
/// been compacted into a snapshot whose last index is `first_index() - 1`.
/// Entries the node has handed out in a `Ready` but not yet reported as
/// persisted are *not* expected to be visible here.
pub trait Storage {
    /// The hard state and conf state to start (or restart) from.
    ///
    /// # Errors
    ///
    /// Any storage failure.
    fn initial_state(&self) -> Result<RaftState>;

    /// Entries with indexes in `[low, high)`. When `max_size` is given, the
    /// total encoded size of the returned entries is at most `max_size`,
    /// except that at least one entry is returned if the range is non-empty.
    ///
    /// # Errors
    ///
    /// [`StorageError::Compacted`] if `low < first_index()`,
    /// [`StorageError::Unavailable`] if `high > last_index() + 1`.
    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>>;

    /// The term of the entry at `idx`, for `idx` in
    /// `[first_index() - 1, last_index()]` (the term of `first_index() - 1`
    /// is the snapshot's term).
    ///
    /// # Errors
    ///
    /// [`StorageError::Compacted`] below that range,
    /// [`StorageError::Unavailable`] above it.
    fn term(&self, idx: u64) -> Result<u64>;

    /// Index of the first entry still in the log (the snapshot index + 1).
    ///
    /// # Errors
    ///
    /// Any storage failure.
    fn first_index(&self) -> Result<u64>;

    /// Index of the last entry in the log (the snapshot index when empty).
    ///
    /// # Errors
    ///
    /// Any storage failure.
    fn last_index(&self) -> Result<u64>;

    /// A snapshot of the state machine, for sending to peer `to`. The
    /// snapshot's index must be at least `request_index`.
    ///
    /// # Errors
    ///
    /// [`StorageError::SnapshotTemporarilyUnavailable`] if it is still being
    /// generated (the leader retries later), or any storage failure.
    fn snapshot(&self, request_index: u64, to: u64) -> Result<Snapshot>;
}

/// The state behind a [`MemStorage`].
#[derive(Debug, Default)]
pub struct MemStorageCore {
    raft_state: RaftState,
    /// Invariant: `entries[i].index == snapshot_metadata.index + 1 + i`.
    entries: Vec<Entry>,
    /// Index, term and conf state of the last compacted entry.
    snapshot_metadata: SnapshotMetadata,
    /// When set, `snapshot()` answers `SnapshotTemporarilyUnavailable`.
    trigger_snap_unavailable: bool,
}

impl MemStorageCore {
    fn first_index(&self) -> u64 {
        self.snapshot_metadata.index + 1
    }

    fn last_index(&self) -> u64 {
        self.snapshot_metadata.index + self.entries.len() as u64
    }

    /// Sets the hard state.
    pub fn set_hardstate(&mut self, hs: HardState) {
        self.raft_state.hard_state = hs;
    }

    /// The hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.raft_state.hard_state
    }

    /// Mutable access to the hard state.
    pub fn mut_hard_state(&mut self) -> &mut HardState {
        &mut self.raft_state.hard_state
    }

    /// Sets the conf state.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.raft_state.conf_state = cs;
    }

    /// Sets the commit index (and the term of the entry at it into the hard
    /// state's term if the latter is lower).
    pub fn commit_to(&mut self, index: u64) {
        self.raft_state.hard_state.commit = index;
    }

    /// Makes `snapshot()` fail with `SnapshotTemporarilyUnavailable` (tests).
    pub fn trigger_snap_unavailable(&mut self, on: bool) {
        self.trigger_snap_unavailable = on;
    }

    /// The entries held (after the snapshot).
    pub fn entries_ref(&self) -> &[Entry] {
        &self.entries
    }

    /// Replaces the whole state with `snapshot`'s.
    ///
    /// # Errors
    ///
    /// [`StorageError::SnapshotOutOfDate`] if the snapshot is not newer than
    /// the storage's first index.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        let meta = snapshot.metadata.unwrap_or_default();
        if self.first_index() > meta.index {
            return Err(StorageError::SnapshotOutOfDate.into());
        }
        let hs = &mut self.raft_state.hard_state;
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.entries = Vec::new();
        self.raft_state.conf_state = meta.conf_state.clone().unwrap_or_default();
        self.snapshot_metadata = meta;
        Ok(())
    }

    /// Discards entries before `compact_index`; the entry at
    /// `compact_index - 1` becomes the snapshot point. A no-op if already
    /// compacted that far. The caller must only compact applied entries.
    ///
    /// # Errors
    ///
    /// [`StorageError::Unavailable`] if `compact_index > last_index() + 1`.
    pub fn compact(&mut self, compact_index: u64) -> Result<()> {
        if compact_index <= self.first_index() {
            return Ok(());
        }
        if compact_index > self.last_index() + 1 {
            return Err(StorageError::Unavailable.into());
        }
        let drain = (compact_index - self.first_index()) as usize;
        let last = &self.entries[drain - 1];
        self.snapshot_metadata.index = last.index;
        self.snapshot_metadata.term = last.term;
        self.snapshot_metadata.conf_state = Some(self.raft_state.conf_state.clone());
        self.entries.drain(..drain);
        Ok(())
    }

    /// Appends `ents`, truncating any existing entries at or after
    /// `ents[0].index`. Entries below the first index are skipped.
    ///
    /// # Errors
    ///
    /// [`StorageError::Unavailable`] if `ents[0].index > last_index() + 1`
    /// (the append would leave a gap).
    pub fn append(&mut self, ents: &[Entry]) -> Result<()> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index > self.last_index() + 1 {
            return Err(StorageError::Unavailable.into());
        }
        let first_index = self.first_index();
        let skip = first_index.saturating_sub(first.index) as usize;
        if skip >= ents.len() {
            return Ok(());
        }
        let ents = &ents[skip..];
        let keep = (ents[0].index - first_index) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        let mut meta = SnapshotMetadata::default();
        let commit = self.raft_state.hard_state.commit;
        meta.index = commit.max(self.snapshot_metadata.index);
        meta.term = if meta.index == self.snapshot_metadata.index {
            self.snapshot_metadata.term
        } else {
            self.entries[(meta.index - self.first_index()) as usize].term
        };
        meta.conf_state = Some(self.raft_state.conf_state.clone());
        Snapshot {
            data: Default::default(),
            metadata: Some(meta),
        }
    }
}

/// An in-memory [`Storage`]. Cheap to clone: clones share one state.
///
/// The log bounds are mirrored in atomics so that `first_index` and
/// `last_index`, which the consensus core asks for several times per
/// message, cost one load instead of a lock round-trip. They are written
/// only by [`MemStorageWriteGuard`]'s drop, under the write lock.
#[derive(Debug, Clone)]
pub struct MemStorage {
    shared: Arc<MemShared>,
}

#[derive(Debug, Default)]
struct MemShared {
    core: RwLock<MemStorageCore>,
    /// Mirrors `core.first_index()` whenever no write guard is alive.
    first: AtomicU64,
    /// Mirrors `core.last_index()` whenever no write guard is alive.
    last: AtomicU64,
}

/// Write access to a [`MemStorage`]'s state; on drop it republishes the
/// log bounds that lock-free readers see.
///
/// While a guard is alive, `Storage::first_index` and `last_index` still
/// answer the bounds from before it was taken: drop the guard before
/// handing control back to the node (e.g. before `advance` or
/// `on_persist_ready`). The two bounds are published one after the other,
/// so another thread may briefly see a new first index with an old last.
pub struct MemStorageWriteGuard<'a> {
    core: RwLockWriteGuard<'a, MemStorageCore>,
    shared: &'a MemShared,
}

impl std::ops::Deref for MemStorageWriteGuard<'_> {
    type Target = MemStorageCore;

    fn deref(&self) -> &MemStorageCore {
        &self.core
    }
}

impl std::ops::DerefMut for MemStorageWriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut MemStorageCore {
        &mut self.core
    }
}

impl Drop for MemStorageWriteGuard<'_> {
    fn drop(&mut self) {
        // Still under the write lock: readers of the atomics never see
        // bounds of a state that is not (or not yet) the locked one for
        // longer than this guard lives.
        self.shared
            .first
            .store(self.core.first_index(), Ordering::Release);
        self.shared
            .last
            .store(self.core.last_index(), Ordering::Release);
    }
}

impl MemStorage {
    /// An empty storage (an uninitialized node that waits for a snapshot or
    /// a conf change).
    pub fn new() -> Self {
        let s = MemStorage {
            shared: Arc::default(),
        };
        // Publish the bounds of the empty log (first 1, last 0).
        drop(s.wl());
        s
    }

    /// A storage whose initial configuration is `cs` (a bootstrapped group).
    pub fn new_with_conf_state(cs: ConfState) -> Self {
        let s = Self::new();
        s.wl().set_conf_state(cs);
        s
    }

    /// A storage whose initial configuration has `voters` and `learners`.
    pub fn with_voters(voters: &[u64], learners: &[u64]) -> Self {
        Self::new_with_conf_state(ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..Default::default()
        })
    }

    /// Read access to the state.
    pub fn rl(&self) -> RwLockReadGuard<'_, MemStorageCore> {
        self.shared.core.read()
    }

    /// Write access to the state.
    pub fn wl(&self) -> MemStorageWriteGuard<'_> {
        MemStorageWriteGuard {
            core: self.shared.core.write(),
            shared: &self.shared,
        }
    }
}

impl Default for MemStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<RaftState> {
        Ok(self.rl().raft_state.clone())
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>> {
        let core = self.rl();
        if low < core.first_index() {
            return Err(StorageError::Compacted.into());
        }
        if high > core.last_index() + 1 || low > high {
            return Err(StorageError::Unavailable.into());
        }
        let off = core.first_index();
        let mut ents = core.entries[(low - off) as usize..(high - off) as usize].to_vec();
        limit_size(&mut ents, max_size);
        Ok(ents)
    }

    #[inline]
    fn term(&self, idx: u64) -> Result<u64> {
        let core = self.rl();
        if idx == core.snapshot_metadata.index {
            return Ok(core.snapshot_metadata.term);
        }
        if idx < core.first_index() {
            return Err(StorageError::Compacted.into());
        }
        if idx > core.last_index() {
            return Err(StorageError::Unavailable.into());
        }
        Ok(core.entries[(idx - core.first_index()) as usize].term)
    }

    #[inline]
    fn first_index(&self) -> Result<u64> {
        Ok(self.shared.first.load(Ordering::Acquire))
    }

    #[inline]
    fn last_index(&self) -> Result<u64> {
        Ok(self.shared.last.load(Ordering::Acquire))
    }

    /// The snapshot at the commit index; temporarily unavailable while
    /// that is below `request_index`.
    fn snapshot(&self, request_index: u64, _to: u64) -> Result<Snapshot> {
        let core = self.rl();
        let snap = core.snapshot();
        let index = snap.metadata.as_ref().map_or(0, |m| m.index);
        if core.trigger_snap_unavailable || index < request_index {
            return Err(Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn storage(ents: &[(u64, u64)]) -> MemStorage {
        let s = MemStorage::new();
        let ents: Vec<_> = ents.iter().map(|&(i, t)| ent(i, t)).collect();
        s.wl().append(&ents).unwrap();
        s
    }

    /// checklist: snap-5 (compaction bounds and the truncated term stays answerable)
    #[test]
    fn term_and_compact() {
        let s = storage(&[(1, 1), (2, 2), (3, 3), (4, 3)]);
        assert_eq!(s.term(0).unwrap(), 0);
        assert_eq!(s.term(3).unwrap(), 3);
        assert_eq!(s.term(5), Err(StorageError::Unavailable.into()));
        s.wl().compact(3).unwrap();
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 2);
        assert_eq!(s.term(1), Err(StorageError::Compacted.into()));
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(
            s.wl().compact(9),
            Err(StorageError::Unavailable.into()),
            "compacting past the log is refused"
        );
    }

    /// checklist: log-9 (storage honours max_size, at least one entry)
    #[test]
    fn entries_limits() {
        let s = storage(&[(1, 1), (2, 1), (3, 1)]);
        assert_eq!(s.entries(1, 4, None).unwrap().len(), 3);
        assert_eq!(s.entries(1, 4, Some(0)).unwrap().len(), 1);
        assert_eq!(s.entries(1, 5, None), Err(StorageError::Unavailable.into()));
        s.wl().compact(2).unwrap();
        assert_eq!(s.entries(1, 3, None), Err(StorageError::Compacted.into()));
    }

    /// checklist: log-5 (storage append truncates a conflicting suffix)
    #[test]
    fn append_truncates() {
        let s = storage(&[(1, 1), (2, 1), (3, 1)]);
        s.wl().append(&[ent(2, 2)]).unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(s.term(2).unwrap(), 2);
        assert_eq!(
            s.wl().append(&[ent(5, 2)]),
            Err(StorageError::Unavailable.into())
        );
    }

    /// checklist: snap-3 (storage refuses an older snapshot)
    #[test]
    fn apply_snapshot_out_of_date() {
        let s = MemStorage::new();
        let snap = |index| Snapshot {
            data: Default::default(),
            metadata: Some(SnapshotMetadata {
                index,
                term: 1,
                conf_state: Some(ConfState {
                    voters: vec![1],
                    ..Default::default()
                }),
            }),
        };
        s.wl().apply_snapshot(snap(5)).unwrap();
        assert_eq!(s.first_index().unwrap(), 6);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1]);
        assert_eq!(
            s.wl().apply_snapshot(snap(3)),
            Err(StorageError::SnapshotOutOfDate.into())
        );
        s.wl().trigger_snap_unavailable(true);
        assert_eq!(
            s.snapshot(0, 2),
            Err(StorageError::SnapshotTemporarilyUnavailable.into())
        );
    }
}
