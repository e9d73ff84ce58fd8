//! The durable state of one simulated node: a `MemStorage` that receives
//! only what the application persisted, plus the application's own durable
//! state (the applied index and a digest of the state machine at it).

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use flotilla_proto::eraftpb::{Entry, Snapshot, SnapshotMetadata};
use flotilla_raftstore::raft::{MemStorage, RaftState, Result, Storage};

/// Bytes of the state-machine digest carried in a snapshot's data.
const DIGEST_BYTES: usize = std::mem::size_of::<u64>();

/// The application's durable state besides the raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppState {
    /// Highest index applied to the state machine (persisted with it).
    pub applied: u64,
    /// Digest of the state machine after applying `applied`.
    pub digest: u64,
}

/// A node's durable storage. Clones share the same state, so the copy held
/// by the `RawNode` and the one kept by the simulator survive a crash
/// together (the `RawNode` is dropped, this is not).
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    /// The raft log, hard state and conf state, as persisted.
    pub mem: MemStorage,
    app: Rc<Cell<AppState>>,
}

impl SimStorage {
    /// The persisted application state.
    pub fn app(&self) -> AppState {
        self.app.get()
    }

    /// Persists the application state.
    pub fn set_app(&self, a: AppState) {
        self.app.set(a);
    }

    /// The persisted (term, vote, commit).
    pub fn hard_state(&self) -> (u64, u64, u64) {
        let core = self.mem.rl();
        let hs = core.hard_state();
        (hs.term, hs.vote, hs.commit)
    }
}

/// Encodes a state-machine digest as snapshot data.
pub fn digest_to_data(digest: u64) -> Bytes {
    Bytes::copy_from_slice(&digest.to_le_bytes())
}

/// Decodes the digest of a snapshot built by [`SimStorage`]; `None` if the
/// data is not a digest.
pub fn data_to_digest(data: &[u8]) -> Option<u64> {
    let bytes: [u8; DIGEST_BYTES] = data.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

impl Storage for SimStorage {
    fn initial_state(&self) -> Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size)
    }

    fn term(&self, idx: u64) -> Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> Result<u64> {
        self.mem.last_index()
    }

    /// A snapshot of the *applied* state: its index is the persisted applied
    /// index and its conf state the one in force there (MemStorage's own
    /// snapshot uses the commit index, whose conf state may not be known).
    fn snapshot(&self, _request_index: u64, _to: u64) -> Result<Snapshot> {
        let app = self.app.get();
        let term = self.mem.term(app.applied)?;
        let conf_state = self.mem.initial_state()?.conf_state;
        Ok(Snapshot {
            data: digest_to_data(app.digest),
            metadata: Some(SnapshotMetadata {
                index: app.applied,
                term,
                conf_state: Some(conf_state),
            }),
        })
    }
}
