//! rudp robustness: outage recovery, dead-peer detection, graceful close,
//! the stateless handshake's anti-amplification, and malformed input
//! (every truncation and bit flip of valid datagrams, random bytes).

use chunkswarm::rng::Rng;
use chunkswarm::rudp::impair::ImpairConfig;
use chunkswarm::rudp::packet;
use chunkswarm::rudp::sim::{LinkConfig, Sim};
use chunkswarm::rudp::{Config, ConnectionError, ConnectionHandle, Endpoint, Event};
use proptest::prelude::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn a() -> SocketAddr {
    "10.0.0.1:7000".parse().unwrap()
}
fn b() -> SocketAddr {
    "10.0.0.2:7000".parse().unwrap()
}

fn link(loss: f64) -> LinkConfig {
    LinkConfig {
        rate_bps: 100_000_000,
        delay: Duration::from_millis(10),
        queue_bytes: 500_000,
        impair: ImpairConfig {
            loss,
            ..Default::default()
        },
    }
}

/// Two endpoints on a simulated path, A connected to B.
fn pair(seed: u64, cfg: Config, l: LinkConfig) -> (Sim, ConnectionHandle) {
    let mut sim = Sim::new(seed);
    sim.add_node(a(), Endpoint::new(cfg.clone(), seed));
    sim.add_node(b(), Endpoint::new(cfg, seed + 1));
    sim.set_path(a(), b(), l);
    let now = sim.now();
    let h = sim.endpoint(a()).connect(now, b());
    (sim, h)
}

/// Drains both endpoints' events into (node, event) pairs.
fn events(sim: &mut Sim) -> Vec<(SocketAddr, Event)> {
    let mut out = Vec::new();
    for n in [a(), b()] {
        if let Some(ep) = sim.try_endpoint(n) {
            while let Some((_, e)) = ep.poll_event() {
                out.push((n, e));
            }
        }
    }
    out
}

#[test]
fn five_second_outage_recovers_without_reset() {
    let (mut sim, h) = pair(7, Config::default(), link(0.01));
    let msgs = 40u32;
    for i in 0..msgs {
        let mut m = vec![i as u8; 100 * 1024];
        m[..4].copy_from_slice(&i.to_be_bytes());
        sim.endpoint(a()).send(h, m, false).unwrap();
    }
    let mut got = 0u32;
    let count = |sim: &mut Sim, got: &mut u32| {
        for (n, e) in events(sim) {
            match e {
                Event::Message(_) => *got += 1,
                Event::Closed(err) => panic!("{n} closed: {err}"),
                Event::Connected => {}
            }
        }
    };
    // Transfer a little, then cut the path both ways for 5 s.
    sim.run_until(Duration::from_secs(5), |s| {
        count(s, &mut got);
        got >= 5
    });
    assert!(got >= 5 && got < msgs, "got {got} before the outage");
    sim.set_up(a(), b(), false);
    sim.set_up(b(), a(), false);
    sim.run_for(Duration::from_secs(5));
    count(&mut sim, &mut got);
    let during = got;
    sim.set_up(a(), b(), true);
    sim.set_up(b(), a(), true);
    let done = sim.run_until(Duration::from_secs(60), |s| {
        count(s, &mut got);
        got == msgs
    });
    assert!(done, "only {got} of {msgs} after the outage");
    assert!(got > during);
    assert_eq!(sim.endpoint(a()).connections(), vec![h]);
    let st = sim.endpoint(a()).stats(h).unwrap();
    assert!(st.packets_lost > 0, "{st:?}");
}

/// Upper bound on the time from the last acknowledgement to PeerDead:
/// `max_ptos` probe timeouts, each at most (3·srtt + 26 ms) · 2^k
/// (RFC 9002 §6.2.1 with rttvar ≤ srtt/2, max_ack_delay 25 ms, granularity 1 ms).
fn dead_bound(srtt: Duration, max_ptos: u32) -> Duration {
    (srtt * 3 + Duration::from_millis(26)) * ((1u32 << max_ptos) - 1)
}

#[test]
fn vanished_peer_is_reported_dead_within_bound() {
    for busy in [true, false] {
        let cfg = Config {
            max_ptos: 6,
            ..Config::default()
        };
        let (mut sim, h) = pair(11, cfg.clone(), link(0.0));
        let connected = sim.run_until(Duration::from_secs(5), |s| {
            events(s)
                .iter()
                .any(|(n, e)| *n == a() && matches!(e, Event::Connected))
        });
        assert!(connected);
        // Let RTT samples arrive (before any, the PTO starts from 333 ms, RFC 9002 §6.2.2).
        sim.run_for(Duration::from_millis(500));
        if busy {
            for _ in 0..20 {
                sim.endpoint(a())
                    .send(h, vec![1; 100 * 1024], false)
                    .unwrap();
            }
            sim.run_for(Duration::from_millis(100));
        }
        let srtt = sim.endpoint(a()).stats(h).unwrap().srtt;
        sim.remove_node(b());
        let gone_at = sim.elapsed();
        let mut err = None;
        sim.run_until(Duration::from_secs(120), |s| {
            for (_, e) in events(s) {
                if let Event::Closed(x) = e {
                    err = Some(x);
                }
            }
            err.is_some()
        });
        let took = sim.elapsed() - gone_at;
        assert_eq!(
            err,
            Some(ConnectionError::PeerDead { ptos: 6 }),
            "busy={busy}"
        );
        // An idle connection first waits for its keepalive PING.
        let slack = if busy {
            Duration::ZERO
        } else {
            cfg.keepalive_interval
        };
        let bound = dead_bound(srtt, cfg.max_ptos) + slack;
        assert!(
            took <= bound,
            "busy={busy}: dead after {took:?}, bound {bound:?}"
        );
        assert!(
            took < cfg.idle_timeout,
            "busy={busy}: the idle timer would have fired first"
        );
    }
}

#[test]
fn keepalives_hold_an_idle_connection_open() {
    let (mut sim, h) = pair(3, Config::default(), link(0.05));
    sim.run_for(Duration::from_secs(120));
    let evs = events(&mut sim);
    assert!(
        evs.iter().all(|(_, e)| matches!(e, Event::Connected)),
        "{evs:?}"
    );
    assert_eq!(sim.endpoint(a()).connections(), vec![h]);
    assert_eq!(sim.endpoint(b()).connections().len(), 1);
}

#[test]
fn graceful_close_delivers_everything_first() {
    for seed in 0..10 {
        let (mut sim, h) = pair(seed, Config::default(), link(0.1));
        for i in 0..10u8 {
            sim.endpoint(a())
                .send(h, vec![i; 30_000], i % 2 == 0)
                .unwrap();
        }
        let now = sim.now();
        sim.endpoint(a()).close(now, h);
        assert!(sim.endpoint(a()).send(h, vec![0], false).is_err());
        let mut msgs = 0;
        let (mut a_closed, mut b_closed) = (None, None);
        sim.run_until(Duration::from_secs(60), |s| {
            for (n, e) in events(s) {
                match e {
                    Event::Message(_) => {
                        assert!(b_closed.is_none(), "message after close");
                        msgs += 1
                    }
                    Event::Closed(x) if n == a() => a_closed = Some(x),
                    Event::Closed(x) => b_closed = Some(x),
                    Event::Connected => {}
                }
            }
            a_closed.is_some() && b_closed.is_some()
        });
        assert_eq!(msgs, 10, "seed {seed}");
        assert_eq!(
            a_closed,
            Some(ConnectionError::LocallyClosed),
            "seed {seed}"
        );
        assert_eq!(b_closed, Some(ConnectionError::PeerClosed), "seed {seed}");
        sim.run_for(Duration::from_secs(10));
        assert!(sim.endpoint(a()).connections().is_empty());
        assert!(sim.endpoint(b()).connections().is_empty());
    }
}

// ----- handshake by hand -----

fn t0() -> Instant {
    Instant::now()
}

fn out(ep: &mut Endpoint, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut v = Vec::new();
    let mut buf = Vec::new();
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        assert!(t.len <= ep.config().max_udp_payload);
        v.push((t.destination, buf[..t.len].to_vec()));
    }
    v
}

#[test]
fn responder_keeps_no_state_and_never_amplifies() {
    let now = t0();
    let mut ea = Endpoint::new(Config::default(), 1);
    let mut eb = Endpoint::new(Config::default(), 2);
    ea.connect(now, b());
    let initial = out(&mut ea, now);
    assert_eq!(initial.len(), 1);
    assert!(initial[0].1.len() >= packet::MIN_INITIAL_SIZE);
    eb.handle_datagram(now, a(), &initial[0].1);
    assert!(eb.connections().is_empty(), "state before the cookie");
    let retry = out(&mut eb, now);
    assert_eq!(retry.len(), 1);
    assert!(retry[0].1.len() < initial[0].1.len() / 10);
    // A short INITIAL (re-checksummed) is refused without an answer.
    let mut short = initial[0].1[..600].to_vec();
    short.truncate(596);
    packet::finish_packet(&mut short);
    let refused = eb.counters().refused;
    eb.handle_datagram(now, a(), &short);
    assert_eq!(eb.counters().refused, refused + 1);
    assert!(out(&mut eb, now).is_empty());
    // The cookie is bound to the address: replayed from elsewhere it is rejected.
    ea.handle_datagram(now, b(), &retry[0].1);
    let with_cookie = out(&mut ea, now);
    assert_eq!(with_cookie.len(), 1);
    let elsewhere: SocketAddr = "10.9.9.9:7000".parse().unwrap();
    eb.handle_datagram(now, elsewhere, &with_cookie[0].1);
    assert_eq!(eb.counters().bad_cookie, 1);
    assert!(eb.connections().is_empty());
    let reply = out(&mut eb, now);
    assert!(reply.iter().all(|(_, d)| d.len() < with_cookie[0].1.len()));
    // From the right address it creates the connection.
    eb.handle_datagram(now, a(), &with_cookie[0].1);
    assert_eq!(eb.connections().len(), 1);
    assert!(matches!(eb.poll_event(), Some((_, Event::Connected))));
    let accept = out(&mut eb, now);
    for (_, d) in &accept {
        ea.handle_datagram(now, b(), d);
    }
    assert!(matches!(ea.poll_event(), Some((_, Event::Connected))));
}

#[test]
fn wrong_version_and_closed_door_are_counted() {
    let now = t0();
    let mut ea = Endpoint::new(Config::default(), 1);
    let mut eb = Endpoint::new(
        Config {
            accept_incoming: false,
            ..Config::default()
        },
        2,
    );
    ea.connect(now, b());
    let mut init = out(&mut ea, now).remove(0).1;
    eb.handle_datagram(now, a(), &init);
    assert_eq!(eb.counters().refused, 1);
    init[0] = 9;
    let n = init.len();
    init.truncate(n - 4);
    packet::finish_packet(&mut init);
    eb.handle_datagram(now, a(), &init);
    assert_eq!(eb.counters().bad_version, 1);
    assert!(out(&mut eb, now).is_empty());
    assert!(eb.connections().is_empty());
}

// ----- malformed input -----

/// Everything observable about an endpoint except its drop counters.
fn snapshot(ep: &mut Endpoint) -> String {
    let conns = ep.connections();
    let stats: Vec<_> = conns
        .iter()
        .map(|h| (ep.stats(*h), ep.send_backlog(*h)))
        .collect();
    format!("{conns:?} {stats:?} {:?}", ep.poll_timeout())
}

/// Runs a short exchange by hand and returns both endpoints, quiescent, and
/// every datagram seen (with its receiver: true = B).
fn recorded_exchange() -> (Endpoint, Endpoint, Vec<(bool, Vec<u8>)>, Instant) {
    let mut now = t0();
    let mut ea = Endpoint::new(Config::default(), 5);
    let mut eb = Endpoint::new(Config::default(), 6);
    let h = ea.connect(now, b());
    ea.send(h, vec![7; 5000], false).unwrap();
    ea.send(h, vec![8; 10], true).unwrap();
    let mut seen = Vec::new();
    for _ in 0..200 {
        let to_b = out(&mut ea, now);
        let to_a = out(&mut eb, now);
        for (_, d) in &to_b {
            eb.handle_datagram(now, a(), d);
            seen.push((true, d.clone()));
        }
        for (_, d) in &to_a {
            ea.handle_datagram(now, b(), d);
            seen.push((false, d.clone()));
        }
        now += Duration::from_millis(30);
        ea.handle_timeout(now);
        eb.handle_timeout(now);
        if to_a.is_empty() && to_b.is_empty() && ea.send_backlog(h) == 0 {
            break;
        }
    }
    while eb.poll_event().is_some() {}
    while ea.poll_event().is_some() {}
    assert_eq!(ea.send_backlog(h), 0);
    (ea, eb, seen, now)
}

#[test]
fn truncations_and_bit_flips_change_nothing_but_counters() {
    let (mut ea, mut eb, seen, now) = recorded_exchange();
    assert!(seen.len() >= 6, "{}", seen.len());
    let (before_a, before_b) = (snapshot(&mut ea), snapshot(&mut eb));
    let mut fed = 0u64;
    for (to_b, d) in &seen {
        let (ep, from) = if *to_b {
            (&mut eb, a())
        } else {
            (&mut ea, b())
        };
        for len in 0..d.len() {
            ep.handle_datagram(now, from, &d[..len]);
            fed += 1;
        }
        let mut m = d.clone();
        for bit in 0..d.len() * 8 {
            m[bit / 8] ^= 1 << (bit % 8);
            ep.handle_datagram(now, from, &m);
            m[bit / 8] ^= 1 << (bit % 8);
            fed += 1;
        }
        assert!(ep.poll_event().is_none());
    }
    assert_eq!(snapshot(&mut ea), before_a);
    assert_eq!(snapshot(&mut eb), before_b);
    // A flipped bit in a DATA packet's connection ID names an unknown
    // connection (its CRC, which covers the full packet number, can only be
    // checked by the connection).
    let c = |e: &Endpoint| {
        let c = e.counters();
        c.bad_crc + c.malformed + c.unknown_connection
    };
    assert_eq!(
        c(&ea) + c(&eb),
        fed,
        "every mutation was counted as dropped"
    );
}

#[test]
fn random_bytes_change_nothing_and_parsers_never_panic() {
    let (mut ea, mut eb, seen, now) = recorded_exchange();
    let before = snapshot(&mut eb);
    let mut rng = Rng::new(99);
    for _ in 0..20_000 {
        let mut d = vec![0u8; rng.below(1500) as usize];
        rng.fill(&mut d);
        eb.handle_datagram(now, a(), &d);
    }
    assert_eq!(snapshot(&mut eb), before);
    assert!(eb.poll_event().is_none());
    // Mutations that keep a valid CRC reach the frame parsers: no panic.
    // (The exchange is short, so a DATA packet's full number is the one it carries.)
    let mut reached = 0;
    for (to_b, d) in &seen {
        let ep = if *to_b { &mut eb } else { &mut ea };
        let from = if *to_b { a() } else { b() };
        let p = packet::Packet::new_checked(&d[..]).unwrap();
        let pn = p.truncated_pn().map(|t| t.value as u64);
        let header = d.len() - packet::CRC_LEN - p.payload().len();
        for _ in 0..300 {
            let mut m = d[..d.len() - packet::CRC_LEN].to_vec();
            let flips = 1 + rng.below(4);
            for _ in 0..flips {
                let bit = rng.below(m.len() as u64 * 8) as usize;
                if bit >= header * 8 {
                    m[bit / 8] ^= 1 << (bit % 8);
                }
            }
            if rng.chance(0.3) {
                let cut = header + rng.below((m.len() - header) as u64 + 1) as usize;
                m.truncate(cut);
            }
            match pn {
                Some(pn) => packet::finish_data_packet(&mut m, pn),
                None => packet::finish_packet(&mut m),
            }
            let crc_before = ep.counters().bad_crc;
            ep.handle_datagram(now, from, &m);
            reached += (ep.counters().bad_crc == crc_before) as u32;
        }
    }
    assert!(reached > 1000, "only {reached} mutations passed the CRC");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Message reassembly against a plain model: whatever the sizes, loss
    /// and reordering, B receives exactly the multiset A sent, and the
    /// ordered messages in send order.
    #[test]
    fn reassembly_matches_the_model(
        sizes in proptest::collection::vec(0usize..60_000, 1..25),
        ordered_mask in any::<u32>(),
        seed in any::<u64>(),
        loss in 0.0f64..0.25,
        reorder in 0.0f64..0.5,
    ) {
        let l = LinkConfig {
            rate_bps: 50_000_000,
            delay: Duration::from_millis(5),
            queue_bytes: 200_000,
            impair: ImpairConfig { loss, reorder, duplicate: 0.02, ..Default::default() },
        };
        let (mut sim, h) = pair(seed, Config::default(), l);
        let mut rng = Rng::new(seed);
        let mut sent = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let mut m = vec![0u8; n];
            rng.fill(&mut m);
            let ordered = ordered_mask >> (i % 32) & 1 == 1;
            sim.endpoint(a()).send(h, m.clone(), ordered).unwrap();
            sent.push((m, ordered));
        }
        let mut got: Vec<Vec<u8>> = Vec::new();
        let total = sent.len();
        let done = sim.run_until(Duration::from_secs(300), |s| {
            for (_, e) in events(s) {
                if let Event::Message(m) = e { got.push(m); }
            }
            got.len() >= total
        });
        prop_assert!(done, "{} of {}", got.len(), total);
        let mut want: Vec<Vec<u8>> = sent.iter().map(|(m, _)| m.clone()).collect();
        let mut have = got.clone();
        want.sort();
        have.sort();
        prop_assert_eq!(want, have);
        // Ordered ones keep their relative order (compare by identity of content).
        let ordered: Vec<&Vec<u8>> = sent.iter().filter(|(_, o)| *o).map(|(m, _)| m).collect();
        let positions: Vec<usize> = ordered
            .iter()
            .map(|m| got.iter().position(|g| &g == m).unwrap_or(usize::MAX))
            .collect();
        // Identical contents (e.g. empty messages) may match the same position; require non-decreasing.
        for w in positions.windows(2) {
            prop_assert!(w[0] <= w[1], "ordered messages out of order: {positions:?}");
        }
    }
}

/// Connects A to B by hand; returns the endpoints, A's handle and the time.
fn connected_by_hand() -> (Endpoint, Endpoint, ConnectionHandle, Instant) {
    let mut now = t0();
    let mut ea = Endpoint::new(Config::default(), 21);
    let mut eb = Endpoint::new(Config::default(), 22);
    let h = ea.connect(now, b());
    for _ in 0..10 {
        for (_, d) in out(&mut ea, now) {
            eb.handle_datagram(now, a(), &d);
        }
        for (_, d) in out(&mut eb, now) {
            ea.handle_datagram(now, b(), &d);
        }
        now += Duration::from_millis(30);
        ea.handle_timeout(now);
        eb.handle_timeout(now);
    }
    assert!(matches!(ea.poll_event(), Some((_, Event::Connected))));
    assert!(matches!(eb.poll_event(), Some((_, Event::Connected))));
    (ea, eb, h, now)
}

fn messages(ep: &mut Endpoint) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    while let Some((_, e)) = ep.poll_event() {
        if let Event::Message(m) = e {
            v.push(m);
        }
    }
    v
}

#[test]
fn a_lost_datagram_holds_back_only_its_own_message() {
    for ordered in [false, true] {
        let (mut ea, mut eb, h, mut now) = connected_by_hand();
        let first = vec![1u8; 5000];
        let second = vec![2u8; 100];
        ea.send(h, first.clone(), ordered).unwrap();
        ea.send(h, second.clone(), ordered).unwrap();
        let sent = out(&mut ea, now);
        assert!(sent.len() >= 4, "{}", sent.len());
        // Lose the first datagram (the start of `first`), deliver the rest.
        for (_, d) in &sent[1..] {
            eb.handle_datagram(now, a(), d);
        }
        let got = messages(&mut eb);
        if ordered {
            assert!(got.is_empty(), "ordered: nothing before the first message");
        } else {
            assert_eq!(
                got,
                vec![second.clone()],
                "unordered: the second is not held back"
            );
        }
        // Recovery: keep exchanging until the first message arrives.
        let mut all = got;
        for _ in 0..100 {
            for (_, d) in out(&mut eb, now) {
                ea.handle_datagram(now, b(), &d);
            }
            for (_, d) in out(&mut ea, now) {
                eb.handle_datagram(now, a(), &d);
            }
            all.extend(messages(&mut eb));
            now += Duration::from_millis(10);
            ea.handle_timeout(now);
            eb.handle_timeout(now);
        }
        let want = if ordered {
            vec![first.clone(), second.clone()]
        } else {
            vec![second.clone(), first.clone()]
        };
        assert_eq!(all, want, "ordered={ordered}");
        assert_eq!(ea.send_backlog(h), 0);
        assert!(ea.stats(h).unwrap().packets_retransmitted >= 1);
    }
}

#[test]
fn flow_control_bounds_receiver_memory() {
    let window = 64 * 1024;
    let cfg = Config {
        recv_window: window,
        max_message_size: window,
        ..Config::default()
    };
    let (mut sim, h) = pair(5, cfg, link(0.05));
    let msgs = 60u32;
    for i in 0..msgs {
        let mut m = vec![0u8; 40_000];
        m[..4].copy_from_slice(&i.to_be_bytes());
        sim.endpoint(a()).send(h, m, i % 3 == 0).unwrap();
    }
    let mut got = 0;
    let mut peak = 0;
    let done = sim.run_until(Duration::from_secs(120), |s| {
        for (_, e) in events(s) {
            if let Event::Message(_) = e {
                got += 1;
            }
        }
        let ep = s.endpoint(b());
        for hb in ep.connections() {
            peak = peak.max(ep.memory_usage(hb).unwrap_or(0));
        }
        got == msgs
    });
    assert!(done, "{got} of {msgs}");
    // Buffered message bytes stay within the window plus one message; the
    // rest is fixed-size bookkeeping.
    let bound = 2 * window + 64 * 1024;
    assert!(peak <= bound, "receiver held {peak} bytes, bound {bound}");
    assert!(peak > window / 2, "the window was used: {peak}");
}

/// The full packet number of a DATA datagram, as its receiver restores it
/// after having seen up to `largest`.
fn data_pn(d: &[u8], largest: Option<u64>) -> (packet::TruncatedPn, u64) {
    let p = packet::Packet::new_checked(d).unwrap();
    let t = p.truncated_pn().expect("a DATA packet");
    (t, packet::pn::decode(t, largest))
}

/// Packet numbers travel truncated (RFC 9000 §17.1). A reordered packet is
/// restored to its own number; one so late that its number can no longer be
/// restored fails the CRC (computed over the full number) instead of being
/// taken for a new packet.
#[test]
fn reordered_and_very_late_packets_are_never_misread() {
    let (mut ea, mut eb, h, mut now) = connected_by_hand();
    let msg: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    ea.send(h, msg.clone(), false).unwrap();
    let mut sent = out(&mut ea, now);
    assert!(sent.len() >= 4, "{}", sent.len());
    // Reordered: the first data packet arrives after the next two.
    let first = sent.remove(0).1;
    for (_, d) in sent.drain(..2) {
        eb.handle_datagram(now, a(), &d);
    }
    eb.handle_datagram(now, a(), &first);
    assert_eq!(eb.counters().bad_crc, 0);
    assert_eq!(eb.counters().duplicate, 0);
    // Very late: hold back B's first 1-byte-numbered ACK until hundreds of
    // B's packets have passed it.
    let mut late: Option<(u64, Vec<u8>)> = None;
    let mut largest_at_a = None;
    let mut got = Vec::new();
    for _ in 0..20_000 {
        for (_, d) in sent.drain(..) {
            eb.handle_datagram(now, a(), &d);
        }
        for (_, d) in out(&mut eb, now) {
            let (t, pn) = data_pn(&d, largest_at_a);
            if late.is_none() && t.len == 1 && largest_at_a.is_some() {
                late = Some((pn, d));
                continue;
            }
            largest_at_a = largest_at_a.max(Some(pn));
            ea.handle_datagram(now, b(), &d);
        }
        got.extend(messages(&mut eb));
        if !got.is_empty() && ea.send_backlog(h) == 0 {
            break;
        }
        now += Duration::from_millis(1);
        ea.handle_timeout(now);
        eb.handle_timeout(now);
        sent = out(&mut ea, now);
    }
    assert_eq!(got, vec![msg], "delivered once");
    let (late_pn, late) = late.expect("B sent a packet with a 1-byte number");
    let largest = largest_at_a.unwrap();
    let (t, restored) = data_pn(&late, Some(largest));
    assert!(largest - late_pn > 128, "{t:?} {largest}: not late enough");
    // Restored as a number it never had: the CRC says no.
    assert_ne!(restored, late_pn);
    let c = ea.counters().clone();
    ea.handle_datagram(now, b(), &late);
    let after = ea.counters().clone();
    assert_eq!(after.bad_crc, c.bad_crc + 1, "{t:?} largest {largest}");
    assert_eq!(after.duplicate, c.duplicate);
}

/// Version 1 put its version in the first byte and has no short header: an
/// old peer's INITIAL is counted as a bad version and answered with nothing,
/// and every datagram we send starts with a byte an old peer refuses the same way.
#[test]
fn version_1_peers_are_refused_both_ways() {
    let now = t0();
    let mut eb = Endpoint::new(Config::default(), 2);
    // A version-1 INITIAL: version 1, type 1, DCID 0, PN 0, initiator CID, no cookie.
    let mut v1 = vec![1u8, 1];
    v1.extend_from_slice(&[0; 16]);
    v1.extend_from_slice(&7u64.to_be_bytes());
    v1.push(0);
    v1.resize(1200 - 4, 0);
    packet::finish_packet(&mut v1);
    eb.handle_datagram(now, a(), &v1);
    assert_eq!(eb.counters().bad_version, 1);
    assert!(out(&mut eb, now).is_empty());
    assert!(eb.connections().is_empty());
    // Ours, as a version-1 peer would see them.
    let (mut ea, mut eb, h, now) = connected_by_hand();
    ea.send(h, vec![1; 3000], false).unwrap();
    let mut all = out(&mut ea, now);
    all.extend(out(&mut eb, now));
    let mut e2 = Endpoint::new(Config::default(), 9);
    e2.connect(now, b());
    all.extend(out(&mut e2, now));
    assert!(all.len() >= 3);
    for (_, d) in &all {
        assert_ne!(
            d[0], 1,
            "a version-1 peer reads the first byte as the version"
        );
    }
}

/// A DATA packet for B's connection carrying one STREAM frame, numbered `pn`.
fn stream_packet(dcid: u32, pn: u64, head: packet::StreamHeader, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    packet::start_data_packet(&mut b, dcid, pn, None, 4);
    let room = 1472 - packet::CRC_LEN - b.len();
    assert!(head.fits(room, data.len()));
    head.write(&mut b, room, data);
    packet::finish_data_packet(&mut b, pn);
    b
}

/// Well-formed packets whose STREAM frames break the message rules (over
/// the size limit, or a length contradicting an earlier fragment's) are
/// acknowledged but their frames change nothing: no buffer, no message.
#[test]
fn over_limit_and_inconsistent_fragments_are_ignored() {
    let (mut ea, mut eb, h, now) = connected_by_hand();
    ea.send(h, vec![1; 10], false).unwrap();
    let d = out(&mut ea, now).remove(0).1;
    let p = packet::Packet::new_checked(&d[..]).unwrap();
    let dcid = p.dcid();
    let mut pn = p.truncated_pn().unwrap().value as u64 + 100;
    let hb = eb.connections()[0];
    let mut feed = |eb: &mut Endpoint, head: packet::StreamHeader, data: &[u8]| {
        pn += 1;
        eb.handle_datagram(now, a(), &stream_packet(dcid, pn, head, data));
        assert!(eb.counters().malformed == 0 && eb.counters().bad_crc == 0);
    };
    let head = |msg_id, msg_len, offset| packet::StreamHeader {
        ordered: false,
        msg_id,
        msg_len,
        offset,
    };
    let mem = eb.memory_usage(hb).unwrap();
    let max = Config::default().max_message_size as u64;
    // Longer than 16 MiB: as a first fragment, and as a last one.
    feed(&mut eb, head(50, max + 1, 0), &[2; 100]);
    feed(&mut eb, head(51, max + 1, max - 99), &[2; 100]);
    assert_eq!(eb.memory_usage(hb).unwrap(), mem);
    assert!(messages(&mut eb).is_empty());
    // 1000 bytes announced; a last fragment claiming 500 contradicts it.
    feed(&mut eb, head(52, 1000, 0), &[3; 100]);
    let reserved = eb.memory_usage(hb).unwrap();
    assert_eq!(reserved, mem + 1000);
    feed(&mut eb, head(52, 500, 400), &[3; 100]);
    assert_eq!(eb.memory_usage(hb).unwrap(), reserved);
    assert!(messages(&mut eb).is_empty());
    // The consistent rest completes it, exactly once.
    feed(&mut eb, head(52, 1000, 100), &[3; 900]);
    assert_eq!(messages(&mut eb), vec![vec![3; 1000]]);
    feed(&mut eb, head(52, 1000, 100), &[3; 900]);
    assert!(messages(&mut eb).is_empty());
    assert_eq!(eb.memory_usage(hb).unwrap(), mem);
}
