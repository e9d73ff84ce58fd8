//! Typed refusals of admin commands (DESIGN §7: one enum inside
//! `store::Error`, never a string), convertible to and from the wire.

pub use flotilla_proto::raft_cmdpb::SplitKeyFault;
use flotilla_proto::raft_cmdpb::{self, admin_error::Kind};
use thiserror::Error;

/// Why an admin command was refused. Grows with the commands (admin.md
/// §5.3 lists the variants split, merge and conf change will need).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AdminError {
    /// The store does not run this admin command (yet). Nothing was
    /// proposed.
    #[error("admin command {command} is not supported")]
    NotSupported {
        /// The `AdminRequest.cmd` field naming the command.
        command: String,
    },
    /// A CompactLog past the region's applied index: entries not yet
    /// applied are never compacted.
    #[error("compact index {compact_index} is past the applied index {applied_index}")]
    CompactIndexAhead {
        /// The index the command asked to compact to.
        compact_index: u64,
        /// The region's applied index when the command applied.
        applied_index: u64,
    },
    /// TransferLeader to a peer the region does not have on that store.
    #[error("transferee {peer_id} on store {store_id} is not a peer of the region")]
    TransfereeNotFound {
        /// The peer asked for (0 if the client knew none on the store).
        peer_id: u64,
        /// Its store.
        store_id: u64,
    },
    /// TransferLeader to a learner (it may not lead).
    #[error("transferee {peer_id} is a learner")]
    TransfereeNotVoter {
        /// The peer asked for.
        peer_id: u64,
    },
    /// TransferLeader to a peer too far behind the leader's log: it would
    /// take longer than the transfer may.
    #[error("transferee is {lag} entries behind (at most {max})")]
    TransfereeLagging {
        /// Entries the transferee lacks.
        lag: u64,
        /// The most a transfer accepts.
        max: u64,
    },
    /// TransferLeader to a peer being sent a snapshot.
    #[error("transferee {peer_id} is receiving a snapshot")]
    TransfereePendingSnapshot {
        /// The peer asked for.
        peer_id: u64,
    },
    /// TransferLeader while a conf change is not applied yet.
    #[error("a conf change up to index {pending_index} is not applied yet")]
    TransfereePendingConfChange {
        /// The index up to which a conf change may be pending.
        pending_index: u64,
    },
    /// A conf change while an earlier one is not applied yet (one at a
    /// time per region).
    #[error("a conf change up to index {pending_index} is not applied yet")]
    ConfChangePending {
        /// The index up to which a conf change may be pending.
        pending_index: u64,
    },
    /// Adding a peer whose id the region has, or on a store the region
    /// has a peer on already.
    #[error("the region has peer {peer_id} on store {store_id} already")]
    PeerAlreadyPresent {
        /// The peer the region has.
        peer_id: u64,
        /// Its store.
        store_id: u64,
    },
    /// Removing or promoting a peer the region does not have.
    #[error("peer {peer_id} on store {store_id} is not a peer of the region")]
    ConfChangePeerNotFound {
        /// The peer asked for.
        peer_id: u64,
        /// Its store.
        store_id: u64,
    },
    /// Removing the leader itself (transfer the leadership first).
    #[error("peer {peer_id} leads the region: transfer the leadership before removing it")]
    ConfChangeRemovesLeader {
        /// The leader.
        peer_id: u64,
    },
    /// Removing the region's last voter.
    #[error("peer {peer_id} is the region's last voter")]
    ConfChangeRemovesLastVoter {
        /// The voter.
        peer_id: u64,
    },
    /// A membership change while the region is in a joint configuration:
    /// only leaving it is allowed (the leader leaves it on its own).
    #[error("region {region_id} is in a joint configuration")]
    ConfChangeInJoint {
        /// The region.
        region_id: u64,
    },
    /// Leaving a joint configuration the region is not in.
    #[error("region {region_id} is not in a joint configuration")]
    ConfChangeNotInJoint {
        /// The region.
        region_id: u64,
    },
    /// Removing a voter inside a joint change: demote it to a learner in
    /// the change, and remove the learner afterwards.
    #[error("voter {peer_id} cannot be removed inside a joint change: demote it first")]
    ConfChangeRemovesVoterInJoint {
        /// The voter.
        peer_id: u64,
    },
    /// Promoting a learner that has not caught up with the leader's log
    /// (it would count toward the quorum before it holds the data).
    #[error("learner {peer_id} has matched only up to index {matched}")]
    LearnerNotCaughtUp {
        /// The learner.
        peer_id: u64,
        /// What it has matched.
        matched: u64,
    },
    /// A membership change after which the voters holding the log would
    /// not make a quorum: the largest index a quorum of the new
    /// configuration has matched (a voter on a store this store no longer
    /// hears, and a new voter, count as having matched nothing) is below
    /// the log's truncation point, so the region could commit nothing
    /// until a snapshot caught a voter up, or ever, if that voter's store
    /// does not exist. Add a learner and promote it once it caught up, or
    /// remove a dead voter first. Nothing was proposed.
    #[error(
        "unsafe membership change: a quorum of the new voters matched only up to \
         {quorum_matched}, below the truncated index {truncated_index}"
    )]
    ConfChangeUnsafe {
        /// The largest index a quorum of the new configuration matched.
        quorum_matched: u64,
        /// The leader's truncated index (its first log index minus one).
        truncated_index: u64,
    },
    /// Adding a peer whose id the region removed before: a store keeps a
    /// tombstone naming a removed peer and drops every message to it, so
    /// the id would never serve again. Peer ids are never reused: allocate
    /// a new one. Nothing was proposed.
    #[error("peer {peer_id} (on store {store_id}) was removed from the region; use a new peer id")]
    PeerIdRemoved {
        /// The removed peer's id.
        peer_id: u64,
        /// The store it was removed from.
        store_id: u64,
    },
    /// A BatchSplit key that cannot split the region (see
    /// [`SplitKeyFault`]). Nothing was proposed or applied.
    #[error("split key {key:?} refused: {fault:?}")]
    SplitKeyInvalid {
        /// The key.
        key: Vec<u8>,
        /// What is wrong with it.
        fault: SplitKeyFault,
    },
    /// A BatchSplit with more keys than `Config::split_max_keys`.
    #[error("{count} split keys (at most {max} at once)")]
    TooManySplitKeys {
        /// Keys asked for.
        count: u64,
        /// The most a split takes.
        max: u64,
    },
    /// A BatchSplit without a key.
    #[error("a split needs at least one key")]
    NoSplitKeys,
    /// A split or membership change while a split proposed up to
    /// `pending_index` is not applied yet (one such command at a time).
    #[error("a split up to index {pending_index} is not applied yet")]
    SplitPending {
        /// The split's index.
        pending_index: u64,
    },
    /// A merge of a region into itself.
    #[error("region {region_id} cannot merge into itself")]
    MergeIntoSelf {
        /// The region.
        region_id: u64,
    },
    /// A merge of regions whose ranges do not touch.
    #[error("regions {source_id} and {target} are not adjacent")]
    MergeNotAdjacent {
        /// The source region.
        source_id: u64,
        /// The target region.
        target: u64,
    },
    /// A merge of regions whose peers are not on the same stores in the
    /// same roles (move the peers first).
    #[error("regions {source_id} and {target} do not have their peers on the same stores")]
    MergeNotColocated {
        /// The source region.
        source_id: u64,
        /// The target region.
        target: u64,
    },
    /// A merge of (or into) a region in a joint configuration.
    #[error("region {region_id} is in a joint configuration")]
    MergeInJoint {
        /// The region.
        region_id: u64,
    },
    /// A merge while a peer of the source is too far behind its leader
    /// (or has matched nothing): the target would carry too long a log
    /// tail to catch it up. Try again.
    #[error("a peer matched only up to {min_matched} of {last_index} (at most {max_gap} behind)")]
    MergeLogGapTooLarge {
        /// The least any peer matched.
        min_matched: u64,
        /// The leader's last index.
        last_index: u64,
        /// `Config::merge_max_log_gap`.
        max_gap: u64,
    },
    /// A merge while an admin command (a split, a membership change, a
    /// compaction) is in the log tail some peer has not matched. Try
    /// again.
    #[error("admin command at index {index} is not on every peer yet")]
    MergeGapHasAdmin {
        /// Its index.
        index: u64,
    },
    /// A merge whose log tail, which the target carries, is larger than
    /// an entry may be.
    #[error("the merge would carry {size} bytes of log (at most {limit})")]
    MergeEntriesTooLarge {
        /// Bytes of the tail.
        size: u64,
        /// The most it may carry.
        limit: u64,
    },
    /// The region is being merged (or a merge of it is proposed): it
    /// takes no command until the merge commits (the region is gone: look
    /// the key up again) or rolls back. Nothing was proposed or applied.
    #[error("region {region_id} is being merged")]
    RegionMerging {
        /// The region.
        region_id: u64,
    },
    /// A merge whose target, as the request gives it, is not the region
    /// the source leader's store has (another epoch, range or membership,
    /// or no peer of it there): look the target up again. Nothing was
    /// proposed.
    #[error("merge target {target} differs from the region the store has")]
    MergeTargetMismatch {
        /// The target region.
        target: u64,
    },
    /// The merge was rolled back (the target changed before it could
    /// commit): the source serves again.
    #[error("the merge of region {region_id} was rolled back")]
    MergeRolledBack {
        /// The source region.
        region_id: u64,
    },
}

impl AdminError {
    /// The wire form.
    pub fn to_proto(&self) -> raft_cmdpb::AdminError {
        let kind = match self.clone() {
            AdminError::NotSupported { command } => {
                Kind::NotSupported(raft_cmdpb::AdminNotSupported { command })
            }
            AdminError::CompactIndexAhead {
                compact_index,
                applied_index,
            } => Kind::CompactIndexAhead(raft_cmdpb::CompactIndexAhead {
                compact_index,
                applied_index,
            }),
            AdminError::TransfereeNotFound { peer_id, store_id } => {
                Kind::TransfereeNotFound(raft_cmdpb::TransfereeNotFound { peer_id, store_id })
            }
            AdminError::TransfereeNotVoter { peer_id } => {
                Kind::TransfereeNotVoter(raft_cmdpb::TransfereeNotVoter { peer_id })
            }
            AdminError::TransfereeLagging { lag, max } => {
                Kind::TransfereeLagging(raft_cmdpb::TransfereeLagging { lag, max })
            }
            AdminError::TransfereePendingSnapshot { peer_id } => {
                Kind::TransfereePendingSnapshot(raft_cmdpb::TransfereePendingSnapshot { peer_id })
            }
            AdminError::TransfereePendingConfChange { pending_index } => {
                Kind::TransfereePendingConfChange(raft_cmdpb::TransfereePendingConfChange {
                    pending_index,
                })
            }
            AdminError::ConfChangePending { pending_index } => {
                Kind::ConfChangePending(raft_cmdpb::ConfChangePending { pending_index })
            }
            AdminError::PeerAlreadyPresent { peer_id, store_id } => {
                Kind::PeerAlreadyPresent(raft_cmdpb::PeerAlreadyPresent { peer_id, store_id })
            }
            AdminError::ConfChangePeerNotFound { peer_id, store_id } => {
                Kind::ConfChangePeerNotFound(raft_cmdpb::ConfChangePeerNotFound {
                    peer_id,
                    store_id,
                })
            }
            AdminError::ConfChangeRemovesLeader { peer_id } => {
                Kind::ConfChangeRemovesLeader(raft_cmdpb::ConfChangeRemovesLeader { peer_id })
            }
            AdminError::ConfChangeRemovesLastVoter { peer_id } => {
                Kind::ConfChangeRemovesLastVoter(raft_cmdpb::ConfChangeRemovesLastVoter { peer_id })
            }
            AdminError::LearnerNotCaughtUp { peer_id, matched } => {
                Kind::LearnerNotCaughtUp(raft_cmdpb::LearnerNotCaughtUp { peer_id, matched })
            }
            AdminError::ConfChangeInJoint { region_id } => {
                Kind::ConfChangeInJoint(raft_cmdpb::ConfChangeInJoint { region_id })
            }
            AdminError::ConfChangeNotInJoint { region_id } => {
                Kind::ConfChangeNotInJoint(raft_cmdpb::ConfChangeNotInJoint { region_id })
            }
            AdminError::ConfChangeRemovesVoterInJoint { peer_id } => {
                Kind::ConfChangeRemovesVoterInJoint(raft_cmdpb::ConfChangeRemovesVoterInJoint {
                    peer_id,
                })
            }
            AdminError::SplitKeyInvalid { key, fault } => {
                Kind::SplitKeyInvalid(raft_cmdpb::SplitKeyInvalid {
                    key: key.into(),
                    fault: fault as i32,
                })
            }
            AdminError::TooManySplitKeys { count, max } => {
                Kind::TooManySplitKeys(raft_cmdpb::TooManySplitKeys { count, max })
            }
            AdminError::NoSplitKeys => Kind::NoSplitKeys(raft_cmdpb::NoSplitKeys {}),
            AdminError::SplitPending { pending_index } => {
                Kind::SplitPending(raft_cmdpb::SplitPending { pending_index })
            }
            AdminError::MergeIntoSelf { region_id } => {
                Kind::MergeIntoSelf(raft_cmdpb::MergeIntoSelf { region_id })
            }
            AdminError::MergeNotAdjacent { source_id, target } => {
                Kind::MergeNotAdjacent(raft_cmdpb::MergeNotAdjacent {
                    source: source_id,
                    target,
                })
            }
            AdminError::MergeNotColocated { source_id, target } => {
                Kind::MergeNotColocated(raft_cmdpb::MergeNotColocated {
                    source: source_id,
                    target,
                })
            }
            AdminError::MergeInJoint { region_id } => {
                Kind::MergeInJoint(raft_cmdpb::MergeInJoint { region_id })
            }
            AdminError::MergeLogGapTooLarge {
                min_matched,
                last_index,
                max_gap,
            } => Kind::MergeLogGapTooLarge(raft_cmdpb::MergeLogGapTooLarge {
                min_matched,
                last_index,
                max_gap,
            }),
            AdminError::MergeGapHasAdmin { index } => {
                Kind::MergeGapHasAdmin(raft_cmdpb::MergeGapHasAdmin { index })
            }
            AdminError::MergeEntriesTooLarge { size, limit } => {
                Kind::MergeEntriesTooLarge(raft_cmdpb::MergeEntriesTooLarge { size, limit })
            }
            AdminError::RegionMerging { region_id } => {
                Kind::RegionMerging(raft_cmdpb::RegionMerging { region_id })
            }
            AdminError::MergeRolledBack { region_id } => {
                Kind::MergeRolledBack(raft_cmdpb::MergeRolledBack { region_id })
            }
            AdminError::MergeTargetMismatch { target } => {
                Kind::MergeTargetMismatch(raft_cmdpb::MergeTargetMismatch { target })
            }
            AdminError::ConfChangeUnsafe {
                quorum_matched,
                truncated_index,
            } => Kind::ConfChangeUnsafe(raft_cmdpb::ConfChangeUnsafe {
                quorum_matched,
                truncated_index,
            }),
            AdminError::PeerIdRemoved { peer_id, store_id } => {
                Kind::PeerIdRemoved(raft_cmdpb::PeerIdRemoved { peer_id, store_id })
            }
        };
        raft_cmdpb::AdminError { kind: Some(kind) }
    }

    /// Back from the wire form; `None` for a kind this version does not
    /// know (from a newer peer).
    pub fn from_proto(e: raft_cmdpb::AdminError) -> Option<AdminError> {
        Some(match e.kind? {
            Kind::NotSupported(d) => AdminError::NotSupported { command: d.command },
            Kind::CompactIndexAhead(d) => AdminError::CompactIndexAhead {
                compact_index: d.compact_index,
                applied_index: d.applied_index,
            },
            Kind::TransfereeNotFound(d) => AdminError::TransfereeNotFound {
                peer_id: d.peer_id,
                store_id: d.store_id,
            },
            Kind::TransfereeNotVoter(d) => AdminError::TransfereeNotVoter { peer_id: d.peer_id },
            Kind::TransfereeLagging(d) => AdminError::TransfereeLagging {
                lag: d.lag,
                max: d.max,
            },
            Kind::TransfereePendingSnapshot(d) => {
                AdminError::TransfereePendingSnapshot { peer_id: d.peer_id }
            }
            Kind::TransfereePendingConfChange(d) => AdminError::TransfereePendingConfChange {
                pending_index: d.pending_index,
            },
            Kind::ConfChangePending(d) => AdminError::ConfChangePending {
                pending_index: d.pending_index,
            },
            Kind::PeerAlreadyPresent(d) => AdminError::PeerAlreadyPresent {
                peer_id: d.peer_id,
                store_id: d.store_id,
            },
            Kind::ConfChangePeerNotFound(d) => AdminError::ConfChangePeerNotFound {
                peer_id: d.peer_id,
                store_id: d.store_id,
            },
            Kind::ConfChangeRemovesLeader(d) => {
                AdminError::ConfChangeRemovesLeader { peer_id: d.peer_id }
            }
            Kind::ConfChangeRemovesLastVoter(d) => {
                AdminError::ConfChangeRemovesLastVoter { peer_id: d.peer_id }
            }
            Kind::LearnerNotCaughtUp(d) => AdminError::LearnerNotCaughtUp {
                peer_id: d.peer_id,
                matched: d.matched,
            },
            Kind::ConfChangeInJoint(d) => AdminError::ConfChangeInJoint {
                region_id: d.region_id,
            },
            Kind::ConfChangeNotInJoint(d) => AdminError::ConfChangeNotInJoint {
                region_id: d.region_id,
            },
            Kind::ConfChangeRemovesVoterInJoint(d) => {
                AdminError::ConfChangeRemovesVoterInJoint { peer_id: d.peer_id }
            }
            Kind::SplitKeyInvalid(d) => AdminError::SplitKeyInvalid {
                fault: d.fault(),
                key: d.key.to_vec(),
            },
            Kind::TooManySplitKeys(d) => AdminError::TooManySplitKeys {
                count: d.count,
                max: d.max,
            },
            Kind::NoSplitKeys(_) => AdminError::NoSplitKeys,
            Kind::SplitPending(d) => AdminError::SplitPending {
                pending_index: d.pending_index,
            },
            Kind::MergeIntoSelf(d) => AdminError::MergeIntoSelf {
                region_id: d.region_id,
            },
            Kind::MergeNotAdjacent(d) => AdminError::MergeNotAdjacent {
                source_id: d.source,
                target: d.target,
            },
            Kind::MergeNotColocated(d) => AdminError::MergeNotColocated {
                source_id: d.source,
                target: d.target,
            },
            Kind::MergeInJoint(d) => AdminError::MergeInJoint {
                region_id: d.region_id,
            },
            Kind::MergeLogGapTooLarge(d) => AdminError::MergeLogGapTooLarge {
                min_matched: d.min_matched,
                last_index: d.last_index,
                max_gap: d.max_gap,
            },
            Kind::MergeGapHasAdmin(d) => AdminError::MergeGapHasAdmin { index: d.index },
            Kind::MergeEntriesTooLarge(d) => AdminError::MergeEntriesTooLarge {
                size: d.size,
                limit: d.limit,
            },
            Kind::RegionMerging(d) => AdminError::RegionMerging {
                region_id: d.region_id,
            },
            Kind::MergeRolledBack(d) => AdminError::MergeRolledBack {
                region_id: d.region_id,
            },
            Kind::MergeTargetMismatch(d) => AdminError::MergeTargetMismatch { target: d.target },
            Kind::ConfChangeUnsafe(d) => AdminError::ConfChangeUnsafe {
                quorum_matched: d.quorum_matched,
                truncated_index: d.truncated_index,
            },
            Kind::PeerIdRemoved(d) => AdminError::PeerIdRemoved {
                peer_id: d.peer_id,
                store_id: d.store_id,
            },
        })
    }
}
