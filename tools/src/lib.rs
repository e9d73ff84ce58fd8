//! Library side of the flotilla tools: the embedded demo workload, the
//! 100k-region load tool, and the networked store server.

pub mod ctl;
pub mod demo;
pub mod load;
pub mod server;
pub mod storm;
