//! The demo's join race in virtual time: the tracker tells an existing member
//! of a newcomer before the newcomer has its own copy of the group (and so its
//! swarm). The existing member (the lower address, so the one that connects)
//! opens the connection and says Hello to a node with no swarm for the file.
//!
//! Before the node kept such early Hellos, that Hello was dropped: the
//! connection stayed up but neither swarm ever learnt the other's chunks, so
//! the overlay edge was dead. In the demo three such dead edges split the five
//! members into {m0, m4} and {m1, m2, m3}, and every member waited for the
//! owner fallback (`owner_fallback_after`, 2 s) for the other side's chunks:
//! distribution took 4.1 s instead of 0.15 s. Here the edge must carry chunks
//! both ways and no member may fall back to the owner.

use chunkswarm::manifest::Manifest;
use chunkswarm::peer::bitmap::ChunkBitmap;
use chunkswarm::peer::node::{Node, NodeEvent};
use chunkswarm::peer::storage::{ChunkStore, MemoryStore};
use chunkswarm::peer::swarm::{Swarm, SwarmConfig};
use chunkswarm::rudp::sim::Sim;
use chunkswarm::rudp::{Config, Endpoint};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The owner's swarm (`data` given) or an empty member's, in memory.
fn swarm(now: Instant, at: SocketAddr, m: &Manifest, data: Option<&[u8]>) -> Swarm {
    let n = m.chunk_count();
    let store: Box<dyn ChunkStore + Send> = match data {
        Some(d) => Box::new(MemoryStore::with_file(m, d)),
        None => Box::new(MemoryStore::empty(m)),
    };
    let have = data.map_or(ChunkBitmap::empty(n), |_| ChunkBitmap::full(n));
    let config = SwarmConfig::default();
    Swarm::new(now, m.clone(), at, store, have, config, 11)
}

#[test]
fn a_member_that_hears_of_a_newcomer_first_still_trades_with_it() {
    let o = SocketAddr::from(([10, 0, 0, 1], 7001));
    // m0 < m1: m0 opens the member-to-member connection.
    let m0 = SocketAddr::from(([10, 0, 0, 2], 7001));
    let m1 = SocketAddr::from(([10, 0, 0, 3], 7001));
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 249) as u8).collect();
    let manifest = Manifest::of_bytes("race.bin", &data);
    let file = manifest.file_hash;
    let mut sim = Sim::new(3);
    for (i, &a) in [o, m0, m1].iter().enumerate() {
        sim.add_node(a, Endpoint::new(Config::default(), 1 + i as u64));
    }
    let now = sim.now();
    let (mut owner, mut first, mut newcomer) = (Node::default(), Node::default(), Node::default());
    owner.add_swarm(swarm(now, o, &manifest, Some(&data)));
    owner
        .on_group(now, sim.endpoint(o), &file, Some(o), &[m0])
        .unwrap();
    first.add_swarm(swarm(now, m0, &manifest, None));
    first
        .on_group(now, sim.endpoint(m0), &file, Some(o), &[m0])
        .unwrap();
    // The tracker's push about m1 reaches m0 (and the owner) first.
    owner
        .on_group(now, sim.endpoint(o), &file, Some(o), &[m0, m1])
        .unwrap();
    first
        .on_group(now, sim.endpoint(m0), &file, Some(o), &[m0, m1])
        .unwrap();

    let mut joined = false;
    let mut uploading = false;
    let mut done = [false, false];
    for _ in 0..20_000 {
        sim.run_for(Duration::from_millis(1));
        let now = sim.now();
        owner.handle_timeout(now, sim.endpoint(o));
        first.handle_timeout(now, sim.endpoint(m0));
        newcomer.handle_timeout(now, sim.endpoint(m1));
        if !joined && newcomer.counters().unknown_file > 0 {
            // m0's Hello has reached m1; only now does m1 learn its group.
            joined = true;
            newcomer.add_swarm(swarm(now, m1, &manifest, None));
            newcomer
                .on_group(now, sim.endpoint(m1), &file, Some(o), &[m0, m1])
                .unwrap();
        }
        if joined && !uploading {
            uploading = true;
            owner.start_upload(now, sim.endpoint(o), &file).unwrap();
        }
        for (k, node) in [&mut first, &mut newcomer].into_iter().enumerate() {
            while let Some(ev) = node.poll_event() {
                if let NodeEvent::Complete { .. } = ev {
                    done[k] = true;
                }
            }
        }
        if done == [true, true] {
            break;
        }
    }
    assert!(joined, "m0 never said Hello to the newcomer");
    assert_eq!(done, [true, true], "a member did not complete");
    let stats_first = first.swarm(&file).unwrap().stats();
    let stats_new = newcomer.swarm(&file).unwrap().stats();
    // The owner pushes half the chunks to each member; the other half must
    // come over the member-to-member edge, in both directions.
    let from_newcomer = stats_first.received_from.get(&m1).copied().unwrap_or(0);
    let from_first = stats_new.received_from.get(&m0).copied().unwrap_or(0);
    assert!(from_newcomer > 0, "m0 got nothing from m1: {stats_first:?}");
    assert!(from_first > 0, "m1 got nothing from m0: {stats_new:?}");
    assert_eq!(stats_first.owner_requests, 0, "{stats_first:?}");
    assert_eq!(stats_new.owner_requests, 0, "{stats_new:?}");
}
