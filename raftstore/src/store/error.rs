//! The store's error type: every error a client can see (DESIGN §7) is a
//! typed variant, convertible to and from the wire's `raft_cmdpb::Error`.

use flotilla_proto::metapb::{Peer, Region};
use flotilla_proto::raft_cmdpb::{self, error::Detail};
use thiserror::Error;

/// Errors of the store and of requests to it.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum Error {
    /// The peer asked is not the leader; `leader` is the one it knows.
    #[error("region {region_id}: not leader (leader: {leader:?})")]
    NotLeader {
        /// The region.
        region_id: u64,
        /// The leader the peer knows of, if any.
        leader: Option<Peer>,
    },
    /// The store has no peer of the region.
    #[error("region {0} not found")]
    RegionNotFound(u64),
    /// A key lies outside the region's range.
    #[error("key {key:?} not in region {region_id} [{start_key:?}, {end_key:?})")]
    KeyNotInRegion {
        /// The key.
        key: Vec<u8>,
        /// The region.
        region_id: u64,
        /// The region's start key.
        start_key: Vec<u8>,
        /// The region's end key.
        end_key: Vec<u8>,
    },
    /// The request's epoch is stale; these are the regions the store has.
    #[error("epoch not match ({} current regions)", current_regions.len())]
    EpochNotMatch {
        /// The current region(s) covering the request's range.
        current_regions: Vec<Region>,
    },
    /// The store cannot take more now; retry after a backoff.
    #[error("server is busy: {0}")]
    ServerIsBusy(String),
    /// The term changed before the command applied: its outcome is unknown.
    #[error("stale command: outcome unknown")]
    StaleCommand,
    /// The proposal was dropped before entering the log.
    #[error("proposal dropped: {0}")]
    ProposalDropped(String),
    /// The request was routed to the wrong store.
    #[error("store not match: request for {request_store_id}, this is {actual_store_id}")]
    StoreNotMatch {
        /// The store the request named.
        request_store_id: u64,
        /// This store.
        actual_store_id: u64,
    },
    /// The request did not finish in time: its outcome is unknown.
    #[error("timeout")]
    Timeout,
    /// An entry larger than the store accepts.
    #[error("region {region_id}: entry of {entry_size} bytes is too large")]
    EntryTooLarge {
        /// The region.
        region_id: u64,
        /// The entry's size in bytes.
        entry_size: u64,
    },
    /// A malformed request (missing header, empty request list, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The store is shutting down or stopped.
    #[error("store stopped")]
    StoreStopped,
    /// An engine failure.
    #[error("engine: {0}")]
    Engine(String),
    /// Invalid configuration.
    #[error("invalid config: {0}")]
    Config(String),
}

impl From<flotilla_engine::Error> for Error {
    fn from(e: flotilla_engine::Error) -> Self {
        Error::Engine(e.to_string())
    }
}

impl Error {
    /// Whether a client may retry the request (possibly elsewhere) without
    /// risking a duplicate effect.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::RegionNotFound(_)
                | Error::EpochNotMatch { .. }
                | Error::ServerIsBusy(_)
                | Error::ProposalDropped(_)
                | Error::StoreNotMatch { .. }
        )
    }

    /// The wire form.
    pub fn to_proto(&self) -> raft_cmdpb::Error {
        let detail = match self.clone() {
            Error::NotLeader { region_id, leader } => {
                Detail::NotLeader(raft_cmdpb::NotLeader { region_id, leader })
            }
            Error::RegionNotFound(region_id) => {
                Detail::RegionNotFound(raft_cmdpb::RegionNotFound { region_id })
            }
            Error::KeyNotInRegion {
                key,
                region_id,
                start_key,
                end_key,
            } => Detail::KeyNotInRegion(raft_cmdpb::KeyNotInRegion {
                key: key.into(),
                region_id,
                start_key: start_key.into(),
                end_key: end_key.into(),
            }),
            Error::EpochNotMatch { current_regions } => {
                Detail::EpochNotMatch(raft_cmdpb::EpochNotMatch { current_regions })
            }
            Error::ServerIsBusy(reason) => Detail::ServerIsBusy(raft_cmdpb::ServerIsBusy {
                reason,
                backoff_ms: 0,
            }),
            Error::StaleCommand => Detail::StaleCommand(raft_cmdpb::StaleCommand {}),
            Error::ProposalDropped(reason) => {
                Detail::ProposalDropped(raft_cmdpb::ProposalDropped { reason })
            }
            Error::StoreNotMatch {
                request_store_id,
                actual_store_id,
            } => Detail::StoreNotMatch(raft_cmdpb::StoreNotMatch {
                request_store_id,
                actual_store_id,
            }),
            Error::Timeout => Detail::Timeout(raft_cmdpb::Timeout {}),
            Error::EntryTooLarge {
                region_id,
                entry_size,
            } => Detail::RaftEntryTooLarge(raft_cmdpb::RaftEntryTooLarge {
                region_id,
                entry_size,
            }),
            other => {
                return raft_cmdpb::Error {
                    message: other.to_string(),
                    detail: None,
                };
            }
        };
        raft_cmdpb::Error {
            message: self.to_string(),
            detail: Some(detail),
        }
    }

    /// Back from the wire form (an error without a typed detail becomes
    /// [`Error::InvalidRequest`] carrying its message).
    pub fn from_proto(e: raft_cmdpb::Error) -> Error {
        match e.detail {
            Some(Detail::NotLeader(d)) => Error::NotLeader {
                region_id: d.region_id,
                leader: d.leader,
            },
            Some(Detail::RegionNotFound(d)) => Error::RegionNotFound(d.region_id),
            Some(Detail::KeyNotInRegion(d)) => Error::KeyNotInRegion {
                key: d.key.to_vec(),
                region_id: d.region_id,
                start_key: d.start_key.to_vec(),
                end_key: d.end_key.to_vec(),
            },
            Some(Detail::EpochNotMatch(d)) => Error::EpochNotMatch {
                current_regions: d.current_regions,
            },
            Some(Detail::ServerIsBusy(d)) => Error::ServerIsBusy(d.reason),
            Some(Detail::StaleCommand(_)) => Error::StaleCommand,
            Some(Detail::ProposalDropped(d)) => Error::ProposalDropped(d.reason),
            Some(Detail::StoreNotMatch(d)) => Error::StoreNotMatch {
                request_store_id: d.request_store_id,
                actual_store_id: d.actual_store_id,
            },
            Some(Detail::Timeout(_)) => Error::Timeout,
            Some(Detail::RaftEntryTooLarge(d)) => Error::EntryTooLarge {
                region_id: d.region_id,
                entry_size: d.entry_size,
            },
            None => Error::InvalidRequest(e.message),
        }
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
