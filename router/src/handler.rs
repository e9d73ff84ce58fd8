//! What a poller does with the FSMs it holds: the `PollHandler` trait and its
//! return protocol.

use crate::Fsm;
use crate::mailbox::Inbox;
use crate::poller::Entry;

/// What a handler tells the poller after handling one FSM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleResult {
    /// The FSM has more work than this round allowed (e.g. its per-round
    /// message budget ran out). The poller keeps it for the next round, until
    /// it has held it for `reschedule_duration`; then it goes back to the end
    /// of the shared queue.
    KeepProcessing,
    /// The handler stopped, having last seen `progress` messages still queued
    /// (usually 0: it drained the inbox). After the round the poller puts the
    /// FSM back, idle, if the mailbox still holds no more than `progress`
    /// messages, and keeps it for another round if more arrived. Messages
    /// left behind on purpose wait for the next send to wake the FSM.
    StopAt {
        /// Messages the handler saw queued when it stopped
        /// ([`Inbox::len`]).
        progress: usize,
        /// `true` if the FSM needs no [`PollHandler::end`] this round: it is
        /// released right after [`PollHandler::light_end`], so another poller
        /// can pick it up while this one finishes `end` (e.g. a sync).
        skip_end: bool,
    },
}

impl HandleResult {
    /// Shorthand for [`HandleResult::StopAt`].
    pub const fn stop_at(progress: usize, skip_end: bool) -> Self {
        HandleResult::StopAt { progress, skip_end }
    }
}

/// Drives the FSMs of one poller thread.
///
/// # Lifecycle
///
/// Each poller owns one handler, built when the pool is spawned, and repeats
/// rounds until shutdown. One round is:
///
/// 1. [`begin`](Self::begin) with the number of normal FSMs in the batch (up
///    to `max_batch_size`).
/// 2. [`handle_control`](Self::handle_control), if the control FSM is ready.
/// 3. [`handle_normal`](Self::handle_normal) for each ready normal FSM, which
///    pulls messages from its [`Inbox`] and answers a [`HandleResult`].
/// 4. [`light_end`](Self::light_end) with every normal FSM handled this round.
///    Then FSMs that answered `StopAt { skip_end: true, .. }` are released.
/// 5. [`end`](Self::end) with the normal FSMs still held: the place for work
///    shared by the whole round, such as one write and one sync for all.
///    Then FSMs that answered `StopAt` go idle (or stay, if messages
///    arrived), and FSMs held past `reschedule_duration` go back to the queue.
///
/// When the batch is empty the poller calls [`pause`](Self::pause) and blocks
/// until an FSM is notified. The handler is dropped when its poller exits.
pub trait PollHandler<N: Fsm, C: Fsm>: Send + 'static {
    /// Starts a round holding `batch_size` normal FSMs.
    fn begin(&mut self, batch_size: usize);

    /// Handles the control FSM. `skip_end` is ignored: the control FSM takes
    /// no part in [`end`](Self::end) and is released right after this call.
    fn handle_control(&mut self, control: &mut C, inbox: &Inbox<'_, C>) -> HandleResult;

    /// Handles one normal FSM.
    fn handle_normal(&mut self, normal: &mut N, inbox: &Inbox<'_, N>) -> HandleResult;

    /// Light work after every FSM of the round was handled, before
    /// `skip_end` FSMs are released. The default does nothing.
    fn light_end(&mut self, _batch: &mut Batch<'_, N>) {}

    /// Ends the round for the FSMs still held.
    fn end(&mut self, batch: &mut Batch<'_, N>);

    /// Called before the poller blocks for lack of work. The default does
    /// nothing.
    fn pause(&mut self) {}
}

/// The normal FSMs of the current round, lent to
/// [`PollHandler::light_end`] and [`PollHandler::end`].
pub struct Batch<'a, N: Fsm> {
    entries: &'a mut [Entry<N>],
}

impl<'a, N: Fsm> Batch<'a, N> {
    pub(crate) fn new(entries: &'a mut [Entry<N>]) -> Self {
        Batch { entries }
    }

    /// Number of FSMs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch holds no FSM.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The FSMs, in the order they were handled.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut N> {
        self.entries.iter_mut().filter_map(Entry::fsm_mut)
    }
}
