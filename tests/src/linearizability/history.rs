//! Thread-safe recorder of operation invocations and completions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Op, Operation};

/// Handle of an operation recorded by [`History`]; pass it back to complete
/// the operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(usize);

/// Lifecycle of a recorded operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Invoked, outcome not (yet) known.
    Pending,
    /// Completed with a known result.
    Completed,
    /// Definitely had no effect; excluded from the history.
    Failed,
}

#[derive(Debug)]
struct Record<K, V> {
    operation: Operation<K, V>,
    status: Status,
}

/// Concurrent recorder of a client-observed history.
///
/// Share it between client threads (`&History` or `Arc<History>`). Call
/// `invoke_*` immediately before sending a request and `complete_*` right
/// after the response arrived. Timestamps come from one atomic counter, so if
/// an operation completed before another was invoked, its `ret` is strictly
/// smaller than the other's `call`.
///
/// An operation that is never completed (timeout, `StaleCommand`, ...) ends
/// up with `ret == None`: its outcome is unknown. Use [`History::fail`] only
/// when an error proves the operation had no effect (e.g. it was rejected
/// before being proposed).
#[derive(Debug)]
pub struct History<K, V> {
    clock: AtomicU64,
    records: Mutex<Vec<Record<K, V>>>,
}

impl<K, V> Default for History<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> History<K, V> {
    /// Creates an empty history whose clock starts at zero.
    pub fn new() -> Self {
        Self {
            clock: AtomicU64::new(0),
            records: Mutex::new(Vec::new()),
        }
    }

    /// Records the invocation of a write of `value` to `key` by `client`.
    pub fn invoke_write(&self, client: usize, key: K, value: V) -> OpId {
        self.invoke(client, key, Op::Write(value))
    }

    /// Records the invocation of a read of `key` by `client`.
    pub fn invoke_read(&self, client: usize, key: K) -> OpId {
        self.invoke(client, key, Op::Read(None))
    }

    /// Records that the write `id` completed successfully.
    ///
    /// # Panics
    ///
    /// If `id` is not a pending write of this history.
    pub fn complete_write(&self, id: OpId) {
        let ret = self.tick();
        let mut records = self.lock();
        let record = Self::pending(&mut records, id);
        assert!(
            matches!(record.operation.op, Op::Write(_)),
            "complete_write called on a read ({id:?})"
        );
        record.operation.ret = Some(ret);
        record.status = Status::Completed;
    }

    /// Records that the read `id` completed and observed `observed`
    /// (`None` if the key had no value).
    ///
    /// # Panics
    ///
    /// If `id` is not a pending read of this history.
    pub fn complete_read(&self, id: OpId, observed: Option<V>) {
        let ret = self.tick();
        let mut records = self.lock();
        let record = Self::pending(&mut records, id);
        assert!(
            matches!(record.operation.op, Op::Read(_)),
            "complete_read called on a write ({id:?})"
        );
        record.operation.op = Op::Read(observed);
        record.operation.ret = Some(ret);
        record.status = Status::Completed;
    }

    /// Records that operation `id` definitely took no effect; it is left out
    /// of the history. Do not use this for timeouts: leave those pending.
    ///
    /// # Panics
    ///
    /// If `id` is not a pending operation of this history.
    pub fn fail(&self, id: OpId) {
        let mut records = self.lock();
        Self::pending(&mut records, id).status = Status::Failed;
    }

    /// Number of recorded invocations (including failed ones).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Snapshot of the history so far; operations still pending have an
    /// unknown outcome (`ret == None`).
    pub fn operations(&self) -> Vec<Operation<K, V>>
    where
        K: Clone,
        V: Clone,
    {
        self.lock()
            .iter()
            .filter(|record| record.status != Status::Failed)
            .map(|record| record.operation.clone())
            .collect()
    }

    /// Consumes the recorder and returns the history; operations still
    /// pending have an unknown outcome (`ret == None`).
    pub fn into_operations(self) -> Vec<Operation<K, V>> {
        self.records
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .into_iter()
            .filter(|record| record.status != Status::Failed)
            .map(|record| record.operation)
            .collect()
    }

    fn invoke(&self, client: usize, key: K, op: Op<V>) -> OpId {
        let call = self.tick();
        let mut records = self.lock();
        records.push(Record {
            operation: Operation::new(client, key, op, call, None),
            status: Status::Pending,
        });
        OpId(records.len() - 1)
    }

    /// Next timestamp. `SeqCst` keeps the counter consistent with the real
    /// order in which threads observe responses and send requests.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// Locks the records, tolerating poisoning so that one panicking client
    /// thread does not hide the history from the test's final report.
    fn lock(&self) -> MutexGuard<'_, Vec<Record<K, V>>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(records: &mut [Record<K, V>], id: OpId) -> &mut Record<K, V> {
        let record = records
            .get_mut(id.0)
            .unwrap_or_else(|| panic!("unknown operation {id:?}"));
        assert_eq!(
            record.status,
            Status::Pending,
            "operation {id:?} was already resolved"
        );
        record
    }
}
