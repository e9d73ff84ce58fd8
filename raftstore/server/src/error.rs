//! Errors of the network layer.

use thiserror::Error;

/// What can go wrong setting up the network.
#[derive(Debug, Error)]
pub enum Error {
    /// A setting cannot work.
    #[error("network config: {0}")]
    Config(String),
    /// A listen address could not be bound (taken, not local, ...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why not.
        source: std::io::Error,
    },
    /// A socket or thread could not be set up.
    #[error("network i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server could not start or failed.
    #[error("grpc server: {0}")]
    Server(String),
}

/// The network layer's result.
pub type Result<T> = std::result::Result<T, Error>;
