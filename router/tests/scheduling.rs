//! Who gets polled when: fairness towards a hot FSM, the handler lifecycle,
//! stopped FSMs, and shutdown.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use common::{Event, Msg, STUCK, Stats, TestFsm, TestHandler, config, flush, system};
use crossbeam_channel::{Receiver, Sender};
use flotilla_router::{Batch, Error, HandleResult, Inbox, Mailbox, MailboxState, PollHandler};

/// Never reached by the tests: a reschedule duration that disables
/// rescheduling.
const NEVER: Duration = Duration::from_secs(3_600);

/// First round in which each address handled a message.
fn first_rounds(events: &Receiver<Event>, addrs: u64) -> Vec<Option<u64>> {
    let mut first = vec![None; addrs as usize];
    for e in events.try_iter() {
        first[e.addr as usize].get_or_insert(e.round);
    }
    first
}

#[test]
fn busy_fsm_is_handed_back_so_queued_fsms_get_a_turn() {
    const HOT: u64 = 0;
    const COLD: u64 = 3;
    let stats = Stats::new(COLD + 1);
    // One poller, one FSM per round: without rescheduling the hot FSM, which
    // never yields, would hold the only slot forever.
    let (router, mut system) = system(&config(1, 1, Duration::ZERO), &stats, COLD + 1, 1);
    for seq in 0..10 {
        router
            .send(HOT, Msg::data(&stats, HOT, 0, seq))
            .map_err(|e| e.error)
            .expect("send");
    }
    for addr in 1..=COLD {
        router
            .send(addr, Msg::data(&stats, addr, 0, 0))
            .map_err(|e| e.error)
            .expect("send");
    }
    let (tx, events) = crossbeam_channel::unbounded();
    system
        .spawn("hot", |_| {
            TestHandler::new(&stats, 64)
                .with_events(tx.clone())
                .with_hot(HOT)
        })
        .expect("spawn");
    flush(&router, 1..=COLD);

    let first = first_rounds(&events, COLD + 1);
    assert_eq!(first[HOT as usize], Some(1));
    for addr in 1..=COLD {
        let round = first[addr as usize].expect("cold FSM handled");
        // Queued behind the hot FSM and the colder ones before it, nothing more.
        assert!(round <= addr + 1, "FSM {addr} waited until round {round}");
    }
    system.shutdown().expect("clean shutdown");
    assert_eq!(Stats::get(&stats.fsm_drops, HOT), 1);
}

#[test]
fn without_rescheduling_a_flooded_fsm_keeps_the_only_slot() {
    // The contrast to the test above: same shape, rescheduling disabled.
    const HOT: u64 = 0;
    const FLOOD: u64 = 500;
    let stats = Stats::new(2);
    let (router, mut system) = system(&config(1, 1, NEVER), &stats, 2, 1);
    for seq in 0..FLOOD {
        router
            .send(HOT, Msg::data(&stats, HOT, 0, seq))
            .map_err(|e| e.error)
            .expect("send");
    }
    router
        .send(1, Msg::data(&stats, 1, 0, 0))
        .map_err(|e| e.error)
        .expect("send");
    let (tx, events) = crossbeam_channel::unbounded();
    system
        .spawn("flood", |_| {
            TestHandler::new(&stats, 1).with_events(tx.clone())
        })
        .expect("spawn");
    flush(&router, [1]);
    let first = first_rounds(&events, 2);
    let cold = first[1].expect("cold FSM handled");
    assert!(
        cold > FLOOD,
        "the flood ({FLOOD} rounds) ran first, cold came in round {cold}"
    );
    system.shutdown().expect("clean shutdown");
}

#[test]
fn hot_fsm_does_not_delay_its_batch_mates() {
    const HOT: u64 = 0;
    const COLD: u64 = 3;
    const PROBES: u64 = 20;
    /// A probe queued during round r is fetched after r at the latest, so it
    /// is handled in round r + 1, or r + 2 if round r + 1 began just before
    /// it was queued.
    const MAX_ROUNDS_LATE: u64 = 2;
    let stats = Stats::new(COLD + 1);
    let (router, mut system) = system(&config(1, 4, NEVER), &stats, COLD + 1, 1);
    router
        .send(HOT, Msg::data(&stats, HOT, 0, 0))
        .map_err(|e| e.error)
        .expect("send");
    let (tx, events) = crossbeam_channel::unbounded();
    system
        .spawn("mates", |_| {
            TestHandler::new(&stats, 64)
                .with_events(tx.clone())
                .with_hot(HOT)
        })
        .expect("spawn");
    let started = events.recv_timeout(STUCK).expect("hot FSM polled");
    assert_eq!(started.addr, HOT);

    for probe in 0..PROBES {
        let addr = 1 + probe % COLD;
        router
            .send(addr, Msg::data(&stats, addr, 0, probe))
            .map_err(|e| e.error)
            .expect("send");
        // Read after `send` returned, i.e. after the probe was queued: the
        // round it was queued in is at most this one. (Reading before would
        // count rounds run while this thread was descheduled.)
        let sent_in = stats.rounds.load(Ordering::SeqCst);
        let handled_in = loop {
            let e = events.recv_timeout(STUCK).expect("probe handled");
            if e.addr == addr {
                break e.round;
            }
        };
        assert!(
            handled_in <= sent_in + MAX_ROUNDS_LATE,
            "probe {probe} sent in round {sent_in}, handled in {handled_in}"
        );
    }
    system.shutdown().expect("clean shutdown");
    assert_eq!(Stats::get(&stats.fsm_drops, HOT), 1);
}

#[test]
fn shutdown_with_messages_in_flight_drops_every_fsm_once() {
    const ADDRS: u64 = 1_000;
    const SENDERS: usize = 2;
    const POOL: usize = 2;
    /// Sends per sender before shutdown starts.
    const WARM_UP: u64 = 5_000;
    let stats = Stats::new(ADDRS);
    let (router, mut system) = system(
        &config(POOL, 32, Duration::from_millis(5)),
        &stats,
        ADDRS,
        SENDERS,
    );
    system
        .spawn("shutdown", |_| TestHandler::new(&stats, 4))
        .expect("spawn");

    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (router, stats, ready) = (router.clone(), Arc::clone(&stats), ready_tx.clone());
            thread::spawn(move || {
                let mut seq = 0;
                loop {
                    let addr = seq % ADDRS;
                    match router.send(addr, Msg::data(&stats, addr, sender, seq)) {
                        Ok(()) => {
                            stats.sent[addr as usize].fetch_add(1, Ordering::SeqCst);
                            seq += 1;
                            if seq == WARM_UP {
                                ready.send(()).expect("main waits");
                            }
                        }
                        Err(e) => {
                            e.msg.refused();
                            return e.error;
                        }
                    }
                }
            })
        })
        .collect();
    for _ in 0..SENDERS {
        ready_rx.recv_timeout(STUCK).expect("sender warmed up");
    }
    system.shutdown().expect("clean shutdown");
    assert_eq!(
        stats.handlers_dropped.load(Ordering::SeqCst),
        POOL,
        "every poller exited"
    );
    for sender in senders {
        let error = sender.join().expect("sender must not panic");
        assert!(matches!(error, Error::Shutdown | Error::Closed), "{error}");
    }

    let (mut sent, mut settled) = (0, 0);
    for addr in 0..=ADDRS {
        assert_eq!(Stats::get(&stats.created, addr), 1);
        assert_eq!(
            Stats::get(&stats.fsm_drops, addr),
            1,
            "FSM {addr} dropped exactly once"
        );
        sent += Stats::get(&stats.sent, addr);
        settled += Stats::get(&stats.handled, addr) + Stats::get(&stats.dropped_unhandled, addr);
    }
    assert_eq!(settled, sent, "every message handled or dropped, once");

    let err = router
        .send(0, Msg::data(&stats, 0, 0, 0))
        .expect_err("shut down");
    assert!(matches!(err.error, Error::Shutdown));
    err.msg.refused();
    let late = Mailbox::new(TestFsm::new(&stats, 0, SENDERS));
    assert!(matches!(router.register(0, late), Err(Error::Shutdown)));
    assert_eq!(
        Stats::get(&stats.fsm_drops, 0),
        2,
        "the refused FSM is dropped too"
    );
    system.shutdown().expect("second shutdown is a no-op");
}

#[test]
fn stopped_fsm_is_dropped_and_its_mailbox_closed() {
    let stats = Stats::new(2);
    let (router, mut system) = system(&config(2, 8, Duration::from_millis(5)), &stats, 0, 1);
    let (drop_tx, drop_rx) = crossbeam_channel::unbounded();
    router
        .register(
            0,
            Mailbox::new(TestFsm::new(&stats, 0, 1).reporting_drop(drop_tx)),
        )
        .expect("register");
    router
        .register(1, Mailbox::new(TestFsm::new(&stats, 1, 1)))
        .expect("register");
    system
        .spawn("stop", |_| TestHandler::new(&stats, 8))
        .expect("spawn");

    router
        .send(0, Msg::data(&stats, 0, 0, 0))
        .map_err(|e| e.error)
        .expect("send");
    router
        .send(0, Msg::Stop)
        .map_err(|e| e.error)
        .expect("send");
    assert_eq!(drop_rx.recv_timeout(STUCK), Ok(0));
    let mailbox = router.mailbox(0).expect("still registered until closed");
    assert_eq!(mailbox.state(), MailboxState::Closed);
    let err = router
        .send(0, Msg::data(&stats, 0, 0, 1))
        .expect_err("closed");
    assert!(matches!(err.error, Error::Closed));
    err.msg.refused();
    assert!(router.close(0));
    assert_eq!(Stats::get(&stats.handled, 0), 1);

    router
        .send(1, Msg::data(&stats, 1, 0, 0))
        .map_err(|e| e.error)
        .expect("others unaffected");
    flush(&router, [1]);
    assert_eq!(Stats::get(&stats.handled, 1), 1);
    system.shutdown().expect("clean shutdown");
    assert_eq!(Stats::get(&stats.fsm_drops, 0), 1);
}

/// Logs every call; sends the log of a round from `end` and a marker from
/// `pause`.
struct Recording {
    log: Vec<String>,
    rounds: Sender<Vec<String>>,
    /// The normal FSM that answers `skip_end: true`.
    skip_end: u64,
}

impl PollHandler<TestFsm, TestFsm> for Recording {
    fn begin(&mut self, batch_size: usize) {
        self.log.push(format!("begin {batch_size}"));
    }

    fn handle_control(
        &mut self,
        control: &mut TestFsm,
        inbox: &Inbox<'_, TestFsm>,
    ) -> HandleResult {
        while let Some(msg) = inbox.try_recv() {
            control.handle(msg);
        }
        self.log.push("control".to_owned());
        HandleResult::stop_at(0, false)
    }

    fn handle_normal(&mut self, normal: &mut TestFsm, inbox: &Inbox<'_, TestFsm>) -> HandleResult {
        while let Some(msg) = inbox.try_recv() {
            normal.handle(msg);
        }
        self.log.push(format!("normal {}", normal.addr));
        HandleResult::stop_at(0, normal.addr == self.skip_end)
    }

    fn light_end(&mut self, batch: &mut Batch<'_, TestFsm>) {
        self.log.push(format!("light_end {}", batch.len()));
    }

    fn end(&mut self, batch: &mut Batch<'_, TestFsm>) {
        let addrs: Vec<u64> = batch.iter_mut().map(|f| f.addr).collect();
        self.log.push(format!("end {addrs:?}"));
        let _ = self.rounds.send(std::mem::take(&mut self.log));
    }

    fn pause(&mut self) {
        let _ = self.rounds.send(vec!["pause".to_owned()]);
    }
}

#[test]
fn a_round_follows_the_documented_lifecycle() {
    const NORMALS: u64 = 3;
    const SKIP_END: u64 = 2;
    let stats = Stats::new(NORMALS);
    let (router, mut system) = system(&config(1, 16, NEVER), &stats, NORMALS, 1);
    router
        .send_control(Msg::data(&stats, stats.control_addr, 0, 0))
        .map_err(|e| e.error)
        .expect("send");
    for addr in 0..NORMALS {
        router
            .send(addr, Msg::data(&stats, addr, 0, 0))
            .map_err(|e| e.error)
            .expect("send");
    }
    let (tx, rounds) = crossbeam_channel::unbounded();
    system
        .spawn("lifecycle", |_| Recording {
            log: Vec::new(),
            rounds: tx.clone(),
            skip_end: SKIP_END,
        })
        .expect("spawn");
    let round = rounds.recv_timeout(STUCK).expect("first round");
    assert_eq!(
        round,
        [
            "begin 3",
            "control",
            "normal 0",
            "normal 1",
            "normal 2",
            "light_end 3",
            "end [0, 1]",
        ]
    );
    assert_eq!(rounds.recv_timeout(STUCK).expect("pause"), ["pause"]);
    for addr in 0..NORMALS {
        let mailbox = router.mailbox(addr).expect("registered");
        assert_eq!(mailbox.state(), MailboxState::Idle, "FSM {addr} released");
    }
    assert_eq!(router.control_mailbox().state(), MailboxState::Idle);
    system.shutdown().expect("clean shutdown");
}
