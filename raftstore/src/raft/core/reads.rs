//! ReadIndex: linearizable reads confirmed by a heartbeat round (Safe) or
//! by the leader lease (LeaseBased).

use bytes::Bytes;
use flotilla_proto::eraftpb::{Message, MessageType};

use super::{INVALID_ID, Raft};
use crate::raft::read_only::{ReadOnlyOption, ReadState, request_ctx};
use crate::raft::storage::Storage;

impl<S: Storage> Raft<S> {
    /// True once the leader has committed an entry of its own term (only
    /// then is its commit index known to be the group's).
    pub fn committed_entry_in_current_term(&self) -> bool {
        self.raft_log
            .term(self.raft_log.committed)
            .is_ok_and(|t| t == self.term)
    }

    pub(crate) fn handle_read_index_on_leader(&mut self, m: Message) {
        if !self.committed_entry_in_current_term() {
            // Defer: the commit index may lag the group's until then. This
            // holds for a single voter too: after a restart its persisted
            // commit can lag what it had applied and acknowledged.
            self.pending_read_index_messages.push(m);
            return;
        }
        self.serve_read_index(m);
    }

    fn serve_read_index(&mut self, m: Message) {
        let idx = self.raft_log.committed;
        if self.prs.is_singleton(self.id) {
            // No one else to ask: the commit index of our own term is the
            // group's.
            self.respond_read(m, idx);
            return;
        }
        match self.read_only.option {
            ReadOnlyOption::Safe => {
                let ctx = request_ctx(&m);
                self.read_only.add_request(idx, m, self.id);
                self.bcast_heartbeat_with_ctx(Some(ctx));
            }
            ReadOnlyOption::LeaseBased => self.respond_read(m, idx),
        }
    }

    /// Releases reads deferred until the first commit of the term.
    pub(crate) fn release_pending_read_index(&mut self) {
        let pending = std::mem::take(&mut self.pending_read_index_messages);
        for m in pending {
            self.serve_read_index(m);
        }
    }

    fn respond_read(&mut self, m: Message, index: u64) {
        if m.from == INVALID_ID || m.from == self.id {
            self.read_states.push(ReadState {
                index,
                request_ctx: request_ctx(&m),
            });
        } else {
            let mut resp = Self::new_message(m.from, MessageType::MsgReadIndexResp);
            resp.index = index;
            resp.entries = m.entries;
            self.send(resp);
        }
    }

    /// A heartbeat response acknowledged read `ctx`: release every read up
    /// to it once a quorum acknowledged.
    pub(crate) fn confirm_read(&mut self, from: u64, ctx: &Bytes) {
        if self.read_only.option != ReadOnlyOption::Safe {
            return;
        }
        let Some(acks) = self.read_only.recv_ack(from, ctx) else {
            return;
        };
        let acks = acks.to_vec();
        if !self.prs.has_quorum(&acks) {
            return;
        }
        for rs in self.read_only.advance(ctx) {
            self.respond_read(rs.req, rs.index);
        }
    }

    /// Follower: the leader answered a forwarded read.
    pub(crate) fn handle_read_index_response(&mut self, m: &Message) {
        self.read_states.push(ReadState {
            index: m.index,
            request_ctx: request_ctx(m),
        });
    }
}
