//! Tracker frame codec: every message round-trips, and no truncation or
//! corruption of a valid frame, nor random bytes, makes a decoder panic.

use chunkswarm::manifest::{Manifest, CHUNK_SIZE};
use chunkswarm::wire::tracker::{
    FileEntry, FrameBuffer, GroupView, PeerId, PeerInfo, PeerMessage, RefusalCode, TrackerMessage,
    LEN_PREFIX,
};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn peer() -> impl Strategy<Value = PeerInfo> {
    (any::<u64>(), addr()).prop_map(|(id, udp)| PeerInfo {
        id: PeerId(id),
        udp,
    })
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.é -]{1,40}".prop_filter("a file name", |n| {
        chunkswarm::manifest::check_file_name(n).is_ok()
    })
}

/// A consistent manifest of up to 5 chunks with arbitrary digests.
fn manifest() -> impl Strategy<Value = Manifest> {
    (
        name(),
        0..5 * CHUNK_SIZE as u64,
        any::<[u8; 32]>(),
        any::<u8>(),
    )
        .prop_map(|(name, size, file_hash, salt)| {
            let count = size.div_ceil(CHUNK_SIZE as u64) as usize;
            Manifest {
                name,
                size,
                chunk_size: CHUNK_SIZE,
                chunk_hashes: (0..count).map(|i| [salt ^ i as u8; 32]).collect(),
                file_hash,
            }
        })
}

fn group() -> impl Strategy<Value = GroupView> {
    (manifest(), peer(), prop::collection::vec(peer(), 0..6)).prop_map(
        |(manifest, owner, members)| GroupView {
            manifest,
            owner,
            members,
        },
    )
}

fn peer_message() -> impl Strategy<Value = PeerMessage> {
    prop_oneof![
        Just(PeerMessage::Heartbeat),
        (any::<u16>(), prop::option::of(ip())).prop_map(|(udp_port, advertise)| {
            PeerMessage::Hello {
                udp_port,
                advertise,
            }
        }),
        (any::<u32>(), manifest())
            .prop_map(|(req, manifest)| PeerMessage::RegisterFile { req, manifest }),
        any::<u32>().prop_map(|req| PeerMessage::List { req }),
        (any::<u32>(), name()).prop_map(|(req, name)| PeerMessage::JoinGroup { req, name }),
        (any::<u32>(), name()).prop_map(|(req, name)| PeerMessage::LeaveGroup { req, name }),
        (any::<u32>(), name()).prop_map(|(req, name)| PeerMessage::GetGroup { req, name }),
    ]
}

fn refusal_code() -> impl Strategy<Value = RefusalCode> {
    prop::sample::select(vec![
        RefusalCode::UnknownFile,
        RefusalCode::AlreadyShared,
        RefusalCode::OwnFile,
        RefusalCode::AlreadyMember,
        RefusalCode::NotMember,
        RefusalCode::BadManifest,
        RefusalCode::Full,
        RefusalCode::Protocol,
    ])
}

fn file_entry() -> impl Strategy<Value = FileEntry> {
    (name(), any::<u64>(), any::<u32>(), peer(), any::<u32>()).prop_map(
        |(name, size, chunk_count, owner, group_size)| FileEntry {
            name,
            size,
            chunk_count,
            owner,
            group_size,
        },
    )
}

fn tracker_message() -> impl Strategy<Value = TrackerMessage> {
    prop_oneof![
        Just(TrackerMessage::Heartbeat),
        (any::<u64>(), addr(), any::<u32>()).prop_map(|(id, udp, heartbeat_ms)| {
            TrackerMessage::Welcome {
                peer_id: PeerId(id),
                udp,
                heartbeat_ms,
            }
        }),
        (any::<u32>(), name()).prop_map(|(req, name)| TrackerMessage::Registered { req, name }),
        (any::<u32>(), prop::collection::vec(file_entry(), 0..5))
            .prop_map(|(req, files)| TrackerMessage::Files { req, files }),
        (any::<u32>(), group()).prop_map(|(req, group)| TrackerMessage::Group { req, group }),
        (any::<u32>(), name()).prop_map(|(req, name)| TrackerMessage::Left { req, name }),
        name().prop_map(|name| TrackerMessage::GroupClosed { name }),
        (any::<u32>(), refusal_code(), ".{0,80}")
            .prop_map(|(req, code, message)| { TrackerMessage::Refused { req, code, message } }),
    ]
}

/// Feeds `bytes` through a FrameBuffer in pieces of `step` and decodes every
/// frame with both decoders. Must never panic, whatever the bytes.
fn feed_everything(bytes: &[u8], step: usize) {
    let mut fb = FrameBuffer::new();
    for piece in bytes.chunks(step.max(1)) {
        fb.extend(piece);
        loop {
            match fb.next_frame() {
                Ok(Some(frame)) => {
                    let _ = PeerMessage::decode(frame);
                    let _ = TrackerMessage::decode(frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        fb.compact();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn peer_messages_round_trip(msg in peer_message()) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        let mut fb = FrameBuffer::new();
        fb.extend(&out);
        let frame = fb.next_frame().unwrap().unwrap();
        prop_assert_eq!(PeerMessage::decode(frame), Ok(msg));
        prop_assert_eq!(fb.pending(), 0);
    }

    #[test]
    fn tracker_messages_round_trip(msg in tracker_message()) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        let mut fb = FrameBuffer::new();
        fb.extend(&out);
        let frame = fb.next_frame().unwrap().unwrap();
        prop_assert_eq!(TrackerMessage::decode(frame), Ok(msg));
    }

    /// Every truncation of a valid frame is an error, never a panic.
    #[test]
    fn every_truncation_is_an_error(p in peer_message(), t in tracker_message()) {
        let mut a = Vec::new();
        p.encode(&mut a);
        for cut in LEN_PREFIX..a.len() {
            prop_assert!(PeerMessage::decode(&a[LEN_PREFIX..cut]).is_err());
        }
        let mut b = Vec::new();
        t.encode(&mut b);
        for cut in LEN_PREFIX..b.len() {
            prop_assert!(TrackerMessage::decode(&b[LEN_PREFIX..cut]).is_err());
        }
    }

    /// Random corruption of a valid frame stream (flipped bits, overwritten
    /// bytes, including the length prefix): no panic.
    #[test]
    fn corruption_never_panics(
        msgs in prop::collection::vec(tracker_message(), 1..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        step in 1usize..64,
    ) {
        let mut bytes = Vec::new();
        for m in &msgs {
            m.encode(&mut bytes);
        }
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x | 1;
        }
        feed_everything(&bytes, step);
    }

    /// Arbitrary bytes: no panic.
    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), step in 1usize..32) {
        feed_everything(&bytes, step);
        let _ = PeerMessage::decode(&bytes);
        let _ = TrackerMessage::decode(&bytes);
    }
}
