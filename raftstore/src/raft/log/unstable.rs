//! Entries and a snapshot that are not yet persisted.

use flotilla_proto::eraftpb::{Entry, Snapshot};

/// The unstable tail of the log.
///
/// Invariants: `entries[i].index == offset + i`; if `snapshot` is set,
/// `offset == snapshot index + 1`; `handed < offset + entries.len()`, and
/// entries with index `<= handed` were already handed out in a `Ready`.
#[derive(Debug, Default, Clone)]
pub struct Unstable {
    /// A snapshot being installed, not yet persisted.
    pub snapshot: Option<Box<Snapshot>>,
    /// Whether `snapshot` was already handed out in a `Ready`.
    pub snapshot_handed: bool,
    /// Entries not yet persisted.
    pub entries: Vec<Entry>,
    /// Index of `entries[0]`.
    pub offset: u64,
    /// The last index handed out in a `Ready` (`offset - 1` when none).
    pub handed: u64,
}

fn snap_index(s: &Snapshot) -> (u64, u64) {
    s.metadata.as_ref().map_or((0, 0), |m| (m.index, m.term))
}

impl Unstable {
    /// An empty tail starting at `offset`.
    pub fn new(offset: u64) -> Self {
        Unstable {
            offset,
            handed: offset.saturating_sub(1),
            ..Default::default()
        }
    }

    /// The first index, if only a snapshot determines it.
    #[inline]
    pub fn maybe_first_index(&self) -> Option<u64> {
        self.snapshot.as_deref().map(|s| snap_index(s).0 + 1)
    }

    /// The last index, if the tail holds entries or a snapshot.
    #[inline]
    pub fn maybe_last_index(&self) -> Option<u64> {
        match self.entries.len() {
            0 => self.snapshot.as_deref().map(|s| snap_index(s).0),
            n => Some(self.offset + n as u64 - 1),
        }
    }

    /// The term of `idx`, if the tail knows it.
    #[inline]
    pub fn maybe_term(&self, idx: u64) -> Option<u64> {
        if idx < self.offset {
            let (si, st) = self.snapshot.as_deref().map(snap_index)?;
            return (si == idx).then_some(st);
        }
        let last = self.maybe_last_index()?;
        if idx > last {
            return None;
        }
        Some(self.entries[(idx - self.offset) as usize].term)
    }

    /// Entries up to `index` (of term `term`) were persisted: drop them.
    /// Ignored if the term no longer matches (the entries were replaced).
    pub fn stable_entries(&mut self, index: u64, term: u64) {
        if self.maybe_term(index) != Some(term) || index < self.offset {
            return;
        }
        let n = (index + 1 - self.offset) as usize;
        self.entries.drain(..n);
        self.offset = index + 1;
        if self.entries.is_empty() {
            // Give the buffer back: an idle group holds no unstable heap.
            self.entries = Vec::new();
        }
        self.handed = self.handed.max(index);
    }

    /// The snapshot at `index` was persisted: drop it.
    pub fn stable_snap(&mut self, index: u64) {
        if self.snapshot.as_deref().map(|s| snap_index(s).0) == Some(index) {
            self.snapshot = None;
            self.snapshot_handed = false;
        }
    }

    /// Replaces everything with `snap`.
    pub fn restore(&mut self, snap: Snapshot) {
        let (idx, _) = snap_index(&snap);
        self.entries = Vec::new();
        self.offset = idx + 1;
        self.handed = idx;
        self.snapshot = Some(Box::new(snap));
        self.snapshot_handed = false;
    }

    /// Appends `ents`, truncating any entries at or after `ents[0].index`.
    /// `ents` must start at most one past the last unstable index (the log
    /// checks that against the storage).
    pub fn truncate_and_append(&mut self, mut ents: Vec<Entry>) {
        let Some(first) = ents.first() else { return };
        let after = first.index;
        let end = self.offset + self.entries.len() as u64;
        debug_assert!(after <= end, "append at {after} leaves a gap after {end}");
        if after == end && !self.entries.is_empty() {
            self.entries.append(&mut ents);
        } else if after <= self.offset {
            // Replace the whole (possibly empty) tail: take over the
            // caller's buffer instead of copying into ours.
            self.offset = after;
            self.entries = ents;
        } else {
            self.entries.truncate((after - self.offset) as usize);
            self.entries.append(&mut ents);
        }
        self.handed = self.handed.min(after - 1);
    }

    /// Entries in `[lo, hi)`, which must lie within the tail.
    ///
    /// # Panics
    ///
    /// If the range is outside the tail (an internal invariant of
    /// [`RaftLog`](super::RaftLog)).
    #[inline]
    pub fn slice(&self, lo: u64, hi: u64) -> &[Entry] {
        let upper = self.offset + self.entries.len() as u64;
        assert!(
            self.offset <= lo && lo <= hi && hi <= upper,
            "unstable slice [{lo}, {hi}) out of [{}, {upper})",
            self.offset
        );
        &self.entries[(lo - self.offset) as usize..(hi - self.offset) as usize]
    }

    /// Entries not yet handed out in a `Ready`.
    #[inline]
    pub fn unhanded_entries(&self) -> &[Entry] {
        let skip = (self.handed + 1).saturating_sub(self.offset) as usize;
        &self.entries[skip.min(self.entries.len())..]
    }

    /// Marks every entry as handed out.
    #[inline]
    pub fn mark_handed(&mut self) {
        if let Some(last) = self.maybe_last_index() {
            self.handed = self.handed.max(last);
        }
    }

    /// Heap bytes held by the tail (entry vector and payloads, approximately).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self
                .entries
                .iter()
                .map(|e| e.data.len() + e.context.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::log::test_entries as ents;
    use flotilla_proto::eraftpb::SnapshotMetadata;

    /// checklist: log-5 (unstable truncation on conflict)
    #[test]
    #[allow(clippy::type_complexity)] // table rows
    fn truncate_and_append_cases() {
        // (existing, offset, append, want offset, want entries)
        let cases: Vec<(Vec<(u64, u64)>, u64, Vec<(u64, u64)>, u64, Vec<(u64, u64)>)> = vec![
            (
                vec![(5, 1)],
                5,
                vec![(6, 1), (7, 1)],
                5,
                vec![(5, 1), (6, 1), (7, 1)],
            ),
            (
                vec![(5, 1)],
                5,
                vec![(5, 2), (6, 2)],
                5,
                vec![(5, 2), (6, 2)],
            ),
            (
                vec![(5, 1)],
                5,
                vec![(4, 2), (5, 2)],
                4,
                vec![(4, 2), (5, 2)],
            ),
            (
                vec![(5, 1), (6, 1), (7, 1)],
                5,
                vec![(6, 2)],
                5,
                vec![(5, 1), (6, 2)],
            ),
        ];
        for (existing, off, app, woff, want) in cases {
            let mut u = Unstable::new(off);
            u.entries = ents(&existing);
            u.mark_handed();
            u.truncate_and_append(ents(&app));
            assert_eq!(u.offset, woff);
            assert_eq!(u.entries, ents(&want));
            // Everything from the first appended index must be handed again.
            assert_eq!(u.unhanded_entries(), &ents(&app)[..]);
        }
    }

    /// checklist: ready-3 (stable only when the term still matches)
    #[test]
    fn stable_entries_checks_term() {
        let mut u = Unstable::new(5);
        u.entries = ents(&[(5, 1), (6, 1)]);
        u.stable_entries(6, 2);
        assert_eq!(u.entries.len(), 2);
        u.stable_entries(5, 1);
        assert_eq!(u.offset, 6);
        u.stable_entries(6, 1);
        assert!(u.entries.is_empty());
        assert_eq!(u.entries.capacity(), 0, "buffer given back");
        assert_eq!(u.offset, 7);
    }

    /// checklist: snap-3 (restore resets the tail to the snapshot)
    #[test]
    fn restore_and_terms() {
        let mut u = Unstable::new(5);
        u.entries = ents(&[(5, 1)]);
        let snap = Snapshot {
            data: Default::default(),
            metadata: Some(SnapshotMetadata {
                index: 10,
                term: 3,
                conf_state: None,
            }),
        };
        u.restore(snap);
        assert_eq!(u.maybe_first_index(), Some(11));
        assert_eq!(u.maybe_last_index(), Some(10));
        assert_eq!(u.maybe_term(10), Some(3));
        assert_eq!(u.maybe_term(9), None);
        u.stable_snap(10);
        assert!(u.snapshot.is_none());
    }
}
