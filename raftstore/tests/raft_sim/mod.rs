//! A deterministic simulator of raft groups (DESIGN.md §8, testing layer 3).
//!
//! One seed drives everything: a single `ChaCha8Rng` picks each step's
//! action (tick, deliver, drop, duplicate, propose, conf change, transfer,
//! partition, heal, crash, crash in the middle of a Ready, restart,
//! compaction) and seeds every node's `Config::rng_seed`. Nodes run the
//! Ready loop an application would (synchronous persistence into a durable
//! `MemStorage`); a crash drops the `RawNode` and everything it had not yet
//! persisted or sent. After every step the checker asserts the safety
//! properties; each run ends with a fault-free liveness phase.
//!
//! Half the runs (picked by a second RNG seeded from the same seed, so the
//! other half replay as they did before it existed) add the store's
//! hibernation and store-liveness protocol (`sleep`) with the store's raft
//! settings (pre-vote, check-quorum): hibernate requests, wakes, nudges and
//! liveness beats travel through the faulty network with raft's messages.
//! Their liveness phase ends with the death of the leader's node, which
//! must have a successor within two election timeouts.

/// Fails the enclosing function with a [`checker::Violation`].
macro_rules! violation {
    ($prop:expr, $($arg:tt)*) => {
        return Err($crate::sim::checker::Violation {
            property: $prop,
            details: format!($($arg)*),
        })
    };
}

/// Appends a line to the world's trace when tracing is on.
macro_rules! tr {
    ($w:expr, $($arg:tt)*) => {
        if let Some(t) = $w.trace.as_mut() {
            use std::fmt::Write as _;
            let _ = writeln!(t, $($arg)*);
        }
    };
}

mod actions;
pub mod checker;
pub mod net;
pub mod sleep;
pub mod storage;
pub mod world;

pub use world::{Mutation, Shape, Stats, run_seed};
