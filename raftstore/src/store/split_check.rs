//! The split checker (issue #12 item 2; TiKV's split-check worker with its
//! half-split policy): an awake leader that took enough writes since its
//! last check asks the store's background worker to measure its region;
//! a region past `region_split_size` bytes or `region_split_keys` keys is
//! split at its middle key (by size), proposed as an ordinary BatchSplit
//! through the region's mailbox, so the leader's checks, the id
//! allocation and the epoch check all apply (a region that changed since
//! the measurement refuses it).
//!
//! Lifecycle: `Peer::tick_split_check` (leader ticks) → `SplitCheckTask`
//! taken by the poller → `SnapTask::SplitCheck` on the worker →
//! [`check_region`] (two scans of one engine snapshot: total, then the
//! middle) → a `RaftCommand` to the region.

use std::ops::ControlFlow;

use flotilla_engine::{Cf, Engine, keys};
use flotilla_proto::metapb::Region;

use crate::store::error::Result;

/// TiKV's `region-split-size`: a region past it is split.
pub const DEFAULT_REGION_SPLIT_SIZE: u64 = 96 << 20;
/// TiKV's `region-split-keys`.
pub const DEFAULT_REGION_SPLIT_KEYS: u64 = 960_000;
/// A leader checks its region after taking writes of at least this
/// fraction (1/N) of the split size since its last check (TiKV's
/// `region-split-check-diff` default, 1/16 of the split size).
pub const SPLIT_CHECK_DIFF_DIVISOR: u64 = 16;

/// A leader's split-check clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SplitCheckState {
    /// Leader ticks since the last check.
    pub ticks: u32,
    /// Bytes proposed since the last check (an estimate of growth).
    pub written: u64,
    /// A check is due: the poller hands it to the worker.
    pub wanted: bool,
}

/// A region to measure.
#[derive(Debug, Clone)]
pub struct SplitCheckTask {
    /// The region as its leader knew it (its epoch goes with the split).
    pub region: Region,
    /// Split past this many bytes (keys + values).
    pub max_size: u64,
    /// Split past this many keys.
    pub max_keys: u64,
}

/// What a region measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSize {
    /// Bytes of its keys and values.
    pub bytes: u64,
    /// Its keys.
    pub keys: u64,
    /// Where to split it, if it is past a limit and has a middle key
    /// that is not its start.
    pub split_key: Option<Vec<u8>>,
}

/// Measures `task`'s region on `engine` and picks its middle key (the
/// first key at which the bytes before it reach half the total) if the
/// region is past either limit.
///
/// # Errors
/// Engine read failures.
pub fn check_region(engine: &Engine, task: &SplitCheckTask) -> Result<RegionSize> {
    let snap = engine.snapshot();
    let region = &task.region;
    let (start, end) = (
        keys::data_key(&region.start_key),
        keys::data_end_key(&region.end_key),
    );
    let (mut bytes, mut count) = (0u64, 0u64);
    snap.scan(Cf::Default, &start, &end, |k, v| {
        bytes += (k.len() + v.len()) as u64;
        count += 1;
        ControlFlow::Continue(())
    })?;
    let mut size = RegionSize {
        bytes,
        keys: count,
        split_key: None,
    };
    if bytes <= task.max_size && count <= task.max_keys {
        return Ok(size);
    }
    let half = bytes / 2;
    let mut seen = 0u64;
    let mut middle = None;
    snap.scan(Cf::Default, &start, &end, |k, v| {
        seen += (k.len() + v.len()) as u64;
        if seen >= half {
            middle = keys::origin_key(k).ok().map(<[u8]>::to_vec);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    size.split_key = middle.filter(|m| m[..] != region.start_key[..]);
    Ok(size)
}

#[cfg(test)]
mod tests {
    use flotilla_engine::{Durability, EngineOptions};

    use super::*;

    fn region(start: &[u8], end: &[u8]) -> Region {
        Region {
            id: 1,
            start_key: start.to_vec().into(),
            end_key: end.to_vec().into(),
            ..Default::default()
        }
    }

    fn task(r: Region, max_size: u64, max_keys: u64) -> SplitCheckTask {
        SplitCheckTask {
            region: r,
            max_size,
            max_keys,
        }
    }

    /// A region under both limits is measured and left; one past either
    /// is split at its middle key by size, and only its own keys count.
    #[test]
    fn regions_past_a_limit_split_at_their_middle() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
        let mut wb = engine.write_batch();
        for i in 0..100u32 {
            let key = format!("k{i:03}");
            wb.put(Cf::Default, &keys::data_key(key.as_bytes()), &[7u8; 96]);
        }
        // Outside the region measured below.
        wb.put(Cf::Default, &keys::data_key(b"z"), &[0u8; 10_000]);
        engine.write(wb, Durability::Sync).unwrap();
        let r = region(b"k", b"y");

        let small = check_region(&engine, &task(r.clone(), u64::MAX, u64::MAX)).unwrap();
        assert_eq!(small.keys, 100);
        assert_eq!(small.bytes, 100 * (5 + 96));
        assert_eq!(small.split_key, None);

        let by_size = check_region(&engine, &task(r.clone(), 5_000, u64::MAX)).unwrap();
        assert_eq!(by_size.split_key.as_deref(), Some(&b"k049"[..]));
        let by_keys = check_region(&engine, &task(r.clone(), u64::MAX, 99)).unwrap();
        assert_eq!(by_keys.split_key, by_size.split_key);

        // One huge key at the region's start: no split at the start.
        let r = region(b"z", b"");
        let one = check_region(&engine, &task(r, 1, 0)).unwrap();
        assert_eq!(one.keys, 1);
        assert_eq!(one.split_key, None);
    }
}
