//! flotilla's batch system: mailboxes for many FSMs (up to 100,000+ regions
//! per store) polled by a fixed pool of threads.
//!
//! The crate knows nothing about Raft; it is generic over the FSM types so
//! that the raft pollers and the apply pollers share it.
//!
//! - [`Fsm`]: a state machine with a message type.
//! - [`Mailbox`]: an FSM's message queue, its scheduling state (idle /
//!   notified / closed) and, while idle, the FSM itself. The first message to
//!   an idle mailbox schedules the FSM onto the pool exactly once.
//! - [`Router`]: address → mailbox, plus one control FSM.
//! - [`BatchSystem`] and [`PollHandler`]: `pool_size` poller threads, each
//!   taking up to `max_batch_size` notified FSMs per round and running the
//!   handler lifecycle over them.
//! - [`Config`]: pool and batch sizes, with serde defaults and validation.
//!
//! ```
//! use flotilla_router::{
//!     Batch, BatchSystem, Config, Fsm, HandleResult, Inbox, Mailbox, PollHandler,
//! };
//! use std::sync::mpsc;
//!
//! struct Counter { total: u64, done: mpsc::Sender<u64> }
//! impl Fsm for Counter {
//!     type Message = u64;
//!     fn is_stopped(&self) -> bool { false }
//! }
//!
//! struct Handler;
//! impl PollHandler<Counter, Counter> for Handler {
//!     fn begin(&mut self, _batch_size: usize) {}
//!     fn handle_control(&mut self, _: &mut Counter, _: &Inbox<'_, Counter>) -> HandleResult {
//!         HandleResult::stop_at(0, true)
//!     }
//!     fn handle_normal(&mut self, fsm: &mut Counter, inbox: &Inbox<'_, Counter>) -> HandleResult {
//!         while let Some(n) = inbox.try_recv() {
//!             fsm.total += n;
//!             let _ = fsm.done.send(fsm.total);
//!         }
//!         HandleResult::stop_at(0, false)
//!     }
//!     fn end(&mut self, _batch: &mut Batch<'_, Counter>) {}
//! }
//!
//! # fn main() -> Result<(), flotilla_router::Error> {
//! let (tx, rx) = mpsc::channel();
//! let control = Mailbox::new(Box::new(Counter { total: 0, done: tx.clone() }));
//! let cfg = Config { pool_size: 1, ..Config::default() };
//! let (router, mut system) = BatchSystem::new(&cfg, control)?;
//! system.spawn("example", |_| Handler)?;
//! router.register(7, Mailbox::new(Box::new(Counter { total: 0, done: tx })))?;
//! router.send(7, 40).map_err(|e| e.error)?;
//! router.send(7, 2).map_err(|e| e.error)?;
//! assert_eq!(rx.recv().ok(), Some(40));
//! assert_eq!(rx.recv().ok(), Some(42));
//! system.shutdown()?;
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod fsm;
mod handler;
mod mailbox;
mod poller;
mod router;
mod scheduler;
mod system;

pub use config::{
    Config, DEFAULT_MAX_BATCH_SIZE, DEFAULT_RESCHEDULE_DURATION, MAX_BATCH_SIZE_LIMIT,
    MAX_POOL_SIZE,
};
pub use error::{Error, SendError};
pub use fsm::Fsm;
pub use handler::{Batch, HandleResult, PollHandler};
pub use mailbox::{Inbox, Mailbox, MailboxState};
pub use router::{Borrowed, Router, TrySend};
pub use system::BatchSystem;
