//! The tracker's TCP server: one mio event loop over the listener and every
//! session, driving the pure [`Registry`].
//!
//! A session is online once it says `Hello`. Every heartbeat interval the
//! server sends each online session a heartbeat; a session from which no
//! whole frame arrived for [`SILENCE_LIMIT`] intervals (2.5) is dropped, and the
//! check runs every quarter interval, so a silently dead peer is gone within
//! 3 intervals. A session that breaks the protocol (bad bytes, an unknown
//! type, a huge length, a request before `Hello`) gets a `Refused` frame and
//! is closed; nobody else's state changes. A session whose unsent output
//! passes [`MAX_OUTBOX`] (it stopped reading) is closed too.

use super::registry::{Push, Refusal, Registry};
use crate::wire::tracker::{FrameBuffer, PeerId, PeerMessage, RefusalCode, TrackerMessage};
use crate::wire::tracker::{RequestId, MAX_FRAME_LEN};
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_SESSION: usize = 2;

/// Intervals of silence after which a session is dropped (checked every
/// quarter interval, so detection takes at most 2.75 intervals).
pub const SILENCE_LIMIT: f64 = 2.5;

/// Most unsent bytes a session may have queued before it is dropped.
pub const MAX_OUTBOX: usize = 4 * MAX_FRAME_LEN;

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How often the tracker sends heartbeats; silence of 2.5 of these drops a peer.
    pub heartbeat: Duration,
    /// Most sessions at once (beyond it, new connections are closed at once).
    pub max_sessions: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            heartbeat: DEFAULT_HEARTBEAT,
            max_sessions: 100_000,
        }
    }
}

/// Stops a running [`Server`] from another thread (a signal handler thread,
/// a test, a benchmark).
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!("cannot wake the tracker loop: {e}");
        }
    }
}

struct Session {
    stream: TcpStream,
    addr: SocketAddr,
    peer: Option<PeerId>,
    inbox: FrameBuffer,
    outbox: Vec<u8>,
    /// Whether WRITABLE interest is registered (output is waiting).
    wants_write: bool,
    last_heard: Instant,
}

/// Why a session ends (for the log).
enum Close {
    Eof,
    Io(io::Error),
    Protocol(String),
    Silent,
    SlowReader,
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::Eof => write!(f, "closed the connection"),
            Close::Io(e) => write!(f, "connection error: {e}"),
            Close::Protocol(why) => write!(f, "broke the protocol: {why}"),
            Close::Silent => write!(f, "stopped answering heartbeats"),
            Close::SlowReader => write!(f, "stopped reading ({MAX_OUTBOX} bytes queued)"),
        }
    }
}

pub struct Server {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    config: ServerConfig,
    registry: Registry,
    sessions: HashMap<Token, Session>,
    by_peer: HashMap<PeerId, Token>,
    next_token: usize,
    /// Sessions with output queued since the last flush.
    dirty: Vec<Token>,
    /// Sessions to close at the end of this iteration.
    closing: Vec<(Token, Close)>,
    /// accept() failed (out of descriptors): connections may wait in the
    /// backlog without a new readiness event, so retry every iteration.
    retry_accept: bool,
}

impl Server {
    pub fn bind(addr: SocketAddr, config: ServerConfig) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server {
            poll,
            listener,
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            config,
            registry: Registry::new(),
            sessions: HashMap::new(),
            by_peer: HashMap::new(),
            next_token: FIRST_SESSION,
            dirty: Vec::new(),
            closing: Vec::new(),
            retry_accept: false,
        })
    }

    /// The address really bound (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Serves until [`StopHandle::stop`] is called.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let check_every = self.config.heartbeat / 4;
        let mut next_check = Instant::now() + check_every;
        let mut next_heartbeat = Instant::now() + self.config.heartbeat;
        while !self.stop.load(Ordering::SeqCst) {
            let timeout = next_check.saturating_duration_since(Instant::now());
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    token => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(token);
                        }
                        if event.is_writable() {
                            self.dirty.push(token);
                        }
                    }
                }
            }
            if self.retry_accept {
                self.accept();
            }
            let now = Instant::now();
            if now >= next_check {
                self.check_silence(now);
                next_check = now + check_every;
            }
            if now >= next_heartbeat {
                self.heartbeat();
                next_heartbeat = now + self.config.heartbeat;
            }
            self.flush_dirty();
            self.close_pending();
        }
        info!(
            "tracker stopping: {} sessions, {} peers, {} files",
            self.sessions.len(),
            self.registry.peer_count(),
            self.registry.file_count()
        );
        Ok(())
    }

    fn accept(&mut self) {
        self.retry_accept = false;
        loop {
            match self.listener.accept() {
                Ok((mut stream, addr)) => {
                    if self.sessions.len() >= self.config.max_sessions {
                        warn!("refusing {addr}: {} sessions already", self.sessions.len());
                        refuse_full(&mut stream, self.sessions.len());
                        continue;
                    }
                    let token = Token(self.next_token);
                    self.next_token += 1;
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, token, Interest::READABLE)
                    {
                        warn!("cannot watch the connection from {addr}: {e}");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    debug!("connection from {addr}");
                    self.sessions.insert(
                        token,
                        Session {
                            stream,
                            addr,
                            peer: None,
                            inbox: FrameBuffer::new(),
                            outbox: Vec::new(),
                            wants_write: false,
                            last_heard: Instant::now(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, most likely: keep serving who we
                    // have, and try again once some session has ended.
                    warn!("accept failed: {e}");
                    self.retry_accept = true;
                    return;
                }
            }
        }
    }

    /// Reads all that is waiting on a session and handles each whole frame.
    fn read(&mut self, token: Token) {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let Some(session) = self.sessions.get_mut(&token) else {
                return;
            };
            match session.stream.read(&mut buf) {
                Ok(0) => {
                    self.closing.push((token, Close::Eof));
                    return;
                }
                Ok(n) => {
                    session.inbox.extend(&buf[..n]);
                    if !self.handle_frames(token) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.closing.push((token, Close::Io(e)));
                    return;
                }
            }
        }
    }

    /// Handles every whole frame in the session's inbox. False when the
    /// session broke the protocol and is closing.
    fn handle_frames(&mut self, token: Token) -> bool {
        loop {
            let Some(session) = self.sessions.get_mut(&token) else {
                return false;
            };
            let decoded = match session.inbox.next_frame() {
                Ok(None) => {
                    session.inbox.compact();
                    return true;
                }
                Ok(Some(frame)) => PeerMessage::decode(frame),
                Err(e) => Err(e),
            };
            session.last_heard = Instant::now();
            match decoded {
                Ok(msg) => {
                    if let Err(why) = self.handle(token, msg) {
                        self.protocol_error(token, why);
                        return false;
                    }
                }
                Err(e) => {
                    self.protocol_error(token, e.to_string());
                    return false;
                }
            }
        }
    }

    /// Tells the session what it did wrong, flushes, and closes it.
    fn protocol_error(&mut self, token: Token, why: String) {
        self.send(
            token,
            &TrackerMessage::Refused {
                req: 0,
                code: RefusalCode::Protocol,
                message: format!("{why}; closing the session"),
            },
        );
        self.flush(token);
        self.closing.push((token, Close::Protocol(why)));
    }

    /// Handles one message; an error is a protocol violation.
    fn handle(&mut self, token: Token, msg: PeerMessage) -> Result<(), String> {
        let Some(session) = self.sessions.get(&token) else {
            return Ok(());
        };
        let peer = match (session.peer, &msg) {
            (_, PeerMessage::Heartbeat) => return Ok(()),
            (
                None,
                PeerMessage::Hello {
                    udp_port,
                    advertise,
                },
            ) => {
                if *udp_port == 0 {
                    return Err("hello with rudp port 0".into());
                }
                let ip = match advertise {
                    Some(ip) if !ip.is_unspecified() => *ip,
                    _ => session.addr.ip().to_canonical(),
                };
                let udp = SocketAddr::new(ip, *udp_port);
                let peer = self.registry.connect(udp);
                info!("{peer} online from {}, rudp at {udp}", session.addr);
                if let Some(s) = self.sessions.get_mut(&token) {
                    s.peer = Some(peer);
                }
                self.by_peer.insert(peer, token);
                let heartbeat_ms = self.config.heartbeat.as_millis().min(u32::MAX as u128) as u32;
                self.send(
                    token,
                    &TrackerMessage::Welcome {
                        peer_id: peer,
                        udp,
                        heartbeat_ms,
                    },
                );
                return Ok(());
            }
            (Some(_), PeerMessage::Hello { .. }) => return Err("a second hello".into()),
            (None, _) => return Err("a request before hello".into()),
            (Some(peer), _) => peer,
        };
        let mut pushes = Vec::new();
        let (req, reply): (RequestId, Result<TrackerMessage, Refusal>) = match msg {
            PeerMessage::Heartbeat | PeerMessage::Hello { .. } => return Ok(()),
            PeerMessage::RegisterFile { req, manifest } => {
                let name = manifest.name.clone();
                let (size, chunks) = (manifest.size, manifest.chunk_count());
                let r = self.registry.register_file(peer, manifest);
                if r.is_ok() {
                    info!("{peer} shares {name} ({size} bytes, {chunks} chunks)");
                }
                (req, r.map(|()| TrackerMessage::Registered { req, name }))
            }
            PeerMessage::List { req } => {
                let files = self.registry.list();
                (req, Ok(TrackerMessage::Files { req, files }))
            }
            PeerMessage::JoinGroup { req, name } => {
                let r = self.registry.join_group(peer, &name, &mut pushes);
                if let Ok(g) = &r {
                    info!(
                        "{peer} joined {name} (member {} of the group)",
                        g.members.len()
                    );
                }
                (req, r.map(|group| TrackerMessage::Group { req, group }))
            }
            PeerMessage::LeaveGroup { req, name } => {
                let r = self.registry.leave_group(peer, &name, &mut pushes);
                if r.is_ok() {
                    info!("{peer} left {name}");
                }
                (req, r.map(|()| TrackerMessage::Left { req, name }))
            }
            PeerMessage::GetGroup { req, name } => {
                let r = self.registry.group(peer, &name);
                (req, r.map(|group| TrackerMessage::Group { req, group }))
            }
        };
        let reply = reply.unwrap_or_else(|refusal| {
            debug!("{peer}: refused: {refusal}");
            TrackerMessage::Refused {
                req,
                code: refusal.code(),
                message: refusal.to_string(),
            }
        });
        self.send(token, &reply);
        self.deliver(pushes);
        Ok(())
    }

    fn deliver(&mut self, pushes: Vec<Push>) {
        for push in pushes {
            let Some(&token) = self.by_peer.get(&push.to()) else {
                continue;
            };
            let msg = match push {
                Push::Group { group, .. } => TrackerMessage::Group { req: 0, group },
                Push::GroupClosed { name, .. } => TrackerMessage::GroupClosed { name },
            };
            self.send(token, &msg);
        }
    }

    /// Queues a message on a session (flushed at the end of the iteration).
    fn send(&mut self, token: Token, msg: &TrackerMessage) {
        let Some(session) = self.sessions.get_mut(&token) else {
            return;
        };
        if session.outbox.len() > MAX_OUTBOX {
            return; // already condemned; see flush
        }
        msg.encode(&mut session.outbox);
        self.dirty.push(token);
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for token in dirty.drain(..) {
            self.flush(token);
        }
        self.dirty = dirty;
    }

    /// Writes what the socket takes; watches for writability if some is left.
    fn flush(&mut self, token: Token) {
        let Some(session) = self.sessions.get_mut(&token) else {
            return;
        };
        let mut written = 0;
        while written < session.outbox.len() {
            match session.stream.write(&session.outbox[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.closing.push((token, Close::Io(e)));
                    return;
                }
            }
        }
        session.outbox.drain(..written);
        if session.outbox.len() > MAX_OUTBOX {
            self.closing.push((token, Close::SlowReader));
            return;
        }
        let wants_write = !session.outbox.is_empty();
        if wants_write != session.wants_write {
            let interest = if wants_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut session.stream, token, interest)
            {
                self.closing.push((token, Close::Io(e)));
                return;
            }
            session.wants_write = wants_write;
        }
    }

    fn check_silence(&mut self, now: Instant) {
        let limit = self.config.heartbeat.mul_f64(SILENCE_LIMIT);
        for (token, session) in &self.sessions {
            if now.saturating_duration_since(session.last_heard) > limit {
                self.closing.push((*token, Close::Silent));
            }
        }
    }

    fn heartbeat(&mut self) {
        let online: Vec<Token> = self.by_peer.values().copied().collect();
        for token in online {
            self.send(token, &TrackerMessage::Heartbeat);
        }
    }

    /// Closes every session marked this iteration; the peers leave the
    /// registry and whoever shared a group with them is told.
    fn close_pending(&mut self) {
        while let Some((token, why)) = self.closing.pop() {
            let Some(mut session) = self.sessions.remove(&token) else {
                continue;
            };
            let _ = self.poll.registry().deregister(&mut session.stream);
            match session.peer {
                Some(peer) => {
                    if matches!(why, Close::Protocol(_)) {
                        warn!("{peer} offline ({} {why})", session.addr);
                    } else {
                        info!("{peer} offline ({} {why})", session.addr);
                    }
                    self.by_peer.remove(&peer);
                    let mut pushes = Vec::new();
                    self.registry.disconnect(peer, &mut pushes);
                    self.deliver(pushes);
                }
                None if matches!(why, Close::Protocol(_)) => {
                    warn!("connection from {} dropped: {why}", session.addr)
                }
                None => debug!("connection from {} ended: {why}", session.addr),
            }
        }
        self.flush_dirty();
    }
}

/// Raises the soft limit on open descriptors to the hard limit, so that the
/// tracker can hold thousands of sessions. Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// Tells a client the tracker cannot take it (best effort: one write on a
/// fresh socket) before the connection is dropped.
fn refuse_full(stream: &mut TcpStream, sessions: usize) {
    let mut frame = Vec::new();
    TrackerMessage::Refused {
        req: 0,
        code: RefusalCode::Full,
        message: format!(
            "the tracker serves {sessions} sessions already, its --max-sessions; try again later"
        ),
    }
    .encode(&mut frame);
    let _ = stream.write(&frame);
}
