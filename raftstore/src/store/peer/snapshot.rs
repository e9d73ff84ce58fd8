//! The peer's side of snapshots (see `store::snapshot`): which received
//! snapshots it lets its raft group see, persisting the one raft installs,
//! handing it to the apply side, and telling raft how a send went.

use flotilla_engine::WriteBatch;
use flotilla_proto::eraftpb::{Message, MessageType, Snapshot};
use flotilla_proto::metapb::Region;

use super::Peer;
use crate::store::error::{Error, Result};
use crate::store::meta::{range_hull, touches};
use crate::store::msg::SnapshotTask;
use crate::store::removed;
use crate::store::snapshot::{recv_path, snap_dir, snapshot_index, snapshot_meta};

/// What an admitted snapshot holds in the store's range index until it is
/// applied.
#[derive(Debug)]
pub struct Reservation {
    /// The snapshot's range, widened to the peer's old range when the two
    /// touch (the hull then holds no other region's keys).
    range: Region,
    /// The peer's old range when it does not touch the snapshot's (a
    /// merge and a split the peer missed moved the region away): held
    /// apart, as it was, so the keys between stay their regions'.
    old: Option<Region>,
}

impl Reservation {
    /// The reservation of a snapshot of `region` by a peer holding `held`.
    fn of(region: &Region, held: Option<&Region>) -> Reservation {
        match held {
            Some(h) if !touches(region, h) => Reservation {
                range: region.clone(),
                old: Some(h.clone()),
            },
            Some(h) => Reservation {
                range: range_hull(region, h),
                old: None,
            },
            None => Reservation {
                range: region.clone(),
                old: None,
            },
        }
    }

    /// The ranges it holds.
    fn ranges(&self) -> Vec<Region> {
        std::iter::once(self.range.clone())
            .chain(self.old.clone())
            .collect()
    }
}

impl Peer {
    /// Whether a received `MsgSnapshot` may reach raft: its file is here,
    /// it is of this region with this region's range or a newer one (a
    /// split or merge this peer missed), no other snapshot is being applied
    /// (two in flight could not both be redone after a crash), every entry
    /// handed to the apply side is applied (TiKV's
    /// `ready_to_handle_pending_snap`: an entry applied after the snapshot
    /// is persisted would write over its `Applying` state, or roll its
    /// membership back), and no other region of the store owns any of the
    /// keys between this peer's range and the snapshot's. Those keys are
    /// then reserved for this region in the store's range index until the
    /// snapshot is applied (see [`Peer::on_snapshot_applied`]). A refused
    /// one's file is removed (unless it is the one being applied); raft's
    /// leader sends again.
    pub(super) fn admit_snapshot(&mut self, m: &Message) -> bool {
        let Some(snap) = m.snapshot.as_deref() else {
            return false;
        };
        let (index, term) = snapshot_index(snap);
        let path = recv_path(&snap_dir(&self.engine), self.region_id(), term, index);
        let why = match snapshot_meta(snap) {
            Err(e) => Some(e.to_string()),
            Ok(meta) => {
                let region = meta.region.unwrap_or_default();
                let ours = self.region();
                // An uninitialized peer takes its range from the snapshot.
                let initialized = self.raft.store().is_initialized();
                let version = |r: &Region| r.region_epoch.map_or(0, |e| e.version);
                if region.id != ours.id {
                    Some("another region".to_owned())
                } else if initialized
                    && (region.start_key != ours.start_key || region.end_key != ours.end_key)
                    && version(&region) <= version(ours)
                {
                    Some("another range, not newer".to_owned())
                } else if self.raft.store().applying_snapshot().is_some()
                    || self.raft.raft.raft_log().unstable.snapshot.is_some()
                {
                    Some("a snapshot is being applied".to_owned())
                } else if self.raft.raft.raft_log().applying > self.raft.store().applied_index()
                    && !self.snapshot_past_merge_wanted()
                {
                    Some("entries before it are being applied".to_owned())
                } else if !path.exists() {
                    Some("its file is not here".to_owned())
                } else if self.supersede_merged(&region) {
                    Some("regions merged into it go first".to_owned())
                } else {
                    self.reserve_range(&region).err().map(|other| {
                        self.wake_range_owner(other);
                        format!("region {other} here owns part of its range")
                    })
                }
            }
        };
        if let Some(why) = why {
            slog::info!(self.logger, "snapshot refused"; "index" => index, "why" => why);
            self.remove_snapshot_file(index, term);
            return false;
        }
        true
    }

    /// Reserves the keys of `region` (a snapshot's) and of this peer's
    /// range in the store's index, so no other region takes them before
    /// the snapshot is applied and whatever of this peer's old range it
    /// does not cover is cleared. At most one snapshot is reserved for at
    /// a time (admission refuses a second until the first is applied).
    ///
    /// # Errors
    /// The region in the way.
    fn reserve_range(&mut self, region: &Region) -> std::result::Result<(), u64> {
        let held = self.held_range();
        let reservation = Reservation::of(region, held.as_ref());
        {
            let mut index = self.store_meta.lock();
            if reservation.old.is_some() {
                // Its old range stays held as it is, apart.
                index.set(None, &reservation.range)?;
            } else {
                index.set(held.as_ref(), &reservation.range)?;
            }
        }
        self.reservation = Some(Box::new(reservation));
        Ok(())
    }

    /// Holds what a snapshot of `region` reserved again after a restart in
    /// the middle of applying it, this peer's range before it being `old`
    /// (its keys are cleared when the snapshot is redone). Returns the
    /// ranges to hold in the store's index.
    pub fn restore_reservation(&mut self, region: &Region, old: &Region) -> Vec<Region> {
        let reservation = Reservation::of(region, Some(old));
        let held = reservation.ranges();
        self.reservation = Some(Box::new(reservation));
        held
    }

    /// The range this peer holds in the store's index: one reserved for a
    /// snapshot (with the old range when it touches the snapshot's), else
    /// its region's if it is initialized.
    pub fn held_range(&self) -> Option<Region> {
        match &self.reservation {
            Some(r) => Some(r.range.clone()),
            None => self
                .raft
                .store()
                .is_initialized()
                .then(|| self.region().clone()),
        }
    }

    /// Every range this peer holds in the store's index (an old range the
    /// snapshot being applied does not touch is held apart).
    pub fn held_ranges(&self) -> Vec<Region> {
        match &self.reservation {
            Some(r) => r.ranges(),
            None => self.held_range().into_iter().collect(),
        }
    }

    /// After a snapshot is applied: the region holds exactly its range in
    /// the store's index (the keys reserved beyond it are cleared now).
    pub(super) fn on_snapshot_applied(&mut self) {
        let reservation = self.reservation.take();
        let ours = self.region().clone();
        let mut index = self.store_meta.lock();
        let held = match reservation {
            Some(r) => {
                if let Some(old) = &r.old {
                    index.remove(old);
                }
                Some(r.range)
            }
            None => self.raft.store().is_initialized().then(|| ours.clone()),
        };
        if let Err(other) = index.set(held.as_ref(), &ours) {
            slog::error!(self.logger, "applied snapshot's range is held by another region";
                "other" => other);
        }
    }

    /// Removes the received file of the snapshot at (`index`, `term`),
    /// unless it is the one being applied (a duplicate of it has the same
    /// name).
    fn remove_snapshot_file(&self, index: u64, term: u64) {
        if self.raft.store().applying_snapshot() == Some((index, term)) {
            return;
        }
        let path = recv_path(&snap_dir(&self.engine), self.region_id(), term, index);
        let _ = std::fs::remove_file(path);
    }

    /// After raft stepped an admitted snapshot: if raft did not install it
    /// (older than the commit index, already matched), its file goes.
    pub(super) fn drop_unused_snapshot(&mut self, index: u64, term: u64) {
        let installed = self
            .raft
            .raft
            .raft_log()
            .unstable
            .snapshot
            .as_deref()
            .is_some_and(|s| snapshot_index(s) == (index, term));
        if !installed {
            self.remove_snapshot_file(index, term);
            // Give back what admission reserved: the peer holds its own
            // range again (none if it is not initialized).
            if let Some(reserved) = self.reservation.take() {
                let mut index = self.store_meta.lock();
                index.remove(&reserved.range);
                // An old range held apart was never given up.
                if reserved.old.is_none()
                    && self.raft.store().is_initialized()
                    && let Err(other) = index.set(None, self.region())
                {
                    slog::error!(self.logger, "range not given back"; "other" => other);
                }
            }
        }
    }

    /// A Ready's snapshot: persisted into `wb` (region `Applying`, states
    /// at the snapshot, old log deleted), and kept for the apply side,
    /// which gets it once `wb` is written.
    ///
    /// # Errors
    /// A snapshot whose meta does not decode (it was checked on receipt:
    /// this is a bug, and the store stops rather than lose the data).
    pub(super) fn persist_snapshot(&mut self, snap: &Snapshot, wb: &mut WriteBatch) -> Result<()> {
        let (index, term) = snapshot_index(snap);
        let meta = snapshot_meta(snap).map_err(|e| {
            Error::Engine(format!(
                "region {}: installed snapshot: {e}",
                self.region_id()
            ))
        })?;
        let region = meta.region.unwrap_or_default();
        // A peer created by a message may not know its role (a coalesced
        // beat names only stores): the snapshot's region says it.
        if let Some(me) = region.peers.iter().find(|p| p.id == self.meta.id) {
            self.meta = *me;
        }
        self.raft
            .raft
            .raft_log_mut()
            .store
            .persist_snapshot(index, term, region.clone(), wb);
        // The region's records of its removed peers are the snapshot's.
        removed::replace(wb, region.id, &meta.removed_peers);
        let path = recv_path(&snap_dir(&self.engine), region.id, term, index);
        slog::info!(self.logger, "snapshot persisted"; "index" => index, "term" => term);
        self.pending_snapshot = Some(Box::new(SnapshotTask {
            old: None,
            region,
            index,
            term,
            path,
        }));
        Ok(())
    }

    /// The persisted snapshot for the apply side (taken).
    pub fn take_snapshot_task(&mut self) -> Option<SnapshotTask> {
        self.pending_snapshot.take().map(|t| *t)
    }

    /// The snapshot worker's report on a send to `to_peer`.
    pub fn on_snapshot_status(&mut self, to_peer: u64, ok: bool) {
        self.raft.report_snapshot(to_peer, ok);
    }

    /// The transport could not reach `to_peer`'s store.
    pub fn on_unreachable(&mut self, to_peer: u64) {
        if self.is_leader() {
            self.raft.report_unreachable(to_peer);
        }
    }

    /// Whether `m` is a snapshot, and its (index, term).
    pub(super) fn snapshot_of(m: &Message) -> Option<(u64, u64)> {
        (m.msg_type() == MessageType::MsgSnapshot)
            .then(|| m.snapshot.as_deref().map(snapshot_index))
            .flatten()
    }
}
