//! flotilla's cluster harness and integration, fault and simulation tests.
//!
//! - [`harness`]: loggers, fast configs, asking a cluster who leads a region.
//! - [`linearizability`]: a per-key register history recorder and a
//!   Wing–Gong / Lowe linearizability checker.
//! - [`net`]: a cluster whose stores talk gRPC over loopback ports.
//! - [`requests`]: raw client commands sent straight to one store.
//! - [`tagged`]: keys whose values say which write put them there.

pub mod harness;
pub mod linearizability;
pub mod net;
pub mod requests;
pub mod tagged;
pub mod workload;
