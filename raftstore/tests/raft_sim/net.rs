//! The simulated network: messages in flight (which may be delivered out of
//! order, dropped or duplicated) and the links a partition cuts.

use std::collections::{BTreeSet, VecDeque};

use flotilla_proto::eraftpb::{Message, MessageType};

/// One message in flight.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Sequence number (unique per send; duplicates get a new one).
    pub seq: u64,
    /// The message.
    pub msg: Message,
    /// The sender's incarnation when it sent the message.
    pub from_incarnation: u64,
}

/// Messages in flight plus the cut links.
#[derive(Debug, Default)]
pub struct Network {
    queue: VecDeque<Packet>,
    cut: BTreeSet<(u64, u64)>,
    next_seq: u64,
}

impl Network {
    /// Puts `msg` on the wire.
    pub fn send(&mut self, msg: Message, from_incarnation: u64) -> u64 {
        self.next_seq += 1;
        self.queue.push_back(Packet {
            seq: self.next_seq,
            msg,
            from_incarnation,
        });
        self.next_seq
    }

    /// Number of messages in flight.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True if nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes the `i`-th message in flight (0 is the oldest).
    pub fn take(&mut self, i: usize) -> Option<Packet> {
        self.queue.remove(i)
    }

    /// Index of the oldest message in flight to `to`.
    pub fn position_to(&self, to: u64) -> Option<usize> {
        self.queue.iter().position(|p| p.msg.to == to)
    }

    /// Sends a second copy of the `i`-th message; returns its type.
    pub fn duplicate(&mut self, i: usize) -> Option<MessageType> {
        let p = self.queue.get(i)?.clone();
        let t = p.msg.msg_type();
        self.send(p.msg, p.from_incarnation);
        Some(t)
    }

    /// True if the link `from -> to` is cut.
    pub fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.contains(&(from, to))
    }

    /// Cuts the link `from -> to`.
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&mut self, a: u64, b: u64) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Number of cut links.
    pub fn cut_links(&self) -> usize {
        self.cut.len()
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.cut.clear();
    }
}

/// A one-line description of a message, for the trace.
pub fn describe(m: &Message) -> String {
    let snap = m
        .snapshot
        .as_ref()
        .and_then(|s| s.metadata.as_ref())
        .map_or(String::new(), |md| {
            format!(" snap@{}/{}", md.index, md.term)
        });
    format!(
        "{:?} {}->{} t{} i{} lt{} c{} n{}{}{}",
        m.msg_type(),
        m.from,
        m.to,
        m.term,
        m.index,
        m.log_term,
        m.commit,
        m.entries.len(),
        if m.reject { " rej" } else { "" },
        snap
    )
}
