//! The key layout of a store's RocksDB (DESIGN §3).
//!
//! Local keys (everything Raft and region metadata) live in the `raft` column
//! family and start with [`LOCAL_PREFIX`]; user keys live in the `default`
//! column family as [`DATA_PREFIX`] followed by the user key. Integers are
//! big-endian so keys sort numerically:
//!
//! | key | bytes |
//! |---|---|
//! | store ident | `0x01 0x01` |
//! | raft log entry | `0x01 0x02 region_id:u64 0x01 index:u64` |
//! | raft state | `0x01 0x02 region_id:u64 0x02` |
//! | apply state | `0x01 0x02 region_id:u64 0x03` |
//! | apply origin | `0x01 0x02 region_id:u64 0x04` |
//! | removed peer | `0x01 0x02 region_id:u64 0x05 peer_id:u64` |
//! | region state | `0x01 0x03 region_id:u64 0x01` |
//! | user key | `'z' ++ key` |
//!
//! Consequences the tests pin down: all log keys of a region sort by index and
//! lie inside [`region_raft_prefix_range`]; keys of different regions never
//! interleave; every data key sorts after every local key.

use thiserror::Error;

/// First byte of every local (non-user) key.
pub const LOCAL_PREFIX: u8 = 0x01;
/// First byte of every user-data key.
pub const DATA_PREFIX: u8 = b'z';
/// The smallest data key: the encoding of the empty user key.
pub const DATA_MIN_KEY: &[u8] = &[DATA_PREFIX];
/// A key greater than every data key (the end of the data key space).
pub const DATA_MAX_KEY: &[u8] = &[DATA_PREFIX + 1];
/// The smallest local key.
pub const LOCAL_MIN_KEY: &[u8] = &[LOCAL_PREFIX];
/// A key greater than every local key.
pub const LOCAL_MAX_KEY: &[u8] = &[LOCAL_PREFIX + 1];

/// The store-ident key (`StoreIdent`).
pub const STORE_IDENT_KEY: &[u8] = &[LOCAL_PREFIX, 0x01];
/// The store's liveness state (`StoreLivenessState`), in the raft CF.
/// (Its second byte follows the region prefixes: `0x02` and `0x03` begin
/// per-region keys.)
pub const STORE_LIVENESS_KEY: &[u8] = &[LOCAL_PREFIX, 0x04];
/// The store's id allocator state (`IdAllocatorState`), in the raft CF.
pub const ID_ALLOCATOR_KEY: &[u8] = &[LOCAL_PREFIX, 0x05];

/// Second byte of per-region raft keys (log, raft state, apply state,
/// apply origin, removed-peer records).
pub const REGION_RAFT_PREFIX: u8 = 0x02;
/// Second byte of per-region metadata keys (region state).
pub const REGION_META_PREFIX: u8 = 0x03;

/// Suffix byte of raft log entry keys.
pub const RAFT_LOG_SUFFIX: u8 = 0x01;
/// Suffix byte of the raft state key (`RaftLocalState`).
pub const RAFT_STATE_SUFFIX: u8 = 0x02;
/// Suffix byte of the apply state key (`RaftApplyState`).
pub const APPLY_STATE_SUFFIX: u8 = 0x03;
/// Suffix of a region's apply origin (see [`apply_origin_key`]).
pub const APPLY_ORIGIN_SUFFIX: u8 = 0x04;
/// Suffix of a region's removed-peer records (see [`removed_peer_key`]).
pub const REMOVED_PEER_SUFFIX: u8 = 0x05;
/// Suffix byte of the region state key (`RegionLocalState`).
pub const REGION_STATE_SUFFIX: u8 = 0x01;

/// Length of `LOCAL_PREFIX, kind, region_id`.
const REGION_PREFIX_LEN: usize = 2 + 8;
/// Length of a per-region key with a suffix byte and no index.
pub const REGION_KEY_LEN: usize = REGION_PREFIX_LEN + 1;
/// Length of a raft log entry key.
pub const RAFT_LOG_KEY_LEN: usize = REGION_KEY_LEN + 8;

/// A key that does not follow the layout.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The key is empty or starts with a byte no key starts with.
    #[error("unknown key prefix in {key:?}")]
    UnknownPrefix {
        /// The offending key.
        key: Vec<u8>,
    },
    /// The key has a known prefix but the wrong length.
    #[error("{kind} key has length {len}, expected {expected}: {key:?}")]
    BadLength {
        /// What the prefix says the key is.
        kind: &'static str,
        /// The key's length.
        len: usize,
        /// The length that kind of key has.
        expected: usize,
        /// The offending key.
        key: Vec<u8>,
    },
    /// The key has a known prefix but an unknown suffix byte.
    #[error("unknown suffix {suffix:#04x} in {key:?}")]
    UnknownSuffix {
        /// The suffix byte found.
        suffix: u8,
        /// The offending key.
        key: Vec<u8>,
    },
    /// The key is not the kind the caller asked to decode.
    #[error("expected a {expected} key, got {key:?}")]
    WrongKind {
        /// The kind the caller expected.
        expected: &'static str,
        /// The offending key.
        key: Vec<u8>,
    },
}

/// A decoded key of either column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// The store-ident key.
    StoreIdent,
    /// The store-liveness state key.
    StoreLiveness,
    /// The id allocator state key.
    IdAllocator,
    /// A raft log entry of a region.
    RaftLog {
        /// The region.
        region_id: u64,
        /// The entry's raft index.
        index: u64,
    },
    /// A region's `RaftLocalState`.
    RaftState {
        /// The region.
        region_id: u64,
    },
    /// A region's `RaftApplyState`.
    ApplyState {
        /// The region.
        region_id: u64,
    },
    /// A region's apply origin (see [`apply_origin_key`]).
    ApplyOrigin {
        /// The region.
        region_id: u64,
    },
    /// A peer removed from a region (see [`removed_peer_key`]).
    RemovedPeer {
        /// The region.
        region_id: u64,
        /// The removed peer's id.
        peer_id: u64,
    },
    /// A region's `RegionLocalState`.
    RegionState {
        /// The region.
        region_id: u64,
    },
    /// A user key (without its data prefix).
    Data(&'a [u8]),
}

fn region_key(kind: u8, region_id: u64, suffix: u8) -> [u8; REGION_KEY_LEN] {
    let mut key = [0u8; REGION_KEY_LEN];
    key[0] = LOCAL_PREFIX;
    key[1] = kind;
    key[2..10].copy_from_slice(&region_id.to_be_bytes());
    key[10] = suffix;
    key
}

/// A per-region raft key with `suffix` and then `tail` (big-endian).
fn region_raft_key_with(region_id: u64, suffix: u8, tail: u64) -> [u8; RAFT_LOG_KEY_LEN] {
    let mut key = [0u8; RAFT_LOG_KEY_LEN];
    key[..REGION_KEY_LEN].copy_from_slice(&region_key(REGION_RAFT_PREFIX, region_id, suffix));
    key[REGION_KEY_LEN..].copy_from_slice(&tail.to_be_bytes());
    key
}

/// The key of region `region_id`'s raft log entry at `index`.
pub fn raft_log_key(region_id: u64, index: u64) -> [u8; RAFT_LOG_KEY_LEN] {
    region_raft_key_with(region_id, RAFT_LOG_SUFFIX, index)
}

/// The prefix every log entry key of `region_id` starts with.
pub fn raft_log_prefix(region_id: u64) -> [u8; REGION_KEY_LEN] {
    region_key(REGION_RAFT_PREFIX, region_id, RAFT_LOG_SUFFIX)
}

/// `[start, end)` covering the log entries of `region_id` with index in
/// `[low, high)`.
pub fn raft_log_range(
    region_id: u64,
    low: u64,
    high: u64,
) -> ([u8; RAFT_LOG_KEY_LEN], [u8; RAFT_LOG_KEY_LEN]) {
    (raft_log_key(region_id, low), raft_log_key(region_id, high))
}

/// The key of region `region_id`'s `RaftLocalState`.
pub fn raft_state_key(region_id: u64) -> [u8; REGION_KEY_LEN] {
    region_key(REGION_RAFT_PREFIX, region_id, RAFT_STATE_SUFFIX)
}

/// The key of region `region_id`'s `RaftApplyState`.
pub fn apply_state_key(region_id: u64) -> [u8; REGION_KEY_LEN] {
    region_key(REGION_RAFT_PREFIX, region_id, APPLY_STATE_SUFFIX)
}

/// The key of region `region_id`'s apply origin on this store: the
/// region's epoch (a `RegionEpoch`) when this store's peer last started
/// applying the log from a snapshot. Absent: it applied the log since the
/// region's start here (bootstrap or split). Every entry since was applied
/// here from the log.
pub fn apply_origin_key(region_id: u64) -> [u8; REGION_KEY_LEN] {
    region_key(REGION_RAFT_PREFIX, region_id, APPLY_ORIGIN_SUFFIX)
}

/// The key of the record that region `region_id` removed peer `peer_id`
/// (a `RemovedPeer`), written by every replica as it applies the removal:
/// the id is never added back, and a new leader tells the peer it is gone.
/// Same length as a log key; one region's records sort by peer id.
pub fn removed_peer_key(region_id: u64, peer_id: u64) -> [u8; RAFT_LOG_KEY_LEN] {
    region_raft_key_with(region_id, REMOVED_PEER_SUFFIX, peer_id)
}

/// `[start, end)` covering every removed-peer record of `region_id`.
pub fn removed_peers_range(region_id: u64) -> ([u8; REGION_KEY_LEN], [u8; REGION_KEY_LEN]) {
    (
        region_key(REGION_RAFT_PREFIX, region_id, REMOVED_PEER_SUFFIX),
        region_key(REGION_RAFT_PREFIX, region_id, REMOVED_PEER_SUFFIX + 1),
    )
}

/// The key of region `region_id`'s `RegionLocalState`.
pub fn region_state_key(region_id: u64) -> [u8; REGION_KEY_LEN] {
    region_key(REGION_META_PREFIX, region_id, REGION_STATE_SUFFIX)
}

/// `[start, end)` covering every raft key (log, raft state, apply state) of
/// `region_id` and nothing else.
pub fn region_raft_prefix_range(
    region_id: u64,
) -> ([u8; REGION_PREFIX_LEN], [u8; REGION_PREFIX_LEN]) {
    prefix_range(REGION_RAFT_PREFIX, region_id)
}

/// `[start, end)` covering every metadata key of `region_id`.
pub fn region_meta_prefix_range(
    region_id: u64,
) -> ([u8; REGION_PREFIX_LEN], [u8; REGION_PREFIX_LEN]) {
    prefix_range(REGION_META_PREFIX, region_id)
}

/// `[start, end)` covering the region-state keys of every region (what a
/// restart scans).
pub const REGION_META_RANGE: (&[u8], &[u8]) = (
    &[LOCAL_PREFIX, REGION_META_PREFIX],
    &[LOCAL_PREFIX, REGION_META_PREFIX + 1],
);

fn prefix_range(kind: u8, region_id: u64) -> ([u8; REGION_PREFIX_LEN], [u8; REGION_PREFIX_LEN]) {
    let mut start = [0u8; REGION_PREFIX_LEN];
    start[0] = LOCAL_PREFIX;
    start[1] = kind;
    start[2..].copy_from_slice(&region_id.to_be_bytes());
    let mut end = start;
    match region_id.checked_add(1) {
        Some(next) => end[2..].copy_from_slice(&next.to_be_bytes()),
        None => {
            // The last region id: the range ends where the next kind starts.
            end[1] = kind + 1;
            end[2..].fill(0);
        }
    }
    (start, end)
}

/// The data-CF key of user key `key`.
pub fn data_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(DATA_PREFIX);
    out.extend_from_slice(key);
    out
}

/// The data-CF key bounding a region whose end key is `end_key` (an empty end
/// key means the end of the key space, i.e. [`DATA_MAX_KEY`]).
pub fn data_end_key(end_key: &[u8]) -> Vec<u8> {
    if end_key.is_empty() {
        DATA_MAX_KEY.to_vec()
    } else {
        data_key(end_key)
    }
}

/// The user key inside data key `key`.
///
/// # Errors
/// [`KeyError::WrongKind`] if `key` is not a data key.
pub fn origin_key(key: &[u8]) -> Result<&[u8], KeyError> {
    match key.split_first() {
        Some((&DATA_PREFIX, rest)) => Ok(rest),
        _ => Err(KeyError::WrongKind {
            expected: "data",
            key: key.to_vec(),
        }),
    }
}

/// Decodes any key of the layout.
///
/// # Errors
/// A [`KeyError`] naming what is wrong when `key` does not follow the layout
/// exactly (unknown prefix or suffix, wrong length).
pub fn decode(key: &[u8]) -> Result<Key<'_>, KeyError> {
    match key {
        [DATA_PREFIX, rest @ ..] => Ok(Key::Data(rest)),
        [LOCAL_PREFIX, 0x01, ..] => {
            expect_len(key, "store ident", STORE_IDENT_KEY.len())?;
            Ok(Key::StoreIdent)
        }
        [LOCAL_PREFIX, 0x04, ..] => {
            expect_len(key, "store liveness", STORE_LIVENESS_KEY.len())?;
            Ok(Key::StoreLiveness)
        }
        [LOCAL_PREFIX, 0x05, ..] => {
            expect_len(key, "id allocator", ID_ALLOCATOR_KEY.len())?;
            Ok(Key::IdAllocator)
        }
        [LOCAL_PREFIX, REGION_RAFT_PREFIX, ..] => decode_region_raft(key),
        [LOCAL_PREFIX, REGION_META_PREFIX, ..] => {
            expect_len(key, "region meta", REGION_KEY_LEN)?;
            let region_id = be_u64(&key[2..10]);
            match key[10] {
                REGION_STATE_SUFFIX => Ok(Key::RegionState { region_id }),
                suffix => Err(KeyError::UnknownSuffix {
                    suffix,
                    key: key.to_vec(),
                }),
            }
        }
        _ => Err(KeyError::UnknownPrefix { key: key.to_vec() }),
    }
}

fn decode_region_raft(key: &[u8]) -> Result<Key<'_>, KeyError> {
    if key.len() < REGION_KEY_LEN {
        return Err(KeyError::BadLength {
            kind: "region raft",
            len: key.len(),
            expected: REGION_KEY_LEN,
            key: key.to_vec(),
        });
    }
    let region_id = be_u64(&key[2..10]);
    match key[10] {
        RAFT_LOG_SUFFIX => {
            expect_len(key, "raft log", RAFT_LOG_KEY_LEN)?;
            Ok(Key::RaftLog {
                region_id,
                index: be_u64(&key[REGION_KEY_LEN..]),
            })
        }
        RAFT_STATE_SUFFIX => {
            expect_len(key, "raft state", REGION_KEY_LEN)?;
            Ok(Key::RaftState { region_id })
        }
        APPLY_STATE_SUFFIX => {
            expect_len(key, "apply state", REGION_KEY_LEN)?;
            Ok(Key::ApplyState { region_id })
        }
        APPLY_ORIGIN_SUFFIX => {
            expect_len(key, "apply origin", REGION_KEY_LEN)?;
            Ok(Key::ApplyOrigin { region_id })
        }
        REMOVED_PEER_SUFFIX => {
            expect_len(key, "removed peer", RAFT_LOG_KEY_LEN)?;
            Ok(Key::RemovedPeer {
                region_id,
                peer_id: be_u64(&key[REGION_KEY_LEN..]),
            })
        }
        suffix => Err(KeyError::UnknownSuffix {
            suffix,
            key: key.to_vec(),
        }),
    }
}

/// Decodes a raft log key into `(region_id, index)`.
///
/// # Errors
/// [`KeyError::WrongKind`] if `key` is a valid key of another kind; other
/// [`KeyError`]s if it is malformed.
pub fn decode_raft_log_key(key: &[u8]) -> Result<(u64, u64), KeyError> {
    match decode(key)? {
        Key::RaftLog { region_id, index } => Ok((region_id, index)),
        _ => Err(KeyError::WrongKind {
            expected: "raft log",
            key: key.to_vec(),
        }),
    }
}

/// Decodes a region-state key into its region id.
///
/// # Errors
/// [`KeyError::WrongKind`] if `key` is a valid key of another kind; other
/// [`KeyError`]s if it is malformed.
pub fn decode_region_state_key(key: &[u8]) -> Result<u64, KeyError> {
    match decode(key)? {
        Key::RegionState { region_id } => Ok(region_id),
        _ => Err(KeyError::WrongKind {
            expected: "region state",
            key: key.to_vec(),
        }),
    }
}

fn expect_len(key: &[u8], kind: &'static str, expected: usize) -> Result<(), KeyError> {
    if key.len() == expected {
        Ok(())
    } else {
        Err(KeyError::BadLength {
            kind,
            len: key.len(),
            expected,
            key: key.to_vec(),
        })
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests;
