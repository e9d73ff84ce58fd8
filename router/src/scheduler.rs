//! The shared queue between notified mailboxes and the poller threads.

use crossbeam_channel::Sender;

use crate::Fsm;
use crate::mailbox::{Mailbox, Schedule};

/// One unit of work on the shared queue.
pub(crate) enum Task<N: Fsm> {
    /// A notified normal mailbox; its FSM waits in it for a poller.
    Normal(Mailbox<N>),
    /// The control mailbox is notified.
    Control,
    /// Shutdown: the poller that takes this exits.
    Stop,
}

/// Schedules normal mailboxes onto the poller pool.
pub(crate) struct NormalScheduler<N: Fsm> {
    tx: Sender<Task<N>>,
}

impl<N: Fsm> Clone for NormalScheduler<N> {
    fn clone(&self) -> Self {
        NormalScheduler {
            tx: self.tx.clone(),
        }
    }
}

/// Schedules the control mailbox onto the poller pool.
pub(crate) struct ControlScheduler<N: Fsm> {
    tx: Sender<Task<N>>,
}

impl<N: Fsm> NormalScheduler<N> {
    pub(crate) fn new(tx: Sender<Task<N>>) -> Self {
        NormalScheduler { tx }
    }

    /// Queues `n` stop tokens, one per poller.
    pub(crate) fn stop_pollers(&self, n: usize) {
        for _ in 0..n {
            // The pollers hold the receiver until they exit; if none is left
            // there is nobody to stop.
            let _ = self.tx.send(Task::Stop);
        }
    }
}

impl<N: Fsm> ControlScheduler<N> {
    pub(crate) fn new(tx: Sender<Task<N>>) -> Self {
        ControlScheduler { tx }
    }
}

impl<N: Fsm> Schedule<N> for NormalScheduler<N> {
    fn schedule(&self, mailbox: &Mailbox<N>) {
        // Fails only once the batch system and every poller are gone, i.e.
        // after shutdown, when all mailboxes are closed anyway.
        let _ = self.tx.send(Task::Normal(mailbox.clone()));
    }
}

impl<N: Fsm, C: Fsm> Schedule<C> for ControlScheduler<N> {
    fn schedule(&self, _mailbox: &Mailbox<C>) {
        // See `NormalScheduler::schedule`.
        let _ = self.tx.send(Task::Control);
    }
}
