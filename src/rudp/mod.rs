//! rudp: a selective-repeat reliable transport on UDP.
//!
//! Everything here except [`driver`] is sans-IO: time is an argument
//! (`now: Instant`), datagrams go in through [`Endpoint::handle_datagram`] and
//! come out of [`Endpoint::poll_transmit`]; nothing reads the clock or touches a
//! socket. [`sim`] drives endpoints over a simulated network in virtual time;
//! [`driver`] drives one over a real UDP socket with mio.

pub mod cc;
pub mod connection;
pub mod driver;
pub mod endpoint;
pub mod impair;
pub mod packet;
pub mod range_set;
pub mod rtt;
pub mod sim;
pub mod timer;

pub use endpoint::{
    ConnectionError, ConnectionHandle, Endpoint, Event, SendError, Stats, Transmit,
};

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Default largest UDP payload: a 1500-byte Ethernet MTU less 20 (IPv4) and 8 (UDP).
pub const DEFAULT_MAX_UDP_PAYLOAD: usize = 1472;
/// Smallest payload we accept for `--mtu` (IPv6 minimum MTU 1280 less 48 bytes of headers).
pub const MIN_UDP_PAYLOAD: usize = 1200;
/// Largest application message: 16 MiB.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Which congestion controller a connection uses (`--cc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CcKind {
    /// RFC 6582 / RFC 5681 NewReno: the reference that behaves like TCP.
    NewReno,
    /// Model-based (bottleneck bandwidth and min RTT), in the spirit of BBR.
    #[default]
    Bbr,
}

impl CcKind {
    pub const ALL: [CcKind; 2] = [CcKind::NewReno, CcKind::Bbr];

    pub fn name(self) -> &'static str {
        match self {
            CcKind::NewReno => "newreno",
            CcKind::Bbr => "bbr",
        }
    }
}

impl fmt::Display for CcKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CcKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "newreno" | "reno" => Ok(CcKind::NewReno),
            "bbr" => Ok(CcKind::Bbr),
            other => Err(format!(
                "unknown congestion controller '{other}' (choose newreno or bbr)"
            )),
        }
    }
}

/// Per-endpoint configuration; every connection of the endpoint uses it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest UDP payload a datagram may have (`--mtu`).
    pub max_udp_payload: usize,
    pub cc: CcKind,
    /// Accept connections initiated by others.
    pub accept_incoming: bool,
    /// A connection with no datagram received for this long is closed.
    pub idle_timeout: Duration,
    /// Send a keepalive after this long without sending anything.
    pub keepalive_interval: Duration,
    /// Consecutive PTOs without any acknowledgement before the peer is declared dead.
    pub max_ptos: u32,
    /// Largest message accepted from the application or the peer.
    pub max_message_size: usize,
    /// Bytes of incomplete or undelivered messages a receiver buffers per
    /// connection (flow-control window it advertises).
    pub recv_window: usize,
    /// Cap on the pacing rate in bytes per second (`--max-upload`); None = no cap.
    pub max_send_rate: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
            cc: CcKind::default(),
            accept_incoming: true,
            idle_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(5),
            max_ptos: 8,
            max_message_size: MAX_MESSAGE_SIZE,
            recv_window: 32 << 20,
            max_send_rate: None,
        }
    }
}
