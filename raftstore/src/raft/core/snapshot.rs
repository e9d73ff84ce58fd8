//! Snapshots: the leader sends one when a follower's next entries are
//! compacted; a follower restores one newer than its log.

use flotilla_proto::eraftpb::{Message, MessageType, Snapshot};

use super::{INVALID_ID, Raft, StateRole};
use crate::raft::confchange;
use crate::raft::errors::{Error, StorageError};
use crate::raft::storage::Storage;

impl<S: Storage> Raft<S> {
    /// Sends a snapshot to `to` and moves its progress to snapshot state.
    /// Returns false if none could be sent (peer inactive, or the storage
    /// has no snapshot ready yet).
    pub(crate) fn send_snapshot(&mut self, to: u64) -> bool {
        self.send_snapshot_at_least(to, 0)
    }

    /// [`Raft::send_snapshot`] of a snapshot at index `at_least` or past
    /// it (one the follower asked for: it replaces the follower's whole
    /// log, so it must hold everything the follower has); none is sent
    /// while the storage has only an older one.
    pub(crate) fn send_snapshot_at_least(&mut self, to: u64, at_least: u64) -> bool {
        let Some(pr) = self.prs.get(to) else {
            return false;
        };
        if !pr.recent_active {
            slog::debug!(self.logger, "not sending a snapshot to an inactive peer"; "to" => to);
            return false;
        }
        let snap = match self.raft_log.snapshot(at_least, to) {
            Ok(s) => s,
            Err(Error::Store(StorageError::SnapshotTemporarilyUnavailable)) => {
                slog::debug!(self.logger, "snapshot temporarily unavailable"; "to" => to);
                return false;
            }
            Err(e) => {
                slog::warn!(self.logger, "failed to get a snapshot"; "to" => to, "err" => %e);
                return false;
            }
        };
        let Some(meta) = snap.metadata.as_ref() else {
            return false;
        };
        if meta.index == 0 || meta.index < at_least {
            slog::debug!(self.logger, "snapshot older than requested"; "to" => to,
                "index" => meta.index, "requested" => at_least);
            return false;
        }
        let idx = meta.index;
        if let Some(pr) = self.prs.get_mut(to) {
            pr.become_snapshot(idx);
        }
        slog::debug!(self.logger, "sending snapshot"; "id" => self.id, "to" => to, "index" => idx);
        let mut m = Self::new_message(to, MessageType::MsgSnapshot);
        m.snapshot = Some(Box::new(snap));
        self.send(m);
        true
    }

    /// Follower: asks the leader for a snapshot at or past its last
    /// index, for an application that cannot apply the log from where it
    /// is. Until one is restored, every append is answered with the
    /// request (and not appended) and so is every heartbeat; the snapshot
    /// is restored even where the log holds its index and term.
    ///
    /// # Errors
    /// [`Error::RequestSnapshotDropped`]: this node leads, knows no
    /// leader, restores a snapshot already, or its last entry is not of
    /// the current term (its tail may not be the leader's: ask again once
    /// it follows the leader's log).
    pub fn request_snapshot(&mut self) -> Result<(), Error> {
        let last = self.raft_log.last_index();
        if self.state == StateRole::Leader
            || self.leader_id == INVALID_ID
            || self.raft_log.unstable.snapshot.is_some()
            || self.raft_log.term(last).ok() != Some(self.term)
        {
            return Err(Error::RequestSnapshotDropped);
        }
        self.snapshot_requested = true;
        self.send_snapshot_request(self.leader_id);
        Ok(())
    }

    /// Sends the snapshot request to `to`: a rejection of appends naming
    /// the last index as the least snapshot index that serves (restoring
    /// replaces the whole log: entries past the commit index this node
    /// acknowledged must be in the snapshot).
    pub(crate) fn send_snapshot_request(&mut self, to: u64) {
        let mut m = Self::new_message(to, MessageType::MsgAppendResponse);
        m.index = self.raft_log.committed;
        m.reject = true;
        m.reject_hint = self.raft_log.last_index();
        m.request_snapshot = self.raft_log.last_index().max(1);
        self.send(m);
    }

    /// Follower: handles a snapshot from the leader.
    pub(crate) fn handle_snapshot(&mut self, mut m: Message) {
        let snap = m.snapshot.take().map(|s| *s).unwrap_or_default();
        let mut resp = Self::new_message(m.from, MessageType::MsgAppendResponse);
        if self.restore(snap) {
            resp.index = self.raft_log.last_index();
        } else {
            resp.index = self.raft_log.committed;
        }
        self.send(resp);
    }

    /// Installs `snap` if it is newer than the log. Returns false if it was
    /// ignored (older than the commit index, already matched, or not
    /// including this node).
    pub fn restore(&mut self, snap: Snapshot) -> bool {
        let Some(meta) = snap.metadata.as_ref() else {
            return false;
        };
        let (sindex, sterm) = (meta.index, meta.term);
        if sindex < self.raft_log.committed {
            return false;
        }
        if self.snapshot_requested && sindex < self.raft_log.last_index() {
            // Not the one asked for (one sent before the request, say):
            // restoring it would drop acknowledged entries past it.
            return false;
        }
        let cs = meta.conf_state.clone().unwrap_or_default();
        let member = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .chain(&cs.learners_next)
            .any(|id| *id == self.id);
        if !member {
            slog::warn!(self.logger, "ignoring a snapshot that does not include us";
                "id" => self.id, "index" => sindex);
            return false;
        }
        if !self.snapshot_requested && self.raft_log.match_term(sindex, sterm) {
            // We already have the snapshot's entries: just fast-forward commit.
            self.raft_log.commit_to(sindex);
            return false;
        }
        let Ok(cfg) = confchange::restore(&cs) else {
            slog::warn!(self.logger, "ignoring a snapshot with an invalid conf state"; "id" => self.id);
            return false;
        };
        self.raft_log.restore(snap);
        self.snapshot_requested = false;
        let next = self.raft_log.last_index() + 1;
        self.prs.apply_conf(cfg, next);
        self.promotable = self.prs.is_voter(self.id);
        self.pending_conf_index = 0;
        slog::debug!(self.logger, "restored snapshot"; "id" => self.id, "index" => sindex,
            "term" => sterm);
        true
    }

    /// The snapshot at `index` is durable.
    pub fn on_persist_snap(&mut self, index: u64) {
        self.raft_log.stable_snap(index);
    }

    /// Leader: the application reports how sending a snapshot went.
    pub(crate) fn handle_snapshot_status(&mut self, m: &Message) {
        let Some(pr) = self.prs.get_mut(m.from) else {
            return;
        };
        if pr.state != crate::raft::tracker::ProgressState::Snapshot {
            return;
        }
        if m.reject {
            pr.snapshot_failure();
        }
        pr.become_probe();
        // Wait for a heartbeat response (or the snapshot's ack) before the
        // next append.
        pr.probe_sent = true;
    }
}
