//! The crate's one error type, and the wrapper that hands a refused message back.

use std::fmt;

/// Everything that can go wrong in the batch system.
///
/// Send failures are wrapped in [`SendError`], which also carries the refused
/// message back to the caller so it can be rerouted or answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bounded mailbox already holds `capacity` messages. The caller decides
    /// what to do (a store answers `ServerIsBusy`).
    #[error("mailbox is full ({capacity} messages queued)")]
    Full {
        /// The mailbox's capacity, reached by the queued messages.
        capacity: usize,
    },
    /// The mailbox was closed: its FSM is gone or going, and nothing will be
    /// delivered to it again.
    #[error("mailbox is closed")]
    Closed,
    /// No mailbox is registered at `addr`.
    #[error("no mailbox is registered at address {addr}")]
    NotFound {
        /// The address that was looked up.
        addr: u64,
    },
    /// The router was shut down; no FSM accepts messages any more.
    #[error("the batch system is shut down")]
    Shutdown,
    /// A configuration value is out of range.
    #[error("invalid batch-system config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it was rejected, with the value.
        reason: String,
    },
    /// The operating system refused to start a poller thread.
    #[error("failed to spawn poller thread {index}")]
    SpawnPoller {
        /// Index of the poller in the pool.
        index: usize,
        /// The error from `std::thread::Builder::spawn`.
        #[source]
        source: std::io::Error,
    },
    /// A poller thread panicked (inside a `PollHandler`); it was joined.
    #[error("poller thread {index} panicked")]
    PollerPanicked {
        /// Index of the poller in the pool.
        index: usize,
    },
    /// `spawn` was called on a batch system whose pollers already run, or
    /// that was shut down.
    #[error("the batch system's pollers were already started")]
    AlreadyStarted,
}

/// A message that could not be delivered, returned to the sender together
/// with the reason.
#[derive(thiserror::Error)]
#[error("{error}")]
pub struct SendError<M> {
    /// Why the message was refused: [`Error::Full`], [`Error::Closed`],
    /// [`Error::NotFound`] or [`Error::Shutdown`].
    pub error: Error,
    /// The refused message, untouched.
    pub msg: M,
}

impl<M> SendError<M> {
    pub(crate) fn new(error: Error, msg: M) -> Self {
        SendError { error, msg }
    }

    /// Returns the refused message, discarding the reason.
    pub fn into_msg(self) -> M {
        self.msg
    }
}

// Written by hand so that `M` needs no `Debug` bound: messages often hold
// callbacks.
impl<M> fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}
