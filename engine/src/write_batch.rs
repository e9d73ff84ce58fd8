//! A write batch that spans regions and column families.

use std::sync::Arc;

use crate::engine::{Cf, Engine, Inner};

/// Writes collected from any number of regions and both column families,
/// applied atomically by one [`Engine::write`]. Made by
/// [`Engine::write_batch`]; it can only be written to that engine.
///
pub struct WriteBatch {
    raw: rocksdb::WriteBatch,
    engine: Arc<Inner>,
    /// Scratch buffer for encoding messages, reused across `put_msg` calls.
    scratch: Vec<u8>,
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
        }
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
    pub fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) {
        self.raw.delete_range_cf(self.engine.cf(cf), start, end);
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
