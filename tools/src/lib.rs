//! Library side of the flotilla tools: the embedded demo workload and the
//! 100k-region load tool.

pub mod demo;
pub mod load;
pub mod storm;
