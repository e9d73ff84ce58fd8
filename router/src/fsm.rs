//! The `Fsm` trait: what the batch system needs to know about a state machine.

use crate::Mailbox;

/// A finite-state machine driven by the batch system: a region's peer, an
/// apply delegate, the store itself.
///
/// # Lifecycle
///
/// 1. The owner boxes the FSM into a [`Mailbox`] and registers the mailbox
///    with a [`Router`](crate::Router) (or makes it the control mailbox).
/// 2. While its mailbox is empty the FSM sits in the mailbox, *idle*, and
///    costs no thread and no timer.
/// 3. The first message makes the mailbox *notified*: the FSM is queued for
///    the poller pool exactly once. A poller takes it, calls
///    [`set_mailbox`](Fsm::set_mailbox), and lets its
///    [`PollHandler`](crate::PollHandler) drain messages.
/// 4. When the handler stops and no new message arrived, the poller calls
///    [`take_mailbox`](Fsm::take_mailbox) and puts the FSM back into the
///    mailbox, idle again. If [`is_stopped`](Fsm::is_stopped) returns `true`
///    instead, the poller closes the mailbox and drops the FSM.
/// 5. Closing the mailbox (through [`Router::close`](crate::Router::close),
///    a stopped FSM, or shutdown) drops the FSM exactly once: at once if it
///    is idle, or when the poller holding it lets go.
pub trait Fsm: Send + Sized + 'static {
    /// What the FSM's mailbox carries.
    type Message: Send + 'static;

    /// Whether the FSM has finished for good (a destroyed peer). A poller that
    /// sees `true` after a round closes the mailbox and drops the FSM instead
    /// of putting it back.
    fn is_stopped(&self) -> bool;

    /// Hands the FSM a reference to its own mailbox when a poller takes it,
    /// so the handler can, for instance, cache it for self-addressed messages
    /// without a router lookup. The default ignores it.
    fn set_mailbox(&mut self, _mailbox: &Mailbox<Self>) {}

    /// Takes back a mailbox clone stored by [`set_mailbox`](Fsm::set_mailbox)
    /// before the FSM is put back into its mailbox, so an idle FSM does not
    /// keep its own mailbox alive. The default has nothing to return.
    fn take_mailbox(&mut self) -> Option<Mailbox<Self>> {
        None
    }
}
