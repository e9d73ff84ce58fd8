//! Store liveness (DESIGN §5): failure detection belongs to the store, not
//! the region.
//!
//! Lifecycle: every store bumps and persists its liveness *epoch* when it
//! starts, and stamps it on every coalesced heartbeat batch it sends. Each
//! heartbeat interval it sends a beats batch to every remote store that
//! shares a region with it, empty if no region beats, so the pair hears
//! each other even when every region sleeps. A [`SupportTable`] records,
//! per remote store, when it was last heard and in which epoch:
//! - the first batch starts *support* for the store, under a new support
//!   epoch ([`Heard::Started`]);
//! - a batch from a newer epoch means the store restarted: support of its
//!   old life is withdrawn and a new one starts ([`Heard::Restarted`]);
//! - a batch from an older epoch is a late message of a past life and is
//!   dropped whole ([`Heard::Stale`]);
//! - support not renewed within the support duration is withdrawn
//!   ([`SupportTable::expire`], or on the next batch if that comes first).
//!   After a withdrawal, support starts again only from a batch that
//!   *echoes* it: every batch carries how many times its sender withdrew
//!   support from the receiver, and the latest such count the sender heard
//!   from the receiver. A batch whose echo predates the withdrawal was sent
//!   before the sender could know of it (a late message, perhaps from a
//!   store now dead) and is dropped ([`Heard::Unproven`]); one that echoes
//!   it proves the sender lived after the withdrawal.
//!
//! Withdrawals drive waking: the hibernating regions whose leader lives on
//! the withdrawn store wake and elect a new leader (`hibernation`).

use std::time::{Duration, Instant};

use flotilla_engine::{Cf, Durability, Engine, keys};
use flotilla_proto::raft_serverpb::StoreLivenessState;
use fxhash::FxHashMap;

use super::error::Result;

/// What a store knows of one remote store.
#[derive(Debug, Clone, Copy, Default)]
struct Remote {
    /// The newest liveness epoch the remote announced (its current life).
    epoch: u64,
    /// When a batch of that life last arrived; `None` before the first.
    last_heard: Option<Instant>,
    /// Our support sequence for it: bumped each time support starts, so a
    /// region can tell support given again after a withdrawal from the
    /// support it lost.
    support_epoch: u64,
    /// Support is given (heard within the support duration, not withdrawn).
    supported: bool,
    /// Times this store withdrew its support from the remote (sent to it).
    withdrawals: u64,
    /// The latest withdrawal count the remote announced (echoed to it).
    their_withdrawals: u64,
}

/// What hearing from a remote store changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A batch of an older life of the store: drop what it carries.
    Stale,
    /// A batch that does not echo this store's last withdrawal of support
    /// for its sender: it may have been sent before the sender died. Drop
    /// what it carries; support stays withdrawn.
    Unproven,
    /// Support goes on.
    Continued,
    /// Support starts (first contact, or back after a withdrawal).
    Started,
    /// The store restarted: support of its old life is withdrawn (as by
    /// [`SupportTable::expire`]) and support of the new one starts.
    Restarted,
}

/// Where this store's support for a remote store stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupportStatus {
    /// Never heard in this store's life.
    Unknown,
    /// Supported under this support epoch.
    Supported(u64),
    /// Heard once, but support under this epoch lapsed or was withdrawn.
    Lost(u64),
}

/// Per remote store: whether this store supports it (hears it).
#[derive(Debug)]
pub struct SupportTable {
    remotes: FxHashMap<u64, Remote>,
    duration: Duration,
}

impl SupportTable {
    /// A table withdrawing support after `duration` of silence, listening
    /// to `remotes`.
    pub fn new(duration: Duration, remotes: impl IntoIterator<Item = u64>) -> SupportTable {
        SupportTable {
            remotes: remotes
                .into_iter()
                .map(|s| (s, Remote::default()))
                .collect(),
            duration,
        }
    }

    /// Starts heartbeating `store` (a region gained a peer there) if this
    /// store does not yet; support starts only when it is heard.
    pub fn add_remote(&mut self, store: u64) {
        self.remotes.entry(store).or_default();
    }

    /// The remote stores this store heartbeats, in no particular order.
    pub fn remotes(&self) -> impl Iterator<Item = u64> + '_ {
        self.remotes.keys().copied()
    }

    /// The latest support epoch of `store` (given or withdrawn; 0 before
    /// first contact).
    pub fn support_epoch(&self, store: u64) -> u64 {
        self.remotes.get(&store).map_or(0, |r| r.support_epoch)
    }

    /// The (withdrawals, echo) to stamp on a batch for `store`.
    pub fn stamp(&self, store: u64) -> (u64, u64) {
        self.remotes
            .get(&store)
            .map_or((0, 0), |r| (r.withdrawals, r.their_withdrawals))
    }

    /// Withdraws support from `store` if it lapsed by `now` (not heard
    /// within the support duration) but was not withdrawn yet. Returns
    /// the support epoch it lost.
    pub fn expire_one(&mut self, store: u64, now: Instant) -> Option<u64> {
        let d = self.duration;
        let r = self.remotes.get_mut(&store)?;
        (r.supported && !heard_within(r.last_heard, now, d)).then(|| withdraw(r))
    }

    /// Records a batch from `store` in its life `epoch`, stamped with
    /// `withdrawals` (times it withdrew support from us) and `echo` (our
    /// withdrawals it heard of), at `now`. Support that lapsed must be
    /// withdrawn first ([`SupportTable::expire_one`]).
    pub fn heard(
        &mut self,
        store: u64,
        epoch: u64,
        withdrawals: u64,
        echo: u64,
        now: Instant,
    ) -> Heard {
        let r = self.remotes.entry(store).or_default();
        if epoch < r.epoch {
            return Heard::Stale;
        }
        let restarted = epoch > r.epoch && r.last_heard.is_some();
        // Learnt even from a batch dropped below: echoing it proves only
        // that this store lived after the sender's withdrawal, and without
        // it two stores that withdrew from each other would drop each
        // other's batches for good.
        r.their_withdrawals = r.their_withdrawals.max(withdrawals);
        if !restarted && !r.supported && echo < r.withdrawals {
            return Heard::Unproven;
        }
        r.epoch = epoch;
        // Deliveries on several threads may record out of order.
        r.last_heard = Some(r.last_heard.map_or(now, |t| t.max(now)));
        if restarted {
            r.support_epoch += 1;
            r.supported = true;
            Heard::Restarted
        } else if r.supported {
            Heard::Continued
        } else {
            r.support_epoch += 1;
            r.supported = true;
            Heard::Started
        }
    }

    /// Withdraws support from every store not heard within the support
    /// duration before `now`; returns them with the support epoch they
    /// lost.
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, u64)> {
        let mut withdrawn = Vec::new();
        for (&store, r) in &mut self.remotes {
            if r.supported && !heard_within(r.last_heard, now, self.duration) {
                withdrawn.push((store, withdraw(r)));
            }
        }
        withdrawn
    }

    /// Where support for `store` stands at `now`.
    pub fn status(&self, store: u64, now: Instant) -> SupportStatus {
        let Some(r) = self.remotes.get(&store) else {
            return SupportStatus::Unknown;
        };
        if r.last_heard.is_none() {
            SupportStatus::Unknown
        } else if r.supported && heard_within(r.last_heard, now, self.duration) {
            SupportStatus::Supported(r.support_epoch)
        } else {
            SupportStatus::Lost(r.support_epoch)
        }
    }

    /// The support epoch under which `store` is supported at `now`, if it
    /// is (heard within the support duration and not withdrawn).
    pub fn supports(&self, store: u64, now: Instant) -> Option<u64> {
        let r = self.remotes.get(&store)?;
        (r.supported && heard_within(r.last_heard, now, self.duration)).then_some(r.support_epoch)
    }
}

/// Withdraws support from `r`; returns the support epoch it lost.
fn withdraw(r: &mut Remote) -> u64 {
    r.supported = false;
    r.withdrawals += 1;
    r.support_epoch
}

fn heard_within(last: Option<Instant>, now: Instant, d: Duration) -> bool {
    last.is_some_and(|t| now.saturating_duration_since(t) < d)
}

/// Bumps the store's liveness epoch and syncs it, before the store sends
/// anything: every life of a store has a greater epoch than the last one,
/// so its peers can tell a restart from a late message. Returns the new
/// epoch.
///
/// # Errors
/// Engine failures, or a corrupt stored state.
pub fn bump_epoch(engine: &Engine) -> Result<u64> {
    let old: StoreLivenessState = engine
        .get_msg(Cf::Raft, keys::STORE_LIVENESS_KEY)?
        .unwrap_or_default();
    let state = StoreLivenessState {
        epoch: old.epoch.saturating_add(1),
    };
    let mut wb = engine.write_batch();
    wb.put_msg(Cf::Raft, keys::STORE_LIVENESS_KEY, &state);
    engine.write(wb, Durability::Sync)?;
    Ok(state.epoch)
}

#[cfg(test)]
mod tests {
    use flotilla_engine::EngineOptions;

    use super::*;

    const D: Duration = Duration::from_secs(1);

    /// Support starts on first contact, goes on while beats come within the
    /// duration, is withdrawn once after silence, and starts again under a
    /// new support epoch.
    #[test]
    fn support_starts_expires_and_starts_again() {
        let t0 = Instant::now();
        let mut t = SupportTable::new(D, [2, 3]);
        assert_eq!(t.supports(2, t0), None, "no support before contact");
        assert_eq!(t.heard(2, 1, 0, 0, t0), Heard::Started);
        let e1 = t.supports(2, t0).unwrap();
        assert_eq!(t.heard(2, 1, 0, 0, t0 + D / 2), Heard::Continued);
        assert!(t.expire(t0 + D).is_empty(), "heard D/2 ago");
        assert_eq!(t.supports(2, t0 + D), Some(e1));
        let late = t0 + D / 2 + D;
        assert_eq!(t.supports(2, late), None, "expired even before expire()");
        assert_eq!(t.expire(late), vec![(2, e1)]);
        assert!(t.expire(late).is_empty(), "withdrawn once");
        assert_eq!(t.stamp(2), (1, 0), "our batches to 2 announce it");
        // A batch store 2 sent before it heard of the withdrawal (it may
        // have died since): dropped, support stays withdrawn.
        assert_eq!(t.heard(2, 1, 0, 0, late), Heard::Unproven);
        assert_eq!(t.supports(2, late), None);
        // One that echoes it: store 2 lived after the withdrawal.
        assert_eq!(t.heard(2, 1, 0, 1, late), Heard::Started);
        let e2 = t.supports(2, late).unwrap();
        assert!(e2 > e1, "support after a withdrawal has a new epoch");
        assert_eq!(t.supports(3, late), None, "store 3 never heard");
    }

    /// Support that lapsed is withdrawn by the next batch if no tick
    /// withdrew it first; that batch must then echo the withdrawal.
    #[test]
    fn lapsed_support_is_withdrawn_before_a_late_batch_counts() {
        let t0 = Instant::now();
        let mut t = SupportTable::new(D, [2]);
        t.heard(2, 1, 0, 0, t0);
        let e1 = t.supports(2, t0).unwrap();
        assert_eq!(t.expire_one(2, t0 + D / 2), None, "not lapsed");
        let late = t0 + 2 * D;
        assert_eq!(t.expire_one(2, late), Some(e1));
        assert_eq!(t.expire_one(2, late), None, "withdrawn once");
        assert_eq!(t.heard(2, 1, 0, 0, late), Heard::Unproven);
        assert_eq!(t.heard(2, 1, 4, 1, late), Heard::Started);
        assert_eq!(t.stamp(2), (1, 4), "we echo what store 2 announced");
    }

    /// Two stores that withdrew support from each other (a partition
    /// longer than the support duration) take it up again within two
    /// exchanges, each learning the other's withdrawal from a batch it
    /// still drops.
    #[test]
    fn mutual_withdrawal_heals() {
        let t0 = Instant::now();
        let (mut a, mut b) = (SupportTable::new(D, [2]), SupportTable::new(D, [1]));
        a.heard(2, 1, 0, 0, t0);
        b.heard(1, 1, 0, 0, t0);
        let late = t0 + 2 * D;
        assert_eq!(a.expire(late).len(), 1);
        assert_eq!(b.expire(late).len(), 1);
        // Both send the stamps they have; both drop what comes.
        let (sa, sb) = (a.stamp(2), b.stamp(1));
        assert_eq!(b.heard(1, 1, sa.0, sa.1, late), Heard::Unproven);
        assert_eq!(a.heard(2, 1, sb.0, sb.1, late), Heard::Unproven);
        // Now each echoes the other's withdrawal.
        let (sa, sb) = (a.stamp(2), b.stamp(1));
        assert_eq!(b.heard(1, 1, sa.0, sa.1, late), Heard::Started);
        assert_eq!(a.heard(2, 1, sb.0, sb.1, late), Heard::Started);
        assert!(matches!(a.status(2, late), SupportStatus::Supported(_)));
        assert_eq!(
            SupportTable::new(D, [3]).status(3, late),
            SupportStatus::Unknown
        );
    }

    /// A newer epoch is a restart (support of the old life withdrawn); an
    /// older one is a late message of a past life.
    #[test]
    fn restarts_and_stale_lives() {
        let t0 = Instant::now();
        let mut t = SupportTable::new(D, [2]);
        assert_eq!(t.heard(2, 5, 0, 0, t0), Heard::Started);
        let e1 = t.supports(2, t0).unwrap();
        assert_eq!(t.heard(2, 6, 0, 0, t0), Heard::Restarted);
        assert!(t.supports(2, t0).unwrap() > e1);
        assert_eq!(t.heard(2, 5, 0, 0, t0), Heard::Stale);
        assert_eq!(t.heard(2, 6, 0, 0, t0), Heard::Continued);
    }

    /// Every start of a store gets a greater epoch, across reopenings of
    /// its engine.
    #[test]
    fn epoch_grows_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        for _ in 0..3 {
            let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
            let e = bump_epoch(&engine).unwrap();
            assert!(e > last);
            last = e;
        }
    }
}
