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
/// The uplink pacer's bucket holds this much time's worth of bytes ...
const PACER_BURST: Duration = Duration::from_millis(20);
/// ... and at least this many bytes (a few full datagrams), and once empty
/// it waits until this much has accrued (fewer, larger wake-ups; the
/// poll's timeout has millisecond granularity anyway).
const PACER_MIN_BURST: f64 = 16_000.0;
const PACER_QUANTUM: f64 = 4_500.0;
/// Datagrams up to this size (acknowledgements, requests, haves) are not
/// held back by the pacer, only charged to it.
const PACER_SMALL: usize = 300;

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
    /// Cap on everything the socket sends (all connections' data,
    /// acknowledgements and retransmissions together), in bytes per second
    /// of IP packets (datagram plus IP and UDP headers); None = no cap.
    pub max_send_rate: Option<u64>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            impair: None,
            socket_buffer: 16 << 20,
            batch: true,
            gso: true,
            max_send_rate: None,
        }
    }
}

/// Paces what the socket sends at the host's upload cap: a token bucket in
/// bytes of IP packets. A per-connection pacer is not enough: a peer that
/// serves fifteen neighbours at once, each connection paced at the cap,
/// sends up to fifteen times the cap into its uplink's queue, which then
/// drops (measured under `netlab swarm`: 24% of the owner's packets).
#[derive(Debug, Clone)]
struct UplinkPacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
    /// Out of tokens: nothing more goes out before this.
    wait: Option<Instant>,
}

impl UplinkPacer {
    fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate * PACER_BURST.as_secs_f64()).max(PACER_MIN_BURST);
        UplinkPacer {
            rate,
            burst,
            tokens: burst,
            at: None,
            wait: None,
        }
    }

    /// Whether a datagram may go now; if not, `wait` says when.
    fn may_send(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.at = Some(now);
        if self.tokens > 0.0 {
            self.wait = None;
            return true;
        }
        let need = PACER_QUANTUM.min(self.burst) - self.tokens;
        self.wait = Some(now + Duration::from_secs_f64(need / self.rate));
        false
    }

    /// Charges one datagram of `len` bytes to `to`.
    fn sent(&mut self, to: SocketAddr, len: usize) {
        let headers = if to.is_ipv4() { 28 } else { 48 };
        self.tokens -= (len + headers) as f64;
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
    pacer: Option<UplinkPacer>,
    /// A datagram the endpoint wrote while the pacer had no tokens: the
    /// next to go.
    held: Option<(SocketAddr, Vec<u8>)>,
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
            pacer: options.max_send_rate.map(UplinkPacer::new),
            held: None,
        })
    }

    /// True when the last `flush` stopped because the pacer had no tokens
    /// left (the uplink is the limit), false when the endpoint ran out of
    /// things to send (or there is no pacer).
    pub fn pacer_limited(&self) -> bool {
        self.held.is_some() || self.pacer.as_ref().is_some_and(|p| p.wait.is_some())
    }

    /// Sets (or lifts, with None) the cap on the socket's send rate; see
    /// [`DriverOptions::max_send_rate`].
    pub fn set_max_send_rate(&mut self, bytes_per_sec: Option<u64>) {
        self.pacer = bytes_per_sec.map(UplinkPacer::new);
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
            self.release_impaired(now);
            while self.queue.len() < TRANSMIT_BATCH && taken < FLUSH_BUDGET {
                let allowed = self.pacer.as_mut().is_none_or(|p| p.may_send(now));
                if let Some((to, d)) = self.held.take() {
                    if !allowed {
                        self.held = Some((to, d));
                        break;
                    }
                    self.queue_paced(to, &d);
                    continue;
                }
                if !allowed && self.impair.is_some() {
                    break; // paced as the impairment releases them
                }
                let Some(t) = endpoint.poll_transmit(now, &mut self.datagram) else {
                    break;
                };
                taken += 1;
                let d = &self.datagram[..t.len.min(self.datagram.len())];
                match &mut self.impair {
                    Some(imp) => {
                        imp.push(now, t.destination, d);
                        self.release_impaired(now);
                    }
                    None if !allowed && d.len() > PACER_SMALL => {
                        // Out of tokens: this one waits for them, and so
                        // does the endpoint.
                        self.held = Some((t.destination, d.to_vec()));
                        break;
                    }
                    None => {
                        // Acknowledgements and control messages go at once
                        // (charged all the same, so data waits longer):
                        // holding them delays every peer's view of us. Once
                        // a full datagram is held, though, the endpoint is
                        // not polled until tokens return (PACER_QUANTUM,
                        // ~2 ms at 20 Mbit/s), so its ACKs wait that long.
                        let to = t.destination;
                        if let Some(p) = &mut self.pacer {
                            p.sent(to, d.len());
                        }
                        self.queue.push(to, d);
                    }
                }
            }
            if self.queue.is_empty() {
                return sent;
            }
        }
    }

    /// Queues a datagram and charges it to the pacer.
    fn queue_paced(&mut self, to: SocketAddr, d: &[u8]) {
        if let Some(p) = &mut self.pacer {
            p.sent(to, d.len());
        }
        self.queue.push(to, d);
    }

    /// Queues the impairment's datagrams that are due, as far as the pacer
    /// lets them out.
    fn release_impaired(&mut self, now: Instant) {
        let Some(imp) = &mut self.impair else {
            return;
        };
        while self.queue.len() < TRANSMIT_BATCH
            && self.pacer.as_mut().is_none_or(|p| p.may_send(now))
        {
            let Some((to, d)) = imp.pop_ready(now) else {
                break;
            };
            if let Some(p) = &mut self.pacer {
                p.sent(to, d.len());
            }
            self.queue.push(to, &d);
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
        let pacer_wait = self.pacer.as_ref().and_then(|p| p.wait);
        if let Some(wait) = pacer_wait {
            // The pacer stopped a flush: come back when it lets more out
            // (the endpoint may have more to send without a deadline of
            // its own), and not before, even if the endpoint's deadline is
            // its own pacing saying "send now"; its other timers wait for
            // this turn too (a few milliseconds at most).
            deadline = Some(wait);
        }
        let release = self
            .impair
            .as_ref()
            .and_then(|i| i.next_release())
            .map(|r| pacer_wait.map_or(r, |w| r.max(w)));
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

#[cfg(test)]
mod pacer_tests {
    use super::*;
    use crate::rudp::{Config, Event};

    /// A paced sender and an unpaced receiver on loopback, driven in
    /// virtual time (1 ms steps; loopback delivers within the send call):
    /// returns the bytes of IP packets the sender put on the wire by each
    /// step, while 1 MB of messages waits to go, and the message bytes the
    /// endpoint still held unsent.
    fn paced_steps(rate: u64, steps: u32) -> Vec<(u64, u64)> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let paced = DriverOptions {
            max_send_rate: Some(rate),
            ..DriverOptions::default()
        };
        let mut tx = Driver::bind(any, paced).expect("bind");
        let mut rx = Driver::bind(any, DriverOptions::default()).expect("bind");
        let mut a = Endpoint::new(Config::default(), 1);
        let mut b = Endpoint::new(Config::default(), 2);
        let start = now();
        let h = a.connect(start, rx.local_addr());
        let mut wire = Vec::new();
        for step in 0..steps {
            let t = start + Duration::from_millis(step.into());
            tx.drive(t, &mut a);
            rx.drive(t, &mut b);
            while let Some((_, ev)) = a.poll_event() {
                if matches!(ev, Event::Connected) {
                    for _ in 0..100 {
                        a.send(h, vec![7; 10_000], false).expect("send");
                    }
                }
            }
            while b.poll_event().is_some() {}
            tx.flush(t, &mut a);
            rx.flush(t, &mut b);
            let c = tx.counters();
            wire.push((c.bytes_sent + 28 * c.datagrams_sent, a.unsent_bytes(h)));
        }
        wire
    }

    #[test]
    fn the_pacer_holds_all_sends_to_its_rate() {
        let rate = 1_000_000;
        let wire = paced_steps(rate, 400);
        let burst = (rate as f64 * PACER_BURST.as_secs_f64()).max(PACER_MIN_BURST) as u64;
        for (step, &(bytes, _)) in wire.iter().enumerate() {
            // 1 MB/s is 1,000 bytes per 1 ms step, plus the burst and the
            // datagram sent on credit.
            let most = rate * (step as u64 + 1) / 1000 + burst + 1500;
            assert!(
                bytes <= most,
                "step {step}: {bytes} bytes on the wire, at most {most}"
            );
        }
        // And it is a pacer, not a stopper: the transfer kept going at its rate.
        let (last, unsent) = *wire.last().expect("steps");
        assert!(
            last >= rate * 400 / 1000 * 9 / 10,
            "only {last} bytes in 400 ms"
        );
        // What the pacer held back is still the endpoint's, unsent, and
        // shrinks as it goes out: 1 MB minus about 0.4 s at 1 MB/s.
        assert!(
            (500_000..700_000).contains(&unsent),
            "{unsent} bytes unsent"
        );
        let unsent: Vec<u64> = wire.iter().map(|&(_, u)| u).filter(|&u| u > 0).collect();
        assert!(unsent.windows(2).all(|w| w[1] <= w[0]), "unsent bytes grew");
    }

    #[test]
    fn nothing_is_unsent_once_everything_went_out() {
        let wire = paced_steps(100_000_000, 200);
        assert_eq!(wire.last().map(|&(_, u)| u), Some(0));
        assert!(wire.iter().any(|&(_, u)| u > 0), "never saw the queue");
    }

    #[test]
    fn a_paced_driver_wakes_itself_up() {
        let mut tx = Driver::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            DriverOptions {
                max_send_rate: Some(100_000),
                ..DriverOptions::default()
            },
        )
        .expect("bind");
        let mut a = Endpoint::new(Config::default(), 1);
        let t = now();
        // Handshake attempts to a silent port until the pacer says no.
        for i in 0..20 {
            a.connect(t, SocketAddr::from(([127, 0, 0, 1], 9 + i)));
        }
        tx.flush(t, &mut a);
        let wait = tx
            .pacer
            .as_ref()
            .and_then(|p| p.wait)
            .expect("the pacer stopped the flush");
        // The loop must come back when the pacer lets more out, not at the
        // endpoint's (much later) retransmission timer.
        assert_eq!(tx.next_deadline(&mut a), Some(wait));
        assert!(wait > t && wait < t + Duration::from_millis(100));
        assert!(tx.pacer_limited());
        // Much later every handshake is out and nothing is due: the pacer
        // is no longer what limits the socket.
        tx.flush(t + Duration::from_millis(500), &mut a);
        assert!(!tx.pacer_limited());
    }
}
