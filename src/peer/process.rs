//! The peer process: one mio event loop thread ([`PeerLoop`]) owns the
//! tracker connection (and, later, the rudp socket); the console runs on its
//! own thread and hands parsed commands to the loop through a channel and a
//! [`mio::Waker`]; SIGINT/SIGTERM arrive the same way.
//!
//! Seams for the swarm: the loop's [`poll_timeout`](PeerLoop::poll_timeout)
//! is where rudp's `poll_timeout()` joins the tracker client's; the token
//! [`UDP`] is reserved for the rudp socket ([`PeerLoop::udp_socket`] is bound
//! at start, so the port the tracker advertises is real);
//! [`handle_tracker_event`](PeerLoop::handle_tracker_event) sees every
//! [`TrackerEvent::Group`] and [`start_upload`](PeerLoop::start_upload) is
//! where the owner's upload begins.

use super::console::{Command, ParseError, HELP};
use super::tracker_client::{TrackerClient, TrackerClientError, TrackerEvent};
use crate::manifest::{hex, Manifest};
use crate::wire::tracker::{GroupView, PeerId, PeerInfo, RefusalCode, RequestId};
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tracker connection.
pub const TRACKER: Token = Token(0);
/// Wakes the loop when the console or a signal sent something.
pub const WAKER: Token = Token(1);
/// Reserved for the rudp socket.
pub const UDP: Token = Token(2);

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
    /// Our heartbeat interval.
    pub heartbeat: Duration,
    pub advertise: Option<std::net::IpAddr>,
}

/// Why the peer stopped with an error.
#[derive(Debug)]
pub enum PeerError {
    TrackerClosed(String),
    Tracker {
        tracker: String,
        error: TrackerClientError,
    },
    Io(io::Error),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::TrackerClosed(t) => write!(
                f,
                "the tracker at {t} closed the connection; restart the peer once it is back"
            ),
            PeerError::Tracker { tracker, error } => write!(
                f,
                "lost the tracker at {tracker}: {error}; restart the peer once it is back"
            ),
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
}

pub struct PeerLoop {
    poll: Poll,
    waker: Arc<Waker>,
    tracker: TcpStream,
    tracker_wants_write: bool,
    client: TrackerClient,
    udp: UdpSocket,
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

impl PeerLoop {
    /// Takes over a connected tracker stream and the bound rudp socket, and
    /// says hello (advertising the socket's port).
    pub fn new(
        tracker: std::net::TcpStream,
        udp: UdpSocket,
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
        let udp_port = udp.local_addr()?.port();
        let client =
            TrackerClient::new(Instant::now(), udp_port, config.advertise, config.heartbeat);
        let (input_tx, inputs) = mpsc::channel();
        Ok(PeerLoop {
            poll,
            waker,
            tracker,
            tracker_wants_write: true,
            client,
            udp,
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

    /// The rudp socket (bound at start; its port is the one the tracker advertises).
    pub fn udp_socket(&self) -> &UdpSocket {
        &self.udp
    }

    fn say(&mut self, line: impl AsRef<str>) {
        self.out.line(line.as_ref());
    }

    fn error(&mut self, line: impl fmt::Display) {
        self.out.line(&format!("error: {line}"));
    }

    /// When the loop must wake at the latest: the tracker client's timers
    /// (the swarm's rudp timers will join here).
    pub fn poll_timeout(&self, now: Instant) -> Duration {
        self.client.poll_timeout().saturating_duration_since(now)
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
                            self.read_tracker()?;
                        }
                    }
                    WAKER => self.drain_console(),
                    token => debug!("event for unknown token {token:?}"),
                }
            }
            self.handle_timeout(Instant::now())?;
            self.flush_tracker()?;
        }
        Ok(())
    }

    fn tracker_error(&self, error: TrackerClientError) -> PeerError {
        PeerError::Tracker {
            tracker: self.config.tracker_name.clone(),
            error,
        }
    }

    /// Timers: heartbeats to the tracker, silence from it.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), PeerError> {
        self.client
            .handle_timeout(now)
            .map_err(|e| self.tracker_error(e))
    }

    fn read_tracker(&mut self) -> Result<(), PeerError> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.tracker.read(&mut buf) {
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
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush_tracker(&mut self) -> Result<(), PeerError> {
        let mut written = 0;
        let out = self.client.output();
        while written < out.len() {
            match self.tracker.write(&out[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
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
                .reregister(&mut self.tracker, TRACKER, interest)?;
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
                LoopInput::Printer(p) => self.out = ConsoleOutput::Terminal(p),
                LoopInput::Hashed { name, result } => self.hashed(name, result),
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
            Command::RegisterPeer(name) => self.register_peer(name),
            Command::List => {
                let req = self.client.list();
                self.pending.insert(req, Pending::List);
            }
            Command::RegisterGroup(name) => self.register_group(name),
            Command::Upload(name) => self.upload(name),
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
        let req = self.client.get_group(&name);
        self.pending.insert(req, Pending::Upload(name));
    }

    /// The owner fetched its group and may upload. (The swarm takes over here.)
    pub fn start_upload(&mut self, group: GroupView) {
        let name = group.manifest.name.clone();
        if group.members.is_empty() {
            return self.error(format_args!(
                "upload {name}: nobody has joined its group yet; wait until downloaders run register-group {name}"
            ));
        }
        let members: Vec<String> = group.members.iter().map(|m| m.to_string()).collect();
        self.say(format!(
            "upload {name}: would send {} chunks to {} members: {}",
            group.manifest.chunk_count(),
            members.len(),
            members.join(", ")
        ));
        self.error("upload: the swarm is not wired in yet");
    }

    fn status(&mut self) {
        let me = match self.me {
            Some(p) => p.to_string(),
            None => "not yet welcomed".into(),
        };
        let mut lines = vec![format!(
            "status: {me}; tracker {}; dir {}",
            self.config.tracker_name,
            self.config.dir.display()
        )];
        if self.owned.is_empty() {
            lines.push("sharing: nothing".into());
        }
        for (name, (m, view)) in &self.owned {
            let members = view.as_ref().map_or(0, |v| v.members.len());
            lines.push(format!(
                "sharing: {name} ({} bytes, {} chunks, {})",
                m.size,
                m.chunk_count(),
                count(members, "member")
            ));
        }
        if self.joined.is_empty() {
            lines.push("downloading: nothing".into());
        }
        for (name, g) in &self.joined {
            lines.push(format!(
                "downloading: {name} from {} ({})",
                g.owner,
                count(g.members.len(), "member")
            ));
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
                self.me = Some(PeerInfo { id: peer_id, udp });
                debug!("tracker heartbeat every {} ms", heartbeat.as_millis());
                self.say(format!(
                    "{peer_id} online: tracker {}, rudp at {udp}, dir {}",
                    self.config.tracker_name,
                    self.config.dir.display()
                ));
            }
            TrackerEvent::Registered { req, name } => {
                if let Some(Pending::RegisterPeer(m)) = self.pending.remove(&req) {
                    self.say(format!(
                        "registered {name}: {} bytes, {} chunks, sha256 {}",
                        m.size,
                        m.chunk_count(),
                        hex(&m.file_hash)
                    ));
                    self.owned.insert(name, (m, None));
                }
            }
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
                        "  {}  {} bytes  {} chunks  owner {}{mine}  group {}",
                        f.name, f.size, f.chunk_count, f.owner, f.group_size
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
                    Some(Pending::Upload(_)) => {
                        self.note_group(view.clone(), false);
                        self.start_upload(view);
                    }
                    Some(Pending::RegisterGroup(name)) => {
                        let members: Vec<String> =
                            view.members.iter().map(|m| m.id.to_string()).collect();
                        self.say(format!(
                            "joined the group of {name}: owner {}, {} chunks, members: {}",
                            view.owner,
                            view.manifest.chunk_count(),
                            members.join(", ")
                        ));
                        self.joined.insert(name, view);
                    }
                    _ => self.note_group(view, true),
                }
            }
            TrackerEvent::Left { req, name } => {
                self.pending.remove(&req);
                self.joined.remove(&name);
                self.say(format!("left the group of {name}"));
            }
            TrackerEvent::GroupClosed { name } => {
                if let Some(g) = self.joined.remove(&name) {
                    self.say(format!(
                        "group {name}: closed, its owner {} went offline",
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
        };
        self.error(format_args!("{what}: {message}; {hint}"));
    }
}

/// "1 member", "2 members".
fn count(n: usize, what: &str) -> String {
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

fn read_lines(sender: &LoopSender) {
    let stdin = io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                if !send_line(sender, &line) {
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
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if !send_line(sender, &line) {
                    return Ok(());
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
