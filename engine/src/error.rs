//! The engine's error type.

use std::path::PathBuf;

use thiserror::Error;

use crate::keys::KeyError;

/// Everything that can go wrong in the engine. Each variant names its cause.
#[derive(Debug, Error)]
pub enum Error {
    /// The path exists but does not hold a flotilla database.
    #[error("{} is not a flotilla database: {reason}", path.display())]
    NotFlotillaDb {
        /// The path given to open.
        path: PathBuf,
        /// Why it is not one.
        reason: String,
    },
    /// The path holds a RocksDB without one of flotilla's column families.
    #[error("database at {} lacks column family {cf:?}", path.display())]
    MissingColumnFamily {
        /// The path given to open.
        path: PathBuf,
        /// The missing column family.
        cf: &'static str,
    },
    /// RocksDB found the database's files corrupt or truncated.
    #[error("database at {} is corrupt: {source}", path.display())]
    Corruption {
        /// The path given to open.
        path: PathBuf,
        /// RocksDB's report.
        source: rocksdb::Error,
    },
    /// A file-system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A RocksDB call failed.
    #[error("rocksdb {op}: {source}")]
    RocksDb {
        /// The operation that failed.
        op: &'static str,
        /// RocksDB's report.
        source: rocksdb::Error,
    },
    /// A stored value did not decode as the message it should be.
    #[error("decoding {what} at key {key:?}: {source}")]
    Decode {
        /// The message type expected.
        what: &'static str,
        /// The key the value was read from.
        key: Vec<u8>,
        /// The decoder's report.
        source: prost::DecodeError,
    },
    /// A key did not follow the layout.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A write batch made by one engine was written to another.
    #[error("write batch belongs to another engine")]
    ForeignBatch,
    /// Options that cannot work.
    #[error("invalid engine options: {0}")]
    InvalidOptions(String),
    /// A range delete whose end does not come after its start. RocksDB
    /// would accept such a batch into its WAL and then fail it at memtable
    /// insertion, which poisons the whole database; it is refused here
    /// before it can reach RocksDB.
    #[error("invalid range: end {end:?} does not come after start {start:?}")]
    InvalidRange {
        /// The range's start.
        start: Vec<u8>,
        /// The range's end.
        end: Vec<u8>,
    },
    /// A write failed by [`crate::Engine::inject_write_faults`] (fault
    /// tests); nothing of the batch was written.
    #[error("injected write fault ({origin:?})")]
    InjectedFault {
        /// The origin of the failed batch.
        origin: crate::WriteOrigin,
    },
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> Error {
    move |source| Error::RocksDb { op, source }
}
