//! The interaction-test environment (etcd/raft's `rafttest` style): the
//! nodes and their message queue (`env`), the command language
//! (`commands`), the text renderings (`format`), and the capture of the
//! core's log lines (`logger`).

pub mod commands;
pub mod env;
pub mod format;
pub mod logger;
