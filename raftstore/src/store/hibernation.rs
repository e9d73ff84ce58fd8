//! Hibernation of idle regions (DESIGN §5): the store-level registry of
//! which peers sleep, under whose leader, and the messages that put them to
//! sleep and wake them.
//!
//! Lifecycle of a region:
//! 1. Awake: the peer is in the awake set and gets every store tick.
//! 2. Its leader, idle for `hibernate_idle_ticks` (no command, nothing
//!    pending, applied = commit = last, every follower on a supported
//!    store matched), registers itself asleep ([`Hibernation::sleep_leader`])
//!    and sends each such follower a hibernate beat ([`SleepMsg::Request`]).
//!    Followers on stores this store does not support are *lagging*: the
//!    leader sleeps without them if the matched ones are a quorum, and
//!    wakes when such a store is heard again.
//! 3. A follower that agrees (same term, leader and commit, all applied,
//!    and it supports the leader's store) registers asleep under the
//!    leader's store ([`Hibernation::sleep_follower`]). One that does not
//!    agree treats the beat as a heartbeat and wakes the leader
//!    ([`SleepMsg::WakeLeader`]).
//! 4. Asleep: no ticks, no messages. Any command or raft message wakes the
//!    peer; a follower woken by anything but its leader wakes the leader.
//!    When support for a store is withdrawn, exactly the regions asleep
//!    under a leader there wake ([`SleepMsg::LeaderStoreDown`]) with their
//!    election clock run out, and may not sleep under that store again
//!    until it is supported under a later support epoch.
//!
//! The support check and the registration of a sleeping follower happen
//! under the same lock as withdrawal, so "falls asleep" cannot race
//! "support withdrawn" and leave a region asleep under a dead leader.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flotilla_proto::eraftpb::Message;
use flotilla_proto::raft_serverpb::Beat;
use fxhash::{FxHashMap, FxHashSet};
use parking_lot::Mutex;

use super::liveness::{Heard, SupportStatus, SupportTable};

/// Why a hibernating peer woke (counted in
/// [`StoreMetrics::wakes_by_reason`](super::StoreMetrics)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeReason {
    /// A client command reached it.
    Command = 0,
    /// A raft message from its leader.
    LeaderMessage = 1,
    /// A raft message from another peer (a follower or a candidate), or a
    /// follower asking its leader to wake.
    PeerMessage = 2,
    /// Store liveness withdrew support from its leader's store (the store
    /// went silent or restarted).
    LeaderStoreDown = 3,
    /// A follower's store this leader hibernated without came back.
    LaggingStoreBack = 4,
}

/// Number of [`WakeReason`]s.
pub const WAKE_REASONS: usize = 5;

/// Hibernation messages to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SleepMsg {
    /// The leader `from` hibernates at `term` with everything up to
    /// `commit` committed, and asks this follower to do the same.
    Request {
        /// The leader's peer id.
        from: u64,
        /// Its store.
        from_store: u64,
        /// Its term.
        term: u64,
        /// Its commit (= its last index).
        commit: u64,
    },
    /// The follower `from` asks its hibernating leader to wake.
    WakeLeader {
        /// The follower's peer id.
        from: u64,
    },
    /// Support for `store` was withdrawn (it lost support epoch `epoch`).
    LeaderStoreDown {
        /// The store.
        store: u64,
        /// The support epoch it lost.
        epoch: u64,
    },
    /// Support for some store was withdrawn while this peer was awake: if
    /// it follows a leader there, it looks now (see
    /// `Peer::check_silent_leader_store`) instead of at its next due tick,
    /// which a poller busy with the withdrawal's wakes delays.
    SupportWithdrawn,
    /// `store`, a follower store this leader slept without, is back.
    LaggingStoreBack {
        /// The store.
        store: u64,
    },
    /// `store`, where this sleeping leader has a follower it slept with,
    /// restarted: its peer there knows no leader, and would campaign once
    /// its election clock ran out (waking the region on every store). The
    /// leader, still asleep, sends it the hibernate beat again.
    FollowerStoreRestarted {
        /// The store.
        store: u64,
    },
}

/// A hibernation beat a peer wants sent.
#[derive(Debug, Clone, PartialEq)]
pub struct OutBeat {
    /// The destination store.
    pub to_store: u64,
    /// The beat.
    pub beat: Beat,
    /// It goes with the responses (follower side), not the beats.
    pub response: bool,
}

/// One peer's side of hibernation.
#[derive(Debug, Default)]
pub struct PeerSleep {
    /// The peer hibernates: it ignores ticks and sends nothing.
    pub asleep: bool,
    /// Leader: ticks since its last command or wake.
    pub idle_ticks: u32,
    /// Follower: woken because support for its leader's store was
    /// withdrawn, as (store, lost support epoch). It may not sleep under a
    /// leader there until that store is supported under a later epoch.
    pub woken_by: Option<(u64, u64)>,
    /// Follower: it slept under a leader on this (store, support epoch)
    /// and has not heard that leader since (even if something else woke
    /// it): it acknowledged nothing of the leader since, so when support
    /// for that store is withdrawn under that epoch it may run its
    /// election clock out at once.
    pub quiet_under: Option<(u64, u64)>,
    /// A fresh peer (never heard a leader): ticks its first election waits
    /// at most for its store to hear every store of the region.
    pub fresh_hold: Option<u32>,
    /// A fresh peer designated to campaign first in its region's first
    /// election.
    pub campaigns_first: bool,
    /// Follower: [`Hibernation::withdrawal_count`] when it last looked at
    /// its silent leader's store.
    pub seen_withdrawals: u64,
    /// Follower: the latest vote request of a peer of the region that it
    /// ignored as within the lease while its store still supported the
    /// leader's; answered when this store loses the leader's store.
    /// Dropped when the leader is heard.
    pub asked: Option<Box<Message>>,
    /// Follower: half its election timeout passed without a word from its
    /// leader while the leader's store is supported, and it asked the
    /// leader to wake (it may hibernate, having missed this follower's
    /// sleep). Cleared when the leader is heard.
    pub nudged: bool,
    /// The leader skipped its last raft tick to hibernate and did not
    /// (something pending came up): the next tick runs whatever the plan
    /// says, so two skipped ticks never come in a row without a sleep.
    pub skipped_tick: bool,
    /// Follower: asked to sleep by its leader while the entries up to the
    /// leader's commit (its own commit and last index then) were still on
    /// their way to the apply side: the support epoch this store gave the
    /// leader's store then. It sleeps when they apply if nothing changed:
    /// no raft message came (that ends the deferral), the leader, its
    /// term, commit and last index are the same, and its store is still
    /// supported under that epoch (not lost, not restarted). Otherwise it
    /// only drops the deferral: its clock runs on, and a leader still
    /// asleep is nudged like one whose sleep request was missed.
    pub deferred: Option<NonZeroU64>,
    /// Beats to send at the end of this round.
    pub outbox: Vec<OutBeat>,
}

/// What hearing a batch did ([`Hibernation::heard`]).
#[derive(Debug)]
pub struct HeardBatch {
    /// What it changed in the support table.
    pub heard: Heard,
    /// Support for the sender was withdrawn first (lapsed or restarted).
    pub withdrew: bool,
    /// Regions woken, with their messages.
    pub woken: Vec<(u64, SleepMsg)>,
    /// Regions left asleep, with a message each (leaders asleep here with
    /// a follower on a restarted sender: [`SleepMsg::FollowerStoreRestarted`]).
    pub notes: Vec<(u64, SleepMsg)>,
}

/// Where a sleeping region is filed.
#[derive(Debug)]
struct Sleeper {
    /// The store of the leader it sleeps under (this store for a leader).
    leader_store: u64,
    /// Leader only: follower stores it slept without (a boxed slice: one
    /// is filed for every sleeping peer, and a `Vec` would make each entry
    /// 8 bytes larger).
    lagging: Box<[u64]>,
    /// Follower only: its region's first campaigner should the leader's
    /// store die (its wake is delivered before the others').
    first: bool,
}

#[derive(Debug)]
struct Inner {
    support: SupportTable,
    /// The peers that tick. Invariant: a region is in exactly one of
    /// `awake` and `asleep`.
    awake: FxHashSet<u64>,
    asleep: FxHashMap<u64, Sleeper>,
    asleep_by_leader_store: FxHashMap<u64, FxHashSet<u64>>,
    lagging_by_store: FxHashMap<u64, FxHashSet<u64>>,
    /// When a batch last went to each remote store.
    last_sent: FxHashMap<u64, Instant>,
}

impl Inner {
    /// Moves `region` to the awake set. Returns its filing, if it slept.
    fn take_asleep(&mut self, region: u64) -> Option<Sleeper> {
        let s = self.asleep.remove(&region)?;
        unfile(&mut self.asleep_by_leader_store, s.leader_store, region);
        for &store in &s.lagging {
            unfile(&mut self.lagging_by_store, store, region);
        }
        self.awake.insert(region);
        Some(s)
    }

    /// Wakes every region filed under `store` in `index`, adding a message
    /// made by `msg` for each to `out`: the regions' first campaigners
    /// first, so at a store's death every region's election starts before
    /// the wakes of the peers that only vote are delivered.
    fn wake_filed(
        &mut self,
        store: u64,
        by_leader: bool,
        msg: &SleepMsg,
        out: &mut Vec<(u64, SleepMsg)>,
    ) {
        let index = if by_leader {
            &mut self.asleep_by_leader_store
        } else {
            &mut self.lagging_by_store
        };
        let Some(regions) = index.remove(&store) else {
            return;
        };
        let mut later = Vec::with_capacity(regions.len());
        for region in regions {
            match self.take_asleep(region) {
                Some(s) if s.first => out.push((region, msg.clone())),
                _ => later.push(region),
            }
        }
        out.extend(later.into_iter().map(|r| (r, msg.clone())));
    }
}

fn unfile(index: &mut FxHashMap<u64, FxHashSet<u64>>, store: u64, region: u64) {
    if let Some(set) = index.get_mut(&store) {
        set.remove(&region);
        if set.is_empty() {
            index.remove(&store);
        }
    }
}

/// The store's registry of awake and sleeping peers, with its store
/// liveness.
#[derive(Debug)]
pub struct Hibernation {
    store_id: u64,
    /// This store's liveness epoch (its current life).
    epoch: u64,
    /// Support withdrawals so far, any store: a follower whose leader has
    /// been silent looks at store liveness again only when this moved.
    withdrawals: AtomicU64,
    /// When the registry was made.
    born: Instant,
    /// When the store FSM last handled a tick, in ms after `born`.
    last_store_tick_ms: AtomicU64,
    /// Store ticks so far: the time the peers' clocks run on (see
    /// `peer::clock`).
    ticks: AtomicU64,
    inner: Mutex<Inner>,
}

impl Hibernation {
    /// The registry of store `store_id` in its life `epoch`: every region
    /// of `regions` awake; support for each of `remotes` starts when it is
    /// first heard and is withdrawn after `support` of silence.
    pub fn new(
        store_id: u64,
        epoch: u64,
        regions: impl IntoIterator<Item = u64>,
        remotes: impl IntoIterator<Item = u64>,
        support: Duration,
    ) -> Hibernation {
        Hibernation {
            store_id,
            epoch,
            withdrawals: AtomicU64::new(0),
            born: Instant::now(),
            last_store_tick_ms: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                support: SupportTable::new(support, remotes.into_iter().filter(|&s| s != store_id)),
                awake: regions.into_iter().collect(),
                asleep: FxHashMap::default(),
                asleep_by_leader_store: FxHashMap::default(),
                lagging_by_store: FxHashMap::default(),
                last_sent: FxHashMap::default(),
            }),
        }
    }

    /// This store's liveness epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Support withdrawals so far, from any store.
    pub fn withdrawal_count(&self) -> u64 {
        self.withdrawals.load(Ordering::Acquire)
    }

    /// Where this store's support for `store` stands at `now` (this store
    /// itself is always supported).
    pub fn support_status(&self, store: u64, now: Instant) -> SupportStatus {
        if store == self.store_id {
            return SupportStatus::Supported(self.epoch);
        }
        self.inner.lock().support.status(store, now)
    }

    /// Records that the store FSM handled a tick at `now` (its pollers
    /// make progress); returns the store tick's number (the first is 1).
    pub fn note_store_tick(&self, now: Instant) -> u64 {
        let ms =
            u64::try_from(now.saturating_duration_since(self.born).as_millis()).unwrap_or(u64::MAX);
        self.last_store_tick_ms.store(ms, Ordering::Release);
        self.ticks.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Store ticks so far (the peers' clocks catch up to it).
    pub fn store_ticks(&self) -> u64 {
        self.ticks.load(Ordering::Acquire)
    }

    /// Whether the store FSM handled a tick within `max_age` before `now`
    /// (or the store is younger than that). The store clock sends liveness
    /// beats only then: a store whose pollers are wedged must lose its
    /// support, so the regions asleep under its leaders wake.
    pub fn store_ticked_within(&self, now: Instant, max_age: Duration) -> bool {
        let last =
            self.born + Duration::from_millis(self.last_store_tick_ms.load(Ordering::Acquire));
        now.saturating_duration_since(last) < max_age
    }

    /// Replaces `out` with the awake regions (the ones to tick).
    pub fn awake_regions(&self, out: &mut Vec<u64>) {
        out.clear();
        out.extend(self.inner.lock().awake.iter().copied());
    }

    /// (awake, asleep) region counts.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.awake.len(), inner.asleep.len())
    }

    /// Whether `region` is registered asleep.
    pub fn is_asleep(&self, region: u64) -> bool {
        self.inner.lock().asleep.contains_key(&region)
    }

    /// The regions asleep under a leader on `store`, sorted.
    pub fn asleep_under(&self, store: u64) -> Vec<u64> {
        let inner = self.inner.lock();
        let mut v: Vec<u64> = inner
            .asleep_by_leader_store
            .get(&store)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Heartbeats every one of `stores` from now on (a region gained peers
    /// there). A store that hosts no region yet heartbeats no one; until
    /// this store beats it first, neither hears the other, and a region
    /// asleep with a new peer on it lagging would never wake to create
    /// that peer (found by the chaos suite, seed 3).
    pub fn add_remotes(&self, stores: impl IntoIterator<Item = u64>) {
        let mut inner = self.inner.lock();
        for store in stores {
            if store != self.store_id {
                inner.support.add_remote(store);
            }
        }
    }

    /// The support epoch under which this store supports `store` now.
    pub fn supports(&self, store: u64, now: Instant) -> Option<u64> {
        if store == self.store_id {
            return Some(self.epoch);
        }
        self.inner.lock().support.supports(store, now)
    }

    /// Whether this store supports every one of `stores` at `now` (itself
    /// included), under one lock.
    pub fn supports_all(&self, stores: impl IntoIterator<Item = u64>, now: Instant) -> bool {
        let inner = self.inner.lock();
        stores
            .into_iter()
            .all(|s| s == self.store_id || inner.support.supports(s, now).is_some())
    }

    /// Files the follower of `region` asleep under a leader on
    /// `leader_store`, if this store supports that store now under a
    /// support epoch greater than `not_before` (a region woken by a
    /// withdrawal may sleep under that store again only once support is
    /// given anew). `first`: the follower is its region's first
    /// campaigner should that store die. Returns the support epoch it
    /// sleeps under, if it did.
    pub fn sleep_follower(
        &self,
        region: u64,
        leader_store: u64,
        not_before: Option<u64>,
        first: bool,
        now: Instant,
    ) -> Option<u64> {
        let mut inner = self.inner.lock();
        let epoch = inner.support.supports(leader_store, now)?;
        if not_before.is_some_and(|e| epoch <= e) || !inner.awake.remove(&region) {
            return None;
        }
        inner.asleep.insert(
            region,
            Sleeper {
                leader_store,
                lagging: Box::default(),
                first,
            },
        );
        inner
            .asleep_by_leader_store
            .entry(leader_store)
            .or_default()
            .insert(region);
        Some(epoch)
    }

    /// Files the leader of `region` asleep, without its followers on the
    /// `lagging` stores, if none of those is supported now (one that is
    /// would never wake it). Returns whether it did.
    pub fn sleep_leader(&self, region: u64, lagging: &[u64], now: Instant) -> bool {
        let mut inner = self.inner.lock();
        if lagging
            .iter()
            .any(|&s| inner.support.supports(s, now).is_some())
            || !inner.awake.remove(&region)
        {
            return false;
        }
        for &store in lagging {
            inner
                .lagging_by_store
                .entry(store)
                .or_default()
                .insert(region);
        }
        inner.asleep.insert(
            region,
            Sleeper {
                leader_store: self.store_id,
                lagging: Box::from(lagging),
                first: false,
            },
        );
        let own = self.store_id;
        inner
            .asleep_by_leader_store
            .entry(own)
            .or_default()
            .insert(region);
        true
    }

    /// Registers a peer created while the store runs (from a message):
    /// awake, ticking.
    pub fn add_region(&self, region: u64) {
        let mut inner = self.inner.lock();
        inner.take_asleep(region);
        inner.awake.insert(region);
    }

    /// Forgets a destroyed peer's region.
    pub fn remove_region(&self, region: u64) {
        let mut inner = self.inner.lock();
        inner.take_asleep(region);
        inner.awake.remove(&region);
    }

    /// Moves `region` back to the awake set. Returns whether it was asleep.
    pub fn wake(&self, region: u64) -> bool {
        self.inner.lock().take_asleep(region).is_some()
    }

    /// The (withdrawals, echo) stamp for a batch to `store` (see
    /// `liveness`); records that a batch goes to `store` now.
    pub fn stamp(&self, store: u64) -> (u64, u64) {
        let mut inner = self.inner.lock();
        inner.last_sent.insert(store, Instant::now());
        inner.support.stamp(store)
    }

    /// The remote stores no batch went to within `interval` before `now`,
    /// with their stamps: each gets a bare liveness beat (recorded as sent
    /// now).
    pub fn liveness_due(&self, now: Instant, interval: Duration) -> Vec<(u64, (u64, u64))> {
        let mut inner = self.inner.lock();
        let Inner {
            support, last_sent, ..
        } = &mut *inner;
        let mut due = Vec::new();
        for store in support.remotes() {
            let sent_lately = last_sent
                .get(&store)
                .is_some_and(|t| now.saturating_duration_since(*t) < interval);
            if !sent_lately {
                last_sent.insert(store, now);
                due.push((store, support.stamp(store)));
            }
        }
        due
    }

    /// Records a heartbeat batch from `store` in its life `epoch`, stamped
    /// (`withdrawals`, `echo`). Returns what it changed, whether support
    /// for `store` was withdrawn (it had lapsed, or the store restarted),
    /// and the regions woken (already moved to the awake set) with the
    /// message each must get.
    pub fn heard(
        &self,
        store: u64,
        epoch: u64,
        (withdrawals, echo): (u64, u64),
        now: Instant,
    ) -> HeardBatch {
        let mut out = Vec::new();
        let mut inner = self.inner.lock();
        let mut withdrew = false;
        if let Some(lost) = inner.support.expire_one(store, now) {
            // Lapsed before the next tick noticed: withdraw it now, before
            // this batch counts.
            withdrew = true;
            self.withdrawals.fetch_add(1, Ordering::AcqRel);
            let msg = SleepMsg::LeaderStoreDown { store, epoch: lost };
            inner.wake_filed(store, true, &msg, &mut out);
        }
        let lost = inner.support.support_epoch(store);
        let heard = inner.support.heard(store, epoch, withdrawals, echo, now);
        if heard == Heard::Restarted {
            // Its leaders of the old life are gone.
            withdrew = true;
            self.withdrawals.fetch_add(1, Ordering::AcqRel);
            let msg = SleepMsg::LeaderStoreDown { store, epoch: lost };
            inner.wake_filed(store, true, &msg, &mut out);
        }
        if matches!(heard, Heard::Started | Heard::Restarted) {
            let msg = SleepMsg::LaggingStoreBack { store };
            inner.wake_filed(store, false, &msg, &mut out);
        }
        // The leaders still asleep here: the ones with a follower on the
        // restarted store send it their hibernate beat again (the others
        // ignore the note). One note per sleeping leader (about 33,000 a
        // store at 100,000 regions on 3 stores, delivered in the store
        // FSM's wake rounds); a restart is rare.
        let notes = if heard == Heard::Restarted {
            let msg = SleepMsg::FollowerStoreRestarted { store };
            inner
                .asleep_by_leader_store
                .get(&self.store_id)
                .map(|leaders| leaders.iter().map(|&r| (r, msg.clone())).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        HeardBatch {
            heard,
            withdrew,
            woken: out,
            notes,
        }
    }

    /// After a withdrawal woke `woken`: a [`SleepMsg::SupportWithdrawn`]
    /// note for every other awake peer (awake before it), to follow the
    /// wakes, so a follower of a leader on the withdrawn store looks at
    /// once rather than at its next due tick.
    pub fn withdrawal_notes(&self, woken: &[(u64, SleepMsg)]) -> Vec<(u64, SleepMsg)> {
        let woken: FxHashSet<u64> = woken.iter().map(|(r, _)| *r).collect();
        let inner = self.inner.lock();
        inner
            .awake
            .iter()
            .filter(|r| !woken.contains(r))
            .map(|&r| (r, SleepMsg::SupportWithdrawn))
            .collect()
    }

    /// Withdraws support from the stores silent for the support duration,
    /// and wakes exactly the regions asleep under a leader on one of them.
    /// Returns the withdrawn stores and the woken regions (already moved to
    /// the awake set) with their messages.
    pub fn expire(&self, now: Instant) -> (Vec<u64>, Vec<(u64, SleepMsg)>) {
        let mut out = Vec::new();
        let mut inner = self.inner.lock();
        let withdrawn = inner.support.expire(now);
        self.withdrawals
            .fetch_add(withdrawn.len() as u64, Ordering::AcqRel);
        for &(store, epoch) in &withdrawn {
            let msg = SleepMsg::LeaderStoreDown { store, epoch };
            inner.wake_filed(store, true, &msg, &mut out);
        }
        (withdrawn.into_iter().map(|(s, _)| s).collect(), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `Sleeper` is filed for every sleeping peer of the store.
    #[test]
    fn a_sleeper_stays_small() {
        assert!(std::mem::size_of::<Sleeper>() <= 32);
    }

    const D: Duration = Duration::from_secs(1);
    /// The stamp of a batch from a store that never saw a withdrawal.
    const FRESH: (u64, u64) = (0, 0);

    /// A follower sleeps only under a supported leader store; withdrawal
    /// wakes exactly the regions asleep under the withdrawn store, and they
    /// may not sleep under it again until support starts anew (from a
    /// batch that echoes the withdrawal).
    #[test]
    fn withdrawal_wakes_exactly_the_regions_under_the_store() {
        let t0 = Instant::now();
        let h = Hibernation::new(1, 1, 1..=4, [2, 3], D);
        assert!(
            h.sleep_follower(1, 2, None, false, t0).is_none(),
            "store 2 never heard"
        );
        assert_eq!(h.heard(2, 1, FRESH, t0).heard, Heard::Started);
        assert_eq!(h.heard(3, 1, FRESH, t0).heard, Heard::Started);
        let e2 = h.sleep_follower(1, 2, None, false, t0).unwrap();
        assert!(h.sleep_follower(2, 2, None, false, t0).is_some());
        assert!(h.sleep_follower(3, 3, None, false, t0).is_some());
        assert!(h.sleep_leader(4, &[], t0));
        assert_eq!(h.counts(), (0, 4));
        // Store 3 keeps beating, store 2 goes silent.
        let later = t0 + D + D / 4;
        h.heard(3, 1, FRESH, t0 + D / 2);
        let (withdrawn, woken) = h.expire(later);
        assert_eq!(withdrawn, vec![2]);
        let mut regions: Vec<u64> = woken.iter().map(|(r, _)| *r).collect();
        regions.sort_unstable();
        assert_eq!(regions, vec![1, 2], "only the regions led from store 2");
        assert!(
            woken.iter().all(|(_, m)| *m
                == SleepMsg::LeaderStoreDown {
                    store: 2,
                    epoch: e2
                }),
            "{woken:?}"
        );
        assert_eq!(h.counts(), (2, 2));
        // A late batch of store 2 (sent before it heard of the withdrawal)
        // revives nothing.
        assert_eq!(h.heard(2, 1, FRESH, later).heard, Heard::Unproven);
        assert!(h.sleep_follower(1, 2, Some(e2), false, later).is_none());
        // Store 2 echoes the withdrawal: support under a newer epoch.
        let (withdrawals, _) = h.stamp(2);
        assert_eq!(h.heard(2, 1, (0, withdrawals), later).heard, Heard::Started);
        assert!(h.sleep_follower(1, 2, Some(e2), false, later).unwrap() > e2);
    }

    /// At a withdrawal the wakes of the regions' first campaigners come
    /// before the others', whatever order the regions slept in.
    #[test]
    fn first_campaigners_wake_first() {
        let t0 = Instant::now();
        let h = Hibernation::new(1, 1, 1..=64, [2], D);
        h.heard(2, 1, FRESH, t0);
        for region in 1..=64 {
            let first = region % 3 == 0;
            assert!(h.sleep_follower(region, 2, None, first, t0).is_some());
        }
        let (_, woken) = h.expire(t0 + 2 * D);
        assert_eq!(woken.len(), 64);
        let firsts = woken.iter().take_while(|(r, _)| r % 3 == 0).count();
        assert_eq!(firsts, 21, "{woken:?}");
    }

    /// A leader sleeps without a follower store only while that store is
    /// unsupported, and wakes when it is heard again; a restart of a
    /// leader store wakes the regions asleep under it; support that lapsed
    /// is withdrawn by the next batch if no tick did it first.
    #[test]
    fn lagging_stores_restarts_and_lapses() {
        let t0 = Instant::now();
        let h = Hibernation::new(1, 1, 1..=3, [2, 3], D);
        h.heard(2, 7, FRESH, t0);
        assert!(!h.sleep_leader(1, &[2], t0), "store 2 is supported");
        assert!(h.sleep_leader(1, &[3], t0));
        let e2 = h.sleep_follower(2, 2, None, false, t0).unwrap();
        let heard = h.heard(3, 1, FRESH, t0);
        assert_eq!(heard.heard, Heard::Started);
        assert_eq!(
            heard.woken,
            vec![(1, SleepMsg::LaggingStoreBack { store: 3 })]
        );
        let heard = h.heard(2, 8, FRESH, t0);
        assert_eq!(heard.heard, Heard::Restarted);
        assert!(heard.withdrew);
        assert_eq!(
            heard.woken,
            vec![(
                2,
                SleepMsg::LeaderStoreDown {
                    store: 2,
                    epoch: e2
                }
            )]
        );
        assert_eq!(h.counts(), (3, 0));
        assert!(!h.wake(2), "already awake");
        // Store 2 lapses with no tick in between: the next batch withdraws
        // first (waking the region asleep under it), and does not count.
        let e = h.sleep_follower(2, 2, None, false, t0).unwrap();
        let heard = h.heard(2, 8, FRESH, t0 + 2 * D);
        assert!(heard.withdrew);
        assert_eq!(heard.heard, Heard::Unproven);
        assert_eq!(
            heard.woken,
            vec![(2, SleepMsg::LeaderStoreDown { store: 2, epoch: e })]
        );
    }

    /// A restart of a store tells every leader still asleep here (not
    /// woken by the restart) to send its beat there again, without waking
    /// it; first contact with a store does not (no peer there can have
    /// lost its leader to a restart this store saw).
    #[test]
    fn a_follower_store_restart_notes_the_sleeping_leaders() {
        let t0 = Instant::now();
        let h = Hibernation::new(1, 1, 1..=3, [2, 3], D);
        assert!(h.heard(2, 7, FRESH, t0).notes.is_empty());
        h.heard(3, 1, FRESH, t0);
        assert!(h.sleep_leader(1, &[], t0));
        assert!(h.sleep_leader(3, &[], t0));
        // Region 2 sleeps under a leader on store 2.
        h.sleep_follower(2, 2, None, false, t0).unwrap();
        let heard = h.heard(3, 2, FRESH, t0);
        assert_eq!(heard.heard, Heard::Restarted);
        assert!(heard.woken.is_empty(), "no region sleeps under store 3");
        let mut notes = heard.notes;
        notes.sort_by_key(|(r, _)| *r);
        let note = SleepMsg::FollowerStoreRestarted { store: 3 };
        assert_eq!(notes, vec![(1, note.clone()), (3, note)]);
        assert_eq!(h.counts(), (0, 3), "nobody woke");
        assert!(h.heard(3, 2, FRESH, t0).notes.is_empty(), "said once");
    }

    /// A bare liveness beat goes to a remote store only when no batch went
    /// there within the interval; the store clock sends beats only while
    /// the store FSM keeps ticking.
    #[test]
    fn liveness_beats_fill_gaps_and_stop_with_the_pollers() {
        let interval = Duration::from_millis(200);
        let h = Hibernation::new(1, 3, 1..=2, [1, 2, 3], D);
        let due = |h: &Hibernation| {
            let mut v: Vec<u64> = h
                .liveness_due(Instant::now(), interval)
                .iter()
                .map(|(s, _)| *s)
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(due(&h), vec![2, 3], "every remote store, never itself");
        assert!(due(&h).is_empty(), "just sent");
        std::thread::sleep(interval + interval / 2);
        // A batch of beats goes to store 2 (stamped): only 3 is due.
        h.stamp(2);
        assert_eq!(due(&h), vec![3]);
        // Pollers: beats while ticks are handled, none after D of none.
        let now = Instant::now();
        h.note_store_tick(now);
        assert!(h.store_ticked_within(now, D));
        assert!(!h.store_ticked_within(now + D, D));
    }
}
