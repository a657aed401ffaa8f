//! A simulated network in virtual time driving any number of [`Endpoint`]s.
//!
//! Each directed link `a → b` models, in this order:
//! 1. an outage switch ([`Sim::set_up`]) and the loss model of its
//!    [`ImpairConfig`] (uniform or Gilbert–Elliott) — loss happens *before*
//!    the bottleneck, like netem on the sender's egress;
//! 2. a drop-tail queue of `queue_bytes` in front of a serializer of
//!    `rate_bps` bits per second (0 = infinitely fast);
//! 3. propagation `delay`, plus the impairment's extra delay, jitter,
//!    duplication, reordering and corruption.
//!
//! [`Sim::set_frame_overhead`] makes each datagram occupy its UDP payload
//! plus that many bytes in the queue and on the serializer (42 = IPv4, UDP
//! and Ethernet headers, what a Linux TBF on a veth counts), so that a
//! simulated 100 Mbit/s is the same link as netlab's.
//!
//! Links are independent per direction, so asymmetric paths are two
//! `set_link` calls. Pairs without a link get [`Sim::set_default_link`]'s
//! configuration. Everything is seeded: one seed, one run.
//!
//! Virtual time starts at an arbitrary `Instant` (the constructor's only use
//! of the clock) and moves only when [`Sim::step`] jumps to the next event.

use super::endpoint::Endpoint;
use super::impair::{ImpairConfig, Impairment, LossModel};
use crate::rng::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkConfig {
    /// Bottleneck rate in bits per second; 0 means no serialization delay.
    pub rate_bps: u64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Drop-tail queue capacity in bytes (0 = unbounded).
    pub queue_bytes: usize,
    /// Loss, jitter, duplication, reordering, corruption (its `delay` adds to ours).
    pub impair: ImpairConfig,
}

impl LinkConfig {
    /// A link of `mbps` with `delay` one way and a queue of one bandwidth-delay
    /// product of the round trip `2 × delay`.
    pub fn bottleneck(mbps: u64, delay: Duration) -> Self {
        let rate_bps = mbps * 1_000_000;
        let bdp = (rate_bps as f64 / 8.0 * (2 * delay).as_secs_f64()) as usize;
        LinkConfig {
            rate_bps,
            delay,
            queue_bytes: bdp,
            impair: ImpairConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub queue_drops: u64,
    pub outage_drops: u64,
}

struct Link {
    cfg: LinkConfig,
    loss: LossModel,
    rng: Rng,
    impair: Impairment,
    up: bool,
    busy_until: Option<Instant>,
    /// (finish time, size) of datagrams still in the queue or on the wire.
    queue: VecDeque<(Instant, usize)>,
    queued: usize,
    counters: LinkCounters,
}

impl Link {
    fn new(cfg: LinkConfig, seed: u64) -> Self {
        let mut imp = cfg.impair.clone();
        let loss = LossModel::new(imp.loss, imp.burst);
        imp.loss = 0.0;
        imp.burst = None;
        imp.delay += cfg.delay;
        imp.seed ^= seed.rotate_left(17);
        Link {
            loss,
            rng: Rng::new(seed ^ cfg.impair.seed),
            impair: Impairment::new(imp),
            cfg,
            up: true,
            busy_until: None,
            queue: VecDeque::new(),
            queued: 0,
            counters: LinkCounters::default(),
        }
    }

    /// Takes a datagram that occupies `size` bytes on the wire at `now`;
    /// returns when it leaves the serializer, or None if dropped.
    fn admit(&mut self, now: Instant, size: usize) -> Option<Instant> {
        self.counters.sent += 1;
        if !self.up {
            self.counters.outage_drops += 1;
            return None;
        }
        if self.loss.lose(&mut self.rng) {
            self.counters.lost += 1;
            return None;
        }
        if self.cfg.rate_bps == 0 {
            return Some(now);
        }
        while let Some(&(finish, sz)) = self.queue.front() {
            if finish > now {
                break;
            }
            self.queue.pop_front();
            self.queued -= sz;
        }
        if self.cfg.queue_bytes > 0 && self.queued + size > self.cfg.queue_bytes {
            self.counters.queue_drops += 1;
            return None;
        }
        let start = self.busy_until.map_or(now, |b| b.max(now));
        let tx = Duration::from_nanos((size as u64 * 8 * 1_000_000_000) / self.cfg.rate_bps);
        let finish = start + tx;
        self.busy_until = Some(finish);
        self.queue.push_back((finish, size));
        self.queued += size;
        Some(finish)
    }
}

struct Arrival {
    at: Instant,
    seq: u64,
    src: SocketAddr,
    dst: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Arrival {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Arrival {}
impl PartialOrd for Arrival {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Arrival {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

pub struct Sim {
    start: Instant,
    now: Instant,
    seed: u64,
    nodes: BTreeMap<SocketAddr, Endpoint>,
    links: Vec<Link>,
    /// Directed links between two sockets, and shared ones between two hosts.
    by_pair: HashMap<(SocketAddr, SocketAddr), usize>,
    by_host: HashMap<(IpAddr, IpAddr), usize>,
    default_link: LinkConfig,
    arrivals: BinaryHeap<Reverse<Arrival>>,
    seq: u64,
    buf: Vec<u8>,
    steps: u64,
    oversize: u64,
    frame_overhead: usize,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        // The only clock read: an arbitrary origin for virtual time.
        Sim::with_start(seed, Instant::now())
    }

    pub fn with_start(seed: u64, start: Instant) -> Self {
        Sim {
            start,
            now: start,
            seed,
            nodes: BTreeMap::new(),
            links: Vec::new(),
            by_pair: HashMap::new(),
            by_host: HashMap::new(),
            default_link: LinkConfig::default(),
            arrivals: BinaryHeap::new(),
            seq: 0,
            buf: Vec::with_capacity(2048),
            steps: 0,
            oversize: 0,
            frame_overhead: 0,
        }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Bytes every datagram occupies on a link beyond its UDP payload (0 by
    /// default; 42 for IPv4 + UDP + Ethernet headers).
    pub fn set_frame_overhead(&mut self, bytes: usize) {
        self.frame_overhead = bytes;
    }

    /// Datagrams an endpoint emitted above its own `max_udp_payload` (a bug if not 0).
    pub fn oversize_datagrams(&self) -> u64 {
        self.oversize
    }

    pub fn add_node(&mut self, addr: SocketAddr, endpoint: Endpoint) {
        self.nodes.insert(addr, endpoint);
    }

    /// Removes a node (its endpoint vanishes; datagrams to it are lost).
    pub fn remove_node(&mut self, addr: SocketAddr) -> Option<Endpoint> {
        self.nodes.remove(&addr)
    }

    pub fn endpoint(&mut self, addr: SocketAddr) -> &mut Endpoint {
        match self.nodes.get_mut(&addr) {
            Some(e) => e,
            None => panic!("no simulated node at {addr}"),
        }
    }

    pub fn try_endpoint(&mut self, addr: SocketAddr) -> Option<&mut Endpoint> {
        self.nodes.get_mut(&addr)
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.keys().copied().collect()
    }

    /// Configures the directed link `a → b`.
    pub fn set_link(&mut self, a: SocketAddr, b: SocketAddr, cfg: LinkConfig) {
        let seed = self.seed ^ hash_pair(a, b);
        self.links.push(Link::new(cfg, seed));
        self.by_pair.insert((a, b), self.links.len() - 1);
    }

    /// Configures one directed link shared by every socket pair from host
    /// `a` to host `b` that has no link of its own (a shared bottleneck).
    pub fn set_host_link(&mut self, a: IpAddr, b: IpAddr, cfg: LinkConfig) {
        let seed = self.seed ^ hash_pair(SocketAddr::new(a, 0), SocketAddr::new(b, 0));
        self.links.push(Link::new(cfg, seed));
        self.by_host.insert((a, b), self.links.len() - 1);
    }

    /// Configures both directions between `a` and `b` alike.
    pub fn set_path(&mut self, a: SocketAddr, b: SocketAddr, cfg: LinkConfig) {
        self.set_link(a, b, cfg.clone());
        self.set_link(b, a, cfg);
    }

    /// Used for pairs without their own link.
    pub fn set_default_link(&mut self, cfg: LinkConfig) {
        self.default_link = cfg;
    }

    /// Takes the link `a → b` down (everything dropped) or back up.
    pub fn set_up(&mut self, a: SocketAddr, b: SocketAddr, up: bool) {
        self.link(a, b).up = up;
    }

    pub fn link_counters(&mut self, a: SocketAddr, b: SocketAddr) -> LinkCounters {
        self.link(a, b).counters.clone()
    }

    /// Counters of the host link `a → b` (see [`Sim::set_host_link`]).
    pub fn host_link_counters(&self, a: IpAddr, b: IpAddr) -> Option<LinkCounters> {
        let i = *self.by_host.get(&(a, b))?;
        Some(self.links[i].counters.clone())
    }

    /// The link `a → b`: its own, else its hosts' shared one, else a new default one.
    fn link_index(&mut self, a: SocketAddr, b: SocketAddr) -> usize {
        if let Some(&i) = self.by_pair.get(&(a, b)) {
            return i;
        }
        if let Some(&i) = self.by_host.get(&(a.ip(), b.ip())) {
            return i;
        }
        let cfg = self.default_link.clone();
        self.set_link(a, b, cfg);
        self.links.len() - 1
    }

    fn link(&mut self, a: SocketAddr, b: SocketAddr) -> &mut Link {
        let i = self.link_index(a, b);
        &mut self.links[i]
    }

    /// Lets every endpoint send what it may now, and routes it.
    fn flush(&mut self) {
        let now = self.now;
        let addrs: Vec<SocketAddr> = self.nodes.keys().copied().collect();
        for src in addrs {
            while let Some(ep) = self.nodes.get_mut(&src) {
                let mut buf = std::mem::take(&mut self.buf);
                let t = ep.poll_transmit(now, &mut buf);
                let Some(t) = t else {
                    self.buf = buf;
                    break;
                };
                if t.len > ep.config().max_udp_payload || t.len != buf.len() {
                    self.oversize += 1;
                }
                let dst = t.destination;
                let i = self.link_index(src, dst);
                let link = &mut self.links[i];
                if let Some(leave) = link.admit(now, t.len + self.frame_overhead) {
                    link.impair.push(leave, dst, &buf[..t.len]);
                    while let Some((at, d, data)) = link.impair.pop_next() {
                        link.counters.delivered += 1;
                        self.seq += 1;
                        self.arrivals.push(Reverse(Arrival {
                            at,
                            seq: self.seq,
                            src,
                            dst: d,
                            data,
                        }));
                    }
                }
                self.buf = buf;
            }
        }
    }

    /// The next time anything happens: an arrival or an endpoint deadline.
    pub fn next_event(&mut self) -> Option<Instant> {
        let a = self.arrivals.peek().map(|r| r.0.at);
        let t = self
            .nodes
            .values_mut()
            .filter_map(|e| e.poll_timeout())
            .min();
        match (a, t) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        }
    }

    /// Sends what can be sent now, then advances to the next event and
    /// handles it. Returns false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        self.flush();
        let Some(next) = self.next_event() else {
            return false;
        };
        self.steps += 1;
        if next > self.now {
            self.now = next;
        }
        let now = self.now;
        while self.arrivals.peek().is_some_and(|r| r.0.at <= now) {
            let Some(Reverse(a)) = self.arrivals.pop() else {
                break;
            };
            if let Some(ep) = self.nodes.get_mut(&a.dst) {
                ep.handle_datagram(now, a.src, &a.data);
            }
        }
        for ep in self.nodes.values_mut() {
            if ep.poll_timeout().is_some_and(|t| t <= now) {
                ep.handle_timeout(now);
            }
        }
        self.flush();
        true
    }

    /// Steps until `done` returns true (then true) or `limit` of virtual time
    /// has passed since the call or nothing is left to happen (then false).
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let deadline = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= deadline {
                return false;
            }
            match self.next_event() {
                Some(t) if t <= deadline => {
                    if !self.step() {
                        return done(self);
                    }
                }
                _ => {
                    // Idle until the deadline.
                    self.flush();
                    if self.next_event().is_none_or(|t| t > deadline) {
                        self.now = deadline;
                        return done(self);
                    }
                }
            }
        }
    }

    /// Advances virtual time by `d`, handling everything on the way.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }
}

/// FNV-1a over both addresses: a per-link seed.
fn hash_pair(a: SocketAddr, b: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for addr in [a, b] {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v) => v.octets(),
        };
        for byte in ip.iter().chain(addr.port().to_be_bytes().iter()) {
            h ^= *byte as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}
