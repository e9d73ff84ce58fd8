//! The apply side: one [`ApplyFsm`] per region applies committed entries to
//! the data column family, writes `RaftApplyState` in the same batch, runs
//! the proposals' callbacks and reports back to the peer.

use std::collections::VecDeque;

use flotilla_engine::{Cf, Durability, Engine, WriteBatch, keys};
use flotilla_proto::eraftpb::{Entry, EntryType};
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{
    DeleteRangeResponse, DeleteResponse, PutResponse, RaftCmdRequest, RaftCmdResponse,
    RaftResponseHeader, Response, request, response,
};
use flotilla_proto::raft_serverpb::RaftApplyState;
use flotilla_router::{Batch, Fsm, HandleResult, Inbox, PollHandler};
use prost::Message as _;
use slog::Logger;

use super::error::Error;
use super::fsm::RaftRouter;
use super::msg::{ApplyMsg, ApplyRes, ApplyTask, PeerMsg, Proposal};
use super::util::err_response;

/// A region's apply delegate.
pub struct ApplyFsm {
    region: Region,
    apply_state: RaftApplyState,
    /// Set while this round changed `apply_state` (report it in `end`).
    dirty: bool,
    /// Callbacks to run once this round's batch is written.
    done: Vec<(Proposal, RaftCmdResponse)>,
    stopped: bool,
}

impl ApplyFsm {
    /// A delegate for `region` resuming at `apply_state`.
    pub fn new(region: Region, apply_state: RaftApplyState) -> ApplyFsm {
        ApplyFsm {
            region,
            apply_state,
            dirty: false,
            done: Vec::new(),
            stopped: false,
        }
    }
}

impl Fsm for ApplyFsm {
    type Message = ApplyMsg;

    fn is_stopped(&self) -> bool {
        self.stopped
    }
}

/// The apply system's control FSM: it has nothing to do yet.
pub struct ApplyControl;

impl Fsm for ApplyControl {
    type Message = ();

    fn is_stopped(&self) -> bool {
        false
    }
}

/// Applies every ready delegate's entries into one write batch per round.
pub struct ApplyPoller {
    engine: Engine,
    raft_router: RaftRouter,
    wb: Option<WriteBatch>,
    logger: Logger,
}

impl ApplyPoller {
    /// A poller writing to `engine` and reporting through `raft_router`.
    pub fn new(engine: Engine, raft_router: RaftRouter, logger: Logger) -> ApplyPoller {
        ApplyPoller {
            engine,
            raft_router,
            wb: None,
            logger,
        }
    }

    fn apply_task(&mut self, fsm: &mut ApplyFsm, task: ApplyTask) {
        debug_assert_eq!(
            task.region_id, fsm.region.id,
            "task routed to the wrong delegate"
        );
        let wb = self.wb.get_or_insert_with(|| self.engine.write_batch());
        let mut proposals: VecDeque<Proposal> = task.proposals.into();
        for entry in task.entries {
            if entry.index <= fsm.apply_state.applied_index {
                continue; // already applied (e.g. replayed after restart)
            }
            let resp = apply_entry(wb, &fsm.region, &entry);
            // Proposals below this index were overwritten by another
            // leader's entries: their outcome is unknown to the client.
            while proposals.front().is_some_and(|p| p.index < entry.index) {
                if let Some(p) = proposals.pop_front() {
                    fsm.done.push((p, err_response(Error::StaleCommand)));
                }
            }
            if proposals.front().is_some_and(|p| p.index == entry.index)
                && let Some(p) = proposals.pop_front()
            {
                let resp = if p.term == entry.term {
                    resp
                } else {
                    err_response(Error::StaleCommand)
                };
                fsm.done.push((p, resp));
            }
            fsm.apply_state.applied_index = entry.index;
            fsm.dirty = true;
        }
        for p in proposals {
            fsm.done.push((p, err_response(Error::StaleCommand)));
        }
        if fsm.dirty {
            wb.put_msg(
                Cf::Raft,
                &keys::apply_state_key(fsm.region.id),
                &fsm.apply_state,
            );
        }
    }
}

/// Applies one entry to `wb`, returning the response for its proposer.
fn apply_entry(wb: &mut WriteBatch, region: &Region, entry: &Entry) -> RaftCmdResponse {
    if entry.data.is_empty() || entry.entry_type() != EntryType::EntryNormal {
        // A new leader's empty entry (or a conf change, not yet supported).
        return RaftCmdResponse::default();
    }
    let request = match RaftCmdRequest::decode(entry.data.clone()) {
        Ok(r) => r,
        Err(e) => return err_response(Error::InvalidRequest(format!("undecodable entry: {e}"))),
    };
    let mut responses = Vec::with_capacity(request.requests.len());
    for r in &request.requests {
        let cmd = match &r.cmd {
            Some(request::Cmd::Put(p)) => {
                wb.put(Cf::Default, &keys::data_key(&p.key), &p.value);
                response::Cmd::Put(PutResponse {})
            }
            Some(request::Cmd::Delete(d)) => {
                wb.delete(Cf::Default, &keys::data_key(&d.key));
                response::Cmd::Delete(DeleteResponse {})
            }
            Some(request::Cmd::DeleteRange(d)) => {
                let end = if d.end_key.is_empty()
                    || (!region.end_key.is_empty() && d.end_key > region.end_key)
                {
                    keys::data_end_key(&region.end_key)
                } else {
                    keys::data_key(&d.end_key)
                };
                wb.delete_range(Cf::Default, &keys::data_key(&d.start_key), &end);
                response::Cmd::DeleteRange(DeleteRangeResponse {})
            }
            _ => continue,
        };
        responses.push(Response { cmd: Some(cmd) });
    }
    RaftCmdResponse {
        header: Some(RaftResponseHeader {
            current_term: entry.term,
            ..Default::default()
        }),
        responses,
        admin_response: None,
    }
}

/// Messages an apply delegate handles per round at most.
const APPLY_MESSAGES_PER_ROUND: usize = 64;

impl PollHandler<ApplyFsm, ApplyControl> for ApplyPoller {
    fn begin(&mut self, _batch_size: usize) {}

    fn handle_control(
        &mut self,
        _control: &mut ApplyControl,
        inbox: &Inbox<'_, ApplyControl>,
    ) -> HandleResult {
        while inbox.try_recv().is_some() {}
        HandleResult::stop_at(0, true)
    }

    fn handle_normal(&mut self, fsm: &mut ApplyFsm, inbox: &Inbox<'_, ApplyFsm>) -> HandleResult {
        for _ in 0..APPLY_MESSAGES_PER_ROUND {
            match inbox.try_recv() {
                Some(ApplyMsg::Apply(task)) => self.apply_task(fsm, task),
                None => return HandleResult::stop_at(inbox.len(), false),
            }
        }
        HandleResult::KeepProcessing
    }

    fn end(&mut self, batch: &mut Batch<'_, ApplyFsm>) {
        if let Some(wb) = self.wb.take() {
            // Apply writes need no sync: the log they come from is durable,
            // and a lost apply is redone from `applied_index + 1` on restart.
            if let Err(e) = self.engine.write(wb, Durability::Buffered) {
                slog::error!(self.logger, "apply write failed"; "err" => %e);
                for fsm in batch.iter_mut() {
                    for (p, _) in fsm.done.drain(..) {
                        (p.callback)(err_response(Error::Engine(e.to_string())));
                    }
                    fsm.dirty = false;
                }
                return;
            }
        }
        for fsm in batch.iter_mut() {
            for (p, resp) in fsm.done.drain(..) {
                (p.callback)(resp);
            }
            if fsm.dirty {
                fsm.dirty = false;
                let res = ApplyRes {
                    region_id: fsm.region.id,
                    apply_state: fsm.apply_state,
                };
                let _ = self
                    .raft_router
                    .force_send(fsm.region.id, PeerMsg::ApplyRes(res));
            }
        }
    }
}
