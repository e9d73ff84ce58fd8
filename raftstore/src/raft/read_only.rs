//! Pending read-only requests (ReadIndex) awaiting leadership confirmation.

use bytes::Bytes;
use flotilla_proto::eraftpb::Message;

pub use super::config::ReadOnlyOption;

/// A read the application may serve once it has applied up to `index`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadState {
    /// The commit index at the time the read was confirmed.
    pub index: u64,
    /// The context the application passed to `read_index`.
    pub request_ctx: Bytes,
}

/// One pending read on the leader.
#[derive(Debug, Clone)]
pub struct ReadIndexStatus {
    /// The original request (its `from` is the requester; its first entry's
    /// data is the request context).
    pub req: Message,
    /// The commit index when the request arrived.
    pub index: u64,
    /// Ids that acknowledged the heartbeat carrying this request's context.
    pub acks: Vec<u64>,
}

/// The context of a read request: its first entry's data.
pub fn request_ctx(m: &Message) -> Bytes {
    m.entries
        .first()
        .map(|e| e.data.clone())
        .unwrap_or_default()
}

/// Reads waiting for a quorum of heartbeat acknowledgements, in arrival order.
///
/// Invariant: `pending` contexts are unique; an ack for a context confirms
/// every earlier request too.
#[derive(Debug, Clone, Default)]
pub struct ReadOnly {
    /// How reads are confirmed.
    pub option: ReadOnlyOption,
    pending: Vec<ReadIndexStatus>,
}

impl ReadOnly {
    /// An empty queue.
    pub fn new(option: ReadOnlyOption) -> Self {
        ReadOnly {
            option,
            pending: Vec::new(),
        }
    }

    /// Queues a read at `index` unless its context is already queued.
    pub fn add_request(&mut self, index: u64, req: Message, self_id: u64) {
        let ctx = request_ctx(&req);
        if self.pending.iter().any(|s| request_ctx(&s.req) == ctx) {
            return;
        }
        self.pending.push(ReadIndexStatus {
            req,
            index,
            acks: vec![self_id],
        });
    }

    /// Records `id`'s heartbeat ack for `ctx`; returns the acks so far.
    pub fn recv_ack(&mut self, id: u64, ctx: &[u8]) -> Option<&[u64]> {
        let s = self
            .pending
            .iter_mut()
            .find(|s| request_ctx(&s.req).as_ref() == ctx)?;
        if !s.acks.contains(&id) {
            s.acks.push(id);
        }
        Some(&s.acks)
    }

    /// Releases the request with `ctx` and every request before it.
    pub fn advance(&mut self, ctx: &[u8]) -> Vec<ReadIndexStatus> {
        let Some(pos) = self
            .pending
            .iter()
            .position(|s| request_ctx(&s.req).as_ref() == ctx)
        else {
            return Vec::new();
        };
        let rest = self.pending.split_off(pos + 1);
        let done = std::mem::replace(&mut self.pending, rest);
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
        done
    }

    /// The context of the newest pending read, if any.
    pub fn last_pending_request_ctx(&self) -> Option<Bytes> {
        self.pending.last().map(|s| request_ctx(&s.req))
    }

    /// Number of pending reads.
    pub fn pending_read_count(&self) -> usize {
        self.pending.len()
    }

    /// Drops every pending read (leadership lost).
    pub fn reset(&mut self) {
        self.pending = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::eraftpb::Entry;

    fn req(ctx: &'static [u8]) -> Message {
        Message {
            entries: vec![Entry {
                data: Bytes::from_static(ctx),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// checklist: read-1 (an ack for a later read releases earlier ones too)
    #[test]
    fn advance_releases_prefix() {
        let mut r = ReadOnly::new(ReadOnlyOption::Safe);
        r.add_request(5, req(b"a"), 1);
        r.add_request(6, req(b"b"), 1);
        r.add_request(6, req(b"b"), 1);
        r.add_request(7, req(b"c"), 1);
        assert_eq!(r.pending_read_count(), 3, "duplicates ignored");
        assert_eq!(r.recv_ack(2, b"b").unwrap(), &[1, 2]);
        assert_eq!(r.recv_ack(2, b"b").unwrap(), &[1, 2]);
        assert!(r.recv_ack(2, b"zz").is_none());
        let done = r.advance(b"b");
        assert_eq!(done.iter().map(|s| s.index).collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(
            r.last_pending_request_ctx().unwrap(),
            Bytes::from_static(b"c")
        );
        r.reset();
        assert_eq!(r.pending_read_count(), 0);
    }
}
