//! Owned point-in-time snapshots and bounded range iteration.

use std::ops::ControlFlow;
use std::sync::Arc;

use rocksdb::{DB, DBRawIteratorWithThreadMode, ReadOptions, SnapshotWithThreadMode};

use crate::engine::{Cf, Inner, decode_msg};
use crate::error::{Result, rocks};

/// A consistent view of the database as of [`crate::Engine::snapshot`]:
/// writes made after it are never visible through it. Owned and `Send +
/// Sync`, so it can be handed to another thread (e.g. to generate a region
/// snapshot off the poller threads).
pub struct Snapshot {
    // Field order matters: `snap` borrows the database inside `engine` and is
    // dropped before it.
    snap: SnapshotWithThreadMode<'static, DB>,
    engine: Arc<Inner>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
}

impl Snapshot {
    pub(crate) fn new(engine: Arc<Inner>) -> Snapshot {
        let snap = engine.db.snapshot();
        // SAFETY: `snap` borrows `engine.db`, which lives on the heap inside
        // the `Arc` we store next to it and therefore neither moves nor is
        // freed while this `Snapshot` exists; `snap` is declared before
        // `engine`, so it is released before the `Arc` is dropped. The
        // `'static` lifetime never escapes: every borrow handed out is tied
        // to `&self`.
        let snap = unsafe {
            std::mem::transmute::<SnapshotWithThreadMode<'_, DB>, SnapshotWithThreadMode<'static, DB>>(
                snap,
            )
        };
        Snapshot { snap, engine }
    }

    /// Reads `key` from `cf` as of the snapshot.
    ///
    /// # Errors
    /// [`crate::Error::RocksDb`] if the read fails.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snap
            .get_cf(self.engine.cf(cf), key)
            .map_err(rocks("snapshot get"))
    }

    /// Reads `key` from `cf` as of the snapshot and decodes it as `M`.
    ///
    /// # Errors
    /// [`crate::Error::RocksDb`] if the read fails, [`crate::Error::Decode`]
    /// if the value is not a valid `M`.
    pub fn get_msg<M: prost::Message + Default>(&self, cf: Cf, key: &[u8]) -> Result<Option<M>> {
        let value = self
            .snap
            .get_pinned_cf(self.engine.cf(cf), key)
            .map_err(rocks("snapshot get"))?;
        value.map(|v| decode_msg(key, &v)).transpose()
    }

    /// Iterates `[start, end)` of `cf` in key order (an empty `end` means no
    /// upper bound).
    pub fn iter(&self, cf: Cf, start: &[u8], end: &[u8]) -> RangeIter<'_> {
        let mut ropts = ReadOptions::default();
        ropts.set_iterate_lower_bound(start.to_vec());
        if !end.is_empty() {
            ropts.set_iterate_upper_bound(end.to_vec());
        }
        let mut raw = self.snap.raw_iterator_cf_opt(self.engine.cf(cf), ropts);
        raw.seek(start);
        RangeIter { raw, done: false }
    }

    /// Calls `f` with each pair of `[start, end)` of `cf` in key order until
    /// `f` breaks or the range ends. Cheaper than [`Snapshot::iter`]: no copy
    /// of keys or values.
    ///
    /// # Errors
    /// [`crate::Error::RocksDb`] if iteration fails.
    pub fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<()> {
        let mut it = self.iter(cf, start, end);
        while let Some((k, v)) = it.raw.item() {
            if f(k, v).is_break() {
                return Ok(());
            }
            it.raw.next();
        }
        it.raw.status().map_err(rocks("snapshot scan"))
    }
}

/// A forward iterator over a key range of a [`Snapshot`], yielding owned
/// pairs. Stops at the first error (yielded once).
pub struct RangeIter<'a> {
    raw: DBRawIteratorWithThreadMode<'a, DB>,
    done: bool,
}

impl Iterator for RangeIter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.raw.item() {
            Some((k, v)) => {
                let item = (k.to_vec(), v.to_vec());
                self.raw.next();
                Some(Ok(item))
            }
            None => {
                self.done = true;
                self.raw
                    .status()
                    .err()
                    .map(|e| Err(rocks("snapshot iterate")(e)))
            }
        }
    }
}
