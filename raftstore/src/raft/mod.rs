//! The consensus core, sans-IO: no threads, clocks, disk or network. Time
//! enters only through [`RawNode::tick`], randomness only from the seeded
//! PRNG in [`Config::rng_seed`].
//!
//! Layout (one concept per module): [`RawNode`] and [`Ready`] are the
//! application's interface; `core` is the state machine split by concern;
//! `log` holds the durable + unstable log; `tracker` the leader's view of
//! each peer (with lazily allocated inflights); `quorum` the pure quorum
//! math; `confchange` membership changes; `read_only` ReadIndex;
//! [`Storage`] the persistence contract with [`MemStorage`] for tests.

pub mod confchange;
mod config;
mod core;
mod errors;
pub mod log;
pub mod quorum;
mod raw_node;
mod read_only;
mod rng;
mod status;
mod storage;
pub mod tracker;
mod util;

pub use self::config::{
    Config, DEFAULT_ELECTION_TICK, DEFAULT_HEARTBEAT_TICK, DEFAULT_MAX_INFLIGHT_MSGS,
    DEFAULT_MAX_SIZE_PER_MSG, MAX_INFLIGHT_MSGS_LIMIT, ReadOnlyOption,
};
pub use self::core::membership_decode::decode_conf_change;
pub use self::core::{CAMPAIGN_TRANSFER, INVALID_ID, MAX_TERM, Raft, SoftState, StateRole};
pub use self::errors::{ConfigError, Error, Result, StorageError};
pub use self::raw_node::{LightReady, RawNode, Ready, is_local_msg, is_response_msg};
pub use self::read_only::ReadState;
pub use self::rng::SplitMix64;
pub use self::status::Status;
pub use self::storage::{MemStorage, MemStorageCore, MemStorageWriteGuard, RaftState, Storage};
pub use self::util::{entry_size, limit_size};
