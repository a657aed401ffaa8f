//! rudp over the simulated network, in virtual time: delivery intact and
//! exactly once under loss, bursts, duplication, reordering, corruption and
//! asymmetric links; outage recovery; dead-peer detection; malformed input.

use chunkswarm::rng::Rng;
use chunkswarm::rudp::impair::{GilbertElliott, ImpairConfig};
use chunkswarm::rudp::sim::{LinkConfig, Sim};
use chunkswarm::rudp::{CcKind, Config, Endpoint, Event};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

fn addr_a() -> SocketAddr {
    "10.0.0.1:7000".parse().unwrap()
}
fn addr_b() -> SocketAddr {
    "10.0.0.2:7000".parse().unwrap()
}

fn message(seed: u64, idx: u32, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len.max(4)];
    m[..4].copy_from_slice(&idx.to_be_bytes());
    Rng::new(seed ^ (idx as u64) << 20).fill(&mut m[4..]);
    m
}

#[derive(Debug)]
#[allow(dead_code)] // printed by the ignored scratch test
struct Outcome {
    virtual_time: Duration,
    retransmitted: u64,
    lost: u64,
    /// The sender's datagrams and their bytes (UDP payload).
    packets_sent: u64,
    bytes_sent: u64,
}

/// Moves `total` bytes as `msg_len`-byte messages from A to B over `ab`/`ba`;
/// checks every message arrives whole, intact and exactly once.
fn transfer(
    seed: u64,
    ab: LinkConfig,
    ba: LinkConfig,
    total: usize,
    msg_len: usize,
    cc: CcKind,
) -> Result<Outcome, String> {
    let cfg = Config {
        cc,
        ..Config::default()
    };
    transfer_with(seed, ab, ba, total, msg_len, cfg)
}

fn transfer_with(
    seed: u64,
    ab: LinkConfig,
    ba: LinkConfig,
    total: usize,
    msg_len: usize,
    cfg: Config,
) -> Result<Outcome, String> {
    let mut sim = Sim::new(seed);
    sim.add_node(addr_a(), Endpoint::new(cfg.clone(), seed));
    sim.add_node(addr_b(), Endpoint::new(cfg, seed.wrapping_add(1)));
    sim.set_link(addr_a(), addr_b(), ab);
    sim.set_link(addr_b(), addr_a(), ba);
    let now = sim.now();
    let h = sim.endpoint(addr_a()).connect(now, addr_b());
    let count = total.div_ceil(msg_len) as u32;
    for i in 0..count {
        let ordered = i % 10 == 0;
        sim.endpoint(addr_a())
            .send(h, message(seed, i, msg_len), ordered)
            .map_err(|e| e.to_string())?;
    }
    let mut seen = HashSet::new();
    let mut last_ordered: Option<u32> = None;
    let mut err: Option<String> = None;
    let ok = sim.run_until(Duration::from_secs(600), |sim| {
        while let Some((_, ev)) = sim.endpoint(addr_b()).poll_event() {
            match ev {
                Event::Message(m) => {
                    let idx = u32::from_be_bytes([m[0], m[1], m[2], m[3]]);
                    if m != message(seed, idx, msg_len) {
                        err.get_or_insert(format!("message {idx} corrupted"));
                    }
                    if !seen.insert(idx) {
                        err.get_or_insert(format!("message {idx} delivered twice"));
                    }
                    if idx % 10 == 0 {
                        if last_ordered.is_some_and(|l| idx <= l) {
                            err.get_or_insert(format!("ordered message {idx} out of order"));
                        }
                        last_ordered = Some(idx);
                    }
                }
                Event::Closed(e) => {
                    err.get_or_insert(format!("B closed: {e}"));
                }
                Event::Connected => {}
            }
        }
        while let Some((_, ev)) = sim.endpoint(addr_a()).poll_event() {
            if let Event::Closed(e) = ev {
                err.get_or_insert(format!("A closed: {e}"));
            }
        }
        err.is_some() || seen.len() == count as usize
    });
    if let Some(e) = err {
        return Err(e);
    }
    if !ok {
        return Err(format!(
            "only {} of {count} messages after {:?}",
            seen.len(),
            sim.elapsed()
        ));
    }
    if sim.oversize_datagrams() > 0 {
        return Err(format!(
            "{} datagrams above the MTU",
            sim.oversize_datagrams()
        ));
    }
    let st = sim.endpoint(addr_a()).stats(h).ok_or("no stats")?;
    Ok(Outcome {
        virtual_time: sim.elapsed(),
        retransmitted: st.packets_retransmitted,
        lost: st.packets_lost,
        packets_sent: st.packets_sent,
        bytes_sent: st.bytes_sent,
    })
}

fn link(loss: f64) -> LinkConfig {
    link_with(ImpairConfig {
        loss,
        ..Default::default()
    })
}

/// 100 Mbit/s, 10 ms one way, a 500 kB drop-tail queue, plus `impair`.
fn link_with(impair: ImpairConfig) -> LinkConfig {
    LinkConfig {
        rate_bps: 100_000_000,
        delay: Duration::from_millis(10),
        queue_bytes: 500_000,
        impair,
    }
}

fn bursty() -> LinkConfig {
    // Mean loss about 4.8%, bursts of 4 datagrams on average.
    link_with(ImpairConfig {
        burst: Some(GilbertElliott {
            p_good_bad: 0.01,
            p_bad_good: 0.25,
            loss_good: 0.001,
            loss_bad: 1.0,
        }),
        ..Default::default()
    })
}

/// Each condition: (name, A→B link, B→A link).
fn conditions() -> Vec<(&'static str, LinkConfig, LinkConfig)> {
    let dup = link_with(ImpairConfig {
        duplicate: 0.05,
        ..Default::default()
    });
    let reorder = link_with(ImpairConfig {
        reorder: 0.3,
        jitter: Duration::from_millis(8),
        ..Default::default()
    });
    let corrupt = link_with(ImpairConfig {
        corrupt: 0.01,
        ..Default::default()
    });
    // Asymmetric: 100 Mbit/s down with 2% loss, 2 Mbit/s up with a longer delay.
    let down = link(0.02);
    let up = LinkConfig {
        rate_bps: 2_000_000,
        delay: Duration::from_millis(40),
        queue_bytes: 20_000,
        impair: ImpairConfig::default(),
    };
    vec![
        ("loss 0%", link(0.0), link(0.0)),
        ("loss 1%", link(0.01), link(0.01)),
        ("loss 5%", link(0.05), link(0.05)),
        ("loss 10%", link(0.10), link(0.10)),
        ("loss 30%", link(0.30), link(0.30)),
        ("bursty", bursty(), bursty()),
        ("duplicate 5%", dup.clone(), dup),
        ("reorder", reorder.clone(), reorder),
        ("corrupt 1%", corrupt.clone(), corrupt),
        ("asymmetric", down, up),
    ]
}

const SEEDS: u64 = 50;
/// Per-seed transfer of the sweeps (1 MiB, so that the 500 runs take
/// seconds); each condition also gets one full 10 MB run below.
const SWEEP_BYTES: usize = 1024 * 1024;

fn sweep(cond: usize, cc: CcKind) {
    let (name, ab, ba) = conditions().swap_remove(cond);
    for seed in 0..SEEDS {
        if let Err(e) = transfer(seed, ab.clone(), ba.clone(), SWEEP_BYTES, 20_000, cc) {
            panic!("{name}, {cc}, seed {seed}: {e}");
        }
    }
    let seed = 1000 + cond as u64;
    if let Err(e) = transfer(seed, ab, ba, 10_000_000, 100 * 1024, cc) {
        panic!("{name}, {cc}, 10 MB, seed {seed}: {e}");
    }
}

#[test]
fn sweep_loss_0() {
    sweep(0, CcKind::Bbr);
}
#[test]
fn sweep_loss_1() {
    sweep(1, CcKind::Bbr);
}
#[test]
fn sweep_loss_5() {
    sweep(2, CcKind::Bbr);
}
#[test]
fn sweep_loss_10() {
    sweep(3, CcKind::Bbr);
}
#[test]
fn sweep_loss_30() {
    sweep(4, CcKind::Bbr);
}
#[test]
fn sweep_bursty() {
    sweep(5, CcKind::Bbr);
}
#[test]
fn sweep_duplicate() {
    sweep(6, CcKind::Bbr);
}
#[test]
fn sweep_reorder() {
    sweep(7, CcKind::Bbr);
}
#[test]
fn sweep_corrupt() {
    sweep(8, CcKind::Bbr);
}
#[test]
fn sweep_asymmetric() {
    sweep(9, CcKind::Bbr);
}

/// Ten seeds of the sweep transfer with `cfg` over `ab`/`ba`.
fn ten_seeds(ab: LinkConfig, ba: LinkConfig, cfg: Config) {
    for seed in 0..10 {
        let r = transfer_with(
            seed,
            ab.clone(),
            ba.clone(),
            SWEEP_BYTES,
            20_000,
            cfg.clone(),
        );
        if let Err(e) = r {
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn newreno_delivers_under_loss_too() {
    let cfg = Config {
        cc: CcKind::NewReno,
        ..Config::default()
    };
    ten_seeds(link(0.05), link(0.05), cfg.clone());
    ten_seeds(bursty(), bursty(), cfg);
}

#[test]
fn smallest_mtu_is_respected_under_loss() {
    let cfg = Config {
        max_udp_payload: chunkswarm::rudp::MIN_UDP_PAYLOAD,
        ..Config::default()
    };
    ten_seeds(link(0.05), link(0.05), cfg);
}

#[test]
fn clean_link_needs_no_retransmission() {
    let o = transfer(1, link(0.0), link(0.0), 1 << 20, 100 * 1024, CcKind::Bbr).unwrap();
    assert_eq!((o.retransmitted, o.lost), (0, 0), "{o:?}");
}

/// A bulk sender's peer sends only ACKs. Those elicit nothing, so the
/// sender's data packets carry no ACK frames: with reverse-path loss such
/// frames (acknowledging ACKs, full of SACK holes) grew to 256 bytes on every
/// other data packet and cost 6% of goodput on netlab's 100 Mbit/s path.
#[test]
fn acks_of_acks_do_not_ride_on_data() {
    let total = 10_000_000u64;
    let o = transfer(
        3,
        link(0.05),
        link(0.05),
        total as usize,
        100 * 1024,
        CcKind::Bbr,
    )
    .unwrap();
    let mtu = chunkswarm::rudp::DEFAULT_MAX_UDP_PAYLOAD as u64;
    // Bytes beyond the message bytes (counting each retransmission as a full
    // datagram): headers, frame headers, ACK frames.
    let overhead = o.bytes_sent - total.min(o.bytes_sent) - o.retransmitted * mtu;
    let per_packet = overhead as f64 / o.packets_sent as f64;
    // Short header + CRC (11) and a STREAM frame header (7) per datagram,
    // with room for an occasional second frame header or control frame
    // (measured: 21.0 bytes; 40 with the version-1 format).
    assert!(
        per_packet < 26.0,
        "{per_packet:.1} bytes of overhead per datagram: {o:?}"
    );
}

/// The handshake gives the initiator its first RTT sample, so its first
/// data is paced for the path. Without one the first round trip ran at the
/// initial window over the 333 ms initial RTT (~1 Mbit/s): at 20 ms, a
/// 100 KiB message sent as the connection opens took 3 round trips more.
#[test]
fn the_handshake_gives_the_first_rtt_sample() {
    let mut sim = Sim::new(1);
    sim.add_node(addr_a(), Endpoint::new(Config::default(), 1));
    sim.add_node(addr_b(), Endpoint::new(Config::default(), 2));
    sim.set_link(addr_a(), addr_b(), link(0.0));
    sim.set_link(addr_b(), addr_a(), link(0.0));
    let now = sim.now();
    let h = sim.endpoint(addr_a()).connect(now, addr_b());
    let mut connected = false;
    sim.run_until(Duration::from_secs(5), |sim| {
        while let Some((_, e)) = sim.endpoint(addr_a()).poll_event() {
            connected |= matches!(e, Event::Connected);
        }
        connected
    });
    assert!(connected);
    // INITIAL, RETRY, INITIAL with the cookie, ACCEPT: two round trips of 20 ms.
    let opened = sim.elapsed();
    assert!(opened >= Duration::from_millis(40), "{opened:?}");
    let srtt = sim.endpoint(addr_a()).stats(h).unwrap().srtt;
    assert!(
        srtt >= Duration::from_millis(20) && srtt < Duration::from_millis(25),
        "{srtt:?}"
    );
    // A chunk sent now arrives within a few round trips.
    sim.endpoint(addr_a())
        .send(h, message(1, 0, 100 * 1024), false)
        .unwrap();
    let mut got = false;
    sim.run_until(Duration::from_secs(5), |sim| {
        while let Some((_, e)) = sim.endpoint(addr_b()).poll_event() {
            got |= matches!(e, Event::Message(_));
        }
        got
    });
    let took = sim.elapsed() - opened;
    assert!(took < Duration::from_millis(90), "{took:?}");
}

// ----- regression seeds (each failed once; the fix is named) -----

/// Replays a failed run: BBR, `loss` each way, 256 kB (the sweep size when
/// these seeds failed; the loss draws depend on it).
fn regression(seed: u64, loss: f64) {
    transfer(
        seed,
        link(loss),
        link(loss),
        256 * 1024,
        20_000,
        CcKind::Bbr,
    )
    .unwrap();
}

/// The INITIAL with a cookie was lost and the retry came after the cookie
/// expired: the responder dropped it silently. Fix: answer a stale cookie with a fresh RETRY.
#[test]
fn regression_loss10_seed25_expired_cookie() {
    regression(25, 0.10);
}

/// The responder's ACCEPT was lost and its PTO probes carried only PINGs,
/// so the initiator never learned the responder's CID. Fix: probes repeat
/// the control frames of the packets they probe.
#[test]
fn regression_loss30_seed1_accept_not_in_probe() {
    regression(1, 0.30);
}

/// INITIAL backoff doubled without bound, so 30% loss each way ran out the
/// idle timer after five attempts. Fix: cap the backoff, restart it on RETRY.
#[test]
fn regression_loss30_seed22_handshake_backoff() {
    regression(22, 0.30);
}
