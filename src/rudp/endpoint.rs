//! The sans-IO endpoint: many connections on one UDP socket, demultiplexed by
//! connection ID.
//!
//! Handshake (a stateless cookie, like QUIC's Retry, RFC 9000 §8.1.2):
//! ```text
//! initiator                                   responder
//!   INITIAL(cid_i, no cookie, padded to 1200) ->
//!                                  <- RETRY(cookie)      no state kept; RETRY < INITIAL
//!   INITIAL(cid_i, cookie, padded)            ->
//!                                                        cookie = time ‖ MAC(secret, addr, cid_i, time):
//!                                                        valid -> connection created (Event::Connected)
//!                                  <- DATA(ACCEPT(cid_r), MAX_DATA, ...)   retransmitted until acked
//!   Event::Connected; DATA both ways with the peer's CID as destination.
//! ```
//! Before the cookie proves the initiator can receive at its address, the
//! responder keeps no state and answers each (≥ 1200-byte) INITIAL with one
//! RETRY of under 40 bytes, so it cannot be used to amplify traffic.
//! Datagrams with a bad CRC, an unknown version, an unknown connection, a
//! bad cookie or a malformed body are dropped and counted in
//! [`EndpointCounters`]; they change nothing else.

use super::connection::{Connection, Role, State};
use super::packet::{self, ConnectionId, Packet, PacketType};
use super::Config;
use crate::rng::Rng;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// Per-connection statistics. Byte and packet counts are of whole UDP
/// payloads (headers, ACKs and retransmissions included) except
/// `bytes_delivered`; `packets_lost` counts ack-eliciting packets declared
/// lost; `packets_retransmitted` counts packets that carried resent data.
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
    /// Packets received twice (already seen packet number).
    pub duplicate: u64,
    /// INITIALs refused (not accepting, too short, or stateless-reply queue full).
    pub refused: u64,
}

/// How long a RETRY cookie stays valid.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(10);
const COOKIE_LEN: usize = 16;
/// Stateless replies (RETRY) waiting to be sent; beyond this INITIALs are dropped.
const MAX_STATELESS_QUEUE: usize = 256;

pub struct Endpoint {
    config: Config,
    rng: Rng,
    secret: [u8; 32],
    /// Time origin for cookie timestamps (the first `now` we saw).
    epoch: Option<Instant>,
    conns: BTreeMap<ConnectionHandle, Connection>,
    by_cid: HashMap<ConnectionId, ConnectionHandle>,
    by_initial: HashMap<(SocketAddr, ConnectionId), ConnectionHandle>,
    next_handle: u64,
    stateless: VecDeque<(SocketAddr, ConnectionId, [u8; COOKIE_LEN])>,
    events: VecDeque<(ConnectionHandle, Event)>,
    counters: EndpointCounters,
    /// Round-robin position for `poll_transmit`.
    rr_next: ConnectionHandle,
}

impl Endpoint {
    /// `seed` keys the cookie MAC and connection IDs (tests pass a fixed one).
    pub fn new(config: Config, seed: u64) -> Self {
        let mut config = config;
        config.max_udp_payload = config
            .max_udp_payload
            .clamp(super::MIN_UDP_PAYLOAD, u16::MAX as usize);
        let mut rng = Rng::new(seed ^ 0x7275_6470_656e_6470);
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        Endpoint {
            config,
            rng,
            secret,
            epoch: None,
            conns: BTreeMap::new(),
            by_cid: HashMap::new(),
            by_initial: HashMap::new(),
            next_handle: 0,
            stateless: VecDeque::new(),
            events: VecDeque::new(),
            counters: EndpointCounters::default(),
            rr_next: ConnectionHandle(0),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn epoch(&mut self, now: Instant) -> Instant {
        *self.epoch.get_or_insert(now)
    }

    fn new_cid(&mut self) -> ConnectionId {
        loop {
            let c = (self.rng.next_u64() >> 32) as ConnectionId;
            if c != 0 && !self.by_cid.contains_key(&c) {
                return c;
            }
        }
    }

    fn insert(&mut self, conn: Connection) -> ConnectionHandle {
        let h = ConnectionHandle(self.next_handle);
        self.next_handle += 1;
        self.by_cid.insert(conn.local_cid(), h);
        self.conns.insert(h, conn);
        h
    }

    /// Starts a handshake with `remote`; `Event::Connected` follows on success.
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> ConnectionHandle {
        self.epoch(now);
        let cid = self.new_cid();
        let conn = Connection::new(Role::Initiator, &self.config, now, remote, cid, None);
        self.insert(conn)
    }

    fn cookie_mac(&self, remote: SocketAddr, cid: ConnectionId, issued_ms: u64) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(self.secret);
        match remote {
            SocketAddr::V4(a) => h.update(a.ip().octets()),
            SocketAddr::V6(a) => h.update(a.ip().octets()),
        }
        h.update(remote.port().to_be_bytes());
        h.update(cid.to_be_bytes());
        h.update(issued_ms.to_be_bytes());
        let d = h.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        out
    }

    fn make_cookie(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        cid: ConnectionId,
    ) -> [u8; COOKIE_LEN] {
        let ms = now.saturating_duration_since(self.epoch(now)).as_millis() as u64;
        let mut c = [0u8; COOKIE_LEN];
        c[..8].copy_from_slice(&ms.to_be_bytes());
        c[8..].copy_from_slice(&self.cookie_mac(remote, cid, ms));
        c
    }

    fn cookie_valid(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        cid: ConnectionId,
        cookie: &[u8],
    ) -> bool {
        if cookie.len() != COOKIE_LEN {
            return false;
        }
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&cookie[..8]);
        let issued = u64::from_be_bytes(ms);
        let now_ms = now.saturating_duration_since(self.epoch(now)).as_millis() as u64;
        if issued > now_ms || now_ms - issued > COOKIE_LIFETIME.as_millis() as u64 {
            return false;
        }
        self.cookie_mac(remote, cid, issued) == cookie[8..]
    }

    /// Feeds one received UDP payload.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, data: &[u8]) {
        self.epoch(now);
        let Ok(p) = Packet::new_checked(data) else {
            self.counters.malformed += 1;
            return;
        };
        // Long headers (and version-1 datagrams) name a version; DATA's CRC
        // needs the connection's packet-number state, so it is checked below.
        if let Some(version) = p.version() {
            if !p.crc_ok() {
                self.counters.bad_crc += 1;
                return;
            }
            if version != packet::PROTOCOL_VERSION {
                self.counters.bad_version += 1;
                return;
            }
        }
        match p.packet_type() {
            None => self.counters.malformed += 1,
            Some(PacketType::Initial) => self.handle_initial(now, remote, &p),
            Some(PacketType::Retry) => {
                let Some(h) = self.by_cid.get(&p.dcid()).copied() else {
                    self.counters.unknown_connection += 1;
                    return;
                };
                let Ok(cookie) = packet::parse_retry(p.payload()) else {
                    self.counters.malformed += 1;
                    return;
                };
                let Some(c) = self.conns.get_mut(&h) else {
                    return;
                };
                if c.remote() != remote || c.role() != Role::Initiator {
                    self.counters.unknown_connection += 1;
                    return;
                }
                c.handle_retry(cookie);
                self.collect(h);
            }
            Some(PacketType::Data) => {
                let Some(h) = self.by_cid.get(&p.dcid()).copied() else {
                    self.counters.unknown_connection += 1;
                    return;
                };
                let (Some(c), Some(t)) = (self.conns.get_mut(&h), p.truncated_pn()) else {
                    return;
                };
                let pn = c.decode_packet_number(t);
                if !p.data_crc_ok(pn) {
                    self.counters.bad_crc += 1;
                    return;
                }
                if Connection::validate(p.payload()).is_err() {
                    self.counters.malformed += 1;
                    return;
                }
                if c.remote() != remote {
                    self.counters.unknown_connection += 1;
                    return;
                }
                if c.handle_packet(now, pn, p.payload(), data.len()).is_err() {
                    self.counters.duplicate += 1;
                }
                self.collect(h);
            }
        }
    }

    fn handle_initial(&mut self, now: Instant, remote: SocketAddr, p: &Packet<&[u8]>) {
        let Ok(init) = packet::Initial::parse(p.payload()) else {
            self.counters.malformed += 1;
            return;
        };
        if !self.config.accept_incoming || p.len() < packet::MIN_INITIAL_SIZE {
            self.counters.refused += 1;
            return;
        }
        if let Some(&h) = self.by_initial.get(&(remote, init.src_cid)) {
            if let Some(c) = self.conns.get_mut(&h) {
                c.handle_repeated_initial();
                return;
            }
        }
        if !self.cookie_valid(now, remote, init.src_cid, init.cookie) {
            if !init.cookie.is_empty() {
                // Expired or forged: answer with a fresh cookie (still stateless).
                self.counters.bad_cookie += 1;
            }
            if self.stateless.len() >= MAX_STATELESS_QUEUE {
                self.counters.refused += 1;
                return;
            }
            let cookie = self.make_cookie(now, remote, init.src_cid);
            self.stateless.push_back((remote, init.src_cid, cookie));
            return;
        }
        let cid = self.new_cid();
        let conn = Connection::new(
            Role::Responder,
            &self.config,
            now,
            remote,
            cid,
            Some(init.src_cid),
        );
        let h = self.insert(conn);
        self.by_initial.insert((remote, init.src_cid), h);
        self.collect(h);
    }

    /// Moves a connection's events out and forgets it once it is gone.
    fn collect(&mut self, h: ConnectionHandle) {
        let Some(c) = self.conns.get_mut(&h) else {
            return;
        };
        while let Some(e) = c.poll_event() {
            self.events.push_back((h, e));
        }
        if c.state() == State::Gone {
            let cid = c.local_cid();
            self.by_cid.remove(&cid);
            self.by_initial.retain(|_, v| *v != h);
            self.conns.remove(&h);
        }
    }

    /// The first connection at or after `from`, wrapping around.
    fn next_conn_from(&self, from: ConnectionHandle) -> Option<ConnectionHandle> {
        self.conns
            .range(from..)
            .next()
            .or_else(|| self.conns.iter().next())
            .map(|(h, _)| *h)
    }

    /// Call when `poll_timeout()`'s deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut cursor = ConnectionHandle(0);
        while let Some((&h, c)) = self.conns.range_mut(cursor..).next() {
            cursor = ConnectionHandle(h.0 + 1);
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
                self.collect(h);
            }
        }
    }

    /// Writes the next datagram to send into `buf` (cleared first). `None` when
    /// nothing may be sent now (nothing to send, window full, or pacing).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        buf.clear();
        if let Some((dest, cid, cookie)) = self.stateless.pop_front() {
            packet::write_retry(buf, cid, &cookie);
            return Some(Transmit {
                destination: dest,
                len: buf.len(),
            });
        }
        if self.conns.is_empty() {
            return None;
        }
        // Round-robin: start after the connection that sent last; visit each once.
        let mut chosen = None;
        let mut cursor = self.rr_next;
        for _ in 0..self.conns.len() {
            let Some(h) = self.next_conn_from(cursor) else {
                break;
            };
            cursor = ConnectionHandle(h.0 + 1);
            let Some(c) = self.conns.get_mut(&h) else {
                continue;
            };
            let len = if c.wants_initial() {
                Some(c.write_initial(now, buf))
            } else {
                c.poll_transmit(now, buf)
            };
            let gone = c.state() == State::Gone;
            let remote = c.remote();
            if gone {
                self.collect(h);
            }
            if let Some(len) = len {
                chosen = Some((h, remote, len));
                break;
            }
        }
        let (h, destination, len) = chosen?;
        self.rr_next = ConnectionHandle(h.0 + 1);
        Some(Transmit { destination, len })
    }

    /// Earliest deadline (timer or pacing release) at which to call `handle_timeout`/`poll_transmit`.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.poll_timeout()).min()
    }

    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        self.events.pop_front()
    }

    /// Queues a message. `ordered` messages are delivered in send order among
    /// the ordered ones; unordered ones as soon as they are whole.
    pub fn send(
        &mut self,
        handle: ConnectionHandle,
        message: Vec<u8>,
        ordered: bool,
    ) -> Result<(), SendError> {
        let c = self
            .conns
            .get_mut(&handle)
            .filter(|c| c.is_open())
            .ok_or(SendError::UnknownConnection)?;
        c.send(message, ordered)
    }

    /// Application bytes queued or in flight, not yet acknowledged (for backpressure).
    pub fn send_backlog(&self, handle: ConnectionHandle) -> usize {
        self.conns.get(&handle).map_or(0, |c| c.send_backlog())
    }

    /// Message bytes queued on a connection and not yet sent once: what
    /// still waits for the window, the pacing or the driver.
    pub fn unsent_bytes(&self, handle: ConnectionHandle) -> u64 {
        self.conns.get(&handle).map_or(0, |c| c.unsent_bytes())
    }

    /// Starts a graceful close: queued messages are delivered first, then a
    /// CLOSE goes out (its sending is driven by `poll_transmit`, so `now` is
    /// not needed here).
    pub fn close(&mut self, _now: Instant, handle: ConnectionHandle) {
        if let Some(c) = self.conns.get_mut(&handle) {
            c.close();
        }
        self.collect(handle);
    }

    pub fn remote_address(&self, handle: ConnectionHandle) -> Option<SocketAddr> {
        self.conns
            .get(&handle)
            .filter(|c| c.is_open())
            .map(|c| c.remote())
    }

    pub fn stats(&self, handle: ConnectionHandle) -> Option<Stats> {
        self.conns.get(&handle).map(|c| c.stats())
    }

    pub fn counters(&self) -> &EndpointCounters {
        &self.counters
    }

    /// Handles of the live connections.
    pub fn connections(&self) -> Vec<ConnectionHandle> {
        self.conns
            .iter()
            .filter(|(_, c)| c.is_open())
            .map(|(h, _)| *h)
            .collect()
    }

    /// Bytes a connection holds in buffers and records (see `Connection::memory_usage`).
    pub fn memory_usage(&self, handle: ConnectionHandle) -> Option<usize> {
        self.conns.get(&handle).map(|c| c.memory_usage())
    }
}
