//! [`Arrivals`]: per-item times from a sampled counter.

use std::time::Duration;

use super::table::quantile_sorted;

/// The times at which a rising counter first reached each value above a
/// base: sampling "regions with a leader" every few milliseconds gives the
/// time each region got one (to the sampling period), hence percentiles,
/// with no per-region query to the stores.
#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    base: u64,
    expected: u64,
    times: Vec<Duration>,
}

impl Arrivals {
    /// Waits for `expected` arrivals above a counter now at `base`.
    pub fn new(base: u64, expected: u64) -> Arrivals {
        Arrivals {
            base,
            expected,
            times: Vec::new(),
        }
    }

    /// The counter read `count` at `at`: every value newly reached arrived
    /// then. A counter that falls back arrives nothing (it never un-arrives).
    pub fn observe(&mut self, count: u64, at: Duration) {
        let reached = count.saturating_sub(self.base).min(self.expected);
        let have = self.times.len() as u64;
        if reached > have {
            let more = usize::try_from(reached - have).unwrap_or(usize::MAX);
            self.times.extend(std::iter::repeat_n(at, more));
        }
    }

    /// Items expected.
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// Items arrived so far.
    pub fn arrived(&self) -> u64 {
        self.times.len() as u64
    }

    /// Whether every expected item arrived.
    pub fn complete(&self) -> bool {
        self.arrived() >= self.expected
    }

    /// Items that had not arrived by `at` (the unarrived included).
    pub fn missing_at(&self, at: Duration) -> u64 {
        let by = self.times.partition_point(|&t| t <= at) as u64;
        self.expected.saturating_sub(by)
    }

    /// The `q`-quantile of the arrival times (`None` before any arrival).
    /// Over the arrived items only: check [`Arrivals::complete`].
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        quantile_sorted(&self.times, q)
    }

    /// The last arrival.
    pub fn last(&self) -> Option<Duration> {
        self.times.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_sampled_counter_gives_per_item_times() {
        let mut a = Arrivals::new(90, 10);
        a.observe(90, ms(0));
        a.observe(95, ms(10));
        a.observe(94, ms(20)); // a dip (a double count resolved) undoes nothing
        a.observe(99, ms(30));
        assert!(!a.complete());
        assert_eq!(a.missing_at(ms(15)), 5);
        a.observe(120, ms(40)); // over-counting is capped at the expected
        assert!(a.complete());
        assert_eq!(a.arrived(), 10);
        assert_eq!(a.quantile(0.5), Some(ms(10)));
        assert_eq!(a.quantile(0.9), Some(ms(30)));
        assert_eq!(a.last(), Some(ms(40)));
        assert_eq!(a.missing_at(ms(30)), 1);
        assert_eq!(a.missing_at(ms(40)), 0);
    }

    #[test]
    fn nothing_expected_is_complete_at_once() {
        let a = Arrivals::new(5, 0);
        assert!(a.complete());
        assert_eq!(a.quantile(0.99), None);
        assert_eq!(a.missing_at(ms(1)), 0);
    }
}
