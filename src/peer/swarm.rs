//! The swarm of one file, as a sans-IO state machine (invariants in STATE.md).
//!
//! Inputs: the group from the tracker ([`Swarm::on_group`]), transport events
//! ([`Swarm::on_neighbour_up`], [`Swarm::on_neighbour_down`]), decoded swarm
//! messages ([`Swarm::on_message`]), time ([`Swarm::handle_timeout`]) and the
//! owner's `upload` command ([`Swarm::start_upload`]). Outputs: [`Action`]s
//! from [`Swarm::poll_action`], chunk uploads from [`Swarm::poll_upload`]
//! (pulled by the driver when the transport has room, which is the
//! backpressure), and [`Swarm::poll_timeout`]. Peers are keyed by the
//! SocketAddr their rudp endpoint receives on. Nothing here reads the clock
//! or touches a socket; all iteration is over ordered maps, so a run is a pure
//! function of its inputs and seed.

use super::bitmap::ChunkBitmap;
use super::overlay;
use super::picker::{PickMode, Picker};
use super::storage::{ChunkStore, DiskStore, StorageError};
use crate::manifest::{ChunkIndex, Digest32, Manifest, CHUNK_SIZE};
use crate::rng::Rng;
use crate::wire::swarm::{Body, Message, RejectReason};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Requests out to one neighbour at a time, at most: enough chunks to
    /// fill the path (8 x 100 KiB = 800 KiB covers 100 Mbit/s x 64 ms). The
    /// depth used is what the measured latency x rate of the neighbour needs
    /// plus one, between the min and this max: a slow (capped) neighbour gets
    /// few, so requests do not wait in its queue while another is idle.
    pub max_requests_per_neighbour: usize,
    /// Requests out to one neighbour at a time, at least.
    pub min_requests_per_neighbour: usize,
    /// Requests out to the owner at a time. The owner serves requests only
    /// once the first copy of every chunk is out, so these wait there at the
    /// lowest priority; they do not count as in flight for the picker (the
    /// chunk is still asked of neighbours), and the first copy to arrive
    /// cancels the rest. Four (was two) keep the owner's upload busier once
    /// its first copies are out, while the members' are still spreading the
    /// last ones (model 1+15: 1.27 -> 1.26 x the bound).
    pub max_owner_requests: usize,
    /// Most requests out for one chunk: when the first request is overdue
    /// (older than `late_factor` x the usual time a neighbour takes to
    /// answer), and in the endgame if `endgame_duplicates`.
    pub max_duplicates: u8,
    /// A request older than this many times the smoothed request latency
    /// may be doubled at another neighbour. Four (was two): in the last
    /// second every request waits in a busy neighbour's queue, and at two
    /// the doubles were duplicate uploads the members could not spare.
    pub late_factor: f64,
    /// BitTorrent's endgame: once every missing chunk is in flight, ask a
    /// second neighbour for any of them. Off: overdue requests are still
    /// doubled, and the others would only cost duplicate uploads when every
    /// upload is busy (`netlab swarm --peers 16`: members uploaded 4 MB of
    /// duplicates, 152 MB instead of 148, and the runs took 4.88-5.08 s
    /// instead of 4.86-4.92 s with this off and `late_factor` four).
    pub endgame_duplicates: bool,
    /// A request unanswered this long is cancelled and asked elsewhere.
    pub request_timeout: Duration,
    /// Ask the owner for a chunk no neighbour has offered for this long (per
    /// chunk, counted from when we first saw it missing and unoffered).
    pub owner_fallback_after: Duration,
    /// Also ask the owner, as a neighbour of the lowest priority, for rare
    /// chunks (see `assist_max_availability`) once the download has gone on
    /// for `owner_fallback_after`, so that its upload keeps working after
    /// the first copies are out (the last chunks pushed spread from it too).
    pub owner_assists: bool,
    /// The owner assists only with chunks at most this many neighbours
    /// offer (rare ones: the last chunks pushed, or those our part of the
    /// overlay lacks); common ones come from neighbours.
    pub assist_max_availability: u16,
    /// Wait between connection attempts to a wanted neighbour.
    pub reconnect_after: Duration,
    /// A member whose connection died is left out of the overlay this long
    /// (the tracker reports a dead peer within three heartbeats).
    pub suspect_for: Duration,
    /// Corrupted chunks after which a peer is never asked again.
    pub max_bad_chunks: u32,
    /// Requests from one peer queued here before we answer Busy.
    pub max_queued_requests: usize,
    /// Test-only switch: flip a byte of every chunk we serve.
    pub corrupt_uploads: bool,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            max_requests_per_neighbour: 8,
            min_requests_per_neighbour: 2,
            max_owner_requests: 4,
            max_duplicates: 2,
            late_factor: 4.0,
            endgame_duplicates: false,
            request_timeout: Duration::from_secs(30),
            owner_fallback_after: Duration::from_millis(500),
            owner_assists: true,
            assist_max_availability: 2,
            reconnect_after: Duration::from_secs(2),
            suspect_for: Duration::from_secs(30),
            max_bad_chunks: 3,
            max_queued_requests: 64,
            corrupt_uploads: false,
        }
    }
}

/// What the swarm asks its driver to do, or tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to this peer (if none is open or opening); report
    /// the outcome with `on_neighbour_up` / `on_neighbour_down`.
    Connect(SocketAddr),
    /// This swarm no longer needs the peer; close the connection unless
    /// another swarm uses it. The swarm already forgot the peer.
    Disconnect(SocketAddr),
    Send {
        to: SocketAddr,
        message: Message,
        /// Control messages are ordered; chunks (from `poll_upload`) are not.
        ordered: bool,
    },
    /// A chunk arrived, verified and written (one console line each).
    ChunkReceived { index: ChunkIndex, from: SocketAddr },
    /// A chunk failed its manifest check and was thrown away.
    BadChunk { index: ChunkIndex, from: SocketAddr },
    /// The peer served too many bad chunks; it is never asked again.
    PeerBanned(SocketAddr),
    /// Owner: every chunk of the upload has been handed to the transport
    /// for its member (each to one); the owner keeps serving requests.
    UploadDone,
    /// Every chunk verified, the whole file's SHA-256 checked, file in place.
    Complete { path: PathBuf },
    /// Storage failed; the swarm stops downloading.
    StorageFailed(String),
}

/// How many first copies each of `m` members (join order) gets, relative
/// to the others. A member with fewer overlay neighbours than the rest (with
/// an odd member count, one has two) passes each chunk on to fewer, so it
/// has upload to spare: a double share. Its neighbours carry its downloads
/// (it has only two sources): a fifth. Everyone else: one share. (Model of
/// `netlab swarm --peers 16`, `distribution_like_netlab` in
/// tests/swarm_logic.rs, members' uplinks 2% short for acknowledgements:
/// 4.77 -> 4.70 s median, with the owner serving the member furthest
/// behind first.)
fn first_copy_weights(m: usize) -> Vec<i64> {
    let adj = overlay::overlay_edges(m);
    let most = adj.iter().map(Vec::len).max().unwrap_or(0);
    let thin = |a: usize| adj[a].len() < most;
    (0..m)
        .map(|a| {
            if thin(a) {
                20
            } else if adj[a].iter().any(|&b| thin(b)) {
                2
            } else {
                10
            }
        })
        .collect()
}

/// True when some usable neighbour (not the owner, not banned, and not one
/// that served `i` corrupted) offers chunk `i`.
fn offered_by_neighbour(
    neighbours: &BTreeMap<SocketAddr, Neighbour>,
    owner: Option<SocketAddr>,
    bad: &BTreeSet<(SocketAddr, ChunkIndex)>,
    i: ChunkIndex,
) -> bool {
    neighbours
        .iter()
        .any(|(&a, m)| Some(a) != owner && !m.banned && m.has(i) && !bad.contains(&(a, i)))
}

/// The position and availability of the queued request whose chunk the
/// fewest neighbours hold (the earliest among equals).
fn rarest_queued(queue: &VecDeque<ChunkIndex>, picker: &Picker) -> Option<(usize, u16)> {
    queue
        .iter()
        .enumerate()
        .map(|(at, &i)| (at, picker.availability(i)))
        .min_by_key(|&(at, a)| (a, at))
}

/// Removes our request for `index` from `n`'s list, if there is one.
fn take_request(n: &mut Neighbour, index: ChunkIndex) -> Option<Asked> {
    let at = n.requests.iter().position(|r| r.index == index)?;
    Some(n.requests.swap_remove(at))
}

/// Whose file a disk-backed swarm is over (see [`Swarm::on_disk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskRole {
    Owner,
    Downloader,
}

/// How a connection ended, as the transport reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// The peer or we closed it.
    Closed,
    /// It died (no answer, idle timeout) or could not be opened.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmError {
    NotOwner,
    NoMembers,
}

impl fmt::Display for SwarmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwarmError::NotOwner => write!(f, "only the file's owner can upload it"),
            SwarmError::NoMembers => {
                write!(
                    f,
                    "the downloading group is empty: wait for peers to register-group"
                )
            }
        }
    }
}

impl std::error::Error for SwarmError {}

/// Counters for the summary and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmStats {
    /// Verified chunks received, by sender.
    pub received_from: BTreeMap<SocketAddr, u32>,
    /// Chunks served, by receiver.
    pub uploaded_to: BTreeMap<SocketAddr, u32>,
    pub bad_chunks: u64,
    /// Chunks that arrived when we had them already (endgame, pushes).
    pub duplicate_chunks: u64,
    /// Messages that made no sense (bad index, wrong chunk count, ...).
    pub protocol_errors: u64,
    pub requests_timed_out: u64,
    /// Requests to the owner for chunks no neighbour offered (fallback).
    pub owner_requests: u64,
    /// Requests to the owner as a helper (assist: rare chunks, once the
    /// download has gone on for `owner_fallback_after`).
    pub owner_assist_requests: u64,
    /// Owner: chunks pushed by `start_upload` (each to one member).
    pub pushed_chunks: u64,
}

#[derive(Debug)]
struct Neighbour {
    /// Its chunks, from its Hello and Haves; None until its Hello.
    bitmap: Option<ChunkBitmap>,
    hello_sent: bool,
    /// Our requests out to it.
    requests: Vec<Asked>,
    /// Its requests to us, in arrival order.
    serve_queue: VecDeque<ChunkIndex>,
    /// Chunks we sent it (the owner skips pushing those).
    served: ChunkBitmap,
    banned: bool,
    /// How fast it answers us, for the depth of our request pipeline.
    service: ServiceEstimate,
}

/// How a neighbour answers our requests: the shortest time from a request to
/// its chunk (a round trip plus one chunk's transmission when it is idle) and
/// the rate at which its chunks arrive while we keep it busy (our share of
/// its upload). Their product is the chunk bytes that fill the path to it.
#[derive(Debug, Clone, Copy, Default)]
struct ServiceEstimate {
    min_latency: Option<Duration>,
    /// Bytes per second, smoothed.
    rate: Option<f64>,
    last_arrival: Option<Instant>,
}

impl ServiceEstimate {
    /// A chunk of `len` bytes asked at `sent` arrived at `now`; `queued`:
    /// other requests of ours were out to it as well (it was busy with us,
    /// so the gap since the previous chunk measures its rate for us).
    fn on_chunk(&mut self, now: Instant, sent: Instant, len: usize, queued: bool) {
        let took = now.saturating_duration_since(sent);
        self.min_latency = Some(self.min_latency.map_or(took, |m| m.min(took)));
        if let Some(last) = self.last_arrival.filter(|_| queued) {
            let gap = now.saturating_duration_since(last).as_secs_f64().max(1e-6);
            let sample = len as f64 / gap;
            self.rate = Some(self.rate.map_or(sample, |r| 0.75 * r + 0.25 * sample));
        }
        self.last_arrival = Some(now);
    }

    /// Requests to keep out: enough to cover one latency at the rate, plus
    /// the one being served; `floor..=cap`.
    fn depth(&self, chunk: usize, floor: usize, cap: usize) -> usize {
        let (Some(lat), Some(rate)) = (self.min_latency, self.rate) else {
            return floor.min(cap);
        };
        let fill = (rate * lat.as_secs_f64() / chunk.max(1) as f64).ceil() as usize;
        (fill + 1).clamp(floor.min(cap), cap)
    }
}

impl Neighbour {
    fn has(&self, index: ChunkIndex) -> bool {
        self.bitmap.as_ref().is_some_and(|b| b.get(index))
    }

    fn asked(&self, index: ChunkIndex) -> bool {
        self.requests.iter().any(|r| r.index == index)
    }
}

/// One request of ours out to a neighbour.
#[derive(Debug, Clone, Copy)]
struct Asked {
    index: ChunkIndex,
    sent: Instant,
    deadline: Instant,
    /// Counted in `picker.in_flight` (requests to the owner are not).
    counted: bool,
}

pub struct Swarm {
    config: SwarmConfig,
    manifest: Manifest,
    file: Digest32,
    local: SocketAddr,
    store: Box<dyn ChunkStore + Send>,
    have: ChunkBitmap,
    picker: Picker,
    rng: Rng,
    owner: Option<SocketAddr>,
    /// Members in the tracker's join order (owner and duplicates removed).
    members: Vec<SocketAddr>,
    /// Peers we want connected: the owner and the overlay neighbours (for the
    /// owner: every member, once the upload started).
    desired: BTreeSet<SocketAddr>,
    /// Peers with an open connection.
    neighbours: BTreeMap<SocketAddr, Neighbour>,
    /// When we last asked for a connection to a desired peer not yet up.
    connecting: BTreeMap<SocketAddr, Instant>,
    /// Members whose connection died, left out of the overlay until then.
    suspects: BTreeMap<SocketAddr, Instant>,
    bad_counts: BTreeMap<SocketAddr, u32>,
    /// (peer, chunk) pairs that came corrupted: never asked again.
    bad_pairs: BTreeSet<(SocketAddr, ChunkIndex)>,
    /// Owner: chunks still to push to each member.
    push_queues: BTreeMap<SocketAddr, VecDeque<ChunkIndex>>,
    upload_started: bool,
    /// Every pushed chunk was handed to the transport (UploadDone emitted).
    upload_done: bool,
    /// Per chunk: since when no usable neighbour has offered it (as of the
    /// last look), for the owner fallback.
    unoffered_since: Vec<Option<Instant>>,
    /// When we first could ask the owner for anything.
    asking_since: Option<Instant>,
    /// Smoothed time from a request (counted) to its chunk.
    request_latency: Option<Duration>,
    fallback_at: Option<Instant>,
    complete: bool,
    failed: bool,
    /// A chunk read for serving did not match the manifest (the file
    /// changed on disk): nothing more is served from this store.
    serving_stopped: bool,
    actions: VecDeque<Action>,
    stats: SwarmStats,
}

impl fmt::Debug for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Swarm")
            .field("file", &self.manifest.name)
            .field("local", &self.local)
            .field("have", &self.have)
            .field("neighbours", &self.neighbours.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Swarm {
    /// A swarm for `manifest` at `local` (our rudp address as the group knows
    /// it), over `store`, which already holds the chunks in `have` (all of
    /// them for the owner; those resumed from disk for a member).
    pub fn new(
        _now: Instant,
        manifest: Manifest,
        local: SocketAddr,
        store: Box<dyn ChunkStore + Send>,
        have: ChunkBitmap,
        config: SwarmConfig,
        seed: u64,
    ) -> Swarm {
        let have = if have.len() == manifest.chunk_count() {
            have
        } else {
            ChunkBitmap::empty(manifest.chunk_count())
        };
        let mut s = Swarm {
            file: manifest.file_hash,
            picker: Picker::new(&have),
            config,
            manifest,
            local,
            store,
            have,
            rng: Rng::new(seed),
            owner: None,
            members: Vec::new(),
            desired: BTreeSet::new(),
            neighbours: BTreeMap::new(),
            connecting: BTreeMap::new(),
            suspects: BTreeMap::new(),
            bad_counts: BTreeMap::new(),
            bad_pairs: BTreeSet::new(),
            push_queues: BTreeMap::new(),
            upload_started: false,
            upload_done: false,
            unoffered_since: Vec::new(),
            asking_since: None,
            request_latency: None,
            fallback_at: None,
            complete: false,
            failed: false,
            serving_stopped: false,
            actions: VecDeque::new(),
            stats: SwarmStats::default(),
        };
        if s.have.is_full() {
            match s.store.finish() {
                Ok(_) => s.complete = true,
                Err(e) => s.fail(e.to_string()),
            }
        }
        s
    }

    /// A swarm over a file in `dir`: the owner serves `dir/<name>`; a
    /// downloader writes `dir/<name>.part` (resumed if one for this file is
    /// there) and renames it to `dir/<name>` once verified.
    pub fn on_disk(
        now: Instant,
        dir: &Path,
        role: DiskRole,
        manifest: Manifest,
        local: SocketAddr,
        config: SwarmConfig,
        seed: u64,
    ) -> Result<Swarm, StorageError> {
        let (store, have) = match role {
            DiskRole::Owner => (
                DiskStore::open_complete(dir, &manifest)?,
                ChunkBitmap::full(manifest.chunk_count()),
            ),
            DiskRole::Downloader => DiskStore::open_download(dir, &manifest)?,
        };
        Ok(Swarm::new(
            now,
            manifest,
            local,
            Box::new(store),
            have,
            config,
            seed,
        ))
    }

    pub fn file_hash(&self) -> &Digest32 {
        &self.file
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn have(&self) -> &ChunkBitmap {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    pub fn is_owner(&self) -> bool {
        self.owner == Some(self.local)
    }

    pub fn stats(&self) -> &SwarmStats {
        &self.stats
    }

    /// Peers with an open connection that this swarm uses.
    pub fn neighbours(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.neighbours.keys().copied()
    }

    pub fn is_neighbour(&self, peer: SocketAddr) -> bool {
        self.neighbours.contains_key(&peer)
    }

    /// True when `peer` is this file's owner or a member of its group.
    pub fn knows(&self, peer: SocketAddr) -> bool {
        self.owner == Some(peer) || self.members.contains(&peer)
    }

    /// Peers this swarm wants connected (owner and overlay neighbours).
    pub fn wanted(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.desired.iter().copied()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest time `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let requests = self
            .neighbours
            .values()
            .flat_map(|n| n.requests.iter().map(|r| r.deadline));
        let reconnects = self
            .connecting
            .values()
            .map(|&t| t + self.config.reconnect_after);
        let suspects = self.suspects.values().copied();
        requests
            .chain(reconnects)
            .chain(suspects)
            .chain(self.fallback_at)
            .min()
    }

    /// The group changed (or is first known): `owner` (None once it left) and
    /// the members in the tracker's join order. Recomputes the overlay,
    /// connects to new neighbours and drops ones no longer wanted.
    pub fn on_group(&mut self, now: Instant, owner: Option<SocketAddr>, members: &[SocketAddr]) {
        let mut list = Vec::with_capacity(members.len());
        for &m in members {
            if Some(m) != owner && !list.contains(&m) {
                list.push(m);
            }
        }
        self.owner = owner;
        self.members = list;
        let members = &self.members;
        self.suspects.retain(|a, _| members.contains(a));
        let gone: Vec<SocketAddr> = self
            .push_queues
            .keys()
            .filter(|a| !self.members.contains(a))
            .copied()
            .collect();
        for a in gone {
            self.reassign_pushes(a);
        }
        self.recompute_desired();
        let is_owner = self.is_owner();
        let prune: Vec<SocketAddr> = self
            .neighbours
            .keys()
            .filter(|&&a| {
                Some(a) != self.owner
                    && !self.desired.contains(&a)
                    && !(is_owner && self.members.contains(&a))
            })
            .copied()
            .collect();
        for a in prune {
            self.drop_neighbour(a);
            self.actions.push_back(Action::Disconnect(a));
        }
        self.maintain_connections(now);
        self.fill_requests(now);
    }

    /// Owner: start sending each chunk to exactly one member, round-robin
    /// over the members in join order; the owner stays connected and serves
    /// requests afterwards.
    pub fn start_upload(&mut self, now: Instant) -> Result<(), SwarmError> {
        if !self.is_owner() || !self.have.is_full() {
            return Err(SwarmError::NotOwner);
        }
        if self.members.is_empty() {
            return Err(SwarmError::NoMembers);
        }
        self.upload_started = true;
        self.upload_done = false;
        self.push_queues.clear();
        let weights = first_copy_weights(self.members.len());
        let total: i64 = weights.iter().sum();
        let mut credit = vec![0i64; weights.len()];
        for i in 0..self.manifest.chunk_count() {
            // Smooth weighted round-robin: with equal weights, the members
            // in join order, one round after the other.
            for (c, w) in credit.iter_mut().zip(&weights) {
                *c += w;
            }
            let mut at = 0;
            for k in 1..credit.len() {
                if credit[k] > credit[at] {
                    at = k;
                }
            }
            credit[at] -= total;
            self.push_queues
                .entry(self.members[at])
                .or_default()
                .push_back(i);
        }
        self.recompute_desired();
        self.maintain_connections(now);
        Ok(())
    }

    /// A connection to `peer` is open.
    pub fn on_neighbour_up(&mut self, now: Instant, peer: SocketAddr) {
        self.connecting.remove(&peer);
        if self.suspects.remove(&peer).is_some() {
            self.recompute_desired();
        }
        if self.neighbours.contains_key(&peer) {
            return;
        }
        let member = Some(peer) != self.owner && self.members.contains(&peer);
        if member && !self.is_owner() && !self.desired.contains(&peer) {
            // Opened under an overlay we no longer share (a newer or older
            // group); whoever is behind catches up with the next group push.
            self.actions.push_back(Action::Disconnect(peer));
            return;
        }
        self.neighbours.insert(
            peer,
            Neighbour {
                bitmap: None,
                hello_sent: false,
                requests: Vec::new(),
                serve_queue: VecDeque::new(),
                served: ChunkBitmap::empty(self.manifest.chunk_count()),
                banned: self.is_banned(peer),
                service: ServiceEstimate::default(),
            },
        );
        if Some(peer) == self.owner || self.members.contains(&peer) {
            self.send_hello(peer);
        }
        self.fill_requests(now);
    }

    /// The connection to `peer` closed, died, or could not be opened. A
    /// member whose connection failed is left out of the overlay for a while,
    /// so it gets replaced; a closed one is retried after `reconnect_after`
    /// if we still want it.
    pub fn on_neighbour_down(&mut self, now: Instant, peer: SocketAddr, reason: DownReason) {
        let known = self.neighbours.contains_key(&peer) || self.connecting.contains_key(&peer);
        if !known {
            return;
        }
        self.drop_neighbour(peer);
        let member = Some(peer) != self.owner && self.members.contains(&peer);
        if reason == DownReason::Failed && member && !self.is_owner() {
            self.suspects.insert(peer, now + self.config.suspect_for);
            self.recompute_desired();
        } else if self.desired.contains(&peer) && self.we_initiate(peer) {
            self.connecting.insert(peer, now);
        }
        if self.is_owner() {
            self.reassign_pushes(peer);
        }
        self.maintain_connections(now);
        self.fill_requests(now);
    }

    /// A decoded swarm message from `from`.
    pub fn on_message(&mut self, now: Instant, from: SocketAddr, message: Message) {
        if message.file != self.file {
            self.stats.protocol_errors += 1;
            return;
        }
        if !self.neighbours.contains_key(&from) {
            if !matches!(message.body, Body::Hello { .. }) {
                self.stats.protocol_errors += 1;
                return;
            }
            self.on_neighbour_up(now, from);
        }
        let count = self.manifest.chunk_count();
        let index = match &message.body {
            Body::Hello { .. } => 0,
            Body::Have { index }
            | Body::Request { index }
            | Body::Cancel { index }
            | Body::Reject { index, .. }
            | Body::Chunk { index, .. } => *index,
        };
        if index >= count && !matches!(message.body, Body::Hello { .. }) {
            self.stats.protocol_errors += 1;
            return;
        }
        match message.body {
            Body::Hello {
                chunk_count,
                bitmap,
            } => self.on_hello(now, from, chunk_count, &bitmap),
            Body::Have { index } => self.on_have(now, from, index),
            Body::Request { index } => self.on_request(from, index),
            Body::Cancel { index } => {
                if let Some(n) = self.neighbours.get_mut(&from) {
                    n.serve_queue.retain(|&i| i != index);
                }
            }
            Body::Reject { index, reason } => self.on_reject(now, from, index, reason),
            Body::Chunk { index, data } => self.on_chunk(now, from, index, &data),
        }
    }

    /// Call when `poll_timeout()` has passed: expires requests, retries
    /// connections, ends suspicions, and asks the owner when stalled.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (&a, n) in self.neighbours.iter_mut() {
            n.requests.retain(|&r| {
                if r.deadline <= now {
                    expired.push((a, r));
                    false
                } else {
                    true
                }
            });
        }
        for (a, r) in expired {
            self.request_ended(r);
            self.stats.requests_timed_out += 1;
            self.send(a, Body::Cancel { index: r.index });
        }
        let before = self.suspects.len();
        self.suspects.retain(|_, &mut until| until > now);
        if self.suspects.len() != before {
            self.recompute_desired();
        }
        self.maintain_connections(now);
        self.fill_requests(now);
    }

    /// The next chunk to send to `peer`, if any: (owner) the chunks assigned
    /// to it while any first copy is still to go, then its requests, the
    /// chunk fewest of our neighbours hold first (it spreads the most). The
    /// driver calls this whenever the connection to `peer` has room, and
    /// sends the message unordered.
    pub fn poll_upload(&mut self, peer: SocketAddr) -> Option<Message> {
        // The owner serves nothing before its `upload`, and its first copies
        // go before any request: every chunk must leave it once, and its
        // upload is the scarcest early on.
        if self.serving_stopped {
            return None;
        }
        let pushing = self.owner_holds_requests();
        let n = self.neighbours.get_mut(&peer)?;
        let queued = match rarest_queued(&n.serve_queue, &self.picker) {
            Some((at, _)) if !pushing => n.serve_queue.remove(at),
            _ => None,
        };
        let index = match queued {
            Some(i) => i,
            None => {
                let q = self.push_queues.get_mut(&peer)?;
                let mut next = None;
                while let Some(i) = q.pop_front() {
                    if !n.has(i) && !n.served.get(i) {
                        next = Some(i);
                        break;
                    }
                }
                if self.upload_started
                    && !self.upload_done
                    && self.push_queues.values().all(|q| q.is_empty())
                {
                    self.upload_done = true;
                    self.actions.push_back(Action::UploadDone);
                }
                self.stats.pushed_chunks += next.is_some() as u64;
                next?
            }
        };
        let mut data = match self.store.read_chunk(index) {
            Ok(d) => d,
            Err(e) => {
                self.fail(e.to_string());
                return None;
            }
        };
        // Never send what the manifest does not vouch for (an owner's file
        // edited after register-peer): the receiver would throw it away
        // and ask again, for ever.
        if !self.manifest.verify_chunk(index, &data) {
            self.serving_stopped = true;
            self.fail(format!(
                "chunk {} of {} on disk no longer matches the SHA-256 taken when it was registered (the file changed on disk); no longer serving it",
                u64::from(index) + 1,
                self.manifest.chunk_count()
            ));
            return None;
        }
        n.served.set(index);
        if self.config.corrupt_uploads {
            if let Some(b) = data.first_mut() {
                *b ^= 0xFF;
            }
        }
        *self.stats.uploaded_to.entry(peer).or_default() += 1;
        Some(Message::new(self.file, Body::Chunk { index, data }))
    }

    /// How urgent the next chunk `poll_upload(peer)` would give is, lower
    /// first (None: nothing to send): for the owner's first copies, the
    /// chunk's index (so they leave in file order, and the members each get
    /// one in turn, one round after the other: the sooner every member has
    /// something to pass on, the sooner every uplink works); else the chunk
    /// count plus one more than the number of our neighbours holding the
    /// rarest chunk `peer` asked for. A driver whose upload is capped serves
    /// the connection with the lowest rank, so the rarest chunks spread
    /// first.
    pub fn upload_rank(&self, peer: SocketAddr) -> Option<u32> {
        if self.serving_stopped {
            return None;
        }
        let n = self.neighbours.get(&peer)?;
        if self.owner_holds_requests() {
            let q = self.push_queues.get(&peer)?;
            return q.iter().copied().find(|&i| !n.has(i) && !n.served.get(i));
        }
        let count = self.manifest.chunk_count() as u64 + 1;
        let members = self.members.len() as u64 + 1;
        rarest_queued(&n.serve_queue, &self.picker).map(|(_, a)| {
            // The owner (its first copies out) serves the member furthest
            // behind first: the last to complete sets the distribution
            // time, and the one with the fewest sources (two overlay
            // neighbours) falls behind most. (Model, as for
            // `first_copy_weights`: 4.88 -> 4.77 s.)
            let behind = if self.is_owner() {
                let held = n.bitmap.as_ref().map_or(0, ChunkBitmap::count) as u64;
                held * members
            } else {
                0
            };
            (count + behind + a as u64).min(u32::MAX as u64) as u32
        })
    }

    /// Owner: requests wait until the upload started and every first copy
    /// is out.
    fn owner_holds_requests(&self) -> bool {
        self.is_owner()
            && (!self.upload_started || self.push_queues.values().any(|q| !q.is_empty()))
    }

    /// True when `poll_upload(peer)` may yield a chunk.
    pub fn wants_to_upload(&self, peer: SocketAddr) -> bool {
        self.upload_rank(peer).is_some()
    }

    // ---- message handlers ----

    fn on_hello(&mut self, now: Instant, from: SocketAddr, chunk_count: u32, bytes: &[u8]) {
        let bitmap = match ChunkBitmap::from_bytes(self.manifest.chunk_count(), bytes) {
            Ok(b) if chunk_count == self.manifest.chunk_count() => b,
            _ => {
                self.stats.protocol_errors += 1;
                return;
            }
        };
        let counts = Some(from) != self.owner;
        let Some(n) = self.neighbours.get_mut(&from) else {
            return;
        };
        if counts && !n.banned {
            if let Some(old) = &n.bitmap {
                self.picker.remove_bitmap(old);
            }
            self.picker.add_bitmap(&bitmap);
        }
        n.bitmap = Some(bitmap);
        let reply = !n.hello_sent;
        if reply {
            self.send_hello(from);
        }
        self.fill_requests(now);
    }

    fn on_have(&mut self, now: Instant, from: SocketAddr, index: ChunkIndex) {
        let counts = Some(from) != self.owner;
        let count = self.manifest.chunk_count();
        let Some(n) = self.neighbours.get_mut(&from) else {
            return;
        };
        let bitmap = n.bitmap.get_or_insert_with(|| ChunkBitmap::empty(count));
        if bitmap.set(index) && counts && !n.banned {
            self.picker.add_have(index);
        }
        self.fill_requests(now);
    }

    fn on_request(&mut self, from: SocketAddr, index: ChunkIndex) {
        let max = self.config.max_queued_requests;
        let have = self.have.get(index);
        let Some(n) = self.neighbours.get_mut(&from) else {
            return;
        };
        let reason = if !have {
            RejectReason::NotHave
        } else if n.serve_queue.len() >= max {
            RejectReason::Busy
        } else {
            if !n.serve_queue.contains(&index) {
                n.serve_queue.push_back(index);
            }
            return;
        };
        self.send(from, Body::Reject { index, reason });
    }

    fn on_reject(&mut self, now: Instant, from: SocketAddr, index: ChunkIndex, why: RejectReason) {
        let counts = Some(from) != self.owner;
        let Some(n) = self.neighbours.get_mut(&from) else {
            return;
        };
        let ended = take_request(n, index);
        if why == RejectReason::NotHave {
            let cleared = n.bitmap.as_mut().is_some_and(|b| b.clear(index));
            if cleared && counts && !n.banned {
                self.picker.remove_have(index);
            }
        }
        if let Some(r) = ended {
            self.request_ended(r);
        }
        self.fill_requests(now);
    }

    fn on_chunk(&mut self, now: Instant, from: SocketAddr, index: ChunkIndex, data: &[u8]) {
        let arrived = self.neighbours.get_mut(&from).and_then(|n| {
            let queued = n.requests.len() > 1;
            let r = take_request(n, index)?;
            n.service.on_chunk(now, r.sent, data.len(), queued);
            Some(r)
        });
        if let Some(r) = arrived {
            if r.counted {
                let took = now.saturating_duration_since(r.sent);
                self.request_latency = Some(match self.request_latency {
                    None => took,
                    Some(l) => (l * 7 + took) / 8,
                });
            }
            self.request_ended(r);
        }
        if self.have.get(index) || self.failed {
            self.stats.duplicate_chunks += 1;
            self.fill_requests(now);
            return;
        }
        if !self.manifest.verify_chunk(index, data) {
            self.stats.bad_chunks += 1;
            self.actions.push_back(Action::BadChunk { index, from });
            self.bad_pairs.insert((from, index));
            let bad = self.bad_counts.entry(from).or_default();
            *bad += 1;
            if *bad >= self.config.max_bad_chunks {
                self.ban(from);
            }
            self.fill_requests(now);
            return;
        }
        if let Err(e) = self.store.write_chunk(index, data) {
            self.fail(e.to_string());
            return;
        }
        self.have.set(index);
        self.picker.received(index);
        *self.stats.received_from.entry(from).or_default() += 1;
        self.actions
            .push_back(Action::ChunkReceived { index, from });
        // Cancel the other requests for it (endgame) and announce it (to
        // the owner too: it serves the rarest chunks first once its first
        // copies are out).
        let mut cancels = Vec::new();
        let mut haves = Vec::new();
        for (&a, n) in self.neighbours.iter_mut() {
            if let Some(r) = take_request(n, index) {
                if r.counted {
                    self.picker.request_ended(index);
                }
                cancels.push(a);
            }
            if n.hello_sent && (Some(a) == self.owner || !n.has(index)) {
                haves.push(a);
            }
        }
        for a in cancels {
            self.send(a, Body::Cancel { index });
        }
        for a in haves {
            self.send(a, Body::Have { index });
        }
        if self.have.is_full() {
            match self.store.finish() {
                Ok(path) => {
                    self.complete = true;
                    self.fallback_at = None;
                    self.actions.push_back(Action::Complete { path });
                }
                Err(e) => self.fail(e.to_string()),
            }
            return;
        }
        self.fill_requests(now);
    }

    // ---- internals ----

    /// A request left its neighbour's list: the picker hears of it if it
    /// counted.
    fn request_ended(&mut self, r: Asked) {
        if r.counted {
            self.picker.request_ended(r.index);
        }
    }

    fn send(&mut self, to: SocketAddr, body: Body) {
        self.actions.push_back(Action::Send {
            to,
            message: Message::new(self.file, body),
            ordered: true,
        });
    }

    fn send_hello(&mut self, to: SocketAddr) {
        if let Some(n) = self.neighbours.get_mut(&to) {
            n.hello_sent = true;
        }
        let body = Body::Hello {
            chunk_count: self.manifest.chunk_count(),
            bitmap: self.have.to_bytes(),
        };
        self.send(to, body);
    }

    fn fail(&mut self, why: String) {
        self.failed = true;
        self.fallback_at = None;
        self.actions.push_back(Action::StorageFailed(why));
    }

    fn is_banned(&self, peer: SocketAddr) -> bool {
        self.bad_counts.get(&peer).copied().unwrap_or(0) >= self.config.max_bad_chunks
    }

    fn ban(&mut self, peer: SocketAddr) {
        let counts = Some(peer) != self.owner;
        let Some(n) = self.neighbours.get_mut(&peer) else {
            return;
        };
        if n.banned {
            return;
        }
        n.banned = true;
        for r in n.requests.drain(..) {
            if r.counted {
                self.picker.request_ended(r.index);
            }
        }
        if counts {
            if let Some(b) = &n.bitmap {
                self.picker.remove_bitmap(b);
            }
        }
        self.actions.push_back(Action::PeerBanned(peer));
    }

    /// Forgets `peer`'s connection state: its requests go back to the picker,
    /// its chunks no longer count as available.
    fn drop_neighbour(&mut self, peer: SocketAddr) {
        self.connecting.remove(&peer);
        let Some(n) = self.neighbours.remove(&peer) else {
            return;
        };
        for r in n.requests {
            self.request_ended(r);
        }
        if Some(peer) != self.owner && !n.banned {
            if let Some(b) = &n.bitmap {
                self.picker.remove_bitmap(b);
            }
        }
    }

    /// Owner: hands the chunks still queued for `peer` to the other members,
    /// round-robin, so that each chunk still reaches some member.
    fn reassign_pushes(&mut self, peer: SocketAddr) {
        let Some(queue) = self.push_queues.remove(&peer) else {
            return;
        };
        let targets: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|&&m| m != peer && !self.suspects.contains_key(&m))
            .copied()
            .collect();
        if targets.is_empty() {
            return;
        }
        for (k, i) in queue.into_iter().enumerate() {
            let t = targets[k % targets.len()];
            self.push_queues.entry(t).or_default().push_back(i);
        }
    }

    fn recompute_desired(&mut self) {
        self.desired.clear();
        if self.is_owner() {
            if self.upload_started {
                self.desired.extend(self.members.iter().copied());
            }
            return;
        }
        let alive: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|&&m| m == self.local || !self.suspects.contains_key(&m))
            .copied()
            .collect();
        self.desired
            .extend(overlay::member_neighbours(&alive, self.local));
        if let Some(o) = self.owner {
            self.desired.insert(o);
        }
    }

    /// Who opens the connection between us and `peer`: the owner opens to
    /// members; between members, the lower address.
    fn we_initiate(&self, peer: SocketAddr) -> bool {
        if self.is_owner() {
            return true;
        }
        Some(peer) != self.owner && self.local < peer
    }

    fn maintain_connections(&mut self, now: Instant) {
        let desired = &self.desired;
        let neighbours = &self.neighbours;
        self.connecting
            .retain(|a, _| desired.contains(a) && !neighbours.contains_key(a));
        let targets: Vec<SocketAddr> = self
            .desired
            .iter()
            .filter(|&&a| !self.neighbours.contains_key(&a) && self.we_initiate(a))
            .copied()
            .collect();
        for a in targets {
            let due = match self.connecting.get(&a) {
                None => true,
                Some(&t) => now >= t + self.config.reconnect_after,
            };
            if due {
                self.connecting.insert(a, now);
                self.actions.push_back(Action::Connect(a));
            }
        }
    }

    /// Fills every neighbour's request slots, rarest first, then the
    /// owner's (`ask_owner`).
    fn fill_requests(&mut self, now: Instant) {
        if self.have.is_full() || self.failed {
            self.fallback_at = None;
            return;
        }
        let mode = PickMode::Neighbour {
            max_duplicates: self.config.max_duplicates,
            endgame: self.config.endgame_duplicates,
        };
        let mut candidates: Vec<SocketAddr> = self
            .neighbours
            .iter()
            .filter(|(&a, n)| Some(a) != self.owner && !n.banned && n.bitmap.is_some())
            .map(|(&a, _)| a)
            .collect();
        // Level by level, so that a chunk several neighbours offer goes to
        // the one with the fewest requests out (join the shortest queue),
        // starting at a random neighbour: no neighbour is favoured by its
        // address, and a slow one does not collect every request.
        if !candidates.is_empty() {
            let r = self.rng.below(candidates.len() as u64) as usize;
            candidates.rotate_left(r);
        }
        let chunk = CHUNK_SIZE as usize;
        let (floor, cap) = (
            self.config.min_requests_per_neighbour,
            self.config.max_requests_per_neighbour,
        );
        // (outstanding, depth) of a candidate.
        let slots = |s: &Swarm, a: &SocketAddr| {
            s.neighbours.get(a).map_or((0, 0), |n| {
                (n.requests.len(), n.service.depth(chunk, floor, cap))
            })
        };
        let lowest = candidates
            .iter()
            .map(|a| slots(self, a).0)
            .min()
            .unwrap_or(0);
        for level in lowest + 1..=cap {
            let mut asked = false;
            let mut k = 0;
            while k < candidates.len() {
                let a = candidates[k];
                let (before, depth) = slots(self, &a);
                if before >= level.min(depth) {
                    if before >= depth {
                        candidates.remove(k);
                    } else {
                        k += 1;
                    }
                    continue;
                }
                if self.request_from(now, a, level, mode, |_| false) == 0 {
                    // Nothing more to ask of it this time.
                    candidates.remove(k);
                    continue;
                }
                asked = true;
                k += 1;
            }
            if !asked && candidates.is_empty() {
                break;
            }
        }
        self.fallback_at = None;
        self.ask_owner(now);
    }

    /// Asks the owner, up to `max_owner_requests` out: first for chunks no
    /// usable neighbour has offered for `owner_fallback_after` (fallback),
    /// then (`owner_assists`, once this download has gone on that long) for
    /// missing chunks at most `assist_max_availability` neighbours offer,
    /// those nobody was asked for first, rarest first (assist). The owner serves these only once
    /// its first copies are out; they are not counted as in flight, so the
    /// picker still asks neighbours for the same chunks, and the first copy
    /// to arrive cancels the others.
    fn ask_owner(&mut self, now: Instant) {
        let Some(owner) = self.owner.filter(|&o| o != self.local) else {
            return;
        };
        let cap = self.config.max_owner_requests;
        let free = match self.neighbours.get(&owner) {
            Some(n) if !n.banned && n.bitmap.is_some() => cap.saturating_sub(n.requests.len()),
            _ => 0,
        };
        if free == 0 {
            return;
        }
        // Which missing chunks nobody offers, and since when.
        let count = self.manifest.chunk_count() as usize;
        if self.unoffered_since.len() != count {
            self.unoffered_since = vec![None; count];
        }
        let after = self.config.owner_fallback_after;
        let mut eligible = ChunkBitmap::empty(count as u32);
        let mut next_due: Option<Instant> = None;
        for i in self.have.zeros() {
            let offered = self.picker.availability(i) > 0 && self.usable_elsewhere(i);
            let since = &mut self.unoffered_since[i as usize];
            if offered {
                *since = None;
                continue;
            }
            let due = *since.get_or_insert(now) + after;
            if due <= now {
                eligible.set(i);
            } else {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
            }
        }
        let asked = self.request_from(now, owner, cap, PickMode::Unavailable, |i| !eligible.get(i));
        self.stats.owner_requests += asked as u64;
        // Assists once this download has gone on for `owner_fallback_after`:
        // where the whole download takes less, the owner's help would only
        // duplicate what neighbours bring.
        let assist_due = *self.asking_since.get_or_insert(now) + after;
        if self.config.owner_assists && asked < free {
            if assist_due <= now {
                let assisted = self.request_from(now, owner, cap, PickMode::Assist, |_| false);
                self.stats.owner_assist_requests += assisted as u64;
            } else {
                next_due = Some(next_due.map_or(assist_due, |d| d.min(assist_due)));
            }
        }
        if asked < free {
            self.fallback_at = next_due;
        }
    }

    fn usable_elsewhere(&self, i: ChunkIndex) -> bool {
        offered_by_neighbour(&self.neighbours, self.owner, &self.bad_pairs, i)
    }

    /// Asks `peer` for chunks chosen by `mode` and not `skip`ped, up to
    /// `cap` requests out; returns how many it asked for. In `Unavailable`
    /// mode only chunks that no usable neighbour (not the owner, not banned,
    /// not bad for that chunk) offers.
    fn request_from(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        cap: usize,
        mode: PickMode,
        skip: impl Fn(ChunkIndex) -> bool,
    ) -> usize {
        let Some(n) = self.neighbours.get(&peer) else {
            return 0;
        };
        let free = cap.saturating_sub(n.requests.len());
        let Some(offers) = n.bitmap.as_ref().filter(|_| free > 0) else {
            return 0;
        };
        let (neighbours, bad, owner) = (&self.neighbours, &self.bad_pairs, self.owner);
        let excluded = |i: ChunkIndex| {
            n.asked(i)
                || bad.contains(&(peer, i))
                || skip(i)
                || match mode {
                    PickMode::Unavailable => offered_by_neighbour(neighbours, owner, bad, i),
                    PickMode::Assist => {
                        self.picker.availability(i) > self.config.assist_max_availability
                    }
                    PickMode::Neighbour { .. } => false,
                }
        };
        // Chunks whose every request out is overdue.
        let late_after = self
            .request_latency
            .map(|l| l.mul_f64(self.config.late_factor));
        let mut overdue: BTreeMap<ChunkIndex, bool> = BTreeMap::new();
        if let (Some(after), PickMode::Neighbour { .. }) = (late_after, mode) {
            for r in neighbours.values().flat_map(|m| &m.requests) {
                if r.counted {
                    let late = now.saturating_duration_since(r.sent) >= after;
                    *overdue.entry(r.index).or_insert(true) &= late;
                }
            }
        }
        let late = |i: ChunkIndex| overdue.get(&i).copied().unwrap_or(false);
        let picks = self
            .picker
            .pick(offers, free, mode, excluded, late, &mut self.rng);
        let deadline = now + self.config.request_timeout;
        let counted = Some(peer) != self.owner;
        if let Some(n) = self.neighbours.get_mut(&peer) {
            for &index in &picks {
                if counted {
                    self.picker.requested(index);
                }
                n.requests.push(Asked {
                    index,
                    sent: now,
                    deadline,
                    counted,
                });
            }
        }
        for &index in &picks {
            self.send(peer, Body::Request { index });
        }
        picks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::storage::MemoryStore;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7000))
    }

    fn file() -> (Manifest, Vec<u8>) {
        let mut data = vec![0u8; 350_000];
        Rng::new(5).fill(&mut data);
        (Manifest::of_bytes("f.bin", &data), data)
    }

    /// An empty member at addr(2), in memory.
    fn member(now: Instant, m: &Manifest, cfg: SwarmConfig) -> Swarm {
        let empty = ChunkBitmap::empty(m.chunk_count());
        let store = Box::new(MemoryStore::empty(m));
        Swarm::new(now, m.clone(), addr(2), store, empty, cfg, 1)
    }

    fn drain(s: &mut Swarm) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    #[test]
    fn owner_pushes_each_chunk_to_one_member() {
        let now = Instant::now();
        let (m, data) = file();
        let store = MemoryStore::with_file(&m, &data);
        let full = ChunkBitmap::full(m.chunk_count());
        let mut o = Swarm::new(
            now,
            m.clone(),
            addr(1),
            Box::new(store),
            full,
            SwarmConfig::default(),
            1,
        );
        o.on_group(now, Some(addr(1)), &[addr(2), addr(3)]);
        assert!(drain(&mut o).is_empty(), "nothing before upload");
        o.start_upload(now).unwrap();
        let acts = drain(&mut o);
        assert_eq!(
            acts,
            vec![Action::Connect(addr(2)), Action::Connect(addr(3))]
        );
        o.on_neighbour_up(now, addr(2));
        o.on_neighbour_up(now, addr(3));
        let mut got = Vec::new();
        for p in [addr(2), addr(3)] {
            while let Some(msg) = o.poll_upload(p) {
                if let Body::Chunk { index, .. } = msg.body {
                    got.push((p, index));
                }
            }
        }
        got.sort_by_key(|&(_, i)| i);
        assert_eq!(
            got,
            vec![(addr(2), 0), (addr(3), 1), (addr(2), 2), (addr(3), 3)]
        );
    }

    #[test]
    fn an_owner_whose_file_changed_on_disk_stops_serving_and_says_why() {
        let now = Instant::now();
        let (m, mut data) = file();
        data[150_000] ^= 1; // chunk #2 edited after the manifest was taken
        let store = MemoryStore::with_file(&m, &data);
        let full = ChunkBitmap::full(m.chunk_count());
        let cfg = SwarmConfig::default();
        let mut o = Swarm::new(now, m.clone(), addr(1), Box::new(store), full, cfg, 1);
        o.on_group(now, Some(addr(1)), &[addr(2)]);
        o.start_upload(now).unwrap();
        o.on_neighbour_up(now, addr(2));
        drain(&mut o);
        let sent: Vec<ChunkIndex> = std::iter::from_fn(|| o.poll_upload(addr(2)))
            .filter_map(|msg| match msg.body {
                Body::Chunk { index, data } => {
                    assert!(m.verify_chunk(index, &data));
                    Some(index)
                }
                _ => None,
            })
            .collect();
        assert_eq!(sent, vec![0], "the chunk before the edited one only");
        let acts = drain(&mut o);
        assert!(
            matches!(&acts[..], [Action::StorageFailed(why)] if why.contains("chunk 2 of 4") && why.contains("changed on disk")),
            "{acts:?}"
        );
        assert_eq!(o.upload_rank(addr(2)), None);
        assert!(o.poll_upload(addr(2)).is_none());
    }

    fn requests_in(acts: &[Action]) -> Vec<(SocketAddr, ChunkIndex)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Send {
                    to,
                    message:
                        Message {
                            body: Body::Request { index },
                            ..
                        },
                    ..
                } => Some((*to, *index)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_owner_serves_requests_only_after_its_first_copies() {
        let now = Instant::now();
        let (m, data) = file();
        let full = ChunkBitmap::full(m.chunk_count());
        let store = MemoryStore::with_file(&m, &data);
        let cfg = SwarmConfig::default();
        let mut o = Swarm::new(now, m.clone(), addr(1), Box::new(store), full, cfg, 1);
        o.on_group(now, Some(addr(1)), &[addr(2), addr(3)]);
        o.on_neighbour_up(now, addr(2));
        o.on_neighbour_up(now, addr(3));
        let ask = |o: &mut Swarm, index| {
            o.on_message(
                now,
                addr(2),
                Message::new(m.file_hash, Body::Request { index }),
            );
        };
        // Before `upload`, a request waits.
        ask(&mut o, 1);
        assert_eq!(o.upload_rank(addr(2)), None);
        assert!(o.poll_upload(addr(2)).is_none());
        o.start_upload(now).unwrap();
        let index = |msg: Option<Message>| match msg.map(|m| m.body) {
            Some(Body::Chunk { index, .. }) => Some(index),
            _ => None,
        };
        // Member 2's first copies (0 and 2) go first, then member 3's; the
        // request for 1 only once every first copy is out.
        // First copies rank by index: member 2's chunk 0 before member 3's 1.
        assert_eq!(o.upload_rank(addr(2)), Some(0));
        assert_eq!(o.upload_rank(addr(3)), Some(1));
        assert_eq!(index(o.poll_upload(addr(2))), Some(0));
        assert_eq!(o.upload_rank(addr(2)), Some(2));
        assert_eq!(index(o.poll_upload(addr(2))), Some(2));
        assert_eq!(index(o.poll_upload(addr(2))), None);
        assert_eq!(index(o.poll_upload(addr(3))), Some(1));
        assert_eq!(index(o.poll_upload(addr(3))), Some(3));
        // The request: chunk count (4) + 1 + nobody else holds it (0).
        assert_eq!(o.upload_rank(addr(2)), Some(5));
        assert_eq!(index(o.poll_upload(addr(2))), Some(1));
        assert_eq!(o.stats().pushed_chunks, 4);
        // Member 3 says it holds 1 and 3 and asks for 0; member 2 asks for
        // 2. The member furthest behind goes first: the chunks its member
        // holds x (members + 1) come on top, then how many members hold
        // the chunk (chunk 2: none known).
        let mut two = ChunkBitmap::empty(m.chunk_count());
        two.set(1);
        two.set(3);
        let hello = Body::Hello {
            chunk_count: m.chunk_count(),
            bitmap: two.to_bytes(),
        };
        o.on_message(now, addr(3), Message::new(m.file_hash, hello));
        o.on_message(
            now,
            addr(3),
            Message::new(m.file_hash, Body::Request { index: 0 }),
        );
        ask(&mut o, 2);
        assert_eq!(o.upload_rank(addr(2)), Some(5));
        assert_eq!(o.upload_rank(addr(3)), Some(5 + 2 * 3));
    }

    #[test]
    fn first_copies_favour_the_member_with_two_neighbours() {
        // Five members: the overlay gives the last two neighbours (the first
        // and the fourth), the others three.
        let adj = overlay::overlay_edges(5);
        assert_eq!(adj[4], vec![3, 0]);
        assert_eq!(first_copy_weights(5), vec![2, 10, 10, 2, 20]);
        // Even counts: every member has three, equal shares.
        assert!(first_copy_weights(16).iter().all(|&w| w == 10));
        assert_eq!(first_copy_weights(2), vec![10, 10]);
        // The owner's queues follow the weights, in file order.
        let now = Instant::now();
        let mut data = vec![0u8; 44 * 102_400];
        Rng::new(6).fill(&mut data);
        let m = Manifest::of_bytes("g.bin", &data);
        let members: Vec<SocketAddr> = (2..7).map(addr).collect();
        let store = MemoryStore::with_file(&m, &data);
        let full = ChunkBitmap::full(m.chunk_count());
        let cfg = SwarmConfig::default();
        let mut o = Swarm::new(now, m.clone(), addr(1), Box::new(store), full, cfg, 1);
        o.on_group(now, Some(addr(1)), &members);
        o.start_upload(now).unwrap();
        let queued: Vec<usize> = members.iter().map(|p| o.push_queues[p].len()).collect();
        assert_eq!(queued, vec![2, 10, 10, 2, 20]);
        assert!(o.push_queues.values().all(|q| q.iter().is_sorted()));
    }

    #[test]
    fn a_member_asks_the_owner_after_the_fallback_time_without_blocking_neighbours() {
        let now = Instant::now();
        let (m, _) = file();
        let cfg = SwarmConfig {
            max_owner_requests: 2,
            ..SwarmConfig::default()
        };
        let after = cfg.owner_fallback_after;
        let mut s = member(now, &m, cfg);
        s.on_group(now, Some(addr(1)), &[addr(2), addr(3)]);
        s.on_neighbour_up(now, addr(1));
        s.on_neighbour_up(now, addr(3));
        let hello = |bits: &[u32]| {
            let mut b = ChunkBitmap::empty(m.chunk_count());
            for &i in bits {
                b.set(i);
            }
            let body = Body::Hello {
                chunk_count: m.chunk_count(),
                bitmap: b.to_bytes(),
            };
            Message::new(m.file_hash, body)
        };
        s.on_message(now, addr(1), hello(&[0, 1, 2, 3]));
        s.on_message(now, addr(3), hello(&[0]));
        let acts = drain(&mut s);
        assert_eq!(requests_in(&acts), vec![(addr(3), 0)]);
        // Nothing is asked of the owner before `owner_fallback_after`, then
        // chunks no neighbour offers (fallback)...
        assert_eq!(s.poll_timeout(), Some(now + after));
        let later = now + after;
        s.handle_timeout(later);
        let asked = requests_in(&drain(&mut s));
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(asked.iter().all(|&(to, i)| to == addr(1) && i != 0));
        assert_eq!(s.stats().owner_requests, 2);
        // ... which do not count as in flight: neighbour 3 announcing chunk
        // 1 is asked for it too, and the first copy cancels the other.
        s.on_message(
            later,
            addr(3),
            Message::new(m.file_hash, Body::Have { index: 1 }),
        );
        assert!(requests_in(&drain(&mut s)).contains(&(addr(3), 1)));
    }

    #[test]
    fn bad_chunk_is_dropped_and_sender_marked() {
        let now = Instant::now();
        let (m, data) = file();
        let cfg = SwarmConfig {
            max_bad_chunks: 2,
            ..SwarmConfig::default()
        };
        let mut s = member(now, &m, cfg);
        s.on_group(now, Some(addr(1)), &[addr(2), addr(3)]);
        s.on_neighbour_up(now, addr(3));
        let hello = Body::Hello {
            chunk_count: m.chunk_count(),
            bitmap: ChunkBitmap::full(m.chunk_count()).to_bytes(),
        };
        s.on_message(now, addr(3), Message::new(m.file_hash, hello));
        let requests: Vec<ChunkIndex> = drain(&mut s)
            .into_iter()
            .filter_map(|a| match a {
                Action::Send {
                    message:
                        Message {
                            body: Body::Request { index },
                            ..
                        },
                    ..
                } => Some(index),
                _ => None,
            })
            .collect();
        // A new neighbour starts at the shallowest pipeline.
        assert_eq!(requests.len(), 2);
        let mut bad = data[..102_400].to_vec();
        bad[7] ^= 1;
        let chunk = |index, data: &[u8]| {
            let body = Body::Chunk {
                index,
                data: data.to_vec(),
            };
            Message::new(m.file_hash, body)
        };
        s.on_message(now, addr(3), chunk(0, &bad));
        assert!(!s.have().get(0));
        let acts = drain(&mut s);
        assert!(acts.contains(&Action::BadChunk {
            index: 0,
            from: addr(3)
        }));
        s.on_message(now, addr(3), chunk(1, &bad));
        let acts = drain(&mut s);
        assert!(acts.contains(&Action::PeerBanned(addr(3))));
        assert_eq!(s.stats().bad_chunks, 2);
        // A good chunk still counts, even from a banned peer.
        s.on_message(now, addr(3), chunk(2, &data[204_800..307_200]));
        assert!(s.have().get(2));
        // Garbage indices change nothing.
        s.on_message(
            now,
            addr(3),
            Message::new(m.file_hash, Body::Have { index: 99 }),
        );
        s.on_message(
            now,
            addr(3),
            Message::new(m.file_hash, Body::Request { index: 99 }),
        );
        assert_eq!(s.stats().protocol_errors, 2);
    }

    #[test]
    fn disk_owner_to_disk_member() {
        let now = Instant::now();
        let (m, data) = file();
        let base = std::env::temp_dir().join(format!("chunkswarm-swarm-{}", std::process::id()));
        let (od, md) = (base.join("owner"), base.join("member"));
        std::fs::create_dir_all(&od).unwrap();
        std::fs::create_dir_all(&md).unwrap();
        std::fs::write(od.join("f.bin"), &data).unwrap();
        let open = |dir: &Path, role, me, seed| {
            Swarm::on_disk(now, dir, role, m.clone(), me, SwarmConfig::default(), seed).unwrap()
        };
        let mut o = open(&od, DiskRole::Owner, addr(1), 1);
        let mut d = open(&md, DiskRole::Downloader, addr(2), 2);
        assert!(o.have().is_full() && d.have().count() == 0);
        o.on_group(now, Some(addr(1)), &[addr(2)]);
        d.on_group(now, Some(addr(1)), &[addr(2)]);
        o.start_upload(now).unwrap();
        o.on_neighbour_up(now, addr(2));
        d.on_neighbour_up(now, addr(1));
        while let Some(msg) = o.poll_upload(addr(2)) {
            d.on_message(now, addr(1), msg);
        }
        let acts = drain(&mut d);
        assert!(acts.contains(&Action::Complete {
            path: md.join("f.bin")
        }));
        assert_eq!(std::fs::read(md.join("f.bin")).unwrap(), data);
        assert!(!md.join("f.bin.part").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
