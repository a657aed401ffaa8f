//! The mio driver: the only rudp code that reads the clock or touches a socket.
//!
//! A [`Driver`] owns one UDP socket (large kernel buffers, batched system
//! calls, see [`socket`]) and moves datagrams between it and a sans-IO
//! [`Endpoint`]. It does not own the application's `mio::Poll`: register it
//! with [`Driver::register`] next to your own sources (TCP, console), then on
//! every wake-up call [`Driver::drive`] (or `recv`, `handle_timeout` and
//! `flush` separately) and sleep until [`Driver::poll_timeout`].
//!
//! ```no_run
//! use chunkswarm::rudp::driver::{self, Driver, DriverOptions};
//! use chunkswarm::rudp::{Config, Endpoint};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut poll = mio::Poll::new()?;
//! let mut events = mio::Events::with_capacity(256);
//! let mut udp = Driver::bind("0.0.0.0:7000".parse()?, DriverOptions::default())?;
//! udp.register(poll.registry(), mio::Token(0))?;
//! let mut endpoint = Endpoint::new(Config::default(), 42);
//! loop {
//!     let timeout = udp.poll_timeout(driver::now(), &mut endpoint);
//!     poll.poll(&mut events, timeout)?;
//!     let now = driver::now();
//!     udp.drive(now, &mut endpoint);
//!     while let Some((_handle, _event)) = endpoint.poll_event() { /* ... */ }
//!     udp.flush(now, &mut endpoint); // what the application just queued
//! }
//! # }
//! ```
//!
//! Impairment ([`crate::rudp::impair`]) applies on the send path when
//! configured: each datagram the endpoint emits goes through it, and the
//! driver sends what it releases when it is due.

pub mod args;
pub mod perf;
pub mod socket;

pub use args::{ImpairArgs, TransportArgs};
pub use socket::{BatchSocket, SocketCounters, SocketInfo, TransmitQueue};

use super::endpoint::Endpoint;
use super::impair::{ImpairConfig, ImpairCounters, Impairment};
use log::debug;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The clock. Everything under `rudp` takes time as an argument; this is where
/// it comes from.
pub fn now() -> Instant {
    Instant::now()
}

/// Datagrams the driver queues before it hands them to the socket.
const TRANSMIT_BATCH: usize = 256;
/// Datagrams taken from the endpoint per `flush` before yielding to the loop.
const FLUSH_BUDGET: usize = 4096;
/// Datagrams read per `recv` before yielding to the loop (one `recvmmsg` may
/// deliver more). Small, so that the acknowledgements the endpoint owes go
/// out soon: on loopback 2048 gave 4.4–6.7 Gbit/s, 64 gave 8.1–10.7.
const RECV_BUDGET: usize = 64;
/// While the socket buffer is full, timers are not checked more often than this.
const BLOCKED_BACKOFF: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, PartialEq)]
pub struct DriverOptions {
    /// Impair every sent datagram (experiments without netem); None = off.
    pub impair: Option<ImpairConfig>,
    /// Requested SO_RCVBUF and SO_SNDBUF in bytes.
    pub socket_buffer: usize,
    /// Use sendmmsg/recvmmsg (Linux).
    pub batch: bool,
    /// Use UDP GSO/GRO (Linux, with `batch`).
    pub gso: bool,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            impair: None,
            socket_buffer: 16 << 20,
            batch: true,
            gso: true,
        }
    }
}

#[derive(Debug)]
pub enum DriverError {
    Bind {
        addr: SocketAddr,
        source: io::Error,
    },
    Poll(io::Error),
    /// `run_endpoint` hit its time limit.
    TimedOut(Duration),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Bind { addr, source } => write!(f, "cannot bind UDP {addr}: {source}"),
            DriverError::Poll(e) => write!(f, "poll failed: {e}"),
            DriverError::TimedOut(d) => write!(f, "gave up after {:.1} s", d.as_secs_f64()),
        }
    }
}

impl std::error::Error for DriverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DriverError::Bind { source, .. } => Some(source),
            DriverError::Poll(e) => Some(e),
            DriverError::TimedOut(_) => None,
        }
    }
}

/// Moves datagrams between one UDP socket and one [`Endpoint`].
pub struct Driver {
    socket: BatchSocket,
    queue: TransmitQueue,
    impair: Option<Impairment>,
    datagram: Vec<u8>,
    /// The socket buffer filled up at this time; cleared by the next send that
    /// goes through.
    blocked_since: Option<Instant>,
    /// `recv` stopped at its budget with datagrams still waiting.
    recv_pending: bool,
    /// `flush` stopped at its budget with the endpoint still sending.
    send_pending: bool,
    last_now: Option<Instant>,
}

impl Driver {
    pub fn bind(addr: SocketAddr, options: DriverOptions) -> Result<Driver, DriverError> {
        let socket = BatchSocket::bind(addr, options.socket_buffer, options.batch, options.gso)
            .map_err(|source| DriverError::Bind { addr, source })?;
        let impair = options.impair.map(Impairment::new).filter(|i| !i.is_noop());
        Ok(Driver {
            socket,
            queue: TransmitQueue::new(),
            impair,
            datagram: Vec::with_capacity(super::DEFAULT_MAX_UDP_PAYLOAD),
            blocked_since: None,
            recv_pending: false,
            send_pending: false,
            last_now: None,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr()
    }

    /// Kernel buffer sizes and which offloads are in use.
    pub fn socket_info(&self) -> SocketInfo {
        self.socket.info()
    }

    pub fn counters(&self) -> &SocketCounters {
        self.socket.counters()
    }

    pub fn impair_counters(&self) -> Option<&ImpairCounters> {
        self.impair.as_ref().map(|i| i.counters())
    }

    /// Registers the socket (readable and writable, edge-triggered) with the
    /// application's `Poll`.
    pub fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> io::Result<()> {
        registry.register(
            self.socket.source(),
            token,
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )
    }

    pub fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        registry.deregister(self.socket.source())
    }

    /// Feeds received datagrams to the endpoint until the socket is empty or
    /// the per-call budget is spent. Returns how many were fed.
    pub fn recv(&mut self, now: Instant, endpoint: &mut Endpoint) -> usize {
        self.last_now = Some(now);
        let out = self.socket.recv(RECV_BUDGET, |from, data| {
            endpoint.handle_datagram(now, from, data)
        });
        self.recv_pending = !out.drained;
        out.datagrams
    }

    /// Runs the endpoint's timers if one is due.
    pub fn handle_timeout(&mut self, now: Instant, endpoint: &mut Endpoint) {
        if endpoint.poll_timeout().is_some_and(|t| t <= now) {
            endpoint.handle_timeout(now);
        }
    }

    /// Sends what the endpoint (and the impairment) has ready, until nothing
    /// is left, the socket would block (a later writable event resumes), or
    /// the per-call budget is spent. Returns the datagrams handed to the kernel.
    pub fn flush(&mut self, now: Instant, endpoint: &mut Endpoint) -> usize {
        self.last_now = Some(now);
        self.send_pending = false;
        let mut sent = 0;
        let mut taken = 0;
        loop {
            if !self.queue.is_empty() {
                let out = self.socket.send(&mut self.queue);
                sent += out.datagrams;
                if out.blocked {
                    self.blocked_since.get_or_insert(now);
                    return sent;
                }
                self.blocked_since = None;
            }
            if taken >= FLUSH_BUDGET {
                self.send_pending = true;
                return sent;
            }
            if let Some(imp) = &mut self.impair {
                while self.queue.len() < TRANSMIT_BATCH {
                    let Some((to, d)) = imp.pop_ready(now) else {
                        break;
                    };
                    self.queue.push(to, &d);
                }
            }
            while self.queue.len() < TRANSMIT_BATCH && taken < FLUSH_BUDGET {
                let Some(t) = endpoint.poll_transmit(now, &mut self.datagram) else {
                    break;
                };
                taken += 1;
                let d = &self.datagram[..t.len.min(self.datagram.len())];
                match &mut self.impair {
                    Some(imp) => {
                        imp.push(now, t.destination, d);
                        while let Some((to, d)) = imp.pop_ready(now) {
                            self.queue.push(to, &d);
                        }
                    }
                    None => self.queue.push(t.destination, d),
                }
            }
            if self.queue.is_empty() {
                return sent;
            }
        }
    }

    /// Receives, runs due timers and sends: one turn of the loop.
    pub fn drive(&mut self, now: Instant, endpoint: &mut Endpoint) {
        self.recv(now, endpoint);
        self.handle_timeout(now, endpoint);
        self.flush(now, endpoint);
    }

    /// When the driver next needs a turn: the endpoint's deadline, the next
    /// impairment release, or at once if a budget ran out.
    pub fn next_deadline(&mut self, endpoint: &mut Endpoint) -> Option<Instant> {
        if self.recv_pending || self.send_pending {
            if let Some(t) = self.last_now {
                return Some(t);
            }
        }
        let mut deadline = endpoint.poll_timeout();
        if let Some(since) = self.blocked_since {
            // The endpoint may want to send now, but the socket cannot take
            // it: the writable event wakes us; timers may wait a little.
            deadline = deadline.map(|d| d.max(since + BLOCKED_BACKOFF));
        }
        let release = self.impair.as_ref().and_then(|i| i.next_release());
        match (deadline, release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How long `Poll::poll` may sleep (None: until an event).
    pub fn poll_timeout(&mut self, now: Instant, endpoint: &mut Endpoint) -> Option<Duration> {
        self.next_deadline(endpoint)
            .map(|d| d.saturating_duration_since(now))
    }
}

/// What the application closure of [`run_endpoint`] wants next.
pub enum Step<T> {
    Continue,
    Done(T),
}

/// A complete event loop for programs whose only source is the driver
/// (rudp-perf, tests): each turn receives, runs timers, calls `app` (which
/// drains `endpoint.poll_event()` and queues messages), and sends. Returns
/// what `app` returns with `Step::Done`, or `TimedOut` after `limit`.
pub fn run_endpoint<T, F>(
    driver: &mut Driver,
    endpoint: &mut Endpoint,
    limit: Duration,
    mut app: F,
) -> Result<T, DriverError>
where
    F: FnMut(Instant, &mut Endpoint) -> Step<T>,
{
    const UDP: mio::Token = mio::Token(0);
    let mut poll = mio::Poll::new().map_err(DriverError::Poll)?;
    let mut events = mio::Events::with_capacity(64);
    driver
        .register(poll.registry(), UDP)
        .map_err(DriverError::Poll)?;
    let start = now();
    let result = loop {
        let t = now();
        driver.drive(t, endpoint);
        if let Step::Done(v) = app(t, endpoint) {
            driver.flush(t, endpoint);
            break Ok(v);
        }
        driver.flush(t, endpoint);
        let elapsed = t.saturating_duration_since(start);
        if elapsed >= limit {
            break Err(DriverError::TimedOut(elapsed));
        }
        let remaining = limit - elapsed;
        let timeout = driver
            .poll_timeout(t, endpoint)
            .map_or(remaining, |d| d.min(remaining));
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                break Err(DriverError::Poll(e));
            }
        }
    };
    if let Err(e) = driver.deregister(poll.registry()) {
        debug!("deregister: {e}");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rudp::Config;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn binding_a_taken_port_is_a_clear_error() {
        let first = Driver::bind(loopback(), DriverOptions::default()).expect("bind");
        let taken = first.local_addr();
        match Driver::bind(taken, DriverOptions::default()) {
            Err(e @ DriverError::Bind { .. }) => {
                assert!(
                    e.to_string()
                        .starts_with(&format!("cannot bind UDP {taken}")),
                    "{e}"
                )
            }
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("bound a taken port"),
        }
    }

    #[test]
    fn impairment_holds_datagrams_until_their_release() {
        let delay = Duration::from_millis(50);
        let options = DriverOptions {
            impair: Some(ImpairConfig {
                delay,
                seed: 1,
                ..ImpairConfig::default()
            }),
            ..DriverOptions::default()
        };
        let mut driver = Driver::bind(loopback(), options).expect("bind");
        let mut endpoint = Endpoint::new(Config::default(), 1);
        let t0 = now();
        // A handshake datagram towards a port nobody listens on.
        endpoint.connect(t0, SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(driver.flush(t0, &mut endpoint), 0, "sent before its delay");
        let release = driver.next_deadline(&mut endpoint).expect("a deadline");
        assert!(
            release <= t0 + delay,
            "deadline {:?} after the release",
            release - t0
        );
        assert_eq!(driver.counters().datagrams_sent, 0);
        // Time is an argument: at t0 + delay the held datagram goes out.
        assert!(driver.flush(t0 + delay, &mut endpoint) >= 1);
        assert!(driver.counters().datagrams_sent >= 1);
        assert!(driver.impair_counters().expect("impaired").passed >= 1);
    }

    #[test]
    fn a_recv_budget_left_over_means_come_back_at_once() {
        let mut driver = Driver::bind(loopback(), DriverOptions::default()).expect("bind");
        let mut endpoint = Endpoint::new(Config::default(), 1);
        let junk = std::net::UdpSocket::bind(loopback()).expect("bind");
        for i in 0..(3 * RECV_BUDGET) {
            // Distinct sizes so that GRO cannot merge them into one.
            junk.send_to(&vec![0x5a; 10 + i], driver.local_addr())
                .expect("send");
        }
        let t = now();
        let mut got = driver.recv(t, &mut endpoint);
        assert!(got < 3 * RECV_BUDGET);
        assert_eq!(
            driver.next_deadline(&mut endpoint),
            Some(t),
            "more is waiting"
        );
        let mut turns = 1;
        while got < 3 * RECV_BUDGET && turns < 1000 {
            got += driver.recv(t, &mut endpoint);
            turns += 1;
        }
        assert_eq!(got, 3 * RECV_BUDGET);
        assert!(turns >= 3, "the budget was not applied");
        // Drained now (the loop above may have stopped exactly at a budget).
        driver.recv(t, &mut endpoint);
        driver.flush(t, &mut endpoint);
        assert_eq!(
            driver.next_deadline(&mut endpoint),
            None,
            "nothing to do, no timer"
        );
        assert_eq!(driver.counters().datagrams_received, 3 * RECV_BUDGET as u64);
    }

    #[test]
    fn a_noop_impairment_is_skipped() {
        let options = DriverOptions {
            impair: Some(ImpairConfig::default()),
            ..DriverOptions::default()
        };
        let driver = Driver::bind(loopback(), options).expect("bind");
        assert!(driver.impair_counters().is_none());
    }
}
