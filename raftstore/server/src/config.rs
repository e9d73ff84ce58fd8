//! Settings of the network layer.

use std::time::Duration;

use tonic::transport::Endpoint;

use crate::error::{Error, Result};
use crate::tls::TlsConfig;

/// Default batches queued per remote store before new ones are dropped.
pub const DEFAULT_QUEUE_BATCHES: usize = 1024;
/// Default byte budget of one [`crate::pb::RaftBatch`]: a flush larger
/// than this goes out as several batches.
pub const DEFAULT_BATCH_BYTES: usize = 8 << 20;
/// Default largest gRPC message accepted or sent: above every batch and
/// snapshot chunk, below what a garbage length prefix could make a peer
/// allocate.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Default HTTP/2 window per stream (h2's own 64 KiB would cap a stream's
/// throughput at a window per round trip).
pub const DEFAULT_STREAM_WINDOW_BYTES: u32 = 2 << 20;
/// Default HTTP/2 window per connection.
pub const DEFAULT_CONNECTION_WINDOW_BYTES: u32 = 8 << 20;

/// How the network layer connects, queues and limits.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Batches queued per remote store; a flush that finds the queue full
    /// drops its batch and counts the messages dropped.
    pub queue_batches: usize,
    /// Byte budget of one batch on the wire.
    pub batch_bytes: usize,
    /// Largest gRPC message sent or received.
    pub max_message_bytes: usize,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// First wait after a failed connection; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest wait between connection attempts.
    pub max_backoff: Duration,
    /// HTTP/2 pings on an idle connection, to notice a dead peer.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// HTTP/2 window per stream.
    pub stream_window_bytes: u32,
    /// HTTP/2 window per connection.
    pub connection_window_bytes: u32,
    /// Mutual TLS for every connection (servers and clients); `None`:
    /// plaintext.
    pub tls: Option<TlsConfig>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            queue_batches: DEFAULT_QUEUE_BATCHES,
            batch_bytes: DEFAULT_BATCH_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(4),
            stream_window_bytes: DEFAULT_STREAM_WINDOW_BYTES,
            connection_window_bytes: DEFAULT_CONNECTION_WINDOW_BYTES,
            tls: None,
        }
    }
}

impl NetConfig {
    /// Checks the settings can work.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad field and why.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::Config(why.to_string()));
        if self.queue_batches == 0 {
            return bad("queue_batches must be > 0");
        }
        if self.batch_bytes == 0 {
            return bad("batch_bytes must be > 0");
        }
        if self.max_message_bytes < self.batch_bytes.saturating_mul(2) {
            return bad("max_message_bytes must be at least twice batch_bytes");
        }
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            return bad("initial_backoff must be > 0 and <= max_backoff");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be > 0");
        }
        if self.keepalive_interval.is_zero() || self.keepalive_timeout.is_zero() {
            return bad("keepalive_interval and keepalive_timeout must be > 0");
        }
        if self.stream_window_bytes < 65_535 || self.connection_window_bytes < 65_535 {
            return bad("stream_window_bytes and connection_window_bytes must be >= 65535");
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// A gRPC endpoint for the store at `addr` with these settings (TLS
    /// included).
    pub(crate) fn endpoint(&self, addr: &str) -> std::result::Result<Endpoint, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("address {addr}: {e}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(self.stream_window_bytes)
            .initial_connection_window_size(self.connection_window_bytes);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.client())
                .map_err(|e| format!("tls for {addr}: {e}"))?;
        }
        Ok(endpoint)
    }
}
