//! Opening the database, point operations and statistics.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, ErrorKind, Options,
    WriteOptions,
};

use crate::error::{Error, Result, rocks};
use crate::snapshot::Snapshot;
use crate::write_batch::{WriteBatch, WriteOrigin, check_range};

/// The column families of a flotilla database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cf {
    /// User data (`'z' ++ key`).
    Default,
    /// Raft logs, raft/apply/region states and the store ident.
    Raft,
}

impl Cf {
    /// Every column family, in creation order.
    pub const ALL: [Cf; 2] = [Cf::Default, Cf::Raft];

    /// The RocksDB name of the column family.
    pub const fn name(self) -> &'static str {
        match self {
            Cf::Default => "default",
            Cf::Raft => "raft",
        }
    }
}

/// Whether a write waits for its WAL record to reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the WAL before returning: the write survives a machine crash.
    Sync,
    /// Return once the write is in the WAL buffer: it survives a process
    /// crash but may be lost on a machine crash.
    Buffered,
}

/// Default shared block-cache capacity.
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 256 << 20;
/// Default memtable size per column family. Small on purpose: a store's
/// writes land all over the key space (every region appends its own log,
/// raft state and apply state), so each memtable insert walks the whole
/// skiplist with a cache miss per level; a shallower list is faster
/// (`flotilla demo --regions 10000 --clients 256 --write-ratio 1`: about
/// 1.2x the writes/s of RocksDB's 64 MiB), and idle memtables hold less.
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 8 << 20;
/// Default number of RocksDB background flush/compaction jobs.
pub const DEFAULT_BACKGROUND_JOBS: i32 = 2;
/// RocksDB's marker file: a directory holding it is a RocksDB database.
const CURRENT_FILE: &str = "CURRENT";

/// How to open an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Bytes of the block cache shared by both column families.
    pub block_cache_bytes: usize,
    /// Memtable size per column family.
    pub write_buffer_bytes: usize,
    /// RocksDB background jobs (flush and compaction threads).
    pub background_jobs: i32,
    /// Create the database when the directory is absent or empty.
    pub create_if_missing: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            background_jobs: DEFAULT_BACKGROUND_JOBS,
            create_if_missing: true,
        }
    }
}

impl EngineOptions {
    /// Checks the options can work.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        if self.write_buffer_bytes == 0 {
            return Err(Error::InvalidOptions(
                "write_buffer_bytes must be > 0".into(),
            ));
        }
        if self.background_jobs < 1 {
            return Err(Error::InvalidOptions("background_jobs must be >= 1".into()));
        }
        Ok(())
    }
}

/// Counters of the writes an engine has done (monotonic since open).
#[derive(Debug, Default)]
pub struct EngineStats {
    writes: AtomicU64,
    synced_writes: AtomicU64,
    written_bytes: AtomicU64,
    written_ops: AtomicU64,
}

impl EngineStats {
    /// Write-batch writes done (synced or not).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Writes done with [`Durability::Sync`]: each one is a WAL fsync.
    pub fn synced_writes(&self) -> u64 {
        self.synced_writes.load(Ordering::Relaxed)
    }

    /// Bytes of write-batch data written.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::Relaxed)
    }

    /// Operations (puts, deletes, range deletes) in the batches written:
    /// each is one insert into a memtable.
    pub fn written_ops(&self) -> u64 {
        self.written_ops.load(Ordering::Relaxed)
    }
}

pub(crate) struct Inner {
    pub(crate) db: DB,
    path: PathBuf,
    stats: EngineStats,
    /// Writes still to fail, by [`WriteOrigin::index`] (fault injection).
    faults: [AtomicU64; WriteOrigin::ALL.len()],
}

impl Inner {
    pub(crate) fn cf(&self, cf: Cf) -> &ColumnFamily {
        // Both column families are checked to exist when the database opens
        // and are never dropped, so the lookup cannot fail.
        self.db
            .cf_handle(cf.name())
            .unwrap_or_else(|| unreachable!("column family {} checked at open", cf.name()))
    }
}

/// One store's RocksDB. Cheap to clone (an `Arc`); `Send + Sync`, so many
/// threads share one engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Whether an engine's database is closed ([`Engine::close_watch`]).
#[derive(Debug, Clone)]
pub struct CloseWatch(std::sync::Weak<Inner>);

impl CloseWatch {
    /// Whether every `Engine` of the database was dropped.
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }
}

/// RocksDB's memory of one engine ([`Engine::memory_usage`]), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineMemory {
    /// Memtables of every column family (written, not yet flushed).
    pub memtables: u64,
    /// Blocks in the block cache.
    pub block_cache: u64,
}

impl Engine {
    /// Opens the flotilla database at `path`, creating it when the path does
    /// not exist or is an empty directory (and `opts.create_if_missing`).
    ///
    /// # Errors
    /// - [`Error::NotFlotillaDb`]: the path is a file, a non-empty directory
    ///   that holds no RocksDB, or a RocksDB with column families flotilla
    ///   does not use;
    /// - [`Error::MissingColumnFamily`]: a RocksDB lacking `default` or `raft`;
    /// - [`Error::Corruption`]: RocksDB reports corrupt or truncated files;
    /// - [`Error::Io`] / [`Error::RocksDb`] for other failures.
    ///
    /// Nothing is created or overwritten in a path that fails these checks.
    pub fn open(path: impl AsRef<Path>, opts: &EngineOptions) -> Result<Engine> {
        opts.validate()?;
        let path = path.as_ref().to_path_buf();
        let existing = check_path(&path, opts)?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(!existing);
        db_opts.create_missing_column_families(!existing);
        db_opts.set_paranoid_checks(true);
        db_opts.set_max_background_jobs(opts.background_jobs);
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let descriptors = Cf::ALL.iter().map(|cf| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&table);
            cf_opts.set_write_buffer_size(opts.write_buffer_bytes);
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&db_opts, &path, descriptors)
            .map_err(|e| open_error(&path, "open", e))?;
        Ok(Engine {
            inner: Arc::new(Inner {
                db,
                path,
                stats: EngineStats::default(),
                faults: Default::default(),
            }),
        })
    }

    /// A watch that tells when this database is closed: RocksDB closes it,
    /// releasing its directory's lock, when the last `Engine` sharing it is
    /// dropped. (A process that reopens the directory after dropping its
    /// own handles waits for this: a call in flight elsewhere may still
    /// hold a clone.) The watch itself keeps nothing open.
    pub fn close_watch(&self) -> CloseWatch {
        CloseWatch(Arc::downgrade(&self.inner))
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Write counters since open.
    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    /// What RocksDB holds in memory for this engine now: its memtables
    /// (every column family) and its block cache. Both are bounded by the
    /// engine's options, whatever the number of regions.
    ///
    /// # Errors
    /// [`Error::RocksDb`] if RocksDB cannot report a property.
    pub fn memory_usage(&self) -> Result<EngineMemory> {
        let db = &self.inner.db;
        let mut memtables = 0;
        for cf in Cf::ALL {
            memtables += db
                .property_int_value_cf(self.inner.cf(cf), "rocksdb.cur-size-all-mem-tables")
                .map_err(rocks("memtable size"))?
                .unwrap_or(0);
        }
        let block_cache = db
            .property_int_value("rocksdb.block-cache-usage")
            .map_err(rocks("block cache usage"))?
            .unwrap_or(0);
        Ok(EngineMemory {
            memtables,
            block_cache,
        })
    }

    /// Reads `key` from `cf`.
    ///
    /// # Errors
    /// [`Error::RocksDb`] if the read fails.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner
            .db
            .get_cf(self.inner.cf(cf), key)
            .map_err(rocks("get"))
    }

    /// Reads `key` from `cf` and decodes it as `M`.
    ///
    /// # Errors
    /// [`Error::RocksDb`] if the read fails, [`Error::Decode`] if the value is
    /// not a valid `M`.
    pub fn get_msg<M: prost::Message + Default>(&self, cf: Cf, key: &[u8]) -> Result<Option<M>> {
        let value = self
            .inner
            .db
            .get_pinned_cf(self.inner.cf(cf), key)
            .map_err(rocks("get"))?;
        value.map(|v| decode_msg(key, &v)).transpose()
    }

    /// Writes one key unsynced (use a [`WriteBatch`] for anything durable or
    /// multi-key).
    ///
    /// # Errors
    /// [`Error::RocksDb`] if the write fails.
    pub fn put(&self, cf: Cf, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner
            .db
            .put_cf(self.inner.cf(cf), key, value)
            .map_err(rocks("put"))
    }

    /// Encodes `msg` and writes it under `key`, unsynced.
    ///
    /// # Errors
    /// [`Error::RocksDb`] if the write fails.
    pub fn put_msg<M: prost::Message>(&self, cf: Cf, key: &[u8], msg: &M) -> Result<()> {
        self.put(cf, key, &msg.encode_to_vec())
    }

    /// Deletes one key, unsynced.
    ///
    /// # Errors
    /// [`Error::RocksDb`] if the write fails.
    pub fn delete(&self, cf: Cf, key: &[u8]) -> Result<()> {
        self.inner
            .db
            .delete_cf(self.inner.cf(cf), key)
            .map_err(rocks("delete"))
    }

    /// Deletes every key in `[start, end)` of `cf`, unsynced.
    ///
    /// # Errors
    /// [`Error::InvalidRange`] unless `start < end`; [`Error::RocksDb`] if
    /// the write fails.
    pub fn delete_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<()> {
        check_range(start, end)?;
        self.inner
            .db
            .delete_range_cf(self.inner.cf(cf), start, end)
            .map_err(rocks("delete_range"))
    }

    /// An empty write batch for this engine.
    pub fn write_batch(&self) -> WriteBatch {
        WriteBatch::new(self)
    }

    /// Applies `batch` atomically (consuming it): after a crash either all of it or none of
    /// it is present. With [`Durability::Sync`] it is on stable storage when
    /// this returns. An empty batch is a no-op.
    ///
    /// # Errors
    /// [`Error::ForeignBatch`] if `batch` was made by another engine;
    /// [`Error::RocksDb`] if the write fails (then none of it applied).
    pub fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        if !Arc::ptr_eq(&self.inner, batch.engine()) {
            return Err(Error::ForeignBatch);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let origin = batch.origin();
        let fault = &self.inner.faults[origin.index()];
        if fault.load(Ordering::Relaxed) > 0
            && fault
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(Error::InjectedFault { origin });
        }
        let mut wopts = WriteOptions::default();
        let sync = durability == Durability::Sync;
        wopts.set_sync(sync);
        let data_size = batch.data_size() as u64;
        let ops = batch.count() as u64;
        self.inner
            .db
            .write_opt(batch.into_raw(), &wopts)
            .map_err(rocks("write"))?;
        let stats = &self.inner.stats;
        stats.writes.fetch_add(1, Ordering::Relaxed);
        if sync {
            stats.synced_writes.fetch_add(1, Ordering::Relaxed);
        }
        stats.written_bytes.fetch_add(data_size, Ordering::Relaxed);
        stats.written_ops.fetch_add(ops, Ordering::Relaxed);
        Ok(())
    }

    /// Fault injection, for tests of the write-failure paths: the next
    /// `count` non-empty writes of batches from `origin` fail with
    /// [`Error::InjectedFault`] and write nothing. `count = 0` cancels what
    /// is left. Costs one relaxed atomic load per write otherwise.
    pub fn inject_write_faults(&self, origin: WriteOrigin, count: u64) {
        self.inner.faults[origin.index()].store(count, Ordering::Release);
    }

    /// A consistent point-in-time view of both column families.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.inner.clone())
    }

    /// Approximate bytes on disk of the keys in `[start, end)` of `cf`. It
    /// counts SST files only: recent writes still in the memtable are not
    /// included until flushed (see [`Engine::flush`]).
    pub fn approximate_size(&self, cf: Cf, start: &[u8], end: &[u8]) -> u64 {
        let ranges = [rocksdb::Range::new(start, end)];
        self.inner
            .db
            .get_approximate_sizes_cf(self.inner.cf(cf), &ranges)
            .first()
            .copied()
            .unwrap_or(0)
    }

    /// Flushes `cf`'s memtable to an SST file and waits for it.
    ///
    /// # Errors
    /// [`Error::RocksDb`] if the flush fails.
    pub fn flush(&self, cf: Cf) -> Result<()> {
        self.inner
            .db
            .flush_cf(self.inner.cf(cf))
            .map_err(rocks("flush"))
    }

    /// fsyncs the WAL, making every earlier buffered write durable.
    ///
    /// # Errors
    /// [`Error::RocksDb`] if the sync fails.
    pub fn sync_wal(&self) -> Result<()> {
        self.inner.db.flush_wal(true).map_err(rocks("sync_wal"))?;
        self.inner
            .stats
            .synced_writes
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

pub(crate) fn decode_msg<M: prost::Message + Default>(key: &[u8], value: &[u8]) -> Result<M> {
    M::decode(value).map_err(|source| Error::Decode {
        what: std::any::type_name::<M>(),
        key: key.to_vec(),
        source,
    })
}

/// Checks what is at `path`. Returns whether a database already exists there.
fn check_path(path: &Path, opts: &EngineOptions) -> Result<bool> {
    let io = |op| {
        move |source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let not_ours = |reason: &str| Error::NotFlotillaDb {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if !path.exists() {
        if !opts.create_if_missing {
            return Err(not_ours("path does not exist"));
        }
        fs::create_dir_all(path).map_err(io("create directory"))?;
        return Ok(false);
    }
    if !path.is_dir() {
        return Err(not_ours("not a directory"));
    }
    if !path.join(CURRENT_FILE).exists() {
        let empty = fs::read_dir(path)
            .map_err(io("read directory"))?
            .next()
            .is_none();
        return match (empty, opts.create_if_missing) {
            (true, true) => Ok(false),
            (true, false) => Err(not_ours("empty directory")),
            (false, _) => Err(not_ours("directory is not empty and holds no RocksDB")),
        };
    }
    let cfs = DB::list_cf(&Options::default(), path)
        .map_err(|e| open_error(path, "list column families", e))?;
    for cf in Cf::ALL {
        if !cfs.iter().any(|name| name == cf.name()) {
            return Err(Error::MissingColumnFamily {
                path: path.to_path_buf(),
                cf: cf.name(),
            });
        }
    }
    if let Some(extra) = cfs
        .iter()
        .find(|name| !Cf::ALL.iter().any(|cf| cf.name() == name.as_str()))
    {
        return Err(not_ours(&format!("unexpected column family {extra:?}")));
    }
    Ok(true)
}

fn open_error(path: &Path, op: &'static str, source: rocksdb::Error) -> Error {
    match source.kind() {
        ErrorKind::Corruption => Error::Corruption {
            path: path.to_path_buf(),
            source,
        },
        _ => Error::RocksDb { op, source },
    }
}
