//! Shared helpers for flotilla's criterion benches.

pub mod counting;
pub mod fsm;

pub use counting::Counting;
