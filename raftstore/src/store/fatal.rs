//! A store's fatal-error state (DESIGN §7): a failed engine write on the
//! raft or apply path leaves the store in an unknown state, so the store
//! stops at once instead of continuing and diverging.
//!
//! Lifecycle: [`StoreStatus`] is made when the store starts and shared by
//! its pollers and handles. The first [`StoreStatus::fail`] wins: it logs
//! the cause, records it, shuts both routers down (every queued and later
//! command is answered `StoreStopped`; proposals in flight are answered
//! `StoreStopped { in_flight: true }`, outcome unknown), and calls the
//! embedder's [`FatalHook`]. The process is not aborted: the hook may do
//! that (e.g. `std::process::abort()`), or the embedder may (from another
//! thread) drop the store and reopen it from disk, which is safe because
//! nothing of a failed round was acknowledged.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use slog::Logger;

use super::error::Error;
use super::fsm::{ApplyRouter, RaftRouter};

/// Called once, on the poller thread that hit the error, when the store
/// stops on a fatal error. A panic in it is caught. It must not drop or
/// shut down the [`super::Store`] itself (that joins the poller threads,
/// this one included): signal another thread to do it, or abort the
/// process.
pub type FatalHook = Arc<dyn Fn(&Error) + Send + Sync>;

/// Whether the store is stopped, and why.
pub struct StoreStatus {
    stopped: AtomicBool,
    cause: OnceLock<Error>,
    hook: Option<FatalHook>,
    routers: OnceLock<(RaftRouter, ApplyRouter)>,
}

impl StoreStatus {
    /// A running store's status; `hook` hears of a fatal error.
    pub fn new(hook: Option<FatalHook>) -> StoreStatus {
        StoreStatus {
            stopped: AtomicBool::new(false),
            cause: OnceLock::new(),
            hook,
            routers: OnceLock::new(),
        }
    }

    /// The routers [`StoreStatus::fail`] shuts down (set once, at start).
    pub fn set_routers(&self, raft: RaftRouter, apply: ApplyRouter) {
        let _ = self.routers.set((raft, apply));
    }

    /// Whether the store stopped (fatal error or shutdown).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The fatal error that stopped the store, if one did.
    pub fn fatal_error(&self) -> Option<&Error> {
        self.cause.get()
    }

    /// Marks the store stopped for a clean shutdown (no cause, no hook).
    pub fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Stops the store on a fatal error; only the first call acts.
    pub fn fail(&self, cause: Error, logger: &Logger) {
        if self.stop(cause, logger) {
            self.run_hook(logger);
        }
    }

    /// The first half of [`StoreStatus::fail`]: records the cause, marks
    /// the store stopped and shuts its routers down. Returns whether this
    /// call did it (only the first does); the caller then answers what it
    /// holds and calls [`StoreStatus::run_hook`] (which may abort).
    pub fn stop(&self, cause: Error, logger: &Logger) -> bool {
        if self.cause.set(cause.clone()).is_err() {
            return false;
        }
        self.stopped.store(true, Ordering::Release);
        slog::crit!(logger, "store stopped on a fatal error"; "cause" => %cause);
        if let Some((raft, apply)) = self.routers.get() {
            raft.broadcast_shutdown();
            apply.broadcast_shutdown();
        }
        true
    }

    /// Calls the fatal hook with the recorded cause (the second half of
    /// [`StoreStatus::fail`]).
    pub fn run_hook(&self, logger: &Logger) {
        let Some(cause) = self.cause.get() else {
            return;
        };
        if let Some(hook) = &self.hook {
            let call = std::panic::AssertUnwindSafe(|| hook(cause));
            if std::panic::catch_unwind(call).is_err() {
                slog::error!(logger, "fatal-error hook panicked");
            }
        }
    }
}

impl std::fmt::Debug for StoreStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreStatus")
            .field("stopped", &self.is_stopped())
            .field("cause", &self.cause.get())
            .finish_non_exhaustive()
    }
}
