//! The filters of the in-process network (`ChannelTransport`): delay
//! filters deliver what they hold after being removed, each message once and
//! in due order, and through the filters added after them; one filter can be
//! removed without touching the others; partition and isolate drop exactly
//! the messages between groups.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use flotilla_proto::metapb::Peer;
use flotilla_proto::raft_serverpb::RaftMessage;
use flotilla_raftstore::store::{ChannelTransport, DropFilter, MessageSink, Transport};

/// How long a test waits for something that should happen; far longer than
/// any delay used here, so a slow machine does not fail a test.
const DEADLINE: Duration = Duration::from_secs(20);

/// One delivered message: the store it reached, its tag (the region id) and
/// when.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    store: u64,
    tag: u64,
    at: Instant,
}

/// A sink shared by every store of a test network, recording what arrives
/// in arrival order.
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<Delivery>>,
}

impl MessageSink for Recorder {
    fn deliver(&self, msg: RaftMessage) {
        let store = msg.to_peer.as_ref().map_or(0, |p| p.store_id);
        self.log.lock().unwrap().push(Delivery {
            store,
            tag: msg.region_id,
            at: Instant::now(),
        });
    }
}

impl Recorder {
    fn log(&self) -> Vec<Delivery> {
        self.log.lock().unwrap().clone()
    }

    fn tags(&self) -> Vec<u64> {
        self.log().iter().map(|d| d.tag).collect()
    }

    /// Polls until `done` holds for the log; panics at the deadline.
    fn wait_for(&self, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let log = self.log();
            if done(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; delivered: {:?}",
                log.iter().map(|d| d.tag).collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A network with stores `1..=stores`, all delivering to one recorder.
fn network(stores: u64) -> (ChannelTransport, Arc<Recorder>) {
    let net = ChannelTransport::new();
    let rec = Arc::new(Recorder::default());
    for s in 1..=stores {
        net.connect(s, rec.clone());
    }
    (net, rec)
}

fn peer(store: u64) -> Peer {
    Peer {
        id: store,
        store_id: store,
        ..Default::default()
    }
}

/// A message from store `from` to store `to`, tagged with `tag` (carried as
/// the region id).
fn msg(tag: u64, from: u64, to: u64) -> RaftMessage {
    RaftMessage {
        region_id: tag,
        from_peer: Some(peer(from)),
        to_peer: Some(peer(to)),
        ..Default::default()
    }
}

/// Sends `(tag, from, to)` messages and flushes them as one batch.
fn send(net: &mut ChannelTransport, msgs: &[(u64, u64, u64)]) {
    for &(tag, from, to) in msgs {
        net.send(msg(tag, from, to)).unwrap();
    }
    net.flush();
}

/// Sends three batches a little apart, so their due times differ, and
/// returns when each flush started.
fn send_spread_batches(net: &mut ChannelTransport) -> [Instant; 3] {
    let mut starts = [Instant::now(); 3];
    for (i, start) in starts.iter_mut().enumerate() {
        let base = 2 * i as u64;
        *start = Instant::now();
        send(net, &[(base + 1, 1, 2), (base + 2, 2, 3)]);
        thread::sleep(Duration::from_millis(30));
    }
    starts
}

/// The six messages of `send_spread_batches` arrive once each, in send
/// (due) order, none before its batch's flush plus `delay`.
fn check_spread_delivery(rec: &Recorder, starts: [Instant; 3], delay: Duration) {
    let log = rec.wait_for("all six delayed messages", |l| l.len() >= 6);
    // Give a second copy time to show up if one were coming.
    thread::sleep(Duration::from_millis(200));
    let log_after = rec.log();
    assert_eq!(log_after.len(), log.len(), "a message was delivered twice");
    let tags: Vec<u64> = log.iter().map(|d| d.tag).collect();
    assert_eq!(
        tags,
        vec![1, 2, 3, 4, 5, 6],
        "not exactly once in due order"
    );
    for d in &log {
        let batch = ((d.tag - 1) / 2) as usize;
        assert!(
            d.at >= starts[batch] + delay,
            "message {} delivered before its due time",
            d.tag
        );
        let to = if d.tag % 2 == 1 { 2 } else { 3 };
        assert_eq!(d.store, to, "message {} reached the wrong store", d.tag);
    }
}

#[test]
fn clear_filters_still_delivers_everything_a_delay_filter_holds() {
    let (mut net, rec) = network(3);
    let delay = Duration::from_millis(1500);
    net.delay(delay);
    let starts = send_spread_batches(&mut net);

    let t = Instant::now();
    net.clear_filters();
    let took = t.elapsed();
    // Healing must not wait for the held messages to fall due.
    assert!(
        took < delay / 2,
        "clear_filters blocked for {took:?} (delay {delay:?})"
    );

    check_spread_delivery(&rec, starts, delay);

    // The network is healed: new messages are delivered at once, by flush.
    send(&mut net, &[(100, 3, 1)]);
    assert_eq!(rec.tags().last(), Some(&100));
}

#[test]
fn remove_filter_still_delivers_everything_a_delay_filter_holds() {
    let (mut net, rec) = network(3);
    let delay = Duration::from_millis(800);
    let d = net.delay(delay);
    let starts = send_spread_batches(&mut net);

    assert!(net.remove_filter(d), "the delay filter was installed");
    assert!(!net.remove_filter(d), "a filter is removed only once");

    // No longer delayed: delivered synchronously by flush.
    send(&mut net, &[(100, 3, 1)]);
    assert!(
        rec.tags().contains(&100),
        "a message sent after removing the delay filter was still held"
    );

    let log = rec.wait_for("all six delayed messages", |l| l.len() >= 7);
    let delayed: Vec<Delivery> = log.iter().copied().filter(|d| d.tag != 100).collect();
    *rec.log.lock().unwrap() = delayed;
    check_spread_delivery(&rec, starts, delay);
}

#[test]
fn delayed_messages_pass_the_filters_added_after_the_delay() {
    let (mut net, rec) = network(4);
    let delay = Duration::from_millis(1000);
    // Before the delay: applied at flush time.
    net.add_filter(Arc::new(DropFilter {
        to_store: Some(4),
        ..Default::default()
    }));
    net.delay(delay);
    let start = Instant::now();
    send(
        &mut net,
        &[(1, 1, 2), (2, 1, 3), (3, 1, 4), (4, 2, 3), (5, 3, 1)],
    );
    // After the delay, added while the messages are held: applied when
    // they fall due.
    net.isolate(2);
    // Added and removed again before they fall due: never applied.
    let gone = net.add_filter(Arc::new(DropFilter {
        to_store: Some(3),
        ..Default::default()
    }));
    assert!(net.remove_filter(gone));
    if start.elapsed() >= delay {
        eprintln!("machine too slow: the filters went in after the messages fell due; skipped");
        return;
    }

    let log = rec.wait_for("messages 2 and 5", |l| {
        let tags: BTreeSet<u64> = l.iter().map(|d| d.tag).collect();
        tags.contains(&2) && tags.contains(&5)
    });
    thread::sleep(Duration::from_millis(200));
    assert_eq!(rec.log().len(), log.len());
    let tags: Vec<u64> = log.iter().map(|d| d.tag).collect();
    assert_eq!(
        tags,
        vec![2, 5],
        "1 and 4 touch isolated store 2, 3 goes to dropped store 4"
    );
    assert!(log.iter().all(|d| d.at >= start + delay));
}

#[test]
fn removing_one_filter_leaves_the_others_in_force() {
    let (mut net, rec) = network(3);
    let iso = net.isolate(2);
    let drop_region_7 = net.add_filter(Arc::new(DropFilter {
        region_id: Some(7),
        ..Default::default()
    }));
    let drop_to_3 = net.add_filter(Arc::new(DropFilter {
        to_store: Some(3),
        ..Default::default()
    }));
    assert!(iso < drop_region_7 && drop_region_7 < drop_to_3);

    send(
        &mut net,
        &[(1, 1, 2), (2, 2, 1), (7, 3, 1), (3, 1, 3), (4, 3, 1)],
    );
    assert_eq!(rec.tags(), vec![4], "all three filters in force");

    assert!(net.remove_filter(iso));
    rec.log.lock().unwrap().clear();
    send(
        &mut net,
        &[(1, 1, 2), (2, 2, 1), (7, 3, 1), (3, 1, 3), (4, 3, 1)],
    );
    assert_eq!(
        rec.tags(),
        vec![1, 2, 4],
        "store 2 reachable again; region 7 and store 3 still dropped"
    );

    assert!(net.remove_filter(drop_to_3));
    assert!(!net.remove_filter(iso), "already removed");
    rec.log.lock().unwrap().clear();
    send(&mut net, &[(7, 3, 1), (3, 1, 3), (7, 1, 3)]);
    assert_eq!(rec.tags(), vec![3], "only the region 7 filter is left");

    net.clear_filters();
    assert!(!net.remove_filter(drop_region_7), "cleared");
    rec.log.lock().unwrap().clear();
    send(&mut net, &[(7, 3, 1)]);
    assert_eq!(rec.tags(), vec![7]);

    // Ids are not reused after a clear.
    let again = net.isolate(1);
    assert!(again > drop_to_3);
}

/// Sends one message between every ordered pair of distinct stores in
/// `1..=stores`, tagged `from * 10 + to`, and returns the pairs delivered.
fn all_pairs(net: &mut ChannelTransport, rec: &Recorder, stores: u64) -> BTreeSet<(u64, u64)> {
    rec.log.lock().unwrap().clear();
    let mut msgs = Vec::new();
    for from in 1..=stores {
        for to in (1..=stores).filter(|&to| to != from) {
            msgs.push((from * 10 + to, from, to));
        }
    }
    send(net, &msgs);
    rec.log()
        .iter()
        .map(|d| {
            assert_eq!(d.store, d.tag % 10, "delivered to the wrong store");
            (d.tag / 10, d.tag % 10)
        })
        .collect()
}

#[test]
fn partition_drops_exactly_the_messages_between_groups() {
    let (mut net, rec) = network(5);
    let all = all_pairs(&mut net, &rec, 5);
    assert_eq!(all.len(), 20, "no filter: every message arrives");

    // Store 5 is in no group, so it forms a group of its own.
    let p = net.partition(vec![vec![1, 2], vec![3, 4]]);
    let got = all_pairs(&mut net, &rec, 5);
    let want: BTreeSet<(u64, u64)> = [(1, 2), (2, 1), (3, 4), (4, 3)].into_iter().collect();
    assert_eq!(got, want);

    // Stores left out of every group form one group together.
    assert!(net.remove_filter(p));
    net.partition(vec![vec![1, 2]]);
    let got = all_pairs(&mut net, &rec, 5);
    let want: BTreeSet<(u64, u64)> = all
        .iter()
        .copied()
        .filter(|&(a, b)| (a <= 2) == (b <= 2))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), 2 + 6);

    net.clear_filters();
    assert_eq!(all_pairs(&mut net, &rec, 5), all, "healed");
}

#[test]
fn isolate_drops_exactly_the_messages_of_the_store() {
    let (mut net, rec) = network(4);
    let all = all_pairs(&mut net, &rec, 4);
    assert_eq!(all.len(), 12);

    let i3 = net.isolate(3);
    let got = all_pairs(&mut net, &rec, 4);
    let want: BTreeSet<(u64, u64)> = all
        .iter()
        .copied()
        .filter(|&(a, b)| a != 3 && b != 3)
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), 6);

    // Two isolated stores cannot talk to each other either.
    net.isolate(1);
    let got = all_pairs(&mut net, &rec, 4);
    let want: BTreeSet<(u64, u64)> = [(2, 4), (4, 2)].into_iter().collect();
    assert_eq!(got, want);

    assert!(net.remove_filter(i3));
    let got = all_pairs(&mut net, &rec, 4);
    let want: BTreeSet<(u64, u64)> = all
        .iter()
        .copied()
        .filter(|&(a, b)| a != 1 && b != 1)
        .collect();
    assert_eq!(got, want, "only store 1 is still isolated");
}

#[test]
fn dropping_the_network_discards_held_messages() {
    let (mut net, rec) = network(2);
    let delay = Duration::from_millis(300);
    net.delay(delay);
    let start = Instant::now();
    send(&mut net, &[(1, 1, 2), (2, 2, 1)]);
    drop(net);
    let dropped_at = Instant::now();
    if dropped_at >= start + delay {
        eprintln!("machine too slow: the messages fell due before the drop; skipped");
        return;
    }
    // The delivery thread holds no strong reference to the network: the
    // sinks are released with it.
    let deadline = Instant::now() + DEADLINE;
    while Arc::strong_count(&rec) > 1 {
        assert!(Instant::now() < deadline, "network never freed");
        thread::sleep(Duration::from_millis(5));
    }
    while dropped_at.elapsed() < delay + Duration::from_millis(200) {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        rec.log().is_empty(),
        "delivered after the network was dropped"
    );
}

/// A disconnected store goes silent at once, as a crashed process would:
/// messages to it and from it are refused (its threads may still be
/// winding down and sending); connected again, it is heard again.
#[test]
fn a_disconnected_store_neither_receives_nor_sends() {
    let (mut net, rec) = network(3);
    net.disconnect(3);
    assert!(
        net.send(msg(1, 1, 3)).is_err(),
        "sent to a disconnected store"
    );
    assert!(
        net.send(msg(2, 3, 1)).is_err(),
        "sent from a disconnected store"
    );
    send(&mut net, &[(3, 1, 2)]);
    rec.wait_for("the message between connected stores", |log| {
        !log.is_empty()
    });
    net.connect(3, rec.clone());
    send(&mut net, &[(4, 3, 1)]);
    rec.wait_for("the reconnected store's message", |log| log.len() == 2);
    assert_eq!(rec.tags(), vec![3, 4]);
}
