//! A `slog` drain that captures the consensus core's log lines so that the
//! `debug` log level can show them in the transcript.

use std::fmt;
use std::sync::{Arc, Mutex};

use slog::{Drain, KV, Key, OwnedKVList, Record, Serializer};

/// Captured log lines, shared between the drain and the environment.
#[derive(Clone, Default)]
pub struct LogBuffer {
    lines: Arc<Mutex<Vec<String>>>,
}

impl LogBuffer {
    /// A logger whose records land in this buffer.
    pub fn logger(&self) -> slog::Logger {
        slog::Logger::root(CaptureDrain { buf: self.clone() }.fuse(), slog::o!())
    }

    /// Takes every line captured so far.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().expect("log buffer lock"))
    }
}

struct CaptureDrain {
    buf: LogBuffer,
}

/// Collects `key=value` pairs.
#[derive(Default)]
struct Pairs(Vec<String>);

impl Serializer for Pairs {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        self.0.push(format!("{key}={val}"));
        Ok(())
    }
}

impl Drain for CaptureDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, _values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut pairs = Pairs::default();
        let _ = record.kv().serialize(record, &mut pairs);
        // slog serializes a record's pairs last-first.
        pairs.0.reverse();
        let level = record.level().as_short_str();
        let mut line = format!("{level} {}", record.msg());
        for p in pairs.0 {
            line.push(' ');
            line.push_str(&p);
        }
        self.buf.lines.lock().expect("log buffer lock").push(line);
        Ok(())
    }
}
