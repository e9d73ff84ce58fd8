//! The store: peers, apply, transport and the embedding API, on the batch
//! system (`flotilla-router`) and the shared engine (`flotilla-engine`).
//!
//! The life of a write (DESIGN §2): a [`Client`] routes it to the region's
//! leader through a [`StoreHandle`]; the peer proposes it; the raft poller
//! writes every handled peer's entries and hard state in one batch with one
//! sync, sends messages, and has the committed entries applied: data and
//! `RaftApplyState` written atomically, the callback answered, the peer
//! told. It applies them itself, in a batch of its own after the round's
//! write, when the region's apply delegate is idle (`Config::apply_inline`,
//! borrowing the delegate from its mailbox); otherwise it hands them to the
//! apply pollers, which do the same and report back by message.

mod admin;
mod apply;
pub mod bootstrap;
mod client;
mod cluster;
mod config;
mod error;
mod fatal;
mod fsm;
mod heartbeat;
mod hibernation;
mod histogram;
mod id_alloc;
mod liveness;
mod meta;
mod msg;
mod node;
mod peer;
mod peer_storage;
mod removed;
mod snapshot;
mod split_check;
mod transport;
mod util;
mod validate;

pub use self::admin::{
    EpochRule, PROMOTE_MAX_LAG, SplitKeyFault, TRANSFER_LEADER_MAX_LAG, epoch_rule,
};
pub use self::client::{Client, ClientConfig, StoreApi, Stores, deadline_in};
pub use self::cluster::{CLUSTER_ID, Cluster, bootstrap_store_dirs, store_dir};
pub use self::config::Config;
pub use self::error::{AdminError, Error, Result};
pub use self::fatal::FatalHook;
pub use self::fsm::{MESSAGE_TYPES, StoreMetrics, WAKE_REASONS, WakeReason};
pub use self::histogram::{HistogramSnapshot, LatencyHistogram};
pub use self::id_alloc::{ID_BATCH, ID_COUNTER_BITS, IdAllocator};
pub use self::msg::{Callback, InspectCallback, RegionStatus, callback_panics};
pub use self::node::{Store, StoreHandle, region_states};
pub use self::peer_storage::{LoadError, PeerStorage, RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM};
pub use self::snapshot::{SNAP_CHUNK_BYTES, SNAP_DIR, SnapError};
pub use self::transport::{
    ChannelTransport, DelayFilter, DropFilter, Filter, FilterId, MessageSink, PartitionFilter,
    Transport, TransportError,
};
pub use self::util::{err_response, key_in_region, response_error};
pub use self::validate::{RequestKind, RequestLimits, validate_request, validate_requests};
