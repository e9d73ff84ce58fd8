//! Messages per second through the whole batch-system path: send → schedule
//! → poll → handle, for 1, 1,000 and 100,000 FSMs and 1 and 2 pollers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flotilla_benches::fsm::{Region, region};
use flotilla_router::{
    Batch, BatchSystem, Config, HandleResult, Inbox, Mailbox, PollHandler, Router,
};

/// Messages sent per measured iteration, spread round-robin over the FSMs.
const MESSAGES: u64 = 100_000;
/// FSM counts measured.
const FSM_COUNTS: [u64; 3] = [1, 1_000, 100_000];
/// Poller counts measured.
const POLLER_COUNTS: [usize; 2] = [1, 2];
/// Messages a handler takes from one inbox per round before yielding.
const MESSAGES_PER_ROUND: usize = 4_096;

/// Shared completion counter: the handler that brings `handled` up to
/// `target` signals the bench thread.
struct Progress {
    handled: AtomicU64,
    target: AtomicU64,
    done: mpsc::SyncSender<()>,
}

struct Drain {
    progress: Arc<Progress>,
    buf: Vec<u64>,
}

impl PollHandler<Region, Region> for Drain {
    fn begin(&mut self, _batch_size: usize) {}

    fn handle_control(&mut self, _: &mut Region, inbox: &Inbox<'_, Region>) -> HandleResult {
        while inbox.try_recv().is_some() {}
        HandleResult::stop_at(0, true)
    }

    fn handle_normal(&mut self, fsm: &mut Region, inbox: &Inbox<'_, Region>) -> HandleResult {
        let n = inbox.recv_batch(&mut self.buf, MESSAGES_PER_ROUND);
        fsm.handled += self.buf.drain(..).sum::<u64>();
        let n = n as u64;
        let before = self.progress.handled.fetch_add(n, Ordering::AcqRel);
        let target = self.progress.target.load(Ordering::Acquire);
        if before < target && before + n >= target {
            let _ = self.progress.done.send(());
        }
        if n == MESSAGES_PER_ROUND as u64 {
            HandleResult::KeepProcessing
        } else {
            HandleResult::stop_at(0, false)
        }
    }

    fn end(&mut self, _batch: &mut Batch<'_, Region>) {}
}

struct Setup {
    router: Router<Region, Region>,
    system: BatchSystem<Region, Region>,
    progress: Arc<Progress>,
    done: mpsc::Receiver<()>,
}

fn setup(fsms: u64, pollers: usize) -> Setup {
    let cfg = Config {
        pool_size: pollers,
        ..Config::default()
    };
    let (router, mut system) = match BatchSystem::new(&cfg, Mailbox::new(region())) {
        Ok(pair) => pair,
        Err(e) => panic!("bench config is valid: {e}"),
    };
    let mailboxes = (0..fsms).map(|addr| (addr, Mailbox::new(region())));
    if let Err(e) = router.register_all(mailboxes) {
        panic!("register: {e}");
    }
    let (tx, done) = mpsc::sync_channel(1);
    let progress = Arc::new(Progress {
        handled: AtomicU64::new(0),
        target: AtomicU64::new(0),
        done: tx,
    });
    let spawned = system.spawn("bench", |_| Drain {
        progress: Arc::clone(&progress),
        buf: Vec::with_capacity(MESSAGES_PER_ROUND),
    });
    if let Err(e) = spawned {
        panic!("spawn: {e}");
    }
    Setup {
        router,
        system,
        progress,
        done,
    }
}

/// Sends `MESSAGES` messages and waits until all were handled.
fn run_once(s: &Setup, fsms: u64) {
    s.progress.target.fetch_add(MESSAGES, Ordering::AcqRel);
    for i in 0..MESSAGES {
        if let Err(e) = s.router.send(i % fsms, 1) {
            panic!("send: {}", e.error);
        }
    }
    if s.done.recv().is_err() {
        panic!("pollers exited");
    }
}

fn bench_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_throughput");
    group.throughput(Throughput::Elements(MESSAGES));
    group.sample_size(10);
    for pollers in POLLER_COUNTS {
        for fsms in FSM_COUNTS {
            let mut s = setup(fsms, pollers);
            group.bench_function(format!("{fsms}_fsms/{pollers}_pollers"), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        run_once(&s, fsms);
                    }
                    start.elapsed()
                });
            });
            if let Err(e) = s.system.shutdown() {
                panic!("shutdown: {e}");
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_throughput);
criterion_main!(benches);
