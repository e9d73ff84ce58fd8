//! A lazily allocated ring of in-flight append indexes.
//!
//! A follower in replicate state may have up to `cap` appends in flight; each
//! slot remembers the last index an append carried so that an acknowledgement
//! frees every append up to it. With 100,000 groups on a store most
//! followers are idle most of the time, so the ring holds *no* buffer until
//! the first append goes out, grows in doubling blocks up to `cap`, and gives
//! its buffer back once it has stayed empty for
//! [`IDLE_CHECKS_BEFORE_FREE`] consecutive idle checks (the leader runs one
//! check per heartbeat). A check that saw an append since the previous one
//! resets the count, so a busy group never churns its allocation.

/// Slots allocated on the first in-flight append.
pub const INITIAL_INFLIGHT_SLOTS: usize = 8;
/// Consecutive idle checks (with the window empty and no append added in
/// between) after which the buffer is freed.
pub const IDLE_CHECKS_BEFORE_FREE: u8 = 3;

/// The in-flight append window of one follower.
///
/// Invariants: `count <= buffer.len() <= cap`; the live slots are
/// `buffer[(start + i) % buffer.len()]` for `i in 0..count`, in increasing
/// index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inflights {
    buffer: Vec<u64>,
    start: u32,
    count: u32,
    cap: u32,
    idle_checks: u8,
    added_since_check: bool,
}

impl Inflights {
    /// An empty window holding at most `cap` appends; allocates nothing.
    ///
    /// # Panics
    ///
    /// If `cap` does not fit in `u32` (rejected earlier by
    /// [`Config::validate`](crate::raft::Config::validate)).
    pub fn new(cap: usize) -> Self {
        Inflights {
            buffer: Vec::new(),
            start: 0,
            count: 0,
            cap: u32::try_from(cap).expect("max_inflight_msgs validated to fit u32"),
            idle_checks: 0,
            added_since_check: false,
        }
    }

    /// True when no more appends may be sent.
    #[inline]
    pub fn full(&self) -> bool {
        self.count == self.cap
    }

    /// Number of appends in flight.
    #[inline]
    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// The maximum number of appends in flight.
    pub fn cap(&self) -> usize {
        self.cap as usize
    }

    /// Bytes of heap the window currently holds.
    pub fn heap_bytes(&self) -> usize {
        self.buffer.capacity() * std::mem::size_of::<u64>()
    }

    /// Records an append whose last entry is `last_index`.
    ///
    /// # Panics
    ///
    /// If the window is full (callers check [`Inflights::full`] first), or if
    /// `last_index` is not greater than the last recorded index.
    #[inline]
    pub fn add(&mut self, last_index: u64) {
        assert!(!self.full(), "add to a full inflights window");
        if self.count as usize == self.buffer.len() {
            self.grow();
        }
        let len = self.buffer.len();
        let pos = (self.start as usize + self.count as usize) % len;
        self.buffer[pos] = last_index;
        self.count += 1;
        self.added_since_check = true;
        self.idle_checks = 0;
    }

    fn grow(&mut self) {
        let len = self.buffer.len();
        let new_len = (len * 2).max(INITIAL_INFLIGHT_SLOTS).min(self.cap as usize);
        let mut buf = Vec::with_capacity(new_len);
        for i in 0..self.count as usize {
            buf.push(self.buffer[(self.start as usize + i) % len]);
        }
        buf.resize(new_len, 0);
        self.buffer = buf;
        self.start = 0;
    }

    /// Frees every in-flight append with last index `<= to`.
    #[inline]
    pub fn free_to(&mut self, to: u64) {
        let len = self.buffer.len();
        while self.count > 0 && self.buffer[self.start as usize] <= to {
            self.start = ((self.start as usize + 1) % len) as u32;
            self.count -= 1;
        }
        if self.count == 0 {
            self.start = 0;
        }
    }

    /// Frees the oldest in-flight append (a heartbeat response while full).
    pub fn free_first_one(&mut self) {
        if self.count > 0 {
            let first = self.buffer[self.start as usize];
            self.free_to(first);
        }
    }

    /// Forgets every in-flight append (keeps the buffer).
    pub fn reset(&mut self) {
        self.count = 0;
        self.start = 0;
    }

    /// One idle check: frees the buffer once the window has been empty, with
    /// no append added, for [`IDLE_CHECKS_BEFORE_FREE`] consecutive checks.
    /// Returns true if it freed the buffer.
    pub fn maybe_free_idle(&mut self) -> bool {
        if self.buffer.capacity() == 0 {
            return false;
        }
        if self.count > 0 || self.added_since_check {
            self.idle_checks = 0;
            self.added_since_check = false;
            return false;
        }
        self.idle_checks = self.idle_checks.saturating_add(1);
        if self.idle_checks >= IDLE_CHECKS_BEFORE_FREE {
            self.free_buffer()
        } else {
            false
        }
    }

    /// Frees the buffer now if the window is empty. Returns true if it freed.
    pub fn free_buffer(&mut self) -> bool {
        if self.count == 0 && self.buffer.capacity() > 0 {
            self.buffer = Vec::new();
            self.start = 0;
            self.idle_checks = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// checklist: mem-1
    #[test]
    fn no_heap_until_first_add() {
        let mut i = Inflights::new(256);
        assert_eq!(i.heap_bytes(), 0);
        i.free_to(100);
        i.reset();
        assert_eq!(i.heap_bytes(), 0);
        i.add(1);
        assert_eq!(i.heap_bytes(), INITIAL_INFLIGHT_SLOTS * 8);
    }

    /// checklist: log-8 (grows in blocks, never past the cap)
    #[test]
    fn grows_in_blocks_up_to_cap() {
        let mut i = Inflights::new(20);
        for k in 1..=20 {
            i.add(k);
        }
        assert!(i.full());
        assert_eq!(i.heap_bytes(), 20 * 8);
        assert_eq!(i.count(), 20);
    }

    /// checklist: log-8 (acks free slots in order, ring wraps)
    #[test]
    fn free_to_and_wrap() {
        let mut i = Inflights::new(10);
        for k in 1..=8 {
            i.add(k);
        }
        i.free_to(5);
        assert_eq!(i.count(), 3);
        for k in 9..=13 {
            i.add(k);
        }
        assert_eq!(i.count(), 8);
        i.free_to(0);
        assert_eq!(i.count(), 8, "stale ack frees nothing");
        i.free_first_one();
        assert_eq!(i.count(), 7);
        i.free_to(12);
        assert_eq!(i.count(), 1);
        i.add(14);
        i.add(15);
        i.free_to(15);
        assert_eq!(i.count(), 0);
    }

    /// checklist: log-8
    #[test]
    #[should_panic(expected = "full")]
    fn add_to_full_panics() {
        let mut i = Inflights::new(1);
        i.add(1);
        i.add(2);
    }

    /// checklist: mem-2 (freed only after consecutive idle checks)
    #[test]
    fn idle_free_after_consecutive_checks() {
        let mut i = Inflights::new(16);
        i.add(1);
        i.free_to(1);
        let checks = IDLE_CHECKS_BEFORE_FREE as usize;
        // The check right after an add does not count as idle.
        assert!(!i.maybe_free_idle());
        for _ in 1..checks {
            assert!(!i.maybe_free_idle());
        }
        assert!(i.maybe_free_idle());
        assert_eq!(i.heap_bytes(), 0);
        assert!(!i.maybe_free_idle(), "nothing left to free");
    }

    /// checklist: mem-2 (steady load keeps the buffer: no churn)
    #[test]
    fn steady_load_keeps_buffer() {
        let mut i = Inflights::new(16);
        for k in 1..100 {
            i.add(k);
            i.free_to(k);
            assert!(!i.maybe_free_idle(), "freed under load at {k}");
        }
        assert!(i.heap_bytes() > 0);
    }

    /// checklist: mem-1 (explicit free only when empty)
    #[test]
    fn free_buffer_only_when_empty() {
        let mut i = Inflights::new(4);
        i.add(1);
        assert!(!i.free_buffer());
        i.free_to(1);
        assert!(i.free_buffer());
        assert_eq!(i.heap_bytes(), 0);
        i.add(2);
        assert_eq!(i.count(), 1);
    }
}
