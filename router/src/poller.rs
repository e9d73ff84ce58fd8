//! One poller thread: fetch a batch of notified FSMs, run a round of the
//! handler over them, settle each FSM, repeat.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::Fsm;
use crate::handler::{Batch, HandleResult, PollHandler};
use crate::mailbox::{Inbox, Mailbox, Release, Schedule};
use crate::router::Router;
use crate::scheduler::Task;

/// A normal FSM held by a poller.
pub(crate) struct Entry<N: Fsm> {
    /// `None` once settled this round (released, rescheduled or dropped).
    fsm: Option<Box<N>>,
    mailbox: Mailbox<N>,
    /// When this poller took the FSM off the queue.
    since: Instant,
    /// What the handler answered this round.
    result: HandleResult,
}

impl<N: Fsm> Entry<N> {
    pub(crate) fn fsm_mut(&mut self) -> Option<&mut N> {
        self.fsm.as_deref_mut()
    }
}

/// The control FSM held by a poller.
struct ControlEntry<C> {
    fsm: Box<C>,
    since: Instant,
}

/// Limits of one poller, from the config.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_batch_size: usize,
    pub(crate) reschedule_duration: Duration,
}

pub(crate) struct Poller<N: Fsm, C: Fsm, H> {
    router: Router<N, C>,
    tasks: Receiver<Task<N>>,
    handler: H,
    limits: Limits,
    normals: Vec<Entry<N>>,
    control: Option<ControlEntry<C>>,
}

impl<N: Fsm, C: Fsm, H: PollHandler<N, C>> Poller<N, C, H> {
    pub(crate) fn new(
        router: Router<N, C>,
        tasks: Receiver<Task<N>>,
        handler: H,
        limits: Limits,
    ) -> Self {
        Poller {
            router,
            tasks,
            handler,
            normals: Vec::with_capacity(limits.max_batch_size),
            limits,
            control: None,
        }
    }

    /// Polls until a stop token arrives, then drops every FSM still held.
    pub(crate) fn run(mut self) {
        while self.fetch() {
            self.round();
        }
        self.stop();
    }

    /// Tops the batch up from the shared queue, blocking while it is empty.
    /// Returns `false` when the poller must stop.
    fn fetch(&mut self) -> bool {
        loop {
            while self.normals.len() < self.limits.max_batch_size {
                match self.tasks.try_recv() {
                    Ok(task) => {
                        if !self.accept(task) {
                            return false;
                        }
                    }
                    Err(_) => break,
                }
            }
            if !self.normals.is_empty() || self.control.is_some() {
                return true;
            }
            self.handler.pause();
            match self.tasks.recv() {
                Ok(task) => {
                    if !self.accept(task) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Takes the FSM named by `task`. Returns `false` for a stop token.
    fn accept(&mut self, task: Task<N>) -> bool {
        match task {
            Task::Normal(mailbox) => {
                // `None`: closed while queued, the FSM is already dropped.
                if let Some(mut fsm) = mailbox.take_fsm() {
                    fsm.set_mailbox(&mailbox);
                    self.normals.push(Entry {
                        fsm: Some(fsm),
                        mailbox,
                        since: Instant::now(),
                        result: HandleResult::KeepProcessing,
                    });
                }
            }
            Task::Control => {
                let mailbox = self.router.control_mailbox();
                if let Some(mut fsm) = mailbox.take_fsm() {
                    fsm.set_mailbox(mailbox);
                    self.control = Some(ControlEntry {
                        fsm,
                        since: Instant::now(),
                    });
                }
            }
            Task::Stop => return false,
        }
        true
    }

    /// One round of the handler lifecycle over the current batch.
    fn round(&mut self) {
        let Limits {
            reschedule_duration,
            ..
        } = self.limits;
        self.handler.begin(self.normals.len());

        if let Some(mut control) = self.control.take() {
            let mailbox = self.router.control_mailbox();
            let result = self
                .handler
                .handle_control(&mut control.fsm, &Inbox::new(mailbox));
            let held = control.since.elapsed();
            let scheduler = self.router.control_scheduler();
            self.control = settle(
                control.fsm,
                mailbox,
                result,
                held,
                reschedule_duration,
                scheduler,
            )
            .map(|fsm| ControlEntry {
                fsm,
                since: control.since,
            });
        }

        for entry in &mut self.normals {
            if let Some(fsm) = entry.fsm.as_deref_mut() {
                entry.result = self.handler.handle_normal(fsm, &Inbox::new(&entry.mailbox));
            }
        }
        self.handler.light_end(&mut Batch::new(&mut self.normals));

        let scheduler = self.router.normal_scheduler();
        let now = Instant::now();
        for entry in &mut self.normals {
            if let HandleResult::StopAt { skip_end: true, .. } = entry.result {
                settle_entry(entry, now, reschedule_duration, scheduler);
            }
        }
        self.normals.retain(|e| e.fsm.is_some());

        self.handler.end(&mut Batch::new(&mut self.normals));

        let now = Instant::now();
        for entry in &mut self.normals {
            settle_entry(entry, now, reschedule_duration, scheduler);
        }
        self.normals.retain(|e| e.fsm.is_some());
    }

    /// Closes the mailbox of, and drops, every FSM still held.
    fn stop(mut self) {
        for entry in self.normals.drain(..) {
            if let Some(fsm) = entry.fsm {
                entry.mailbox.close_with(fsm);
            }
        }
        if let Some(control) = self.control.take() {
            self.router.control_mailbox().close_with(control.fsm);
        }
    }
}

fn settle_entry<N: Fsm, S: Schedule<N>>(
    entry: &mut Entry<N>,
    now: Instant,
    reschedule_duration: Duration,
    scheduler: &S,
) {
    if let Some(fsm) = entry.fsm.take() {
        let held = now.saturating_duration_since(entry.since);
        entry.fsm = settle(
            fsm,
            &entry.mailbox,
            entry.result,
            held,
            reschedule_duration,
            scheduler,
        );
    }
}

/// Decides what becomes of an FSM after the handler answered `result`:
/// dropped if stopped or closed, idle if it stopped and nothing arrived,
/// requeued if it has been `held` past `reschedule_duration`, otherwise kept
/// (returned) for the next round.
fn settle<F: Fsm, S: Schedule<F>>(
    mut fsm: Box<F>,
    mailbox: &Mailbox<F>,
    result: HandleResult,
    held: Duration,
    reschedule_duration: Duration,
    scheduler: &S,
) -> Option<Box<F>> {
    if fsm.is_stopped() {
        mailbox.close_with(fsm);
        return None;
    }
    match result {
        HandleResult::StopAt { progress, .. } => {
            drop(fsm.take_mailbox());
            match mailbox.release(fsm, progress) {
                Release::Kept(mut fsm) => {
                    fsm.set_mailbox(mailbox);
                    Some(fsm)
                }
                Release::Idle | Release::Dropped => None,
            }
        }
        HandleResult::KeepProcessing => {
            if mailbox.is_closed() {
                mailbox.close_with(fsm);
                None
            } else if held >= reschedule_duration {
                drop(fsm.take_mailbox());
                mailbox.reschedule(fsm, scheduler);
                None
            } else {
                Some(fsm)
            }
        }
    }
}
