//! Memory tests: lazily allocated inflights and the heap of an idle group.
//!
//! This binary installs a counting global allocator (per thread, so tests
//! running in parallel do not disturb each other's counts): the honest
//! measurement of what a group holds.

mod raft_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use flotilla_proto::eraftpb::MessageType;
use flotilla_raftstore::raft::tracker::IDLE_CHECKS_BEFORE_FREE;
use flotilla_raftstore::raft::{MemStorage, RawNode, StateRole};
use raft_common::*;

/// Heap budget of an idle 3-voter leader `RawNode<MemStorage>` (half of
/// raft-rs 0.7's ~7.1 KB).
const IDLE_LEADER_HEAP_BUDGET: isize = 3584;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the thread-local
// counter is a const-initialized `Cell` without a destructor, so touching it
// never allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + layout.size() as isize));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get() - layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get() + new_size as isize - layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.with(|c| c.get())
}

/// Drives a lone node (id 1 of voters 1,2,3) to an idle leader: elected,
/// `proposals` entries committed and acknowledged by both followers, and
/// enough idle heartbeats for its inflight buffers to be freed.
fn idle_leader(proposals: usize) -> RawNode<MemStorage> {
    let log = logger();
    let mut n = RawNode::new(&config(1), MemStorage::with_voters(&[1, 2, 3], &[]), &log).unwrap();
    let s = n.store().clone();
    n.campaign().unwrap();
    for from in [2, 3] {
        let mut v = msg(MessageType::MsgRequestVoteResponse, from, 1, 1);
        v.reject = false;
        n.step(v).unwrap();
    }
    assert_eq!(n.raft.state(), StateRole::Leader);
    let pump = |n: &mut RawNode<MemStorage>| {
        while n.has_ready() {
            let rd = n.ready();
            persist(&s, &rd);
            let _ = n.advance(rd);
        }
    };
    pump(&mut n);
    let ack = |n: &mut RawNode<MemStorage>| {
        let li = n.raft.raft_log().last_index();
        for from in [2, 3] {
            let mut a = msg(MessageType::MsgAppendResponse, from, 1, 1);
            a.index = li;
            n.step(a).unwrap();
        }
    };
    ack(&mut n);
    pump(&mut n);
    for i in 0..proposals {
        n.propose(vec![], vec![i as u8; 16]).unwrap();
        pump(&mut n);
        ack(&mut n);
        pump(&mut n);
    }
    // Idle heartbeats: answered, nothing new in flight.
    for _ in 0..(IDLE_CHECKS_BEFORE_FREE as usize + 1) * HEARTBEAT_TICK {
        n.tick();
        for from in [2, 3] {
            n.step(msg(MessageType::MsgHeartbeatResponse, from, 1, 1))
                .unwrap();
        }
        pump(&mut n);
    }
    n
}

/// checklist: mem-1
#[test]
fn inflights_hold_no_heap_until_first_append() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    assert_eq!(
        net.node(1).inflight_heap_bytes(),
        0,
        "election used no inflight slots"
    );
    net.cut_one_way(2, 1);
    net.propose(1, b"x").unwrap();
    assert!(
        net.node(1).inflight_heap_bytes() > 0,
        "first pipelined append allocates"
    );
}

/// checklist: mem-2
#[test]
fn idle_leader_frees_inflights_without_explicit_call() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, b"x").unwrap();
    let busy = net.node(1).inflight_heap_bytes();
    assert!(busy > 0);
    net.tick(1, IDLE_CHECKS_BEFORE_FREE as usize * HEARTBEAT_TICK);
    assert!(
        net.node(1).inflight_heap_bytes() > 0,
        "not freed before N idle checks"
    );
    net.tick(1, 2 * HEARTBEAT_TICK);
    assert_eq!(net.node(1).inflight_heap_bytes(), 0);
}

/// checklist: mem-2 (steady load keeps the buffers: no churn)
#[test]
fn steady_load_keeps_inflight_buffers() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..30u8 {
        net.propose(1, &[i]).unwrap();
        net.tick(1, 1);
        assert!(
            net.node(1).inflight_heap_bytes() > 0,
            "freed under load at {i}"
        );
    }
}

/// checklist: mem-1 (an explicit free, e.g. before hibernation)
#[test]
fn explicit_free_of_idle_buffers() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.propose(1, b"x").unwrap();
    let held = net.node(1).inflight_heap_bytes();
    assert_eq!(net.node(1).maybe_free_inflight_buffers(), held);
    assert_eq!(net.node(1).inflight_heap_bytes(), 0);
    net.propose(1, b"y").unwrap();
    assert_eq!(net.applied[&2].len(), 2, "still replicates after freeing");
}

/// checklist: mem-3
#[test]
fn idle_three_voter_leader_heap_within_budget() {
    let _warm = idle_leader(0);
    let log = logger();
    let before = live();
    let n = idle_leader(3);
    let held = live() - before;
    drop(log);
    assert_eq!(n.inflight_heap_bytes(), 0);
    println!(
        "idle 3-voter leader: {held} heap bytes (node + MemStorage), estimate {} bytes, size_of {}",
        n.heap_size(),
        std::mem::size_of::<RawNode<MemStorage>>()
    );
    assert!(held > 0);
    assert!(
        held <= IDLE_LEADER_HEAP_BUDGET,
        "idle leader holds {held} bytes, budget {IDLE_LEADER_HEAP_BUDGET}"
    );
    assert!(
        n.heap_size() as isize <= held,
        "estimate never exceeds the measurement"
    );
}

/// checklist: mem-3 (the fixed part stays small)
#[test]
fn raw_node_fixed_size_is_small() {
    let sz = std::mem::size_of::<RawNode<MemStorage>>();
    println!("size_of::<RawNode<MemStorage>>() = {sz}");
    assert!(sz <= 1024, "{sz}");
}
