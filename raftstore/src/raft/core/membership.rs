//! Membership changes: admitting conf-change proposals, applying committed
//! changes, and leaving joint configurations automatically.

use flotilla_proto::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, MessageType};
use prost::Message as _;

use super::{INVALID_ID, Raft, StateRole};
use crate::raft::confchange::{self, Changer};
use crate::raft::errors::{Error, Result};
use crate::raft::storage::Storage;

/// Decodes a conf-change entry into its v2 form.
///
/// # Errors
///
/// [`Error::Decode`] if the data is malformed; [`Error::ConfChangeError`]
/// for a normal entry.
pub fn decode_conf_change(e: &Entry) -> Result<ConfChangeV2> {
    match e.entry_type() {
        EntryType::EntryConfChange => ConfChange::decode(e.data.as_ref())
            .map(|cc| confchange::v1_to_v2(&cc))
            .map_err(|err| Error::Decode(err.to_string())),
        EntryType::EntryConfChangeV2 => {
            ConfChangeV2::decode(e.data.as_ref()).map_err(|err| Error::Decode(err.to_string()))
        }
        EntryType::EntryNormal => Err(Error::ConfChangeError("not a conf change entry".into())),
    }
}

impl<S: Storage> Raft<S> {
    /// Whether a proposed conf-change entry must be refused: another change
    /// is pending (not yet applied), or it does not fit the joint state
    /// (entering while joint, leaving while not joint), or it is malformed.
    pub(crate) fn refuse_conf_change(&self, e: &Entry) -> bool {
        let Ok(cc) = decode_conf_change(e) else {
            return true;
        };
        let already_pending = self.pending_conf_index > self.raft_log.applied;
        let already_joint = self.prs.conf().voters.is_joint();
        let wants_leave = confchange::leave_joint(&cc);
        already_pending || (already_joint && !wants_leave) || (!already_joint && wants_leave)
    }

    /// Applies a committed conf change and returns the new conf state.
    ///
    /// # Errors
    ///
    /// [`Error::ConfChangeError`] if the change does not apply to the
    /// current configuration (the configuration is left unchanged).
    pub fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> Result<ConfState> {
        let changer = Changer::new(self.prs.conf());
        let cfg = if confchange::leave_joint(cc) {
            changer.leave_joint()?
        } else if let Some(auto_leave) = confchange::enter_joint(cc) {
            changer.enter_joint(auto_leave, &cc.changes)?
        } else {
            changer.simple(&cc.changes)?
        };
        let next = self.raft_log.last_index() + 1;
        self.prs.apply_conf(cfg, next);
        Ok(self.post_conf_change())
    }

    fn post_conf_change(&mut self) -> ConfState {
        let cs = self.prs.conf_state();
        self.promotable = self.prs.is_voter(self.id);
        if self.state != StateRole::Leader {
            return cs;
        }
        if !self.promotable {
            // The leader was removed or demoted and the change is committed:
            // step down so the remaining voters elect a leader.
            slog::debug!(self.logger, "leader removed from the voters; stepping down";
                "id" => self.id);
            let term = self.term;
            self.become_follower(term, INVALID_ID);
            return cs;
        }
        if let Some(t) = self.lead_transferee
            && !self.prs.is_voter(t)
        {
            self.abort_leader_transfer();
        }
        // The quorum may have changed: commit and tell everyone.
        if self.maybe_commit() {
            self.bcast_append();
        } else {
            self.for_each_peer(|r, id| {
                r.maybe_send_append(id, false);
            });
        }
        cs
    }

    /// Leader: once the joint entry is applied, propose leaving an
    /// auto-leave joint configuration.
    pub(crate) fn maybe_auto_leave_joint(&mut self) {
        let conf = self.prs.conf();
        if self.state != StateRole::Leader
            || !conf.auto_leave
            || !conf.voters.is_joint()
            || self.raft_log.applied < self.pending_conf_index
        {
            return;
        }
        let data = ConfChangeV2::default().encode_to_vec();
        let mut e = Entry {
            data: data.into(),
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryConfChangeV2);
        let mut m = Self::new_message(INVALID_ID, MessageType::MsgPropose);
        m.from = self.id;
        m.entries = vec![e];
        if self.handle_propose(m).is_err() {
            slog::debug!(self.logger, "auto-leave proposal not accepted yet"; "id" => self.id);
        } else {
            slog::debug!(self.logger, "proposed leaving the joint configuration";
                "id" => self.id, "index" => self.pending_conf_index);
        }
    }
}
