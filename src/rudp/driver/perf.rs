//! The rudp-perf workload (in the spirit of iperf3): a client sends 100 KiB
//! messages, each carrying a sequence number, a deterministic pattern and a
//! CRC32; the server verifies every one and reports back what it verified, so
//! goodput is what the receiving application got. The same transfer runs over
//! rudp, over TCP (`--tcp`, the reference) and as a raw UDP blast of the same
//! datagram size without any reliability (`--raw-udp`, the baseline).
//!
//! Framing (rudp: one message per rudp message; TCP: frames back to back):
//! `magic u32 | kind u8 | 0 0 0 | seq u64 | body length u32 | crc32(body) u32 | body`.

use super::{now, BatchSocket, Driver, DriverError, DriverOptions, TransmitQueue};
use crate::rudp::{Config, ConnectionError, ConnectionHandle, Endpoint, Event, SendError};
use byteorder::{ByteOrder, NetworkEndian};
use log::{debug, info, warn};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Size of each data message: one chunk, 100 KiB.
pub const MESSAGE_SIZE: usize = 100 * 1024;
/// Default port of `rudp-perf server` (UDP for rudp, TCP for `--tcp`).
pub const DEFAULT_PORT: u16 = 7000;
/// Most bytes a client keeps queued in rudp ahead of acknowledgements. The
/// backlog also follows the congestion window (see `send_backlog_limit`), so
/// that a slow path does not leave many seconds of data queued at `--time`'s end.
const SEND_BACKLOG: usize = 8 << 20;

/// Four congestion windows plus four messages, at most `SEND_BACKLOG`. The
/// endpoint counts a message in its backlog until every fragment is acked,
/// so under loss messages waiting on a retransmission sit there beyond the
/// window in flight; this keeps the connection from going application-limited.
fn send_backlog_limit(cwnd: u64) -> usize {
    let cwnd = usize::try_from(cwnd).unwrap_or(SEND_BACKLOG);
    cwnd.saturating_mul(4)
        .saturating_add(4 * MESSAGE_SIZE)
        .min(SEND_BACKLOG)
}

/// How long a client waits for the handshake. Before any RTT sample a
/// handshake packet is resent after 1 s, then 2 s, then every 4 s, and at
/// 20% loss each way each of its two round trips gets through only 64% of
/// the time: 5 s (the old limit) lost a `netlab grid` cell at 10 ms / 20%.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(20);
/// How long a client keeps going after it stopped sending (a timed run: after
/// `--time`) for the data still queued to arrive and the final report; after
/// that it reports the server's last progress report as a partial result.
const REPORT_GRACE: Duration = Duration::from_secs(5);
/// How often the server tells a client what it verified so far.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

const MAGIC: u32 = 0x5250_5246; // "RPRF"
/// Length of the frame header.
pub const HEADER_LEN: usize = 24;
/// Pattern period: a prime, so that a message shifted by whole periods is caught by its seq.
const PERIOD: usize = 251;

/// One framed perf message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Data {
        seq: u64,
        body: &'a [u8],
    },
    /// Client → server: I sent this much, tell me what you verified.
    Done {
        messages: u64,
        bytes: u64,
    },
    Report(ServerReport),
    /// Server → client, every `PROGRESS_EVERY`: what it verified so far.
    Progress(ServerReport),
    /// Client → server over rudp: open a socket for a raw UDP blast.
    RawStart,
    /// Server → client: blast to this port.
    RawReady {
        port: u16,
    },
    /// Client → server: the blast is over.
    RawDone {
        datagrams: u64,
        bytes: u64,
    },
}

const KIND_DATA: u8 = 1;
const KIND_DONE: u8 = 2;
const KIND_REPORT: u8 = 3;
const KIND_RAW_START: u8 = 4;
const KIND_RAW_READY: u8 = 5;
const KIND_RAW_DONE: u8 = 6;
const KIND_PROGRESS: u8 = 7;

/// What the server application verified for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerReport {
    /// Messages (raw mode: datagrams) received intact.
    pub messages: u64,
    /// Their bytes, framing included.
    pub bytes: u64,
    /// Messages that failed verification.
    pub bad: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Microseconds from the first to the last verified message.
    pub active_us: u64,
}

impl ServerReport {
    fn encode(&self) -> [u64; 5] {
        [
            self.messages,
            self.bytes,
            self.bad,
            self.duplicates,
            self.active_us,
        ]
    }
}

#[derive(Debug)]
pub enum PerfError {
    Driver(DriverError),
    Io {
        context: String,
        source: io::Error,
    },
    Connection(ConnectionError),
    Send(SendError),
    /// The peer sent something that is not a perf frame, or out of turn.
    Protocol(String),
    TimedOut(&'static str),
    Interrupted,
}

impl fmt::Display for PerfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PerfError::Driver(e) => write!(f, "{e}"),
            PerfError::Io { context, source } => write!(f, "{context}: {source}"),
            PerfError::Connection(e) => write!(f, "connection {e}"),
            PerfError::Send(e) => write!(f, "send: {e}"),
            PerfError::Protocol(why) => write!(f, "protocol error: {why}"),
            PerfError::TimedOut(what) => write!(f, "timed out waiting for {what}"),
            PerfError::Interrupted => write!(f, "interrupted"),
        }
    }
}

impl std::error::Error for PerfError {}

impl From<DriverError> for PerfError {
    fn from(e: DriverError) -> Self {
        PerfError::Driver(e)
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> PerfError {
    let context = context.into();
    move |source| PerfError::Io { context, source }
}

/// Parses one frame; any malformed input is an error, never a panic.
pub fn decode(buf: &[u8]) -> Result<Frame<'_>, PerfError> {
    let bad = |why: &str| PerfError::Protocol(why.to_string());
    if buf.len() < HEADER_LEN {
        return Err(bad("frame shorter than its header"));
    }
    if NetworkEndian::read_u32(&buf[0..4]) != MAGIC {
        return Err(bad("bad magic"));
    }
    let kind = buf[4];
    let seq = NetworkEndian::read_u64(&buf[8..16]);
    let len = NetworkEndian::read_u32(&buf[16..20]) as usize;
    let crc = NetworkEndian::read_u32(&buf[20..24]);
    let body = &buf[HEADER_LEN..];
    if body.len() != len {
        return Err(bad("frame length does not match its header"));
    }
    let words = |n: usize| -> Result<Vec<u64>, PerfError> {
        if body.len() != 8 * n || crc32fast::hash(body) != crc {
            return Err(bad("malformed control frame"));
        }
        Ok(body.chunks_exact(8).map(NetworkEndian::read_u64).collect())
    };
    Ok(match kind {
        KIND_DATA => Frame::Data { seq, body },
        KIND_DONE => {
            let w = words(2)?;
            Frame::Done {
                messages: w[0],
                bytes: w[1],
            }
        }
        KIND_REPORT | KIND_PROGRESS => {
            let w = words(5)?;
            let r = ServerReport {
                messages: w[0],
                bytes: w[1],
                bad: w[2],
                duplicates: w[3],
                active_us: w[4],
            };
            if kind == KIND_REPORT {
                Frame::Report(r)
            } else {
                Frame::Progress(r)
            }
        }
        KIND_RAW_START => Frame::RawStart,
        KIND_RAW_READY => {
            let w = words(1)?;
            Frame::RawReady {
                port: u16::try_from(w[0]).map_err(|_| bad("port out of range"))?,
            }
        }
        KIND_RAW_DONE => {
            let w = words(2)?;
            Frame::RawDone {
                datagrams: w[0],
                bytes: w[1],
            }
        }
        _ => return Err(bad("unknown frame kind")),
    })
}

fn header(kind: u8, seq: u64, body_len: usize, crc: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    NetworkEndian::write_u32(&mut h[0..4], MAGIC);
    h[4] = kind;
    NetworkEndian::write_u64(&mut h[8..16], seq);
    NetworkEndian::write_u32(&mut h[16..20], body_len as u32);
    NetworkEndian::write_u32(&mut h[20..24], crc);
    h
}

/// Encodes a control frame (anything but `Data`).
pub fn encode_control(frame: &Frame<'_>) -> Vec<u8> {
    let (kind, words): (u8, Vec<u64>) = match frame {
        Frame::Data { seq, body } => {
            let mut v = header(KIND_DATA, *seq, body.len(), crc32fast::hash(body)).to_vec();
            v.extend_from_slice(body);
            return v;
        }
        Frame::Done { messages, bytes } => (KIND_DONE, vec![*messages, *bytes]),
        Frame::Report(r) => (KIND_REPORT, r.encode().to_vec()),
        Frame::Progress(r) => (KIND_PROGRESS, r.encode().to_vec()),
        Frame::RawStart => (KIND_RAW_START, vec![]),
        Frame::RawReady { port } => (KIND_RAW_READY, vec![u64::from(*port)]),
        Frame::RawDone { datagrams, bytes } => (KIND_RAW_DONE, vec![*datagrams, *bytes]),
    };
    let body: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    let mut v = header(kind, 0, body.len(), crc32fast::hash(&body)).to_vec();
    v.extend_from_slice(&body);
    v
}

/// The deterministic data pattern: the body of message `seq` is `seq` (8
/// bytes, big-endian) followed by `table[seq % 251 ..]`, where
/// `table[i] = i % 251`; its CRC32 is computed by combining the CRC of the
/// sequence number with a cached CRC of the pattern part.
#[derive(Debug, Clone)]
pub struct Pattern {
    table: Vec<u8>,
    body_len: usize,
    /// CRC32 state of the pattern part for each of the 251 offsets.
    tails: Vec<crc32fast::Hasher>,
}

impl Pattern {
    pub fn new(message_size: usize) -> Self {
        let body_len = message_size.saturating_sub(HEADER_LEN).max(8);
        let tail_len = body_len - 8;
        let table: Vec<u8> = (0..tail_len + PERIOD).map(|i| (i % PERIOD) as u8).collect();
        let tails = (0..PERIOD)
            .map(|o| {
                let mut h = crc32fast::Hasher::new();
                h.update(&table[o..o + tail_len]);
                h
            })
            .collect();
        Pattern {
            table,
            body_len,
            tails,
        }
    }

    fn offset(seq: u64) -> usize {
        (seq % PERIOD as u64) as usize
    }

    fn tail(&self, seq: u64) -> &[u8] {
        let o = Self::offset(seq);
        &self.table[o..o + self.body_len - 8]
    }

    fn crc(&self, seq: u64) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_be_bytes());
        h.combine(&self.tails[Self::offset(seq)]);
        h.finalize()
    }

    /// Data message number `seq`, framed.
    pub fn message(&self, seq: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.body_len);
        v.extend_from_slice(&header(KIND_DATA, seq, self.body_len, self.crc(seq)));
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(self.tail(seq));
        v
    }

    /// True when `body` is exactly what message `seq` must carry.
    fn verify(&self, seq: u64, body: &[u8], crc: u32) -> bool {
        body.len() == self.body_len
            && body[..8] == seq.to_be_bytes()
            && body[8..] == *self.tail(seq)
            && crc == self.crc(seq)
    }
}

/// Server-side check of every data message of one client.
#[derive(Debug)]
pub struct Verifier {
    pattern: Pattern,
    seen: Vec<u64>,
    report: ServerReport,
    first: Option<Instant>,
}

impl Verifier {
    pub fn new(message_size: usize) -> Self {
        Verifier {
            pattern: Pattern::new(message_size),
            seen: Vec::new(),
            report: ServerReport::default(),
            first: None,
        }
    }

    /// Checks one data frame (`frame` is the whole framed message).
    pub fn check(&mut self, now: Instant, frame: &[u8]) {
        let ok = match decode(frame) {
            Ok(Frame::Data { seq, body }) => {
                let crc = NetworkEndian::read_u32(&frame[20..24]);
                if !self.pattern.verify(seq, body, crc) {
                    false
                } else if self.mark_seen(seq) {
                    true
                } else {
                    self.report.duplicates += 1;
                    return;
                }
            }
            _ => false,
        };
        if ok {
            self.report.messages += 1;
            self.report.bytes += frame.len() as u64;
            let first = *self.first.get_or_insert(now);
            self.report.active_us = now.saturating_duration_since(first).as_micros() as u64;
        } else {
            self.report.bad += 1;
        }
    }

    /// Records `seq`; false if it was already seen. Sequence numbers beyond a
    /// sane bound count as bad rather than growing memory.
    fn mark_seen(&mut self, seq: u64) -> bool {
        const MAX_SEQ: u64 = 1 << 27; // a 16 MiB bitmap at most
        if seq >= MAX_SEQ {
            return false;
        }
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.seen.len() {
            self.seen.resize(w + 1, 0);
        }
        let fresh = self.seen[w] & (1 << b) == 0;
        self.seen[w] |= 1 << b;
        fresh
    }

    pub fn report(&self) -> ServerReport {
        self.report
    }
}

/// Which transfer a client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Rudp,
    Tcp,
    RawUdp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Rudp => "rudp",
            Mode::Tcp => "tcp",
            Mode::RawUdp => "raw-udp",
        }
    }
}

/// When the client stops sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Time(Duration),
    Bytes(u64),
}

impl Amount {
    /// Whether a client that started at `start` and has sent `sent_bytes`
    /// by `now` has sent enough.
    fn reached(&self, start: Instant, now: Instant, sent_bytes: u64) -> bool {
        match *self {
            Amount::Time(d) => now.saturating_duration_since(start) >= d,
            Amount::Bytes(b) => sent_bytes >= b,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub server: SocketAddr,
    pub mode: Mode,
    pub amount: Amount,
    pub config: Config,
    pub driver: DriverOptions,
    /// TCP_CONGESTION for `Mode::Tcp` (e.g. "cubic", "bbr").
    pub tcp_cc: Option<String>,
    /// Seeds the endpoint's connection IDs and cookie key.
    pub seed: u64,
}

/// One line per second of a client's run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub start: f64,
    pub end: f64,
    /// Bytes acknowledged (rudp), written (TCP) or sent (raw) in the interval.
    pub bytes: u64,
    pub retransmitted_packets: u64,
    pub srtt_ms: f64,
    pub cwnd: u64,
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = (self.end - self.start).max(1e-9);
        write!(
            f,
            "[{:5.1}-{:5.1} s] {:9.1} MB {:9.1} Mbit/s  retr {:6}  srtt {:6.2} ms  cwnd {:6} KB",
            self.start,
            self.end,
            self.bytes as f64 / 1e6,
            self.bytes as f64 * 8.0 / secs / 1e6,
            self.retransmitted_packets,
            self.srtt_ms,
            self.cwnd / 1000
        )
    }
}

/// The result of one client run.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfReport {
    pub mode: Mode,
    pub cc: String,
    pub mtu: usize,
    /// Bytes the server application verified divided by `seconds`.
    pub goodput_mbps: f64,
    /// Bytes the server application verified.
    pub bytes: u64,
    pub seconds: f64,
    /// Bytes the client handed to the transport.
    pub sent_bytes: u64,
    pub messages: u64,
    pub bad_messages: u64,
    pub retransmitted_packets: u64,
    pub lost_packets: u64,
    pub spurious_retransmits: u64,
    pub packets_sent: u64,
    pub srtt_ms: f64,
    /// System calls the client made to send (UDP modes).
    pub send_calls: u64,
    /// The server's final report did not come within `REPORT_GRACE` after
    /// sending stopped: `bytes`/`messages` are its last progress report.
    pub partial: bool,
}

impl PerfReport {
    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"mode\":\"{}\",\"cc\":\"{}\",\"mtu\":{},\"goodput_mbps\":{:.3},\"bytes\":{},\"seconds\":{:.6},\
             \"sent_bytes\":{},\"messages\":{},\"bad_messages\":{},\"retransmitted_packets\":{},\
             \"lost_packets\":{},\"spurious_retransmits\":{},\"packets_sent\":{},\"srtt_ms\":{:.3},\
             \"send_calls\":{},\"partial\":{}}}",
            self.mode.name(),
            self.cc,
            self.mtu,
            self.goodput_mbps,
            self.bytes,
            self.seconds,
            self.sent_bytes,
            self.messages,
            self.bad_messages,
            self.retransmitted_packets,
            self.lost_packets,
            self.spurious_retransmits,
            self.packets_sent,
            self.srtt_ms,
            self.send_calls,
            self.partial
        )
    }
}

impl fmt::Display for PerfReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {:.1} MB verified by the server in {:.2} s = {:.1} Mbit/s; \
             {} packets sent, {} lost, {} retransmitted, srtt {:.2} ms",
            self.mode.name(),
            self.cc,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.goodput_mbps,
            self.packets_sent,
            self.lost_packets,
            self.retransmitted_packets,
            self.srtt_ms
        )?;
        if self.bad_messages > 0 {
            write!(f, "; {} messages FAILED verification", self.bad_messages)?;
        }
        if self.partial {
            write!(
                f,
                "; PARTIAL: no final report within {} s of the end of sending, \
                 figures are the server's last progress report",
                REPORT_GRACE.as_secs()
            )?;
        }
        Ok(())
    }
}

fn goodput_mbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 * 8.0 / seconds / 1e6
    } else {
        0.0
    }
}

fn unspecified_like(server: SocketAddr) -> SocketAddr {
    match server {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

/// Tracks when the next per-second line is due.
struct Ticker {
    start: Instant,
    next: Instant,
    last_bytes: u64,
    last_retx: u64,
}

impl Ticker {
    fn new(start: Instant) -> Self {
        Ticker {
            start,
            next: start + Duration::from_secs(1),
            last_bytes: 0,
            last_retx: 0,
        }
    }

    fn tick(
        &mut self,
        now: Instant,
        bytes: u64,
        retx: u64,
        srtt_ms: f64,
        cwnd: u64,
    ) -> Option<Interval> {
        if now < self.next {
            return None;
        }
        let iv = Interval {
            start: (self.next - Duration::from_secs(1))
                .saturating_duration_since(self.start)
                .as_secs_f64(),
            end: now.saturating_duration_since(self.start).as_secs_f64(),
            bytes: bytes.saturating_sub(self.last_bytes),
            retransmitted_packets: retx.saturating_sub(self.last_retx),
            srtt_ms,
            cwnd,
        };
        self.last_bytes = bytes;
        self.last_retx = retx;
        self.next = now.max(self.next) + Duration::from_secs(1);
        Some(iv)
    }
}

/// Runs one client transfer; `on_interval` gets a line per second.
pub fn run_client(
    opts: &ClientOptions,
    on_interval: &mut dyn FnMut(&Interval),
) -> Result<PerfReport, PerfError> {
    match opts.mode {
        Mode::Rudp => run_rudp_client(opts, on_interval),
        Mode::Tcp => run_tcp_client(opts, on_interval),
        Mode::RawUdp => run_raw_client(opts, on_interval),
    }
}

/// What the server verified: its final report, or (`partial`) its last
/// progress report when the final one did not come in time.
#[derive(Debug, Clone, Copy, Default)]
struct Verified {
    report: ServerReport,
    partial: bool,
}

/// Collects the server's progress reports while the client waits for the final one.
#[derive(Debug, Default)]
struct ReportWait {
    latest: ServerReport,
}

impl ReportWait {
    /// `Some` once the final report is in.
    fn on_frame(&mut self, msg: &[u8]) -> Result<Option<Verified>, PerfError> {
        match decode(msg)? {
            Frame::Report(report) => Ok(Some(Verified {
                report,
                partial: false,
            })),
            Frame::Progress(r) => {
                self.latest = r;
                Ok(None)
            }
            other => Err(PerfError::Protocol(format!("unexpected frame {other:?}"))),
        }
    }

    fn give_up(&self) -> Verified {
        Verified {
            report: self.latest,
            partial: true,
        }
    }

    /// The final report if `result` has it, the last progress report if the wait timed out.
    fn settle(&self, result: Result<Verified, PerfError>) -> Result<Verified, PerfError> {
        match result {
            Err(PerfError::TimedOut(what)) => {
                warn!("timed out waiting for {what}; using the server's last progress report");
                Ok(self.give_up())
            }
            r => r,
        }
    }
}

/// A rudp connection to the perf server with a blocking-style helper loop.
struct Session {
    driver: Driver,
    endpoint: Endpoint,
    handle: ConnectionHandle,
}

impl Session {
    fn connect(opts: &ClientOptions) -> Result<Session, PerfError> {
        let mut driver = Driver::bind(unspecified_like(opts.server), opts.driver.clone())?;
        let config = Config {
            accept_incoming: false,
            ..opts.config.clone()
        };
        let mut endpoint = Endpoint::new(config, opts.seed);
        let handle = endpoint.connect(now(), opts.server);
        super::run_endpoint(
            &mut driver,
            &mut endpoint,
            HANDSHAKE_LIMIT,
            |_, ep| match ep.poll_event() {
                Some((_, Event::Connected)) => super::Step::Done(Ok(())),
                Some((_, Event::Closed(e))) => super::Step::Done(Err(PerfError::Connection(e))),
                _ => super::Step::Continue,
            },
        )
        .map_err(|e| match e {
            DriverError::TimedOut(_) => PerfError::TimedOut("the server's handshake"),
            e => PerfError::Driver(e),
        })??;
        Ok(Session {
            driver,
            endpoint,
            handle,
        })
    }

    /// Drives the connection until `app` returns a value, the connection
    /// closes, or `limit` passes.
    fn run<T>(
        &mut self,
        limit: Duration,
        what: &'static str,
        mut app: impl FnMut(
            Instant,
            &mut Endpoint,
            ConnectionHandle,
            Option<Vec<u8>>,
        ) -> Result<Option<T>, PerfError>,
    ) -> Result<T, PerfError> {
        let handle = self.handle;
        super::run_endpoint(
            &mut self.driver,
            &mut self.endpoint,
            limit,
            |now, ep| loop {
                let msg = match ep.poll_event() {
                    Some((h, Event::Message(m))) if h == handle => Some(m),
                    Some((h, Event::Closed(e))) if h == handle => {
                        return super::Step::Done(Err(PerfError::Connection(e)))
                    }
                    Some(_) => continue,
                    None => None,
                };
                let done = msg.is_none();
                match app(now, ep, handle, msg) {
                    Ok(Some(v)) => return super::Step::Done(Ok(v)),
                    Err(e) => return super::Step::Done(Err(e)),
                    Ok(None) if done => return super::Step::Continue,
                    Ok(None) => {}
                }
            },
        )
        .map_err(|e| match e {
            DriverError::TimedOut(_) => PerfError::TimedOut(what),
            e => PerfError::Driver(e),
        })?
    }

    /// Closes gracefully, giving the close a moment to reach the server.
    fn close(mut self) {
        self.endpoint.close(now(), self.handle);
        let handle = self.handle;
        let _ = super::run_endpoint(
            &mut self.driver,
            &mut self.endpoint,
            Duration::from_millis(500),
            |_, ep| match ep.poll_event() {
                Some((h, Event::Closed(_))) if h == handle => super::Step::Done(()),
                _ if ep.connections().is_empty() => super::Step::Done(()),
                _ => super::Step::Continue,
            },
        );
    }
}

fn run_rudp_client(
    opts: &ClientOptions,
    on_interval: &mut dyn FnMut(&Interval),
) -> Result<PerfReport, PerfError> {
    let mut session = Session::connect(opts)?;
    let pattern = Pattern::new(MESSAGE_SIZE);
    let start = now();
    let mut ticker = Ticker::new(start);
    let mut seq = 0u64;
    let mut sent_bytes = 0u64;
    let mut finished_sending = false;
    let limit = match opts.amount {
        Amount::Time(d) => d.saturating_add(REPORT_GRACE),
        Amount::Bytes(_) => Duration::MAX,
    };
    let mut wait = ReportWait::default();
    let mut give_up_at: Option<Instant> = None;
    let result = session.run(limit, "the server's report", |now, ep, h, msg| {
        if let Some(m) = msg {
            return wait.on_frame(&m);
        }
        if give_up_at.is_some_and(|g| now >= g) {
            return Err(PerfError::TimedOut("the server's report"));
        }
        if !finished_sending {
            let enough = opts.amount.reached(start, now, sent_bytes);
            if enough {
                finished_sending = true;
                give_up_at = Some(now + REPORT_GRACE);
                let done = encode_control(&Frame::Done {
                    messages: seq,
                    bytes: sent_bytes,
                });
                ep.send(h, done, true).map_err(PerfError::Send)?;
            } else {
                let limit = send_backlog_limit(ep.stats(h).map_or(0, |s| s.cwnd));
                while ep.send_backlog(h) < limit {
                    if let Amount::Bytes(b) = opts.amount {
                        if sent_bytes >= b {
                            break;
                        }
                    }
                    let m = pattern.message(seq);
                    sent_bytes += m.len() as u64;
                    ep.send(h, m, false).map_err(PerfError::Send)?;
                    seq += 1;
                }
            }
        }
        if let Some(s) = ep.stats(h) {
            if let Some(iv) = ticker.tick(
                now,
                s.bytes_delivered,
                s.packets_retransmitted,
                s.srtt.as_secs_f64() * 1e3,
                s.cwnd,
            ) {
                on_interval(&iv);
            }
        }
        Ok(None)
    });
    let Verified { report, partial } = wait.settle(result)?;
    let seconds = now().saturating_duration_since(start).as_secs_f64();
    let stats = session.endpoint.stats(session.handle).unwrap_or_default();
    let send_calls = session.driver.counters().send_calls;
    session.close();
    Ok(PerfReport {
        mode: Mode::Rudp,
        cc: opts.config.cc.name().to_string(),
        mtu: opts.config.max_udp_payload,
        goodput_mbps: goodput_mbps(report.bytes, seconds),
        bytes: report.bytes,
        seconds,
        sent_bytes,
        messages: report.messages,
        bad_messages: report.bad,
        retransmitted_packets: stats.packets_retransmitted,
        lost_packets: stats.packets_lost,
        spurious_retransmits: stats.spurious_retransmits,
        packets_sent: stats.packets_sent,
        srtt_ms: stats.srtt.as_secs_f64() * 1e3,
        send_calls,
        partial,
    })
}

/// Raw UDP blast: no reliability, no congestion control, datagrams of the
/// configured size sent as fast as the socket takes them. The rudp
/// connection only carries the start/stop handshake and the report.
fn run_raw_client(
    opts: &ClientOptions,
    on_interval: &mut dyn FnMut(&Interval),
) -> Result<PerfReport, PerfError> {
    let mut session = Session::connect(opts)?;
    session
        .endpoint
        .send(session.handle, encode_control(&Frame::RawStart), true)
        .map_err(PerfError::Send)?;
    let port = session.run(
        HANDSHAKE_LIMIT,
        "the raw UDP port",
        |_, _, _, msg| match msg {
            Some(m) => match decode(&m)? {
                Frame::RawReady { port } => Ok(Some(port)),
                other => Err(PerfError::Protocol(format!("unexpected frame {other:?}"))),
            },
            None => Ok(None),
        },
    )?;
    let mut target = opts.server;
    target.set_port(port);
    let mut socket = BatchSocket::bind(
        unspecified_like(opts.server),
        opts.driver.socket_buffer,
        opts.driver.batch,
        opts.driver.gso,
    )
    .map_err(io_error("raw UDP socket"))?;
    let size = opts.config.max_udp_payload;
    let mut datagram = vec![0u8; size];
    let mut queue = TransmitQueue::new();
    let start = now();
    let mut ticker = Ticker::new(start);
    let (mut datagrams, mut bytes) = (0u64, 0u64);
    let mut blocked_polls = 0u64;
    let mut next_control = start;
    loop {
        let t = now();
        let enough = opts.amount.reached(start, t, bytes);
        if enough {
            break;
        }
        while queue.len() < 64 {
            NetworkEndian::write_u32(&mut datagram[0..4], MAGIC);
            NetworkEndian::write_u64(&mut datagram[4..12], datagrams);
            queue.push(target, &datagram);
            datagrams += 1;
            bytes += size as u64;
        }
        if t >= next_control {
            // Keep the control connection alive (acks, keepalives) meanwhile.
            next_control = t + Duration::from_millis(5);
            session.driver.drive(t, &mut session.endpoint);
            if let Some((_, Event::Closed(e))) = session.endpoint.poll_event() {
                return Err(PerfError::Connection(e));
            }
        }
        let out = socket.send(&mut queue);
        if out.blocked {
            // Busy-wait a moment rather than registering for writability: a
            // blast has nothing else to do.
            blocked_polls += 1;
            std::thread::yield_now();
        }
        if let Some(iv) = ticker.tick(t, socket.counters().bytes_sent, 0, 0.0, 0) {
            on_interval(&iv);
        }
    }
    let seconds = now().saturating_duration_since(start).as_secs_f64();
    debug!("raw blast: {blocked_polls} full-buffer waits");
    let sent = socket.counters().clone();
    session
        .endpoint
        .send(
            session.handle,
            encode_control(&Frame::RawDone {
                datagrams: sent.datagrams_sent,
                bytes: sent.bytes_sent,
            }),
            true,
        )
        .map_err(PerfError::Send)?;
    let mut wait = ReportWait::default();
    let result = session.run(
        REPORT_GRACE,
        "the server's report",
        |_, _, _, msg| match msg {
            Some(m) => wait.on_frame(&m),
            None => Ok(None),
        },
    );
    let Verified { report, partial } = wait.settle(result)?;
    session.close();
    let lost = sent.datagrams_sent.saturating_sub(report.messages);
    Ok(PerfReport {
        mode: Mode::RawUdp,
        cc: "none".to_string(),
        mtu: size,
        goodput_mbps: goodput_mbps(report.bytes, seconds),
        bytes: report.bytes,
        seconds,
        sent_bytes: sent.bytes_sent,
        messages: report.messages,
        bad_messages: report.bad,
        retransmitted_packets: 0,
        lost_packets: lost,
        spurious_retransmits: 0,
        packets_sent: sent.datagrams_sent,
        srtt_ms: 0.0,
        send_calls: sent.send_calls,
        partial,
    })
}

fn tcp_info(stream: &std::net::TcpStream) -> Option<(u64, f64)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                &mut info as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        (r == 0).then(|| {
            (
                u64::from(info.tcpi_total_retrans),
                f64::from(info.tcpi_rtt) / 1e3,
            )
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        None
    }
}

fn run_tcp_client(
    opts: &ClientOptions,
    on_interval: &mut dyn FnMut(&Interval),
) -> Result<PerfReport, PerfError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(opts.server),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(io_error("TCP socket"))?;
    let cc = match &opts.tcp_cc {
        Some(name) => {
            #[cfg(target_os = "linux")]
            socket
                .set_tcp_congestion(name.as_bytes())
                .map_err(io_error(format!("TCP congestion control '{name}'")))?;
            name.clone()
        }
        None => "default".to_string(),
    };
    socket
        .connect_timeout(&opts.server.into(), HANDSHAKE_LIMIT)
        .map_err(io_error(format!("TCP connect to {}", opts.server)))?;
    socket
        .set_tcp_nodelay(true)
        .map_err(io_error("TCP_NODELAY"))?;
    #[cfg(target_os = "linux")]
    let cc = socket
        .tcp_congestion()
        .ok()
        .map(|v| {
            String::from_utf8_lossy(&v)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or(cc);
    let mut stream: std::net::TcpStream = socket.into();
    // Short write timeouts so that a stalled connection cannot hold the
    // client past its deadline; the server's frames are read on a thread.
    stream
        .set_write_timeout(Some(Duration::from_millis(100)))
        .map_err(io_error("TCP socket"))?;
    let frames = spawn_tcp_frame_reader(stream.try_clone().map_err(io_error("TCP socket"))?);
    let pattern = Pattern::new(MESSAGE_SIZE);
    let start = now();
    let mut give_up_at = match opts.amount {
        Amount::Time(d) => Some(start + d + REPORT_GRACE),
        Amount::Bytes(_) => None,
    };
    let mut ticker = Ticker::new(start);
    let (mut seq, mut sent_bytes) = (0u64, 0u64);
    let mut complete = true;
    loop {
        let t = now();
        let enough = opts.amount.reached(start, t, sent_bytes);
        if enough {
            break;
        }
        let m = pattern.message(seq);
        if !write_before(&mut stream, &m, give_up_at)? {
            complete = false;
            break;
        }
        seq += 1;
        sent_bytes += m.len() as u64;
        let (retx, srtt) = if t >= ticker.next {
            tcp_info(&stream).unwrap_or((0, 0.0))
        } else {
            (0, 0.0)
        };
        if let Some(iv) = ticker.tick(t, sent_bytes, retx, srtt, 0) {
            on_interval(&iv);
        }
    }
    let give_up_at = *give_up_at.get_or_insert_with(|| now() + REPORT_GRACE);
    if complete {
        let done = encode_control(&Frame::Done {
            messages: seq,
            bytes: sent_bytes,
        });
        complete = write_before(&mut stream, &done, Some(give_up_at))?;
    }
    let mut wait = ReportWait::default();
    let mut verified = None;
    while verified.is_none() {
        let left = give_up_at.saturating_duration_since(now());
        match frames.recv_timeout(left) {
            Ok(frame) => verified = wait.on_frame(&frame?)?,
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PerfError::Protocol(
                    "the server closed the connection without a report".into(),
                ))
            }
        }
    }
    if !complete || verified.is_none() {
        warn!("no final report from the server in time; using its last progress report");
    }
    let Verified { report, partial } = verified.unwrap_or_else(|| wait.give_up());
    let seconds = now().saturating_duration_since(start).as_secs_f64();
    let (retx, srtt_ms) = tcp_info(&stream).unwrap_or((0, 0.0));
    // Ends the reader thread's blocking read.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(PerfReport {
        mode: Mode::Tcp,
        cc,
        mtu: 0,
        goodput_mbps: goodput_mbps(report.bytes, seconds),
        bytes: report.bytes,
        seconds,
        sent_bytes,
        messages: report.messages,
        bad_messages: report.bad,
        retransmitted_packets: retx,
        lost_packets: retx,
        spurious_retransmits: 0,
        packets_sent: 0,
        srtt_ms,
        send_calls: 0,
        partial,
    })
}

/// Writes all of `buf` unless `give_up_at` passes first (then `Ok(false)`).
/// The stream has a short write timeout, so the deadline is checked often.
fn write_before(
    stream: &mut std::net::TcpStream,
    buf: &[u8],
    give_up_at: Option<Instant>,
) -> Result<bool, PerfError> {
    let mut off = 0;
    while off < buf.len() {
        if give_up_at.is_some_and(|g| now() >= g) {
            return Ok(false);
        }
        match stream.write(&buf[off..]) {
            Ok(0) => {
                return Err(io_error("TCP send")(io::Error::from(
                    io::ErrorKind::WriteZero,
                )))
            }
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io_error("TCP send")(e)),
        }
    }
    Ok(true)
}

/// Reads the server's report frames (all the same size) on their own
/// thread, so that a client blocked in sending still collects progress
/// reports. The thread ends when the stream is shut down or closed.
fn spawn_tcp_frame_reader(
    mut stream: std::net::TcpStream,
) -> mpsc::Receiver<Result<Vec<u8>, PerfError>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; HEADER_LEN + 5 * 8];
        match stream.read_exact(&mut buf) {
            Ok(()) => {
                if tx.send(Ok(buf)).is_err() {
                    return;
                }
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    let _ = tx.send(Err(io_error("reading the server's report")(e)));
                }
                return;
            }
        }
    });
    rx
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// UDP (rudp) and TCP address to listen on.
    pub bind: SocketAddr,
    pub config: Config,
    pub driver: DriverOptions,
    /// Exit after the first client's report.
    pub one_off: bool,
    pub seed: u64,
}

/// What the server says about each finished client.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSummary {
    pub remote: SocketAddr,
    pub mode: Mode,
    pub report: ServerReport,
    /// What the client said it sent (None if it vanished before saying).
    pub claimed_bytes: Option<u64>,
    /// Why the session ended early, if it did.
    pub error: Option<String>,
}

impl fmt::Display for ClientSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        let secs = r.active_us as f64 / 1e6;
        write!(
            f,
            "{} {}: {} messages, {:.1} MB verified in {:.2} s ({:.1} Mbit/s), {} bad, {} duplicates",
            self.mode.name(),
            self.remote,
            r.messages,
            r.bytes as f64 / 1e6,
            secs,
            goodput_mbps(r.bytes, secs),
            r.bad,
            r.duplicates
        )?;
        if let Some(c) = self.claimed_bytes {
            write!(f, "; client sent {:.1} MB", c as f64 / 1e6)?;
        }
        if let Some(e) = &self.error {
            write!(f, "; ended: {e}")?;
        }
        Ok(())
    }
}

/// A rudp client's state on the server.
struct RudpClient {
    remote: SocketAddr,
    verifier: Verifier,
    done: Option<(u64, u64)>,
    raw: Option<RawReceiver>,
    reported: bool,
}

/// The server side of a raw blast: a socket of its own that counts.
struct RawReceiver {
    socket: BatchSocket,
    token: mio::Token,
    report: ServerReport,
    first: Option<Instant>,
}

impl RawReceiver {
    fn drain(&mut self, now: Instant) {
        let report = &mut self.report;
        let first = &mut self.first;
        loop {
            let out = self.socket.recv(4096, |_, d| {
                if d.len() >= 12 && NetworkEndian::read_u32(&d[0..4]) == MAGIC {
                    report.messages += 1;
                    report.bytes += d.len() as u64;
                    let f = *first.get_or_insert(now);
                    report.active_us = now.saturating_duration_since(f).as_micros() as u64;
                } else {
                    report.bad += 1;
                }
            });
            if out.drained {
                break;
            }
        }
    }
}

/// A TCP client's state on the server.
struct TcpClient {
    stream: mio::net::TcpStream,
    remote: SocketAddr,
    buf: Vec<u8>,
    filled: usize,
    verifier: Verifier,
    done: Option<(u64, u64)>,
}

/// The perf server: rudp on UDP and TCP on the same port, in one mio loop.
pub struct Server {
    opts: ServerOptions,
    poll: mio::Poll,
    driver: Driver,
    endpoint: Endpoint,
    tcp: mio::net::TcpListener,
    rudp_clients: HashMap<ConnectionHandle, RudpClient>,
    tcp_clients: HashMap<mio::Token, TcpClient>,
    next_token: usize,
    finished: u64,
    next_progress: Instant,
}

const UDP_TOKEN: mio::Token = mio::Token(0);
const TCP_TOKEN: mio::Token = mio::Token(1);

impl Server {
    pub fn bind(opts: ServerOptions) -> Result<Server, PerfError> {
        let poll = mio::Poll::new().map_err(io_error("poll"))?;
        let mut driver = Driver::bind(opts.bind, opts.driver.clone())?;
        let mut tcp_addr = opts.bind;
        tcp_addr.set_port(driver.local_addr().port());
        let mut tcp = mio::net::TcpListener::bind(tcp_addr)
            .map_err(io_error(format!("cannot listen on TCP {tcp_addr}")))?;
        driver
            .register(poll.registry(), UDP_TOKEN)
            .map_err(io_error("poll register"))?;
        poll.registry()
            .register(&mut tcp, TCP_TOKEN, mio::Interest::READABLE)
            .map_err(io_error("poll register"))?;
        let endpoint = Endpoint::new(
            Config {
                accept_incoming: true,
                ..opts.config.clone()
            },
            opts.seed,
        );
        Ok(Server {
            opts,
            poll,
            driver,
            endpoint,
            tcp,
            rudp_clients: HashMap::new(),
            tcp_clients: HashMap::new(),
            next_token: 2,
            finished: 0,
            next_progress: now(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.driver.local_addr()
    }

    /// Datagrams the rudp endpoint dropped, by reason (for the junk test).
    pub fn endpoint_counters(&self) -> crate::rudp::endpoint::EndpointCounters {
        self.endpoint.counters().clone()
    }

    /// Serves clients until `stop` is set (or after one client with
    /// `one_off`); `on_client` hears about each finished client.
    pub fn serve(
        &mut self,
        stop: &AtomicBool,
        on_client: &mut dyn FnMut(&ClientSummary),
    ) -> Result<(), PerfError> {
        let mut events = mio::Events::with_capacity(256);
        while !stop.load(Ordering::Relaxed) {
            if self.opts.one_off && self.finished > 0 {
                break;
            }
            let t = now();
            let timeout = self
                .driver
                .poll_timeout(t, &mut self.endpoint)
                .map_or(Duration::from_millis(200), |d| {
                    d.min(Duration::from_millis(200))
                });
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(PerfError::Io {
                    context: "poll".into(),
                    source: e,
                });
            }
            let t = now();
            for ev in events.iter() {
                match ev.token() {
                    UDP_TOKEN => {}
                    TCP_TOKEN => self.accept_tcp(),
                    token => {
                        if self.tcp_clients.contains_key(&token) {
                            self.read_tcp(t, token, on_client);
                        } else {
                            self.drain_raw(t, token);
                        }
                    }
                }
            }
            self.driver.drive(t, &mut self.endpoint);
            self.handle_rudp_events(t, on_client);
            if t >= self.next_progress {
                self.next_progress = t + PROGRESS_EVERY;
                self.send_progress();
            }
            self.driver.flush(t, &mut self.endpoint);
        }
        Ok(())
    }

    /// Tells every client still sending what has been verified so far, so
    /// that a client whose data cannot all arrive in time still has figures.
    fn send_progress(&mut self) {
        for (&h, c) in &self.rudp_clients {
            if c.reported || c.raw.is_some() {
                continue;
            }
            let frame = encode_control(&Frame::Progress(c.verifier.report()));
            if let Err(e) = self.endpoint.send(h, frame, false) {
                debug!("{}: progress report: {e}", c.remote);
            }
        }
        for c in self.tcp_clients.values_mut() {
            let frame = encode_control(&Frame::Progress(c.verifier.report()));
            // The client reads these on their own thread; a full send buffer
            // (a client that stopped reading) only costs this report.
            match c.stream.write(&frame) {
                Ok(n) if n == frame.len() => {}
                Ok(n) => debug!("TCP client {}: progress report cut at {n} bytes", c.remote),
                Err(e) => debug!("TCP client {}: progress report: {e}", c.remote),
            }
        }
    }

    fn handle_rudp_events(&mut self, t: Instant, on_client: &mut dyn FnMut(&ClientSummary)) {
        while let Some((h, ev)) = self.endpoint.poll_event() {
            match ev {
                Event::Connected => {
                    let remote = self
                        .endpoint
                        .remote_address(h)
                        .unwrap_or_else(|| unspecified_like(self.opts.bind));
                    info!("rudp client {remote} connected");
                    self.rudp_clients.insert(
                        h,
                        RudpClient {
                            remote,
                            verifier: Verifier::new(MESSAGE_SIZE),
                            done: None,
                            raw: None,
                            reported: false,
                        },
                    );
                }
                Event::Message(m) => self.rudp_message(t, h, &m),
                Event::Closed(e) => {
                    if let Some(mut c) = self.rudp_clients.remove(&h) {
                        if let Some(raw) = &mut c.raw {
                            let _ = self.poll.registry().deregister(raw.socket.source());
                        }
                        if !c.reported {
                            self.finish(
                                on_client,
                                ClientSummary {
                                    remote: c.remote,
                                    mode: Mode::Rudp,
                                    report: c.verifier.report(),
                                    claimed_bytes: c.done.map(|d| d.1),
                                    error: Some(e.to_string()),
                                },
                            );
                        }
                    }
                }
            }
            self.check_rudp_done(h, on_client);
        }
    }

    fn rudp_message(&mut self, t: Instant, h: ConnectionHandle, m: &[u8]) {
        let Some(c) = self.rudp_clients.get_mut(&h) else {
            return;
        };
        match decode(m) {
            Ok(Frame::Data { .. }) => c.verifier.check(t, m),
            Ok(Frame::Done { messages, bytes }) => c.done = Some((messages, bytes)),
            Ok(Frame::RawStart) if c.raw.is_none() => {
                let mut bind = self.opts.bind;
                bind.set_port(0);
                let socket = BatchSocket::bind(
                    bind,
                    self.opts.driver.socket_buffer,
                    self.opts.driver.batch,
                    self.opts.driver.gso,
                );
                let token = mio::Token(self.next_token);
                self.next_token += 1;
                match socket {
                    Ok(mut socket) => {
                        if let Err(e) = self.poll.registry().register(
                            socket.source(),
                            token,
                            mio::Interest::READABLE,
                        ) {
                            warn!("raw UDP socket: {e}");
                            return;
                        }
                        let port = socket.local_addr().port();
                        c.raw = Some(RawReceiver {
                            socket,
                            token,
                            report: ServerReport::default(),
                            first: None,
                        });
                        let reply = encode_control(&Frame::RawReady { port });
                        if let Err(e) = self.endpoint.send(h, reply, true) {
                            warn!("{}: {e}", c.remote);
                        }
                    }
                    Err(e) => warn!("raw UDP socket: {e}"),
                }
            }
            Ok(Frame::RawDone { datagrams, bytes }) => {
                if let Some(raw) = &mut c.raw {
                    raw.drain(t);
                }
                c.done = Some((datagrams, bytes));
            }
            Ok(other) => {
                c.verifier.report.bad += 1;
                debug!("{}: unexpected frame {other:?}", c.remote);
            }
            Err(e) => {
                c.verifier.report.bad += 1;
                debug!("{}: {e}", c.remote);
            }
        }
    }

    /// Sends the report once everything the client announced is accounted for.
    fn check_rudp_done(&mut self, h: ConnectionHandle, on_client: &mut dyn FnMut(&ClientSummary)) {
        let Some(c) = self.rudp_clients.get_mut(&h) else {
            return;
        };
        let Some((messages, bytes)) = c.done else {
            return;
        };
        if c.reported {
            return;
        }
        let (report, mode) = match &c.raw {
            Some(raw) => (raw.report, Mode::RawUdp),
            None => {
                let r = c.verifier.report();
                if r.messages + r.bad < messages {
                    return;
                }
                (r, Mode::Rudp)
            }
        };
        c.reported = true;
        let reply = encode_control(&Frame::Report(report));
        if let Err(e) = self.endpoint.send(h, reply, true) {
            warn!("{}: {e}", c.remote);
        }
        let summary = ClientSummary {
            remote: c.remote,
            mode,
            report,
            claimed_bytes: Some(bytes),
            error: None,
        };
        if let Some(mut raw) = c.raw.take() {
            let _ = self.poll.registry().deregister(raw.socket.source());
        }
        self.finish(on_client, summary);
    }

    fn finish(&mut self, on_client: &mut dyn FnMut(&ClientSummary), summary: ClientSummary) {
        self.finished += 1;
        on_client(&summary);
    }

    fn drain_raw(&mut self, t: Instant, token: mio::Token) {
        for c in self.rudp_clients.values_mut() {
            if let Some(raw) = &mut c.raw {
                if raw.token == token {
                    raw.drain(t);
                }
            }
        }
    }

    fn accept_tcp(&mut self) {
        loop {
            match self.tcp.accept() {
                Ok((mut stream, remote)) => {
                    let token = mio::Token(self.next_token);
                    self.next_token += 1;
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, token, mio::Interest::READABLE)
                    {
                        warn!("TCP client {remote}: {e}");
                        continue;
                    }
                    info!("TCP client {remote} connected");
                    self.tcp_clients.insert(
                        token,
                        TcpClient {
                            stream,
                            remote,
                            buf: vec![0; 4 * MESSAGE_SIZE],
                            filled: 0,
                            verifier: Verifier::new(MESSAGE_SIZE),
                            done: None,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!("TCP accept: {e}");
                    break;
                }
            }
        }
    }

    fn read_tcp(
        &mut self,
        t: Instant,
        token: mio::Token,
        on_client: &mut dyn FnMut(&ClientSummary),
    ) {
        let Some(c) = self.tcp_clients.get_mut(&token) else {
            return;
        };
        let mut end: Option<String> = None;
        loop {
            if c.filled == c.buf.len() {
                end = Some("frame larger than the receive buffer".into());
                break;
            }
            match c.stream.read(&mut c.buf[c.filled..]) {
                Ok(0) => {
                    end = Some("connection closed".into());
                    break;
                }
                Ok(n) => {
                    c.filled += n;
                    if let Err(e) = c.consume_frames(t) {
                        end = Some(e.to_string());
                        break;
                    }
                    if c.done.is_some() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    end = Some(e.to_string());
                    break;
                }
            }
        }
        let report = c.verifier.report();
        let summary = if c.done.is_some() {
            let reply = encode_control(&Frame::Report(report));
            if let Err(e) = c.stream.write_all(&reply) {
                warn!("TCP client {}: {e}", c.remote);
            }
            Some(ClientSummary {
                remote: c.remote,
                mode: Mode::Tcp,
                report,
                claimed_bytes: c.done.map(|d| d.1),
                error: None,
            })
        } else {
            end.map(|e| ClientSummary {
                remote: c.remote,
                mode: Mode::Tcp,
                report,
                claimed_bytes: None,
                error: Some(e),
            })
        };
        if let Some(s) = summary {
            if let Some(mut c) = self.tcp_clients.remove(&token) {
                let _ = self.poll.registry().deregister(&mut c.stream);
            }
            self.finish(on_client, s);
        }
    }
}

impl TcpClient {
    /// Verifies every whole frame in the buffer and keeps the partial rest.
    fn consume_frames(&mut self, t: Instant) -> Result<(), PerfError> {
        let mut at = 0;
        while self.filled - at >= HEADER_LEN {
            let len = NetworkEndian::read_u32(&self.buf[at + 16..at + 20]) as usize;
            if len > self.buf.len() - HEADER_LEN {
                return Err(PerfError::Protocol(format!("frame of {len} bytes")));
            }
            if self.filled - at < HEADER_LEN + len {
                break;
            }
            let frame = &self.buf[at..at + HEADER_LEN + len];
            match decode(frame)? {
                Frame::Data { .. } => self.verifier.check(t, frame),
                Frame::Done { messages, bytes } => self.done = Some((messages, bytes)),
                other => return Err(PerfError::Protocol(format!("unexpected frame {other:?}"))),
            }
            at += HEADER_LEN + len;
        }
        self.buf.copy_within(at..self.filled, 0);
        self.filled -= at;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_messages_verify_and_duplicates_count() {
        let p = Pattern::new(MESSAGE_SIZE);
        let mut v = Verifier::new(MESSAGE_SIZE);
        let t = Instant::now();
        for seq in 0..10 {
            let m = p.message(seq);
            assert_eq!(m.len(), MESSAGE_SIZE);
            v.check(t, &m);
        }
        v.check(t, &p.message(3));
        let r = v.report();
        assert_eq!(
            (r.messages, r.bytes, r.bad, r.duplicates),
            (10, 10 * MESSAGE_SIZE as u64, 0, 1)
        );
    }

    #[test]
    fn any_flipped_bit_or_truncation_fails_verification() {
        let p = Pattern::new(2000);
        let good = p.message(7);
        let t = Instant::now();
        for i in (0..good.len()).step_by(97) {
            let mut m = good.clone();
            m[i] ^= 0x10;
            let mut v = Verifier::new(2000);
            v.check(t, &m);
            assert_eq!(v.report().messages, 0, "bit flip at {i} passed");
        }
        for len in [0, 1, HEADER_LEN - 1, HEADER_LEN, good.len() - 1] {
            let mut v = Verifier::new(2000);
            v.check(t, &good[..len]);
            assert_eq!(v.report().bad, 1);
        }
        // Message 7's body under another sequence number is caught too.
        let mut m = good.clone();
        NetworkEndian::write_u64(&mut m[8..16], 7 + 251);
        let mut v = Verifier::new(2000);
        v.check(t, &m);
        assert_eq!(v.report().messages, 0);
    }

    #[test]
    fn control_frames_round_trip() {
        let frames = [
            Frame::Done {
                messages: 3,
                bytes: 9,
            },
            Frame::Report(ServerReport {
                messages: 1,
                bytes: 2,
                bad: 3,
                duplicates: 4,
                active_us: 5,
            }),
            Frame::Progress(ServerReport {
                messages: 6,
                bytes: 7,
                bad: 0,
                duplicates: 0,
                active_us: 8,
            }),
            Frame::RawStart,
            Frame::RawReady { port: 7001 },
            Frame::RawDone {
                datagrams: 5,
                bytes: 6,
            },
        ];
        for f in frames {
            let bytes = encode_control(&f);
            assert_eq!(decode(&bytes).expect("decodes"), f);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn json_has_the_required_fields() {
        let r = PerfReport {
            mode: Mode::Rudp,
            cc: "bbr".into(),
            mtu: 1472,
            goodput_mbps: 1.5,
            bytes: 10,
            seconds: 2.0,
            sent_bytes: 10,
            messages: 1,
            bad_messages: 0,
            retransmitted_packets: 3,
            lost_packets: 4,
            spurious_retransmits: 0,
            packets_sent: 9,
            srtt_ms: 0.25,
            send_calls: 1,
            partial: false,
        };
        let j = r.to_json();
        for key in [
            "\"goodput_mbps\":1.500",
            "\"bytes\":10",
            "\"seconds\":2.0",
            "\"retransmitted_packets\":3",
            "\"lost_packets\":4",
            "\"srtt_ms\":0.250",
        ] {
            assert!(j.contains(key), "{key} missing from {j}");
        }
        assert!(j.starts_with('{') && j.ends_with('}') && !j.contains('\n'));
    }
}
