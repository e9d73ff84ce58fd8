//! The batch system: a fixed pool of poller threads sharing one queue of
//! notified FSMs.

use std::thread::{self, JoinHandle};

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::handler::PollHandler;
use crate::mailbox::Mailbox;
use crate::poller::{Limits, Poller};
use crate::router::Router;
use crate::scheduler::Task;
use crate::{Error, Fsm};

/// A fixed pool of poller threads serving the FSMs of one [`Router`].
///
/// Created with [`BatchSystem::new`] (which also returns the router), started
/// with [`spawn`](Self::spawn), stopped with [`shutdown`](Self::shutdown) or
/// by dropping it. Messages sent before `spawn` wait in the queue.
pub struct BatchSystem<N: Fsm, C: Fsm> {
    router: Router<N, C>,
    tasks: Receiver<Task<N>>,
    config: Config,
    pollers: Vec<JoinHandle<()>>,
    /// Set by `spawn`; a system is spawned at most once.
    started: bool,
}

impl<N: Fsm, C: Fsm> BatchSystem<N, C> {
    /// Validates `config` and creates a stopped system whose router has
    /// `control` as its control mailbox.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] if `config` does not validate; `control` is
    /// then dropped.
    pub fn new(config: &Config, control: Mailbox<C>) -> Result<(Router<N, C>, Self), Error> {
        config.validate()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let router = Router::new(control, tx);
        let system = BatchSystem {
            router: router.clone(),
            tasks: rx,
            config: config.clone(),
            pollers: Vec::with_capacity(config.pool_size),
            started: false,
        };
        Ok((router, system))
    }

    /// The router of this system.
    pub fn router(&self) -> &Router<N, C> {
        &self.router
    }

    /// The number of poller threads `spawn` starts.
    pub fn pool_size(&self) -> usize {
        self.config.pool_size
    }

    /// Starts `pool_size` poller threads named `{name_prefix}-{index}`, each
    /// with the handler `build(index)` returns.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyStarted`] on a second call; [`Error::SpawnPoller`] if
    /// the OS refuses a thread (pollers already started keep running until
    /// shutdown).
    pub fn spawn<H, B>(&mut self, name_prefix: &str, mut build: B) -> Result<(), Error>
    where
        H: PollHandler<N, C>,
        B: FnMut(usize) -> H,
    {
        if self.started {
            return Err(Error::AlreadyStarted);
        }
        self.started = true;
        let limits = Limits {
            max_batch_size: self.config.max_batch_size,
            reschedule_duration: self.config.reschedule_duration,
        };
        for index in 0..self.config.pool_size {
            let poller = Poller::new(
                self.router.clone(),
                self.tasks.clone(),
                build(index),
                limits,
            );
            let handle = thread::Builder::new()
                .name(format!("{name_prefix}-{index}"))
                .spawn(move || poller.run())
                .map_err(|source| Error::SpawnPoller { index, source })?;
            self.pollers.push(handle);
        }
        Ok(())
    }

    /// Shuts the router down (closing every registered mailbox and the
    /// control mailbox), stops every poller and joins it. Afterwards every
    /// FSM that was registered, and the control FSM, has been dropped exactly
    /// once, including those a poller held and those queued with messages.
    /// Calling it again does nothing more.
    ///
    /// # Errors
    ///
    /// [`Error::PollerPanicked`] for the first poller whose handler panicked;
    /// all pollers are joined regardless.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        self.started = true;
        self.router.broadcast_shutdown();
        self.router
            .normal_scheduler()
            .stop_pollers(self.pollers.len());
        let mut result = Ok(());
        for (index, handle) in self.pollers.drain(..).enumerate() {
            if handle.join().is_err() && result.is_ok() {
                result = Err(Error::PollerPanicked { index });
            }
        }
        // Drop what is left on the queue (closed mailboxes) now rather than
        // when the last router clone goes.
        while self.tasks.try_recv().is_ok() {}
        result
    }
}

impl<N: Fsm, C: Fsm> Drop for BatchSystem<N, C> {
    fn drop(&mut self) {
        // A panicked poller was already reported to whoever called
        // `shutdown`; when dropping without it there is nobody to tell.
        let _ = self.shutdown();
    }
}
