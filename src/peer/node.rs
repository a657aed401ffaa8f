//! A peer's swarms glued to its rudp [`Endpoint`], sans-IO.
//!
//! The [`Node`] keeps one [`Swarm`] per file and one rudp connection per
//! remote peer, shared by every swarm (messages name their file). It maps
//! `SocketAddr` to `ConnectionHandle`, encodes and decodes
//! [`crate::wire::swarm`] messages, turns swarm actions into endpoint calls,
//! and pulls chunks from the swarms only while a connection's
//! [`Endpoint::send_backlog`] is under [`NodeConfig::send_backlog_limit`]
//! (backpressure: memory stays bounded whatever the file size).
//!
//! The Node does not own the endpoint, so the same code runs under the real
//! driver and under `rudp::sim`. A driver does, for every input:
//! ```text
//! endpoint.handle_datagram(now, from, bytes);  node.process(now, &mut endpoint);
//! // at min(endpoint.poll_timeout(), node.poll_timeout()):
//! endpoint.handle_timeout(now);                node.handle_timeout(now, &mut endpoint);
//! // console / tracker commands:
//! node.add_swarm(swarm); node.on_group(now, &mut endpoint, file, owner, members);
//! node.start_upload(now, &mut endpoint, file)?;
//! // then send what the endpoint has: while let Some(t) = endpoint.poll_transmit(now, &mut buf) { .. }
//! // and print: while let Some(ev) = node.poll_event() { .. }
//! ```

use super::swarm::{Action, DownReason, Swarm, SwarmError};
use crate::manifest::{ChunkIndex, Digest32, CHUNK_SIZE};
use crate::rudp::{ConnectionError, ConnectionHandle, Endpoint, Event, Transmit};
use crate::wire::swarm::{Body, Message};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Another chunk is handed to a connection only while its unacknowledged
    /// bytes are below this. It must cover the path's bandwidth-delay product
    /// (1 MiB: 100 Mbit/s x 80 ms), and bounds the memory a connection holds.
    pub send_backlog_limit: usize,
    /// Bytes of chunks per second handed to all connections together
    /// (`--max-upload`; a token bucket with a burst of
    /// [`UPLOAD_BURST`] worth of time, at least two chunks); None = no cap.
    pub max_upload_rate: Option<u64>,
}

/// Under an upload cap, the next chunk is handed to rudp once less than this
/// much of the uplink's time is left unsent (`Node::unsent_limit`).
const UNSENT_AHEAD: std::time::Duration = std::time::Duration::from_millis(10);

/// The upload cap's bucket holds this much time's worth of bytes.
pub const UPLOAD_BURST: std::time::Duration = std::time::Duration::from_millis(50);

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            send_backlog_limit: 1 << 20,
            max_upload_rate: None,
        }
    }
}

/// What the peer process shows or logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// `chunk 17/31 from 10.0.0.3:7001` (print index + 1 of chunk_count).
    ChunkReceived {
        file: Digest32,
        index: ChunkIndex,
        chunk_count: u32,
        from: SocketAddr,
    },
    BadChunk {
        file: Digest32,
        index: ChunkIndex,
        from: SocketAddr,
    },
    PeerBanned {
        file: Digest32,
        peer: SocketAddr,
    },
    /// Owner: every chunk was handed to rudp for one member.
    UploadDone {
        file: Digest32,
    },
    /// Whole file verified and in place; `Node::swarm(file).stats()` has the
    /// per-source counts for the summary.
    Complete {
        file: Digest32,
        path: PathBuf,
    },
    StorageFailed {
        file: Digest32,
        reason: String,
    },
    NeighbourUp {
        peer: SocketAddr,
    },
    NeighbourDown {
        peer: SocketAddr,
        why: ConnectionError,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    UnknownFile,
    Swarm(SwarmError),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::UnknownFile => write!(f, "no swarm for that file"),
            NodeError::Swarm(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for NodeError {}

/// Messages the Node threw away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub undecodable: u64,
    pub unknown_file: u64,
    pub send_errors: u64,
}

#[derive(Debug, Clone, Copy)]
struct Handle {
    remote: SocketAddr,
    up: bool,
}

#[derive(Debug, Default)]
pub struct Node {
    config: NodeConfig,
    swarms: BTreeMap<Digest32, Swarm>,
    /// The connection used to send to each peer (opening or up).
    primary: BTreeMap<SocketAddr, ConnectionHandle>,
    /// Every connection we know of (two may join the same pair of peers
    /// when both opened at once; both deliver, one sends).
    handles: BTreeMap<ConnectionHandle, Handle>,
    events: VecDeque<NodeEvent>,
    counters: NodeCounters,
    /// Rotates which connection is served first among equals.
    turn: usize,
    /// Hellos for files we have no swarm for yet (at most
    /// [`EARLY_HELLOS`]): a peer that just joined a group can hear from the
    /// owner, who learnt of it from the tracker, before its own copy of the
    /// group (and so its swarm) arrives. `on_group` replays them.
    early_hellos: VecDeque<(SocketAddr, Message)>,
    /// Upload cap: bytes that may still be sent (negative: owed), as of
    /// `tokens_at`, and when the bucket is positive again if it ran dry.
    upload_tokens: f64,
    tokens_at: Option<Instant>,
    upload_wait: Option<Instant>,
}

/// Early Hellos kept (oldest dropped first); each is at most a bitmap.
pub const EARLY_HELLOS: usize = 64;

impl Node {
    pub fn new(config: NodeConfig) -> Node {
        Node {
            config,
            ..Node::default()
        }
    }

    /// Adds (or replaces) the swarm of a file.
    pub fn add_swarm(&mut self, swarm: Swarm) {
        self.swarms.insert(*swarm.file_hash(), swarm);
    }

    /// Stops taking part in a file's swarm; connections only it used close.
    pub fn remove_swarm(&mut self, now: Instant, ep: &mut Endpoint, file: &Digest32) {
        let Some(swarm) = self.swarms.remove(file) else {
            return;
        };
        for peer in swarm.neighbours() {
            self.close_if_unused(now, ep, peer);
        }
    }

    pub fn swarm(&self, file: &Digest32) -> Option<&Swarm> {
        self.swarms.get(file)
    }

    pub fn swarms(&self) -> impl Iterator<Item = &Swarm> {
        self.swarms.values()
    }

    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    /// Peers with an open connection.
    pub fn connected(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.primary
            .iter()
            .filter(|(_, h)| self.handles.get(h).is_some_and(|x| x.up))
            .map(|(&a, _)| a)
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// Earliest swarm deadline, or when the upload cap lets the next chunk
    /// go (the endpoint has its own `poll_timeout`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.swarms
            .values()
            .filter_map(|s| s.poll_timeout())
            .chain(self.upload_wait)
            .min()
    }

    /// The tracker's view of a file's group changed.
    pub fn on_group(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        file: &Digest32,
        owner: Option<SocketAddr>,
        members: &[SocketAddr],
    ) -> Result<(), NodeError> {
        let swarm = self.swarms.get_mut(file).ok_or(NodeError::UnknownFile)?;
        swarm.on_group(now, owner, members);
        let (early, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.early_hellos)
            .into_iter()
            .partition(|(_, m)| m.file == *file);
        self.early_hellos = rest;
        for (from, msg) in early {
            if self.up_handle(from).is_some() {
                if let Some(s) = self.swarms.get_mut(file) {
                    s.on_message(now, from, msg);
                }
            }
        }
        self.process(now, ep);
        Ok(())
    }

    /// The owner's `upload` command.
    pub fn start_upload(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        file: &Digest32,
    ) -> Result<(), NodeError> {
        let swarm = self.swarms.get_mut(file).ok_or(NodeError::UnknownFile)?;
        swarm.start_upload(now).map_err(NodeError::Swarm)?;
        self.process(now, ep);
        Ok(())
    }

    /// Call after the endpoint's `poll_timeout()` or the node's has passed
    /// (after `ep.handle_timeout(now)`).
    pub fn handle_timeout(&mut self, now: Instant, ep: &mut Endpoint) {
        for s in self.swarms.values_mut() {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        self.process(now, ep);
    }

    /// Takes in everything the endpoint reported and everything the swarms
    /// asked for, and hands chunks to connections with room, until quiet.
    /// Call after every `ep.handle_datagram` / `ep.handle_timeout`.
    pub fn process(&mut self, now: Instant, ep: &mut Endpoint) {
        loop {
            let mut busy = false;
            while let Some((h, ev)) = ep.poll_event() {
                busy = true;
                self.on_endpoint_event(now, ep, h, ev);
            }
            let mut actions = Vec::new();
            for (file, s) in self.swarms.iter_mut() {
                while let Some(a) = s.poll_action() {
                    actions.push((*file, a));
                }
            }
            busy |= !actions.is_empty();
            for (file, a) in actions {
                self.apply(now, ep, file, a);
            }
            busy |= self.pump_uploads(now, ep);
            if !busy {
                return;
            }
        }
    }

    fn on_endpoint_event(
        &mut self,
        now: Instant,
        ep: &mut Endpoint,
        h: ConnectionHandle,
        ev: Event,
    ) {
        match ev {
            Event::Connected => {
                let Some(remote) = ep.remote_address(h) else {
                    return;
                };
                let entry = self
                    .handles
                    .entry(h)
                    .or_insert(Handle { remote, up: false });
                entry.up = true;
                if let Some(&p) = self.primary.get(&remote) {
                    if p != h && self.handles.get(&p).is_some_and(|x| x.up) {
                        return; // a second connection to the same peer: receive only
                    }
                }
                self.primary.insert(remote, h);
                self.events
                    .push_back(NodeEvent::NeighbourUp { peer: remote });
                for s in self.swarms.values_mut() {
                    if s.knows(remote) || s.wanted().any(|w| w == remote) {
                        s.on_neighbour_up(now, remote);
                    }
                }
            }
            Event::Message(bytes) => {
                let Some(remote) = self.handles.get(&h).map(|x| x.remote) else {
                    return;
                };
                match Message::decode(&bytes) {
                    Err(_) => self.counters.undecodable += 1,
                    Ok(msg) => match self.swarms.get_mut(&msg.file) {
                        Some(s) => s.on_message(now, remote, msg),
                        None => {
                            self.counters.unknown_file += 1;
                            if matches!(msg.body, Body::Hello { .. }) {
                                if self.early_hellos.len() >= EARLY_HELLOS {
                                    self.early_hellos.pop_front();
                                }
                                self.early_hellos.push_back((remote, msg));
                            }
                        }
                    },
                }
            }
            Event::Closed(why) => {
                let Some(gone) = self.handles.remove(&h) else {
                    return;
                };
                if self.primary.get(&gone.remote) != Some(&h) {
                    return;
                }
                // Promote another connection to the same peer, if any.
                let other = self
                    .handles
                    .iter()
                    .find(|(_, x)| x.remote == gone.remote)
                    .map(|(&oh, x)| (oh, x.up));
                if let Some((oh, up)) = other {
                    self.primary.insert(gone.remote, oh);
                    if up || !gone.up {
                        return; // still connected, or still opening
                    }
                }
                if other.is_none() {
                    self.primary.remove(&gone.remote);
                    self.early_hellos.retain(|(a, _)| *a != gone.remote);
                }
                let reason = match why {
                    ConnectionError::LocallyClosed | ConnectionError::PeerClosed => {
                        DownReason::Closed
                    }
                    _ => DownReason::Failed,
                };
                self.events.push_back(NodeEvent::NeighbourDown {
                    peer: gone.remote,
                    why,
                });
                for s in self.swarms.values_mut() {
                    s.on_neighbour_down(now, gone.remote, reason);
                }
            }
        }
    }

    fn up_handle(&self, peer: SocketAddr) -> Option<ConnectionHandle> {
        let h = *self.primary.get(&peer)?;
        self.handles.get(&h).filter(|x| x.up).map(|_| h)
    }

    fn apply(&mut self, now: Instant, ep: &mut Endpoint, file: Digest32, action: Action) {
        match action {
            Action::Connect(peer) => {
                if self.up_handle(peer).is_some() {
                    if let Some(s) = self.swarms.get_mut(&file) {
                        s.on_neighbour_up(now, peer);
                    }
                } else if let std::collections::btree_map::Entry::Vacant(slot) =
                    self.primary.entry(peer)
                {
                    let h = ep.connect(now, peer);
                    slot.insert(h);
                    self.handles.insert(
                        h,
                        Handle {
                            remote: peer,
                            up: false,
                        },
                    );
                }
            }
            Action::Disconnect(peer) => self.close_if_unused(now, ep, peer),
            Action::Send {
                to,
                message,
                ordered,
            } => self.send(ep, to, &message, ordered),
            Action::ChunkReceived { index, from } => {
                let chunk_count = self
                    .swarms
                    .get(&file)
                    .map_or(0, |s| s.manifest().chunk_count());
                self.events.push_back(NodeEvent::ChunkReceived {
                    file,
                    index,
                    chunk_count,
                    from,
                });
            }
            Action::BadChunk { index, from } => {
                self.events
                    .push_back(NodeEvent::BadChunk { file, index, from })
            }
            Action::PeerBanned(peer) => self.events.push_back(NodeEvent::PeerBanned { file, peer }),
            Action::UploadDone => self.events.push_back(NodeEvent::UploadDone { file }),
            Action::Complete { path } => self.events.push_back(NodeEvent::Complete { file, path }),
            Action::StorageFailed(reason) => self
                .events
                .push_back(NodeEvent::StorageFailed { file, reason }),
        }
    }

    fn send(&mut self, ep: &mut Endpoint, to: SocketAddr, message: &Message, ordered: bool) {
        let Some(h) = self.up_handle(to) else {
            return; // the swarm hears of the closed connection
        };
        if ep.send(h, message.encode(), ordered).is_err() {
            self.counters.send_errors += 1;
        }
    }

    /// Closes the connections to `peer` unless a swarm still uses it.
    fn close_if_unused(&mut self, now: Instant, ep: &mut Endpoint, peer: SocketAddr) {
        if self.swarms.values().any(|s| s.is_neighbour(peer)) {
            return;
        }
        self.primary.remove(&peer);
        let hs: Vec<ConnectionHandle> = self
            .handles
            .iter()
            .filter(|(_, x)| x.remote == peer)
            .map(|(&h, _)| h)
            .collect();
        for h in hs {
            self.handles.remove(&h);
            ep.close(now, h);
        }
    }

    /// Refills the upload cap's bucket; false if it is empty (then
    /// `upload_wait` says when it is not).
    fn upload_allowed(&mut self, now: Instant) -> bool {
        let Some(rate) = self.config.max_upload_rate.filter(|&r| r > 0) else {
            return true;
        };
        let rate = rate as f64;
        let burst = (rate * UPLOAD_BURST.as_secs_f64()).max(2.0 * CHUNK_SIZE as f64);
        let elapsed = self.tokens_at.map_or(burst / rate, |t| {
            now.saturating_duration_since(t).as_secs_f64()
        });
        self.upload_tokens = (self.upload_tokens + elapsed * rate).min(burst);
        self.tokens_at = Some(now);
        if self.upload_tokens > 0.0 {
            self.upload_wait = None;
            return true;
        }
        let wait = std::time::Duration::from_secs_f64((1.0 - self.upload_tokens) / rate);
        self.upload_wait = Some(now + wait);
        false
    }

    /// How many bytes a connection may hold unacknowledged before it gets
    /// another chunk: its congestion window plus one chunk (so rudp always
    /// has the next chunk at hand), at least two chunks, at most
    /// `send_backlog_limit`. A chunk handed over sits in rudp's queue ahead
    /// of any later Have or Request on that connection, and can no longer
    /// be replaced by a rarer one, so the queue beyond what the window
    /// lets out is kept short.
    fn backlog_limit(&self, ep: &Endpoint, h: ConnectionHandle) -> usize {
        let chunk = CHUNK_SIZE as usize;
        let window = ep.stats(h).map_or(0, |s| s.cwnd as usize);
        window
            .saturating_add(chunk)
            .clamp(2 * chunk, self.config.send_backlog_limit.max(2 * chunk))
    }

    /// Under an upload cap, how many chunk bytes not yet sent once all
    /// connections together may hold before another chunk is handed over:
    /// what the capped uplink sends in [`UNSENT_AHEAD`] (at least 16 KB),
    /// enough to keep it busy until the loop's next turn. rudp sends its
    /// connections' data round-robin, so every chunk waiting in it shares
    /// the uplink with the others: the owner used to hand a chunk to each of
    /// its fifteen members at once, each came out at a fifteenth of its
    /// upload (0.6 s at 20 Mbit/s instead of 41 ms), and every hop of every
    /// chunk through the swarm took that long. Handed over this way, chunks
    /// leave one after the other at the full rate, and the choice of the
    /// next one (the rarest, the most urgent) is made as late as possible.
    /// None without a cap: the connections' own windows decide.
    fn unsent_limit(&self) -> Option<u64> {
        let rate = self.config.max_upload_rate.filter(|&r| r > 0)?;
        Some(((rate as f64 * UNSENT_AHEAD.as_secs_f64()) as u64).max(16_000))
    }

    /// Hands chunks to connections with room, within the upload cap; true
    /// if it sent any. Each time, the connection whose next chunk is most
    /// urgent (`Swarm::upload_rank`: the owner's first copies, then the
    /// rarest requested chunk) goes first, and connections take turns
    /// among equals, so a capped upload is shared and spent where it
    /// spreads the file the most.
    fn pump_uploads(&mut self, now: Instant, ep: &mut Endpoint) -> bool {
        let mut peers: Vec<(SocketAddr, ConnectionHandle)> = self
            .primary
            .iter()
            .filter(|(_, h)| self.handles.get(h).is_some_and(|x| x.up))
            .map(|(&a, &h)| (a, h))
            .collect();
        if self.swarms.is_empty() || peers.is_empty() {
            return false;
        }
        let turn = self.turn % peers.len();
        peers.rotate_left(turn);
        self.turn = self.turn.wrapping_add(1);
        let mut sent = false;
        let limit = self.unsent_limit();
        let mut unsent: u64 = match limit {
            Some(_) => peers.iter().map(|&(_, h)| ep.unsent_bytes(h)).sum(),
            None => 0,
        };
        loop {
            if !self.upload_allowed(now) || limit.is_some_and(|l| unsent >= l) {
                return sent;
            }
            // (rank, peer position, swarm) of the most urgent chunk.
            let mut best: Option<(u32, usize, Digest32)> = None;
            for (k, &(peer, h)) in peers.iter().enumerate() {
                if ep.send_backlog(h) >= self.backlog_limit(ep, h) {
                    continue;
                }
                for (file, s) in &self.swarms {
                    if let Some(rank) = s.upload_rank(peer) {
                        if best.is_none_or(|(r, _, _)| rank < r) {
                            best = Some((rank, k, *file));
                        }
                    }
                }
            }
            let Some((_, k, file)) = best else {
                return sent;
            };
            let (peer, h) = peers[k];
            let Some(msg) = self.swarms.get_mut(&file).and_then(|s| s.poll_upload(peer)) else {
                return sent;
            };
            sent = true;
            let bytes = msg.encode();
            unsent += bytes.len() as u64;
            if self.config.max_upload_rate.is_some() {
                self.upload_tokens -= bytes.len() as f64;
            }
            if ep.send(h, bytes, false).is_err() {
                self.counters.send_errors += 1;
            }
        }
    }
}

/// A [`Node`] together with the rudp [`Endpoint`] it drives: the whole
/// sans-IO peer, for a driver that owns one UDP socket and the clock.
/// ```text
/// loop {
///     // datagram from the socket:  peer.handle_datagram(now, from, &bytes);
///     // deadline passed:           peer.handle_timeout(now);
///     // console / tracker:         peer.add_swarm(..); peer.on_group(..); peer.start_upload(..);
///     while let Some(t) = peer.poll_transmit(now, &mut buf) { socket.send_to(&buf[..t.len], t.destination) }
///     while let Some(ev) = peer.poll_event() { print it }
///     sleep until peer.poll_timeout() or the socket is readable
/// }
/// ```
pub struct EndpointNode {
    pub endpoint: Endpoint,
    pub node: Node,
}

impl EndpointNode {
    pub fn new(endpoint: Endpoint, config: NodeConfig) -> Self {
        EndpointNode {
            endpoint,
            node: Node::new(config),
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.endpoint.handle_datagram(now, from, data);
        self.node.process(now, &mut self.endpoint);
    }

    /// Call once `poll_timeout()` has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.handle_timeout(now);
        self.node.handle_timeout(now, &mut self.endpoint);
    }

    /// The next datagram to send (see [`Endpoint::poll_transmit`]).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        self.endpoint.poll_transmit(now, buf)
    }

    /// The earliest of the endpoint's and the swarms' deadlines.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let e = self.endpoint.poll_timeout();
        let n = self.node.poll_timeout();
        match (e, n) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.node.poll_event()
    }

    pub fn add_swarm(&mut self, swarm: Swarm) {
        self.node.add_swarm(swarm);
    }

    pub fn remove_swarm(&mut self, now: Instant, file: &Digest32) {
        self.node.remove_swarm(now, &mut self.endpoint, file);
    }

    pub fn on_group(
        &mut self,
        now: Instant,
        file: &Digest32,
        owner: Option<SocketAddr>,
        members: &[SocketAddr],
    ) -> Result<(), NodeError> {
        self.node
            .on_group(now, &mut self.endpoint, file, owner, members)
    }

    pub fn start_upload(&mut self, now: Instant, file: &Digest32) -> Result<(), NodeError> {
        self.node.start_upload(now, &mut self.endpoint, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::peer::bitmap::ChunkBitmap;
    use crate::peer::storage::MemoryStore;
    use crate::peer::swarm::SwarmConfig;
    use crate::rudp::sim::Sim;
    use crate::rudp::Config;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn swarm(now: Instant, at: SocketAddr, m: &Manifest, data: Option<&[u8]>) -> Swarm {
        let n = m.chunk_count();
        let (store, have) = match data {
            Some(d) => (MemoryStore::with_file(m, d), ChunkBitmap::full(n)),
            None => (MemoryStore::empty(m), ChunkBitmap::empty(n)),
        };
        Swarm::new(
            now,
            m.clone(),
            at,
            Box::new(store),
            have,
            SwarmConfig::default(),
            7,
        )
    }

    /// The owner hears of a new member from the tracker and connects and
    /// says Hello before the member's own group view (and swarm) exists:
    /// the Hello is kept and replayed, and the member completes.
    #[test]
    fn a_hello_before_the_swarm_exists_is_replayed() {
        let (o, m) = (
            SocketAddr::from(([10, 0, 0, 1], 7001)),
            SocketAddr::from(([10, 0, 0, 2], 7001)),
        );
        let data: Vec<u8> = (0..350_000u32).map(|i| (i % 251) as u8).collect();
        let manifest = Manifest::of_bytes("f.bin", &data);
        let file = manifest.file_hash;
        let mut sim = Sim::new(1);
        sim.add_node(o, Endpoint::new(Config::default(), 1));
        sim.add_node(m, Endpoint::new(Config::default(), 2));
        let now = sim.now();
        let (mut owner, mut member) = (Node::default(), Node::default());
        owner.add_swarm(swarm(now, o, &manifest, Some(&data)));
        owner
            .on_group(now, sim.endpoint(o), &file, Some(o), &[m])
            .unwrap();
        owner.start_upload(now, sim.endpoint(o), &file).unwrap();
        let mut joined = false;
        for _ in 0..100_000 {
            sim.run_for(Duration::from_millis(1));
            let now = sim.now();
            owner.handle_timeout(now, sim.endpoint(o));
            member.handle_timeout(now, sim.endpoint(m));
            if !joined && member.early_hellos.len() == 1 {
                // Only now does the member's join reach it.
                joined = true;
                member.add_swarm(swarm(now, m, &manifest, None));
                member
                    .on_group(now, sim.endpoint(m), &file, Some(o), &[m])
                    .unwrap();
            }
            while let Some(ev) = member.poll_event() {
                if let NodeEvent::Complete { .. } = ev {
                    assert!(member.early_hellos.is_empty());
                    return;
                }
            }
        }
        panic!("joined {joined}: the member never completed");
    }

    /// With `max_upload_rate` the owner's chunks to two members together
    /// take at least size / rate of virtual time (not per connection);
    /// without it, far less. Under the cap, chunks are handed to rudp one
    /// at a time (its unsent bytes stay within one chunk of the limit).
    #[test]
    fn the_upload_cap_holds_for_all_connections_together() {
        let run = |cap: Option<u64>| -> Duration {
            let o = SocketAddr::from(([10, 0, 0, 1], 7001));
            let members = [
                SocketAddr::from(([10, 0, 0, 2], 7001)),
                SocketAddr::from(([10, 0, 0, 3], 7001)),
            ];
            let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 249) as u8).collect();
            let manifest = Manifest::of_bytes("f.bin", &data);
            let file = manifest.file_hash;
            let mut sim = Sim::new(3);
            let now = sim.now();
            let mut nodes = BTreeMap::new();
            for (i, &a) in std::iter::once(&o).chain(&members).enumerate() {
                // Each of the owner's connections paced at the cap too, as
                // the peer does: only the uplink as a whole holds more back.
                let config = Config {
                    max_send_rate: if a == o { cap } else { None },
                    ..Config::default()
                };
                sim.add_node(a, Endpoint::new(config, i as u64));
                let mut node = Node::new(NodeConfig {
                    max_upload_rate: if a == o { cap } else { None },
                    ..NodeConfig::default()
                });
                let d = (a == o).then_some(&data[..]);
                node.add_swarm(swarm(now, a, &manifest, d));
                node.on_group(now, sim.endpoint(a), &file, Some(o), &members)
                    .unwrap();
                nodes.insert(a, node);
            }
            let owner = nodes.get_mut(&o).unwrap();
            owner.start_upload(now, sim.endpoint(o), &file).unwrap();
            let mut done = 0;
            for _ in 0..200_000 {
                sim.run_for(Duration::from_millis(1));
                let now = sim.now();
                if let (Some(limit), Some(owner)) =
                    (nodes.get(&o).and_then(|n| n.unsent_limit()), nodes.get(&o))
                {
                    // Chunks are handed over one at a time as the uplink
                    // frees up, not one to every connection at once.
                    let ep = sim.endpoint(o);
                    let unsent: u64 = owner.primary.values().map(|&h| ep.unsent_bytes(h)).sum();
                    assert!(
                        unsent <= limit + CHUNK_SIZE as u64 + 100,
                        "{unsent} bytes unsent"
                    );
                }
                for (&a, node) in nodes.iter_mut() {
                    node.handle_timeout(now, sim.endpoint(a));
                    while let Some(ev) = node.poll_event() {
                        done += usize::from(matches!(ev, NodeEvent::Complete { .. }));
                    }
                }
                if done == 2 {
                    return sim.elapsed();
                }
            }
            panic!("cap {cap:?}: only {done} of 2 members completed");
        };
        // Each chunk leaves the owner once: 1 MB at 500 kB/s, less the
        // bucket's burst (two chunks, and one more sent on credit), is at
        // least 1.39 s (a cap per connection would let it go in about 1 s).
        let capped = run(Some(500_000));
        assert!(capped >= Duration::from_millis(1350), "{capped:?}");
        let free = run(None);
        assert!(free < Duration::from_millis(500), "{free:?}");
    }
}
