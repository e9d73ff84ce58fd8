//! The store's id allocator (DESIGN §6): new region and peer ids are
//! `(store_id << 40) | counter`, unique cluster-wide without a coordinator
//! because store ids are. The counter is reserved in batches, each batch
//! synced before any id of it is handed out (DESIGN §9 rule 7), and a
//! restart goes on after the last reserved batch: an id is never used
//! twice, even if a crash wastes the rest of a batch.

use flotilla_engine::{Cf, Durability, Engine, keys};
use flotilla_proto::raft_serverpb::IdAllocatorState;
use parking_lot::Mutex;

use super::error::{Error, Result};

/// Bits of an id that hold the counter; the store id is above them.
pub const ID_COUNTER_BITS: u32 = 40;
/// Ids reserved (and synced) at a time.
pub const ID_BATCH: u64 = 1_000;
/// The first counter value (bootstrap ids are far below any allocated id,
/// whose store id is at least 1).
const FIRST_COUNTER: u64 = 1;

/// Hands out this store's ids.
#[derive(Debug)]
pub struct IdAllocator {
    store_id: u64,
    engine: Engine,
    /// `(next, reserved_to)`: counters in `[next, reserved_to)` may be
    /// handed out without another sync.
    state: Mutex<(u64, u64)>,
}

/// Checks that `store_id` can prefix the ids its store allocates: not 0,
/// and within the bits the counter leaves.
///
/// # Errors
/// [`Error::Config`] naming the allowed range.
pub(crate) fn check_store_id(store_id: u64) -> Result<()> {
    if store_id == 0 || store_id >> (u64::BITS - ID_COUNTER_BITS) != 0 {
        return Err(Error::Config(format!(
            "store id {store_id} must be in 1..2^{}",
            u64::BITS - ID_COUNTER_BITS
        )));
    }
    Ok(())
}

impl IdAllocator {
    /// The allocator of store `store_id`, going on after what `engine`
    /// says was reserved.
    ///
    /// # Errors
    /// [`Error::Config`] for a store id too large to prefix an id; engine
    /// read failures.
    pub fn open(engine: Engine, store_id: u64) -> Result<IdAllocator> {
        check_store_id(store_id)?;
        let state: IdAllocatorState = engine
            .get_msg(Cf::Raft, keys::ID_ALLOCATOR_KEY)?
            .unwrap_or_default();
        let next = state.reserved_to.max(FIRST_COUNTER);
        Ok(IdAllocator {
            store_id,
            engine,
            state: Mutex::new((next, next)),
        })
    }

    /// A new id, never handed out before by this store (or any other).
    ///
    /// # Errors
    /// [`Error::Engine`] if the reservation could not be synced (no id is
    /// handed out then); [`Error::Config`] once the counter is used up.
    pub fn alloc(&self) -> Result<u64> {
        let mut state = self.state.lock();
        let (next, reserved_to) = *state;
        if next >= 1 << ID_COUNTER_BITS {
            return Err(Error::Config("id counter used up".into()));
        }
        if next == reserved_to {
            let to = (reserved_to + ID_BATCH).min(1 << ID_COUNTER_BITS);
            let mut wb = self.engine.write_batch();
            wb.put_msg(
                Cf::Raft,
                keys::ID_ALLOCATOR_KEY,
                &IdAllocatorState { reserved_to: to },
            );
            self.engine.write(wb, Durability::Sync)?;
            state.1 = to;
        }
        state.0 = next + 1;
        Ok((self.store_id << ID_COUNTER_BITS) | next)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_engine::EngineOptions;

    use super::*;

    /// DESIGN §6 and §9 rule 7: ids carry the store id, grow, and are never
    /// handed out twice across restarts (a restart skips the rest of the
    /// reserved batch: those may have been used before a crash).
    #[test]
    fn ids_are_unique_across_restarts_and_carry_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for life in 0..3 {
            let alloc = IdAllocator::open(engine.clone(), 7).unwrap();
            let n = if life == 1 { ID_BATCH + 5 } else { 10 };
            for _ in 0..n {
                let id = alloc.alloc().unwrap();
                assert_eq!(id >> ID_COUNTER_BITS, 7);
                assert!(seen.insert(id), "id {id} handed out twice");
            }
        }
        let ids: Vec<u64> = seen.into_iter().collect();
        // Lives 2 and 3 start after everything life 1 and 2 reserved.
        assert_eq!(ids[10] & ((1 << ID_COUNTER_BITS) - 1), ID_BATCH + 1);
        let persisted: IdAllocatorState = engine
            .get_msg(Cf::Raft, keys::ID_ALLOCATOR_KEY)
            .unwrap()
            .unwrap();
        assert_eq!(persisted.reserved_to, 4 * ID_BATCH + 1);
    }

    /// Store ids that cannot prefix a 64-bit id are refused.
    #[test]
    fn store_ids_out_of_range_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
        assert!(IdAllocator::open(engine.clone(), 0).is_err());
        assert!(IdAllocator::open(engine.clone(), 1 << 24).is_err());
        assert!(IdAllocator::open(engine, (1 << 24) - 1).is_ok());
    }
}
