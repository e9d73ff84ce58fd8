//! Where each store listens.

use std::sync::Arc;

use fxhash::FxHashMap;
use parking_lot::RwLock;

/// Store id → `host:port` of its raft service. Shared by a process's
/// transports (clones share the book); a store that moved is re-entered
/// and the next connection attempt uses the new address.
#[derive(Debug, Clone, Default)]
pub struct AddressBook(Arc<RwLock<FxHashMap<u64, String>>>);

impl AddressBook {
    /// An empty book.
    pub fn new() -> AddressBook {
        AddressBook::default()
    }

    /// Enters (or replaces) where `store` listens.
    pub fn set(&self, store: u64, addr: impl Into<String>) {
        self.0.write().insert(store, addr.into());
    }

    /// Forgets `store`: messages to it are refused as unreachable.
    pub fn remove(&self, store: u64) {
        self.0.write().remove(&store);
    }

    /// Whether the book knows where `store` listens.
    pub fn contains(&self, store: u64) -> bool {
        self.0.read().contains_key(&store)
    }

    /// Every store and where it listens, by id.
    pub fn all(&self) -> Vec<(u64, String)> {
        let mut all: Vec<(u64, String)> = self
            .0
            .read()
            .iter()
            .map(|(&id, a)| (id, a.clone()))
            .collect();
        all.sort_unstable();
        all
    }

    /// Where `store` listens, if known.
    pub fn get(&self, store: u64) -> Option<String> {
        self.0.read().get(&store).cloned()
    }
}
