//! A counting FSM and handler shared by the integration tests.
//!
//! Every message carries a guard that counts it as "dropped unhandled" unless
//! the handler consumed it or the sender got it back; every FSM counts its
//! creations and drops per address. Tests assert on these counters.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use flotilla_router::{
    Batch, BatchSystem, Config, Fsm, HandleResult, Inbox, Mailbox, PollHandler, Router,
};

/// Failure guard for blocking waits: a healthy run needs a tiny fraction of
/// it. Never used to assert on speed.
pub const STUCK: Duration = Duration::from_secs(60);

/// Per-address counters, plus one slot for the control FSM at `control_addr`.
pub struct Stats {
    pub sent: Vec<AtomicU64>,
    pub handled: Vec<AtomicU64>,
    pub dropped_unhandled: Vec<AtomicU64>,
    pub created: Vec<AtomicU64>,
    pub fsm_drops: Vec<AtomicU64>,
    pub order_violations: AtomicU64,
    pub handlers_dropped: AtomicUsize,
    /// Current round of each poller, for round-count assertions.
    pub rounds: AtomicU64,
    pub control_addr: u64,
}

impl Stats {
    pub fn new(addrs: u64) -> Arc<Self> {
        let slots = usize::try_from(addrs + 1).expect("test sizes fit usize");
        let vec = || (0..slots).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Arc::new(Stats {
            sent: vec(),
            handled: vec(),
            dropped_unhandled: vec(),
            created: vec(),
            fsm_drops: vec(),
            order_violations: AtomicU64::new(0),
            handlers_dropped: AtomicUsize::new(0),
            rounds: AtomicU64::new(0),
            control_addr: addrs,
        })
    }

    pub fn get(counters: &[AtomicU64], addr: u64) -> u64 {
        counters[slot(addr)].load(Ordering::SeqCst)
    }
}

fn slot(addr: u64) -> usize {
    usize::try_from(addr).expect("test addresses fit usize")
}

fn bump(counters: &[AtomicU64], addr: u64) {
    counters[slot(addr)].fetch_add(1, Ordering::SeqCst);
}

/// Counts a message as dropped unhandled unless disarmed.
pub struct Guard {
    stats: Arc<Stats>,
    addr: u64,
    armed: bool,
}

impl Guard {
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed {
            bump(&self.stats.dropped_unhandled, self.addr);
        }
    }
}

pub enum Msg {
    /// The `seq`-th message from sender `sender` to this address.
    Data {
        sender: usize,
        seq: u64,
        guard: Guard,
    },
    /// Reply with the address once every earlier message was handled.
    Flush(Sender<u64>),
    /// Make the FSM report itself stopped.
    Stop,
}

impl Msg {
    pub fn data(stats: &Arc<Stats>, addr: u64, sender: usize, seq: u64) -> Msg {
        Msg::Data {
            sender,
            seq,
            guard: Guard {
                stats: Arc::clone(stats),
                addr,
                armed: true,
            },
        }
    }

    /// Gives a refused message back: it was never sent, so it must not count
    /// as dropped.
    pub fn refused(self) {
        if let Msg::Data { guard, .. } = self {
            guard.disarm();
        }
    }
}

pub struct TestFsm {
    pub addr: u64,
    stats: Arc<Stats>,
    /// Last sequence number seen from each sender.
    last_seq: Vec<Option<u64>>,
    stopped: bool,
    /// Reports this FSM's drop, if set.
    on_drop: Option<Sender<u64>>,
}

impl TestFsm {
    pub fn new(stats: &Arc<Stats>, addr: u64, senders: usize) -> Box<Self> {
        bump(&stats.created, addr);
        Box::new(TestFsm {
            addr,
            stats: Arc::clone(stats),
            last_seq: vec![None; senders],
            stopped: false,
            on_drop: None,
        })
    }

    pub fn reporting_drop(mut self: Box<Self>, tx: Sender<u64>) -> Box<Self> {
        self.on_drop = Some(tx);
        self
    }

    pub fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Data { sender, seq, guard } => {
                guard.disarm();
                let last = self.last_seq.get_mut(sender).expect("known sender");
                if last.is_some_and(|l| seq <= l) {
                    self.stats.order_violations.fetch_add(1, Ordering::SeqCst);
                }
                *last = Some(seq);
                bump(&self.stats.handled, self.addr);
            }
            Msg::Flush(reply) => {
                let _ = reply.send(self.addr);
            }
            Msg::Stop => self.stopped = true,
        }
    }
}

impl Drop for TestFsm {
    fn drop(&mut self) {
        bump(&self.stats.fsm_drops, self.addr);
        if let Some(tx) = &self.on_drop {
            let _ = tx.send(self.addr);
        }
    }
}

impl Fsm for TestFsm {
    type Message = Msg;

    fn is_stopped(&self) -> bool {
        self.stopped
    }
}

/// One handled message, reported by `TestHandler` when `events` is set.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub addr: u64,
    pub round: u64,
}

/// Handles at most `budget` messages per FSM per round, answering
/// `KeepProcessing` when it ran out with messages left.
pub struct TestHandler {
    pub stats: Arc<Stats>,
    pub budget: usize,
    pub events: Option<Sender<Event>>,
    /// An FSM that never yields: one message per round, always
    /// `KeepProcessing`.
    pub hot: Option<u64>,
    round: u64,
}

impl TestHandler {
    pub fn new(stats: &Arc<Stats>, budget: usize) -> Self {
        TestHandler {
            stats: Arc::clone(stats),
            budget,
            events: None,
            hot: None,
            round: 0,
        }
    }

    /// Reports every handled message on `events`.
    pub fn with_events(mut self, events: Sender<Event>) -> Self {
        self.events = Some(events);
        self
    }

    /// Makes `addr` a hot FSM that never yields.
    pub fn with_hot(mut self, addr: u64) -> Self {
        self.hot = Some(addr);
        self
    }

    fn drain(&mut self, fsm: &mut TestFsm, inbox: &Inbox<'_, TestFsm>) -> HandleResult {
        let hot = self.hot == Some(fsm.addr);
        let budget = if hot { 1 } else { self.budget };
        for _ in 0..budget {
            let Some(msg) = inbox.try_recv() else {
                break;
            };
            fsm.handle(msg);
            if let Some(events) = &self.events {
                let _ = events.send(Event {
                    addr: fsm.addr,
                    round: self.round,
                });
            }
        }
        if inbox.is_empty() && !hot {
            HandleResult::stop_at(0, false)
        } else {
            HandleResult::KeepProcessing
        }
    }
}

impl Drop for TestHandler {
    fn drop(&mut self) {
        self.stats.handlers_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl PollHandler<TestFsm, TestFsm> for TestHandler {
    fn begin(&mut self, _batch_size: usize) {
        self.round = self.stats.rounds.fetch_add(1, Ordering::SeqCst) + 1;
    }

    fn handle_control(
        &mut self,
        control: &mut TestFsm,
        inbox: &Inbox<'_, TestFsm>,
    ) -> HandleResult {
        self.drain(control, inbox)
    }

    fn handle_normal(&mut self, normal: &mut TestFsm, inbox: &Inbox<'_, TestFsm>) -> HandleResult {
        self.drain(normal, inbox)
    }

    fn end(&mut self, _batch: &mut Batch<'_, TestFsm>) {}
}

/// A system with `addrs` normal FSMs registered at `0..addrs` (not yet
/// spawned), expecting messages from up to `senders` sender threads.
pub fn system(
    cfg: &Config,
    stats: &Arc<Stats>,
    addrs: u64,
    senders: usize,
) -> (Router<TestFsm, TestFsm>, BatchSystem<TestFsm, TestFsm>) {
    let control = Mailbox::new(TestFsm::new(stats, stats.control_addr, senders));
    let (router, system) = BatchSystem::new(cfg, control).expect("valid config");
    router
        .register_all(
            (0..addrs).map(|addr| (addr, Mailbox::new(TestFsm::new(stats, addr, senders)))),
        )
        .expect("not shut down");
    (router, system)
}

/// Sends a flush to each address and waits for every reply: afterwards every
/// message sent to them before the call has been handled.
pub fn flush(router: &Router<TestFsm, TestFsm>, addrs: impl IntoIterator<Item = u64>) {
    let (tx, rx): (Sender<u64>, Receiver<u64>) = crossbeam_channel::unbounded();
    let mut expected = 0;
    for addr in addrs {
        if router.force_send(addr, Msg::Flush(tx.clone())).is_ok() {
            expected += 1;
        }
    }
    for _ in 0..expected {
        rx.recv_timeout(STUCK).expect("flush reply");
    }
}

pub fn config(pool_size: usize, max_batch_size: usize, reschedule: Duration) -> Config {
    Config {
        pool_size,
        max_batch_size,
        reschedule_duration: reschedule,
    }
}
