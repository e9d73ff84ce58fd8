//! The per-second series of a load run and its CSV.

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::stats::{Counters, Gauges};

/// How often the series takes a row.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The CSV's header: its column names say what and in which unit.
pub const CSV_HEADER: &str = "time_s,phase,writes_per_s,write_p99_ms,wire_msgs_per_s,\
                              awake_regions,hibernated_regions,rss_bytes";

/// One row of the series: what the second (or so) before `time_s` looked
/// like.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRow {
    /// Seconds since the cluster started.
    pub time_s: f64,
    /// The phase running.
    pub phase: &'static str,
    /// Writes completed per second.
    pub writes_per_s: f64,
    /// p99 write latency over the row's interval (ms); `None` without writes.
    pub write_p99_ms: Option<f64>,
    /// Wire messages per second (raft messages, heartbeat batches and bare
    /// liveness beats), all stores.
    pub wire_msgs_per_s: f64,
    /// Awake regions (awake peers per running store).
    pub awake_regions: u64,
    /// Hibernated regions (hibernated peers per running store).
    pub hibernated_regions: u64,
    /// Resident set size of the process (bytes; 0 if unknown).
    pub rss_bytes: u64,
}

impl SeriesRow {
    /// The row as a CSV line (no newline); an unknown p99 is an empty field.
    pub fn to_csv(&self) -> String {
        let p99 = self
            .write_p99_ms
            .map_or_else(String::new, |v| format!("{v:.3}"));
        format!(
            "{:.3},{},{:.1},{p99},{:.1},{},{},{}",
            self.time_s,
            self.phase,
            self.writes_per_s,
            self.wire_msgs_per_s,
            self.awake_regions,
            self.hibernated_regions,
            self.rss_bytes
        )
    }
}

/// What a sample reads, gathered by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// The phase running.
    pub phase: &'static str,
    /// Counter totals so far.
    pub counters: Counters,
    /// Gauges now.
    pub gauges: Gauges,
    /// Writes completed so far.
    pub writes: u64,
    /// p99 write latency since the last sample (µs).
    pub write_p99_us: Option<u64>,
    /// RSS now.
    pub rss_bytes: Option<u64>,
}

/// Builds the series, one row per [`SAMPLE_EVERY`] (rates over the real
/// time between rows, so a row that comes late is still right).
#[derive(Debug)]
pub struct Sampler {
    start: Instant,
    last_at: Instant,
    last_writes: u64,
    last_wire: u64,
    rows: Vec<SeriesRow>,
    phase_starts: Vec<(f64, &'static str)>,
}

impl Sampler {
    /// A series starting now from these totals.
    pub fn new(counters: &Counters, writes: u64) -> Sampler {
        let now = Instant::now();
        Sampler {
            start: now,
            last_at: now,
            last_writes: writes,
            last_wire: counters.wire_messages(),
            rows: Vec::new(),
            phase_starts: Vec::new(),
        }
    }

    /// Whether a row is due.
    pub fn due(&self) -> bool {
        self.last_at.elapsed() >= SAMPLE_EVERY
    }

    /// Time since the last row (or the start).
    pub fn since_last(&self) -> Duration {
        self.last_at.elapsed()
    }

    /// Seconds since the series started.
    pub fn now_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Notes that `phase` starts now (the chart marks it).
    pub fn mark_phase(&mut self, phase: &'static str) {
        let t = self.now_s();
        self.phase_starts.push((t, phase));
    }

    /// Where each phase started (seconds, name).
    pub fn phase_starts(&self) -> &[(f64, &'static str)] {
        &self.phase_starts
    }

    /// Takes a row from `r`.
    pub fn sample(&mut self, r: &Reading) {
        let now = Instant::now();
        let span = now.duration_since(self.last_at).as_secs_f64().max(1e-9);
        let wire = r.counters.wire_messages();
        self.rows.push(SeriesRow {
            time_s: now.duration_since(self.start).as_secs_f64(),
            phase: r.phase,
            writes_per_s: r.writes.saturating_sub(self.last_writes) as f64 / span,
            write_p99_ms: r.write_p99_us.map(|us| us as f64 / 1_000.0),
            wire_msgs_per_s: wire.saturating_sub(self.last_wire) as f64 / span,
            awake_regions: r.gauges.awake_regions(),
            hibernated_regions: r.gauges.hibernated_regions(),
            rss_bytes: r.rss_bytes.unwrap_or(0),
        });
        self.last_at = now;
        self.last_writes = r.writes;
        self.last_wire = wire;
    }

    /// The rows so far.
    pub fn rows(&self) -> &[SeriesRow] {
        &self.rows
    }
}

/// Writes `rows` as CSV to `out`.
///
/// # Errors
/// I/O errors of `out`.
pub fn write_csv(rows: &[SeriesRow], mut out: impl Write) -> io::Result<()> {
    writeln!(out, "{CSV_HEADER}")?;
    for row in rows {
        writeln!(out, "{}", row.to_csv())?;
    }
    out.flush()
}

/// Writes `rows` as CSV to a new file at `path`.
///
/// # Errors
/// I/O errors.
pub fn write_csv_file(rows: &[SeriesRow], path: &Path) -> io::Result<()> {
    write_csv(rows, io::BufWriter::new(std::fs::File::create(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(p99: Option<f64>) -> SeriesRow {
        SeriesRow {
            time_s: 12.25,
            phase: "uniform",
            writes_per_s: 1234.56,
            write_p99_ms: p99,
            wire_msgs_per_s: 42.0,
            awake_regions: 1000,
            hibernated_regions: 0,
            rss_bytes: 123_456_789,
        }
    }

    #[test]
    fn csv_rows_match_the_header() {
        let line = row(Some(3.25)).to_csv();
        assert_eq!(line, "12.250,uniform,1234.6,3.250,42.0,1000,0,123456789");
        assert_eq!(
            line.split(',').count(),
            CSV_HEADER.split(',').count(),
            "one field per column"
        );
        assert_eq!(
            row(None).to_csv(),
            "12.250,uniform,1234.6,,42.0,1000,0,123456789"
        );
    }

    #[test]
    fn csv_file_has_header_then_rows() {
        let mut buf = Vec::new();
        write_csv(&[row(None), row(Some(1.0))], &mut buf).expect("write");
        let text = String::from_utf8(buf).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], CSV_HEADER);
        assert!(!CSV_HEADER.contains(' '), "no stray spaces in the header");
    }
}
