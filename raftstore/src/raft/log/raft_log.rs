//! The raft log: storage plus the unstable tail, with the commit, persisted
//! and applied watermarks.
//!
//! Storage failures on the index queries (`first_index`, `last_index`) are
//! fatal and panic, as in etcd/raft: the node cannot decide anything without
//! them. Failures of `entries`, `term` and `snapshot` are propagated.

use flotilla_proto::eraftpb::{Entry, Snapshot};

use super::unstable::Unstable;
use crate::raft::errors::{Error, Result, StorageError};
use crate::raft::storage::Storage;
use crate::raft::util::limit_size;

/// The log of one node.
///
/// Invariants: `applied <= applying <= committed`; `applied <= persisted`
/// except transiently while a snapshot is being installed; entries up to
/// `persisted` are in the storage, the rest in `unstable`.
#[derive(Debug)]
pub struct RaftLog<S: Storage> {
    /// The durable part.
    pub store: S,
    /// The not-yet-persisted tail.
    pub unstable: Unstable,
    /// Highest index known committed.
    pub committed: u64,
    /// Highest index known durable on this node.
    pub persisted: u64,
    /// Highest index the state machine reported applied.
    pub applied: u64,
    /// Highest index handed out for applying.
    pub applying: u64,
    /// `(index, term)` of the newest entry known to be in the storage, so
    /// the term lookups of steady replication (the previous entry of an
    /// append, the entry being committed) need no storage call. The term
    /// at an index changes only through [`RaftLog::append`] truncating at
    /// or below it, or [`RaftLog::restore`]; both drop the hint.
    stable_hint: Option<(u64, u64)>,
}

impl<S: Storage> RaftLog<S> {
    /// A log over `store`, with commit and applied taken from the stored
    /// state by the caller.
    ///
    /// # Panics
    ///
    /// If the storage cannot report its indexes.
    pub fn new(store: S) -> Self {
        let first = store.first_index().expect("storage first_index");
        let last = store.last_index().expect("storage last_index");
        RaftLog {
            store,
            unstable: Unstable::new(last + 1),
            committed: first - 1,
            persisted: last,
            applied: first - 1,
            applying: first - 1,
            stable_hint: None,
        }
    }

    /// The first index available (after the snapshot).
    ///
    /// # Panics
    ///
    /// If the storage cannot report it.
    pub fn first_index(&self) -> u64 {
        self.unstable
            .maybe_first_index()
            .unwrap_or_else(|| self.store.first_index().expect("storage first_index"))
    }

    /// The last index.
    ///
    /// # Panics
    ///
    /// If the storage cannot report it.
    pub fn last_index(&self) -> u64 {
        self.unstable
            .maybe_last_index()
            .unwrap_or_else(|| self.store.last_index().expect("storage last_index"))
    }

    /// The term of `idx`: `Ok(0)` beyond the last index.
    ///
    /// # Errors
    ///
    /// [`StorageError::Compacted`] below `first_index() - 1`, or any storage
    /// failure.
    pub fn term(&self, idx: u64) -> Result<u64> {
        // The unstable tail (and a pending snapshot's index) lie within
        // [first_index() - 1, last_index()]: answer from it without asking
        // the storage for its bounds.
        if let Some(t) = self.unstable.maybe_term(idx) {
            return Ok(t);
        }
        let dummy = self.first_index() - 1;
        if idx < dummy {
            return Err(StorageError::Compacted.into());
        }
        if idx > self.last_index() {
            return Ok(0);
        }
        if let Some((i, t)) = self.stable_hint
            && i == idx
        {
            return Ok(t);
        }
        match self.store.term(idx) {
            Err(Error::Store(StorageError::Unavailable)) => Ok(0),
            other => other,
        }
    }

    /// The term of the last entry.
    ///
    /// # Panics
    ///
    /// If the storage cannot report the term of its last entry.
    pub fn last_term(&self) -> u64 {
        self.term(self.last_index())
            .expect("term of the last index")
    }

    /// True if the entry at `idx` has term `term`.
    pub fn match_term(&self, idx: u64, term: u64) -> bool {
        self.term(idx).is_ok_and(|t| t == term)
    }

    /// True if a log ending at (`last_index`, `term`) is at least as up to
    /// date as this one (last term first, then last index).
    pub fn is_up_to_date(&self, last_index: u64, term: u64) -> bool {
        let lt = self.last_term();
        term > lt || (term == lt && last_index >= self.last_index())
    }

    /// The index of the first entry of `ents` that conflicts with the log
    /// (different term) or is new; 0 if all are already present.
    pub fn find_conflict(&self, ents: &[Entry]) -> u64 {
        // Entries past the last index are new: no term lookup needed (the
        // log answers term 0 there, which only a term-0 entry matches).
        let last = self.last_index();
        ents.iter()
            .find(|e| {
                if e.index > last {
                    e.term != 0
                } else {
                    !self.match_term(e.index, e.term)
                }
            })
            .map_or(0, |e| e.index)
    }

    /// The largest index `<= index` whose term is `<= term`, with its term
    /// (fast rejection: lets the leader skip a whole term at a time). Stops
    /// at the compaction point.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut idx = index.min(self.last_index());
        loop {
            match self.term(idx) {
                Ok(t) if t > term && idx > 0 => idx -= 1,
                Ok(t) => return (idx, t),
                Err(_) => return (idx, 0),
            }
        }
    }

    /// Appends entries from a leader after (`idx`, `term`), committing up to
    /// `committed`. Returns `(conflict index, last new index)` or `None` if
    /// the log does not contain (`idx`, `term`).
    ///
    /// # Panics
    ///
    /// If a conflict lies at or below the commit index (a safety violation).
    pub fn maybe_append(
        &mut self,
        idx: u64,
        term: u64,
        committed: u64,
        mut ents: Vec<Entry>,
    ) -> Option<(u64, u64)> {
        if !self.match_term(idx, term) {
            return None;
        }
        let last_new = idx + ents.len() as u64;
        let conflict = self.find_conflict(&ents);
        if conflict != 0 {
            assert!(
                conflict > self.committed,
                "entry {conflict} conflicts with committed entry (committed {})",
                self.committed
            );
            let start = (conflict - (idx + 1)) as usize;
            ents.drain(..start);
            self.append(ents);
        }
        self.commit_to(committed.min(last_new));
        Some((conflict, last_new))
    }

    /// Appends `ents` to the unstable tail, truncating conflicting entries.
    /// Returns the new last index.
    ///
    /// # Panics
    ///
    /// If `ents` would overwrite a committed entry.
    pub fn append(&mut self, ents: Vec<Entry>) -> u64 {
        let Some(first) = ents.first() else {
            return self.last_index();
        };
        let after = first.index - 1;
        assert!(
            after >= self.committed,
            "append after {after} is below committed {}",
            self.committed
        );
        if first.index <= self.persisted {
            // Durable entries are being replaced: they are no longer persisted.
            self.persisted = after;
        }
        if self.stable_hint.is_some_and(|(i, _)| i >= first.index) {
            self.stable_hint = None;
        }
        if first.index < self.unstable.offset {
            // Entries that are in storage are replaced; the storage append
            // of the next Ready truncates them there too.
            self.unstable.offset = first.index;
            self.unstable.entries = Vec::new();
            self.unstable.handed = after;
        }
        self.unstable.truncate_and_append(ents);
        self.last_index()
    }

    /// Raises the commit index.
    ///
    /// # Panics
    ///
    /// If `to` is beyond the last index (the leader's commit cannot exceed
    /// what it sent).
    pub fn commit_to(&mut self, to: u64) {
        if self.committed >= to {
            return;
        }
        assert!(
            to <= self.last_index(),
            "commit {to} is out of range [last index {}]",
            self.last_index()
        );
        self.committed = to;
    }

    /// Commits `max_index` if its entry has term `term`. Returns whether the
    /// commit index moved.
    pub fn maybe_commit(&mut self, max_index: u64, term: u64) -> bool {
        if max_index > self.committed && self.term(max_index).is_ok_and(|t| t == term) {
            self.commit_to(max_index);
            true
        } else {
            false
        }
    }

    /// The state machine applied up to `idx`.
    ///
    /// # Panics
    ///
    /// If `idx` is beyond the commit index or behind the applied index.
    pub fn applied_to(&mut self, idx: u64) {
        if idx == 0 {
            return;
        }
        assert!(
            idx <= self.committed && idx >= self.applied,
            "applied {idx} out of range [{}, {}]",
            self.applied,
            self.committed
        );
        self.applied = idx;
        self.applying = self.applying.max(idx);
    }

    /// Entries in `[lo, hi)`, at most `max_size` bytes (at least one).
    ///
    /// # Errors
    ///
    /// [`StorageError::Compacted`] if `lo` is compacted, or a storage failure.
    pub fn slice(&self, lo: u64, hi: u64, max_size: Option<u64>) -> Result<Vec<Entry>> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        if lo < self.first_index() {
            return Err(StorageError::Compacted.into());
        }
        let hi = hi.min(self.last_index() + 1);
        let mut ents = Vec::new();
        let off = self.unstable.offset;
        if lo < off {
            ents = self.store.entries(lo, hi.min(off), max_size)?;
            if (ents.len() as u64) < hi.min(off) - lo {
                return Ok(ents);
            }
        }
        if hi > off {
            ents.extend_from_slice(self.unstable.slice(lo.max(off), hi));
        }
        limit_size(&mut ents, max_size);
        Ok(ents)
    }

    /// Entries from `idx` to the end, at most `max_size` bytes.
    ///
    /// # Errors
    ///
    /// As [`RaftLog::slice`].
    pub fn entries(&self, idx: u64, max_size: Option<u64>) -> Result<Vec<Entry>> {
        self.slice(idx, self.last_index() + 1, max_size)
    }

    /// True if there are committed, durable entries not yet handed out for
    /// applying (and no snapshot is pending installation).
    pub fn has_next_entries(&self) -> bool {
        self.unstable.snapshot.is_none() && self.apply_upper() > self.applying_from()
    }

    fn applying_from(&self) -> u64 {
        self.applying.max(self.first_index() - 1) + 1
    }

    fn apply_upper(&self) -> u64 {
        self.committed.min(self.persisted) + 1
    }

    /// The committed, durable entries not yet handed out, at most `max_size`
    /// bytes. Does not move the `applying` watermark.
    pub fn next_entries(&self, max_size: Option<u64>) -> Vec<Entry> {
        if !self.has_next_entries() {
            return Vec::new();
        }
        // The range is committed and within the log; a storage failure here
        // is treated as "nothing to apply yet".
        self.slice(self.applying_from(), self.apply_upper(), max_size)
            .unwrap_or_default()
    }

    /// Marks entries up to `idx` as handed out for applying.
    pub fn applying_to(&mut self, idx: u64) {
        self.applying = self.applying.max(idx);
    }

    /// Entries up to `index` of `term` are durable.
    pub fn stable_entries(&mut self, index: u64, term: u64) {
        if index > self.persisted && self.unstable.maybe_term(index).is_some_and(|t| t == term) {
            self.persisted = index;
            self.stable_hint = Some((index, term));
        }
        self.unstable.stable_entries(index, term);
    }

    /// The snapshot at `index` is durable.
    pub fn stable_snap(&mut self, index: u64) {
        if self.unstable.snapshot.is_some() {
            self.unstable.stable_snap(index);
            self.persisted = self.persisted.max(index);
            self.applied = self.applied.max(index);
            self.applying = self.applying.max(index);
        }
    }

    /// Replaces the log with `snap`; the commit index becomes its index.
    pub fn restore(&mut self, snap: Snapshot) {
        let idx = snap.metadata.as_ref().map_or(0, |m| m.index);
        self.committed = idx;
        self.persisted = self.persisted.min(idx);
        self.stable_hint = None;
        self.unstable.restore(snap);
    }

    /// The snapshot to send: the pending unstable one, or the storage's.
    ///
    /// # Errors
    ///
    /// Whatever the storage reports (e.g. temporarily unavailable).
    pub fn snapshot(&self, request_index: u64, to: u64) -> Result<Snapshot> {
        if let Some(s) = &self.unstable.snapshot
            && s.metadata
                .as_ref()
                .is_some_and(|m| m.index >= request_index)
        {
            return Ok(Snapshot::clone(s));
        }
        self.store.snapshot(request_index, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::log::test_entries as ents;
    use crate::raft::storage::MemStorage;

    fn log_with(stored: &[(u64, u64)], unstable: &[(u64, u64)]) -> RaftLog<MemStorage> {
        let s = MemStorage::new();
        s.wl().append(&ents(stored)).unwrap();
        let mut l = RaftLog::new(s);
        l.append(ents(unstable));
        l
    }

    /// checklist: log-4, log-5 (conflict detection)
    #[test]
    fn find_conflict_table() {
        let l = log_with(&[(1, 1), (2, 2), (3, 3)], &[]);
        let cases: Vec<(Vec<(u64, u64)>, u64)> = vec![
            (vec![], 0),
            (vec![(1, 1), (2, 2), (3, 3)], 0),
            (vec![(2, 2), (3, 3)], 0),
            (vec![(2, 2), (3, 3), (4, 4)], 4),
            (vec![(4, 4), (5, 4)], 4),
            (vec![(1, 4), (2, 4)], 1),
            (vec![(2, 1), (3, 4)], 2),
            (vec![(3, 1), (4, 2)], 3),
        ];
        for (e, want) in cases {
            assert_eq!(l.find_conflict(&ents(&e)), want, "{e:?}");
        }
    }

    /// checklist: log-6 (findConflictByTerm jumps over a whole term)
    #[test]
    fn find_conflict_by_term_table() {
        // terms: 1:1 2:1 3:2 4:2 5:2 6:4 7:4
        let l = log_with(
            &[(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 4), (7, 4)],
            &[],
        );
        let cases = [
            ((7, 4), (7, 4)),
            ((7, 3), (5, 2)),
            ((7, 2), (5, 2)),
            ((5, 1), (2, 1)),
            ((7, 0), (0, 0)),
            ((10, 5), (7, 4)),
            ((3, 2), (3, 2)),
        ];
        for ((idx, term), want) in cases {
            assert_eq!(l.find_conflict_by_term(idx, term), want, "({idx}, {term})");
        }
    }

    /// checklist: log-4, log-5, log-12
    #[test]
    #[allow(clippy::type_complexity)] // table rows
    fn maybe_append_cases() {
        let base = [(1, 1), (2, 2), (3, 3)];
        // (prev idx, prev term, commit, ents, want result, want last, want commit)
        let cases: Vec<(u64, u64, u64, Vec<(u64, u64)>, Option<(u64, u64)>, u64, u64)> = vec![
            (3, 2, 3, vec![(4, 4)], None, 3, 1),
            (4, 3, 3, vec![(5, 4)], None, 3, 1),
            (3, 3, 3, vec![], Some((0, 3)), 3, 3),
            (3, 3, 4, vec![(4, 4)], Some((4, 4)), 4, 4),
            (3, 3, 2, vec![(4, 4)], Some((4, 4)), 4, 2),
            (2, 2, 3, vec![(3, 4)], Some((3, 3)), 3, 3),
            (1, 1, 3, vec![(2, 2), (3, 3)], Some((0, 3)), 3, 3),
            (1, 1, 3, vec![(2, 2)], Some((0, 2)), 3, 2),
        ];
        for (i, (pi, pt, c, e, want, wlast, wcommit)) in cases.into_iter().enumerate() {
            let mut l = log_with(&base, &[]);
            l.commit_to(1);
            assert_eq!(l.maybe_append(pi, pt, c, ents(&e)), want, "case {i}");
            assert_eq!(l.last_index(), wlast, "case {i}");
            assert_eq!(l.committed, wcommit, "case {i}");
        }
    }

    /// checklist: log-14 / log-5 (never truncate committed entries)
    #[test]
    #[should_panic(expected = "conflicts with committed")]
    fn maybe_append_below_commit_panics() {
        let mut l = log_with(&[(1, 1), (2, 2), (3, 3)], &[]);
        l.commit_to(3);
        l.maybe_append(1, 1, 3, ents(&[(2, 5)]));
    }

    /// checklist: ready-4 (only committed *and* persisted entries are applied)
    #[test]
    fn next_entries_bounded_by_persisted() {
        let mut l = log_with(&[(1, 1), (2, 1)], &[(3, 1), (4, 1)]);
        l.commit_to(4);
        assert_eq!(l.next_entries(None).len(), 2, "entries 1..=2 are durable");
        l.store.wl().append(&ents(&[(3, 1), (4, 1)])).unwrap();
        l.stable_entries(4, 1);
        assert_eq!(l.next_entries(None).len(), 4);
        l.applying_to(3);
        assert_eq!(l.next_entries(None), ents(&[(4, 1)]));
        l.applied_to(4);
        assert!(!l.has_next_entries());
    }

    /// checklist: log-2 (maybe_commit requires the term)
    #[test]
    fn maybe_commit_term_check() {
        let mut l = log_with(&[(1, 1), (2, 2)], &[]);
        assert!(!l.maybe_commit(2, 1));
        assert!(l.maybe_commit(1, 1));
        assert!(l.maybe_commit(2, 2));
        assert!(!l.maybe_commit(2, 2));
        assert_eq!(l.committed, 2);
    }

    /// checklist: election-4 (up-to-date comparison: term first, then index)
    #[test]
    fn is_up_to_date_table() {
        let l = log_with(&[(1, 1), (2, 2), (3, 3)], &[]);
        for (idx, term, want) in [
            (2, 4, true),
            (3, 4, true),
            (4, 4, true),
            (2, 2, false),
            (3, 2, false),
            (4, 2, false),
            (2, 3, false),
            (3, 3, true),
            (4, 3, true),
        ] {
            assert_eq!(l.is_up_to_date(idx, term), want, "({idx}, {term})");
        }
    }

    /// checklist: log-9 (slice across storage and unstable honours max size)
    #[test]
    fn slice_across_boundary() {
        let l = log_with(&[(1, 1), (2, 1)], &[(3, 1), (4, 1)]);
        assert_eq!(l.slice(1, 5, None).unwrap().len(), 4);
        assert_eq!(l.slice(2, 4, None).unwrap(), ents(&[(2, 1), (3, 1)]));
        assert_eq!(l.slice(1, 5, Some(0)).unwrap().len(), 1);
        l.store.wl().compact(2).unwrap();
        assert_eq!(l.slice(1, 3, None), Err(StorageError::Compacted.into()));
        assert_eq!(l.term(0), Err(StorageError::Compacted.into()));
        assert_eq!(l.term(1).unwrap(), 1);
    }
}
