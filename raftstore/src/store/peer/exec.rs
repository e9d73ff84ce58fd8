//! What the apply side reports the admin entries did, acted on by the
//! peer: a compaction (the log deletes itself, see `log_gc`), a snapshot
//! written, a membership change (applied to the raft group; a peer
//! removed from its region is destroyed by its poller, see
//! [`Peer::is_removed`]).

use flotilla_proto::eraftpb::ConfChangeV2;
use flotilla_proto::metapb::{Peer, PeerRole, Region, RegionEpoch};
use flotilla_proto::raft_serverpb::RaftMessage;

use crate::store::admin::removed_peers;
use crate::store::bootstrap::BOOTSTRAP_CONF_VER;
use crate::store::msg::{DestroyTask, ExecResult, RegionStatus};
use crate::store::removed;

/// Election timeouts a peer that cannot campaign (uninitialized, or a
/// learner) waits without hearing a leader before it asks a peer whether
/// it is still a member.
pub const PROBE_ELECTION_TIMEOUTS: u64 = 10;

impl super::Peer {
    /// Acts on what the applied admin commands did, in log order.
    pub(super) fn on_exec_results(&mut self, results: Vec<ExecResult>) {
        for r in results {
            match r {
                ExecResult::CompactLog { truncated } => {
                    slog::debug!(self.logger, "raft log compacted"; "index" => truncated.index);
                }
                ExecResult::SnapshotApplied { index, .. } => {
                    let store = &mut self.raft.raft.raft_log_mut().store;
                    if store.applying_snapshot().is_some_and(|(i, _)| i == index) {
                        store.snapshot_applied();
                        self.on_snapshot_applied();
                    }
                }
                ExecResult::ChangePeer { cc, region } => self.on_change_peer(&cc, region),
                ExecResult::Split(split) => self.on_split(*split),
                ExecResult::PrepareMerge(prepared) => {
                    let (region, state) = *prepared;
                    self.on_prepare_merge(region, state);
                }
                ExecResult::CommitMerge(res) => self.on_commit_merge(*res),
                ExecResult::MergeRefused { source_id, commit } => {
                    self.on_merge_refused(source_id, commit);
                }
                ExecResult::RollbackMerge(region) => self.on_rollback_merge(*region),
                ExecResult::MergeWaiting { index, source_here } => {
                    self.on_merge_waiting(index, source_here);
                }
            }
        }
    }

    /// A membership change applied: the raft group takes it, the peer's
    /// region and its own role follow; a peer no longer in the region is
    /// marked removed.
    fn on_change_peer(&mut self, cc: &ConfChangeV2, region: Region) {
        // Only a leader tells the peers it removes (see `note_removed`).
        let me = self.meta.id;
        let removed: Vec<Peer> = if self.is_leader() {
            let mut gone = removed_peers(self.region(), &region);
            gone.retain(|p| p.id != me);
            gone
        } else {
            Vec::new()
        };
        if let Err(e) = self.raft.apply_conf_change_v2(cc) {
            // The apply side checked the change against the region, which
            // mirrors the raft configuration: a bug, logged loudly.
            slog::error!(self.logger, "conf change not applied to raft"; "err" => %e);
        }
        slog::info!(self.logger, "membership changed";
            "conf_ver" => region.region_epoch.map_or(0, |e| e.conf_ver),
            "peers" => ?region.peers.iter().map(|p| (p.id, p.store_id)).collect::<Vec<_>>());
        match region.peers.iter().find(|p| p.id == self.meta.id) {
            Some(me) => self.meta = *me,
            None => self.removed = true,
        }
        // A peer the region lists again (its id added back) is a member,
        // not a removed peer to tell it is gone.
        if let Some(known) = self.known_peers.as_mut() {
            known
                .removed
                .retain(|p| !region.peers.iter().any(|n| n.id == p.id));
        }
        self.raft.raft.raft_log_mut().store.set_region(region);
        if self.is_leader() && !self.removed {
            self.note_removed(removed);
        }
    }

    /// This leader removed `peers` from the region: it tells each that
    /// it is gone until its store confirms (see
    /// [`Peer::tell_removed_peers`]).
    fn note_removed(&mut self, peers: Vec<Peer>) {
        if peers.is_empty() {
            return;
        }
        let clock = self.clock;
        let known = self.known_peers_or_new(clock);
        for p in peers {
            known.removed.retain(|r| r.id != p.id);
            if known.removed.len() >= super::MAX_UNCONFIRMED_REMOVALS {
                known.removed.remove(0);
            }
            known.removed.push(p);
        }
    }

    /// A new leader takes up the removal notes of the peers its region
    /// removed last (this store's records, `keys::removed_peer_key`, the
    /// newest [`MAX_UNCONFIRMED_REMOVALS`](super::MAX_UNCONFIRMED_REMOVALS)):
    /// the leader that removed them may have stopped leading before their
    /// stores confirmed, and a removed peer asleep under a live store
    /// hears of its removal from no one else. A store without the peer
    /// confirms at once, so a removal confirmed long ago costs a new
    /// leader one note and one answer (each note goes out on a full tick,
    /// one at a time, and the region does not hibernate until the live
    /// stores answered). A removed peer on a store that hosts a member of
    /// the region now is not told: that member's creation there destroyed
    /// it (a live message to another peer of the region under a newer
    /// membership does, see `Peer::on_raft_message`). A region whose
    /// membership never changed (`conf_ver` as bootstrapped, see
    /// `bootstrap_store`) has no records, and its new leaders read
    /// nothing.
    pub(super) fn note_recorded_removals(&mut self) {
        let region = self.region();
        if region
            .region_epoch
            .is_none_or(|e| e.conf_ver <= BOOTSTRAP_CONF_VER)
        {
            return;
        }
        let mut records = match removed::read_all(&self.engine.snapshot(), region.id) {
            Ok(records) => records,
            Err(e) => {
                // Best effort: the removed peers' own probes remain.
                slog::warn!(self.logger, "removed-peer records not read"; "err" => %e);
                return;
            }
        };
        records.sort_by_key(|r| std::cmp::Reverse(r.conf_ver));
        let mut newest: Vec<Peer> = records
            .iter()
            .filter_map(|r| r.peer)
            .filter(|p| !hosts_member(region, p.store_id))
            .take(super::MAX_UNCONFIRMED_REMOVALS)
            .collect();
        newest.reverse();
        self.note_removed(newest);
    }

    /// A leader tells a peer it removed that it is gone, one peer per
    /// full tick in turn, until the peer's store confirms
    /// ([`Peer::on_gc_ack`]): a tombstone message under the region's
    /// current epoch. A removed peer that missed its removal (cut off, and
    /// perhaps asleep, so nothing else would ever wake it) is destroyed;
    /// a store without the peer answers `gc_ack`. Its region does not
    /// hibernate meanwhile while the peer's store is supported, and
    /// remembers the store as lagging otherwise, so the leader wakes and
    /// tells it when the store is back (see `hibernate_plan`). A peer
    /// that stops leading forgets them; the next leader takes up the ones
    /// its region recorded ([`Peer::note_recorded_removals`]).
    pub(super) fn tell_removed_peers(&mut self) {
        let leader = self.is_leader();
        let Some(known) = self.known_peers.as_mut() else {
            return;
        };
        if known.removed.is_empty() {
            return;
        }
        if !leader {
            known.removed = Vec::new();
            return;
        }
        if self.gc_reply.is_some() {
            return;
        }
        let turn = known.probes;
        known.probes = turn.wrapping_add(1);
        // A member on the removed peer's store now: its creation there
        // destroyed the removed peer (see `note_recorded_removals`).
        let region = self.raft.raft.raft_log().store.region();
        known.removed.retain(|p| !hosts_member(region, p.store_id));
        if known.removed.is_empty() {
            return;
        }
        let Some(&to) = known.removed.get(turn % known.removed.len()) else {
            return;
        };
        self.gc_reply = Some(Box::new(self.tombstone_to(to)));
    }

    /// A tombstone message from this peer to `to`, a peer its region no
    /// longer lists, under the region's current epoch.
    fn tombstone_to(&self, to: Peer) -> RaftMessage {
        let region = self.region();
        RaftMessage {
            region_id: region.id,
            from_peer: Some(self.meta),
            to_peer: Some(to),
            region_epoch: region.region_epoch,
            is_tombstone: true,
            ..Default::default()
        }
    }

    /// A store confirms that a peer this leader removed is not there
    /// (see [`Peer::tell_removed_peers`]).
    pub(super) fn on_gc_ack(&mut self, msg: &RaftMessage) {
        let (Some(from), Some(known)) = (msg.from_peer, self.known_peers.as_mut()) else {
            return;
        };
        let before = known.removed.len();
        known
            .removed
            .retain(|p| !(p.id == from.id && p.store_id == from.store_id));
        if known.removed.len() < before {
            slog::info!(self.logger, "a removed peer is gone"; "peer" => from.id,
                "store" => from.store_id);
        }
    }

    /// The stores of the removed peers this leader still tells they are
    /// gone (see [`Peer::tell_removed_peers`]).
    pub(super) fn unconfirmed_removals(&self) -> impl Iterator<Item = u64> + '_ {
        self.known_peers
            .iter()
            .flat_map(|k| k.removed.iter().map(|p| p.store_id))
    }

    /// What this peer reports about its region (inspection).
    pub fn status(&self) -> RegionStatus {
        let raft = &self.raft.raft;
        let store = self.raft.store();
        RegionStatus {
            region: self.region().clone(),
            peer: self.meta,
            leader: self.leader(),
            term: raft.term(),
            commit_index: raft.raft_log().committed,
            applied_index: store.applied_index(),
            last_index: raft.raft_log().last_index(),
            truncated_index: store
                .apply_state()
                .truncated_state
                .unwrap_or_default()
                .index,
            hibernating: self.is_asleep(),
            applying_snapshot: store.applying_snapshot().is_some(),
        }
    }

    /// Whether this peer was removed from its region (a conf change it
    /// applied, or a tombstone message from a newer member) and every
    /// entry it handed to its apply side is applied: its poller destroys
    /// it. (Destroyed with a split still being applied, it would clear the
    /// range it had before the split, the new regions' keys among them,
    /// and never register their peers.)
    pub fn is_removed(&self) -> bool {
        self.removed && self.raft.raft.raft_log().applying <= self.raft.store().applied_index()
    }

    /// A message from `from`, which the region (as this peer knows it)
    /// does not list (the caller checked), sent under an older membership
    /// of an initialized region: `from` was
    /// removed while it could not hear of it (a removed peer that was
    /// partitioned away, or down). It is told so with a tombstone message
    /// (TiKV's stale-peer GC; no placement service needed).
    pub(super) fn check_stale_sender(&mut self, from: Peer, epoch: Option<RegionEpoch>) {
        let region = self.region();
        let ours = region.region_epoch.unwrap_or_default();
        let stale = self.raft.store().is_initialized()
            && from.id != self.meta.id
            && epoch.is_some_and(|e| e.conf_ver < ours.conf_ver);
        if !stale || self.gc_reply.is_some() {
            return;
        }
        slog::info!(self.logger, "telling a removed peer it is gone"; "to" => from.id,
            "store" => from.store_id);
        self.gc_reply = Some(Box::new(self.tombstone_to(from)));
    }

    /// The tombstone message to send, if one is due (taken).
    pub fn take_gc_reply(&mut self) -> Option<RaftMessage> {
        self.gc_reply.take().map(|m| *m)
    }

    /// A tombstone message: a member under a newer membership says this
    /// peer is no longer in the region. It is destroyed (its poller writes
    /// its tombstone).
    pub(super) fn on_tombstone_message(&mut self, msg: &RaftMessage) {
        if let Some(target) = msg.merged_into.as_ref() {
            let ours = self.region();
            let overlaps = (target.end_key.is_empty() || ours.start_key < target.end_key)
                && (ours.end_key.is_empty() || target.start_key < ours.end_key);
            if msg.to_peer.map(|p| p.id) == Some(self.meta.id) && overlaps {
                self.on_merged_elsewhere(target);
            }
            return;
        }
        let ours = self.region().region_epoch.unwrap_or_default();
        let newer = msg.region_epoch.is_some_and(|e| e.conf_ver > ours.conf_ver);
        if let Some(to) = msg.to_peer.filter(|p| p.id != self.meta.id) {
            // A leader tells a removed peer of this store only while its
            // region has no member here: under a newer membership than
            // this initialized peer's, this peer is not a member either
            // (removed while away, and its id never comes back). An
            // uninitialized peer's epoch is the creating message's, which
            // may be older than its membership: it asks instead.
            if newer && to.store_id == self.meta.store_id && self.raft.store().is_initialized() {
                slog::info!(self.logger, "a removal note under a newer membership names this store: destroying";
                    "note_for" => to.id, "conf_ver" => ours.conf_ver);
                self.removed = true;
                return;
            }
            // A removed peer of this region that is not here (this peer
            // replaced it): the leader telling it hears so.
            self.confirm_gone(to, msg.from_peer);
            return;
        }
        if !newer || msg.to_peer.is_none() {
            return;
        }
        slog::info!(self.logger, "removed from the region while away: destroying";
            "conf_ver" => ours.conf_ver);
        self.removed = true;
    }

    /// Answers a leader's removal note for `gone`, a peer that is not
    /// here, with `gc_ack` (see [`Peer::tell_removed_peers`]).
    fn confirm_gone(&mut self, gone: Peer, leader: Option<Peer>) {
        let Some(leader) = leader else {
            return;
        };
        if self.gc_reply.is_some() {
            return;
        }
        self.gc_reply = Some(Box::new(gc_ack(self.region_id(), gone, leader)));
    }

    /// A peer that cannot campaign (uninitialized, or a learner) and has
    /// heard nothing from a leader for [`PROBE_ELECTION_TIMEOUTS`] election
    /// timeouts asks another peer whether it is still a member (a message
    /// without a raft message; admin.md's "a peer that has no leader for
    /// long asks its peers"): an uninitialized peer asks the peers it heard
    /// from, a learner its region's voters, in turn. A voter has its
    /// pre-vote for that. The answers:
    /// - a member whose region does not list it: a tombstone message, and
    ///   it is destroyed (a peer whose addition was reverted before any
    ///   snapshot reached it, or a learner removed while cut off, does not
    ///   linger);
    /// - a store where the region was merged away: the merge notice
    ///   (`tell_merged_away`), and a learner left behind by a merge gives
    ///   way to its target (chaos seed 17, session 20: it slept through the
    ///   merge, and nothing else it sends reaches a store that answers);
    /// - a member that lists it: nothing.
    ///
    /// Its leader's messages keep a member from asking.
    pub(super) fn probe_membership(&mut self, elapsed: u64) {
        if !self.probes_when_silent() || self.gc_reply.is_some() {
            return;
        }
        let due = self.probe_interval();
        // This full tick's store tick (`tick` runs before the clock moves).
        let now = self.last_full_tick.saturating_add(elapsed);
        let known = self.known_peers_or_new(now);
        if now.saturating_sub(known.silent_since) < due {
            return;
        }
        known.silent_since = now;
        let turn = known.probes;
        known.probes = turn.wrapping_add(1);
        let Some(to) = self.probe_target(turn) else {
            return;
        };
        slog::info!(self.logger, "no leader heard for long: asking a peer about membership";
            "to" => to.id, "store" => to.store_id);
        self.gc_reply = Some(Box::new(RaftMessage {
            region_id: self.region_id(),
            from_peer: Some(self.meta),
            to_peer: Some(to),
            ..Default::default()
        }));
    }

    /// The leader was heard: a peer that cannot campaign is silent from
    /// now on (see [`Peer::probe_membership`]).
    pub(super) fn note_leader_heard(&mut self) {
        if !self.probes_when_silent() {
            return;
        }
        let clock = self.clock;
        self.known_peers_or_new(clock).silent_since = clock;
    }

    /// The peer asked by membership probe number `turn`: an uninitialized
    /// peer's known peers in turn, an initialized learner's region's voters
    /// in turn.
    fn probe_target(&self, turn: usize) -> Option<Peer> {
        if !self.raft.store().is_initialized() {
            let peers = &self.known_peers.as_ref()?.peers;
            return peers.get(turn.checked_rem(peers.len())?).copied();
        }
        let me = self.meta.id;
        let voters = || {
            self.region()
                .peers
                .iter()
                .filter(move |p| p.id != me && p.role() != PeerRole::Learner)
        };
        let n = voters().count();
        voters().nth(turn.checked_rem(n)?).copied()
    }

    /// Whether this peer asks about its membership when it hears no leader
    /// (see [`Peer::probe_membership`]): it cannot campaign.
    fn probes_when_silent(&self) -> bool {
        !self.raft.raft.promotable() && !self.is_leader()
    }

    /// Ticks between membership probes.
    fn probe_interval(&self) -> u64 {
        PROBE_ELECTION_TIMEOUTS.saturating_mul(self.raft.raft.election_timeout() as u64)
    }

    /// Ticks from the peer's clock until its next membership probe, if it
    /// will send one (its lazy clock must deliver that tick). Without a
    /// record yet, silence counts from the last full tick.
    pub(super) fn ticks_to_probe(&self) -> Option<u64> {
        if !self.probes_when_silent() {
            return None;
        }
        let since = self
            .known_peers
            .as_ref()
            .map_or(self.last_full_tick, |k| k.silent_since);
        let silent = self.clock.saturating_sub(since);
        Some(self.probe_interval().saturating_sub(silent).max(1))
    }

    /// A membership probe from `msg.from_peer` (see
    /// [`Peer::probe_membership`]): a sender this region does not list is
    /// told it was removed.
    pub(super) fn on_membership_probe(&mut self, msg: &RaftMessage) {
        let Some(from) = msg.from_peer else {
            return;
        };
        if self.region().peers.iter().any(|p| p.id == from.id) {
            return;
        }
        self.check_stale_sender(from, Some(RegionEpoch::default()));
    }

    /// The apply delegate's last task for this removed peer: its
    /// region's tombstone (naming this peer, so late messages to it never
    /// recreate it), its log up to its last index, and its data if it was
    /// initialized (its range is the region's).
    pub fn destroy_task(&self) -> DestroyTask {
        let mut tombstone = self.region().clone();
        if !tombstone.peers.iter().any(|p| p.id == self.meta.id) {
            tombstone.peers.push(self.meta);
        }
        let merged = self.merged_away();
        DestroyTask {
            tombstone,
            last_index: self.raft.store().raft_state().last_index,
            // A merged region's keys are the target's now.
            held: if merged {
                Vec::new()
            } else {
                self.held_ranges()
            },
            merged,
        }
    }
}

/// A store's confirmation to `leader` that `gone`, a peer of region
/// `region_id` the leader removed, is not there (see
/// [`Peer::tell_removed_peers`](super::Peer::tell_removed_peers)).
pub(crate) fn gc_ack(region_id: u64, gone: Peer, leader: Peer) -> RaftMessage {
    RaftMessage {
        region_id,
        from_peer: Some(gone),
        to_peer: Some(leader),
        gc_ack: true,
        ..Default::default()
    }
}

/// Whether `region` lists a peer on `store`.
fn hosts_member(region: &Region, store: u64) -> bool {
    region.peers.iter().any(|p| p.store_id == store)
}
