//! Wing–Gong / Lowe linearizability search for per-key registers.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Debug};
use std::hash::Hash;

use super::{Op, Operation};

/// How many operations of the longest linearizable prefix a [`Violation`]
/// prints (the most recent ones).
const DISPLAY_PREFIX_TAIL: usize = 10;

/// How many concurrent operations a [`Violation`] prints at most.
const DISPLAY_CONCURRENT_MAX: usize = 20;

/// Register-state id of "no value has been written"; value ids start above.
const NO_VALUE: u32 = 0;

/// Register-state id shared by all values no read observed: they are
/// indistinguishable to the rest of the search, and merging them lets
/// memoization recognise more configurations as equivalent.
const UNOBSERVED: u32 = u32::MAX;

/// End-of-list marker of the entry list.
const NIL: usize = usize::MAX;

/// Bits per word of the decided-operations bitset.
const WORD_BITS: usize = u64::BITS as usize;

/// Proof that a history is not linearizable, for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation<K, V> {
    /// The key whose history is not linearizable.
    pub key: K,
    /// Number of operations of this key that took part in the search
    /// (unknown-outcome reads and never-observed unknown writes excluded).
    pub key_operations: usize,
    /// The longest linearizable prefix found, in linearization order.
    pub prefix: Vec<Operation<K, V>>,
    /// Register value after `prefix`.
    pub state: Option<V>,
    /// A completed operation that had to come next (every other candidate
    /// had been tried) but cannot be linearized after `prefix`.
    pub blocked: Operation<K, V>,
    /// Operations outside `prefix` whose intervals overlap `blocked`'s.
    pub concurrent: Vec<Operation<K, V>>,
}

impl<K: Debug, V: Debug> fmt::Display for Violation<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history of key {:?} is not linearizable: only {} of its {} operations \
             can be linearized",
            self.key,
            self.prefix.len(),
            self.key_operations
        )?;
        writeln!(f, "  cannot linearize next: {}", self.blocked)?;
        writeln!(
            f,
            "  register value after the longest linearizable prefix: {:?}",
            self.state
        )?;
        let skipped = self.prefix.len().saturating_sub(DISPLAY_PREFIX_TAIL);
        writeln!(
            f,
            "  end of that prefix ({skipped} earlier operations omitted), oldest first:"
        )?;
        for operation in &self.prefix[skipped..] {
            writeln!(f, "    {operation}")?;
        }
        if self.concurrent.is_empty() {
            write!(f, "  no other unlinearized operation overlaps it")
        } else {
            write!(f, "  unlinearized operations overlapping it:")?;
            for operation in self.concurrent.iter().take(DISPLAY_CONCURRENT_MAX) {
                write!(f, "\n    {operation}")?;
            }
            let hidden = self.concurrent.len().saturating_sub(DISPLAY_CONCURRENT_MAX);
            if hidden > 0 {
                write!(f, "\n    ... and {hidden} more")?;
            }
            Ok(())
        }
    }
}

impl<K: Debug, V: Debug> std::error::Error for Violation<K, V> {}

/// Failure of [`check_with_budget`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError<K, V> {
    /// The history is not linearizable.
    Violation(Violation<K, V>),
    /// The search of `key` memoized more than the allowed number of
    /// configurations without reaching a verdict.
    Inconclusive {
        /// The key whose search was abandoned.
        key: K,
        /// Number of configurations explored before giving up.
        configurations: usize,
    },
}

impl<K: Debug, V: Debug> fmt::Display for CheckError<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Violation(violation) => fmt::Display::fmt(violation, f),
            CheckError::Inconclusive {
                key,
                configurations,
            } => write!(
                f,
                "linearizability of key {key:?} undecided after exploring \
                 {configurations} configurations"
            ),
        }
    }
}

impl<K: Debug, V: Debug> std::error::Error for CheckError<K, V> {}

/// Checks that `operations` form a linearizable history of per-key
/// registers, each initially empty. Keys are checked independently, in order
/// of first appearance; the first violation found is returned.
///
/// The search is exact and unbounded; see [`check_with_budget`] to cap it.
///
/// # Panics
///
/// If an operation completed before it was invoked (`ret < call`).
pub fn check<K, V>(operations: &[Operation<K, V>]) -> Result<(), Violation<K, V>>
where
    K: Clone + Eq + Hash + Debug,
    V: Clone + Eq + Hash + Debug,
{
    match check_with_budget(operations, usize::MAX) {
        Ok(()) => Ok(()),
        Err(CheckError::Violation(violation)) => Err(violation),
        Err(CheckError::Inconclusive { .. }) => {
            unreachable!("a search with an unlimited budget always concludes")
        }
    }
}

/// Like [`check`], but gives up with [`CheckError::Inconclusive`] once the
/// search of one key has memoized more than `max_configurations`
/// configurations.
///
/// # Panics
///
/// If an operation completed before it was invoked (`ret < call`).
pub fn check_with_budget<K, V>(
    operations: &[Operation<K, V>],
    max_configurations: usize,
) -> Result<(), CheckError<K, V>>
where
    K: Clone + Eq + Hash + Debug,
    V: Clone + Eq + Hash + Debug,
{
    let mut key_index: HashMap<&K, usize> = HashMap::new();
    let mut per_key: Vec<Vec<&Operation<K, V>>> = Vec::new();
    for operation in operations {
        if let Some(ret) = operation.ret {
            assert!(
                ret >= operation.call,
                "operation returned before it was invoked: {operation:?}"
            );
        }
        let index = *key_index.entry(&operation.key).or_insert_with(|| {
            per_key.push(Vec::new());
            per_key.len() - 1
        });
        per_key[index].push(operation);
    }
    for key_operations in per_key {
        let key = key_operations[0].key.clone();
        let mut search = Search::new(KeyHistory::new(key_operations), max_configurations);
        match search.run() {
            Outcome::Linearizable => {}
            Outcome::Violation => return Err(CheckError::Violation(search.violation(key))),
            Outcome::Exhausted => {
                return Err(CheckError::Inconclusive {
                    key,
                    configurations: search.cache.len(),
                });
            }
        }
    }
    Ok(())
}

/// Operation on interned values: `Write(value id)` / `Read(state id)`.
#[derive(Clone, Copy, Debug)]
enum Action {
    Write(u32),
    Read(u32),
}

/// Register history of one key, prepared for the search.
struct KeyHistory<'a, K, V> {
    /// Operations taking part in the search.
    operations: Vec<&'a Operation<K, V>>,
    /// Interned form of each operation.
    actions: Vec<Action>,
    /// Whether each operation must be linearized (known outcome) or may be
    /// left out (unknown-outcome write).
    mandatory: Vec<bool>,
    /// Time by which each operation must be linearized (or dropped).
    deadline: Vec<u64>,
}

impl<'a, K, V: Eq + Hash> KeyHistory<'a, K, V> {
    fn new(all: Vec<&'a Operation<K, V>>) -> Self {
        let mut ids: HashMap<&'a V, u32> = HashMap::new();
        let mut intern = |value: Option<&'a V>| -> u32 {
            let Some(value) = value else {
                return NO_VALUE;
            };
            let next = u32::try_from(ids.len() + 1)
                .ok()
                .filter(|&id| id < UNOBSERVED)
                .expect("fewer than 2^32 - 1 distinct values per key");
            *ids.entry(value).or_insert(next)
        };

        // Unknown-outcome reads constrain nothing; drop them.
        let known: Vec<&'a Operation<K, V>> = all
            .into_iter()
            .filter(|operation| operation.ret.is_some() || matches!(operation.op, Op::Write(_)))
            .collect();
        let known_actions: Vec<Action> = known
            .iter()
            .map(|operation| match &operation.op {
                Op::Write(value) => Action::Write(intern(Some(value))),
                Op::Read(observed) => Action::Read(intern(observed.as_ref())),
            })
            .collect();

        // Latest return of a completed read observing each value.
        let mut last_observed: HashMap<u32, u64> = HashMap::new();
        for (operation, action) in known.iter().zip(&known_actions) {
            if let (Action::Read(state), Some(ret)) = (action, operation.ret) {
                let latest = last_observed.entry(*state).or_insert(ret);
                *latest = (*latest).max(ret);
            }
        }

        let mut history = Self {
            operations: Vec::new(),
            actions: Vec::new(),
            mandatory: Vec::new(),
            deadline: Vec::new(),
        };
        for (operation, mut action) in known.into_iter().zip(known_actions) {
            if let Action::Write(value) = action
                && !last_observed.contains_key(&value)
            {
                action = Action::Write(UNOBSERVED);
            }
            let deadline = match (operation.ret, action) {
                (Some(ret), _) => ret,
                // An unknown-outcome write only matters if a read observes
                // its value, and linearizing it after the last such read
                // returned is equivalent to never linearizing it.
                (None, Action::Write(value)) => match last_observed.get(&value) {
                    Some(&last) if last >= operation.call => last,
                    _ => continue,
                },
                (None, Action::Read(_)) => continue,
            };
            history.operations.push(operation);
            history.actions.push(action);
            history.mandatory.push(operation.ret.is_some());
            history.deadline.push(deadline);
        }
        history
    }
}

/// Doubly linked list of call/return entries ordered by time, from which
/// linearized operations are lifted and restored ("dancing links").
/// Entry `2 * op` is the call of `op`, entry `2 * op + 1` its return.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl EntryList {
    fn new<K, V>(history: &KeyHistory<'_, K, V>) -> Self {
        let count = history.operations.len();
        let mut order: Vec<usize> = (0..2 * count).collect();
        // At equal times calls come first (touching intervals overlap), then
        // mandatory returns, then deadlines of optional writes, so an
        // optional write is only dropped after its observers are linearized.
        order.sort_by_key(|&entry| {
            let op = entry / 2;
            if entry.is_multiple_of(2) {
                (history.operations[op].call, 0, op)
            } else if history.mandatory[op] {
                (history.deadline[op], 1, op)
            } else {
                (history.deadline[op], 2, op)
            }
        });
        let head = 2 * count;
        let mut next = vec![NIL; 2 * count + 1];
        let mut prev = vec![NIL; 2 * count + 1];
        let mut last = head;
        for entry in order {
            next[last] = entry;
            prev[entry] = last;
            last = entry;
        }
        Self { next, prev, head }
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn unlink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, entry: usize) {
        let (prev, next) = (self.prev[entry], self.next[entry]);
        self.next[prev] = entry;
        if next != NIL {
            self.prev[next] = entry;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(2 * op);
        self.unlink(2 * op + 1);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(2 * op + 1);
        self.relink(2 * op);
    }
}

/// Set of decided (linearized or dropped) operations, with an incrementally
/// maintained Zobrist hash so memoization does not rehash the whole set.
#[derive(Clone, PartialEq, Eq)]
struct Bitset {
    words: Vec<u64>,
    hash: u64,
}

impl Hash for Bitset {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.hash.hash(state);
    }
}

impl Bitset {
    fn new(bits: usize) -> Self {
        Self {
            words: vec![0; bits.div_ceil(WORD_BITS)],
            hash: 0,
        }
    }

    fn set(&mut self, bit: usize) {
        self.words[bit / WORD_BITS] |= 1 << (bit % WORD_BITS);
        self.hash ^= zobrist(bit);
    }

    fn clear(&mut self, bit: usize) {
        self.words[bit / WORD_BITS] &= !(1 << (bit % WORD_BITS));
        self.hash ^= zobrist(bit);
    }
}

/// Pseudo-random 64-bit key of one bit (SplitMix64 finalizer).
fn zobrist(bit: usize) -> u64 {
    const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    const MIX_1: u64 = 0xbf58_476d_1ce4_e5b9;
    const MIX_2: u64 = 0x94d0_49bb_1331_11eb;
    const SHIFT_1: u32 = 30;
    const SHIFT_2: u32 = 27;
    const SHIFT_3: u32 = 31;
    let mut z = (bit as u64).wrapping_add(1).wrapping_mul(GOLDEN_GAMMA);
    z = (z ^ (z >> SHIFT_1)).wrapping_mul(MIX_1);
    z = (z ^ (z >> SHIFT_2)).wrapping_mul(MIX_2);
    z ^ (z >> SHIFT_3)
}

/// Kind of decision recorded in a search frame.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Move {
    /// A write linearized by choice; backtracking tries the next candidate.
    Write,
    /// A read linearized as soon as it matched the register. This is always
    /// safe — it leaves the state unchanged and every undecided operation is
    /// concurrent with it — so it is never revisited.
    Read,
    /// An optional write dropped at its deadline; forced as well.
    Drop,
}

/// Search stack frame: a decision about one operation.
struct Frame {
    op: usize,
    /// Register state before the decision.
    prev_state: u32,
    kind: Move,
}

/// Deepest point reached by the search, kept for the failure report.
struct Deepest {
    depth: usize,
    prefix: Vec<usize>,
    blocked: usize,
}

enum Outcome {
    Linearizable,
    Violation,
    Exhausted,
}

/// The search memoized more configurations than allowed.
struct BudgetExhausted;

/// WGL depth-first search over one key's history.
struct Search<'a, K, V> {
    history: KeyHistory<'a, K, V>,
    list: EntryList,
    decided: Bitset,
    state: u32,
    stack: Vec<Frame>,
    cache: HashSet<(Bitset, u32)>,
    max_configurations: usize,
    deepest: Option<Deepest>,
}

impl<'a, K, V> Search<'a, K, V> {
    fn new(history: KeyHistory<'a, K, V>, max_configurations: usize) -> Self {
        Self {
            list: EntryList::new(&history),
            decided: Bitset::new(history.operations.len()),
            state: NO_VALUE,
            stack: Vec::new(),
            cache: HashSet::new(),
            max_configurations,
            deepest: None,
            history,
        }
    }

    fn run(&mut self) -> Outcome {
        match self.search() {
            Ok(true) => Outcome::Linearizable,
            Ok(false) => Outcome::Violation,
            Err(BudgetExhausted) => Outcome::Exhausted,
        }
    }

    /// Returns whether all mandatory operations can be linearized.
    fn search(&mut self) -> Result<bool, BudgetExhausted> {
        let mut remaining = self.history.mandatory.iter().filter(|&&m| m).count();
        // Where the walk over candidates of the current configuration is;
        // `None` when the configuration was just entered.
        let mut cursor: Option<usize> = None;
        loop {
            if remaining == 0 {
                return Ok(true);
            }
            let entry = match cursor {
                Some(entry) => entry,
                None => match self.matching_read() {
                    Some(read) => {
                        if self.decide(read, Move::Read, self.state)? {
                            remaining -= 1;
                            continue;
                        }
                        // Already explored from here without success.
                        match self.backtrack(&mut remaining) {
                            Some(entry) => entry,
                            None => return Ok(false),
                        }
                    }
                    None => self.list.first(),
                },
            };
            // The list always ends with a return entry and a mandatory
            // operation is still in it, so `entry` cannot run off the end.
            assert_ne!(entry, NIL, "linearizability search ran off the entry list");
            let op = entry / 2;
            if entry.is_multiple_of(2) {
                // A call: reads cannot match here (`matching_read` found
                // none), writes always apply.
                if let Action::Write(value) = self.history.actions[op]
                    && self.decide(op, Move::Write, value)?
                {
                    if self.history.mandatory[op] {
                        remaining -= 1;
                    }
                    cursor = None;
                    continue;
                }
                cursor = Some(self.list.next[entry]);
                continue;
            }
            if self.history.mandatory[op] {
                // Every candidate before this return failed: `op` is stuck.
                self.record_deepest(op);
            } else if self.decide(op, Move::Drop, self.state)? {
                // Deadline of an optional write: the only move left is to
                // drop it.
                cursor = None;
                continue;
            }
            match self.backtrack(&mut remaining) {
                Some(entry) => cursor = Some(entry),
                None => return Ok(false),
            }
        }
    }

    /// A read among the current candidates that observed the current state.
    fn matching_read(&self) -> Option<usize> {
        let mut entry = self.list.first();
        while entry != NIL && entry.is_multiple_of(2) {
            let op = entry / 2;
            if matches!(self.history.actions[op], Action::Read(observed) if observed == self.state)
            {
                return Some(op);
            }
            entry = self.list.next[entry];
        }
        None
    }

    /// Applies a decision about `op` unless the resulting configuration was
    /// already explored; returns whether it was applied.
    fn decide(&mut self, op: usize, kind: Move, next_state: u32) -> Result<bool, BudgetExhausted> {
        self.decided.set(op);
        if !self.cache.insert((self.decided.clone(), next_state)) {
            self.decided.clear(op);
            return Ok(false);
        }
        if self.cache.len() > self.max_configurations {
            return Err(BudgetExhausted);
        }
        self.stack.push(Frame {
            op,
            prev_state: self.state,
            kind,
        });
        self.state = next_state;
        self.list.lift(op);
        Ok(true)
    }

    /// Undoes decisions up to and including the latest write choice and
    /// returns the entry after that write's call, from where the walk over
    /// the restored configuration's candidates continues; `None` if no
    /// choice is left.
    fn backtrack(&mut self, remaining: &mut usize) -> Option<usize> {
        while let Some(frame) = self.stack.pop() {
            self.list.unlift(frame.op);
            self.decided.clear(frame.op);
            self.state = frame.prev_state;
            if frame.kind != Move::Drop && self.history.mandatory[frame.op] {
                *remaining += 1;
            }
            if frame.kind == Move::Write {
                return Some(self.list.next[2 * frame.op]);
            }
        }
        None
    }

    fn record_deepest(&mut self, blocked: usize) {
        let depth = self.stack.len();
        if self
            .deepest
            .as_ref()
            .is_some_and(|deepest| deepest.depth >= depth)
        {
            return;
        }
        self.deepest = Some(Deepest {
            depth,
            prefix: self
                .stack
                .iter()
                .filter(|frame| frame.kind != Move::Drop)
                .map(|frame| frame.op)
                .collect(),
            blocked,
        });
    }

    fn violation(&self, key: K) -> Violation<K, V>
    where
        K: Clone,
        V: Clone,
    {
        let deepest = self
            .deepest
            .as_ref()
            .expect("a failed search records where it got stuck");
        let operations = &self.history.operations;
        let blocked = operations[deepest.blocked];
        let mut in_prefix = vec![false; operations.len()];
        for &op in &deepest.prefix {
            in_prefix[op] = true;
        }
        let concurrent = operations
            .iter()
            .enumerate()
            .filter(|&(op, operation)| {
                op != deepest.blocked && !in_prefix[op] && operation.overlaps(blocked)
            })
            .map(|(_, &operation)| operation.clone())
            .collect();
        // Written values are interned lossily (see `UNOBSERVED`): recover
        // the register value from the last write of the prefix instead.
        let state = deepest
            .prefix
            .iter()
            .rev()
            .find_map(|&op| match &operations[op].op {
                Op::Write(value) => Some(value.clone()),
                Op::Read(_) => None,
            });
        Violation {
            key,
            key_operations: operations.len(),
            prefix: deepest
                .prefix
                .iter()
                .map(|&op| operations[op].clone())
                .collect(),
            state,
            blocked: blocked.clone(),
            concurrent,
        }
    }
}
