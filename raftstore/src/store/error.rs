//! The store's error type: every error a client can see (DESIGN §7) is a
//! typed variant, convertible to and from the wire's `raft_cmdpb::Error`.

use flotilla_proto::metapb::{Peer, Region};
use flotilla_proto::raft_cmdpb::{self, error::Detail};
use thiserror::Error;

pub use super::admin::AdminError;

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
    /// A malformed request (missing header, empty request list, inverted
    /// range, empty key, ...). Nothing was proposed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The store is stopped (a fatal engine error, or it is shutting down):
    /// try another store. With `in_flight` the command had been proposed
    /// before the store stopped and may still commit: its outcome is
    /// unknown ([`Error::is_outcome_unknown`]).
    #[error("store stopped{}", if *in_flight { " with the command in flight: outcome unknown" } else { "" })]
    StoreStopped {
        /// Whether the command had been proposed.
        in_flight: bool,
    },
    /// Applying the committed entry failed in the engine. The store
    /// stopped; the entry stays in the log and is applied when the store
    /// restarts, so the command's outcome is unknown, not failed.
    #[error("engine failure while applying: outcome unknown ({0})")]
    ApplyFailed(String),
    /// An engine failure that changed nothing (a read, opening a store).
    #[error("engine: {0}")]
    Engine(String),
    /// Invalid configuration.
    #[error("invalid config: {0}")]
    Config(String),
    /// An admin command was refused.
    #[error("admin: {0}")]
    Admin(AdminError),
}

impl From<flotilla_engine::Error> for Error {
    fn from(e: flotilla_engine::Error) -> Self {
        Error::Engine(e.to_string())
    }
}

impl Error {
    /// Whether a client may retry the request (possibly elsewhere) without
    /// risking a duplicate effect: the request certainly did not enter the
    /// log.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::RegionNotFound(_)
                | Error::EpochNotMatch { .. }
                | Error::ServerIsBusy(_)
                | Error::ProposalDropped(_)
                | Error::StoreNotMatch { .. }
                | Error::StoreStopped { in_flight: false }
                | Error::Admin(AdminError::RegionMerging { .. })
        )
    }

    /// Whether a write that got this error may still have taken effect
    /// (it was proposed, and may commit or have committed): a timeout, a
    /// stale command, a store that stopped with the command in flight, or
    /// an engine failure while applying. Such a write is never a definite
    /// failure: read before retrying it if it is not idempotent.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::Timeout
                | Error::StaleCommand
                | Error::StoreStopped { in_flight: true }
                | Error::ApplyFailed(_)
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
            Error::StoreStopped { in_flight } => {
                Detail::StoreStopped(raft_cmdpb::StoreStopped { in_flight })
            }
            Error::ApplyFailed(reason) => Detail::ApplyFailed(raft_cmdpb::ApplyFailed { reason }),
            Error::Engine(reason) => Detail::EngineError(raft_cmdpb::EngineError { reason }),
            Error::InvalidRequest(reason) => {
                Detail::InvalidRequest(raft_cmdpb::InvalidRequest { reason })
            }
            Error::Config(reason) => Detail::InvalidRequest(raft_cmdpb::InvalidRequest {
                reason: format!("config: {reason}"),
            }),
            Error::Admin(e) => Detail::Admin(e.to_proto()),
        };
        raft_cmdpb::Error {
            message: self.to_string(),
            detail: Some(detail),
        }
    }

    /// Back from the wire form (an error without a typed detail, e.g. from
    /// a newer peer, becomes [`Error::InvalidRequest`] carrying its message).
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
            Some(Detail::StoreStopped(d)) => Error::StoreStopped {
                in_flight: d.in_flight,
            },
            Some(Detail::ApplyFailed(d)) => Error::ApplyFailed(d.reason),
            Some(Detail::EngineError(d)) => Error::Engine(d.reason),
            Some(Detail::InvalidRequest(d)) => Error::InvalidRequest(d.reason),
            Some(Detail::Admin(d)) => match AdminError::from_proto(d) {
                Some(a) => Error::Admin(a),
                None => Error::InvalidRequest(e.message),
            },
            None => Error::InvalidRequest(e.message),
        }
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::metapb::RegionEpoch;
    use prost::Message as _;

    /// One value of every variant (a new variant must be added here: the
    /// match below does not compile otherwise).
    fn every_variant() -> Vec<Error> {
        let all = vec![
            Error::NotLeader {
                region_id: 3,
                leader: Some(Peer {
                    id: 7,
                    store_id: 2,
                    ..Default::default()
                }),
            },
            Error::RegionNotFound(4),
            Error::KeyNotInRegion {
                key: b"k".to_vec(),
                region_id: 5,
                start_key: b"a".to_vec(),
                end_key: b"c".to_vec(),
            },
            Error::EpochNotMatch {
                current_regions: vec![Region {
                    id: 9,
                    region_epoch: Some(RegionEpoch {
                        conf_ver: 1,
                        version: 2,
                    }),
                    ..Default::default()
                }],
            },
            Error::ServerIsBusy("full".into()),
            Error::StaleCommand,
            Error::ProposalDropped("transfer".into()),
            Error::StoreNotMatch {
                request_store_id: 1,
                actual_store_id: 2,
            },
            Error::Timeout,
            Error::EntryTooLarge {
                region_id: 6,
                entry_size: 1 << 30,
            },
            Error::InvalidRequest("inverted range".into()),
            Error::StoreStopped { in_flight: false },
            Error::StoreStopped { in_flight: true },
            Error::ApplyFailed("disk".into()),
            Error::Engine("read".into()),
            Error::Admin(AdminError::NotSupported {
                command: "batch_split".into(),
            }),
            Error::Admin(AdminError::CompactIndexAhead {
                compact_index: 9,
                applied_index: 7,
            }),
            Error::Admin(AdminError::TransfereeNotFound {
                peer_id: 4,
                store_id: 2,
            }),
            Error::Admin(AdminError::TransfereeNotVoter { peer_id: 4 }),
            Error::Admin(AdminError::TransfereeLagging { lag: 300, max: 128 }),
            Error::Admin(AdminError::TransfereePendingSnapshot { peer_id: 4 }),
            Error::Admin(AdminError::TransfereePendingConfChange { pending_index: 12 }),
            Error::Admin(AdminError::ConfChangePending { pending_index: 13 }),
            Error::Admin(AdminError::PeerAlreadyPresent {
                peer_id: 5,
                store_id: 3,
            }),
            Error::Admin(AdminError::ConfChangePeerNotFound {
                peer_id: 6,
                store_id: 4,
            }),
            Error::Admin(AdminError::ConfChangeRemovesLeader { peer_id: 7 }),
            Error::Admin(AdminError::ConfChangeRemovesLastVoter { peer_id: 8 }),
            Error::Admin(AdminError::LearnerNotCaughtUp {
                peer_id: 9,
                matched: 10,
            }),
            Error::Admin(AdminError::ConfChangeInJoint { region_id: 2 }),
            Error::Admin(AdminError::ConfChangeNotInJoint { region_id: 3 }),
            Error::Admin(AdminError::ConfChangeRemovesVoterInJoint { peer_id: 11 }),
            Error::Admin(AdminError::SplitKeyInvalid {
                key: b"k".to_vec(),
                fault: crate::store::admin::SplitKeyFault::NotAscending,
            }),
            Error::Admin(AdminError::TooManySplitKeys { count: 12, max: 10 }),
            Error::Admin(AdminError::NoSplitKeys),
            Error::Admin(AdminError::SplitPending { pending_index: 14 }),
            Error::Admin(AdminError::MergeIntoSelf { region_id: 4 }),
            Error::Admin(AdminError::MergeNotAdjacent {
                source_id: 4,
                target: 5,
            }),
            Error::Admin(AdminError::MergeNotColocated {
                source_id: 4,
                target: 6,
            }),
            Error::Admin(AdminError::MergeInJoint { region_id: 7 }),
            Error::Admin(AdminError::MergeLogGapTooLarge {
                min_matched: 3,
                last_index: 90,
                max_gap: 64,
            }),
            Error::Admin(AdminError::MergeGapHasAdmin { index: 17 }),
            Error::Admin(AdminError::MergeEntriesTooLarge {
                size: 9 << 20,
                limit: 8 << 20,
            }),
            Error::Admin(AdminError::RegionMerging { region_id: 8 }),
            Error::Admin(AdminError::MergeRolledBack { region_id: 9 }),
            Error::Admin(AdminError::MergeTargetMismatch { target: 10 }),
            Error::Admin(AdminError::ConfChangeUnsafe {
                quorum_matched: 0,
                truncated_index: 5,
            }),
            Error::Admin(AdminError::PeerIdRemoved {
                peer_id: 11,
                store_id: 4,
            }),
        ];
        for e in &all {
            match e {
                Error::NotLeader { .. }
                | Error::RegionNotFound(_)
                | Error::KeyNotInRegion { .. }
                | Error::EpochNotMatch { .. }
                | Error::ServerIsBusy(_)
                | Error::StaleCommand
                | Error::ProposalDropped(_)
                | Error::StoreNotMatch { .. }
                | Error::Timeout
                | Error::EntryTooLarge { .. }
                | Error::InvalidRequest(_)
                | Error::StoreStopped { .. }
                | Error::ApplyFailed(_)
                | Error::Engine(_)
                | Error::Config(_)
                | Error::Admin(_) => {}
            }
        }
        all
    }

    /// Every variant a client can see survives the wire as the same typed
    /// variant (through encoded bytes, as over a network), never as a string.
    #[test]
    fn every_client_error_round_trips_typed() {
        for e in every_variant() {
            let bytes = e.to_proto().encode_to_vec();
            let back = Error::from_proto(raft_cmdpb::Error::decode(&bytes[..]).unwrap());
            assert_eq!(back, e, "{e}");
            assert!(e.to_proto().detail.is_some(), "{e} has no typed detail");
        }
    }

    /// Retryable and outcome-unknown never overlap, and the outcome-unknown
    /// set is exactly the one the client contract names.
    #[test]
    fn retryable_and_outcome_unknown_are_disjoint() {
        for e in every_variant() {
            assert!(!(e.is_retryable() && e.is_outcome_unknown()), "{e}");
        }
        assert!(Error::Timeout.is_outcome_unknown());
        assert!(Error::StaleCommand.is_outcome_unknown());
        assert!(Error::ApplyFailed(String::new()).is_outcome_unknown());
        assert!(Error::StoreStopped { in_flight: true }.is_outcome_unknown());
        assert!(Error::StoreStopped { in_flight: false }.is_retryable());
        assert!(!Error::Engine(String::new()).is_outcome_unknown());
    }
}
