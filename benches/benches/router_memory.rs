//! Heap bytes per registered idle FSM (mailbox + router entry), measured with
//! a counting global allocator, and the time to register 100,000 FSMs.
//!
//! The memory figures are printed before criterion starts:
//! `cargo bench -p flotilla-benches --bench router_memory`.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::mpsc;

use criterion::{BatchSize, Criterion, criterion_group};
use flotilla_benches::Counting;
use flotilla_benches::counting::{enable, live};
use flotilla_benches::fsm::{Region, region};
use flotilla_router::{
    Batch, BatchSystem, Config, HandleResult, Inbox, Mailbox, PollHandler, Router,
};

/// Number of FSMs registered, as on a store hosting 100,000 regions.
const FSMS: u64 = 100_000;
/// Capacity of the bounded-mailbox variant.
const BOUNDED_CAPACITY: usize = 4_096;
/// Per-FSM goal from the design: mailbox + router entry, empty mailbox.
const GOAL_BYTES: usize = 512;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Drains each inbox and reports every handled message.
struct Drain {
    done: mpsc::Sender<()>,
}

impl PollHandler<Region, Region> for Drain {
    fn begin(&mut self, _batch_size: usize) {}

    fn handle_control(&mut self, _: &mut Region, inbox: &Inbox<'_, Region>) -> HandleResult {
        while inbox.try_recv().is_some() {}
        HandleResult::stop_at(0, true)
    }

    fn handle_normal(&mut self, fsm: &mut Region, inbox: &Inbox<'_, Region>) -> HandleResult {
        while let Some(msg) = inbox.try_recv() {
            fsm.handled += msg;
            let _ = self.done.send(());
        }
        HandleResult::stop_at(0, false)
    }

    fn end(&mut self, _batch: &mut Batch<'_, Region>) {}
}

fn new_system(pool_size: usize) -> (Router<Region, Region>, BatchSystem<Region, Region>) {
    let cfg = Config {
        pool_size,
        ..Config::default()
    };
    match BatchSystem::new(&cfg, Mailbox::new(region())) {
        Ok(pair) => pair,
        Err(e) => panic!("bench config is valid: {e}"),
    }
}

fn register(router: &Router<Region, Region>, bounded: bool) {
    let capacity = NonZeroUsize::new(BOUNDED_CAPACITY).unwrap_or(NonZeroUsize::MIN);
    let mailboxes = (0..FSMS).map(|addr| {
        let mailbox = if bounded {
            Mailbox::bounded(region(), capacity)
        } else {
            Mailbox::new(region())
        };
        (addr, mailbox)
    });
    if let Err(e) = router.register_all(mailboxes) {
        panic!("router is live: {e}");
    }
}

fn report(label: &str, before: (isize, isize), after: (isize, isize)) {
    let fsms = FSMS as f64;
    let bytes = (after.0 - before.0) as f64 / fsms;
    let allocs = (after.1 - before.1) as f64 / fsms;
    let fsm_box = std::mem::size_of::<Region>() as f64;
    println!(
        "router_memory/{label}: {bytes:.1} heap bytes per FSM ({:.1} without the FSM's own \
         {fsm_box}-byte box; {allocs:.2} allocations per FSM; goal <= {GOAL_BYTES})",
        bytes - fsm_box
    );
}

/// Registers 100,000 idle FSMs and prints the heap they cost, fresh and after
/// each handled one message and went idle again.
fn memory_report() {
    enable(true);
    for bounded in [false, true] {
        let label = if bounded { "bounded" } else { "unbounded" };
        let (router, mut system) = new_system(1);
        let before = live();
        register(&router, bounded);
        report(&format!("{label}/fresh_idle"), before, live());

        let (tx, rx) = mpsc::channel();
        if let Err(e) = system.spawn("mem", |_| Drain { done: tx.clone() }) {
            panic!("spawn: {e}");
        }
        for addr in 0..FSMS {
            if let Err(e) = router.send(addr, 1) {
                panic!("send to {addr}: {}", e.error);
            }
        }
        for _ in 0..FSMS {
            if rx.recv().is_err() {
                panic!("poller exited early");
            }
        }
        // Every FSM handled its message; wait until every mailbox is idle
        // again (the handler reports before the poller releases).
        while (0..FSMS).any(|addr| {
            router
                .mailbox(addr)
                .is_some_and(|m| m.state() != flotilla_router::MailboxState::Idle)
        }) {
            std::thread::yield_now();
        }
        report(&format!("{label}/idle_after_one_message"), before, live());
        if let Err(e) = system.shutdown() {
            panic!("shutdown: {e}");
        }
    }
}

fn bench_register(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_register");
    group.sample_size(10);
    group.bench_function("100k_fsms", |b| {
        b.iter_batched(
            || new_system(1),
            |(router, system)| {
                register(&router, false);
                black_box((router, system))
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, bench_register);

fn main() {
    memory_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
