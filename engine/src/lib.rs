//! flotilla's storage engine: the one RocksDB a store shares between all its
//! regions.
//!
//! - [`keys`]: the key layout of DESIGN §3, encode and decode.
//! - [`Engine`]: open or create a database with the column families
//!   [`Cf::Default`] (user data) and [`Cf::Raft`] (raft logs, raft/apply/region
//!   states), point reads and writes, typed protobuf helpers, approximate sizes.
//! - [`WriteBatch`]: many regions' writes applied atomically by one
//!   [`Engine::write`], synced or not ([`Durability`]).
//! - [`Snapshot`]: a consistent point-in-time view, owned (it can move to
//!   another thread), with bounded forward iteration.

mod engine;
mod error;
pub mod keys;
mod snapshot;
mod write_batch;

pub use engine::{Cf, CloseWatch, Durability, Engine, EngineMemory, EngineOptions, EngineStats};
pub use error::{Error, Result};
pub use snapshot::{RangeIter, Snapshot};
pub use write_batch::{WriteBatch, WriteOrigin};
