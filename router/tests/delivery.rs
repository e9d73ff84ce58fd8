//! Messages reach the right FSM, in order, exactly once, also while FSMs come
//! and go.

mod common;

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{Msg, STUCK, Stats, TestFsm, TestHandler, config, flush, system};
use flotilla_router::{Error, Mailbox, TrySend};

#[test]
fn per_fsm_message_order_is_preserved() {
    const ADDRS: u64 = 64;
    const SENDERS: usize = 4;
    const PER_SENDER: u64 = 500;
    // Small budget and zero reschedule duration: FSMs keep hopping between
    // the two pollers while messages arrive, the hardest case for ordering.
    const BUDGET: usize = 16;
    let stats = Stats::new(ADDRS);
    let (router, mut system) = system(&config(2, 8, Duration::ZERO), &stats, ADDRS, SENDERS);
    system
        .spawn("order", |_| TestHandler::new(&stats, BUDGET))
        .expect("spawn");

    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (router, stats) = (router.clone(), Arc::clone(&stats));
            thread::spawn(move || {
                for seq in 0..PER_SENDER {
                    for addr in 0..ADDRS {
                        let msg = Msg::data(&stats, addr, sender, seq);
                        router
                            .send(addr, msg)
                            .map_err(|e| e.error)
                            .expect("live FSM");
                    }
                }
            })
        })
        .collect();
    senders.into_iter().for_each(|s| s.join().expect("sender"));
    flush(&router, 0..ADDRS);

    assert_eq!(stats.order_violations.load(Ordering::SeqCst), 0);
    for addr in 0..ADDRS {
        // Strictly increasing per sender and complete: exactly 0..PER_SENDER.
        assert_eq!(
            Stats::get(&stats.handled, addr),
            PER_SENDER * SENDERS as u64,
            "{addr}"
        );
    }
    system.shutdown().expect("clean shutdown");
}

#[test]
fn stress_send_while_registering_and_closing() {
    const STABLE: u64 = 10_000;
    const CHURN: u64 = 500;
    const TOTAL: u64 = STABLE + CHURN;
    const SENDERS: usize = 3;
    const PASSES: u64 = 4;
    /// Prime, coprime with TOTAL: each pass visits every address once, in a
    /// scattered order.
    const STRIDE: u64 = 7_919;
    /// Churn ops at least; the churn thread goes on until senders finish.
    const MIN_CHURN_OPS: u64 = 2_000;
    /// Coprime with CHURN: successive churn ops hit scattered addresses.
    const CHURN_STEP: u64 = 37;
    /// Every this many sends, use `try_send` instead of `send`.
    const TRY_SEND_EVERY: u64 = 7;

    let stats = Stats::new(TOTAL);
    let (router, mut system) = system(
        &config(2, 64, Duration::from_millis(5)),
        &stats,
        STABLE,
        SENDERS,
    );
    system
        .spawn("stress", |_| TestHandler::new(&stats, 32))
        .expect("spawn");

    let unexpected = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let senders_done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(SENDERS + 2)); // senders, churn, main

    let churn = {
        let (router, stats, done, start) = (
            router.clone(),
            Arc::clone(&stats),
            Arc::clone(&senders_done),
            Arc::clone(&start),
        );
        thread::spawn(move || {
            start.wait();
            let mut op = 0;
            while op < MIN_CHURN_OPS || !done.load(Ordering::SeqCst) {
                let addr = STABLE + (op * CHURN_STEP) % CHURN;
                if op % 2 == 0 {
                    let fsm = TestFsm::new(&stats, addr, SENDERS);
                    router
                        .register(addr, Mailbox::new(fsm))
                        .expect("not shut down");
                } else {
                    router.close(addr);
                }
                op += 1;
            }
        })
    };

    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (router, stats, unexpected, refused, start) = (
                router.clone(),
                Arc::clone(&stats),
                Arc::clone(&unexpected),
                Arc::clone(&refused),
                Arc::clone(&start),
            );
            thread::spawn(move || {
                start.wait();
                let mut seq = 0;
                for pass in 0..PASSES {
                    for k in 0..TOTAL {
                        let addr = (k * STRIDE + pass + sender as u64) % TOTAL;
                        let msg = Msg::data(&stats, addr, sender, seq);
                        seq += 1;
                        let rejected = if seq % TRY_SEND_EVERY == 0 {
                            match router.try_send(addr, msg) {
                                TrySend::Sent => None,
                                TrySend::Unknown(msg) => Some((Error::NotFound { addr }, msg)),
                                TrySend::Rejected(e) => Some((e.error, e.msg)),
                            }
                        } else {
                            router.send(addr, msg).err().map(|e| (e.error, e.msg))
                        };
                        match rejected {
                            None => {
                                stats.sent[addr as usize].fetch_add(1, Ordering::SeqCst);
                            }
                            Some((error, msg)) => {
                                let expected =
                                    matches!(error, Error::NotFound { .. } | Error::Closed);
                                if !expected || addr < STABLE {
                                    unexpected.fetch_add(1, Ordering::SeqCst);
                                }
                                refused.fetch_add(1, Ordering::SeqCst);
                                msg.refused();
                            }
                        }
                    }
                }
            })
        })
        .collect();

    start.wait();
    senders.into_iter().for_each(|s| s.join().expect("sender"));
    senders_done.store(true, Ordering::SeqCst);
    churn.join().expect("churn");

    flush(&router, 0..STABLE);
    for addr in 0..STABLE {
        assert_eq!(
            Stats::get(&stats.handled, addr),
            Stats::get(&stats.sent, addr),
            "stable FSM {addr} handled every message sent to it"
        );
        assert_eq!(Stats::get(&stats.sent, addr), PASSES * SENDERS as u64);
    }
    system.shutdown().expect("clean shutdown");

    assert_eq!(
        unexpected.load(Ordering::SeqCst),
        0,
        "only NotFound/Closed, only for churned FSMs"
    );
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "churn made some sends fail"
    );
    assert_eq!(stats.order_violations.load(Ordering::SeqCst), 0);
    let mut churn_sent = 0;
    for addr in 0..=TOTAL {
        let sent = Stats::get(&stats.sent, addr);
        let handled = Stats::get(&stats.handled, addr);
        let dropped = Stats::get(&stats.dropped_unhandled, addr);
        assert_eq!(
            handled + dropped,
            sent,
            "every message to {addr} handled or dropped once"
        );
        if addr < STABLE {
            assert_eq!(dropped, 0, "{addr}");
        } else {
            churn_sent += sent;
        }
        assert_eq!(
            Stats::get(&stats.created, addr),
            Stats::get(&stats.fsm_drops, addr),
            "every FSM instance at {addr} dropped exactly once"
        );
    }
    assert!(churn_sent > 0, "some messages reached churned FSMs");
}

#[test]
fn close_while_sending_gives_typed_errors_and_drops_once() {
    const SENDERS: usize = 3;
    /// Successful sends per sender before the FSM is closed.
    const BEFORE_CLOSE: u64 = 50;
    let stats = Stats::new(1);
    let (router, mut system) = system(&config(2, 16, Duration::from_millis(5)), &stats, 0, SENDERS);
    let (drop_tx, drop_rx) = crossbeam_channel::unbounded();
    router
        .register(
            0,
            Mailbox::new(TestFsm::new(&stats, 0, SENDERS).reporting_drop(drop_tx)),
        )
        .expect("register");
    system
        .spawn("close", |_| TestHandler::new(&stats, 8))
        .expect("spawn");

    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let (router, stats, ready) = (router.clone(), Arc::clone(&stats), ready_tx.clone());
            thread::spawn(move || {
                let mut seq = 0;
                loop {
                    match router.send(0, Msg::data(&stats, 0, sender, seq)) {
                        Ok(()) => {
                            stats.sent[0].fetch_add(1, Ordering::SeqCst);
                            seq += 1;
                            if seq == BEFORE_CLOSE {
                                ready.send(()).expect("main waits");
                            }
                        }
                        Err(e) => {
                            e.msg.refused();
                            return (e.error, seq);
                        }
                    }
                }
            })
        })
        .collect();
    for _ in 0..SENDERS {
        ready_rx.recv_timeout(STUCK).expect("sender ready");
    }
    assert!(router.close(0));
    for sender in senders {
        let (error, sent) = sender.join().expect("sender must not panic");
        assert!(
            matches!(error, Error::Closed | Error::NotFound { addr: 0 }),
            "{error}"
        );
        assert!(sent >= BEFORE_CLOSE);
    }
    assert_eq!(drop_rx.recv_timeout(STUCK), Ok(0), "close drops the FSM");
    system.shutdown().expect("clean shutdown");
    assert!(drop_rx.try_recv().is_err(), "and nobody drops it again");
    assert_eq!(Stats::get(&stats.fsm_drops, 0), 1);
    assert_eq!(
        Stats::get(&stats.handled, 0) + Stats::get(&stats.dropped_unhandled, 0),
        Stats::get(&stats.sent, 0)
    );
}

#[test]
fn bounded_mailbox_is_full_until_the_poller_drains_it() {
    const CAP: usize = 4;
    let stats = Stats::new(1);
    let (router, mut system) = system(&config(1, 8, Duration::from_millis(5)), &stats, 0, 1);
    let cap = NonZeroUsize::new(CAP).expect("non-zero");
    router
        .register(0, Mailbox::bounded(TestFsm::new(&stats, 0, 1), cap))
        .expect("register");
    // Not spawned yet: nothing drains.
    for seq in 0..CAP as u64 {
        router
            .send(0, Msg::data(&stats, 0, 0, seq))
            .map_err(|e| e.error)
            .expect("fits");
    }
    let err = router
        .send(0, Msg::data(&stats, 0, 0, CAP as u64))
        .expect_err("full");
    assert!(matches!(err.error, Error::Full { capacity: CAP }));
    err.msg.refused();
    router
        .force_send(0, Msg::data(&stats, 0, 0, CAP as u64 + 1))
        .map_err(|e| e.error)
        .expect("force ignores capacity");

    system
        .spawn("bounded", |_| TestHandler::new(&stats, 64))
        .expect("spawn");
    flush(&router, [0]);
    assert_eq!(Stats::get(&stats.handled, 0), CAP as u64 + 1);
    router
        .send(0, Msg::data(&stats, 0, 0, CAP as u64 + 2))
        .map_err(|e| e.error)
        .expect("room again");
    flush(&router, [0]);
    assert_eq!(stats.order_violations.load(Ordering::SeqCst), 0);
    system.shutdown().expect("clean shutdown");
}

#[test]
fn unknown_address_is_handed_back_for_the_control_fsm() {
    let stats = Stats::new(1);
    let (router, mut system) = system(&config(1, 8, Duration::from_millis(5)), &stats, 0, 1);
    system
        .spawn("control", |_| TestHandler::new(&stats, 64))
        .expect("spawn");
    let TrySend::Unknown(msg) = router.try_send(99, Msg::data(&stats, stats.control_addr, 0, 0))
    else {
        panic!("nothing is registered at 99");
    };
    router
        .send_control(msg)
        .map_err(|e| e.error)
        .expect("control open");
    let (tx, rx) = crossbeam_channel::unbounded();
    router
        .send_control(Msg::Flush(tx))
        .map_err(|e| e.error)
        .expect("control open");
    assert_eq!(rx.recv_timeout(STUCK), Ok(stats.control_addr));
    assert_eq!(Stats::get(&stats.handled, stats.control_addr), 1);
    system.shutdown().expect("clean shutdown");
    assert_eq!(Stats::get(&stats.fsm_drops, stats.control_addr), 1);
}
