//! The sans-IO endpoint: many connections on one UDP socket, demultiplexed by
//! connection ID. (API contract; bodies to be written by the rudp work.)

use super::Config;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Identifies a connection within its endpoint. Never reused by one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub u64);

/// One datagram to send: `poll_transmit` wrote `len` bytes into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub len: usize,
}

#[derive(Debug)]
pub enum Event {
    /// The handshake completed; messages may flow both ways.
    Connected,
    /// A whole message arrived (exactly once).
    Message(Vec<u8>),
    /// The connection is gone; its handle is now invalid.
    Closed(ConnectionError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionError {
    /// We closed it.
    LocallyClosed,
    /// The peer closed it.
    PeerClosed,
    /// Nothing was received for the idle timeout.
    IdleTimeout,
    /// The peer stopped acknowledging: `ptos` probe timeouts in a row.
    PeerDead { ptos: u32 },
    /// The handshake did not complete.
    HandshakeFailed(&'static str),
    /// The peer broke the protocol.
    ProtocolViolation(&'static str),
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionError::LocallyClosed => write!(f, "closed locally"),
            ConnectionError::PeerClosed => write!(f, "closed by the peer"),
            ConnectionError::IdleTimeout => write!(f, "idle timeout"),
            ConnectionError::PeerDead { ptos } => {
                write!(f, "peer stopped answering ({ptos} probe timeouts)")
            }
            ConnectionError::HandshakeFailed(why) => write!(f, "handshake failed: {why}"),
            ConnectionError::ProtocolViolation(why) => write!(f, "protocol violation: {why}"),
        }
    }
}

impl std::error::Error for ConnectionError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    UnknownConnection,
    TooLarge { len: usize, max: usize },
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::UnknownConnection => write!(f, "no such connection"),
            SendError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the {max}-byte limit")
            }
            SendError::Closed => write!(f, "connection is closing"),
        }
    }
}

impl std::error::Error for SendError {}

/// Per-connection statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub bytes_sent: u64,
    /// Application bytes the peer acknowledged.
    pub bytes_delivered: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub packets_retransmitted: u64,
    pub spurious_retransmits: u64,
    pub srtt: Duration,
    pub min_rtt: Duration,
    pub cwnd: u64,
    /// Bytes per second.
    pub pacing_rate: u64,
}

/// Datagrams the endpoint threw away, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    pub bad_crc: u64,
    pub malformed: u64,
    pub unknown_connection: u64,
    pub bad_version: u64,
    pub bad_cookie: u64,
}

pub struct Endpoint {
    _config: Config,
}

#[allow(unused_variables)]
impl Endpoint {
    /// `seed` keys the cookie MAC and connection IDs (tests pass a fixed one).
    pub fn new(config: Config, seed: u64) -> Self {
        todo!()
    }

    pub fn config(&self) -> &Config {
        &self._config
    }

    /// Starts a handshake with `remote`; `Event::Connected` follows on success.
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> ConnectionHandle {
        todo!()
    }

    /// Feeds one received UDP payload.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, data: &[u8]) {
        todo!()
    }

    /// Call when `poll_timeout()`'s deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        todo!()
    }

    /// Writes the next datagram to send into `buf` (cleared first). `None` when
    /// nothing may be sent now (nothing to send, window full, or pacing).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        todo!()
    }

    /// Earliest deadline (timer or pacing release) at which to call `handle_timeout`/`poll_transmit`.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        todo!()
    }

    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        todo!()
    }

    /// Queues a message. `ordered` messages are delivered in send order among
    /// the ordered ones; unordered ones as soon as they are whole.
    pub fn send(
        &mut self,
        handle: ConnectionHandle,
        message: Vec<u8>,
        ordered: bool,
    ) -> Result<(), SendError> {
        todo!()
    }

    /// Application bytes queued or in flight, not yet acknowledged (for backpressure).
    pub fn send_backlog(&self, handle: ConnectionHandle) -> usize {
        todo!()
    }

    /// Starts a graceful close.
    pub fn close(&mut self, now: Instant, handle: ConnectionHandle) {
        todo!()
    }

    pub fn remote_address(&self, handle: ConnectionHandle) -> Option<SocketAddr> {
        todo!()
    }

    pub fn stats(&self, handle: ConnectionHandle) -> Option<Stats> {
        todo!()
    }

    pub fn counters(&self) -> &EndpointCounters {
        todo!()
    }

    /// Handles of the live connections.
    pub fn connections(&self) -> Vec<ConnectionHandle> {
        todo!()
    }
}
