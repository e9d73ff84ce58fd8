//! Linearizability checking for histories of per-key read/write registers.
//!
//! Cluster tests run several clients issuing random `put`/`get` operations
//! against the replicated KV store, record every operation's invocation and
//! completion in a [`History`], and finally assert that the recorded history
//! is linearizable with [`check`].
//!
//! # Model
//!
//! Every key is an independent register that initially holds no value
//! (reads of a never-written key observe `None`). An [`Operation`] is one
//! [`Op`] on one key together with its invocation time `call` and completion
//! time `ret`, both on a single shared clock. Operation `a` *precedes*
//! operation `b` in real time iff `a.ret < b.call`; operations that do not
//! precede each other (including ones whose timestamps touch) are concurrent.
//!
//! `ret == None` means the outcome is unknown (timeout, `StaleCommand`, a
//! client that gave up): such a write may take effect at any moment after its
//! call, or never; such a read tells us nothing and is ignored.
//!
//! # Algorithm
//!
//! Registers are P-compositional, so each key is checked on its own. Per key
//! the checker runs the Wing–Gong depth-first search with Lowe's
//! memoization of `(set of decided operations, register value)`
//! configurations (as in Lowe, "Testing for linearizability", 2017, and the
//! porcupine checker). On top of that: a read that matches the register is
//! linearized at once without branching (doing so never loses a solution);
//! values no read observed share one state id; unknown-outcome writes are
//! optional operations whose last useful linearization point is the latest
//! return of a read that observed their value, and unobserved ones are
//! discarded up front. Per key, cost grows with the number of memoized
//! configurations, i.e. with how many writes overlap; a few thousand
//! operations over a handful of keys with 16 clients take well under a
//! second. Use [`check_with_budget`] to bound pathological searches.
//!
//! # Example
//!
//! ```
//! use flotilla_tests::linearizability::{History, check};
//!
//! let history: History<&str, u64> = History::new();
//! let w = history.invoke_write(0, "k", 7);
//! history.complete_write(w);
//! let r = history.invoke_read(1, "k");
//! history.complete_read(r, Some(7));
//! assert!(check(&history.into_operations()).is_ok());
//! ```

mod checker;
mod history;
#[cfg(test)]
mod tests;

use std::fmt;

pub use checker::{CheckError, Violation, check, check_with_budget};
pub use history::{History, OpId};

/// A single register operation and, for reads, the value it observed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op<V> {
    /// Write (put) of a value.
    Write(V),
    /// Read (get) that observed the given value; `None` means "no value".
    Read(Option<V>),
}

impl<V: fmt::Debug> fmt::Display for Op<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Write(value) => write!(f, "write({value:?})"),
            Op::Read(observed) => write!(f, "read -> {observed:?}"),
        }
    }
}

/// One recorded operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<K, V> {
    /// Identifier of the client that issued the operation (for reporting).
    pub client: usize,
    /// Key (register) the operation acts on.
    pub key: K,
    /// What the operation did.
    pub op: Op<V>,
    /// Invocation timestamp.
    pub call: u64,
    /// Completion timestamp, or `None` if the outcome is unknown.
    pub ret: Option<u64>,
}

impl<K, V> Operation<K, V> {
    /// Creates an operation record.
    pub fn new(client: usize, key: K, op: Op<V>, call: u64, ret: Option<u64>) -> Self {
        Self {
            client,
            key,
            op,
            call,
            ret,
        }
    }

    /// Whether this operation completed strictly before `other` was invoked.
    pub fn precedes(&self, other: &Self) -> bool {
        self.ret.is_some_and(|ret| ret < other.call)
    }

    /// Whether the intervals of the two operations overlap (neither precedes
    /// the other).
    pub fn overlaps(&self, other: &Self) -> bool {
        !self.precedes(other) && !other.precedes(self)
    }
}

impl<K, V: fmt::Debug> fmt::Display for Operation<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}: {} @[{}, ", self.client, self.op, self.call)?;
        match self.ret {
            Some(ret) => write!(f, "{ret}]"),
            None => write!(f, "unknown outcome]"),
        }
    }
}
