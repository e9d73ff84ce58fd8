//! The snapshot worker: one thread per store that generates snapshots and
//! sends them (steps 1 and 2), so neither a large region's scan nor its
//! transfer holds up a poller. Tasks run in the order they were queued, so
//! a send queued before a newer generation of the same region still finds
//! its file.

use std::fs::File;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use flotilla_engine::Engine;
use flotilla_proto::raft_serverpb::RaftMessage;
use slog::Logger;

use super::generate::SharedGenSlot;
use super::{
    SNAP_CHUNK_BYTES, SNAP_FILE_MAX_IDLE, SnapError, SnapManager, generate_snapshot, snapshot_index,
};
use crate::store::fsm::{RaftRouter, StoreMetrics};
use crate::store::msg::{PeerMsg, RaftCommand, Responder};
use crate::store::split_check::{SplitCheckTask, check_region};
use crate::store::transport::Transport;
use crate::store::util::response_error;
use flotilla_proto::raft_cmdpb::{
    AdminRequest, BatchSplitRequest, RaftCmdRequest, RaftRequestHeader, SplitRequest, admin_request,
};

/// Work for the snapshot worker.
#[derive(Debug)]
pub enum SnapTask {
    /// Generate region `region_id`'s snapshot into `slot`.
    Generate {
        /// The region.
        region_id: u64,
        /// Where the outcome goes.
        slot: SharedGenSlot,
    },
    /// Send this `MsgSnapshot` with its generated file.
    Send(Box<RaftMessage>),
    /// Measure a region and propose its split if it is too large (see
    /// `store::split_check`; boxed: rare).
    SplitCheck(Box<SplitCheckTask>),
    /// Remove the snapshot files no peer will use (see
    /// [`SnapManager::collect_garbage`]).
    Gc,
    /// End the worker (the store stops; tasks queued after it are
    /// dropped, and a leader's raft retries after its next start).
    Stop,
}

/// Queues tasks for a store's snapshot worker (cheap to clone).
pub type SnapScheduler = Sender<SnapTask>;

/// A running snapshot worker; stops when every [`SnapScheduler`] is gone
/// or on [`SnapWorker::stop`].
pub struct SnapWorker {
    sched: Option<SnapScheduler>,
    thread: Option<JoinHandle<()>>,
    /// Set by [`SnapWorker::stop`]: the tasks still queued are dropped (a
    /// stopping store does not wait for large snapshots to go out).
    stopping: Arc<AtomicBool>,
}

struct Ctx<T> {
    engine: Engine,
    mgr: Arc<SnapManager>,
    transport: T,
    router: RaftRouter,
    metrics: Arc<StoreMetrics>,
    logger: Logger,
}

impl SnapWorker {
    /// Starts a worker of store `store_id` (its thread named after
    /// `role`: one worker generates and sends snapshots, another measures
    /// regions for the split checker, so a long scan never holds up a
    /// snapshot).
    ///
    /// # Errors
    /// The thread could not be spawned.
    #[allow(clippy::too_many_arguments)]
    pub fn start<T: Transport>(
        store_id: u64,
        role: &str,
        engine: Engine,
        mgr: Arc<SnapManager>,
        transport: T,
        router: RaftRouter,
        metrics: Arc<StoreMetrics>,
        logger: Logger,
    ) -> std::io::Result<SnapWorker> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_flag = stopping.clone();
        let mut ctx = Ctx {
            engine,
            mgr,
            transport,
            router,
            metrics,
            logger,
        };
        let thread = std::thread::Builder::new()
            .name(format!("store-{store_id}-{role}"))
            .spawn(move || run(&mut ctx, &rx, &stop_flag))?;
        Ok(SnapWorker {
            sched: Some(tx),
            thread: Some(thread),
            stopping,
        })
    }

    /// A scheduler for the worker's tasks.
    pub fn scheduler(&self) -> Option<SnapScheduler> {
        self.sched.clone()
    }

    /// Stops the worker after the task it is running; queued ones are
    /// dropped.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(s) = self.sched.take() {
            let _ = s.send(SnapTask::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SnapWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run<T: Transport>(ctx: &mut Ctx<T>, rx: &Receiver<SnapTask>, stopping: &AtomicBool) {
    while let Ok(task) = rx.recv() {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        match task {
            SnapTask::Generate { region_id, slot } => {
                let started = Instant::now();
                let outcome = generate_snapshot(&ctx.engine, &ctx.mgr, region_id);
                ctx.metrics
                    .snapshot_generate_micros
                    .fetch_add(micros_since(started), Ordering::Relaxed);
                match &outcome {
                    Ok(_) => ctx
                        .metrics
                        .snapshots_generated
                        .fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        slog::warn!(ctx.logger, "snapshot generation failed"; "region" => region_id, "err" => %e);
                        ctx.metrics
                            .snapshot_generate_failures
                            .fetch_add(1, Ordering::Relaxed)
                    }
                };
                // The leader's raft asks again at its next heartbeat
                // response from the follower.
                slot.put(outcome);
            }
            SnapTask::Send(msg) => send(ctx, *msg),
            SnapTask::SplitCheck(task) => split_check(ctx, &task),
            SnapTask::Gc => {
                let removed = ctx.mgr.collect_garbage(&ctx.engine, SNAP_FILE_MAX_IDLE);
                if removed > 0 {
                    slog::info!(ctx.logger, "unused snapshot files removed"; "files" => removed);
                }
            }
            SnapTask::Stop => return,
        }
    }
}

fn send<T: Transport>(ctx: &mut Ctx<T>, msg: RaftMessage) {
    let region_id = msg.region_id;
    let to_peer = msg.to_peer.map_or(0, |p| p.id);
    let started = Instant::now();
    let outcome = send_file(ctx, msg);
    ctx.metrics
        .snapshot_send_micros
        .fetch_add(micros_since(started), Ordering::Relaxed);
    let ok = match outcome {
        Ok(()) => {
            ctx.metrics.snapshots_sent.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(e) => {
            slog::info!(ctx.logger, "snapshot not sent"; "region" => region_id, "to" => to_peer, "err" => %e);
            ctx.metrics
                .snapshot_send_failures
                .fetch_add(1, Ordering::Relaxed);
            false
        }
    };
    let _ = ctx
        .router
        .force_send(region_id, PeerMsg::SnapshotStatus { to_peer, ok });
}

fn send_file<T: Transport>(ctx: &mut Ctx<T>, msg: RaftMessage) -> Result<(), SnapError> {
    let snap = msg
        .message
        .as_ref()
        .and_then(|m| m.snapshot.as_deref())
        .ok_or_else(|| SnapError::Corrupt("MsgSnapshot without a snapshot".into()))?;
    let (index, term) = snapshot_index(snap);
    let mut file = File::open(ctx.mgr.gen_path(msg.region_id, term, index))?;
    let mut chunks = std::iter::from_fn(move || {
        let mut buf = vec![0; SNAP_CHUNK_BYTES];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Some(Err(SnapError::Io(e))),
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        Some(Ok(buf))
    });
    ctx.transport.send_snapshot(msg, &mut chunks)
}

/// Measures the task's region and, past a limit, sends its leader a
/// split at the middle key (answered into the log only).
fn split_check<T: Transport>(ctx: &Ctx<T>, task: &SplitCheckTask) {
    let region_id = task.region.id;
    ctx.metrics.split_checks.fetch_add(1, Ordering::Relaxed);
    let size = match check_region(&ctx.engine, task) {
        Ok(s) => s,
        Err(e) => {
            slog::warn!(ctx.logger, "split check failed"; "region" => region_id, "err" => %e);
            return;
        }
    };
    let Some(key) = size.split_key else {
        return;
    };
    slog::info!(ctx.logger, "region past its split size: splitting"; "region" => region_id,
        "bytes" => size.bytes, "keys" => size.keys);
    let request = RaftCmdRequest {
        header: Some(RaftRequestHeader {
            region_id,
            region_epoch: task.region.region_epoch,
            ..Default::default()
        }),
        requests: Vec::new(),
        admin_request: Some(AdminRequest {
            cmd: Some(admin_request::Cmd::BatchSplit(BatchSplitRequest {
                requests: vec![SplitRequest {
                    split_key: key.into(),
                    ..Default::default()
                }],
                right_derive: false,
            })),
        }),
    };
    let logger = ctx.logger.clone();
    let callback = Responder::new(Box::new(move |resp| {
        if let Some(e) = response_error(&resp) {
            slog::debug!(logger, "checker's split not done"; "region" => region_id, "err" => %e);
        }
    }));
    let cmd = Box::new(RaftCommand { request, callback });
    if ctx
        .router
        .send(region_id, PeerMsg::RaftCommand(cmd))
        .is_ok()
    {
        ctx.metrics.splits_proposed.fetch_add(1, Ordering::Relaxed);
    }
}

fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}
