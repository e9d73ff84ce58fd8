//! Region snapshots between stores (admin.md §1.3, DESIGN §6): a leader
//! whose follower needs entries it has compacted generates a snapshot file
//! off the poller threads, sends it beside the raft message in chunks, and
//! the follower installs it in two durable steps.
//!
//! Lifecycle of one snapshot:
//! 1. **Generate** (leader, snapshot worker): from one engine snapshot,
//!    the region's apply state and every key-value of its range go into
//!    `gen_<region>_<term>_<index>.snap` ([`file`]); the raft snapshot's
//!    `data` is a [`SnapshotMeta`] (region, size, CRC-32).
//! 2. **Send** (leader, snapshot worker): the message, then the file in
//!    chunks of [`SNAP_CHUNK_BYTES`] through [`Transport::send_snapshot`](
//!    super::transport::Transport::send_snapshot); raft hears how it went.
//! 3. **Receive** ([`SnapManager::receive`]): only for a region the store
//!    hosts, at most `snap_max_receiving` at once; the chunks go to a
//!    `.tmp` file of their own, are checked against the size and CRC the
//!    message announces, synced and renamed to
//!    `rev_<region>_<term>_<index>.snap`; only then does the message reach
//!    the peer, which admits it only when no other snapshot is being
//!    applied and every entry it handed to apply is applied.
//! 4. **Persist** (follower, raft poller): the peer's Ready writes the
//!    region as `Applying`, the raft and apply states at the snapshot
//!    index, and deletes its old log, in the round's one write batch.
//! 5. **Apply** (follower, apply poller, after every earlier entry): the
//!    region's data range is cleared and the file written into it, then
//!    `Normal` is written, synced, and the file deleted. A restart that
//!    finds a region `Applying` does this step again (or, if the file is
//!    gone, starts the peer again uninitialized, keeping its term and
//!    vote).
//!
//! Files left by a crash (`.tmp`, generated files, received files of
//! regions not `Applying`) are removed when the store opens; files idle
//! for [`SNAP_FILE_MAX_IDLE`] are collected every minute.

mod apply;
mod file;
mod generate;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flotilla_engine::Engine;
use flotilla_proto::eraftpb::Snapshot;
use flotilla_proto::raft_serverpb::{RaftMessage, SnapshotMeta};
use prost::Message as _;
use thiserror::Error;

pub use apply::{apply_snapshot_file, snapshot_apply_state};
pub use file::{SnapReader, SnapWriter};
pub use generate::{GenSlot, generate_snapshot};
pub use worker::{SnapScheduler, SnapTask, SnapWorker};

/// Bytes per chunk of a snapshot stream.
pub const SNAP_CHUNK_BYTES: usize = 1 << 20;

/// The subdirectory of a store's data directory that holds snapshot files.
pub const SNAP_DIR: &str = "snap";

/// A snapshot file untouched this long and not being applied is garbage
/// (a received file is taken within a round; a generated one is sent
/// soon after it is made, and made again if asked for later).
pub const SNAP_FILE_MAX_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// Why a snapshot could not be generated, sent, received or applied.
#[derive(Debug, Error)]
pub enum SnapError {
    /// A file operation failed.
    #[error("snapshot file: {0}")]
    Io(#[from] std::io::Error),
    /// The engine failed.
    #[error("engine: {0}")]
    Engine(#[from] flotilla_engine::Error),
    /// The received file is not as long as its message says.
    #[error("snapshot size {actual}, expected {expected}")]
    SizeMismatch {
        /// Bytes announced.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// The received file's CRC-32 is not the one its message carries.
    #[error("snapshot checksum {actual:#010x}, expected {expected:#010x}")]
    ChecksumMismatch {
        /// Announced.
        expected: u32,
        /// Computed.
        actual: u32,
    },
    /// A file or message is malformed.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// The region's state does not allow a snapshot now (not `Normal`, or
    /// gone).
    #[error("region {region_id} cannot be snapshotted now: {why}")]
    NotReady {
        /// The region.
        region_id: u64,
        /// Why.
        why: String,
    },
    /// The receiving store is already taking its limit of snapshots.
    #[error("receiver busy: {limit} snapshots being received")]
    ReceiverBusy {
        /// The store's limit.
        limit: usize,
    },
    /// The message could not reach the receiving store.
    #[error("transport: {0}")]
    Transport(#[from] super::transport::TransportError),
    /// The receiving store has no peer of the region.
    #[error("region {0} is not hosted by the receiving store")]
    RegionNotFound(u64),
    /// The stream was dropped on the way (a test filter, a broken
    /// connection).
    #[error("snapshot stream dropped")]
    Dropped,
    /// The receiving store refused the stream for a reason of its own (a
    /// network transport's report of the receiver's error).
    #[error("refused by the receiving store: {0}")]
    Refused(String),
}

/// The [`SnapshotMeta`] a raft snapshot carries in `data`.
///
/// # Errors
/// [`SnapError::Corrupt`] if it does not decode or names no region.
pub fn snapshot_meta(snap: &Snapshot) -> Result<SnapshotMeta, SnapError> {
    let meta = SnapshotMeta::decode(snap.data.clone())
        .map_err(|e| SnapError::Corrupt(format!("snapshot meta: {e}")))?;
    if meta.region.is_none() {
        return Err(SnapError::Corrupt("snapshot meta names no region".into()));
    }
    Ok(meta)
}

/// The snapshot directory of the store on `engine`.
pub fn snap_dir(engine: &Engine) -> PathBuf {
    engine.path().join(SNAP_DIR)
}

/// Where a follower keeps region `region_id`'s received snapshot at
/// (`term`, `index`) in the snapshot directory `dir`.
pub fn recv_path(dir: &Path, region_id: u64, term: u64, index: u64) -> PathBuf {
    dir.join(format!("rev_{region_id}_{term}_{index}.snap"))
}

/// (index, term) of a raft snapshot.
pub fn snapshot_index(snap: &Snapshot) -> (u64, u64) {
    snap.metadata.as_ref().map_or((0, 0), |m| (m.index, m.term))
}

/// The snapshot files of one store: where they live, and how many are
/// being received at once.
#[derive(Debug)]
pub struct SnapManager {
    dir: PathBuf,
    max_receiving: usize,
    receiving: AtomicUsize,
}

/// A receive slot; freed when dropped.
struct Receiving<'a>(&'a AtomicUsize);

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SnapManager {
    /// Snapshot files under `dir` (created if missing), at most
    /// `max_receiving` received at once.
    ///
    /// # Errors
    /// The directory could not be created.
    pub fn new(dir: impl AsRef<Path>, max_receiving: usize) -> Result<SnapManager, SnapError> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(SnapManager {
            dir: dir.as_ref().to_owned(),
            max_receiving: max_receiving.max(1),
            receiving: AtomicUsize::new(0),
        })
    }

    /// The manager of the store on `engine`: its files are in the
    /// engine's directory, under [`SNAP_DIR`].
    ///
    /// # Errors
    /// As [`SnapManager::new`].
    pub fn for_engine(engine: &Engine, max_receiving: usize) -> Result<SnapManager, SnapError> {
        SnapManager::new(snap_dir(engine), max_receiving)
    }

    /// Where a leader generates region `region_id`'s snapshot at
    /// (`term`, `index`).
    pub fn gen_path(&self, region_id: u64, term: u64, index: u64) -> PathBuf {
        self.dir
            .join(format!("gen_{region_id}_{term}_{index}.snap"))
    }

    /// Where a follower receives region `region_id`'s snapshot at
    /// (`term`, `index`), and keeps it until it is applied.
    pub fn recv_path(&self, region_id: u64, term: u64, index: u64) -> PathBuf {
        recv_path(&self.dir, region_id, term, index)
    }

    /// Generated files of `region_id` other than `keep` (older snapshots).
    fn older_generated(&self, region_id: u64, keep: &Path) -> Vec<PathBuf> {
        let prefix = format!("gen_{region_id}_");
        self.files()
            .into_iter()
            .filter(|p| {
                p.as_path() != keep
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".snap"))
            })
            .collect()
    }

    fn files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    /// Removes every file but `keep` (the received snapshots of regions
    /// still `Applying`). Called when the store opens. Returns how many
    /// were removed.
    pub fn remove_all_but(&self, keep: &[PathBuf]) -> usize {
        let mut removed = 0;
        for p in self.files() {
            if !keep.contains(&p) && std::fs::remove_file(&p).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Removes the files unused for `max_idle`: every one but the received
    /// file of a region being applied (its region state names it). Returns
    /// how many went. (The files of crashed writes go at the store's next
    /// open, [`SnapManager::remove_all_but`].)
    pub fn collect_garbage(&self, engine: &Engine, max_idle: std::time::Duration) -> usize {
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for path in self.files() {
            let idle = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok());
            if idle.is_none_or(|i| i < max_idle) || self.being_applied(engine, &path) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Whether `path` is the received file of a region `Applying` it.
    fn being_applied(&self, engine: &Engine, path: &Path) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        let Some(rest) = name
            .strip_prefix("rev_")
            .and_then(|r| r.strip_suffix(".snap"))
        else {
            return false;
        };
        let Some(region_id) = rest.split('_').next().and_then(|r| r.parse::<u64>().ok()) else {
            return false;
        };
        let state: Option<flotilla_proto::raft_serverpb::RegionLocalState> = engine
            .get_msg(
                flotilla_engine::Cf::Raft,
                &flotilla_engine::keys::region_state_key(region_id),
            )
            .ok()
            .flatten();
        state
            .filter(|s| s.state() == flotilla_proto::raft_serverpb::PeerState::Applying)
            .and_then(|s| s.applying_snapshot)
            .is_some_and(|t| self.recv_path(region_id, t.term, t.index) == path)
    }

    /// Receives a snapshot stream: `msg` (a `MsgSnapshot`) and its file in
    /// `chunks`. Returns the message to deliver once the file is complete,
    /// checked and in place.
    ///
    /// # Errors
    /// [`SnapError::ReceiverBusy`] over the limit; a malformed message; a
    /// file that is not what the message announces (nothing is kept); an
    /// I/O failure.
    pub fn receive(
        &self,
        msg: RaftMessage,
        chunks: &mut dyn Iterator<Item = Result<Vec<u8>, SnapError>>,
    ) -> Result<RaftMessage, SnapError> {
        let prev = self.receiving.fetch_add(1, Ordering::AcqRel);
        let _slot = Receiving(&self.receiving);
        if prev >= self.max_receiving {
            return Err(SnapError::ReceiverBusy {
                limit: self.max_receiving,
            });
        }
        let snap = msg
            .message
            .as_ref()
            .and_then(|m| m.snapshot.as_deref())
            .ok_or_else(|| SnapError::Corrupt("a snapshot stream without a snapshot".into()))?;
        let meta = snapshot_meta(snap)?;
        let (index, term) = snapshot_index(snap);
        if meta.region.as_ref().map(|r| r.id) != Some(msg.region_id) {
            return Err(SnapError::Corrupt(format!(
                "snapshot of region {:?} sent to region {}",
                meta.region.as_ref().map(|r| r.id),
                msg.region_id
            )));
        }
        let path = self.recv_path(msg.region_id, term, index);
        let mut out = file::ChunkWriter::create(&path)?;
        for chunk in chunks {
            let chunk = chunk?;
            out.push(&chunk, meta.size)?;
        }
        out.finish(meta.size, meta.checksum)?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::eraftpb::{MessageType, SnapshotMetadata};
    use flotilla_proto::metapb::Region;

    use super::file::FileInfo;
    use super::*;

    fn stream_msg(region_id: u64, info: FileInfo) -> RaftMessage {
        let meta = SnapshotMeta {
            region: Some(Region {
                id: region_id,
                ..Default::default()
            }),
            size: info.size,
            checksum: info.checksum,
            kv_count: info.kv_count,
            removed_peers: Vec::new(),
        };
        RaftMessage {
            region_id,
            message: Some(flotilla_proto::eraftpb::Message {
                msg_type: MessageType::MsgSnapshot as i32,
                snapshot: Some(Box::new(Snapshot {
                    data: meta.encode_to_vec().into(),
                    metadata: Some(SnapshotMetadata {
                        index: 9,
                        term: 2,
                        conf_state: None,
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A stream is received into the region's file; over the store's
    /// limit it is refused with `ReceiverBusy`, and a stream that is not
    /// what its message announced leaves no file.
    #[test]
    fn receive_checks_limit_size_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mgr = SnapManager::new(dir.path().join(SNAP_DIR), 1).unwrap();
        let src = dir.path().join("src.snap");
        let mut w = SnapWriter::create(&src).unwrap();
        w.put(b"k", b"v").unwrap();
        let info = w.finish().unwrap();
        let bytes = std::fs::read(&src).unwrap();

        let msg = mgr
            .receive(stream_msg(4, info), &mut std::iter::once(Ok(bytes.clone())))
            .unwrap();
        assert_eq!(msg.region_id, 4);
        assert_eq!(std::fs::read(mgr.recv_path(4, 2, 9)).unwrap(), bytes);

        // A stream that holds the only slot: a second one is refused.
        let mut nested = None;
        let mut first = std::iter::from_fn(|| {
            if nested.is_none() {
                nested = Some(mgr.receive(stream_msg(5, info), &mut std::iter::empty()));
                Some(Ok(bytes.clone()))
            } else {
                None
            }
        });
        mgr.receive(stream_msg(6, info), &mut first).unwrap();
        assert!(matches!(
            nested,
            Some(Err(SnapError::ReceiverBusy { limit: 1 }))
        ));

        let short = bytes[..bytes.len() - 1].to_vec();
        assert!(matches!(
            mgr.receive(stream_msg(7, info), &mut std::iter::once(Ok(short))),
            Err(SnapError::SizeMismatch { .. })
        ));
        assert!(!mgr.recv_path(7, 2, 9).exists());
        assert_eq!(mgr.remove_all_but(&[mgr.recv_path(4, 2, 9)]), 1);
        assert!(mgr.recv_path(4, 2, 9).exists());
    }

    /// Garbage collection removes idle files but the one a region is being
    /// applied from; fresh files stay.
    #[test]
    fn idle_files_are_collected_but_the_one_being_applied() {
        use flotilla_engine::{Cf, EngineOptions, keys};
        use flotilla_proto::raft_serverpb::{PeerState, RaftTruncatedState, RegionLocalState};

        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("db"), &EngineOptions::default()).unwrap();
        let mgr = SnapManager::new(dir.path().join(SNAP_DIR), 1).unwrap();
        let applying = mgr.recv_path(4, 2, 9);
        let stale = mgr.recv_path(5, 2, 9);
        let generated = mgr.gen_path(6, 3, 7);
        for p in [&applying, &stale, &generated] {
            std::fs::write(p, b"x").unwrap();
        }
        let state = RegionLocalState {
            state: PeerState::Applying as i32,
            region: Some(Region {
                id: 4,
                ..Default::default()
            }),
            merge_state: None,
            applying_snapshot: Some(RaftTruncatedState { index: 9, term: 2 }),
            applying_old_range: None,
        };
        engine
            .put_msg(Cf::Raft, &keys::region_state_key(4), &state)
            .unwrap();
        assert_eq!(
            mgr.collect_garbage(&engine, std::time::Duration::from_secs(3600)),
            0,
            "fresh files collected"
        );
        assert_eq!(mgr.collect_garbage(&engine, std::time::Duration::ZERO), 2);
        assert!(applying.exists() && !stale.exists() && !generated.exists());
    }
}

/// admin.md scenario 5 (`snap_crash_after_applying_state`): a store that
/// stopped with a region `Applying` (its snapshot persisted, the data
/// half written) writes the snapshot again when it opens: the range holds
/// exactly the snapshot's key-values, the region is `Normal` at the
/// snapshot's index, and the used file and every stale one are gone.
#[cfg(test)]
mod restart_tests {
    use flotilla_engine::{Cf, Durability, Engine, EngineOptions, keys};
    use flotilla_proto::eraftpb::HardState;
    use flotilla_proto::raft_serverpb::{
        PeerState, RaftLocalState, RaftTruncatedState, RegionLocalState,
    };

    use super::*;
    use crate::store::bootstrap::{bootstrap_store, initial_regions};
    use crate::store::{ChannelTransport, Config, Store};

    /// Puts into `wb` the states a store stopped with while `region` was
    /// `Applying` its snapshot at (`index`, `term`), having voted for
    /// `vote` in that term.
    fn put_applying(
        wb: &mut flotilla_engine::WriteBatch,
        region: &flotilla_proto::metapb::Region,
        index: u64,
        term: u64,
        vote: u64,
    ) {
        let state = RegionLocalState {
            state: PeerState::Applying as i32,
            region: Some(region.clone()),
            merge_state: None,
            applying_snapshot: Some(RaftTruncatedState { index, term }),
            applying_old_range: None,
        };
        wb.put_msg(Cf::Raft, &keys::region_state_key(region.id), &state);
        wb.put_msg(
            Cf::Raft,
            &keys::apply_state_key(region.id),
            &snapshot_apply_state(index, term),
        );
        let raft = RaftLocalState {
            hard_state: Some(HardState {
                term,
                vote,
                commit: index,
            }),
            last_index: index,
        };
        wb.put_msg(Cf::Raft, &keys::raft_state_key(region.id), &raft);
    }

    #[test]
    fn a_store_opened_with_a_region_applying_writes_the_snapshot_again() {
        let dir = tempfile::tempdir().unwrap();
        let region = initial_regions(&[1], 1).unwrap().remove(0);
        let (index, term) = (20, 6);
        let mgr_path;
        {
            let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
            bootstrap_store(&engine, 1, 1, std::slice::from_ref(&region)).unwrap();
            let mgr = SnapManager::for_engine(&engine, 1).unwrap();
            let mut w = SnapWriter::create(&mgr.recv_path(region.id, term, index)).unwrap();
            w.put(b"a", b"1").unwrap();
            w.put(b"b", b"2").unwrap();
            w.finish().unwrap();
            std::fs::write(mgr.gen_path(region.id, 5, 9), b"stale").unwrap();
            std::fs::write(mgr.dir.join("rev_7_1_1.snap.tmp"), b"partial").unwrap();
            mgr_path = mgr.dir.clone();
            let mut wb = engine.write_batch();
            // Half written before the crash: a key of the old data and one
            // of the snapshot's.
            wb.put(Cf::Default, &keys::data_key(b"old"), b"x");
            wb.put(Cf::Default, &keys::data_key(b"a"), b"1");
            put_applying(&mut wb, &region, index, term, 0);
            engine.write(wb, Durability::Sync).unwrap();
        }
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let cfg = Config {
            base_tick_ms: 10,
            ..Config::default()
        };
        let store = Store::open(dir.path(), cfg, ChannelTransport::new(), &logger).unwrap();
        let engine = store.engine().clone();
        let normal = || {
            engine
                .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(region.id))
                .unwrap()
                .is_some_and(|s| s.state() == PeerState::Normal)
        };
        // The file goes right after `Normal` is written: wait for both.
        let files_left = || std::fs::read_dir(&mgr_path).map(|d| d.count()).unwrap_or(0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !(normal() && files_left() == 0) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(normal(), "the region did not become Normal");
        let get = |k: &[u8]| engine.get(Cf::Default, &keys::data_key(k)).unwrap();
        assert_eq!(get(b"a").as_deref(), Some(&b"1"[..]));
        assert_eq!(get(b"b").as_deref(), Some(&b"2"[..]));
        assert_eq!(get(b"old"), None, "data outside the snapshot survived");
        assert!(
            engine
                .get_msg::<flotilla_proto::raft_serverpb::RaftApplyState>(
                    Cf::Raft,
                    &keys::apply_state_key(region.id)
                )
                .unwrap()
                .is_some_and(|s| s.applied_index >= index)
        );
        let left: Vec<_> = std::fs::read_dir(&mgr_path)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert!(left.is_empty(), "snapshot files left: {left:?}");
        assert!(store.fatal_error().is_none());
        store.shutdown();
    }

    /// A store that stopped with a region `Applying` whose file is gone
    /// opens (it used to stop at every start): the peer is uninitialized,
    /// keeping its term and vote, with its region state, apply state and
    /// data gone, waiting for its leader's next snapshot.
    #[test]
    fn a_lost_snapshot_file_leaves_the_peer_uninitialized() {
        let dir = tempfile::tempdir().unwrap();
        let region = initial_regions(&[1, 2, 3], 1).unwrap().remove(0);
        let (index, term) = (20, 6);
        {
            let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
            bootstrap_store(&engine, 1, 1, std::slice::from_ref(&region)).unwrap();
            let mut wb = engine.write_batch();
            wb.put(Cf::Default, &keys::data_key(b"half"), b"x");
            put_applying(&mut wb, &region, index, term, 3);
            engine.write(wb, Durability::Sync).unwrap();
        }
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let store = Store::open(
            dir.path(),
            Config::default(),
            ChannelTransport::new(),
            &logger,
        )
        .expect("the store opens");
        let engine = store.engine().clone();
        assert!(
            engine
                .get(Cf::Raft, &keys::region_state_key(region.id))
                .unwrap()
                .is_none()
        );
        assert!(
            engine
                .get(Cf::Default, &keys::data_key(b"half"))
                .unwrap()
                .is_none()
        );
        let raft: RaftLocalState = engine
            .get_msg(Cf::Raft, &keys::raft_state_key(region.id))
            .unwrap()
            .expect("raft state");
        let hs = raft.hard_state.unwrap();
        assert_eq!((hs.term, hs.vote, raft.last_index), (term, 3, 0));
        let status = store
            .handle()
            .region_status(region.id, std::time::Duration::from_secs(5))
            .expect("the peer runs");
        assert!(status.region.peers.is_empty(), "{status:?}");
        assert!(!status.applying_snapshot);
        store.shutdown();
    }
}
