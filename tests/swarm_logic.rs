//! The swarm logic in virtual time over a simple message-level network:
//! every peer has one uplink of a given rate (messages leave it in FIFO
//! order), every pair a seeded latency; connections open after a round trip
//! and a dead peer is noticed by its neighbours after a delay, as rudp would
//! report it. A tiny tracker model pushes group changes after a delay.
//! No sockets, no clock: each test runs in milliseconds and the same seed
//! gives the same run.

use chunkswarm::manifest::{sha256, ChunkIndex, Manifest};
use chunkswarm::peer::bitmap::ChunkBitmap;
use chunkswarm::peer::storage::{ChunkStore, DiskStore, MemoryStore, StorageError};
use chunkswarm::peer::swarm::{Action, DownReason, Swarm, SwarmConfig};
use chunkswarm::rng::Rng;
use chunkswarm::wire::swarm::Message;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A MemoryStore the test can inspect while the swarm owns it.
type SharedStore = Arc<Mutex<MemoryStore>>;

enum Ev {
    Deliver {
        to: usize,
        from: SocketAddr,
        epoch: u64,
        msg: Message,
    },
    /// A chunk message left `from`'s uplink towards `to`.
    TxDone { from: usize, to: usize },
    Up {
        at: usize,
        peer: SocketAddr,
        epoch: u64,
    },
    Down {
        at: usize,
        peer: SocketAddr,
        reason: DownReason,
    },
    Group {
        at: usize,
        owner: Option<SocketAddr>,
        members: Vec<SocketAddr>,
    },
}

struct Peer {
    addr: SocketAddr,
    swarm: Option<Swarm>,
    memory: Option<SharedStore>,
    uplink_free_at: Instant,
    /// Bytes per second.
    upload_rate: f64,
    completed_at: Option<Instant>,
    /// Time the uplink spent sending.
    busy: Duration,
    /// (start, end) of every transmission, for the utilisation timeline.
    sends: Vec<(Instant, Instant)>,
    /// The connection the uplink took a chunk from last.
    turn: usize,
}

/// (time, node, chunk, sender) of every chunk received: the run's fingerprint.
type Trace = Vec<(Duration, usize, ChunkIndex, SocketAddr)>;

struct Sim {
    t0: Instant,
    now: Instant,
    seq: u64,
    events: BTreeMap<(Instant, u64), Ev>,
    peers: Vec<Peer>,
    by_addr: BTreeMap<SocketAddr, usize>,
    latency: BTreeMap<(usize, usize), Duration>,
    /// Open connections (lower index first) and their epoch.
    conns: BTreeMap<(usize, usize), u64>,
    next_epoch: u64,
    /// Chunk messages queued on an uplink, per (from, to).
    on_wire: BTreeMap<(usize, usize), usize>,
    owner: Option<SocketAddr>,
    members: Vec<SocketAddr>,
    trace: Trace,
    bad: Vec<(usize, ChunkIndex, SocketAddr)>,
    banned: Vec<(usize, SocketAddr)>,
    /// When the owner reported every chunk handed out.
    upload_done: Option<Instant>,
    rng: Rng,
    manifest: Manifest,
    data: Vec<u8>,
    config: SwarmConfig,
    /// Noticing a dead peer takes this long (rudp's PTO bound).
    dead_after: Duration,
    /// Control messages skip the chunks queued on the uplink.
    control_first: bool,
    /// The tracker drops a dead peer after three heartbeats.
    tracker_dead_after: Duration,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 7001))
}

impl Sim {
    fn new(seed: u64, peers: usize, size: usize) -> Sim {
        let mut rng = Rng::new(seed);
        let mut data = vec![0u8; size];
        rng.fill(&mut data);
        let manifest = Manifest::of_bytes("movie.mp4", &data);
        let t0 = Instant::now();
        let mut sim = Sim {
            t0,
            now: t0,
            seq: 0,
            events: BTreeMap::new(),
            peers: Vec::new(),
            by_addr: BTreeMap::new(),
            latency: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_epoch: 1,
            on_wire: BTreeMap::new(),
            owner: None,
            members: Vec::new(),
            trace: Vec::new(),
            bad: Vec::new(),
            banned: Vec::new(),
            upload_done: None,
            rng,
            manifest,
            data,
            config: SwarmConfig::default(),
            dead_after: Duration::from_secs(2),
            control_first: false,
            tracker_dead_after: Duration::from_secs(6),
        };
        for _ in 0..peers {
            sim.add_peer();
        }
        sim
    }

    /// A new peer (not yet in any group), 2-20 ms from every other.
    fn add_peer(&mut self) -> usize {
        let i = self.peers.len();
        for a in 0..i {
            let l = Duration::from_micros(2_000 + self.rng.below(18_000));
            self.latency.insert((a, i), l);
        }
        self.by_addr.insert(addr(i), i);
        self.peers.push(Peer {
            addr: addr(i),
            swarm: None,
            memory: None,
            uplink_free_at: self.now,
            upload_rate: 10e6,
            completed_at: None,
            busy: Duration::ZERO,
            sends: Vec::new(),
            turn: 0,
        });
        i
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
    }

    fn seed_of(&self, i: usize) -> u64 {
        1000 + i as u64
    }

    /// Peer 0 owns the file.
    fn start_owner(&mut self) {
        let store = Arc::new(Mutex::new(MemoryStore::with_file(
            &self.manifest,
            &self.data,
        )));
        let full = ChunkBitmap::full(self.manifest.chunk_count());
        let swarm = Swarm::new(
            self.now,
            self.manifest.clone(),
            addr(0),
            Box::new(store.clone()),
            full,
            self.config.clone(),
            self.seed_of(0),
        );
        self.peers[0].swarm = Some(swarm);
        self.peers[0].memory = Some(store);
        self.owner = Some(addr(0));
        self.push_group(Duration::from_millis(5));
    }

    /// Peer `i` registers for the group with an empty memory store.
    fn join(&mut self, i: usize, config: SwarmConfig) {
        let store = Arc::new(Mutex::new(MemoryStore::empty(&self.manifest)));
        let empty = ChunkBitmap::empty(self.manifest.chunk_count());
        self.join_with(i, Box::new(store.clone()), empty, config);
        self.peers[i].memory = Some(store);
    }

    fn join_with(
        &mut self,
        i: usize,
        store: Box<dyn ChunkStore + Send>,
        have: ChunkBitmap,
        config: SwarmConfig,
    ) {
        let swarm = Swarm::new(
            self.now,
            self.manifest.clone(),
            addr(i),
            store,
            have,
            config,
            self.seed_of(i),
        );
        self.peers[i].swarm = Some(swarm);
        self.peers[i].memory = None;
        self.peers[i].completed_at = None;
        self.members.push(addr(i));
        self.push_group(Duration::from_millis(5));
    }

    /// The tracker pushes the current group to every live peer after `delay`.
    fn push_group(&mut self, delay: Duration) {
        let at = self.now + delay;
        for i in 0..self.peers.len() {
            if self.peers[i].swarm.is_some() {
                let ev = Ev::Group {
                    at: i,
                    owner: self.owner,
                    members: self.members.clone(),
                };
                self.schedule(at, ev);
            }
        }
    }

    /// Peer `i` dies: its connections go silent, its neighbours notice after
    /// `dead_after`, the tracker after `tracker_dead_after`.
    fn kill(&mut self, i: usize) {
        self.peers[i].swarm = None;
        let dead: Vec<(usize, usize)> = self
            .conns
            .keys()
            .filter(|&&(a, b)| a == i || b == i)
            .copied()
            .collect();
        for (a, b) in dead {
            self.conns.remove(&(a, b));
            let other = if a == i { b } else { a };
            let ev = Ev::Down {
                at: other,
                peer: addr(i),
                reason: DownReason::Failed,
            };
            self.schedule(self.now + self.dead_after, ev);
        }
        self.on_wire.retain(|&(a, b), _| a != i && b != i);
        if self.owner == Some(addr(i)) {
            self.owner = None;
        }
        self.members.retain(|&m| m != addr(i));
        self.push_group(self.tracker_dead_after);
    }

    fn link_latency(&self, a: usize, b: usize) -> Duration {
        self.latency[&(a.min(b), a.max(b))]
    }

    fn conn_key(a: usize, b: usize) -> (usize, usize) {
        (a.min(b), a.max(b))
    }

    fn transmit(&mut self, from: usize, to: usize, msg: Message, is_chunk: bool) {
        let Some(&epoch) = self.conns.get(&Sim::conn_key(from, to)) else {
            return;
        };
        let len = msg.encode().len() as f64;
        let p = &mut self.peers[from];
        // A control message either waits for the chunks queued on the uplink
        // (one FIFO, as in a kernel rate limiter's queue) or goes out at once
        // (`control_first`: the node's upload cap paces only chunks).
        let ahead = !is_chunk && self.control_first;
        let start = if ahead {
            self.now
        } else {
            p.uplink_free_at.max(self.now)
        };
        let done = start + Duration::from_secs_f64(len / p.upload_rate);
        if !ahead {
            p.uplink_free_at = done;
            p.busy += done - start;
            p.sends.push((start, done));
        }
        let at = done + self.link_latency(from, to);
        let from_addr = addr(from);
        self.schedule(
            at,
            Ev::Deliver {
                to,
                from: from_addr,
                epoch,
                msg,
            },
        );
        if is_chunk {
            *self.on_wire.entry((from, to)).or_default() += 1;
            self.schedule(done, Ev::TxDone { from, to });
        }
    }

    fn act(&mut self, i: usize, action: Action) {
        match action {
            Action::Connect(peer) => {
                let j = self.by_addr[&peer];
                let key = Sim::conn_key(i, j);
                if self.conns.contains_key(&key) {
                    return;
                }
                let lat = self.link_latency(i, j);
                if self.peers[j].swarm.is_some() {
                    let epoch = self.next_epoch;
                    self.next_epoch += 1;
                    self.conns.insert(key, epoch);
                    let up_j = Ev::Up {
                        at: j,
                        peer: addr(i),
                        epoch,
                    };
                    self.schedule(self.now + lat, up_j);
                    let up_i = Ev::Up { at: i, peer, epoch };
                    self.schedule(self.now + 2 * lat, up_i);
                } else {
                    self.schedule(
                        self.now + self.dead_after,
                        Ev::Down {
                            at: i,
                            peer,
                            reason: DownReason::Failed,
                        },
                    );
                }
            }
            Action::Disconnect(peer) => {
                let j = self.by_addr[&peer];
                if self.conns.remove(&Sim::conn_key(i, j)).is_some() {
                    let lat = self.link_latency(i, j);
                    let ev = Ev::Down {
                        at: j,
                        peer: addr(i),
                        reason: DownReason::Closed,
                    };
                    self.schedule(self.now + lat, ev);
                }
            }
            Action::Send { to, message, .. } => {
                let j = self.by_addr[&to];
                self.transmit(i, j, message, false);
            }
            Action::ChunkReceived { index, from } => {
                self.trace.push((self.now - self.t0, i, index, from));
            }
            Action::BadChunk { index, from } => self.bad.push((i, index, from)),
            Action::PeerBanned(p) => self.banned.push((i, p)),
            Action::UploadDone => self.upload_done = Some(self.now),
            Action::Complete { .. } => self.peers[i].completed_at = Some(self.now),
            Action::StorageFailed(why) => panic!("peer {i}: storage failed: {why}"),
        }
    }

    /// Drains every swarm's actions and fills every uplink, until quiet.
    fn flush(&mut self) {
        loop {
            let mut busy = false;
            for i in 0..self.peers.len() {
                while let Some(a) = self.peers[i].swarm.as_mut().and_then(|s| s.poll_action()) {
                    busy = true;
                    self.act(i, a);
                }
                let Some(s) = self.peers[i].swarm.as_ref() else {
                    continue;
                };
                // The uplink takes a chunk only when it is (nearly) free, from
                // its connections in turn, like the node under its upload
                // cap: what goes next is chosen as late as possible.
                // Among connections, the one whose next chunk is rarest
                // (`upload_rank`), in turn among equals.
                let neighbours: Vec<SocketAddr> = s.neighbours().collect();
                let k = neighbours.len();
                while k > 0 && self.uplink_queue(i) < UPLINK_DEPTH {
                    let turn = self.peers[i].turn % k;
                    let swarm = self.peers[i].swarm.as_ref().unwrap();
                    // (rank, distance in turn order, connection)
                    let best = (1..=k)
                        .map(|d| (d, (turn + d) % k))
                        .filter(|&(_, c)| {
                            let j = self.by_addr[&neighbours[c]];
                            // a dead connection takes nothing (rudp backlog)
                            self.conns.contains_key(&Sim::conn_key(i, j))
                        })
                        .filter_map(|(d, c)| swarm.upload_rank(neighbours[c]).map(|r| (r, d, c)))
                        .min();
                    let Some((_, _, c)) = best else { break };
                    self.peers[i].turn = c;
                    let peer = neighbours[c];
                    let j = self.by_addr[&peer];
                    let swarm = self.peers[i].swarm.as_mut().unwrap();
                    let Some(msg) = swarm.poll_upload(peer) else {
                        break;
                    };
                    busy = true;
                    self.transmit(i, j, msg, true);
                }
            }
            if !busy {
                return;
            }
        }
    }

    /// Chunks on peer `i`'s uplink, not yet sent.
    fn uplink_queue(&self, i: usize) -> usize {
        self.on_wire
            .range((i, 0)..(i + 1, 0))
            .map(|(_, &n)| n)
            .sum()
    }

    fn live(&self, i: usize, epoch: u64, peer: SocketAddr) -> bool {
        let j = self.by_addr[&peer];
        self.conns.get(&Sim::conn_key(i, j)) == Some(&epoch)
    }

    fn deliver(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Deliver {
                to,
                from,
                epoch,
                msg,
            } => {
                if self.live(to, epoch, from) {
                    if let Some(s) = self.peers[to].swarm.as_mut() {
                        s.on_message(now, from, msg);
                    }
                }
            }
            Ev::TxDone { from, to } => {
                if let Some(n) = self.on_wire.get_mut(&(from, to)) {
                    *n = n.saturating_sub(1);
                }
            }
            Ev::Up { at, peer, epoch } => {
                if self.live(at, epoch, peer) {
                    if let Some(s) = self.peers[at].swarm.as_mut() {
                        s.on_neighbour_up(now, peer);
                    }
                }
            }
            Ev::Down { at, peer, reason } => {
                let j = self.by_addr[&peer];
                if self.conns.contains_key(&Sim::conn_key(at, j)) {
                    return; // reopened since
                }
                if let Some(s) = self.peers[at].swarm.as_mut() {
                    s.on_neighbour_down(now, peer, reason);
                }
            }
            Ev::Group { at, owner, members } => {
                if let Some(s) = self.peers[at].swarm.as_mut() {
                    s.on_group(now, owner, &members);
                }
            }
        }
    }

    /// Runs until `done` holds (checked between events), calling `hook` at
    /// each step; panics after `limit` of virtual time.
    fn run_until(
        &mut self,
        limit: Duration,
        mut hook: impl FnMut(&mut Sim),
        done: impl Fn(&Sim) -> bool,
    ) {
        loop {
            self.flush();
            hook(self);
            self.flush();
            if done(self) {
                return;
            }
            let next_event = self.events.keys().next().map(|&(t, _)| t);
            let next_timer = self
                .peers
                .iter()
                .filter_map(|p| p.swarm.as_ref().and_then(|s| s.poll_timeout()))
                .min();
            let next = match (next_event, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).expect("the simulation stalled with nothing to do"),
            };
            assert!(
                next - self.t0 <= limit,
                "not done after {limit:?} of virtual time: {}",
                self.progress()
            );
            self.now = self.now.max(next);
            while let Some(entry) = self.events.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let ev = entry.remove();
                self.deliver(ev);
                self.flush();
            }
            let now = self.now;
            for p in self.peers.iter_mut() {
                if let Some(s) = p.swarm.as_mut() {
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now);
                    }
                }
            }
        }
    }

    fn progress(&self) -> String {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.swarm
                    .as_ref()
                    .map(|s| format!("{i}:{}/{}", s.have().count(), s.have().len()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn all_live_members_complete(&self) -> bool {
        self.peers
            .iter()
            .filter(|p| Some(p.addr) != self.owner)
            .all(|p| p.swarm.as_ref().is_none_or(|s| s.is_complete()))
    }

    /// Every live member holds exactly the owner's file.
    fn assert_all_verified(&self) {
        for (i, p) in self.peers.iter().enumerate() {
            let Some(s) = p.swarm.as_ref() else { continue };
            assert!(s.is_complete(), "peer {i} incomplete");
            if let Some(m) = &p.memory {
                let got = m.lock().unwrap().assembled().expect("all chunks");
                assert_eq!(sha256(&got), self.manifest.file_hash, "peer {i}");
                assert!(got == self.data, "peer {i} holds different bytes");
            }
        }
    }

    /// One line per peer: completion time, sources, duplicates, owner requests.
    fn report(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.peers.iter().enumerate() {
            let Some(s) = p.swarm.as_ref() else { continue };
            let st = s.stats();
            out += &format!(
                "peer {i}: done {:?} sources {} dup {} owner-req {} timeouts {} up {}\n",
                p.completed_at.map(|t| t - self.t0),
                st.received_from.len(),
                st.duplicate_chunks,
                st.owner_requests,
                st.requests_timed_out,
                st.uploaded_to.values().sum::<u32>(),
            );
        }
        out
    }

    /// Per-peer uplink utilisation in `bins` equal slices from `start` to now
    /// (percent, one row per peer): where the distribution time goes.
    fn timeline(&self, start: Instant, bins: u32) -> String {
        let total = self.now.saturating_duration_since(start);
        let width = total / bins;
        let mut out = String::new();
        for (i, p) in self.peers.iter().enumerate() {
            let mut row = format!("peer {i:2}:");
            for b in 0..bins {
                let (lo, hi) = (start + width * b, start + width * (b + 1));
                let busy: Duration = p
                    .sends
                    .iter()
                    .map(|&(s, e)| e.min(hi).saturating_duration_since(s.max(lo)))
                    .sum();
                row += &format!(" {:3.0}", 100.0 * busy.as_secs_f64() / width.as_secs_f64());
            }
            out += &row;
            out.push('\n');
        }
        out
    }

    /// The owner and members 1..=`members` join, the owner uploads, and
    /// the run goes on until every member holds the verified file; returns
    /// when the upload started.
    fn distribute(&mut self, members: usize) -> Instant {
        self.start_owner();
        for i in 1..=members {
            self.join(i, SwarmConfig::default());
        }
        self.run_until(Duration::from_secs(1), |_| {}, |s| s.events.is_empty());
        let start = self.now;
        let owner = self.peers[0].swarm.as_mut().unwrap();
        owner.start_upload(start).unwrap();
        self.run_until(
            Duration::from_secs(600),
            |_| {},
            Sim::all_live_members_complete,
        );
        self.assert_all_verified();
        start
    }

    fn union_of_members_full(&self) -> bool {
        let n = self.manifest.chunk_count();
        let mut u = ChunkBitmap::empty(n);
        for p in &self.peers {
            if Some(p.addr) == self.owner {
                continue;
            }
            if let Some(s) = &p.swarm {
                for i in s.have().ones() {
                    u.set(i);
                }
            }
        }
        u.is_full()
    }
}

const MB: usize = 1_000_000;
/// Chunks queued on an uplink at most (the one being sent included).
const UPLINK_DEPTH: usize = 1;

/// Owner + `members`, all joined, then the owner uploads.
fn standard(seed: u64, members: usize, size: usize) -> Sim {
    standard_with(seed, members, size, |_| SwarmConfig::default())
}

/// Like `standard`, member i configured by `config(i)`.
fn standard_with(
    seed: u64,
    members: usize,
    size: usize,
    config: impl Fn(usize) -> SwarmConfig,
) -> Sim {
    let mut sim = Sim::new(seed, members + 1, size);
    sim.start_owner();
    for i in 1..=members {
        sim.now += Duration::from_millis(10);
        sim.join(i, config(i));
    }
    sim.run_until(Duration::from_secs(1), |_| {}, |s| s.events.is_empty());
    let now = sim.now;
    let owner = sim.peers[0].swarm.as_mut().unwrap();
    owner.start_upload(now).unwrap();
    sim
}

/// Runs until every live member is complete; checks every copy.
fn complete(sim: &mut Sim, limit: Duration) {
    sim.run_until(limit, |_| {}, Sim::all_live_members_complete);
    sim.assert_all_verified();
    eprint!("{}", sim.report());
}

fn owner_uploads(sim: &Sim) -> u32 {
    let owner = sim.peers[0].swarm.as_ref().unwrap();
    owner.stats().uploaded_to.values().sum()
}

#[test]
fn six_peers_complete_and_verify() {
    let mut sim = standard(1, 5, 4 * MB);
    complete(&mut sim, Duration::from_secs(60));
    let n = sim.manifest.chunk_count();
    // Every member got chunks from the owner and from other members.
    for i in 1..=5 {
        let s = sim.peers[i].swarm.as_ref().unwrap();
        let from = &s.stats().received_from;
        assert_eq!(from.values().sum::<u32>(), n, "peer {i} counts");
        assert!(from.get(&addr(0)).is_some_and(|&k| k > 0), "peer {i}");
        assert!(from.len() > 1, "peer {i} only used the owner");
        assert_eq!(s.stats().bad_chunks, 0);
    }
    // The owner pushed each chunk once; once they were all out it helped
    // with requests, but the members served most copies.
    let owner = sim.peers[0].swarm.as_ref().unwrap();
    assert_eq!(owner.stats().pushed_chunks, n as u64);
    let upload_done = sim.upload_done.expect("the owner reported its upload done");
    assert!(sim
        .peers
        .iter()
        .all(|p| p.completed_at.is_none_or(|t| t >= upload_done)));
    let up = owner_uploads(&sim);
    assert!(up >= n && up <= 2 * n, "owner uploaded {up} of {n} chunks");
}

#[test]
fn thirty_peers_complete_and_verify() {
    let mut sim = standard(2, 29, 3 * MB);
    complete(&mut sim, Duration::from_secs(120));
    let n = sim.manifest.chunk_count();
    let up = owner_uploads(&sim);
    assert!(up >= n && up <= 3 * n, "owner uploaded {up} of {n} chunks");
    // Each member kept to the owner and at most three members.
    for i in 1..30 {
        let s = sim.peers[i].swarm.as_ref().unwrap();
        assert!(s.neighbours().count() <= 4, "peer {i}");
        assert!(s.wanted().count() <= 4, "peer {i}");
    }
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut sim = standard(seed, 7, 2 * MB);
        complete(&mut sim, Duration::from_secs(60));
        (sim.trace, sim.now - sim.t0)
    };
    let a = run(11);
    assert_eq!(a, run(11));
    assert_ne!(a.0, run(12).0);
}

#[test]
fn member_killed_mid_download_the_rest_complete() {
    let mut sim = standard(3, 7, 4 * MB);
    let victim = 3;
    let mut killed = false;
    sim.run_until(
        Duration::from_secs(120),
        |s| {
            let half = s.manifest.chunk_count() / 3;
            if !killed && s.peers[victim].swarm.as_ref().unwrap().have().count() >= half {
                killed = true;
                assert!(!s.all_live_members_complete());
                s.kill(victim);
            }
        },
        Sim::all_live_members_complete,
    );
    assert!(sim.peers[victim].swarm.is_none());
    sim.assert_all_verified();
}

#[test]
fn owner_leaves_once_every_chunk_is_on_a_member() {
    let mut sim = standard(4, 6, 4 * MB);
    // Members upload slower than the owner, so they are far from done when it leaves.
    for p in sim.peers.iter_mut().skip(1) {
        p.upload_rate = 2e6;
    }
    let mut left_at = None;
    sim.run_until(
        Duration::from_secs(300),
        |s| {
            if left_at.is_none() && s.union_of_members_full() {
                assert!(!s.all_live_members_complete());
                left_at = Some(s.now);
                s.kill(0);
            }
        },
        Sim::all_live_members_complete,
    );
    let left_at = left_at.expect("owner left");
    // Chunks kept flowing after the owner had gone.
    assert!(sim.trace.iter().any(|&(t, ..)| sim.t0 + t > left_at));
    assert!(sim
        .trace
        .iter()
        .all(|&(t, _, _, from)| from != addr(0) || sim.t0 + t <= left_at));
    sim.assert_all_verified();
}

#[test]
fn corrupt_member_poisons_nobody() {
    let liar = 2;
    let mut sim = standard_with(5, 6, 4 * MB, |i| SwarmConfig {
        corrupt_uploads: i == liar,
        ..SwarmConfig::default()
    });
    complete(&mut sim, Duration::from_secs(120));
    assert!(!sim.bad.is_empty(), "the liar was never asked");
    assert!(sim.bad.iter().all(|&(_, _, from)| from == addr(liar)));
    assert!(sim.banned.iter().any(|&(_, p)| p == addr(liar)));
    assert!(sim.trace.iter().all(|&(.., from)| from != addr(liar)));
}

#[test]
fn late_joiner_completes() {
    let mut sim = standard(6, 5, 4 * MB);
    let late = sim.add_peer();
    let mut joined = false;
    sim.run_until(
        Duration::from_secs(120),
        |s| {
            let half = s.manifest.chunk_count() / 2;
            if !joined && s.peers[1].swarm.as_ref().unwrap().have().count() >= half {
                joined = true;
                s.join(late, SwarmConfig::default());
            }
        },
        |s| s.peers.len() > late && s.peers[late].swarm.is_some() && s.all_live_members_complete(),
    );
    sim.assert_all_verified();
    let s = sim.peers[late].swarm.as_ref().unwrap();
    assert!(s.stats().received_from.len() > 1);
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chunkswarm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn disk_join(sim: &mut Sim, i: usize, dir: &Path) -> u32 {
    let (store, have) = DiskStore::open_download(dir, &sim.manifest).unwrap();
    let count = have.count();
    sim.join_with(i, Box::new(store), have, SwarmConfig::default());
    count
}

#[test]
fn restarted_peer_resumes_from_its_part_file() {
    let dir = temp_dir("resume");
    let mut sim = standard(7, 5, 4 * MB);
    let n = sim.manifest.chunk_count();
    let disk_peer = sim.add_peer();
    assert_eq!(disk_join(&mut sim, disk_peer, &dir), 0);
    let name = sim.manifest.name.clone();
    let phase = Cell::new(0);
    let mut killed_at = sim.now;
    let mut resumed_with = 0;
    let dir2 = dir.clone();
    sim.run_until(
        Duration::from_secs(120),
        |s| {
            let held = s.peers[disk_peer].swarm.as_ref().map(|x| x.have().count());
            if phase.get() == 0 && held.is_some_and(|h| h >= n / 2) {
                phase.set(1);
                killed_at = s.now;
                s.kill(disk_peer);
                assert!(dir2.join(format!("{name}.part")).exists());
                assert!(!dir2.join(&name).exists());
            } else if phase.get() == 1 && s.now >= killed_at + s.tracker_dead_after {
                phase.set(2);
                resumed_with = disk_join(s, disk_peer, &dir2);
            }
        },
        |s| s.peers[disk_peer].swarm.is_some() && phase.get() == 2 && s.all_live_members_complete(),
    );
    assert!(resumed_with >= n / 2, "resumed with {resumed_with} of {n}");
    let after: u32 = sim.peers[disk_peer]
        .swarm
        .as_ref()
        .unwrap()
        .stats()
        .received_from
        .values()
        .sum();
    assert_eq!(
        after,
        n - resumed_with,
        "only the missing chunks were fetched"
    );
    let done = std::fs::read(dir.join(&sim.manifest.name)).unwrap();
    assert!(done == sim.data);
    assert!(!dir.join(format!("{}.part", sim.manifest.name)).exists());
    assert!(!dir
        .join(format!("{}.part.bitmap", sim.manifest.name))
        .exists());
    sim.assert_all_verified();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A torn or foreign .part keeps only chunks that verify; a corrupt file
/// never appears under the final name.
#[test]
fn disk_store_keeps_only_verified_chunks() {
    let dir = temp_dir("disk");
    let mut data = vec![0u8; 350_000];
    Rng::new(8).fill(&mut data);
    let m = Manifest::of_bytes("f.bin", &data);
    let chunk = |i: u32| {
        let start = m.chunk_offset(i) as usize;
        data[start..start + m.chunk_len(i) as usize].to_vec()
    };
    let (mut s, have) = DiskStore::open_download(&dir, &m).unwrap();
    assert_eq!(have.count(), 0);
    s.write_chunk(0, &chunk(0)).unwrap();
    s.write_chunk(3, &chunk(3)).unwrap();
    // A write that the sidecar lists but whose bytes are wrong (torn write).
    s.write_chunk(1, &vec![0u8; m.chunk_len(1) as usize])
        .unwrap();
    drop(s);
    let (mut s, have) = DiskStore::open_download(&dir, &m).unwrap();
    assert_eq!(have.ones().collect::<Vec<_>>(), vec![0, 3]);
    s.write_chunk(1, &chunk(1)).unwrap();
    // Chunk 2 written with bad bytes: every chunk is "in" but the file is wrong.
    s.write_chunk(2, &vec![7u8; m.chunk_len(2) as usize])
        .unwrap();
    assert!(matches!(s.finish(), Err(StorageError::FileHashMismatch)));
    assert!(!dir.join("f.bin").exists());
    s.write_chunk(2, &chunk(2)).unwrap();
    assert_eq!(s.finish().unwrap(), dir.join("f.bin"));
    assert!(std::fs::read(dir.join("f.bin")).unwrap() == data);
    assert_eq!(s.read_chunk(2).unwrap(), chunk(2));
    // Reopening a finished download finds it complete.
    let (_, have) = DiskStore::open_download(&dir, &m).unwrap();
    assert!(have.is_full());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With every uplink capped, the time until the last member completes,
/// against the P2P lower bound max(F/u_s, N·F/(u_s + Σu_i)); prints the
/// first run's per-uplink utilisation over time (where the time goes).
fn distribution_vs_bound(
    seed: u64,
    control_first: bool,
    members: usize,
    u_s: f64,
    u_i: f64,
    size: usize,
) -> f64 {
    let mut sim = Sim::new(seed, members + 1, size);
    sim.control_first = control_first;
    sim.peers[0].upload_rate = u_s;
    for p in sim.peers.iter_mut().skip(1) {
        p.upload_rate = u_i;
    }
    let start = sim.distribute(members);
    let took = (sim.now - start).as_secs_f64();
    let f = size as f64;
    let n = members as f64;
    let bound = (f / u_s).max(n * f / (u_s + n * u_i));
    if seed == DISTRIBUTION_SEEDS.start {
        eprintln!(
            "1+{members}, u_s {:.0} MB/s, control first {control_first}: {took:.2} s, bound {bound:.2} s, client-server {:.2} s; uplink busy (%) per tenth of the run:",
            u_s / 1e6,
            n * f / u_s
        );
        eprint!("{}", sim.timeline(start, 10));
    }
    took / bound
}

const DISTRIBUTION_SEEDS: std::ops::Range<u64> = 9..14;

/// The swarm's efficiency in this model (uplinks capped, no transport
/// overhead), over five seeds: the median ratio to the P2P bound is the
/// README's figure; the test only guards against a regression (members
/// keep at most three member neighbours, so the chunks pushed last need
/// several hops). `cargo test --test swarm_logic distribution -- --nocapture`.
#[test]
fn distribution_time_near_the_p2p_bound() {
    for control_first in [true, false] {
        for members in [5, 15] {
            for u_s in [1e6, 2e6] {
                let mut r: Vec<f64> = DISTRIBUTION_SEEDS
                    .map(|seed| {
                        distribution_vs_bound(seed, control_first, members, u_s, 1e6, 4 * MB)
                    })
                    .collect();
                r.sort_by(f64::total_cmp);
                let median = r[r.len() / 2];
                eprintln!(
                    "1+{members}, u_s {:.0} MB/s, u_i 1 MB/s, control first {control_first}: ratio to the bound {r:.2?}, median {median:.2}",
                    u_s / 1e6
                );
                assert!(median < 1.5, "1+{members}: {median:.2} x the bound");
            }
        }
    }
}

/// Churn: members die and others join while the file spreads; every member
/// alive at the end completes with the right bytes.
#[test]
fn churn_kills_and_late_joins() {
    let mut sim = standard(12, 20, 3 * MB);
    for p in sim.peers.iter_mut().skip(1) {
        p.upload_rate = 3e6;
    }
    let late: Vec<usize> = (0..4).map(|_| sim.add_peer()).collect();
    let victims = [4, 9, 15];
    let step = Cell::new(0usize);
    sim.run_until(
        Duration::from_secs(300),
        |s| {
            let t = s.now - s.t0;
            let k = step.get();
            let due = Duration::from_millis(300) * (k as u32 + 1);
            if k < 7 && t >= due {
                if k % 2 == 0 && k / 2 < victims.len() {
                    s.kill(victims[k / 2]);
                } else if let Some(&j) = late.get(k / 2) {
                    s.join(j, SwarmConfig::default());
                }
                assert!(!s.all_live_members_complete(), "churn after the end");
                step.set(k + 1);
            }
        },
        |s| step.get() >= 7 && s.all_live_members_complete(),
    );
    for v in victims {
        assert!(sim.peers[v].swarm.is_none());
    }
    sim.assert_all_verified();
}

/// `netlab swarm --peers 16 --rate 20mbit --size 10MB --rtt 10ms` in this
/// model: every uplink at the peers' 19 Mbit/s cap of chunk bytes (the
/// members' 2% short: their acknowledgements share it), 4.5-5.5 ms one way
/// between any two peers. Prints each seed's distribution time (F/u, the
/// owner's floor, is 4.21 s; netlab's bound, at the link's 20 Mbit/s, is
/// 4.00 s) and when each member completed; `cargo test --release --test
/// swarm_logic like_netlab -- --ignored --nocapture` (MEMBERS=N for
/// another group size).
#[test]
#[ignore]
fn distribution_like_netlab() {
    let members: usize = std::env::var("MEMBERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let size = 10 * MB;
    let u = 19e6 / 8.0;
    let mut all = Vec::new();
    for seed in 1..=6u64 {
        let mut sim = Sim::new(seed, members + 1, size);
        sim.control_first = true;
        let mut jitter = Rng::new(seed);
        for v in sim.latency.values_mut() {
            *v = Duration::from_micros(4_500 + jitter.below(1_000));
        }
        for (i, p) in sim.peers.iter_mut().enumerate() {
            p.upload_rate = if i == 0 { u } else { 0.98 * u };
        }
        let start = sim.distribute(members);
        let took = (sim.now - start).as_secs_f64();
        let dups: u64 = sim
            .peers
            .iter()
            .filter_map(|p| p.swarm.as_ref())
            .map(|s| s.stats().duplicate_chunks)
            .sum();
        let at = |t: Instant| format!("{:.2}", (t - start).as_secs_f64());
        let done: Vec<String> = sim.peers[1..]
            .iter()
            .map(|p| p.completed_at.map_or("-".into(), at))
            .collect();
        eprintln!(
            "seed {seed}: {took:.3} s ({:.3} x 4.00 s), {dups} duplicate chunks; first copies out at {}; members done at {}",
            took / 4.0,
            sim.upload_done.map_or("-".into(), at),
            done.join(" ")
        );
        all.push(took);
    }
    all.sort_by(f64::total_cmp);
    eprintln!("1+{members}: median {:.3} s", all[all.len() / 2]);
}
