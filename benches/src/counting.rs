//! A global allocator that counts live heap bytes and allocations while it
//! is enabled, and forwards every call unchanged to the system allocator.
//!
//! A bench installs it with
//! `#[global_allocator] static ALLOC: Counting = Counting;`, calls
//! [`enable`] around what it measures, and reads [`live`] (all threads) or
//! [`thread_live_bytes`] (the calling thread only, so that criterion's or a
//! poller's threads do not disturb the figure). Only differences between
//! two readings mean anything. Disabled, it costs one relaxed load per call,
//! so throughput benches in the same binary are not slowed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// The counting allocator; see the module docs.
pub struct Counting;

static ENABLED: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);
static PEAK_BYTES: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static THREAD_LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

/// Counts `bytes` and `allocs` more (or fewer, when negative) live.
fn track(bytes: isize, allocs: isize) {
    if ENABLED.load(Ordering::Relaxed) {
        let now = LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if bytes > 0 {
            PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
        }
        LIVE_ALLOCS.fetch_add(allocs, Ordering::Relaxed);
        // `try_with`: the thread-local may already be gone while a thread
        // exits; such frees are simply not counted for that thread.
        let _ = THREAD_LIVE_BYTES.try_with(|c| c.set(c.get() + bytes));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged and returns its result, so `System`'s guarantees carry over. The
// bookkeeping touches only atomics and a const-initialized thread-local
// `Cell` without a destructor: it never allocates or re-enters the
// allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded verbatim; the caller upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            track(layout.size() as isize, 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded verbatim; the caller upholds `alloc_zeroed`'s
        // contract.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            track(layout.size() as isize, 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded verbatim; `ptr` came from this allocator (hence
        // from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded verbatim; the caller upholds `realloc`'s
        // contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            track(new_size as isize - layout.size() as isize, 0);
        }
        new
    }
}

/// Turns counting on or off.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// `(live bytes, live allocations)` counted on all threads while enabled.
pub fn live() -> (isize, isize) {
    (
        LIVE_BYTES.load(Ordering::SeqCst),
        LIVE_ALLOCS.load(Ordering::SeqCst),
    )
}

/// The most live bytes (all threads) since the last [`reset_peak`].
pub fn peak_bytes() -> isize {
    PEAK_BYTES.load(Ordering::SeqCst)
}

/// Starts a new peak at the live bytes now.
pub fn reset_peak() {
    PEAK_BYTES.store(LIVE_BYTES.load(Ordering::SeqCst), Ordering::SeqCst);
}

/// Live bytes counted on the calling thread while enabled.
pub fn thread_live_bytes() -> isize {
    THREAD_LIVE_BYTES.with(|c| c.get())
}
