//! The heartbeat coalescer (DESIGN §5): no region's `MsgHeartbeat` or
//! `MsgHeartbeatResponse` goes on the wire alone.
//!
//! Lifecycle: the raft pollers hand every heartbeat and heartbeat response
//! their peers send to [`Coalescer::push`], which files it under its
//! destination store. Once per heartbeat interval the store clock drains the
//! buffers ([`Coalescer::drain`]) into one batch of beats and one batch of
//! responses per destination store (never mixed), each a `RaftMessage`
//! carrying a `StoreHeartbeat` or `StoreHeartbeatResponse`. A beat that
//! carries a ReadIndex context asks for a flush at the end of the poll round
//! instead, so reads never wait an interval. The receiving store
//! [`fan_out`]s a batch back into one raft message per region, each with
//! that region's own term, commit and context: one region's beat never
//! touches another region's state, and the response runs the leader's
//! usual logic. Commit also travels on appends, so beats are never the
//! only commit channel.
//!
//! Every batch carries the sender's liveness stamp, so the batches are the
//! store-liveness heartbeats too (`liveness`); the store clock sends a
//! bare beat ([`liveness_beat`]) to each remote store no batch went to in
//! the last heartbeat interval, so two stores whose regions all sleep (or
//! whose pollers are busy) still hear each other with one message per
//! interval. Hibernation beats (a leader's
//! request to sleep, a follower's request to wake its leader) ride in the
//! same batches (`hibernation`).

use flotilla_proto::eraftpb::{Message, MessageType};
use flotilla_proto::metapb::{Peer, RegionEpoch};
use flotilla_proto::raft_serverpb::{Beat, RaftMessage, StoreHeartbeat, StoreHeartbeatResponse};
use fxhash::FxHashMap;
use parking_lot::Mutex;

use super::hibernation::SleepMsg;

/// Whether a raft message of this type is coalesced.
pub fn is_coalesced(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
    )
}

/// Beats waiting for one destination store.
#[derive(Debug, Default)]
struct Pending {
    beats: Vec<Beat>,
    responses: Vec<Beat>,
}

/// A store's outgoing heartbeats, by destination store.
#[derive(Debug)]
pub struct Coalescer {
    store_id: u64,
    /// The store's liveness epoch, stamped on every batch.
    epoch: u64,
    pending: Mutex<FxHashMap<u64, Pending>>,
}

impl Coalescer {
    /// The coalescer of store `store_id` in its life `epoch`.
    pub fn new(store_id: u64, epoch: u64) -> Coalescer {
        Coalescer {
            store_id,
            epoch,
            pending: Mutex::new(FxHashMap::default()),
        }
    }

    /// Files a hibernation beat for store `to_store`: a response (the
    /// follower side) or a beat (the leader side).
    pub fn push_beat(&self, to_store: u64, beat: Beat, response: bool) {
        let mut pending = self.pending.lock();
        let slot = pending.entry(to_store).or_default();
        if response {
            slot.responses.push(beat);
        } else {
            slot.beats.push(beat);
        }
    }

    /// Files heartbeat (or response) `m` of region `region_id` (at
    /// `conf_ver`) for store `to_store`. Returns whether it carries a
    /// ReadIndex context: then the caller should flush at the end of its
    /// round.
    pub fn push(&self, region_id: u64, conf_ver: u64, to_store: u64, m: &Message) -> bool {
        let first_contact = m.msg_type() == MessageType::MsgHeartbeat && m.commit == 0;
        let beat = Beat {
            conf_ver: if first_contact { conf_ver } else { 0 },
            region_id,
            from_peer: m.from,
            to_peer: m.to,
            term: m.term,
            commit: m.commit,
            context: m.context.clone(),
            quiesce: false,
            wake: false,
        };
        let urgent = !beat.context.is_empty();
        let mut pending = self.pending.lock();
        let slot = pending.entry(to_store).or_default();
        if m.msg_type() == MessageType::MsgHeartbeatResponse {
            slot.responses.push(beat);
        } else {
            slot.beats.push(beat);
        }
        urgent
    }

    /// Takes every buffered beat: one batch message per destination store
    /// and kind, beats and responses never mixed. Each batch gets the
    /// (withdrawals, echo) liveness stamp `stamp` gives for its
    /// destination. The buffers are swapped out under the lock and the
    /// batches built outside it.
    pub fn drain(&self, stamp: impl Fn(u64) -> (u64, u64)) -> Vec<RaftMessage> {
        let pending = std::mem::take(&mut *self.pending.lock());
        let mut out = Vec::with_capacity(pending.len() * 2);
        for (to_store, p) in pending {
            let (withdrawals, echo) = stamp(to_store);
            let envelope = || RaftMessage {
                from_peer: Some(store_peer(self.store_id)),
                to_peer: Some(store_peer(to_store)),
                ..Default::default()
            };
            if !p.beats.is_empty() {
                out.push(RaftMessage {
                    heartbeats: Some(StoreHeartbeat {
                        from_store: self.store_id,
                        to_store,
                        beats: p.beats,
                        epoch: self.epoch,
                        withdrawals,
                        echo,
                    }),
                    ..envelope()
                });
            }
            if !p.responses.is_empty() {
                out.push(RaftMessage {
                    heartbeat_responses: Some(StoreHeartbeatResponse {
                        from_store: self.store_id,
                        to_store,
                        responses: p.responses,
                        epoch: self.epoch,
                        withdrawals,
                        echo,
                    }),
                    ..envelope()
                });
            }
        }
        out
    }

    /// Beats waiting, over every destination.
    #[cfg(test)]
    pub fn pending_beats(&self) -> usize {
        self.pending
            .lock()
            .values()
            .map(|p| p.beats.len() + p.responses.len())
            .sum()
    }
}

/// A bare store-liveness beat: an empty beats batch from store `from` in
/// its life `epoch` to store `to`, with the (withdrawals, echo) stamp.
pub fn liveness_beat(
    from: u64,
    epoch: u64,
    to: u64,
    (withdrawals, echo): (u64, u64),
) -> RaftMessage {
    RaftMessage {
        from_peer: Some(store_peer(from)),
        to_peer: Some(store_peer(to)),
        heartbeats: Some(StoreHeartbeat {
            from_store: from,
            to_store: to,
            beats: Vec::new(),
            epoch,
            withdrawals,
            echo,
        }),
        ..Default::default()
    }
}

/// A peer that names only its store (the envelope of a batch).
fn store_peer(store_id: u64) -> Peer {
    Peer {
        id: 0,
        store_id,
        ..Default::default()
    }
}

/// Who sent a batch, as its liveness stamp says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSender {
    /// The sending store.
    pub store: u64,
    /// Its liveness epoch (its life).
    pub epoch: u64,
    /// Times it withdrew support from the receiver.
    pub withdrawals: u64,
    /// The receiver's withdrawals it heard of.
    pub echo: u64,
}

/// The sender of a batch (`None` for a message that is not one).
pub fn batch_sender(msg: &RaftMessage) -> Option<BatchSender> {
    match (&msg.heartbeats, &msg.heartbeat_responses) {
        (Some(b), _) => Some(BatchSender {
            store: b.from_store,
            epoch: b.epoch,
            withdrawals: b.withdrawals,
            echo: b.echo,
        }),
        (None, Some(r)) => Some(BatchSender {
            store: r.from_store,
            epoch: r.epoch,
            withdrawals: r.withdrawals,
            echo: r.echo,
        }),
        (None, None) => None,
    }
}

/// One region's part of a coalesced batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Fanned {
    /// A raft heartbeat or heartbeat response.
    Raft(Box<RaftMessage>),
    /// A hibernation message for the peer of `region_id`.
    Sleep {
        /// The region.
        region_id: u64,
        /// The message.
        msg: SleepMsg,
    },
}

/// The per-region messages of a coalesced batch, in batch order. A message
/// that is not a batch comes back alone.
pub fn fan_out(msg: RaftMessage) -> Vec<Fanned> {
    let (from_store, to_store, beats, t) = match (msg.heartbeats, msg.heartbeat_responses) {
        (Some(b), None) => (b.from_store, b.to_store, b.beats, MessageType::MsgHeartbeat),
        (None, Some(r)) => (
            r.from_store,
            r.to_store,
            r.responses,
            MessageType::MsgHeartbeatResponse,
        ),
        (None, None) => {
            return vec![Fanned::Raft(Box::new(RaftMessage {
                heartbeats: None,
                heartbeat_responses: None,
                ..msg
            }))];
        }
        // Never sent; refuse it whole rather than guess.
        (Some(_), Some(_)) => return Vec::new(),
    };
    beats
        .into_iter()
        .map(|b| {
            if t == MessageType::MsgHeartbeat && b.quiesce {
                return Fanned::Sleep {
                    region_id: b.region_id,
                    msg: SleepMsg::Request {
                        from: b.from_peer,
                        from_store,
                        term: b.term,
                        commit: b.commit,
                    },
                };
            }
            if t == MessageType::MsgHeartbeatResponse && b.wake {
                return Fanned::Sleep {
                    region_id: b.region_id,
                    msg: SleepMsg::WakeLeader { from: b.from_peer },
                };
            }
            Fanned::Raft(Box::new(raft_beat(from_store, to_store, b, t)))
        })
        .collect()
}

/// The raft message a beat stands for.
fn raft_beat(from_store: u64, to_store: u64, b: Beat, t: MessageType) -> RaftMessage {
    RaftMessage {
        region_id: b.region_id,
        from_peer: Some(Peer {
            id: b.from_peer,
            store_id: from_store,
            ..Default::default()
        }),
        to_peer: Some(Peer {
            id: b.to_peer,
            store_id: to_store,
            ..Default::default()
        }),
        region_epoch: (b.conf_ver > 0).then_some(RegionEpoch {
            conf_ver: b.conf_ver,
            version: 0,
        }),
        message: Some(Message {
            msg_type: t as i32,
            from: b.from_peer,
            to: b.to_peer,
            term: b.term,
            commit: b.commit,
            context: b.context,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(t: MessageType, from: u64, to: u64, term: u64, commit: u64, ctx: &[u8]) -> Message {
        Message {
            msg_type: t as i32,
            from,
            to,
            term,
            commit,
            context: ctx.to_vec().into(),
            ..Default::default()
        }
    }

    /// Beats of many regions to two stores become one batch of beats and
    /// one of responses per store, never mixed; fanning a batch out gives
    /// back each region's own message, term, commit and context.
    #[test]
    fn coalesce_and_fan_out_round_trip() {
        let c = Coalescer::new(1, 5);
        let mut sent = Vec::new();
        for region in 1..=50u64 {
            for to_store in [2u64, 3] {
                let m = hb(
                    MessageType::MsgHeartbeat,
                    region * 64 + 1,
                    region * 64 + to_store,
                    region,
                    region * 10,
                    if region == 7 { b"read" } else { b"" },
                );
                let urgent = c.push(region, 0, to_store, &m);
                assert_eq!(urgent, region == 7);
                sent.push((region, to_store, m));
            }
        }
        let r = hb(MessageType::MsgHeartbeatResponse, 65, 66, 1, 0, b"");
        c.push(1, 9, 2, &r);
        assert_eq!(c.pending_beats(), 101);
        let batches = c.drain(|_| (0, 0));
        assert_eq!(c.pending_beats(), 0);
        assert_eq!(batches.len(), 3, "beats to 2 and 3, responses to 2");
        let mut got = Vec::new();
        for b in batches {
            assert!(batch_sender(&b).is_some());
            assert!(!(b.heartbeats.is_some() && b.heartbeat_responses.is_some()));
            assert_eq!(b.region_id, 0);
            assert_eq!(
                batch_sender(&b),
                Some(BatchSender {
                    store: 1,
                    epoch: 5,
                    withdrawals: 0,
                    echo: 0
                })
            );
            for m in fan_out(b) {
                let Fanned::Raft(m) = m else {
                    panic!("no hibernation beat was sent: {m:?}")
                };
                let to_store = m.to_peer.unwrap().store_id;
                got.push((m.region_id, to_store, m.message.unwrap()));
            }
        }
        assert_eq!(got.len(), 101);
        for (region, to_store, m) in &sent {
            assert!(
                got.contains(&(*region, *to_store, m.clone())),
                "beat of region {region} to store {to_store} lost or changed"
            );
        }
        assert!(got.contains(&(1, 2, r)));
    }

    /// A beat that commits nothing (to a peer just added) carries its
    /// region's conf_ver, fanned out as the message's epoch: a stale peer
    /// on the receiving store learns it was replaced, and a tombstone tells
    /// the new peer from the removed one. Other beats and responses carry
    /// none (a steady beat stays as small as it was).
    #[test]
    fn first_contact_beats_carry_the_conf_ver() {
        let c = Coalescer::new(1, 5);
        c.push(1, 7, 2, &hb(MessageType::MsgHeartbeat, 11, 12, 6, 0, b""));
        c.push(2, 7, 2, &hb(MessageType::MsgHeartbeat, 21, 22, 6, 30, b""));
        c.push(
            3,
            7,
            2,
            &hb(MessageType::MsgHeartbeatResponse, 31, 32, 6, 0, b""),
        );
        let mut epochs: Vec<(u64, Option<u64>)> = c
            .drain(|_| (0, 0))
            .into_iter()
            .flat_map(fan_out)
            .map(|f| match f {
                Fanned::Raft(m) => (m.region_id, m.region_epoch.map(|e| e.conf_ver)),
                other => panic!("not a raft beat: {other:?}"),
            })
            .collect();
        epochs.sort_unstable();
        assert_eq!(epochs, vec![(1, Some(7)), (2, None), (3, None)]);
    }

    /// A batch that claims to be both kinds is refused whole; a plain raft
    /// message passes through alone.
    #[test]
    fn malformed_batches_are_refused() {
        let both = RaftMessage {
            heartbeats: Some(StoreHeartbeat::default()),
            heartbeat_responses: Some(StoreHeartbeatResponse::default()),
            ..Default::default()
        };
        assert!(fan_out(both).is_empty());
        let plain = RaftMessage {
            region_id: 4,
            ..Default::default()
        };
        assert_eq!(fan_out(plain.clone()), vec![Fanned::Raft(Box::new(plain))]);
    }

    /// Batches carry the liveness stamp of their destination; a bare
    /// liveness beat is an empty, stamped beats batch; hibernation beats
    /// come back as sleep messages.
    #[test]
    fn liveness_batches_and_sleep_beats() {
        let c = Coalescer::new(1, 9);
        let beat = |quiesce, wake| Beat {
            region_id: 4,
            from_peer: 10,
            to_peer: 20,
            term: 3,
            commit: 7,
            quiesce,
            wake,
            ..Default::default()
        };
        c.push_beat(2, beat(true, false), false);
        c.push_beat(2, beat(false, true), true);
        let mut batches = c.drain(|s| (s, 10 * s));
        batches.sort_by_key(|b| b.heartbeats.is_none());
        assert_eq!(batches.len(), 2, "beats + responses to 2");
        let beats = batches[0].heartbeats.as_ref().unwrap();
        assert_eq!((beats.withdrawals, beats.echo), (2, 20));
        let bare = liveness_beat(1, 9, 3, (3, 30));
        assert_eq!(
            batch_sender(&bare),
            Some(BatchSender {
                store: 1,
                epoch: 9,
                withdrawals: 3,
                echo: 30
            })
        );
        let empty = bare.heartbeats.as_ref().unwrap();
        assert!(empty.beats.is_empty());
        assert_eq!(
            (empty.to_store, empty.epoch, empty.withdrawals, empty.echo),
            (3, 9, 3, 30)
        );
        assert!(fan_out(bare.clone()).is_empty());
        let fanned: Vec<Fanned> = batches.into_iter().flat_map(fan_out).collect();
        assert_eq!(
            fanned,
            vec![
                Fanned::Sleep {
                    region_id: 4,
                    msg: SleepMsg::Request {
                        from: 10,
                        from_store: 1,
                        term: 3,
                        commit: 7
                    }
                },
                Fanned::Sleep {
                    region_id: 4,
                    msg: SleepMsg::WakeLeader { from: 10 }
                },
            ]
        );
    }
}
