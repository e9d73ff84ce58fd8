//! Router tests without pollers: the shared queue is inspected directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::Receiver;

use super::*;
use crate::MailboxState;

struct Node {
    drops: Arc<AtomicUsize>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

impl Fsm for Node {
    type Message = u64;

    fn is_stopped(&self) -> bool {
        false
    }
}

struct Fixture {
    router: Router<Node, Node>,
    tasks: Receiver<Task<Node>>,
    drops: Arc<AtomicUsize>,
}

impl Fixture {
    fn new() -> Self {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, tasks) = crossbeam_channel::unbounded();
        let router = Router::new(Mailbox::new(node(&drops)), tx);
        Fixture {
            router,
            tasks,
            drops,
        }
    }

    fn mailbox(&self) -> Mailbox<Node> {
        Mailbox::new(node(&self.drops))
    }

    fn drops(&self) -> usize {
        self.drops.load(Ordering::SeqCst)
    }

    fn queued(&self) -> Vec<Task<Node>> {
        self.tasks.try_iter().collect()
    }
}

fn node(drops: &Arc<AtomicUsize>) -> Box<Node> {
    Box::new(Node {
        drops: Arc::clone(drops),
    })
}

#[test]
fn send_to_registered_address_schedules_it_once() {
    let f = Fixture::new();
    f.router.register(5, f.mailbox()).expect("register");
    f.router.send(5, 1).expect("send");
    f.router.send(5, 2).expect("send");
    let tasks = f.queued();
    assert_eq!(tasks.len(), 1);
    assert!(matches!(&tasks[0], Task::Normal(m) if m.len() == 2));
}

#[test]
fn unknown_address_hands_the_message_back() {
    let f = Fixture::new();
    let TrySend::Unknown(msg) = f.router.try_send(42, 7) else {
        panic!("nothing is registered at 42");
    };
    assert_eq!(msg, 7);
    let err = f.router.send(42, 8).expect_err("unknown");
    assert!(matches!(err.error, Error::NotFound { addr: 42 }));
    assert_eq!(err.msg, 8);
    let err = f.router.force_send(42, 9).expect_err("unknown");
    assert!(matches!(err.error, Error::NotFound { addr: 42 }));
    // The caller reroutes to the control FSM.
    f.router.send_control(msg).expect("control accepts");
    assert!(matches!(f.queued().as_slice(), [Task::Control]));
}

#[test]
fn register_replaces_and_closes_the_old_mailbox() {
    let f = Fixture::new();
    let old = f.mailbox();
    f.router.register(1, old.clone()).expect("register");
    f.router.register(1, f.mailbox()).expect("re-register");
    assert!(old.is_closed());
    assert_eq!(f.drops(), 1, "the replaced FSM is dropped");
    assert_eq!(f.router.normal_count(), 1);
    let current = f.router.mailbox(1).expect("registered");
    assert!(!current.same_as(&old));
}

#[test]
fn close_unregisters_closes_and_drops_once() {
    let f = Fixture::new();
    let mailbox = f.mailbox();
    f.router.register(3, mailbox.clone()).expect("register");
    assert!(f.router.close(3));
    assert!(!f.router.close(3), "second close finds nothing");
    assert!(mailbox.is_closed());
    assert_eq!(f.drops(), 1);
    let err = f.router.send_to_mailbox(&mailbox, 1).expect_err("closed");
    assert!(matches!(err.error, Error::Closed));
    assert!(matches!(
        f.router.send(3, 1).map_err(|e| e.error),
        Err(Error::NotFound { addr: 3 })
    ));
}

#[test]
fn register_all_registers_every_mailbox() {
    const N: u64 = 1_000;
    let f = Fixture::new();
    f.router
        .register_all((0..N).map(|addr| (addr, f.mailbox())))
        .expect("register all");
    assert_eq!(f.router.normal_count(), N as usize);
    for addr in [0, N / 2, N - 1] {
        assert!(f.router.mailbox(addr).is_some());
    }
}

#[test]
fn bounded_mailbox_full_is_a_typed_error_with_the_message() {
    let f = Fixture::new();
    let cap = std::num::NonZeroUsize::MIN;
    f.router
        .register(1, Mailbox::bounded(node(&f.drops), cap))
        .expect("register");
    f.router.send(1, 10).expect("first fits");
    let err = f.router.send(1, 11).expect_err("full");
    assert!(matches!(err.error, Error::Full { capacity: 1 }));
    assert_eq!(err.msg, 11);
    let TrySend::Rejected(err) = f.router.try_send(1, 12) else {
        panic!("a full mailbox rejects");
    };
    assert!(matches!(err.error, Error::Full { .. }));
    f.router.force_send(1, 13).expect("force ignores capacity");
    assert_eq!(f.router.mailbox(1).map(|m| m.len()), Some(2));
}

#[test]
fn broadcast_normal_reaches_every_mailbox_once() {
    const N: u64 = 100;
    let f = Fixture::new();
    f.router
        .register_all((0..N).map(|addr| (addr, f.mailbox())))
        .expect("register all");
    let mut made = 0;
    f.router.broadcast_normal(|| {
        made += 1;
        made
    });
    assert_eq!(made, N);
    for addr in 0..N {
        assert_eq!(f.router.mailbox(addr).map(|m| m.len()), Some(1));
    }
    assert_eq!(f.queued().len(), N as usize, "each idle FSM scheduled once");
}

#[test]
fn broadcast_shutdown_closes_everything_and_refuses_new_work() {
    const N: u64 = 50;
    let f = Fixture::new();
    f.router
        .register_all((0..N).map(|addr| (addr, f.mailbox())))
        .expect("register all");
    f.router.send(0, 1).expect("send");
    f.router.broadcast_shutdown();
    assert!(f.router.is_shutdown());
    assert_eq!(
        f.drops(),
        N as usize + 1,
        "every normal FSM and the control FSM"
    );
    assert_eq!(f.router.normal_count(), 0);
    assert!(matches!(
        f.router.send(0, 1).map_err(|e| e.error),
        Err(Error::Shutdown)
    ));
    assert!(matches!(
        f.router.send_control(1).map_err(|e| e.error),
        Err(Error::Closed)
    ));
    assert!(matches!(
        f.router.register(7, f.mailbox()),
        Err(Error::Shutdown)
    ));
    assert_eq!(
        f.drops(),
        N as usize + 2,
        "a refused registration drops its FSM"
    );
    f.router.broadcast_shutdown();
    assert_eq!(f.drops(), N as usize + 2);
}

#[test]
fn shard_index_is_in_range_for_extreme_addresses() {
    let f = Fixture::new();
    for addr in [0, 1, u64::MAX, u64::MAX / 2, 1 << 40, (7 << 40) | 12_345] {
        f.router.register(addr, f.mailbox()).expect("register");
        assert!(f.router.mailbox(addr).is_some(), "{addr}");
    }
}

#[test]
fn an_idle_fsm_is_borrowed_and_goes_idle_again_when_given_back() {
    let f = Fixture::new();
    let mailbox = f.mailbox();
    f.router.register(4, mailbox.clone()).expect("register");
    let borrowed = f.router.borrow_idle(4).expect("idle with nothing queued");
    assert_eq!(
        mailbox.state(),
        MailboxState::Notified,
        "busy while borrowed"
    );
    assert!(
        f.router.borrow_idle(4).is_none(),
        "a borrowed FSM is not lent twice"
    );
    f.router.give_back(borrowed);
    assert_eq!(mailbox.state(), MailboxState::Idle);
    assert!(f.queued().is_empty(), "nothing arrived: nothing scheduled");
    assert_eq!(f.drops(), 0);
    assert!(f.router.borrow_idle(4).is_some_and(|b| {
        f.router.give_back(b);
        true
    }));
}

#[test]
fn a_message_sent_to_a_borrowed_fsm_waits_and_schedules_it_on_give_back() {
    let f = Fixture::new();
    f.router.register(6, f.mailbox()).expect("register");
    let borrowed = f.router.borrow_idle(6).expect("idle");
    f.router.send(6, 11).expect("send");
    assert!(
        f.queued().is_empty(),
        "a borrowed FSM is busy: the send only enqueues"
    );
    f.router.give_back(borrowed);
    let tasks = f.queued();
    assert_eq!(tasks.len(), 1, "scheduled once, to handle what arrived");
    assert!(matches!(&tasks[0], Task::Normal(m) if m.len() == 1));
}

#[test]
fn busy_or_unknown_fsms_are_not_lent() {
    let f = Fixture::new();
    assert!(f.router.borrow_idle(9).is_none(), "nothing registered");
    f.router.register(9, f.mailbox()).expect("register");
    f.router.send(9, 1).expect("send");
    assert!(
        f.router.borrow_idle(9).is_none(),
        "queued for a poller, with a message waiting"
    );
    assert_eq!(f.queued().len(), 1);
}

#[test]
fn a_mailbox_closed_while_borrowed_drops_the_fsm_on_give_back() {
    let f = Fixture::new();
    let mailbox = f.mailbox();
    f.router.register(2, mailbox.clone()).expect("register");
    let borrowed = f.router.borrow_idle(2).expect("idle");
    assert!(f.router.close(2));
    assert_eq!(f.drops(), 0, "the borrower still holds it");
    f.router.give_back(borrowed);
    assert_eq!(f.drops(), 1);
    assert!(mailbox.is_closed());
    assert!(f.queued().is_empty());
}

#[test]
fn a_dropped_borrow_goes_back_and_handles_what_arrived() {
    let f = Fixture::new();
    let mailbox = f.mailbox();
    f.router.register(8, mailbox.clone()).expect("register");
    let borrowed = f.router.borrow_idle(8).expect("idle");
    f.router.send(8, 3).expect("send");
    // A borrower that forgets (or unwinds) still gives it back.
    drop(borrowed);
    let tasks = f.queued();
    assert_eq!(tasks.len(), 1, "scheduled to handle the message");
    assert!(matches!(&tasks[0], Task::Normal(m) if m.len() == 1));
    assert_eq!(f.drops(), 0);

    f.router.register(7, f.mailbox()).expect("register");
    drop(f.router.borrow_idle(7).expect("idle"));
    let again = f.router.borrow_idle(7);
    assert!(again.is_some(), "idle again after a quiet drop");
}

#[test]
fn a_borrow_dropped_by_a_panicking_borrower_closes_its_mailbox() {
    let f = Fixture::new();
    let mailbox = f.mailbox();
    f.router.register(12, mailbox.clone()).expect("register");
    let router = f.router.clone();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _borrowed = router.borrow_idle(12).expect("idle");
        panic!("a borrower's bug, half way through handling the FSM");
    }));
    assert!(unwound.is_err());
    assert!(mailbox.is_closed(), "a half-handled FSM is not handed on");
    assert_eq!(f.drops(), 1);
    assert!(f.queued().is_empty());
}
