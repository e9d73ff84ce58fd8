//! One FSM's mailbox: its message queue, its scheduling state, and the FSM
//! itself while it is idle.
//!
//! The queue, the state and the idle FSM sit behind one small lock, so a send
//! and a release can never interleave: either the sender sees the mailbox
//! idle and schedules it, or the releasing poller sees the new message and
//! keeps the FSM. That makes lost wake-ups and double scheduling impossible by
//! construction, and costs one uncontended lock per send.
//!
//! Memory: an idle mailbox is one allocation of a few dozen bytes plus the
//! boxed FSM. Its queue buffer is allocated by the first message and freed
//! when the FSM goes idle again, so 100,000 quiet regions pay nothing for
//! buffers they do not use. (A crossbeam channel per mailbox was measured
//! against this: its shared state alone is 512 bytes, because head and tail
//! are padded to 128-byte cache lines, and it keeps a block of 31 slots after
//! its first message.)

use std::collections::VecDeque;
use std::mem;
use std::num::NonZeroUsize;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{Error, Fsm, SendError};

/// Where a mailbox is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailboxState {
    /// No poller holds the FSM, the FSM rests in the mailbox, and nothing is
    /// queued (or the handler deliberately left messages behind). The next
    /// message schedules it.
    Idle,
    /// The FSM is queued for a poller or held by one; more messages only
    /// enqueue.
    Notified,
    /// Closed for good (the design's "dropped"): sends fail with
    /// [`Error::Closed`], queued messages were dropped, and the FSM is dropped
    /// by whoever holds it last.
    Closed,
}

/// How a notified mailbox gets onto the poller pool. Implemented by the
/// router's schedulers, and by recorders in tests.
pub(crate) trait Schedule<N: Fsm> {
    /// Queues `mailbox` for a poller. Called exactly once per transition from
    /// [`MailboxState::Idle`] to [`MailboxState::Notified`], and once per
    /// reschedule of a busy FSM.
    fn schedule(&self, mailbox: &Mailbox<N>);
}

/// What happened to an FSM a poller tried to put back.
pub(crate) enum Release<N> {
    /// Back in the mailbox, idle.
    Idle,
    /// The mailbox was closed meanwhile; the FSM was dropped.
    Dropped,
    /// New messages arrived since the handler looked; the poller keeps it.
    Kept(Box<N>),
}

/// The mailbox of one FSM: a FIFO of messages, a scheduling state, and
/// the FSM while it is idle. Cloning is cheap (a reference count) and every
/// clone addresses the same FSM.
pub struct Mailbox<N: Fsm> {
    inner: Arc<Inner<N>>,
}

struct Inner<N: Fsm> {
    /// Most messages [`Mailbox::try_send`] accepts; `usize::MAX` when
    /// unbounded.
    capacity: usize,
    shared: Mutex<Shared<N>>,
}

struct Shared<N: Fsm> {
    queue: VecDeque<N::Message>,
    /// `Some` exactly while the FSM is idle, or notified but not yet taken by
    /// a poller.
    fsm: Option<Box<N>>,
    state: MailboxState,
}

impl<N: Fsm> Clone for Mailbox<N> {
    fn clone(&self) -> Self {
        Mailbox {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<N: Fsm> Mailbox<N> {
    /// Creates an idle mailbox holding `fsm`, accepting any number of
    /// messages.
    pub fn new(fsm: Box<N>) -> Self {
        Self::with_capacity(fsm, usize::MAX)
    }

    /// Creates an idle mailbox holding `fsm` that accepts at most `capacity`
    /// queued messages through the non-forcing sends. Nothing is allocated
    /// up front for the capacity.
    pub fn bounded(fsm: Box<N>, capacity: NonZeroUsize) -> Self {
        Self::with_capacity(fsm, capacity.get())
    }

    fn with_capacity(fsm: Box<N>, capacity: usize) -> Self {
        Mailbox {
            inner: Arc::new(Inner {
                capacity,
                shared: Mutex::new(Shared {
                    queue: VecDeque::new(),
                    fsm: Some(fsm),
                    state: MailboxState::Idle,
                }),
            }),
        }
    }

    /// The bound given to [`Mailbox::bounded`], or `None` when unbounded.
    pub fn capacity(&self) -> Option<usize> {
        (self.inner.capacity != usize::MAX).then_some(self.inner.capacity)
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.inner.shared.lock().queue.len()
    }

    /// Whether no message is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The current state. Only a snapshot: it may change as soon as it is
    /// returned.
    pub fn state(&self) -> MailboxState {
        self.inner.shared.lock().state
    }

    /// Whether the mailbox was closed.
    pub fn is_closed(&self) -> bool {
        self.state() == MailboxState::Closed
    }

    /// Whether `self` and `other` are clones of the same mailbox.
    pub fn same_as(&self, other: &Mailbox<N>) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Enqueues `msg` unless the mailbox is full or closed, scheduling the FSM
    /// if it was idle.
    pub(crate) fn try_send<S: Schedule<N>>(
        &self,
        msg: N::Message,
        scheduler: &S,
    ) -> Result<(), SendError<N::Message>> {
        self.push(msg, self.inner.capacity, scheduler)
    }

    /// Enqueues `msg` unless `limit` messages are queued already (whatever
    /// the mailbox's own capacity) or the mailbox is closed.
    pub(crate) fn send_within<S: Schedule<N>>(
        &self,
        msg: N::Message,
        limit: usize,
        scheduler: &S,
    ) -> Result<(), SendError<N::Message>> {
        self.push(msg, limit, scheduler)
    }

    /// Enqueues `msg` whatever the queue length, unless the mailbox is closed.
    pub(crate) fn force_send<S: Schedule<N>>(
        &self,
        msg: N::Message,
        scheduler: &S,
    ) -> Result<(), SendError<N::Message>> {
        self.push(msg, usize::MAX, scheduler)
    }

    fn push<S: Schedule<N>>(
        &self,
        msg: N::Message,
        limit: usize,
        scheduler: &S,
    ) -> Result<(), SendError<N::Message>> {
        let notify = {
            let mut shared = self.inner.shared.lock();
            if shared.state == MailboxState::Closed {
                return Err(SendError::new(Error::Closed, msg));
            }
            if shared.queue.len() >= limit {
                return Err(SendError::new(Error::Full { capacity: limit }, msg));
            }
            shared.queue.push_back(msg);
            let was_idle = shared.state == MailboxState::Idle;
            shared.state = MailboxState::Notified;
            was_idle
        };
        // Outside the lock: the state is already `Notified`, so no other
        // sender schedules it too, and a concurrent `close` only makes the
        // poller find the FSM gone.
        if notify {
            scheduler.schedule(self);
        }
        Ok(())
    }

    /// Takes the FSM out for a poller that picked this mailbox off the queue.
    /// `None` if the mailbox was closed meanwhile (the FSM is already gone).
    pub(crate) fn take_fsm(&self) -> Option<Box<N>> {
        let mut shared = self.inner.shared.lock();
        debug_assert_ne!(shared.state, MailboxState::Idle, "scheduled while idle");
        shared.fsm.take()
    }

    /// Puts the FSM back after its handler stopped with `progress` messages
    /// still queued. It goes idle if nothing arrived since; otherwise the
    /// poller keeps it.
    pub(crate) fn release(&self, fsm: Box<N>, progress: usize) -> Release<N> {
        let mut shared = self.inner.shared.lock();
        match shared.state {
            MailboxState::Closed => {
                drop(shared);
                drop(fsm);
                Release::Dropped
            }
            MailboxState::Idle | MailboxState::Notified => {
                debug_assert_eq!(shared.state, MailboxState::Notified, "released while idle");
                if shared.queue.len() > progress {
                    return Release::Kept(fsm);
                }
                // Free the buffer: an idle mailbox should cost no more than
                // its fixed fields.
                let buffer = shared
                    .queue
                    .is_empty()
                    .then(|| mem::take(&mut shared.queue));
                shared.fsm = Some(fsm);
                shared.state = MailboxState::Idle;
                drop(shared);
                drop(buffer);
                Release::Idle
            }
        }
    }

    /// Takes the FSM out of an idle mailbox with nothing queued, for a
    /// caller that handles it in place of a poller (see
    /// [`Router::borrow_idle`](crate::Router::borrow_idle)). The mailbox
    /// goes `Notified`, as when a poller holds the FSM: messages sent
    /// meanwhile only enqueue. `None` if the FSM is busy, queued for a
    /// poller, has messages waiting, or the mailbox is closed.
    pub(crate) fn take_idle(&self) -> Option<Box<N>> {
        let mut shared = self.inner.shared.lock();
        if shared.state != MailboxState::Idle || !shared.queue.is_empty() {
            return None;
        }
        let fsm = shared.fsm.take()?;
        shared.state = MailboxState::Notified;
        Some(fsm)
    }

    /// Puts a busy FSM back and queues it again, so another poller (or this
    /// one, later) continues it. The state stays notified.
    pub(crate) fn reschedule<S: Schedule<N>>(&self, fsm: Box<N>, scheduler: &S) {
        let mut shared = self.inner.shared.lock();
        if shared.state == MailboxState::Closed {
            drop(shared);
            drop(fsm);
            return;
        }
        shared.fsm = Some(fsm);
        drop(shared);
        scheduler.schedule(self);
    }

    /// Closes the mailbox: later sends fail with [`Error::Closed`], queued
    /// messages are dropped, and the FSM is dropped now if it rests here, or
    /// by the poller that holds it when that poller lets go.
    ///
    /// Closing twice is harmless. Nothing is dropped while the lock is held,
    /// so a message or FSM whose `Drop` sends to this mailbox cannot deadlock.
    pub fn close(&self) {
        let (fsm, queue) = {
            let mut shared = self.inner.shared.lock();
            shared.state = MailboxState::Closed;
            (shared.fsm.take(), mem::take(&mut shared.queue))
        };
        drop(queue);
        drop(fsm);
    }

    /// Closes the mailbox on behalf of the poller holding `fsm`, and drops
    /// the FSM.
    pub(crate) fn close_with(&self, fsm: Box<N>) {
        self.close();
        drop(fsm);
    }

    /// Pops the oldest message.
    fn pop(&self) -> Option<N::Message> {
        self.inner.shared.lock().queue.pop_front()
    }

    /// Moves up to `max` oldest messages into `buf` under one lock.
    fn pop_into(&self, buf: &mut Vec<N::Message>, max: usize) -> usize {
        let mut shared = self.inner.shared.lock();
        let n = shared.queue.len().min(max);
        buf.extend(shared.queue.drain(..n));
        n
    }

    /// Capacity of the queue buffer, to check that idle mailboxes free it.
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.inner.shared.lock().queue.capacity()
    }
}

/// The receiving end of a mailbox, lent to a [`PollHandler`](crate::PollHandler)
/// while its poller holds the FSM. Only the holder of the FSM receives, so
/// messages come out in the order they were sent.
pub struct Inbox<'a, N: Fsm> {
    mailbox: &'a Mailbox<N>,
}

impl<'a, N: Fsm> Inbox<'a, N> {
    pub(crate) fn new(mailbox: &'a Mailbox<N>) -> Self {
        Inbox { mailbox }
    }

    /// Takes the oldest queued message, if any.
    pub fn try_recv(&self) -> Option<N::Message> {
        self.mailbox.pop()
    }

    /// Moves up to `max` of the oldest messages into `buf` (appending, in
    /// order) under a single lock, and returns how many.
    pub fn recv_batch(&self, buf: &mut Vec<N::Message>, max: usize) -> usize {
        self.mailbox.pop_into(buf, max)
    }

    /// Number of messages still queued: the `progress` to report in
    /// [`HandleResult::StopAt`](crate::HandleResult::StopAt) when stopping
    /// with messages deliberately left behind.
    pub fn len(&self) -> usize {
        self.mailbox.len()
    }

    /// Whether no message is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The mailbox this inbox reads from.
    pub fn mailbox(&self) -> &'a Mailbox<N> {
        self.mailbox
    }
}

#[cfg(test)]
mod tests;
