//! Regression tests for the "lost wake-up": a message that reaches an FSM's
//! mailbox while its handler still holds the FSM, after the handler's last
//! `try_recv()` came back empty, must get the FSM polled again.
//!
//! `Mailbox::release` puts the FSM back to idle unless the queue holds more
//! than the `progress` the handler reported. A handler that drained its
//! inbox and then reported `stop_at(inbox.len(), ..)` counted such a late
//! message as seen, and the FSM went idle with it queued: nothing polls an
//! idle FSM until the next send. The fixed handlers report `stop_at(0, ..)`
//! once `try_recv()` returned `None`.
//!
//! The late message is made deterministic here: the handler sends it to its
//! own mailbox through the router at exactly the point where a concurrent
//! sender would race (while it holds the FSM, after draining). No other
//! sender exists, so whether the message is ever handled depends on the
//! handler's `progress` alone.
//!
//! Also here: [`Router::try_send_within`], the per-call queue bound that
//! lets a store's raft messages queue past the capacity that bounds client
//! commands.

mod common;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Stats, TestFsm, TestHandler, config, flush};
use flotilla_router::{
    Batch, BatchSystem, Error, Fsm, HandleResult, Inbox, Mailbox, MailboxState, PollHandler,
    Router, TrySend,
};

/// Address of the one normal FSM.
const ADDR: u64 = 1;
/// Failure guard of every wait: a healthy run needs a tiny fraction of it.
/// Never used to assert on speed.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long the control case watches a stranded message stay unhandled.
const STRANDED_FOR: Duration = Duration::from_millis(300);
/// Trigger/echo cycles per fixed handler shape.
const CYCLES: u64 = 200;

#[derive(Debug)]
enum Msg {
    /// Handle it, then send an `Echo` to yourself at the racy point.
    Trigger,
    /// The self-sent message; handling it sends nothing.
    Echo,
}

/// What the FSMs handled, shared with the test thread.
#[derive(Default)]
struct Counts {
    triggers: AtomicU64,
    echoes: AtomicU64,
}

/// A peer-like FSM: it remembers that a trigger asked for an echo.
struct Node {
    counts: Arc<Counts>,
    echo_due: bool,
}

impl Fsm for Node {
    type Message = Msg;

    fn is_stopped(&self) -> bool {
        false
    }
}

impl Node {
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Trigger => {
                self.counts.triggers.fetch_add(1, Ordering::SeqCst);
                self.echo_due = true;
            }
            Msg::Echo => {
                self.counts.echoes.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Where the self-send happens, and what the handler reports.
#[derive(Clone, Copy)]
enum Shape {
    /// The raft peer: drain the inbox, then "collect the Ready" (the
    /// self-send happens there), then `stop_at(0)`.
    Peer,
    /// The apply delegate: the self-send happens right after `try_recv()`
    /// returned `None`, then `stop_at(0)`.
    Apply,
    /// The old, buggy handler: like `Apply`, but reports
    /// `stop_at(inbox.len())` after the self-send.
    StopAtLen,
}

struct Handler {
    router: Router<Node, Node>,
    shape: Shape,
}

impl Handler {
    /// Sends the due echo to the FSM's own mailbox while the poller holds it.
    fn self_send(&self, fsm: &mut Node) {
        if std::mem::take(&mut fsm.echo_due) {
            self.router
                .send(ADDR, Msg::Echo)
                .map_err(|e| e.error)
                .expect("own mailbox is open");
        }
    }
}

impl PollHandler<Node, Node> for Handler {
    fn begin(&mut self, _batch_size: usize) {}

    fn handle_control(&mut self, _: &mut Node, inbox: &Inbox<'_, Node>) -> HandleResult {
        while inbox.try_recv().is_some() {}
        HandleResult::stop_at(0, true)
    }

    fn handle_normal(&mut self, fsm: &mut Node, inbox: &Inbox<'_, Node>) -> HandleResult {
        match self.shape {
            Shape::Peer => {
                while let Some(msg) = inbox.try_recv() {
                    fsm.handle(msg);
                }
                // "Collect the Ready": a message for this peer arrives now.
                self.self_send(fsm);
                HandleResult::stop_at(0, false)
            }
            Shape::Apply | Shape::StopAtLen => loop {
                match inbox.try_recv() {
                    Some(msg) => fsm.handle(msg),
                    None => {
                        // A message arrives right after the inbox ran dry.
                        self.self_send(fsm);
                        let progress = match self.shape {
                            Shape::StopAtLen => inbox.len(),
                            _ => 0,
                        };
                        return HandleResult::stop_at(progress, false);
                    }
                }
            },
        }
    }

    fn end(&mut self, _batch: &mut Batch<'_, Node>) {}
}

/// A running system of two pollers with one `Node` at [`ADDR`], handled
/// with `shape`.
fn start(shape: Shape) -> (Router<Node, Node>, BatchSystem<Node, Node>, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let node = |counts: &Arc<Counts>| {
        Box::new(Node {
            counts: Arc::clone(counts),
            echo_due: false,
        })
    };
    let control = Mailbox::new(node(&Arc::new(Counts::default())));
    let (router, mut system) =
        BatchSystem::new(&config(2, 8, Duration::from_millis(5)), control).expect("valid config");
    router
        .register(ADDR, Mailbox::new(node(&counts)))
        .expect("not shut down");
    let handler_router = router.clone();
    system
        .spawn("lost-wakeup", move |_| Handler {
            router: handler_router.clone(),
            shape,
        })
        .expect("spawn");
    (router, system, counts)
}

/// Polls `counter` until it reaches `want` or [`DEADLINE`] passes; returns
/// the last value seen.
fn wait_for(counter: &AtomicU64, want: u64) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let seen = counter.load(Ordering::SeqCst);
        if seen >= want || Instant::now() >= deadline {
            return seen;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// Sends [`CYCLES`] triggers one after another; each one's self-sent echo
/// must be handled (the FSM rescheduled) before the next trigger goes out,
/// so no later send can rescue a stranded echo.
fn assert_every_echo_is_handled(shape: Shape) {
    let (router, mut system, counts) = start(shape);
    for cycle in 1..=CYCLES {
        router
            .send(ADDR, Msg::Trigger)
            .map_err(|e| e.error)
            .expect("send trigger");
        let echoes = wait_for(&counts.echoes, cycle);
        assert_eq!(
            echoes, cycle,
            "cycle {cycle}: the self-sent echo was never handled (lost wake-up)"
        );
    }
    assert_eq!(counts.triggers.load(Ordering::SeqCst), CYCLES);
    let mailbox = router.mailbox(ADDR).expect("registered");
    assert_eq!(mailbox.len(), 0, "nothing is left queued");
    system.shutdown().expect("clean shutdown");
}

/// Raft-peer shape: a message sent to the peer's own mailbox while the
/// handler collects its Ready (after draining) is handled, because the
/// handler reports `stop_at(0, false)`.
#[test]
fn peer_shape_self_send_after_drain_is_handled() {
    assert_every_echo_is_handled(Shape::Peer);
}

/// Apply-delegate shape: a message sent right after `try_recv()` returned
/// `None` is handled, because the handler reports `stop_at(0, false)`.
#[test]
fn apply_shape_self_send_after_empty_try_recv_is_handled() {
    assert_every_echo_is_handled(Shape::Apply);
}

/// Control case documenting the bug: the same late message, reported as
/// seen through `stop_at(inbox.len(), false)`, leaves the FSM idle with the
/// message queued and unhandled (observed for [`STRANDED_FOR`] with no
/// other sender), until an unrelated send wakes the FSM.
#[test]
fn stop_at_inbox_len_strands_the_late_message() {
    let (router, mut system, counts) = start(Shape::StopAtLen);
    let mailbox = router.mailbox(ADDR).expect("registered");
    router
        .send(ADDR, Msg::Trigger)
        .map_err(|e| e.error)
        .expect("send trigger");
    assert_eq!(wait_for(&counts.triggers, 1), 1, "trigger handled");
    // The poller releases the FSM after the round; wait until it did.
    let deadline = Instant::now() + DEADLINE;
    while mailbox.state() != MailboxState::Idle && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(mailbox.state(), MailboxState::Idle, "FSM released");
    // Idle, yet the echo is queued: nothing will poll it. Deterministic:
    // the handler sent the echo before it returned, so it was queued when
    // `release` compared the queue with the reported progress (1).
    assert_eq!(mailbox.len(), 1, "the echo is stranded in the queue");
    thread::sleep(STRANDED_FOR);
    assert_eq!(
        counts.echoes.load(Ordering::SeqCst),
        0,
        "echo never handled"
    );
    assert_eq!(mailbox.state(), MailboxState::Idle);
    assert_eq!(mailbox.len(), 1);

    // The next send wakes the FSM, and the stranded echo goes with it.
    router
        .send(ADDR, Msg::Echo)
        .map_err(|e| e.error)
        .expect("send echo");
    assert_eq!(wait_for(&counts.echoes, 2), 2, "both echoes handled");
    system.shutdown().expect("clean shutdown");
}

/// `try_send_within` bounds the queue by its own `limit`, not the
/// mailbox's capacity: a bounded mailbox (capacity 2) that refuses `send`
/// with two messages queued takes two more through `try_send_within(.., 4)`,
/// then refuses with `Error::Full { capacity: 4 }` and hands the message
/// back. Nothing is polled meanwhile (the pollers are not spawned yet);
/// afterwards all four queued messages are delivered, none lost.
#[test]
fn try_send_within_queues_past_capacity_up_to_its_limit() {
    const CAPACITY: usize = 2;
    const LIMIT: usize = 4;
    let stats = Stats::new(1);
    let control = Mailbox::new(TestFsm::new(&stats, stats.control_addr, 1));
    let (router, mut system) =
        BatchSystem::new(&config(1, 8, Duration::from_millis(5)), control).expect("valid config");
    let cap = NonZeroUsize::new(CAPACITY).expect("non-zero");
    router
        .register(0, Mailbox::bounded(TestFsm::new(&stats, 0, 1), cap))
        .expect("not shut down");
    let mailbox = router.mailbox(0).expect("registered");
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        common::Msg::data(&stats, 0, 0, seq)
    };

    for _ in 0..CAPACITY {
        router.send(0, next()).map_err(|e| e.error).expect("room");
    }
    let refused = router.send(0, next()).expect_err("mailbox full");
    assert!(matches!(refused.error, Error::Full { capacity: CAPACITY }));
    refused.into_msg().refused();

    for _ in CAPACITY..LIMIT {
        assert!(matches!(
            router.try_send_within(0, next(), LIMIT),
            TrySend::Sent
        ));
    }
    assert_eq!(mailbox.len(), LIMIT);
    match router.try_send_within(0, next(), LIMIT) {
        TrySend::Rejected(e) => {
            assert!(
                matches!(e.error, Error::Full { capacity: LIMIT }),
                "{:?}",
                e.error
            );
            e.into_msg().refused();
        }
        TrySend::Sent => panic!("sent past the limit"),
        TrySend::Unknown(_) => panic!("address unknown"),
    }
    // An unknown address hands the message back as `Unknown`.
    match router.try_send_within(99, next(), LIMIT) {
        TrySend::Unknown(msg) => msg.refused(),
        _ => panic!("no mailbox at 99"),
    }
    assert_eq!(mailbox.len(), LIMIT, "refusals queued nothing");
    // The plain capacity still refuses while more than it is queued.
    let refused = router.send(0, next()).expect_err("still full");
    assert!(matches!(refused.error, Error::Full { capacity: CAPACITY }));
    refused.into_msg().refused();

    system
        .spawn("within", |_| TestHandler::new(&stats, 64))
        .expect("spawn");
    flush(&router, [0]);
    assert_eq!(Stats::get(&stats.handled, 0), LIMIT as u64);
    assert_eq!(Stats::get(&stats.dropped_unhandled, 0), 0);
    assert_eq!(stats.order_violations.load(Ordering::SeqCst), 0);
    system.shutdown().expect("clean shutdown");
}
