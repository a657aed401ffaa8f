//! Whole peers (`peer::node::Node`: swarms + rudp endpoint) over rudp's
//! simulated network in virtual time, with seeded loss: every copy complete
//! and verified, and the same seed gives the same run.

use chunkswarm::manifest::{sha256, Digest32, Manifest};
use chunkswarm::peer::bitmap::ChunkBitmap;
use chunkswarm::peer::node::{Node, NodeConfig, NodeEvent};
use chunkswarm::peer::storage::MemoryStore;
use chunkswarm::peer::swarm::{Swarm, SwarmConfig, SwarmStats};
use chunkswarm::rng::Rng;
use chunkswarm::rudp::impair::ImpairConfig;
use chunkswarm::rudp::sim::{LinkConfig, Sim};
use chunkswarm::rudp::{Config, Endpoint};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 7001))
}

type Store = Arc<Mutex<MemoryStore>>;

/// The swarm of `manifest` at peer `a`: the whole file for its owner, an
/// empty memory store for a member.
fn swarm_at(
    now: Instant,
    a: SocketAddr,
    owner: bool,
    manifest: &Manifest,
    data: &[u8],
    seed: u64,
) -> (Swarm, Store) {
    let n = manifest.chunk_count();
    let (store, have) = if owner {
        (MemoryStore::with_file(manifest, data), ChunkBitmap::full(n))
    } else {
        (MemoryStore::empty(manifest), ChunkBitmap::empty(n))
    };
    let store = Arc::new(Mutex::new(store));
    let boxed = Box::new(store.clone());
    let cfg = SwarmConfig::default();
    let swarm = Swarm::new(now, manifest.clone(), a, boxed, have, cfg, seed);
    (swarm, store)
}

struct ExtraFile {
    owner: SocketAddr,
    manifest: Manifest,
    data: Vec<u8>,
    stores: BTreeMap<SocketAddr, Store>,
}

struct World {
    sim: Sim,
    nodes: BTreeMap<SocketAddr, Node>,
    stores: BTreeMap<SocketAddr, Store>,
    manifest: Manifest,
    data: Vec<u8>,
    /// (virtual time, receiver, chunk, sender): the run's fingerprint.
    trace: Vec<(Duration, SocketAddr, u32, SocketAddr)>,
    /// When each member completed the main file.
    complete: BTreeMap<SocketAddr, Duration>,
    /// More files, each shared by one peer with everyone else in its group.
    extra: Vec<ExtraFile>,
    /// (peer, file) for every completed extra file.
    extra_complete: Vec<(SocketAddr, Digest32)>,
    /// (node, peer) for every connection a node saw die.
    downs: Vec<(SocketAddr, SocketAddr)>,
}

impl World {
    /// Peer 0 owns a file of `size` random bytes; peers 1.. are members. Every
    /// directed link: 100 Mbit/s, 5 ms, 256 KiB queue, `loss` uniform loss.
    fn new(seed: u64, peers: usize, size: usize, loss: f64) -> World {
        let mut rng = Rng::new(seed);
        let mut data = vec![0u8; size];
        rng.fill(&mut data);
        let manifest = Manifest::of_bytes("video.mp4", &data);
        let mut sim = Sim::new(seed);
        sim.set_default_link(LinkConfig {
            rate_bps: 100_000_000,
            delay: Duration::from_millis(5),
            queue_bytes: 256 << 10,
            impair: ImpairConfig {
                loss,
                seed,
                ..ImpairConfig::default()
            },
        });
        let now = sim.now();
        let mut nodes = BTreeMap::new();
        let mut stores = BTreeMap::new();
        for i in 0..peers {
            let a = addr(i);
            let cfg = Config {
                max_ptos: 6,
                ..Config::default()
            };
            sim.add_node(a, Endpoint::new(cfg, seed * 1000 + i as u64));
            let (swarm, store) = swarm_at(now, a, i == 0, &manifest, &data, seed ^ (i as u64) << 8);
            let mut node = Node::new(NodeConfig::default());
            node.add_swarm(swarm);
            nodes.insert(a, node);
            stores.insert(a, store);
        }
        World {
            sim,
            nodes,
            stores,
            manifest,
            data,
            trace: Vec::new(),
            complete: BTreeMap::new(),
            extra: Vec::new(),
            extra_complete: Vec::new(),
            downs: Vec::new(),
        }
    }

    /// The tracker tells everyone the group (join order = index order).
    fn announce_group(&mut self) {
        let owner = addr(0);
        let members: Vec<SocketAddr> = self.nodes.keys().copied().filter(|&a| a != owner).collect();
        let file = self.manifest.file_hash;
        let now = self.sim.now();
        for (&a, node) in self.nodes.iter_mut() {
            let ep = self.sim.endpoint(a);
            node.on_group(now, ep, &file, Some(owner), &members)
                .unwrap();
        }
    }

    fn start_upload(&mut self) {
        let file = self.manifest.file_hash;
        let now = self.sim.now();
        let ep = self.sim.endpoint(addr(0));
        let owner = self.nodes.get_mut(&addr(0)).unwrap();
        owner.start_upload(now, ep, &file).unwrap();
    }

    /// Lets every node take in what its endpoint reported.
    fn react(&mut self) {
        let now = self.sim.now();
        let elapsed = self.sim.elapsed();
        for (&a, node) in self.nodes.iter_mut() {
            let Some(ep) = self.sim.try_endpoint(a) else {
                continue;
            };
            node.process(now, ep);
            while let Some(ev) = node.poll_event() {
                match ev {
                    NodeEvent::ChunkReceived { index, from, .. } => {
                        self.trace.push((elapsed, a, index, from))
                    }
                    NodeEvent::Complete { file, .. } if file != self.manifest.file_hash => {
                        self.extra_complete.push((a, file));
                    }
                    NodeEvent::Complete { .. } => {
                        self.complete.insert(a, elapsed);
                    }
                    NodeEvent::BadChunk { .. } | NodeEvent::StorageFailed { .. } => {
                        panic!("{a}: {ev:?}")
                    }
                    NodeEvent::NeighbourDown { peer, .. } => self.downs.push((a, peer)),
                    other => {
                        if std::env::var("SWARM_DEBUG").is_ok() {
                            eprintln!("{elapsed:?} {a}: {other:?}");
                        }
                    }
                }
            }
        }
    }

    fn all_complete(&self) -> bool {
        let owner = addr(0);
        self.nodes
            .keys()
            .filter(|&&a| a != owner)
            .all(|a| self.complete.contains_key(a))
    }

    /// Peer `owner` shares another file of `size` bytes; every other peer
    /// joins its group, and it uploads at once.
    fn share_another_file(&mut self, owner: SocketAddr, size: usize, seed: u64) -> Digest32 {
        let mut data = vec![0u8; size];
        Rng::new(seed).fill(&mut data);
        let manifest = Manifest::of_bytes("second.bin", &data);
        let file = manifest.file_hash;
        let now = self.sim.now();
        let mut stores = BTreeMap::new();
        for (&a, node) in self.nodes.iter_mut() {
            let (swarm, store) = swarm_at(now, a, a == owner, &manifest, &data, seed);
            node.add_swarm(swarm);
            stores.insert(a, store);
        }
        let members: Vec<SocketAddr> = self.nodes.keys().copied().filter(|&a| a != owner).collect();
        for (&a, node) in self.nodes.iter_mut() {
            let ep = self.sim.endpoint(a);
            node.on_group(now, ep, &file, Some(owner), &members)
                .unwrap();
        }
        let ep = self.sim.endpoint(owner);
        let node = self.nodes.get_mut(&owner).unwrap();
        node.start_upload(now, ep, &file).unwrap();
        self.extra.push(ExtraFile {
            owner,
            manifest,
            data,
            stores,
        });
        file
    }

    /// Peer `a` vanishes: its endpoint stops answering.
    fn kill(&mut self, a: SocketAddr) {
        self.sim.remove_node(a);
        self.nodes.remove(&a);
        self.stores.remove(&a);
    }

    /// Chunks peer `a` holds.
    fn held(&self, a: SocketAddr) -> u32 {
        let swarm = self.nodes[&a].swarm(&self.manifest.file_hash).unwrap();
        swarm.have().count()
    }

    /// Runs until every member completed; panics after `limit` virtual time.
    fn run(&mut self, limit: Duration) {
        self.run_with(limit, |_| {}, World::all_complete);
    }

    /// Runs until `done`, calling `hook` between steps.
    fn run_with(
        &mut self,
        limit: Duration,
        mut hook: impl FnMut(&mut World),
        done: impl Fn(&World) -> bool,
    ) {
        loop {
            self.react();
            hook(self);
            self.react();
            if done(self) {
                return;
            }
            assert!(
                self.sim.elapsed() < limit,
                "not done after {limit:?}: {} of {} complete",
                self.complete.len(),
                self.nodes.len() - 1
            );
            // One network step, but not past the nodes' earliest deadline
            // (run_until flushes pending datagrams before it idles).
            let now = self.sim.now();
            let deadline = self.nodes.values().filter_map(|n| n.poll_timeout()).min();
            let horizon = deadline.map_or(limit, |d| d.saturating_duration_since(now));
            let mut calls = 0;
            self.sim.run_until(horizon, |_| {
                calls += 1;
                calls > 1
            });
            let now = self.sim.now();
            for (&a, node) in self.nodes.iter_mut() {
                if node.poll_timeout().is_some_and(|t| t <= now) {
                    if let Some(ep) = self.sim.try_endpoint(a) {
                        node.handle_timeout(now, ep);
                    }
                }
            }
        }
    }

    fn assert_all_verified(&self) {
        for (a, store) in &self.stores {
            let got = store.lock().unwrap().assembled();
            let got = got.unwrap_or_else(|| panic!("{a} incomplete"));
            assert_eq!(sha256(&got), self.manifest.file_hash, "{a}");
            assert!(got == self.data, "{a}");
        }
    }

    fn owner_stats(&self) -> &SwarmStats {
        let node = &self.nodes[&addr(0)];
        node.swarm(&self.manifest.file_hash).unwrap().stats()
    }
}

fn distribute(seed: u64, peers: usize, size: usize, loss: f64) -> World {
    let mut w = World::new(seed, peers, size, loss);
    w.announce_group();
    w.sim.run_for(Duration::from_millis(200));
    w.start_upload();
    w.run(Duration::from_secs(300));
    w.assert_all_verified();
    let n = w.manifest.chunk_count() as u64;
    let stats = w.owner_stats();
    let up: u64 = stats.uploaded_to.values().map(|&k| k as u64).sum();
    eprintln!(
        "{peers} peers, {:.0}% loss: done in {:?}, owner sent {up} chunks of {n} ({} pushed)",
        loss * 100.0,
        w.complete.values().max().unwrap(),
        stats.pushed_chunks
    );
    // Each chunk pushed to at most one member; the members did most of the
    // rest: the owner's help beyond its pushes (fallback and assists, once
    // a download has gone on for `owner_fallback_after`) is at most a fifth
    // of all copies.
    assert!(stats.pushed_chunks <= n);
    let copies = n * (peers as u64 - 1);
    assert!(
        up >= n && up - n <= copies / 5,
        "owner sent {up} chunks of {n}"
    );
    if loss == 0.0 {
        assert_eq!(stats.pushed_chunks, n);
        assert!(up <= n + n / 4, "owner sent {up} chunks of {n}");
    }
    w
}

const MB: usize = 1_000_000;

#[test]
fn six_peers_lossless() {
    distribute(1, 6, 4 * MB, 0.0);
}

#[test]
fn six_peers_5_percent_loss() {
    distribute(2, 6, 4 * MB, 0.05);
}

#[test]
fn six_peers_20_percent_loss() {
    distribute(3, 6, 3 * MB, 0.20);
}

#[test]
fn thirty_peers_lossless() {
    distribute(4, 30, 2 * MB, 0.0);
}

#[test]
fn thirty_peers_20_percent_loss() {
    distribute(5, 30, 2 * MB, 0.20);
}

#[test]
fn same_seed_same_run() {
    let a = distribute(6, 6, 2 * MB, 0.10);
    let b = distribute(6, 6, 2 * MB, 0.10);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.complete, b.complete);
}

/// A member vanishes mid-download: rudp reports it dead to its neighbours,
/// they replace it at once, the tracker drops it 6 s later, the rest complete.
#[test]
fn member_killed_mid_download_the_rest_complete() {
    let mut w = World::new(7, 8, 4 * MB, 0.05);
    w.announce_group();
    w.sim.run_for(Duration::from_millis(200));
    w.start_upload();
    let victim = addr(3);
    let mut killed_at = None;
    let mut announced = false;
    w.run_with(
        Duration::from_secs(300),
        |w| match killed_at {
            None if w.held(victim) >= w.manifest.chunk_count() / 3 => {
                assert!(!w.all_complete());
                w.kill(victim);
                killed_at = Some(w.sim.now());
            }
            Some(t) if !announced && w.sim.now() >= t + Duration::from_secs(6) => {
                announced = true;
                w.announce_group();
            }
            _ => {}
        },
        |w| w.all_complete() && w.downs.iter().any(|&(_, p)| p == victim),
    );
    assert!(
        w.downs.iter().any(|&(_, p)| p == victim),
        "nobody saw it die"
    );
    w.assert_all_verified();
}

/// Two files at once: peer 0 shares one, peer 1 another, everyone downloads
/// both; each pair of peers shares one connection for both swarms.
#[test]
fn two_files_over_shared_connections() {
    let mut w = World::new(8, 6, 2 * MB, 0.05);
    w.announce_group();
    w.sim.run_for(Duration::from_millis(200));
    w.start_upload();
    let second = w.share_another_file(addr(1), 3 * MB, 88);
    w.run_with(
        Duration::from_secs(300),
        |_| {},
        |w| w.all_complete() && w.extra_complete.len() == w.nodes.len() - 1,
    );
    w.assert_all_verified();
    let x = &w.extra[0];
    assert_eq!(x.manifest.file_hash, second);
    for (a, store) in &x.stores {
        let got = store.lock().unwrap().assembled();
        assert!(got.as_deref() == Some(&x.data[..]), "{a}: second file");
    }
    for (&a, node) in &w.nodes {
        // One connection per remote peer, shared by both swarms (two owners
        // that opened to each other at once keep both: each delivers).
        let peers: Vec<SocketAddr> = node.connected().collect();
        for owner in [addr(0), addr(1)] {
            assert!(a == owner || peers.contains(&owner), "{a}");
        }
        let peers = peers.len();
        assert!(w.sim.endpoint(a).connections().len() <= peers + 1, "{a}");
        assert_eq!(node.counters().unknown_file, 0);
        assert_eq!(node.counters().undecodable, 0);
    }
    assert_eq!(x.owner, addr(1));
}

/// A peer that sends garbage over its rudp connections (random bytes, cut
/// messages, other files, chunk indices out of range) disturbs nobody: each
/// bad message is counted and dropped, and every copy completes.
#[test]
fn garbage_messages_are_counted_and_dropped() {
    use chunkswarm::wire::swarm::{Body, Message};
    let mut w = World::new(9, 6, 2 * MB, 0.0);
    w.announce_group();
    w.sim.run_for(Duration::from_millis(200));
    w.start_upload();
    w.sim.run_for(Duration::from_millis(50));
    let file = w.manifest.file_hash;
    let mut rng = Rng::new(99);
    let liar = addr(2);
    let handles = w.sim.endpoint(liar).connections();
    assert!(!handles.is_empty());
    let mut sent = (0u64, 0u64);
    for &h in &handles {
        for k in 0..50 {
            let mut junk = vec![0u8; 1 + rng.below(300) as usize];
            rng.fill(&mut junk);
            let cut = Message::new(file, Body::Have { index: 1 }).encode();
            let wrong_file = Message::new([k as u8; 32], Body::Request { index: 0 });
            let far = Message::new(file, Body::Request { index: 1 << 30 });
            let ep = w.sim.endpoint(liar);
            ep.send(h, junk, k % 2 == 0).unwrap();
            ep.send(h, cut[..cut.len() - 1].to_vec(), true).unwrap();
            ep.send(h, wrong_file.encode(), false).unwrap();
            ep.send(h, far.encode(), true).unwrap();
            sent.0 += 2;
            sent.1 += 1;
        }
    }
    w.run(Duration::from_secs(120));
    w.assert_all_verified();
    let (mut undecodable, mut unknown) = (0, 0);
    for node in w.nodes.values() {
        undecodable += node.counters().undecodable;
        unknown += node.counters().unknown_file;
    }
    // (With this seed no random message happens to start like a valid one.)
    assert_eq!(undecodable, sent.0);
    assert_eq!(unknown, sent.1);
    let bad_index: u64 = w
        .nodes
        .values()
        .map(|n| n.swarm(&file).unwrap().stats().protocol_errors)
        .sum();
    assert!(bad_index >= sent.1);
}

/// `EndpointNode` (endpoint + node, the API the peer process drives) over a
/// perfect network: datagrams handed straight across, time jumping to the
/// next deadline.
#[test]
fn endpoint_nodes_over_a_perfect_network() {
    use chunkswarm::peer::node::EndpointNode;
    let mut rng = Rng::new(10);
    let mut data = vec![0u8; 1_000_000];
    rng.fill(&mut data);
    let manifest = Manifest::of_bytes("clip.mp4", &data);
    let file = manifest.file_hash;
    let mut now = Instant::now();
    let mut peers: BTreeMap<SocketAddr, (EndpointNode, Store)> = BTreeMap::new();
    for i in 0..3 {
        let a = addr(i);
        let ep = Endpoint::new(Config::default(), 500 + i as u64);
        let mut p = EndpointNode::new(ep, NodeConfig::default());
        let (swarm, store) = swarm_at(now, a, i == 0, &manifest, &data, i as u64);
        p.add_swarm(swarm);
        peers.insert(a, (p, store));
    }
    let members = [addr(1), addr(2)];
    for (p, _) in peers.values_mut() {
        p.on_group(now, &file, Some(addr(0)), &members).unwrap();
    }
    let owner = &mut peers.get_mut(&addr(0)).unwrap().0;
    owner.start_upload(now, &file).unwrap();
    let mut done = BTreeMap::new();
    let mut buf = Vec::new();
    for _ in 0..1_000_000 {
        let mut moved = Vec::new();
        for (&a, (p, _)) in peers.iter_mut() {
            while let Some(t) = p.poll_transmit(now, &mut buf) {
                moved.push((a, t.destination, buf[..t.len].to_vec()));
            }
            while let Some(ev) = p.poll_event() {
                if let NodeEvent::Complete { path, .. } = ev {
                    done.insert(a, path);
                }
            }
        }
        if done.len() == 2 {
            break;
        }
        if moved.is_empty() {
            let next = peers
                .values_mut()
                .filter_map(|(p, _)| p.poll_timeout())
                .min();
            now = now.max(next.expect("something to wait for"));
            for (p, _) in peers.values_mut() {
                if p.poll_timeout().is_some_and(|t| t <= now) {
                    p.handle_timeout(now);
                }
            }
        }
        for (from, to, bytes) in moved {
            if let Some((p, _)) = peers.get_mut(&to) {
                p.handle_datagram(now, from, &bytes);
            }
        }
    }
    assert_eq!(done.len(), 2, "members did not complete");
    for m in members {
        let got = peers[&m].1.lock().unwrap().assembled();
        assert!(got.as_deref() == Some(&data[..]), "{m}");
    }
}
