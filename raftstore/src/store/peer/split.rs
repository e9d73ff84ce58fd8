//! The peer's side of BatchSplit (admin.md §1.1): the leader's checks
//! before it proposes, what a peer does when a split applied (its region
//! shrinks, the store's range index follows, the new regions' peers are
//! handed to the poller to register), and the `EpochNotMatch` that tells
//! a client every region the split made.

use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::BatchSplitRequest;

use super::Peer;
use crate::store::admin::{AdminError, check_split_keys, is_joint};
use crate::store::config::Config;
use crate::store::error::{Error, Result};
use crate::store::msg::SplitResult;
use crate::store::split_check::{SPLIT_CHECK_DIFF_DIVISOR, SplitCheckTask};
use crate::store::validate::check_key_size;

/// A peer's split bookkeeping.
#[derive(Debug, Default)]
pub(super) struct SplitState {
    /// Regions a split applied here created, for the poller to register
    /// (taken at once).
    born: Vec<Region>,
    /// Every region of the last split this peer applied: an
    /// `EpochNotMatch` lists them, so a client's cache learns all of them
    /// at once.
    last: Vec<Region>,
}

impl Peer {
    /// The leader's checks of a split before it proposes: the keys
    /// (`admin::check_split_keys`), the ids the poller filled in, no split
    /// or membership change pending, not joint.
    pub(super) fn check_split(&self, req: &BatchSplitRequest, max_keys: u64) -> Result<()> {
        let region = self.region();
        check_split_keys(
            req.requests.iter().map(|r| &r.split_key[..]),
            region,
            max_keys,
        )?;
        // A split key becomes a region bound, carried by every message and
        // cache entry of two regions: no longer than any key may be.
        for r in &req.requests {
            check_key_size(&r.split_key, &self.limits)?;
        }
        let applied = self.raft.store().applied_index();
        if self.pending_split > applied {
            return Err(Error::Admin(AdminError::SplitPending {
                pending_index: self.pending_split,
            }));
        }
        let pending_conf = self.raft.raft.pending_conf_index();
        if pending_conf > applied {
            return Err(Error::Admin(AdminError::ConfChangePending {
                pending_index: pending_conf,
            }));
        }
        if is_joint(region) {
            return Err(Error::Admin(AdminError::ConfChangeInJoint {
                region_id: region.id,
            }));
        }
        if req
            .requests
            .iter()
            .any(|r| r.new_region_id == 0 || r.new_peer_ids.len() != region.peers.len())
        {
            return Err(Error::InvalidRequest(
                "split without new ids (the store allocates them)".into(),
            ));
        }
        Ok(())
    }

    /// A split of this peer's region is pending (proposed here, not yet
    /// applied): membership changes wait for it.
    pub(super) fn check_no_pending_split(&self) -> Result<()> {
        if self.pending_split > self.raft.store().applied_index() {
            return Err(Error::Admin(AdminError::SplitPending {
                pending_index: self.pending_split,
            }));
        }
        Ok(())
    }

    /// Records the index of the split just proposed.
    pub(super) fn note_split_proposed(&mut self, index: u64) {
        self.pending_split = index;
    }

    /// A split applied: the region shrinks to the derived one, the range
    /// index follows, and the new regions whose peers this store creates
    /// are kept for the poller ([`Peer::take_born`]).
    pub(super) fn on_split(&mut self, split: SplitResult) {
        let SplitResult {
            derived,
            new,
            created,
        } = split;
        slog::info!(self.logger, "region split";
            "version" => derived.region_epoch.map_or(0, |e| e.version),
            "new" => ?new.iter().map(|r| r.id).collect::<Vec<_>>());
        let held = self.held_range();
        self.raft
            .raft
            .raft_log_mut()
            .store
            .set_region(derived.clone());
        let born: Vec<Region> = new
            .iter()
            .zip(&created)
            .filter(|(_, c)| **c)
            .map(|(r, _)| r.clone())
            .collect();
        {
            let mut index = self.store_meta.lock();
            // A range reserved for a snapshot stays reserved (the snapshot
            // settles it); else the region holds its new range.
            if self.reservation.is_none()
                && let Err(other) = index.set(held.as_ref(), &derived)
            {
                slog::error!(self.logger, "split region's range held by another"; "other" => other);
            }
            for r in &born {
                if let Err(other) = index.set(None, r) {
                    slog::error!(self.logger, "new region's range held by another";
                        "region" => r.id, "other" => other);
                }
            }
        }
        let mut all = new;
        all.push(derived);
        all.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        self.split_check.written = 0;
        let state = self.split.get_or_insert_with(Box::default);
        state.last = all;
        if !born.is_empty() {
            // Several splits may apply in one round: keep every one's
            // (found by the chaos suite, seed 10: the first split's new
            // region was written on disk but never got its peer).
            state.born.extend(born);
        }
    }

    /// A peer a split just created: it does not hold for a first election
    /// like a bootstrapped one. Where the parent leads it campaigns now;
    /// elsewhere it waits on its usual clock for that campaign.
    pub fn born_of_split(&mut self, parent_leads: bool) {
        self.sleep.fresh_hold = None;
        self.sleep.campaigns_first = false;
        if parent_leads && let Err(e) = self.raft.campaign() {
            slog::debug!(self.logger, "campaign after split failed"; "err" => %e);
        }
    }

    /// `elapsed` ticks of the split checker's clock: a leader that took
    /// writes of 1/16 of the split size since its last check asks for one
    /// when the clock is due.
    pub(super) fn tick_split_check(&mut self, cfg: &Config, elapsed: u64) {
        if cfg.split_check_ticks == 0 || !self.is_leader() {
            return;
        }
        let sc = &mut self.split_check;
        sc.ticks = sc
            .ticks
            .saturating_add(u32::try_from(elapsed).unwrap_or(u32::MAX));
        if (sc.ticks as usize) < cfg.split_check_ticks {
            return;
        }
        sc.ticks = 0;
        if sc.written >= cfg.region_split_size / SPLIT_CHECK_DIFF_DIVISOR {
            sc.written = 0;
            sc.wanted = true;
        }
    }

    /// The split check this peer wants run, if any (taken).
    pub fn take_split_check(&mut self, cfg: &Config) -> Option<SplitCheckTask> {
        if !std::mem::take(&mut self.split_check.wanted) {
            return None;
        }
        Some(SplitCheckTask {
            region: self.region().clone(),
            max_size: cfg.region_split_size,
            max_keys: cfg.region_split_keys,
        })
    }

    /// The regions a split applied here created peers of, to register.
    pub fn take_born(&mut self) -> Option<Vec<Region>> {
        let born = std::mem::take(&mut self.split.as_mut()?.born);
        (!born.is_empty()).then_some(born)
    }

    /// The `EpochNotMatch` for a request made under an older range: this
    /// peer's region and, if it split, the other regions of its last
    /// split (as they were then; each answers for itself later).
    pub(super) fn epoch_not_match(&self) -> Error {
        let region = self.region();
        let mut current_regions = vec![region.clone()];
        if let Some(split) = &self.split {
            current_regions.extend(split.last.iter().filter(|r| r.id != region.id).cloned());
        }
        Error::EpochNotMatch { current_regions }
    }
}
