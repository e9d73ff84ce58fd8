//! Elections: campaigning (with optional pre-vote), voting, counting votes,
//! and the leader's check-quorum.

use flotilla_proto::eraftpb::{EntryType, Message, MessageType};

use super::{CAMPAIGN_TRANSFER, INVALID_ID, Raft, StateRole};
use crate::raft::quorum::VoteResult;
use crate::raft::storage::Storage;

/// What kind of campaign to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CampaignType {
    /// A pre-vote round (term not incremented).
    PreElection,
    /// A normal election.
    Election,
    /// An election asked for by the leader (overrides leases).
    Transfer,
}

impl<S: Storage> Raft<S> {
    /// Starts an election unless this node is a leader, not a voter, or has
    /// an unapplied committed conf change (which could change whether it
    /// may campaign).
    pub(crate) fn hup(&mut self, transfer: bool) {
        if self.state == StateRole::Leader {
            return;
        }
        if !self.promotable {
            slog::debug!(self.logger, "not promotable, not campaigning"; "id" => self.id);
            return;
        }
        if self.campaigns_held {
            slog::debug!(self.logger, "campaigns held, not campaigning"; "id" => self.id);
            return;
        }
        if self.has_unapplied_conf_change() {
            slog::debug!(self.logger, "unapplied conf change, not campaigning"; "id" => self.id);
            return;
        }
        let t = if transfer {
            CampaignType::Transfer
        } else if self.pre_vote {
            CampaignType::PreElection
        } else {
            CampaignType::Election
        };
        self.campaign(t);
    }

    fn has_unapplied_conf_change(&self) -> bool {
        let lo = self.raft_log.applied + 1;
        let hi = self.raft_log.committed + 1;
        if lo >= hi {
            return false;
        }
        match self.raft_log.slice(lo, hi, None) {
            Ok(ents) => ents
                .iter()
                .any(|e| e.entry_type() != EntryType::EntryNormal),
            // Cannot tell: be safe and do not campaign.
            Err(_) => true,
        }
    }

    pub(crate) fn campaign(&mut self, t: CampaignType) {
        let (vote_type, term) = if t == CampaignType::PreElection {
            self.become_pre_candidate();
            (MessageType::MsgRequestPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::MsgRequestVote, self.term)
        };
        let id = self.id;
        if self.poll(id, true) == VoteResult::Won {
            // A single-voter group wins at once.
            if t == CampaignType::PreElection {
                self.campaign(CampaignType::Election);
            } else {
                self.become_leader();
            }
            return;
        }
        let (last_index, last_term) = (self.raft_log.last_index(), self.raft_log.last_term());
        for to in self.prs.conf().voters.ids() {
            if to == id {
                continue;
            }
            let mut m = Self::new_message(to, vote_type);
            m.term = term;
            m.index = last_index;
            m.log_term = last_term;
            m.priority = self.priority;
            if t == CampaignType::Transfer {
                m.context = Self::ctx(CAMPAIGN_TRANSFER);
            }
            self.send(m);
        }
    }

    /// Records a vote and returns the election outcome so far.
    pub(crate) fn poll(&mut self, from: u64, granted: bool) -> VoteResult {
        self.prs.record_vote(from, granted);
        self.prs.tally_votes().2
    }

    /// Answers a vote or pre-vote request (terms already handled by `step`).
    pub(crate) fn handle_vote_request(&mut self, m: &Message) {
        let pre = m.msg_type() == MessageType::MsgRequestPreVote;
        let resp_type = if pre {
            MessageType::MsgRequestPreVoteResponse
        } else {
            MessageType::MsgRequestVoteResponse
        };
        // We can vote for m.from if we already did this term, if we have not
        // voted and know no leader, or for a pre-vote of a future term.
        let can_vote = self.vote == m.from
            || (self.vote == INVALID_ID && self.leader_id == INVALID_ID)
            || (pre && m.term > self.term);
        let up_to_date = self.raft_log.is_up_to_date(m.index, m.log_term);
        // Priority: with an equally up-to-date log, refuse a candidate of
        // lower priority than ours.
        let strictly_newer = m.log_term > self.raft_log.last_term()
            || (m.log_term == self.raft_log.last_term() && m.index > self.raft_log.last_index());
        let priority_ok = strictly_newer || m.priority >= self.priority;
        // Two pre-candidates campaigning at once would each grant the
        // other's pre-vote and then split the real vote (with two live
        // voters, every time), costing both a randomized election timeout.
        // A pre-candidate grants a pre-vote only when it could not win this
        // round anyway: the asker's log is newer, or as new and the asker
        // comes first by (priority, higher first; id, lower first). Between
        // simultaneous pre-candidates exactly one goes on.
        let asker_first =
            m.priority > self.priority || (m.priority == self.priority && m.from < self.id);
        let no_duel =
            !(pre && self.state == StateRole::PreCandidate) || strictly_newer || asker_first;
        let mut resp = Self::new_message(m.from, resp_type);
        if can_vote && up_to_date && priority_ok && no_duel {
            // The response carries the request's term: a pre-vote grant must
            // not look stale to the pre-candidate.
            resp.term = m.term;
            if !pre {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            resp.term = self.term;
            resp.reject = true;
        }
        slog::debug!(self.logger, "vote request"; "id" => self.id, "from" => m.from,
            "pre" => pre, "granted" => !resp.reject, "term" => self.term);
        self.send(resp);
    }

    pub(crate) fn handle_vote_response(&mut self, m: &Message) {
        match self.poll(m.from, !m.reject) {
            VoteResult::Won => {
                if self.state == StateRole::PreCandidate {
                    self.campaign(CampaignType::Election);
                } else {
                    self.become_leader();
                    self.bcast_append();
                }
            }
            VoteResult::Lost => {
                // A rejection with a higher term already made us a follower in
                // `step`; otherwise stay in this term and wait.
                let term = self.term;
                self.become_follower(term, INVALID_ID);
            }
            VoteResult::Pending => {}
        }
    }

    /// Check-quorum: step down if no quorum of voters was heard from
    /// during the last election timeout.
    pub(crate) fn check_quorum_active(&mut self) {
        let id = self.id;
        if !self.prs.quorum_recently_active(id) {
            slog::debug!(self.logger, "stepping down: no quorum active"; "id" => id);
            let term = self.term;
            self.become_follower(term, INVALID_ID);
        }
    }
}
