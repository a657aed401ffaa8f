//! The peer process: one mio event loop thread ([`PeerLoop`]) owns the
//! tracker connection and the rudp socket (a [`Driver`] feeding an
//! [`Endpoint`], with a [`Node`] holding one [`Swarm`] per file on top); the
//! console runs on its own thread and hands parsed commands to the loop
//! through a channel and a [`mio::Waker`]; SIGINT/SIGTERM arrive the same way.
//!
//! Each turn of the loop: tracker bytes in, console commands, then
//! `driver.recv` → `node.process` → node events printed → `driver.flush`;
//! it sleeps until the earliest of the tracker client's, the driver's and
//! the node's deadlines. Tracker group pushes become `node.on_group`;
//! `register-peer` adds a serving swarm over the complete file,
//! `register-group` a downloading one over `DIR/<name>.part` (resumed when
//! present), and `upload` calls `node.start_upload`.

use super::console::{Command, ParseError, HELP};
use super::node::{Node, NodeConfig, NodeEvent};
use super::progress::{self, Bars, Download, PromptBars, Summary};
use super::storage::StorageError;
use super::swarm::{DiskRole, Swarm, SwarmConfig};
use super::tracker_client::{TrackerClient, TrackerClientError, TrackerEvent};
use crate::manifest::{hex, Digest32, Manifest, MAX_FILE_SIZE};
use crate::rudp::driver::Driver;
use crate::rudp::{Config as RudpConfig, Endpoint};
use crate::wire::tracker::{GroupView, PeerId, PeerInfo, RefusalCode, RequestId};
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tracker connection.
pub const TRACKER: Token = Token(0);
/// Wakes the loop when the console or a signal sent something.
pub const WAKER: Token = Token(1);
/// The rudp socket.
pub const UDP: Token = Token(2);

/// Files at least this large get a line saying they are being hashed.
const LONG_HASH: u64 = 64 << 20;

/// How often a peer that lost its tracker tries to reach it again (and
/// retries joining groups whose owner has not shared the file again yet).
pub const TRACKER_RETRY: Duration = Duration::from_secs(2);

/// What the console, signal and hashing threads hand to the loop.
pub enum LoopInput {
    Command(Command),
    Invalid(ParseError),
    /// Standard input ended.
    Eof,
    /// SIGINT, SIGTERM (or Ctrl-C at the prompt).
    Signal(i32),
    /// From now on, print through this (the prompt stays intact).
    Printer(Box<dyn rustyline::ExternalPrinter + Send>),
    /// A file's manifest, computed off the loop so heartbeats go on.
    Hashed {
        name: String,
        result: io::Result<Manifest>,
    },
}

/// Sends input to the loop and wakes it.
#[derive(Clone)]
pub struct LoopSender {
    tx: Sender<LoopInput>,
    waker: Arc<Waker>,
}

impl LoopSender {
    /// False once the loop is gone.
    pub fn send(&self, input: LoopInput) -> bool {
        if self.tx.send(input).is_err() {
            return false;
        }
        if let Err(e) = self.waker.wake() {
            warn!("cannot wake the peer loop: {e}");
        }
        true
    }
}

/// Where console output goes: stdout lines, or above the prompt.
enum ConsoleOutput {
    Stdout,
    Terminal(Box<dyn rustyline::ExternalPrinter + Send>),
}

impl ConsoleOutput {
    /// Prints `text` (whole lines, each ending in a newline) above the
    /// prompt; false when there is no prompt to print above.
    fn above_prompt(&mut self, text: String) -> bool {
        match self {
            ConsoleOutput::Terminal(p) => text.is_empty() || p.print(text).is_ok(),
            ConsoleOutput::Stdout => false,
        }
    }

    fn line(&mut self, s: &str) {
        if let ConsoleOutput::Terminal(p) = self {
            if p.print(format!("{s}\n")).is_ok() {
                return;
            }
        }
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Directory of shared files and downloads.
    pub dir: PathBuf,
    /// The tracker as the user named it (for messages).
    pub tracker_name: String,
    /// The tracker's address (to reconnect after losing it).
    pub tracker_addr: SocketAddr,
    /// Our heartbeat interval.
    pub heartbeat: Duration,
    pub advertise: Option<std::net::IpAddr>,
    /// rudp settings (congestion control, MTU, `--max-upload` pacing cap).
    pub rudp: RudpConfig,
    /// Node settings (the `--max-upload` cap on all uploads together).
    pub node: NodeConfig,
    /// Swarm settings (the test-only `corrupt_uploads` switch lives here).
    pub swarm: SwarmConfig,
    /// Do not print a line per chunk received.
    pub quiet_chunks: bool,
    /// Draw progress bars when stdout is a terminal.
    pub progress_bars: bool,
    /// Seeds the endpoint's and the swarms' random choices.
    pub seed: u64,
}

/// Why the peer stopped with an error.
#[derive(Debug)]
pub enum PeerError {
    TrackerClosed(String),
    Tracker {
        tracker: String,
        error: TrackerClientError,
    },
    /// The tracker turned this peer away (e.g. it is full).
    Refused {
        tracker: String,
        message: String,
    },
    /// The first session ended before the tracker's welcome.
    NeverWelcomed {
        tracker: String,
        why: Box<PeerError>,
    },
    Io(io::Error),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Refused { tracker, message } => {
                write!(
                    f,
                    "the tracker at {tracker} turned this peer away: {message}"
                )
            }
            PeerError::NeverWelcomed { tracker, why } => write!(
                f,
                "{why} before welcoming this peer; is a chunkswarm tracker listening at {tracker}?"
            ),
            PeerError::TrackerClosed(t) => {
                write!(f, "the tracker at {t} closed the connection")
            }
            PeerError::Tracker { tracker, error } => {
                write!(f, "lost the tracker at {tracker}: {error}")
            }
            PeerError::Io(e) => write!(f, "event loop failed: {e}"),
        }
    }
}

impl std::error::Error for PeerError {}

impl From<io::Error> for PeerError {
    fn from(e: io::Error) -> Self {
        PeerError::Io(e)
    }
}

/// A request sent to the tracker whose answer we await.
#[derive(Debug)]
enum Pending {
    RegisterPeer(Manifest),
    List,
    RegisterGroup(String),
    Upload(String),
    /// After the tracker came back: share this file again.
    Reshare(String),
    /// After the tracker came back: join this group again.
    Rejoin(String),
}

pub struct PeerLoop {
    poll: Poll,
    waker: Arc<Waker>,
    /// The tracker session; None while it is lost (see `tracker_retry`).
    tracker: Option<TcpStream>,
    tracker_wants_write: bool,
    /// While the tracker is lost: when to try to reach it again.
    tracker_retry: Option<Instant>,
    /// The loss was reported and the tracker has not welcomed us since.
    tracker_lost: bool,
    /// Groups to join again once their owner shares the file again.
    rejoin: BTreeSet<String>,
    /// Files whose upload has started (a second `upload` would resend them).
    uploading: BTreeSet<String>,
    /// Why the tracker turned this peer away before welcoming it.
    refusal: Option<String>,
    next_rejoin: Instant,
    client: TrackerClient,
    driver: Driver,
    endpoint: Endpoint,
    node: Node,
    /// Downloads by file, for the console's lines and summaries.
    downloads: BTreeMap<Digest32, Download>,
    bars: Bars,
    /// Bars above the line editor's prompt (when it owns the terminal).
    prompt_bars: Option<PromptBars>,
    inputs: Receiver<LoopInput>,
    input_tx: Sender<LoopInput>,
    out: ConsoleOutput,
    config: PeerConfig,
    me: Option<PeerInfo>,
    /// Files we share, and the last view of each one's group.
    owned: BTreeMap<String, (Manifest, Option<GroupView>)>,
    /// Groups we joined (files we download).
    joined: BTreeMap<String, GroupView>,
    pending: HashMap<RequestId, Pending>,
    /// Console input not yet handled: a command waits until the tracker
    /// answered the one before, so output follows input order.
    queued: VecDeque<LoopInput>,
    /// The file whose manifest is being computed (a command in progress).
    hashing: Option<String>,
    stdin_closed: bool,
    stop: bool,
}

/// rudp's bytes on a full datagram besides the message bytes it carries:
/// short header, CRC and STREAM frame header (1,454 message bytes in 1,472).
const RUDP_DATAGRAM_OVERHEAD: usize = 18;
/// IPv4 and UDP headers.
const IP_UDP_HEADERS: usize = 28;

/// The socket's send rate (bytes of IP packets per second) for an upload cap
/// of `cap` chunk bytes per second: full datagrams of `mtu` bytes carry
/// `mtu - 18` of them in `mtu + 28` bytes of IP packet (1500/1454, +3.2%).
/// Acknowledgements and control messages come out of the same budget. A
/// pacer over the whole socket, not only per connection: a peer serving
/// fifteen neighbours at once, each connection paced at the cap, sent
/// bursts of many times the cap into its uplink's queue, which dropped
/// them (measured under `netlab swarm`: 24% of the owner's packets).
pub fn socket_send_rate(cap: u64, mtu: usize) -> u64 {
    let payload = mtu.saturating_sub(RUDP_DATAGRAM_OVERHEAD).max(1) as f64;
    let packet = (mtu + IP_UDP_HEADERS) as f64;
    (cap as f64 * packet / payload).ceil() as u64
}

impl PeerLoop {
    /// Takes over a connected tracker stream and the bound rudp socket, and
    /// says hello (advertising the socket's port).
    pub fn new(
        tracker: std::net::TcpStream,
        mut driver: Driver,
        config: PeerConfig,
    ) -> io::Result<Self> {
        tracker.set_nonblocking(true)?;
        let _ = tracker.set_nodelay(true);
        let mut tracker = TcpStream::from_std(tracker);
        let poll = Poll::new()?;
        poll.registry().register(
            &mut tracker,
            TRACKER,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        driver.register(poll.registry(), UDP)?;
        // The upload cap counts chunk bytes; the socket as a whole (all
        // connections, headers, acknowledgements, control) is paced at the
        // rate those chunks need on the wire (see `socket_send_rate`).
        driver.set_max_send_rate(
            config
                .node
                .max_upload_rate
                .map(|cap| socket_send_rate(cap, config.rudp.max_udp_payload)),
        );
        let udp_port = driver.local_addr().port();
        let endpoint = Endpoint::new(config.rudp.clone(), config.seed);
        let bars = Bars::new(config.progress_bars && io::stdout().is_terminal());
        let client =
            TrackerClient::new(Instant::now(), udp_port, config.advertise, config.heartbeat);
        let (input_tx, inputs) = mpsc::channel();
        Ok(PeerLoop {
            poll,
            waker,
            tracker: Some(tracker),
            tracker_wants_write: true,
            tracker_retry: None,
            tracker_lost: false,
            rejoin: BTreeSet::new(),
            uploading: BTreeSet::new(),
            refusal: None,
            next_rejoin: Instant::now(),
            client,
            driver,
            endpoint,
            node: Node::new(config.node.clone()),
            downloads: BTreeMap::new(),
            bars,
            prompt_bars: None,
            inputs,
            input_tx,
            out: ConsoleOutput::Stdout,
            config,
            me: None,
            owned: BTreeMap::new(),
            joined: BTreeMap::new(),
            pending: HashMap::new(),
            queued: VecDeque::new(),
            hashing: None,
            stdin_closed: false,
            stop: false,
        })
    }

    /// A handle for the console and signal threads.
    pub fn console_sender(&self) -> LoopSender {
        LoopSender {
            tx: self.input_tx.clone(),
            waker: self.waker.clone(),
        }
    }

    /// The rudp address (bound at start; its port is the one the tracker advertises).
    pub fn udp_addr(&self) -> SocketAddr {
        self.driver.local_addr()
    }

    fn say(&mut self, line: impl AsRef<str>) {
        if self.bars.println(line.as_ref()) || self.say_above_bars(Some(line.as_ref())) {
            return;
        }
        self.out.line(line.as_ref());
    }

    fn error(&mut self, line: impl fmt::Display) {
        self.say(format!("error: {line}"));
    }

    /// With the line editor owning the terminal and bars on: prints `line`
    /// (or only redraws the bars) above the prompt, the bars pinned below
    /// it. False when bars are not drawn that way.
    fn say_above_bars(&mut self, line: Option<&str>) -> bool {
        let Some(prompt_bars) = &mut self.prompt_bars else {
            return false;
        };
        let now = Instant::now();
        let width = progress::terminal_width();
        let bars: Vec<String> = self
            .downloads
            .values()
            .filter(|d| !d.done)
            .map(|d| progress::bar_line(d, now, width))
            .collect();
        let text = prompt_bars.compose(now, line, &bars);
        self.out.above_prompt(text)
    }

    /// When the loop must wake at the latest: the tracker client's timers,
    /// the rudp driver's (endpoint timers, impairment releases) and the
    /// swarms'.
    pub fn poll_timeout(&mut self, now: Instant) -> Duration {
        let mut at = match self.tracker_retry {
            Some(retry) => retry,
            None => self.client.poll_timeout(),
        };
        if !self.rejoin.is_empty() && self.tracker_retry.is_none() {
            at = at.min(self.next_rejoin);
        }
        if let Some(t) = self.driver.next_deadline(&mut self.endpoint) {
            at = at.min(t);
        }
        if let Some(t) = self.node.poll_timeout() {
            at = at.min(t);
        }
        at.saturating_duration_since(now)
    }

    /// Runs until `quit`, a signal, or end of input with nothing left to do.
    pub fn run(&mut self) -> Result<(), PeerError> {
        let mut events = Events::with_capacity(64);
        while !self.stop {
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            for event in events.iter() {
                match event.token() {
                    TRACKER => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            let read = self.read_tracker();
                            self.on_tracker_io(read)?;
                        }
                    }
                    WAKER => self.drain_console(),
                    UDP => {} // received below, every turn
                    token => debug!("event for unknown token {token:?}"),
                }
            }
            let timers = self.handle_timeout(Instant::now());
            self.on_tracker_io(timers)?;
            self.drive_swarm(Instant::now());
            let flushed = self.flush_tracker();
            self.on_tracker_io(flushed)?;
        }
        self.close_swarm();
        Ok(())
    }

    /// rudp in, swarms, rudp out; prints what the node reports.
    fn drive_swarm(&mut self, now: Instant) {
        self.driver.recv(now, &mut self.endpoint);
        self.driver.handle_timeout(now, &mut self.endpoint);
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now, &mut self.endpoint);
        } else {
            self.node.process(now, &mut self.endpoint);
        }
        while let Some(ev) = self.node.poll_event() {
            self.on_node_event(now, ev);
        }
        self.driver.flush(now, &mut self.endpoint);
    }

    /// Closes every rudp connection (politely, best effort) before exiting.
    fn close_swarm(&mut self) {
        let now = Instant::now();
        for h in self.endpoint.connections() {
            self.endpoint.close(now, h);
        }
        self.driver.flush(now, &mut self.endpoint);
    }

    fn on_node_event(&mut self, now: Instant, ev: NodeEvent) {
        match ev {
            NodeEvent::ChunkReceived {
                file,
                index,
                chunk_count,
                from,
            } => {
                let len = self
                    .node
                    .swarm(&file)
                    .map_or(0, |s| u64::from(s.manifest().chunk_len(index)));
                if let Some(d) = self.downloads.get_mut(&file) {
                    d.on_chunk(now, len);
                }
                if !self.config.quiet_chunks {
                    self.say(progress::chunk_line(index, chunk_count, from));
                } else if self.prompt_bars.as_ref().is_some_and(|p| p.due(now)) {
                    self.say_above_bars(None);
                }
            }
            NodeEvent::BadChunk { file, index, from } => {
                let (name, count) = self.name_of(&file);
                self.say(progress::bad_chunk_line(&name, index, count, from));
            }
            NodeEvent::PeerBanned { file, peer } => {
                let (name, _) = self.name_of(&file);
                self.say(format!(
                    "{name}: {peer} served too many corrupted chunks; never asking it again"
                ));
            }
            NodeEvent::UploadDone { file } => {
                let (name, chunks) = self.name_of(&file);
                self.say(format!(
                    "upload {name}: all {} handed out; still serving as the source of last resort",
                    count(chunks, "chunk")
                ));
            }
            NodeEvent::Complete { file, path } => self.completed(now, &file, &path),
            NodeEvent::StorageFailed { file, reason } => {
                let (name, _) = self.name_of(&file);
                if let Some(d) = self.downloads.get_mut(&file) {
                    d.finish();
                }
                let dir = self.config.dir.display().to_string();
                if self.node.swarm(&file).is_some_and(|s| s.is_owner()) {
                    self.error(format_args!(
                        "{name}: stopped sharing it: {reason}; restore the file, or restart this peer and register-peer {name} again to share what is there now"
                    ));
                } else {
                    self.error(format_args!(
                        "{name}: the download stopped: {reason}; free the disk or fix {dir} and run register-group {name} again after a restart"
                    ));
                }
            }
            NodeEvent::NeighbourUp { peer } => debug!("neighbour {peer} up"),
            NodeEvent::NeighbourDown { peer, why } => info!("neighbour {peer} down: {why}"),
        }
    }

    fn name_of(&self, file: &Digest32) -> (String, u32) {
        self.node.swarm(file).map_or_else(
            || (hex(&file[..4]), 0),
            |s| (s.manifest().name.clone(), s.manifest().chunk_count()),
        )
    }

    /// A download is complete and verified: the summary.
    fn completed(&mut self, now: Instant, file: &Digest32, path: &std::path::Path) {
        let Some(swarm) = self.node.swarm(file) else {
            return;
        };
        let m = swarm.manifest();
        let owner = self.joined.get(&m.name).map(|g| g.owner.udp);
        let Some(d) = self.downloads.get(file) else {
            return;
        };
        let lines = Summary {
            name: &m.name,
            path,
            size: m.size,
            chunk_count: m.chunk_count(),
            sha256: &m.file_hash,
            elapsed: d.elapsed(now),
            rate_bytes: d.rate_bytes(),
            resumed: d.resumed,
            sources: &swarm.stats().received_from,
            owner,
        }
        .lines();
        if let Some(d) = self.downloads.get_mut(file) {
            d.finish();
        }
        for line in lines {
            self.say(line);
        }
    }

    fn tracker_error(&self, error: TrackerClientError) -> PeerError {
        PeerError::Tracker {
            tracker: self.config.tracker_name.clone(),
            error,
        }
    }

    /// Timers: heartbeats to the tracker, silence from it, and while it is
    /// lost, the next attempt to reach it again.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), PeerError> {
        if let Some(retry) = self.tracker_retry {
            if now >= retry {
                self.reconnect(now);
            }
            return Ok(());
        }
        if !self.rejoin.is_empty() && now >= self.next_rejoin {
            self.retry_rejoins(now);
        }
        self.client
            .handle_timeout(now)
            .map_err(|e| self.tracker_error(e))
    }

    /// A tracker read, write or timer failed: before the first welcome the
    /// peer stops (the command line is wrong); later the peer reports it
    /// once, keeps trading chunks with the peers it knows, and tries to
    /// reach the tracker again every [`TRACKER_RETRY`].
    fn on_tracker_io(&mut self, result: Result<(), PeerError>) -> Result<(), PeerError> {
        let Err(err) = result else {
            return Ok(());
        };
        if let (None, Some(message)) = (self.me, self.refusal.take()) {
            return Err(PeerError::Refused {
                tracker: self.config.tracker_name.clone(),
                message,
            });
        }
        if self.me.is_none() {
            return Err(PeerError::NeverWelcomed {
                tracker: self.config.tracker_name.clone(),
                why: Box::new(err),
            });
        }
        if let Some(mut stream) = self.tracker.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        let now = Instant::now();
        self.tracker_retry = Some(now + TRACKER_RETRY);
        if !self.tracker_lost {
            self.tracker_lost = true;
            self.error(format_args!(
                "{err}; transfers go on with the peers already known, list, register-peer, register-group and upload wait until it is back (retrying every {} s)",
                TRACKER_RETRY.as_secs()
            ));
        } else {
            debug!("tracker still unreachable: {err}");
        }
        let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        for p in pending {
            match p {
                Pending::Reshare(_) => {} // shared again after the next welcome
                Pending::Rejoin(name) => {
                    self.rejoin.insert(name);
                }
                Pending::RegisterPeer(m) => {
                    self.tracker_gone_before_answer(&format!("register-peer {}", m.name))
                }
                Pending::List => self.tracker_gone_before_answer("list"),
                Pending::RegisterGroup(n) => {
                    self.tracker_gone_before_answer(&format!("register-group {n}"))
                }
                Pending::Upload(n) => self.tracker_gone_before_answer(&format!("upload {n}")),
            }
        }
        self.run_queued();
        Ok(())
    }

    fn tracker_gone_before_answer(&mut self, what: &str) {
        self.error(format_args!(
            "{what}: the tracker went away before answering; try again once it is back"
        ));
    }

    /// Without a tracker session, a command that needs one is refused.
    fn tracker_needed(&mut self, what: &str) -> bool {
        if self.tracker_retry.is_none() {
            return false;
        }
        let tracker = self.config.tracker_name.clone();
        self.error(format_args!(
            "{what}: no connection to the tracker at {tracker}; retrying every {} s, try again once it is back",
            TRACKER_RETRY.as_secs()
        ));
        true
    }

    /// Starts a new session with the tracker (a non-blocking connect; a
    /// failure shows up as an error on the stream and schedules the next try).
    fn reconnect(&mut self, now: Instant) {
        self.tracker_retry = Some(now + TRACKER_RETRY);
        let mut stream = match TcpStream::connect(self.config.tracker_addr) {
            Ok(s) => s,
            Err(e) => return debug!("cannot reach the tracker yet: {e}"),
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            TRACKER,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return debug!("cannot watch the tracker connection: {e}");
        }
        let _ = stream.set_nodelay(true);
        self.tracker = Some(stream);
        self.tracker_wants_write = true;
        self.tracker_retry = None;
        self.client = TrackerClient::new(
            now,
            self.driver.local_addr().port(),
            self.config.advertise,
            self.config.heartbeat,
        );
    }

    /// The tracker welcomed us again: share our files and join our groups again.
    fn resync(&mut self) {
        let owned: Vec<(String, Manifest)> = self
            .owned
            .iter()
            .map(|(n, (m, _))| (n.clone(), m.clone()))
            .collect();
        for (name, m) in owned {
            let req = self.client.register_file(m);
            self.pending.insert(req, Pending::Reshare(name));
        }
        let names: Vec<String> = self.joined.keys().cloned().collect();
        self.rejoin.extend(names);
        self.retry_rejoins(Instant::now());
    }

    fn retry_rejoins(&mut self, now: Instant) {
        self.next_rejoin = now + TRACKER_RETRY;
        let names: Vec<String> = std::mem::take(&mut self.rejoin).into_iter().collect();
        for name in names {
            let req = self.client.join_group(&name);
            self.pending.insert(req, Pending::Rejoin(name));
        }
    }

    fn read_tracker(&mut self) -> Result<(), PeerError> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let Some(tracker) = self.tracker.as_mut() else {
                return Ok(());
            };
            match tracker.read(&mut buf) {
                Ok(0) => return Err(PeerError::TrackerClosed(self.config.tracker_name.clone())),
                Ok(n) => {
                    if let Err(e) = self.client.handle_bytes(Instant::now(), &buf[..n]) {
                        return Err(self.tracker_error(e));
                    }
                    while let Some(event) = self.client.poll_event() {
                        self.handle_tracker_event(event);
                    }
                    self.run_queued();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(PeerError::TrackerClosed(self.config.tracker_name.clone()))
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush_tracker(&mut self) -> Result<(), PeerError> {
        let Some(tracker) = self.tracker.as_mut() else {
            return Ok(());
        };
        let mut written = 0;
        let out = self.client.output();
        while written < out.len() {
            match tracker.write(&out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                // NotConnected: a reconnect still in progress.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Err(PeerError::TrackerClosed(self.config.tracker_name.clone()))
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.client.consume_output(written);
        let wants_write = !self.client.output().is_empty();
        if wants_write != self.tracker_wants_write {
            let interest = if wants_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            self.poll
                .registry()
                .reregister(tracker, TRACKER, interest)?;
            self.tracker_wants_write = wants_write;
        }
        Ok(())
    }

    fn drain_console(&mut self) {
        while let Ok(input) = self.inputs.try_recv() {
            match input {
                LoopInput::Signal(sig) => {
                    info!("stopping on signal {sig}");
                    self.stop = true;
                }
                LoopInput::Printer(p) => {
                    // The line editor owns the terminal now: bars above its prompt.
                    self.bars.disable();
                    self.out = ConsoleOutput::Terminal(p);
                    if self.config.progress_bars && io::stdout().is_terminal() {
                        self.prompt_bars = Some(PromptBars::default());
                    }
                }
                LoopInput::Hashed { name, result } => self.hashed(name, result),
                // Do not make the user wait for a long hash to finish.
                LoopInput::Command(Command::Quit) if self.hashing.is_some() => {
                    let name = self.hashing.take().unwrap_or_default();
                    self.say(format!("register-peer {name}: cancelled"));
                    self.handle_command(Command::Quit);
                }
                other => self.queued.push_back(other),
            }
        }
        self.run_queued();
    }

    /// Handles queued console input until a command awaits the tracker.
    fn run_queued(&mut self) {
        while self.pending.is_empty() && self.hashing.is_none() && !self.stop {
            let Some(input) = self.queued.pop_front() else {
                break;
            };
            match input {
                LoopInput::Command(cmd) => self.handle_command(cmd),
                LoopInput::Invalid(ParseError::Empty) => {}
                LoopInput::Invalid(e) => self.error(e),
                LoopInput::Eof => {
                    self.stdin_closed = true;
                    if self.busy() {
                        info!("end of input; still sharing or downloading: stop with SIGINT or SIGTERM");
                    }
                }
                LoopInput::Signal(_) | LoopInput::Printer(_) | LoopInput::Hashed { .. } => {}
            }
        }
        self.stop_if_idle();
    }

    /// Shares or downloads something, or still waits for the tracker's answer.
    fn busy(&self) -> bool {
        !self.owned.is_empty()
            || !self.joined.is_empty()
            || !self.downloads.is_empty()
            || !self.pending.is_empty()
            || self.hashing.is_some()
    }

    /// After end of input, a peer with nothing to share or download stops.
    fn stop_if_idle(&mut self) {
        if self.stdin_closed && !self.busy() {
            self.stop = true;
        }
    }

    /// Runs one console command.
    pub fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::RegisterPeer(name) => {
                if !self.tracker_needed(&format!("register-peer {name}")) {
                    self.register_peer(name)
                }
            }
            Command::List => {
                if !self.tracker_needed("list") {
                    let req = self.client.list();
                    self.pending.insert(req, Pending::List);
                }
            }
            Command::RegisterGroup(name) => {
                if !self.tracker_needed(&format!("register-group {name}")) {
                    self.register_group(name)
                }
            }
            Command::Upload(name) => {
                if !self.tracker_needed("upload") {
                    self.upload(name)
                }
            }
            Command::Status => self.status(),
            Command::Help => {
                for line in HELP.lines() {
                    self.say(line);
                }
            }
            Command::Quit => {
                self.say("bye");
                self.stop = true;
            }
        }
    }

    fn register_peer(&mut self, name: String) {
        if self.owned.contains_key(&name) {
            return self.error(format_args!(
                "register-peer {name}: you already share {name}; see status"
            ));
        }
        let path = self.config.dir.join(&name);
        let shown = path.display().to_string();
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = self.config.dir.display().to_string();
                return self.error(format_args!(
                    "register-peer {name}: there is no {shown}; copy the file into {dir} or check the name"
                ));
            }
            Err(e) => return self.error(format_args!("register-peer {name}: cannot read {shown}: {e}")),
            Ok(m) if !m.file_type().is_file() => {
                return self.error(format_args!(
                    "register-peer {name}: {shown} is not a regular file; share a plain file (not a directory or link)"
                ))
            }
            Ok(m) if m.len() > MAX_FILE_SIZE => {
                return self.error(format_args!(
                    "register-peer {name}: {shown} holds {} bytes, more than the {MAX_FILE_SIZE} a shared file may; split it first",
                    m.len()
                ))
            }
            Ok(m) if m.len() >= LONG_HASH => {
                // No file name in this line: scripts wait for the name.
                self.say(format!(
                    "register-peer: hashing {:.1} MB first (quit cancels it)",
                    m.len() as f64 / 1e6
                ));
            }
            Ok(_) => {}
        }
        // Hash on a thread of its own: a large file takes seconds, and the
        // loop must keep answering the tracker meanwhile.
        let sender = self.console_sender();
        let thread_name = name.clone();
        let spawned = std::thread::Builder::new()
            .name("hashing".into())
            .spawn(move || {
                let result = fs::File::open(&path)
                    .and_then(|f| Manifest::compute(&thread_name, io::BufReader::new(f)));
                sender.send(LoopInput::Hashed {
                    name: thread_name,
                    result,
                });
            });
        match spawned {
            Ok(_) => self.hashing = Some(name),
            Err(e) => self.error(format_args!(
                "register-peer {name}: cannot start hashing: {e}; try again"
            )),
        }
    }

    /// The manifest of a file to share is ready: register it.
    fn hashed(&mut self, name: String, result: io::Result<Manifest>) {
        self.hashing = None;
        match result {
            Ok(_) if self.tracker_needed(&format!("register-peer {name}")) => {}
            Ok(manifest) => {
                let req = self.client.register_file(manifest.clone());
                self.pending.insert(req, Pending::RegisterPeer(manifest));
            }
            Err(e) => {
                let shown = self.config.dir.join(&name).display().to_string();
                self.error(format_args!(
                    "register-peer {name}: cannot read {shown}: {e}; check the file and try again"
                ))
            }
        }
    }

    fn register_group(&mut self, name: String) {
        if self.owned.contains_key(&name) {
            return self.error(format_args!(
                "register-group {name}: you own {name}; downloaders join its group, the owner starts it with upload {name}"
            ));
        }
        if self.joined.contains_key(&name) {
            return self.error(format_args!(
                "register-group {name}: you are already in its group; see status"
            ));
        }
        if self.rejoin.contains(&name) {
            return self.error(format_args!(
                "register-group {name}: already downloading it; this peer rejoins its group by itself once the owner shares it again"
            ));
        }
        let path = self.config.dir.join(&name);
        if fs::symlink_metadata(&path).is_ok() {
            return self.error(format_args!(
                "register-group {name}: {} already exists; move it away first so the download cannot overwrite it",
                path.display()
            ));
        }
        let req = self.client.join_group(&name);
        self.pending.insert(req, Pending::RegisterGroup(name));
    }

    fn upload(&mut self, name: Option<String>) {
        let name =
            match name {
                Some(n) => n,
                None => match self.owned.len() {
                    0 => return self.error(
                        "upload: you share no file; share one with register-peer <filename> first",
                    ),
                    1 => self.owned.keys().next().cloned().unwrap_or_default(),
                    n => {
                        let names: Vec<&str> = self.owned.keys().map(String::as_str).collect();
                        return self.error(format_args!(
                            "upload: you share {n} files ({}); say which: upload <filename>",
                            names.join(", ")
                        ));
                    }
                },
            };
        if !self.owned.contains_key(&name) {
            return self.error(format_args!(
                "upload {name}: you do not share {name}; register it first with register-peer {name}"
            ));
        }
        if self.uploading.contains(&name) {
            // A second push would send every chunk again.
            return self.say(format!(
                "upload {name}: already started; members that join later get every chunk too (see status)"
            ));
        }
        let req = self.client.get_group(&name);
        self.pending.insert(req, Pending::Upload(name));
    }

    /// The owner fetched its group: connect to every member and push each
    /// chunk to one of them; the owner keeps serving afterwards.
    pub fn start_upload(&mut self, group: GroupView) {
        let name = group.manifest.name.clone();
        if group.members.is_empty() {
            return self.error(format_args!(
                "upload {name}: nobody has joined its group yet; wait until downloaders run register-group {name}"
            ));
        }
        let file = group.manifest.file_hash;
        if self.node.swarm(&file).is_none() {
            return self.error(format_args!(
                "upload {name}: the file changed or cannot be read since it was registered; check {} and register it again",
                self.config.dir.join(&name).display()
            ));
        }
        let now = Instant::now();
        self.group_to_node(now, &group, true);
        match self.node.start_upload(now, &mut self.endpoint, &file) {
            Ok(()) => {
                self.uploading.insert(name.clone());
                let members: Vec<String> = group.members.iter().map(|m| m.to_string()).collect();
                self.say(format!(
                    "upload {name}: sending {} to {}: {}",
                    count(group.manifest.chunk_count(), "chunk"),
                    count(members.len(), "member"),
                    members.join(", ")
                ));
            }
            Err(e) => self.error(format_args!("upload {name}: {e}")),
        }
    }

    /// Our rudp address as the group knows it.
    fn local_udp(&self) -> SocketAddr {
        self.me.map_or_else(|| self.driver.local_addr(), |p| p.udp)
    }

    fn next_seed(&mut self) -> u64 {
        self.config.seed = self
            .config
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.config.seed
    }

    /// A file we now share: a swarm over the complete file serves it.
    fn share(&mut self, m: &Manifest) {
        match self.disk_swarm(DiskRole::Owner, m) {
            Ok(swarm) => self.node.add_swarm(swarm),
            Err(e) => self.error(format_args!(
                "register-peer {}: registered, but it cannot be served: {e}",
                m.name
            )),
        }
    }

    fn disk_swarm(&mut self, role: DiskRole, m: &Manifest) -> Result<Swarm, StorageError> {
        let seed = self.next_seed();
        Swarm::on_disk(
            Instant::now(),
            &self.config.dir,
            role,
            m.clone(),
            self.local_udp(),
            self.config.swarm.clone(),
            seed,
        )
    }

    /// We joined a group: a downloading swarm over `DIR/<name>.part`,
    /// resumed if a `.part` of this file is there.
    fn start_download(&mut self, group: &GroupView) {
        let m = &group.manifest;
        let swarm = match self.disk_swarm(DiskRole::Downloader, m) {
            Ok(s) => s,
            Err(e) => {
                let (name, dir) = (m.name.clone(), self.config.dir.display().to_string());
                return self.error(format_args!(
                    "register-group {name}: cannot store the download: {e}; free or fix {dir} and restart the peer"
                ));
            }
        };
        let held = swarm.have().count();
        if held > 0 && !swarm.have().is_full() {
            self.say(format!(
                "{}: resuming from {}.part: {held}/{} chunks already verified",
                m.name,
                m.name,
                m.chunk_count()
            ));
        }
        let now = Instant::now();
        let complete = swarm.is_complete();
        self.node.add_swarm(swarm);
        let mut d = Download::new(m.name.clone(), m.file_hash, m.chunk_count(), m.size, held);
        if complete {
            d.done = true;
            self.say(format!(
                "{}: already complete in {}; serving it",
                m.name,
                self.config.dir.display()
            ));
        } else {
            self.bars.attach(&mut d, held);
        }
        self.downloads.insert(m.file_hash, d);
        self.group_to_node(now, group, true);
    }

    /// Hands a group view to the file's swarm (owner gone: `with_owner` false).
    fn group_to_node(&mut self, now: Instant, group: &GroupView, with_owner: bool) {
        let members: Vec<SocketAddr> = group.members.iter().map(|m| m.udp).collect();
        let owner = with_owner.then_some(group.owner.udp);
        let file = group.manifest.file_hash;
        if let Err(e) = self
            .node
            .on_group(now, &mut self.endpoint, &file, owner, &members)
        {
            debug!("group of {}: {e}", group.manifest.name);
        }
    }

    /// `  neighbours: a (12 chunks in, 3 out), b` for one file's swarm.
    fn neighbour_line(&self, file: &Digest32) -> Option<String> {
        let swarm = self.node.swarm(file)?;
        let stats = swarm.stats();
        let list: Vec<String> = swarm
            .neighbours()
            .map(|a| {
                let got = stats.received_from.get(&a).copied().unwrap_or(0);
                let sent = stats.uploaded_to.get(&a).copied().unwrap_or(0);
                format!("{a} ({got} chunks in, {sent} out)")
            })
            .collect();
        Some(if list.is_empty() {
            "  neighbours: none connected".to_string()
        } else {
            format!("  neighbours: {}", list.join(", "))
        })
    }

    fn status(&mut self) {
        let me = match self.me {
            Some(p) => p.to_string(),
            None => "not yet welcomed".into(),
        };
        let lost = if self.tracker_retry.is_some() {
            " (connection lost, retrying)"
        } else {
            ""
        };
        let mut lines = vec![format!(
            "status: {me}; tracker {}{lost}; dir {}",
            self.config.tracker_name,
            self.config.dir.display()
        )];
        if self.owned.is_empty() {
            lines.push("sharing: nothing".into());
        }
        for (name, (m, view)) in &self.owned {
            let members = view.as_ref().map_or(0, |v| v.members.len());
            let uploaded: u32 = self
                .node
                .swarm(&m.file_hash)
                .map_or(0, |s| s.stats().uploaded_to.values().sum());
            lines.push(format!(
                "sharing: {name} ({}, {}, {}; {} sent)",
                count(m.size, "byte"),
                count(m.chunk_count(), "chunk"),
                count(members, "member"),
                count(uploaded, "chunk")
            ));
            lines.extend(self.neighbour_line(&m.file_hash));
        }
        if self.downloads.is_empty() {
            lines.push("downloading: nothing".into());
        }
        let now = Instant::now();
        for d in self.downloads.values() {
            let held = self.node.swarm(&d.file).map_or(0, |s| s.have().count());
            let owner = self.joined.get(&d.name).map_or_else(
                || "an owner gone offline".to_string(),
                |g| g.owner.to_string(),
            );
            let state = if d.done {
                "complete, serving".to_string()
            } else {
                format!(
                    "{}%, {}",
                    u64::from(held) * 100 / u64::from(d.chunk_count.max(1)),
                    progress::rate(d.bytes, d.elapsed(now))
                )
            };
            let members = self.joined.get(&d.name).map_or(0, |g| g.members.len());
            lines.push(format!(
                "downloading: {} from {owner} ({}): {held}/{} chunks, {state}",
                d.name,
                count(members, "member"),
                d.chunk_count
            ));
            lines.extend(self.neighbour_line(&d.file));
        }
        for line in lines {
            self.say(line);
        }
    }

    /// What the tracker told us: answers to our requests and pushes.
    pub fn handle_tracker_event(&mut self, event: TrackerEvent) {
        match event {
            TrackerEvent::Welcome {
                peer_id,
                udp,
                heartbeat,
            } => {
                let again = self.me.is_some();
                self.me = Some(PeerInfo { id: peer_id, udp });
                debug!("tracker heartbeat every {} ms", heartbeat.as_millis());
                if again {
                    self.tracker_lost = false;
                    self.say(format!(
                        "the tracker at {} is back: you are {peer_id} now; sharing {} and rejoining {} again",
                        self.config.tracker_name,
                        count(self.owned.len(), "file"),
                        count(self.joined.len(), "group")
                    ));
                    self.resync();
                    return;
                }
                self.say(format!(
                    "{peer_id} online: tracker {}, rudp at {udp}, dir {}",
                    self.config.tracker_name,
                    self.config.dir.display()
                ));
                self.check_reachable(udp);
            }
            TrackerEvent::Registered { req, name } => match self.pending.remove(&req) {
                Some(Pending::RegisterPeer(m)) => {
                    self.say(format!(
                        "registered {name}: {}, {}, sha256 {}",
                        count(m.size, "byte"),
                        count(m.chunk_count(), "chunk"),
                        hex(&m.file_hash)
                    ));
                    self.share(&m);
                    self.owned.insert(name, (m, None));
                }
                Some(Pending::Reshare(name)) => self.say(format!("sharing {name} again")),
                _ => {}
            },
            TrackerEvent::Files { req, files } => {
                self.pending.remove(&req);
                let mut lines = vec![if files.is_empty() {
                    "list: no shared files yet; share one with register-peer <filename>".to_string()
                } else {
                    format!("list: {}", count(files.len(), "shared file"))
                }];
                let me = self.me.map(|p| p.id);
                for f in files {
                    let mine = if Some(f.owner.id) == me {
                        " (yours)"
                    } else {
                        ""
                    };
                    lines.push(format!(
                        "  {}  {}  {}  owner {}{mine}  group {}",
                        f.name,
                        count(f.size, "byte"),
                        count(f.chunk_count, "chunk"),
                        f.owner,
                        f.group_size
                    ));
                }
                for line in lines {
                    self.say(line);
                }
            }
            TrackerEvent::Group {
                req,
                manifest,
                owner,
                members,
            } => {
                let view = GroupView {
                    manifest,
                    owner,
                    members,
                };
                match req.and_then(|r| self.pending.remove(&r)) {
                    Some(Pending::Rejoin(name))
                        if self.node.swarm(&view.manifest.file_hash).is_none() =>
                    {
                        self.error(format_args!(
                            "register-group {name}: the file now shared under that name is another file; \
                             the download goes on with the peers already known"
                        ));
                    }
                    Some(Pending::Rejoin(name)) => {
                        self.say(format!(
                            "rejoined the group of {name}: owner {}, {}",
                            view.owner,
                            count(view.members.len(), "member")
                        ));
                        self.joined.insert(name, view.clone());
                        self.group_to_node(Instant::now(), &view, true);
                    }
                    Some(Pending::Upload(_)) => {
                        self.note_group(view.clone(), false);
                        self.start_upload(view);
                    }
                    Some(Pending::RegisterGroup(name)) => {
                        let members: Vec<String> =
                            view.members.iter().map(|m| m.id.to_string()).collect();
                        self.say(format!(
                            "joined the group of {name}: owner {}, {}, members: {}",
                            view.owner,
                            count(view.manifest.chunk_count(), "chunk"),
                            members.join(", ")
                        ));
                        self.joined.insert(name, view.clone());
                        self.start_download(&view);
                    }
                    _ => {
                        self.note_group(view.clone(), true);
                        if self.owned.contains_key(&view.manifest.name)
                            || self.joined.contains_key(&view.manifest.name)
                        {
                            self.group_to_node(Instant::now(), &view, true);
                        }
                    }
                }
            }
            TrackerEvent::Left { req, name } => {
                self.pending.remove(&req);
                if let Some(g) = self.joined.remove(&name) {
                    let file = g.manifest.file_hash;
                    self.node
                        .remove_swarm(Instant::now(), &mut self.endpoint, &file);
                    if let Some(mut d) = self.downloads.remove(&file) {
                        d.finish();
                    }
                }
                self.say(format!("left the group of {name}"));
            }
            TrackerEvent::GroupClosed { name } => {
                if let Some(g) = self.joined.remove(&name) {
                    // The members still have each other: keep swapping chunks.
                    self.group_to_node(Instant::now(), &g, false);
                    let file = g.manifest.file_hash;
                    let incomplete = self.downloads.get(&file).is_some_and(|d| !d.done);
                    let hint = if incomplete {
                        // Chunks no member holds can only come from the owner:
                        // join again as soon as it shares the file again.
                        self.rejoin.insert(name.clone());
                        "; a chunk none of them holds waits until the owner shares the file again (this peer then rejoins by itself)"
                    } else {
                        ""
                    };
                    self.say(format!(
                        "group {name}: closed, its owner {} went offline; carrying on with the other members{hint}",
                        g.owner.id
                    ));
                }
            }
            TrackerEvent::Refused { req, code, message } => {
                let pending = req.and_then(|r| self.pending.remove(&r));
                self.refused(pending, code, &message);
            }
        }
        self.stop_if_idle();
    }

    /// Warns when the rudp socket listens on one IP while the tracker tells
    /// the other peers to use another (e.g. `--bind 127.0.0.1` with a
    /// tracker on the LAN): nothing would ever reach this peer.
    fn check_reachable(&mut self, advertised: SocketAddr) {
        let local = self.driver.local_addr().ip();
        let same_family = local.is_ipv4() == advertised.is_ipv4();
        if (local.is_unspecified() && same_family)
            || local == advertised.ip()
            || self.config.advertise.is_some()
        {
            return;
        }
        let seen = advertised.ip();
        self.say(format!(
            "warning: rudp listens on {local} only, but the tracker tells the other peers to reach you at {seen}; \
             their chunks cannot arrive: restart with --bind 0.0.0.0 (or --bind {seen}), or with --advertise {local} if they can reach that"
        ));
    }

    /// Records a group's new view; with `announce`, prints who joined and left.
    fn note_group(&mut self, view: GroupView, announce: bool) {
        let name = view.manifest.name.clone();
        let old = match (self.owned.get_mut(&name), self.joined.get_mut(&name)) {
            (Some((_, slot)), _) => slot.replace(view.clone()),
            (None, Some(slot)) => Some(std::mem::replace(slot, view.clone())),
            (None, None) => {
                debug!("view of a group we are not in: {name}");
                return;
            }
        };
        if !announce {
            return;
        }
        let before: Vec<PeerId> = old
            .map(|o| o.members.iter().map(|m| m.id).collect())
            .unwrap_or_default();
        let n = view.members.len();
        let mut lines = Vec::new();
        for m in &view.members {
            if !before.contains(&m.id) {
                lines.push(format!("group {name}: {m} joined; members now {n}"));
            }
        }
        for id in before {
            if !view.members.iter().any(|m| m.id == id) {
                lines.push(format!("group {name}: {id} left; members now {n}"));
            }
        }
        for line in lines {
            self.say(line);
        }
    }

    fn refused(&mut self, pending: Option<Pending>, code: RefusalCode, message: &str) {
        let (what, hint) = match (&pending, code) {
            (None, _) if self.me.is_none() => {
                // Reported as the reason the peer stops (see on_tracker_io).
                self.refusal = Some(message.to_string());
                return;
            }
            (None, _) if self.tracker_lost => {
                return debug!("the tracker refused a new session: {message}");
            }
            (None, _) => {
                return self.error(format_args!("the tracker refused this session: {message}"))
            }
            (Some(Pending::RegisterPeer(m)), RefusalCode::AlreadyShared) => (
                format!("register-peer {}", m.name),
                "rename your copy and share it under another name",
            ),
            (Some(Pending::RegisterPeer(m)), _) => (
                format!("register-peer {}", m.name),
                "check the file and try again",
            ),
            (Some(Pending::RegisterGroup(n)), RefusalCode::UnknownFile) => (
                format!("register-group {n}"),
                "run list to see the shared files",
            ),
            (Some(Pending::RegisterGroup(n)), RefusalCode::OwnFile) => (
                format!("register-group {n}"),
                "you own it; start it with upload instead",
            ),
            (Some(Pending::RegisterGroup(n)), _) => {
                (format!("register-group {n}"), "see status and list")
            }
            (Some(Pending::Upload(n)), _) => (
                format!("upload {n}"),
                "see status; register the file again if it was dropped",
            ),
            (Some(Pending::List), _) => ("list".into(), "try again"),
            (Some(Pending::Rejoin(n)), RefusalCode::UnknownFile) => {
                // Its owner has not shared it again (yet): keep trading with
                // the members we know and try again later.
                debug!("rejoin {n}: {message}; trying again");
                self.rejoin.insert(n.clone());
                return;
            }
            (Some(Pending::Rejoin(n)), _) => (
                format!("register-group {n} (after the tracker came back)"),
                "the download goes on with the peers already known",
            ),
            (Some(Pending::Reshare(n)), _) => (
                format!("register-peer {n} (after the tracker came back)"),
                "peers that already know you can still fetch it",
            ),
        };
        self.error(format_args!("{what}: {message}; {hint}"));
    }
}

/// "1 member", "2 members".
fn count(n: impl TryInto<u64>, what: &str) -> String {
    let n: u64 = n.try_into().unwrap_or(u64::MAX);
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Reads the console on a thread of its own: rustyline with a prompt and
/// history when stdin is a terminal, plain lines otherwise. Each line is
/// parsed and handed to the loop; end of input is reported too.
pub fn spawn_console(sender: LoopSender) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            if io::stdin().is_terminal() {
                if let Err(e) = read_terminal(&sender) {
                    warn!("line editing unavailable ({e}); reading plain lines");
                    read_lines(&sender);
                }
            } else {
                read_lines(&sender);
            }
        })
}

fn send_line(sender: &LoopSender, line: &str) -> bool {
    sender.send(match Command::parse(line) {
        Ok(cmd) => LoopInput::Command(cmd),
        Err(e) => LoopInput::Invalid(e),
    })
}

/// Plain lines from a pipe or file; a line that is not UTF-8 is an error
/// for that line only (reading goes on).
fn read_lines(sender: &LoopSender) {
    let stdin = io::stdin();
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdin.lock().read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {
                let sent = match std::str::from_utf8(&line) {
                    Ok(text) => send_line(sender, text),
                    Err(_) => sender.send(LoopInput::Invalid(ParseError::NotUtf8)),
                };
                if !sent {
                    return;
                }
            }
            Err(e) => {
                warn!("cannot read the console: {e}");
                break;
            }
        }
    }
    sender.send(LoopInput::Eof);
}

fn read_terminal(sender: &LoopSender) -> rustyline::Result<()> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new()?;
    if let Ok(printer) = editor.create_external_printer() {
        sender.send(LoopInput::Printer(Box::new(printer)));
    }
    loop {
        match editor.readline("chunkswarm> ") {
            // A paste of several lines arrives as one: each is a command.
            Ok(pasted) => {
                for line in pasted.lines() {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line);
                    }
                    if !send_line(sender, line) {
                        return Ok(());
                    }
                }
            }
            Err(ReadlineError::Interrupted) => {
                sender.send(LoopInput::Signal(signal_hook::consts::SIGINT));
                return Ok(());
            }
            Err(ReadlineError::Eof) => {
                sender.send(LoopInput::Eof);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Hands SIGINT and SIGTERM to the loop, which stops cleanly.
pub fn spawn_signal_listener(sender: LoopSender) -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if !sender.send(LoopInput::Signal(sig)) {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Connects to the tracker (bounded wait), with a clear error.
pub fn connect_tracker(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(std::net::TcpStream, SocketAddr), String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve tracker host {host}: {e}; check the name"))?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match std::net::TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok((s, *addr)),
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(match last {
        Some((addr, e)) => {
            format!("cannot reach the tracker at {addr}: {e}; is it running on that port?")
        }
        None => format!("tracker host {host} has no address"),
    })
}

#[cfg(test)]
mod tests {
    use super::socket_send_rate;

    #[test]
    fn the_socket_rate_covers_the_headers_of_full_datagrams() {
        // 1,454 chunk bytes travel in a 1,500-byte IP packet.
        assert_eq!(socket_send_rate(1_454_000, 1472), 1_500_000);
        assert!(socket_send_rate(2_375_000, 1472) > 2_375_000);
        // Absurd MTUs do not divide by zero.
        assert!(socket_send_rate(1000, 0) > 0);
    }
}
