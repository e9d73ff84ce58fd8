//! State-transition tests for a single mailbox, with a scheduler that only
//! records what it is asked to schedule.

use std::cell::Cell;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

struct Probe {
    drops: Arc<AtomicUsize>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

impl Fsm for Probe {
    type Message = u32;

    fn is_stopped(&self) -> bool {
        false
    }
}

#[derive(Default)]
struct Recorder {
    scheduled: Cell<usize>,
}

impl Schedule<Probe> for Recorder {
    fn schedule(&self, _mailbox: &Mailbox<Probe>) {
        self.scheduled.set(self.scheduled.get() + 1);
    }
}

fn probe() -> (Box<Probe>, Arc<AtomicUsize>) {
    let drops = Arc::new(AtomicUsize::new(0));
    (
        Box::new(Probe {
            drops: Arc::clone(&drops),
        }),
        drops,
    )
}

fn send(mailbox: &Mailbox<Probe>, msg: u32, rec: &Recorder) {
    mailbox
        .try_send(msg, rec)
        .expect("open, unbounded mailbox accepts");
}

fn release_idle(mailbox: &Mailbox<Probe>, fsm: Box<Probe>, progress: usize) {
    assert!(matches!(mailbox.release(fsm, progress), Release::Idle));
}

#[test]
fn new_mailbox_is_idle_empty_and_unbounded() {
    let (fsm, _) = probe();
    let mailbox = Mailbox::new(fsm);
    assert_eq!(mailbox.state(), MailboxState::Idle);
    assert!(mailbox.is_empty());
    assert_eq!(mailbox.capacity(), None);
    assert_eq!(
        mailbox.buffer_capacity(),
        0,
        "no buffer before the first message"
    );
}

#[test]
fn first_send_schedules_once_later_sends_only_enqueue() {
    let (fsm, _) = probe();
    let mailbox = Mailbox::new(fsm);
    let rec = Recorder::default();
    for msg in 0..3 {
        send(&mailbox, msg, &rec);
    }
    assert_eq!(rec.scheduled.get(), 1);
    assert_eq!(mailbox.state(), MailboxState::Notified);
    assert_eq!(mailbox.len(), 3);
}

#[test]
fn drained_release_goes_idle_frees_buffer_and_rearms() {
    let (fsm, _) = probe();
    let mailbox = Mailbox::new(fsm);
    let rec = Recorder::default();
    send(&mailbox, 1, &rec);
    let fsm = mailbox.take_fsm().expect("notified mailbox holds its FSM");
    assert_eq!(Inbox::new(&mailbox).try_recv(), Some(1));
    release_idle(&mailbox, fsm, 0);
    assert_eq!(mailbox.state(), MailboxState::Idle);
    assert_eq!(mailbox.buffer_capacity(), 0, "idle mailbox keeps no buffer");
    send(&mailbox, 2, &rec);
    assert_eq!(rec.scheduled.get(), 2, "the next message wakes it again");
}

#[test]
fn release_after_a_late_message_keeps_the_fsm() {
    let (fsm, _) = probe();
    let mailbox = Mailbox::new(fsm);
    let rec = Recorder::default();
    send(&mailbox, 1, &rec);
    let fsm = mailbox.take_fsm().expect("fsm");
    assert_eq!(Inbox::new(&mailbox).try_recv(), Some(1));
    // Arrives after the handler looked, before the release.
    send(&mailbox, 2, &rec);
    assert_eq!(
        rec.scheduled.get(),
        1,
        "notified mailbox is not scheduled twice"
    );
    let Release::Kept(fsm) = mailbox.release(fsm, 0) else {
        panic!("a message arrived; the poller must keep the FSM");
    };
    assert_eq!(mailbox.state(), MailboxState::Notified);
    assert_eq!(Inbox::new(&mailbox).try_recv(), Some(2));
    release_idle(&mailbox, fsm, 0);
}

#[test]
fn release_at_progress_leaves_messages_for_the_next_wake_up() {
    let (fsm, _) = probe();
    let mailbox = Mailbox::new(fsm);
    let rec = Recorder::default();
    send(&mailbox, 1, &rec);
    send(&mailbox, 2, &rec);
    let fsm = mailbox.take_fsm().expect("fsm");
    assert_eq!(Inbox::new(&mailbox).try_recv(), Some(1));
    release_idle(&mailbox, fsm, 1);
    assert_eq!(mailbox.len(), 1);
    send(&mailbox, 3, &rec);
    assert_eq!(rec.scheduled.get(), 2);
    let inbox_mailbox = mailbox.clone();
    let inbox = Inbox::new(&inbox_mailbox);
    assert_eq!(inbox.try_recv(), Some(2), "left-behind message comes first");
    assert_eq!(inbox.try_recv(), Some(3));
}

#[test]
fn close_idle_drops_fsm_once_and_refuses_sends() {
    let (fsm, drops) = probe();
    let mailbox = Mailbox::new(fsm);
    let rec = Recorder::default();
    mailbox.close();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(mailbox.is_closed());
    let err = mailbox.try_send(9, &rec).expect_err("closed");
    assert!(matches!(err.error, Error::Closed));
    assert_eq!(err.msg, 9, "the refused message comes back");
    let err = mailbox.force_send(10, &rec).expect_err("closed");
    assert!(matches!(err.error, Error::Closed));
    mailbox.close();
    drop(mailbox);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "closing twice drops nothing more"
    );
    assert_eq!(rec.scheduled.get(), 0);
}

#[test]
fn close_while_held_drops_fsm_on_release() {
    let (fsm, drops) = probe();
    let mailbox = Mailbox::new(fsm);
    let rec = Recorder::default();
    send(&mailbox, 1, &rec);
    let fsm = mailbox.take_fsm().expect("fsm");
    mailbox.close();
    assert_eq!(drops.load(Ordering::SeqCst), 0, "the poller still holds it");
    assert!(mailbox.is_empty(), "queued messages are dropped on close");
    assert!(matches!(mailbox.release(fsm, 0), Release::Dropped));
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn close_while_queued_drops_now_and_poller_finds_nothing() {
    let (fsm, drops) = probe();
    let mailbox = Mailbox::new(fsm);
    let rec = Recorder::default();
    send(&mailbox, 1, &rec);
    mailbox.close();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(mailbox.take_fsm().is_none());
}

#[test]
fn reschedule_requeues_without_going_idle() {
    let (fsm, drops) = probe();
    let mailbox = Mailbox::new(fsm);
    let rec = Recorder::default();
    send(&mailbox, 1, &rec);
    let fsm = mailbox.take_fsm().expect("fsm");
    mailbox.reschedule(fsm, &rec);
    assert_eq!(rec.scheduled.get(), 2);
    assert_eq!(mailbox.state(), MailboxState::Notified);
    let fsm = mailbox
        .take_fsm()
        .expect("rescheduled FSM waits in the mailbox");
    mailbox.close();
    mailbox.reschedule(fsm, &rec);
    assert_eq!(rec.scheduled.get(), 2, "a closed mailbox is not requeued");
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn bounded_mailbox_reports_full_and_force_send_bypasses() {
    const CAP: usize = 2;
    let (fsm, _) = probe();
    let mailbox = Mailbox::bounded(fsm, NonZeroUsize::new(CAP).expect("non-zero"));
    let rec = Recorder::default();
    assert_eq!(mailbox.capacity(), Some(CAP));
    send(&mailbox, 1, &rec);
    send(&mailbox, 2, &rec);
    let err = mailbox.try_send(3, &rec).expect_err("full");
    assert!(
        matches!(err.error, Error::Full { capacity: CAP }),
        "{}",
        err.error
    );
    assert_eq!(err.into_msg(), 3);
    mailbox.force_send(4, &rec).expect("force ignores capacity");
    assert_eq!(mailbox.len(), CAP + 1);
    assert_eq!(rec.scheduled.get(), 1);
}

#[test]
fn recv_batch_drains_in_order_up_to_max() {
    let (fsm, _) = probe();
    let mailbox = Mailbox::new(fsm);
    let rec = Recorder::default();
    for msg in 1..=5 {
        send(&mailbox, msg, &rec);
    }
    let inbox = Inbox::new(&mailbox);
    let mut buf = vec![0];
    assert_eq!(inbox.recv_batch(&mut buf, 3), 3);
    assert_eq!(buf, [0, 1, 2, 3], "appends, oldest first");
    assert_eq!(inbox.len(), 2);
    assert_eq!(inbox.try_recv(), Some(4));
}

/// A sender thread races a poller thread that drains and releases as fast as
/// it can. A lost wake-up would leave messages unreceived (the poller would
/// wait forever); a double schedule would make `take_fsm` find no FSM.
#[test]
fn racing_send_and_release_lose_no_wake_up() {
    const MESSAGES: u32 = 20_000;
    /// Failure guard only: a healthy run finishes in milliseconds.
    const STUCK: std::time::Duration = std::time::Duration::from_secs(20);

    struct ChannelScheduler(crossbeam_channel::Sender<Mailbox<Probe>>);
    impl Schedule<Probe> for ChannelScheduler {
        fn schedule(&self, mailbox: &Mailbox<Probe>) {
            self.0.send(mailbox.clone()).expect("poller alive");
        }
    }

    let (tx, rx) = crossbeam_channel::unbounded::<Mailbox<Probe>>();
    let (fsm, drops) = probe();
    let mailbox = Mailbox::new(fsm);
    let poller = std::thread::spawn(move || {
        let mut received = Vec::with_capacity(MESSAGES as usize);
        let mut schedules = 0;
        while received.len() < MESSAGES as usize {
            let mailbox = rx.recv_timeout(STUCK).expect("lost wake-up: no schedule");
            schedules += 1;
            let mut fsm = mailbox.take_fsm().expect("double schedule: FSM missing");
            loop {
                while let Some(msg) = Inbox::new(&mailbox).try_recv() {
                    received.push(msg);
                }
                match mailbox.release(fsm, 0) {
                    Release::Kept(back) => fsm = back,
                    Release::Idle => break,
                    Release::Dropped => panic!("never closed"),
                }
            }
        }
        (received, schedules)
    });
    let scheduler = ChannelScheduler(tx);
    for msg in 0..MESSAGES {
        mailbox.try_send(msg, &scheduler).expect("open");
    }
    let (received, schedules) = poller.join().expect("poller thread");
    assert_eq!(received, (0..MESSAGES).collect::<Vec<_>>());
    assert!((1..=MESSAGES as usize).contains(&schedules));
    assert_eq!(mailbox.state(), MailboxState::Idle);
    drop(mailbox);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}
