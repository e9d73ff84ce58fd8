//! Message dispatch: term rules first, then one flat `match` per role that
//! hands each message type to a small handler.

use flotilla_proto::eraftpb::{Message, MessageType};

use super::{CAMPAIGN_TRANSFER, INVALID_ID, Raft, StateRole};
use crate::raft::errors::{Error, Result};
use crate::raft::storage::Storage;
use crate::raft::tracker::ProgressState;

impl<S: Storage> Raft<S> {
    /// Steps one message through the state machine.
    ///
    /// # Errors
    ///
    /// [`Error::ProposalDropped`] when a proposal or read cannot be served,
    /// storage failures.
    pub fn step(&mut self, m: Message) -> Result<()> {
        let t = m.msg_type();
        self.step_typed(m, t)
    }

    /// [`Raft::step`] for a caller that already decoded `m`'s type as `t`.
    pub(crate) fn step_typed(&mut self, m: Message, t: MessageType) -> Result<()> {
        if m.term == 0 {
            // Local message (or a forwarded proposal/read).
        } else if m.term > self.term {
            if matches!(
                t,
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            ) {
                let force = m.context.as_ref() == CAMPAIGN_TRANSFER;
                if !force && self.ignores_votes_in_lease() {
                    slog::debug!(self.logger, "ignored vote request within the leader lease";
                        "id" => self.id, "from" => m.from, "term" => m.term);
                    return Ok(());
                }
            }
            match t {
                // A pre-vote never changes the voter's term.
                MessageType::MsgRequestPreVote => {}
                // A granted pre-vote carries the future term; wait for a quorum.
                MessageType::MsgRequestPreVoteResponse if !m.reject => {}
                MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot => {
                    self.become_follower(m.term, m.from)
                }
                _ => self.become_follower(m.term, INVALID_ID),
            }
        } else if m.term < self.term {
            self.step_stale(&m, t);
            return Ok(());
        }

        match t {
            MessageType::MsgHup => {
                self.hup(false);
                Ok(())
            }
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => {
                self.handle_vote_request(&m);
                Ok(())
            }
            _ => match self.state {
                StateRole::Leader => self.step_leader(m, t),
                StateRole::Candidate | StateRole::PreCandidate => self.step_candidate(m, t),
                StateRole::Follower => self.step_follower(m, t),
            },
        }
    }

    /// A message from an older term.
    fn step_stale(&mut self, m: &Message, t: MessageType) {
        match t {
            // Tell a stale leader the current term so it steps down (the
            // paper's rule). etcd answers only under check-quorum or
            // pre-vote and otherwise relies on this node's vote requests to
            // carry the term; but a node that missed a conf change sends
            // them to its stale voter set, which may not include the
            // leader: the simulator found such a group stuck for good
            // (a voter at a higher term that no leader could reach).
            MessageType::MsgAppend | MessageType::MsgHeartbeat => {
                self.send(Self::new_message(m.from, MessageType::MsgAppendResponse));
            }
            MessageType::MsgRequestPreVote => {
                let mut resp = Self::new_message(m.from, MessageType::MsgRequestPreVoteResponse);
                resp.term = self.term;
                resp.reject = true;
                self.send(resp);
            }
            _ => {
                slog::debug!(self.logger, "ignored a message with a lower term";
                    "id" => self.id, "from" => m.from, "msg_term" => m.term, "term" => self.term);
            }
        }
    }

    fn step_leader(&mut self, m: Message, t: MessageType) -> Result<()> {
        match t {
            MessageType::MsgBeat => {
                self.bcast_heartbeat();
                Ok(())
            }
            MessageType::MsgCheckQuorum => {
                self.check_quorum_active();
                Ok(())
            }
            MessageType::MsgPropose => self.handle_propose(m),
            MessageType::MsgReadIndex => {
                self.handle_read_index_on_leader(m);
                Ok(())
            }
            MessageType::MsgAppendResponse => {
                self.handle_append_response(&m);
                Ok(())
            }
            MessageType::MsgHeartbeatResponse => {
                self.handle_heartbeat_response(&m);
                Ok(())
            }
            MessageType::MsgSnapStatus => {
                self.handle_snapshot_status(&m);
                Ok(())
            }
            MessageType::MsgUnreachable => {
                if let Some(pr) = self.prs.get_mut(m.from)
                    && pr.state == ProgressState::Replicate
                {
                    pr.become_probe();
                }
                Ok(())
            }
            MessageType::MsgTransferLeader => {
                self.handle_transfer_leader(&m);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_candidate(&mut self, m: Message, t: MessageType) -> Result<()> {
        match t {
            MessageType::MsgPropose => Err(Error::ProposalDropped),
            MessageType::MsgAppend => {
                self.become_follower(m.term, m.from);
                self.handle_append_entries(m);
                Ok(())
            }
            MessageType::MsgHeartbeat => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(&m);
                Ok(())
            }
            MessageType::MsgSnapshot => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m);
                Ok(())
            }
            MessageType::MsgRequestPreVoteResponse if self.state == StateRole::PreCandidate => {
                self.handle_vote_response(&m);
                Ok(())
            }
            MessageType::MsgRequestVoteResponse if self.state == StateRole::Candidate => {
                self.handle_vote_response(&m);
                Ok(())
            }
            MessageType::MsgReadIndex => Err(Error::ProposalDropped),
            _ => Ok(()),
        }
    }

    /// Follower: hands `m` (a proposal, read or transfer request) to the
    /// known leader; dropped with an error when there is none.
    fn forward_to_leader(&mut self, mut m: Message) -> Result<()> {
        if self.leader_id == INVALID_ID {
            return Err(Error::ProposalDropped);
        }
        m.to = self.leader_id;
        self.send(m);
        Ok(())
    }

    fn step_follower(&mut self, m: Message, t: MessageType) -> Result<()> {
        match t {
            MessageType::MsgPropose if self.disable_proposal_forwarding => {
                Err(Error::ProposalDropped)
            }
            MessageType::MsgPropose
            | MessageType::MsgTransferLeader
            | MessageType::MsgReadIndex => self.forward_to_leader(m),
            MessageType::MsgAppend => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_append_entries(m);
                Ok(())
            }
            MessageType::MsgHeartbeat => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_heartbeat(&m);
                Ok(())
            }
            MessageType::MsgSnapshot => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_snapshot(m);
                Ok(())
            }
            MessageType::MsgTimeoutNow => {
                if self.promotable {
                    // A transfer skips pre-vote: the leader asked for it.
                    self.hup(true);
                }
                Ok(())
            }
            MessageType::MsgReadIndexResp => {
                self.handle_read_index_response(&m);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
