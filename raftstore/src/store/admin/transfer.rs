//! TransferLeader on the propose side: when a leader may hand its region
//! to a peer. The transfer itself is raft's (the leader catches the
//! transferee up, then tells it to campaign at once); it is not
//! replicated, and the command is answered when the transfer starts.

use super::AdminError;

/// Most entries a transferee may lack (TiKV's default): more would not be
/// sent within the election timeout the transfer has.
pub const TRANSFER_LEADER_MAX_LAG: u64 = 128;

/// What the leader knows of the peer asked to take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transferee {
    /// The peer.
    pub peer_id: u64,
    /// It is a learner.
    pub is_learner: bool,
    /// The last index it matched.
    pub matched: u64,
    /// It is being sent a snapshot.
    pub snapshot_pending: bool,
}

/// Whether a leader whose log ends at `last_index`, having applied
/// `applied_index` while a conf change may be pending up to
/// `pending_conf_index`, may transfer to `transferee`.
///
/// # Errors
/// The refusal, typed (learner, pending conf change, snapshot, lag).
pub fn check_transfer(
    transferee: &Transferee,
    last_index: u64,
    applied_index: u64,
    pending_conf_index: u64,
) -> Result<(), AdminError> {
    if transferee.is_learner {
        return Err(AdminError::TransfereeNotVoter {
            peer_id: transferee.peer_id,
        });
    }
    if pending_conf_index > applied_index {
        return Err(AdminError::TransfereePendingConfChange {
            pending_index: pending_conf_index,
        });
    }
    if transferee.snapshot_pending {
        return Err(AdminError::TransfereePendingSnapshot {
            peer_id: transferee.peer_id,
        });
    }
    let lag = last_index.saturating_sub(transferee.matched);
    if lag > TRANSFER_LEADER_MAX_LAG {
        return Err(AdminError::TransfereeLagging {
            lag,
            max: TRANSFER_LEADER_MAX_LAG,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_peer() -> Transferee {
        Transferee {
            peer_id: 7,
            is_learner: false,
            matched: 1_000,
            snapshot_pending: false,
        }
    }

    /// admin.md scenario 14 (`transfer_leader_refused_when_lagging_or_snapshotting`),
    /// the decision: each refusal typed, a caught-up voter accepted.
    #[test]
    fn refusals_are_typed_and_a_caught_up_voter_is_accepted() {
        assert_eq!(check_transfer(&ok_peer(), 1_000, 1_000, 900), Ok(()));
        let lag_ok = Transferee {
            matched: 1_000 - TRANSFER_LEADER_MAX_LAG,
            ..ok_peer()
        };
        assert_eq!(check_transfer(&lag_ok, 1_000, 1_000, 0), Ok(()));
        let lagging = Transferee {
            matched: 1_000 - TRANSFER_LEADER_MAX_LAG - 1,
            ..ok_peer()
        };
        assert_eq!(
            check_transfer(&lagging, 1_000, 1_000, 0),
            Err(AdminError::TransfereeLagging {
                lag: TRANSFER_LEADER_MAX_LAG + 1,
                max: TRANSFER_LEADER_MAX_LAG
            })
        );
        let learner = Transferee {
            is_learner: true,
            ..ok_peer()
        };
        assert_eq!(
            check_transfer(&learner, 1_000, 1_000, 0),
            Err(AdminError::TransfereeNotVoter { peer_id: 7 })
        );
        let snapshotting = Transferee {
            snapshot_pending: true,
            ..ok_peer()
        };
        assert_eq!(
            check_transfer(&snapshotting, 1_000, 1_000, 0),
            Err(AdminError::TransfereePendingSnapshot { peer_id: 7 })
        );
        assert_eq!(
            check_transfer(&ok_peer(), 1_000, 990, 995),
            Err(AdminError::TransfereePendingConfChange { pending_index: 995 })
        );
    }
}
