//! Shared helpers for flotilla's criterion benches.
