//! Address book of the batch system: region id → mailbox, plus the control
//! mailbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Sender;
use fxhash::FxHashMap;
use parking_lot::RwLock;

use crate::mailbox::{Mailbox, Release};
use crate::scheduler::{ControlScheduler, NormalScheduler, Task};
use crate::{Error, Fsm, SendError};

/// log2 of the number of map shards. Sixteen shards keep concurrent senders
/// and register/close off each other's locks at a fixed cost of a few KiB.
const SHARD_BITS: u32 = 4;
/// Number of map shards.
const SHARD_COUNT: usize = 1 << SHARD_BITS;
/// Fibonacci-hashing multiplier (2^64 / golden ratio): spreads sequential and
/// `(store_id << 40) | counter` addresses evenly over the shards.
const FIBONACCI_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// One shard of the address map, on its own cache lines so that readers of
/// neighbouring shards do not contend on the lock word.
#[repr(align(128))]
struct Shard<N: Fsm>(RwLock<FxHashMap<u64, Mailbox<N>>>);

/// An FSM taken out of its idle mailbox by [`Router::borrow_idle`]. It goes
/// back when this is dropped (or handed to [`Router::give_back`], which
/// says so at the call site): idle again if nothing arrived meanwhile,
/// scheduled onto the pool otherwise, closed and dropped if it stopped.
/// Dropped while its borrower unwinds from a panic, it closes its mailbox
/// and is dropped instead, as a stopped FSM would be: it may be half
/// handled, and no poller may go on from that state.
pub struct Borrowed<N: Fsm> {
    /// `Some` until the drop hands it back.
    fsm: Option<Box<N>>,
    mailbox: Mailbox<N>,
    scheduler: NormalScheduler<N>,
}

impl<N: Fsm> Borrowed<N> {
    /// The borrowed FSM.
    pub fn fsm(&self) -> &N {
        // Taken only by `drop`.
        self.fsm
            .as_deref()
            .expect("a borrowed FSM is held until dropped")
    }

    /// The borrowed FSM, to handle.
    pub fn fsm_mut(&mut self) -> &mut N {
        self.fsm
            .as_deref_mut()
            .expect("a borrowed FSM is held until dropped")
    }
}

impl<N: Fsm> Drop for Borrowed<N> {
    fn drop(&mut self) {
        let Some(mut fsm) = self.fsm.take() else {
            return;
        };
        if fsm.is_stopped() || std::thread::panicking() {
            self.mailbox.close_with(fsm);
            return;
        }
        drop(fsm.take_mailbox());
        if let Release::Kept(fsm) = self.mailbox.release(fsm, 0) {
            self.mailbox.reschedule(fsm, &self.scheduler);
        }
    }
}

/// Outcome of [`Router::try_send`].
#[must_use = "an undelivered message is handed back and must be routed or dropped"]
pub enum TrySend<M> {
    /// The message is queued in the FSM's mailbox.
    Sent,
    /// No mailbox is registered at the address; here is the message back, to
    /// be routed elsewhere (typically to the control FSM, which may create
    /// the FSM).
    Unknown(M),
    /// A mailbox exists but refused the message ([`Error::Full`] or
    /// [`Error::Closed`]).
    Rejected(SendError<M>),
}

/// Routes messages to FSM mailboxes by `u64` address (region id), and to the
/// one control FSM.
///
/// Cloning is cheap; every clone addresses the same FSMs. Sending never
/// blocks on a full mailbox: bounded mailboxes refuse with [`Error::Full`]
/// and the caller decides.
pub struct Router<N: Fsm, C: Fsm> {
    inner: Arc<Inner<N, C>>,
}

struct Inner<N: Fsm, C: Fsm> {
    shards: Box<[Shard<N>]>,
    control: Mailbox<C>,
    normal_scheduler: NormalScheduler<N>,
    control_scheduler: ControlScheduler<N>,
    shutdown: AtomicBool,
}

impl<N: Fsm, C: Fsm> Clone for Router<N, C> {
    fn clone(&self) -> Self {
        Router {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<N: Fsm, C: Fsm> Router<N, C> {
    pub(crate) fn new(control: Mailbox<C>, tasks: Sender<Task<N>>) -> Self {
        let shards = (0..SHARD_COUNT)
            .map(|_| Shard(RwLock::new(FxHashMap::default())))
            .collect();
        Router {
            inner: Arc::new(Inner {
                shards,
                control,
                normal_scheduler: NormalScheduler::new(tasks.clone()),
                control_scheduler: ControlScheduler::new(tasks),
                shutdown: AtomicBool::new(false),
            }),
        }
    }

    fn shard(&self, addr: u64) -> &RwLock<FxHashMap<u64, Mailbox<N>>> {
        // The top SHARD_BITS bits of the product always fit in usize.
        let index = (addr.wrapping_mul(FIBONACCI_MULTIPLIER) >> (u64::BITS - SHARD_BITS)) as usize;
        &self.inner.shards[index].0
    }

    /// Registers `mailbox` at `addr`. A mailbox already registered there is
    /// replaced and closed (its FSM is dropped).
    ///
    /// # Errors
    ///
    /// [`Error::Shutdown`] after [`broadcast_shutdown`](Self::broadcast_shutdown);
    /// `mailbox` is then closed and its FSM dropped.
    pub fn register(&self, addr: u64, mailbox: Mailbox<N>) -> Result<(), Error> {
        let replaced = {
            let mut map = self.shard(addr).write();
            // Checked under the shard lock: `broadcast_shutdown` raises the
            // flag before it empties the shards, so a mailbox is either seen
            // by the drain or refused here.
            if self.inner.shutdown.load(Ordering::Acquire) {
                drop(map);
                mailbox.close();
                return Err(Error::Shutdown);
            }
            map.insert(addr, mailbox)
        };
        if let Some(old) = replaced {
            old.close();
        }
        Ok(())
    }

    /// Registers many mailboxes, as [`register`](Self::register) does for
    /// each.
    ///
    /// # Errors
    ///
    /// [`Error::Shutdown`] after shutdown; every mailbox not yet registered
    /// is then closed.
    pub fn register_all(
        &self,
        mailboxes: impl IntoIterator<Item = (u64, Mailbox<N>)>,
    ) -> Result<(), Error> {
        let mut mailboxes = mailboxes.into_iter();
        for (addr, mailbox) in mailboxes.by_ref() {
            if let Err(e) = self.register(addr, mailbox) {
                mailboxes.for_each(|(_, rest)| rest.close());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unregisters and closes the mailbox at `addr`: later sends fail, queued
    /// messages are dropped, and the FSM is dropped exactly once (now if
    /// idle, else when its poller lets go). Returns whether a mailbox was
    /// registered there.
    pub fn close(&self, addr: u64) -> bool {
        let removed = self.shard(addr).write().remove(&addr);
        removed.map(|mailbox| mailbox.close()).is_some()
    }

    /// A clone of the mailbox registered at `addr`, for callers that send to
    /// the same FSM often (see [`send_to_mailbox`](Self::send_to_mailbox)).
    pub fn mailbox(&self, addr: u64) -> Option<Mailbox<N>> {
        self.shard(addr).read().get(&addr).cloned()
    }

    /// The control FSM's mailbox.
    pub fn control_mailbox(&self) -> &Mailbox<C> {
        &self.inner.control
    }

    /// Number of registered normal mailboxes.
    pub fn normal_count(&self) -> usize {
        self.inner.shards.iter().map(|s| s.0.read().len()).sum()
    }

    /// Whether [`broadcast_shutdown`](Self::broadcast_shutdown) was called.
    pub fn is_shutdown(&self) -> bool {
        self.inner.shutdown.load(Ordering::Acquire)
    }

    /// Sends `msg` to the FSM at `addr`, scheduling it if it was idle.
    ///
    /// # Errors
    ///
    /// The message comes back in a [`SendError`] with [`Error::NotFound`] (no
    /// such address), [`Error::Shutdown`] (no address after shutdown),
    /// [`Error::Full`] (bounded mailbox at capacity) or [`Error::Closed`].
    pub fn send(&self, addr: u64, msg: N::Message) -> Result<(), SendError<N::Message>> {
        match self.try_send(addr, msg) {
            TrySend::Sent => Ok(()),
            TrySend::Unknown(msg) => Err(SendError::new(self.not_found(addr), msg)),
            TrySend::Rejected(e) => Err(e),
        }
    }

    /// Like [`send`](Self::send), but an unknown address is not an error: the
    /// message comes back as [`TrySend::Unknown`] so the caller can route it
    /// to the control FSM.
    pub fn try_send(&self, addr: u64, msg: N::Message) -> TrySend<N::Message> {
        let map = self.shard(addr).read();
        match map.get(&addr) {
            None => TrySend::Unknown(msg),
            Some(mailbox) => match mailbox.try_send(msg, &self.inner.normal_scheduler) {
                Ok(()) => TrySend::Sent,
                Err(e) => TrySend::Rejected(e),
            },
        }
    }

    /// Like [`try_send`](Self::try_send), but with a queue bound of `limit`
    /// instead of the mailbox's capacity: lets one kind of message (a
    /// store's raft messages) keep a budget of its own past the capacity
    /// that bounds another (client commands). A full mailbox comes back as
    /// [`TrySend::Rejected`] with [`Error::Full`] (carrying `limit`).
    pub fn try_send_within(&self, addr: u64, msg: N::Message, limit: usize) -> TrySend<N::Message> {
        let map = self.shard(addr).read();
        match map.get(&addr) {
            None => TrySend::Unknown(msg),
            Some(mailbox) => match mailbox.send_within(msg, limit, &self.inner.normal_scheduler) {
                Ok(()) => TrySend::Sent,
                Err(e) => TrySend::Rejected(e),
            },
        }
    }

    /// Sends `msg` to the FSM at `addr` even if its mailbox is at capacity.
    /// For messages that must not be lost to back-pressure (e.g. results the
    /// FSM is waiting for).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::Shutdown`] or [`Error::Closed`], with the
    /// message.
    pub fn force_send(&self, addr: u64, msg: N::Message) -> Result<(), SendError<N::Message>> {
        let map = self.shard(addr).read();
        match map.get(&addr) {
            None => {
                drop(map);
                Err(SendError::new(self.not_found(addr), msg))
            }
            Some(mailbox) => mailbox.force_send(msg, &self.inner.normal_scheduler),
        }
    }

    /// Sends `msg` through a mailbox obtained from [`mailbox`](Self::mailbox)
    /// (or [`Fsm::set_mailbox`]), skipping the address lookup. The mailbox
    /// must belong to this router.
    ///
    /// # Errors
    ///
    /// [`Error::Full`] or [`Error::Closed`], with the message.
    pub fn send_to_mailbox(
        &self,
        mailbox: &Mailbox<N>,
        msg: N::Message,
    ) -> Result<(), SendError<N::Message>> {
        mailbox.try_send(msg, &self.inner.normal_scheduler)
    }

    /// [`force_send`](Self::force_send) through a mailbox obtained from
    /// [`mailbox`](Self::mailbox). The mailbox must belong to this router.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], with the message.
    pub fn force_send_to_mailbox(
        &self,
        mailbox: &Mailbox<N>,
        msg: N::Message,
    ) -> Result<(), SendError<N::Message>> {
        mailbox.force_send(msg, &self.inner.normal_scheduler)
    }

    /// Sends `msg` to the control FSM, respecting its mailbox's capacity.
    ///
    /// # Errors
    ///
    /// [`Error::Full`] or [`Error::Closed`] (after shutdown), with the
    /// message.
    pub fn send_control(&self, msg: C::Message) -> Result<(), SendError<C::Message>> {
        self.inner
            .control
            .try_send(msg, &self.inner.control_scheduler)
    }

    /// Sends `msg` to the control FSM even if its mailbox is at capacity.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] (after shutdown), with the message.
    pub fn force_send_control(&self, msg: C::Message) -> Result<(), SendError<C::Message>> {
        self.inner
            .control
            .force_send(msg, &self.inner.control_scheduler)
    }

    /// Force-sends a message made by `make` to every registered normal FSM
    /// (ignoring capacity). Mailboxes closed meanwhile are skipped; their
    /// message is dropped.
    pub fn broadcast_normal(&self, mut make: impl FnMut() -> N::Message) {
        for shard in self.inner.shards.iter() {
            let map = shard.0.read();
            for mailbox in map.values() {
                // A closed mailbox is about to be unregistered; nothing to do.
                let _ = mailbox.force_send(make(), &self.inner.normal_scheduler);
            }
        }
    }

    /// Shuts the router down: every later send or register fails, every
    /// normal mailbox is unregistered and closed, and so is the control
    /// mailbox. Idle FSMs are dropped here; FSMs held by pollers are dropped
    /// when their poller lets go. Calling it again does nothing more.
    pub fn broadcast_shutdown(&self) {
        self.inner.shutdown.store(true, Ordering::Release);
        for shard in self.inner.shards.iter() {
            let drained: Vec<Mailbox<N>> = shard.0.write().drain().map(|(_, m)| m).collect();
            drained.iter().for_each(Mailbox::close);
        }
        self.inner.control.close();
    }

    /// Takes the FSM at `addr` out of its mailbox if it is idle with
    /// nothing queued, so the caller can handle it on its own thread
    /// instead of scheduling it onto the pool (a cheaper hand-over when the
    /// caller has the work in hand). While borrowed the FSM is as busy as
    /// if a poller held it: messages sent to it wait in its mailbox, in
    /// order, and no poller takes it. It goes back when the [`Borrowed`]
    /// is dropped or handed to [`give_back`](Self::give_back).
    ///
    /// `None` if no mailbox is registered at `addr`, or the FSM is busy,
    /// queued for a poller, has messages waiting, or its mailbox is closed.
    pub fn borrow_idle(&self, addr: u64) -> Option<Borrowed<N>> {
        let mailbox = self.shard(addr).read().get(&addr)?.clone();
        let mut fsm = mailbox.take_idle()?;
        fsm.set_mailbox(&mailbox);
        Some(Borrowed {
            fsm: Some(fsm),
            mailbox,
            scheduler: self.inner.normal_scheduler.clone(),
        })
    }

    /// Returns a borrowed FSM to its mailbox (the same as dropping it): it
    /// goes idle if nothing arrived while it was out, and is scheduled onto
    /// the pool (to handle what did) otherwise. A stopped FSM
    /// ([`Fsm::is_stopped`]) closes its mailbox and is dropped, as a poller
    /// would; so is an FSM whose mailbox was closed meanwhile.
    pub fn give_back(&self, borrowed: Borrowed<N>) {
        drop(borrowed);
    }

    pub(crate) fn normal_scheduler(&self) -> &NormalScheduler<N> {
        &self.inner.normal_scheduler
    }

    pub(crate) fn control_scheduler(&self) -> &ControlScheduler<N> {
        &self.inner.control_scheduler
    }

    fn not_found(&self, addr: u64) -> Error {
        if self.is_shutdown() {
            Error::Shutdown
        } else {
            Error::NotFound { addr }
        }
    }
}

#[cfg(test)]
mod tests;
