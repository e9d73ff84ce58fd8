//! The smallest useful FSM for the router benches.

use flotilla_router::Fsm;

/// An FSM that only sums the `u64` messages it handles.
#[derive(Debug, Default)]
pub struct Region {
    /// Sum of the messages handled.
    pub handled: u64,
}

impl Fsm for Region {
    type Message = u64;

    fn is_stopped(&self) -> bool {
        false
    }
}

/// A fresh boxed [`Region`].
pub fn region() -> Box<Region> {
    Box::default()
}
