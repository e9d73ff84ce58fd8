//! Result tables and the number formatting they use.

use std::fmt;
use std::time::Duration;

const KIB: f64 = 1024.0;
const BYTE_UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
const MICROS_PER_MILLI: f64 = 1_000.0;
const MILLIS_PER_S: f64 = 1_000.0;
/// Durations from this long up print in seconds.
const SECONDS_FROM: Duration = Duration::from_secs(1);
/// Indent of a table's rows under its title.
const INDENT: &str = "  ";
/// Spaces between a row's name and its value.
const GAP: usize = 3;

/// One phase's table: a title and rows of (what, value), printed with the
/// values aligned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    /// An empty table titled `title`.
    pub fn new(title: impl Into<String>) -> Table {
        Table {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, what: impl Into<String>, value: impl Into<String>) -> &mut Table {
        self.rows.push((what.into(), value.into()));
        self
    }

    /// The rows so far.
    pub fn rows(&self) -> &[(String, String)] {
        &self.rows
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let rule = "=".repeat(self.title.chars().count().max(width + GAP + 10));
        writeln!(f, "{}", self.title)?;
        writeln!(f, "{rule}")?;
        for (k, v) in &self.rows {
            writeln!(f, "{INDENT}{k:<w$}{v}", w = width + GAP)?;
        }
        Ok(())
    }
}

/// Latency percentiles of one kind of operation (µs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {}  p99 {}  p999 {}",
            fmt_micros(self.p50),
            fmt_micros(self.p99),
            fmt_micros(self.p999)
        )
    }
}

/// `us` microseconds in milliseconds with two decimals, e.g. `1.25 ms`.
pub fn fmt_micros(us: u64) -> String {
    format!("{:.2} ms", us as f64 / MICROS_PER_MILLI)
}

/// A duration for a table: seconds (`12.34 s`) from one second up,
/// milliseconds (`250.0 ms`) below.
pub fn fmt_duration(d: Duration) -> String {
    if d >= SECONDS_FROM {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * MILLIS_PER_S)
    }
}

/// Bytes with a binary unit: `512 B`, `3.4 KiB`, `1.50 GiB`.
pub fn fmt_bytes(bytes: u64) -> String {
    let mut v = bytes as f64;
    if v < KIB {
        return format!("{bytes} B");
    }
    let mut unit = BYTE_UNITS[0];
    for u in BYTE_UNITS {
        v /= KIB;
        unit = u;
        if v < KIB {
            break;
        }
    }
    format!("{v:.2} {unit}")
}

/// A rate per second with one decimal, e.g. `1234.5/s`.
pub fn fmt_rate(per_s: f64) -> String {
    format!("{per_s:.1}/s")
}

/// The nearest-rank `q`-quantile (`q` in `[0, 1]`) of `sorted` (ascending);
/// `None` when it is empty.
pub fn quantile_sorted<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1).min(last)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_values_under_its_title() {
        let mut t = Table::new("(x) test");
        t.row("short", "1").row("a longer name", "2.00 s");
        let s = t.to_string();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "(x) test");
        assert!(lines[1].chars().all(|c| c == '='));
        assert_eq!(lines[2], "  short           1");
        assert_eq!(lines[3], "  a longer name   2.00 s");
    }

    #[test]
    fn percentiles_print_in_milliseconds() {
        let p = Percentiles {
            p50: 1_250,
            p99: 10_000,
            p999: 123_456,
        };
        assert_eq!(p.to_string(), "p50 1.25 ms  p99 10.00 ms  p999 123.46 ms");
    }

    #[test]
    fn units_scale() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(3 * 1024 + 512), "3.50 KiB");
        assert_eq!(fmt_bytes(3 << 30), "3.00 GiB");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250.0 ms");
        assert_eq!(fmt_duration(Duration::from_millis(12_345)), "12.35 s");
        assert_eq!(fmt_rate(2.26), "2.3/s");
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile_sorted(&v, 0.5), Some(50));
        assert_eq!(quantile_sorted(&v, 0.99), Some(99));
        assert_eq!(quantile_sorted(&v, 1.0), Some(100));
        assert_eq!(quantile_sorted(&v, 0.0), Some(1));
        assert_eq!(quantile_sorted(&[7u64], 0.999), Some(7));
        assert_eq!(quantile_sorted::<u64>(&[], 0.5), None);
    }
}
