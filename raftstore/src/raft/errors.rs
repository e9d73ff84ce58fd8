//! The consensus core's error types.

use thiserror::Error;

/// Errors a [`Storage`](super::Storage) implementation reports.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The requested index is below the storage's first index: it has been
    /// compacted into a snapshot.
    #[error("log compacted: requested index is below the first index")]
    Compacted,
    /// The requested index is beyond the storage's last index.
    #[error("log unavailable: requested index is beyond the last index")]
    Unavailable,
    /// The requested snapshot is older than the one the storage holds.
    #[error("snapshot out of date")]
    SnapshotOutOfDate,
    /// The snapshot is being generated; ask again later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// Any other storage failure (I/O, decoding, ...).
    #[error("storage error: {0}")]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl PartialEq for StorageError {
    fn eq(&self, other: &Self) -> bool {
        matches!(
            (self, other),
            (Self::Compacted, Self::Compacted)
                | (Self::Unavailable, Self::Unavailable)
                | (Self::SnapshotOutOfDate, Self::SnapshotOutOfDate)
                | (
                    Self::SnapshotTemporarilyUnavailable,
                    Self::SnapshotTemporarilyUnavailable
                )
        )
    }
}

/// Errors of the consensus core.
#[derive(Debug, Error, PartialEq)]
pub enum Error {
    /// The storage failed.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// The proposal was dropped: no leader is known, forwarding is disabled,
    /// a leader transfer is in progress, the uncommitted-size limit is
    /// reached, or this node is not a member.
    #[error("proposal dropped")]
    ProposalDropped,
    /// A message was stepped into the node that only the node itself may
    /// generate (a local message such as `MsgHup` arriving from the network),
    /// or a response from a peer the node does not know.
    #[error("step of a local message from the network, or from an unknown peer")]
    StepLocalMsg,
    /// A response message arrived from a peer that is not in the configuration.
    #[error("step of a response from peer {0} which is not a member")]
    StepPeerNotFound(u64),
    /// The configuration is invalid.
    #[error("invalid config: {0}")]
    ConfigInvalid(#[from] ConfigError),
    /// A membership change cannot be applied to the current configuration.
    #[error("invalid conf change: {0}")]
    ConfChangeError(String),
    /// An encoded entry or message could not be decoded.
    #[error("decode error: {0}")]
    Decode(String),
    /// A message from the network that no correct peer sends (a term past
    /// [`MAX_TERM`](crate::raft::MAX_TERM), an append whose entries do not
    /// follow its previous index or carry terms out of order): dropped
    /// before it touches any state.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A storage snapshot request was rejected because a snapshot is being
    /// sent or the peer is unknown.
    #[error("request snapshot dropped")]
    RequestSnapshotDropped,
}

/// Why a [`Config`](super::Config) is invalid.
#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum ConfigError {
    /// `id` is 0, which is reserved for "none".
    #[error("id must not be 0")]
    ZeroId,
    /// `heartbeat_tick` is 0.
    #[error("heartbeat_tick must be greater than 0")]
    ZeroHeartbeatTick,
    /// `election_tick` is not greater than `heartbeat_tick`.
    #[error("election_tick ({election}) must be greater than heartbeat_tick ({heartbeat})")]
    ElectionTickTooSmall {
        /// The configured election tick.
        election: usize,
        /// The configured heartbeat tick.
        heartbeat: usize,
    },
    /// The minimum election tick is smaller than the election tick.
    #[error("min_election_tick ({min}) must be at least election_tick ({election})")]
    MinElectionTickTooSmall {
        /// The effective minimum election tick.
        min: usize,
        /// The configured election tick.
        election: usize,
    },
    /// The maximum election tick is not above the minimum.
    #[error("max_election_tick ({max}) must be greater than min_election_tick ({min})")]
    MaxElectionTickTooSmall {
        /// The effective minimum election tick.
        min: usize,
        /// The effective maximum election tick.
        max: usize,
    },
    /// `max_inflight_msgs` is 0.
    #[error("max_inflight_msgs must be greater than 0")]
    ZeroMaxInflightMsgs,
    /// `max_inflight_msgs` does not fit the inflight window's 32-bit counters.
    #[error("max_inflight_msgs ({0}) is too large")]
    MaxInflightMsgsTooLarge(usize),
    /// Lease-based reads were requested without check-quorum.
    #[error("read_only_option LeaseBased requires check_quorum")]
    LeaseWithoutCheckQuorum,
    /// `max_uncommitted_size` is 0.
    #[error("max_uncommitted_size must be greater than 0")]
    ZeroMaxUncommittedSize,
}

/// The consensus core's result type.
pub type Result<T> = std::result::Result<T, Error>;
