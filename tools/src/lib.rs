//! Library side of the flotilla tools: the embedded demo workload.

pub mod demo;
