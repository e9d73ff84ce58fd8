//! Leader transfer.

use flotilla_proto::eraftpb::{Message, MessageType};

use super::Raft;
use crate::raft::storage::Storage;

impl<S: Storage> Raft<S> {
    /// Leader: starts a transfer to `m.from` (the transferee).
    pub(crate) fn handle_transfer_leader(&mut self, m: &Message) {
        let transferee = m.from;
        let Some(pr) = self.prs.get(transferee) else {
            slog::debug!(self.logger, "transfer to an unknown node ignored"; "to" => transferee);
            return;
        };
        if pr.is_learner {
            slog::debug!(self.logger, "transfer to a learner ignored"; "to" => transferee);
            return;
        }
        if let Some(last) = self.lead_transferee {
            if last == transferee {
                return;
            }
            self.abort_leader_transfer();
        }
        if transferee == self.id {
            return;
        }
        // The transfer must finish within an election timeout.
        self.election_elapsed = 0;
        self.lead_transferee = Some(transferee);
        let caught_up = self
            .prs
            .get(transferee)
            .is_some_and(|pr| pr.matched == self.raft_log.last_index());
        if caught_up {
            self.send_timeout_now(transferee);
        } else {
            self.maybe_send_append(transferee, true);
        }
    }

    /// Tells `to` to campaign at once.
    pub(crate) fn send_timeout_now(&mut self, to: u64) {
        self.send(Self::new_message(to, MessageType::MsgTimeoutNow));
    }

    /// Abandons a leader transfer in progress.
    pub fn abort_leader_transfer(&mut self) {
        self.lead_transferee = None;
    }
}
