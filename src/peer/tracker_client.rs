//! The peer's side of the tracker session, sans-IO: requests go into an
//! output buffer, received bytes come in, and typed [`TrackerEvent`]s come
//! out. Heartbeats are timers held as data; the caller passes the time.
//!
//! The peer sends a heartbeat every `min(its own interval, the tracker's)`,
//! so the tracker (which drops a peer after 2.5 of its intervals of
//! silence) keeps it; it gives up on a tracker silent for 3 of the
//! tracker's intervals.

use crate::manifest::Manifest;
use crate::wire::tracker::{
    FileEntry, FrameBuffer, PeerId, PeerInfo, PeerMessage, RefusalCode, RequestId, TrackerMessage,
};
use crate::wire::Error as WireError;
use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Silence from the tracker, in its heartbeat intervals, after which the
/// session is considered dead.
pub const TRACKER_SILENCE_LIMIT: u32 = 3;

/// How long to wait for the tracker's `Welcome` at least.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);

/// Something the tracker told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerEvent {
    /// The session is up: our id, the rudp address others see for us, and the
    /// tracker's heartbeat interval.
    Welcome {
        peer_id: PeerId,
        udp: SocketAddr,
        heartbeat: Duration,
    },
    /// register-peer succeeded.
    Registered { req: RequestId, name: String },
    /// The answer to list.
    Files {
        req: RequestId,
        files: Vec<FileEntry>,
    },
    /// A group's current view: the answer to register-group (or to a fetch
    /// before upload) when `req` is set, a push after a change when it is not.
    /// Members are in join order.
    Group {
        req: Option<RequestId>,
        manifest: Manifest,
        owner: PeerInfo,
        members: Vec<PeerInfo>,
    },
    /// We left a group.
    Left { req: RequestId, name: String },
    /// A group we were in is gone: its owner went offline.
    GroupClosed { name: String },
    /// A request was refused; `req` is `None` when the tracker is closing the
    /// session for a protocol error.
    Refused {
        req: Option<RequestId>,
        code: RefusalCode,
        message: String,
    },
}

/// Why the tracker session is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerClientError {
    /// The tracker sent bytes we cannot decode.
    Wire(WireError),
    /// Nothing came from the tracker for this long.
    Silent(Duration),
}

impl fmt::Display for TrackerClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerClientError::Wire(e) => write!(f, "the tracker sent a bad frame: {e}"),
            TrackerClientError::Silent(d) => {
                write!(
                    f,
                    "the tracker has been silent for {:.1} s",
                    d.as_secs_f64()
                )
            }
        }
    }
}

impl std::error::Error for TrackerClientError {}

#[derive(Debug)]
pub struct TrackerClient {
    inbox: FrameBuffer,
    outbox: Vec<u8>,
    events: VecDeque<TrackerEvent>,
    next_req: RequestId,
    /// Our own heartbeat interval (the most we wait between two heartbeats).
    own_heartbeat: Duration,
    /// The tracker's, once welcomed.
    tracker_heartbeat: Option<Duration>,
    last_heard: Instant,
    next_heartbeat: Instant,
}

impl TrackerClient {
    /// Starts a session: queues the `Hello` with our rudp port and the IP to
    /// advertise (if not the one the tracker sees).
    pub fn new(
        now: Instant,
        udp_port: u16,
        advertise: Option<IpAddr>,
        heartbeat: Duration,
    ) -> Self {
        let mut client = TrackerClient {
            inbox: FrameBuffer::new(),
            outbox: Vec::new(),
            events: VecDeque::new(),
            next_req: 1,
            own_heartbeat: heartbeat,
            tracker_heartbeat: None,
            last_heard: now,
            next_heartbeat: now + heartbeat,
        };
        client.push(&PeerMessage::Hello {
            udp_port,
            advertise,
        });
        client
    }

    fn push(&mut self, msg: &PeerMessage) {
        msg.encode(&mut self.outbox);
    }

    fn request(&mut self, make: impl FnOnce(RequestId) -> PeerMessage) -> RequestId {
        let req = self.next_req;
        self.next_req = self.next_req.checked_add(1).unwrap_or(1);
        self.push(&make(req));
        req
    }

    pub fn register_file(&mut self, manifest: Manifest) -> RequestId {
        self.request(|req| PeerMessage::RegisterFile { req, manifest })
    }

    pub fn list(&mut self) -> RequestId {
        self.request(|req| PeerMessage::List { req })
    }

    pub fn join_group(&mut self, name: &str) -> RequestId {
        let name = name.to_string();
        self.request(|req| PeerMessage::JoinGroup { req, name })
    }

    pub fn leave_group(&mut self, name: &str) -> RequestId {
        let name = name.to_string();
        self.request(|req| PeerMessage::LeaveGroup { req, name })
    }

    pub fn get_group(&mut self, name: &str) -> RequestId {
        let name = name.to_string();
        self.request(|req| PeerMessage::GetGroup { req, name })
    }

    /// Bytes waiting to be written to the tracker.
    pub fn output(&self) -> &[u8] {
        &self.outbox
    }

    /// The first `n` bytes of [`output`](Self::output) were written.
    pub fn consume_output(&mut self, n: usize) {
        self.outbox.drain(..n.min(self.outbox.len()));
    }

    /// Bytes received from the tracker. An error ends the session.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Result<(), TrackerClientError> {
        self.inbox.extend(bytes);
        loop {
            let msg = match self.inbox.next_frame() {
                Ok(None) => break,
                Ok(Some(frame)) => TrackerMessage::decode(frame),
                Err(e) => Err(e),
            }
            .map_err(TrackerClientError::Wire)?;
            self.last_heard = now;
            self.handle_message(msg);
        }
        self.inbox.compact();
        Ok(())
    }

    fn handle_message(&mut self, msg: TrackerMessage) {
        let some = |req: RequestId| (req != 0).then_some(req);
        let event = match msg {
            TrackerMessage::Heartbeat => return,
            TrackerMessage::Welcome {
                peer_id,
                udp,
                heartbeat_ms,
            } => {
                let heartbeat = Duration::from_millis(heartbeat_ms.max(1) as u64);
                self.tracker_heartbeat = Some(heartbeat);
                self.next_heartbeat = self.next_heartbeat.min(self.last_heard + heartbeat);
                TrackerEvent::Welcome {
                    peer_id,
                    udp,
                    heartbeat,
                }
            }
            TrackerMessage::Registered { req, name } => TrackerEvent::Registered { req, name },
            TrackerMessage::Files { req, files } => TrackerEvent::Files { req, files },
            TrackerMessage::Group { req, group } => TrackerEvent::Group {
                req: some(req),
                manifest: group.manifest,
                owner: group.owner,
                members: group.members,
            },
            TrackerMessage::Left { req, name } => TrackerEvent::Left { req, name },
            TrackerMessage::GroupClosed { name } => TrackerEvent::GroupClosed { name },
            TrackerMessage::Refused { req, code, message } => TrackerEvent::Refused {
                req: some(req),
                code,
                message,
            },
        };
        self.events.push_back(event);
    }

    pub fn poll_event(&mut self) -> Option<TrackerEvent> {
        self.events.pop_front()
    }

    /// Interval between our heartbeats.
    fn send_interval(&self) -> Duration {
        match self.tracker_heartbeat {
            Some(t) => t.min(self.own_heartbeat),
            None => self.own_heartbeat,
        }
    }

    /// How long the tracker may stay silent.
    fn silence_limit(&self) -> Duration {
        match self.tracker_heartbeat {
            Some(t) => t * TRACKER_SILENCE_LIMIT,
            None => (self.own_heartbeat * TRACKER_SILENCE_LIMIT).max(WELCOME_TIMEOUT),
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Instant {
        self.next_heartbeat
            .min(self.last_heard + self.silence_limit())
    }

    /// Sends a heartbeat when one is due; an error if the tracker went silent.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), TrackerClientError> {
        let silent = now.saturating_duration_since(self.last_heard);
        if silent > self.silence_limit() {
            return Err(TrackerClientError::Silent(silent));
        }
        if now >= self.next_heartbeat {
            self.push(&PeerMessage::Heartbeat);
            self.next_heartbeat = now + self.send_interval();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tracker::LEN_PREFIX;

    fn sent(client: &mut TrackerClient) -> Vec<PeerMessage> {
        let mut fb = FrameBuffer::new();
        fb.extend(client.output());
        client.consume_output(client.output().len());
        let mut out = Vec::new();
        while let Some(f) = fb.next_frame().unwrap() {
            out.push(PeerMessage::decode(f).unwrap());
        }
        out
    }

    fn bytes(msg: TrackerMessage) -> Vec<u8> {
        let mut out = Vec::new();
        msg.encode(&mut out);
        out
    }

    #[test]
    fn hello_first_then_requests_with_distinct_ids() {
        let t0 = Instant::now();
        let mut c = TrackerClient::new(t0, 4000, None, Duration::from_secs(2));
        let a = c.list();
        let b = c.join_group("x");
        assert_ne!(a, b);
        assert_eq!(
            sent(&mut c),
            vec![
                PeerMessage::Hello {
                    udp_port: 4000,
                    advertise: None
                },
                PeerMessage::List { req: a },
                PeerMessage::JoinGroup {
                    req: b,
                    name: "x".into()
                },
            ]
        );
    }

    #[test]
    fn heartbeats_follow_the_faster_interval_and_silence_ends_the_session() {
        let t0 = Instant::now();
        let mut c = TrackerClient::new(t0, 4000, None, Duration::from_secs(2));
        sent(&mut c);
        let welcome = bytes(TrackerMessage::Welcome {
            peer_id: PeerId(7),
            udp: "127.0.0.1:4000".parse().unwrap(),
            heartbeat_ms: 100,
        });
        c.handle_bytes(t0, &welcome).unwrap();
        assert!(matches!(
            c.poll_event(),
            Some(TrackerEvent::Welcome {
                peer_id: PeerId(7),
                ..
            })
        ));
        assert_eq!(c.poll_timeout(), t0 + Duration::from_millis(100));
        c.handle_timeout(t0 + Duration::from_millis(100)).unwrap();
        assert_eq!(sent(&mut c), vec![PeerMessage::Heartbeat]);
        c.handle_timeout(t0 + Duration::from_millis(300)).unwrap();
        let hb = bytes(TrackerMessage::Heartbeat);
        c.handle_bytes(t0 + Duration::from_millis(300), &hb)
            .unwrap();
        assert_eq!(c.poll_event(), None);
        c.handle_timeout(t0 + Duration::from_millis(600)).unwrap();
        assert!(matches!(
            c.handle_timeout(t0 + Duration::from_millis(601)),
            Err(TrackerClientError::Silent(_))
        ));
    }

    #[test]
    fn pushes_have_no_request_id_and_bad_bytes_are_an_error() {
        let t0 = Instant::now();
        let mut c = TrackerClient::new(t0, 4000, None, Duration::from_secs(2));
        let closed = bytes(TrackerMessage::GroupClosed { name: "a".into() });
        // Delivered a byte at a time.
        for b in &closed {
            c.handle_bytes(t0, std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(
            c.poll_event(),
            Some(TrackerEvent::GroupClosed { name: "a".into() })
        );
        let mut bad = bytes(TrackerMessage::Heartbeat);
        bad[LEN_PREFIX] = 0x00;
        assert!(matches!(
            c.handle_bytes(t0, &bad),
            Err(TrackerClientError::Wire(WireError::BadMagic(0)))
        ));
    }
}
