//! A write batch that spans regions and column families.

use std::sync::Arc;

use crate::engine::{Cf, Engine, Inner};
use crate::error::{Error, Result};

/// Where a write batch comes from. The engine uses it only to aim injected
/// faults ([`Engine::inject_write_faults`]) at one write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WriteOrigin {
    /// Anything else (bootstrap, tools, tests).
    #[default]
    Other,
    /// A raft poll round: log entries and hard states.
    RaftLog,
    /// An apply round: user data and apply states.
    Apply,
}

impl WriteOrigin {
    /// Every origin, in index order.
    pub const ALL: [WriteOrigin; 3] =
        [WriteOrigin::Other, WriteOrigin::RaftLog, WriteOrigin::Apply];

    pub(crate) const fn index(self) -> usize {
        match self {
            WriteOrigin::Other => 0,
            WriteOrigin::RaftLog => 1,
            WriteOrigin::Apply => 2,
        }
    }
}

/// Writes collected from any number of regions and both column families,
/// applied atomically by one [`Engine::write`]. Made by
/// [`Engine::write_batch`]; it can only be written to that engine.
///
pub struct WriteBatch {
    raw: rocksdb::WriteBatch,
    engine: Arc<Inner>,
    /// Scratch buffer for encoding messages, reused across `put_msg` calls.
    scratch: Vec<u8>,
    origin: WriteOrigin,
}

impl std::fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBatch")
            .field("count", &self.count())
            .field("data_size", &self.data_size())
            .finish()
    }
}

impl WriteBatch {
    /// An empty batch for `engine`.
    pub fn new(engine: &Engine) -> WriteBatch {
        WriteBatch {
            raw: rocksdb::WriteBatch::default(),
            engine: engine.inner.clone(),
            scratch: Vec::new(),
            origin: WriteOrigin::Other,
        }
    }

    /// Marks where the batch comes from (see [`WriteOrigin`]).
    pub fn set_origin(&mut self, origin: WriteOrigin) {
        self.origin = origin;
    }

    /// Where the batch comes from.
    pub fn origin(&self) -> WriteOrigin {
        self.origin
    }

    /// Sets `key` to `value` in `cf`.
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.raw.put_cf(self.engine.cf(cf), key, value);
    }

    /// Encodes `msg` and sets `key` to it in `cf`.
    pub fn put_msg<M: prost::Message>(&mut self, cf: Cf, key: &[u8], msg: &M) {
        self.scratch.clear();
        // Encoding into a Vec cannot run out of space.
        msg.encode(&mut self.scratch)
            .unwrap_or_else(|_| unreachable!("Vec grows as needed"));
        self.raw.put_cf(self.engine.cf(cf), key, &self.scratch);
    }

    /// Deletes `key` from `cf`.
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.raw.delete_cf(self.engine.cf(cf), key);
    }

    /// Deletes every key of `cf` in `[start, end)`.
    ///
    /// # Errors
    /// [`Error::InvalidRange`] unless `start < end`; the batch is unchanged.
    /// (RocksDB takes an inverted range into its WAL and then fails it at
    /// memtable insertion with a fatal background error that stops every
    /// later write to the database, so it must never get one.)
    pub fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) -> Result<()> {
        check_range(start, end)?;
        self.raw.delete_range_cf(self.engine.cf(cf), start, end);
        Ok(())
    }

    /// Number of operations in the batch.
    pub fn count(&self) -> usize {
        self.raw.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Bytes of the batch's encoded representation.
    pub fn data_size(&self) -> usize {
        self.raw.size_in_bytes()
    }

    /// Removes every operation, keeping the buffer for reuse.
    pub fn clear(&mut self) {
        self.raw.clear();
    }

    pub(crate) fn into_raw(self) -> rocksdb::WriteBatch {
        self.raw
    }

    pub(crate) fn engine(&self) -> &Arc<Inner> {
        &self.engine
    }
}

/// [`Error::InvalidRange`] unless `start < end`.
pub(crate) fn check_range(start: &[u8], end: &[u8]) -> Result<()> {
    if start < end {
        Ok(())
    } else {
        Err(Error::InvalidRange {
            start: start.to_vec(),
            end: end.to_vec(),
        })
    }
}
