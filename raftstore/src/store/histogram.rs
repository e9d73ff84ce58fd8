//! [`LatencyHistogram`]: a lock-free latency histogram for the store's
//! hot paths, read by a metrics exporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The smallest bucket's upper bound is `2^FIRST_BUCKET_LOG2` µs (16 µs).
const FIRST_BUCKET_LOG2: u32 = 4;
/// Buckets with a finite upper bound: 16 µs, 32 µs, ... 2^24 µs (16.8 s).
pub const FINITE_BUCKETS: usize = 21;
/// Every bucket, the last without an upper bound.
const BUCKETS: usize = FINITE_BUCKETS + 1;

/// Counts durations in buckets whose upper bounds double from 16 µs to
/// 16.8 s (then one unbounded bucket), with their count and sum.
/// `observe` is a few relaxed atomic adds: no lock, no allocation.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// `buckets[i]` counts observations in `(bound(i - 1), bound(i)]`.
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A copy of a [`LatencyHistogram`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(upper bound in µs, observations at or below it)` for every
    /// finite bucket, cumulative and ascending.
    pub cumulative: Vec<(u64, u64)>,
    /// Every observation.
    pub count: u64,
    /// Their sum, in µs.
    pub sum_micros: u64,
}

/// The upper bound (µs) of finite bucket `i`.
pub fn bucket_bound_micros(i: usize) -> u64 {
    1u64 << (FIRST_BUCKET_LOG2 as usize + i)
}

impl LatencyHistogram {
    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // The first bucket whose bound is >= micros.
        let i = match micros {
            0..=1 => 0,
            m => ((64 - (m - 1).leading_zeros()).saturating_sub(FIRST_BUCKET_LOG2)) as usize,
        };
        self.buckets[i.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The histogram as it is now (each counter read once; a concurrent
    /// observation may be in the count but not yet in its bucket).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = (0..FINITE_BUCKETS)
            .map(|i| {
                total += self.buckets[i].load(Ordering::Relaxed);
                (bucket_bound_micros(i), total)
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each duration lands in the first bucket whose bound holds it; the
    /// count and sum add up; the cumulative counts never fall.
    #[test]
    fn durations_land_in_their_buckets() {
        let h = LatencyHistogram::default();
        for micros in [0, 16, 17, 32, 1_000, 1_024, 1_025, 20_000_000] {
            h.observe(Duration::from_micros(micros));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 8);
        assert_eq!(
            s.sum_micros,
            16 + 17 + 32 + 1_000 + 1_024 + 1_025 + 20_000_000
        );
        let at = |bound: u64| {
            s.cumulative
                .iter()
                .find(|(b, _)| *b == bound)
                .map(|(_, n)| *n)
                .unwrap()
        };
        assert_eq!(at(16), 2, "0 and 16 µs");
        assert_eq!(at(32), 4, "17 and 32 µs");
        assert_eq!(at(1_024), 6, "1000 and 1024 µs");
        assert_eq!(at(2_048), 7, "1025 µs");
        // 20 s is past every finite bound.
        assert_eq!(s.cumulative.last().unwrap().1, 7);
        assert!(s.cumulative.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
