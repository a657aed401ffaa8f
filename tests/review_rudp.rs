//! Review findings on rudp protocol version 2's receiving side: flow
//! control that must not deadlock or drop an honest sender's bytes.

use chunkswarm::rudp::packet;
use chunkswarm::rudp::{Config, ConnectionHandle, Endpoint, Event};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn a() -> SocketAddr {
    "10.0.0.1:7000".parse().unwrap()
}
fn b() -> SocketAddr {
    "10.0.0.2:7000".parse().unwrap()
}

fn out(ep: &mut Endpoint, now: Instant) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mut buf = Vec::new();
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        v.push(buf[..t.len].to_vec());
    }
    v
}

/// Passes datagrams between A and B in steps of 5 ms (dropping those of
/// A's for which `drop_a` says so) until `done` or 3,000 steps.
fn run(
    ea: &mut Endpoint,
    eb: &mut Endpoint,
    now: &mut Instant,
    mut drop_a: impl FnMut(&[u8]) -> bool,
    mut done: impl FnMut(&mut Endpoint, &mut Endpoint) -> bool,
) {
    for _ in 0..3_000 {
        for d in out(ea, *now) {
            if !drop_a(&d) {
                eb.handle_datagram(*now, a(), &d);
            }
        }
        for d in out(eb, *now) {
            ea.handle_datagram(*now, b(), &d);
        }
        if done(ea, eb) {
            return;
        }
        *now += Duration::from_millis(5);
        ea.handle_timeout(*now);
        eb.handle_timeout(*now);
    }
}

fn connected_event(ep: &mut Endpoint) -> bool {
    std::iter::from_fn(|| ep.poll_event()).any(|(_, e)| matches!(e, Event::Connected))
}

/// A connected to B, both with `cfg`.
fn connected(cfg: Config) -> (Endpoint, Endpoint, ConnectionHandle, Instant) {
    let mut now = Instant::now();
    let mut ea = Endpoint::new(cfg.clone(), 21);
    let mut eb = Endpoint::new(cfg, 22);
    let h = ea.connect(now, b());
    let mut up = [false; 2];
    run(
        &mut ea,
        &mut eb,
        &mut now,
        |_| false,
        |ea, eb| {
            up[0] |= connected_event(ea);
            up[1] |= connected_event(eb);
            up == [true; 2]
        },
    );
    assert_eq!(up, [true; 2]);
    (ea, eb, h, now)
}

/// Runs until B delivered `want` messages (or gives up); returns them.
fn exchange(
    ea: &mut Endpoint,
    eb: &mut Endpoint,
    mut now: Instant,
    want: usize,
    drop_a: impl FnMut(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    run(ea, eb, &mut now, drop_a, |_, eb| {
        while let Some((_, e)) = eb.poll_event() {
            if let Event::Message(m) = e {
                got.push(m);
            }
        }
        got.len() >= want
    });
    got
}

/// Whether a DATA datagram carries the first fragment of ordered message 0.
fn starts_message_0(d: &[u8]) -> bool {
    let Ok(p) = packet::Packet::new_checked(d) else {
        return false;
    };
    if p.truncated_pn().is_none() {
        return false;
    }
    packet::Frames::new(p.payload()).flatten().any(
        |f| matches!(f, packet::Frame::Stream(s) if s.ordered && s.msg_id == 0 && s.offset == 0),
    )
}

/// A message of nearly the whole window after a small one: delivering the
/// small one opens the window by less than window/8, yet the big one is
/// blocked on exactly those bytes. The receiver must still advertise them.
#[test]
fn a_message_near_the_window_size_is_not_left_waiting_for_credit() {
    let window = 64 * 1024;
    let cfg = Config {
        recv_window: window,
        max_message_size: window,
        ..Config::default()
    };
    let (mut ea, mut eb, h, now) = connected(cfg);
    let small = vec![1u8; 1000];
    let big = vec![2u8; 65_000];
    ea.send(h, small.clone(), false).unwrap();
    ea.send(h, big.clone(), false).unwrap();
    let got = exchange(&mut ea, &mut eb, now, 2, |_| false);
    assert_eq!(got.len(), 2, "the big message never got its credit");
    assert!(got == vec![small, big]);
}

/// A receive window below the credit a sender assumes before its first
/// MAX_DATA (64 KiB): the sender may have more outstanding than the
/// receiver's memory bound admits. The receiver ignores those fragments but
/// acknowledges their packets, so they are never resent and the ordered
/// stream stalls for good.
#[test]
fn a_small_receive_window_loses_no_fragments_of_an_honest_sender() {
    let cfg = Config {
        recv_window: 8 * 1024,
        max_message_size: 8 * 1024,
        ..Config::default()
    };
    let (mut ea, mut eb, h, now) = connected(cfg);
    let msgs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 8000]).collect();
    for m in &msgs {
        ea.send(h, m.clone(), true).unwrap();
    }
    // The start of message 0 is lost, and its first two resends: the rest
    // of the messages wait in B, ordered.
    let mut lost = 0;
    let got = exchange(&mut ea, &mut eb, now, msgs.len(), |d| {
        let drop = lost < 3 && starts_message_0(d);
        lost += drop as u32;
        drop
    });
    assert_eq!(lost, 3);
    assert_eq!(got.len(), msgs.len(), "only {} of 8 delivered", got.len());
    assert!(got == msgs);
}
