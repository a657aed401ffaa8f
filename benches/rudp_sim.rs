//! rudp on the simulated network (virtual time; wall-clock free, so the
//! figures are deterministic for a seed): goodput of each congestion
//! controller on a 100 Mbit/s, 40 ms RTT path with a one-BDP drop-tail queue
//! under random loss, two flows sharing that bottleneck, and memory per
//! connection at full window.
//!
//! Run: `cargo bench --bench rudp_sim` (add `-- --quick` for shorter runs;
//! `RUDP_SIM_SEED=N` changes the seed, 1 by default). `-- --fairness N` runs
//! only the two-flow table, for N seeds from RUDP_SIM_SEED on, at 0, 1 and 5%
//! loss (`--loss PCT` for one loss rate only; `--flows N` for N flows, 2 by
//! default), and prints the worst min/max ratio.
//! `RUDP_SIM_TRACE=1` prints each flow's progress every 500 ms to stderr.

use chunkswarm::rng::Rng;
use chunkswarm::rudp::impair::ImpairConfig;
use chunkswarm::rudp::sim::{LinkConfig, Sim};
use chunkswarm::rudp::{CcKind, Config, ConnectionHandle, Endpoint, Event};
use std::net::SocketAddr;
use std::time::Duration;

const MSG: usize = 100 * 1024;
/// The application keeps at least this much queued (a bulk sender).
const BACKLOG: usize = 4 << 20;
/// IPv4 (20) + UDP (8) + Ethernet (14) header bytes per datagram on the link.
const FRAME_OVERHEAD: usize = 42;
/// Later flows start up to this long after the first one.
const MAX_STAGGER: Duration = Duration::from_millis(200);

fn bottleneck(loss: f64) -> LinkConfig {
    let mut l = LinkConfig::bottleneck(100, Duration::from_millis(20));
    l.impair = ImpairConfig {
        loss,
        ..Default::default()
    };
    l
}

/// The reverse path: same delay and the same random loss (netlab impairs
/// both directions), ample capacity for ACKs.
fn reverse(loss: f64) -> LinkConfig {
    bottleneck(loss)
}

struct Flow {
    from: SocketAddr,
    to: SocketAddr,
    /// When the flow connects (virtual time since the start).
    start: Duration,
    handle: Option<ConnectionHandle>,
    delivered: u64,
}

struct Run {
    goodput_mbps: Vec<f64>,
    max_mem_sender: usize,
    max_mem_receiver: usize,
    retransmitted: u64,
    lost: u64,
}

/// Runs `flows` bulk transfers for `secs` of virtual time; goodput counts
/// bytes delivered to the receiving application after a warm-up of `warm`.
fn run(cc: CcKind, loss: f64, nflows: usize, secs: u64, warm: u64, seed: u64) -> Run {
    let trace = std::env::var_os("RUDP_SIM_TRACE").is_some();
    let mut next_trace = Duration::ZERO;
    let mut sim = Sim::new(seed);
    let src_ip = "10.0.0.1".parse().unwrap();
    let dst_ip = "10.0.0.2".parse().unwrap();
    sim.set_host_link(src_ip, dst_ip, bottleneck(loss));
    sim.set_host_link(dst_ip, src_ip, reverse(loss));
    // Like netlab's TBF on a veth: the link carries IPv4 + UDP + Ethernet headers too.
    sim.set_frame_overhead(FRAME_OVERHEAD);
    let cfg = Config {
        cc,
        ..Config::default()
    };
    let mut flows = Vec::new();
    let mut rng = Rng::new(seed);
    for i in 0..nflows {
        let from = SocketAddr::new(src_ip, 7000 + i as u16);
        let to = SocketAddr::new(dst_ip, 7000 + i as u16);
        sim.add_node(from, Endpoint::new(cfg.clone(), seed * 100 + i as u64));
        sim.add_node(to, Endpoint::new(cfg.clone(), seed * 100 + 50 + i as u64));
        // The first flow starts at once, each later one up to MAX_STAGGER
        // after it (seeded): flows that meet a queue are the hard case.
        let start = if i == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(rng.below(MAX_STAGGER.as_micros() as u64))
        };
        flows.push(Flow {
            from,
            to,
            start,
            handle: None,
            delivered: 0,
        });
    }
    let mut max_mem_sender = 0;
    let mut max_mem_receiver = 0;
    let mut warm_marks = vec![0u64; nflows];
    let mut warmed = false;
    sim.run_until(Duration::from_secs(secs), |sim| {
        if !warmed && sim.elapsed() >= Duration::from_secs(warm) {
            warmed = true;
            for (i, f) in flows.iter().enumerate() {
                warm_marks[i] = f.delivered;
            }
        }
        if trace && sim.elapsed() >= next_trace {
            next_trace += Duration::from_millis(500);
            let mut line = format!("t={:5.1}", sim.elapsed().as_secs_f64());
            for f in &flows {
                if let Some(st) = f.handle.and_then(|h| sim.endpoint(f.from).stats(h)) {
                    line += &format!(
                        " | del {:7.1}MB cwnd {:6.0}kB pace {:5.1}Mb lost {:6}",
                        f.delivered as f64 / 1e6,
                        st.cwnd as f64 / 1e3,
                        st.pacing_rate as f64 * 8.0 / 1e6,
                        st.packets_lost
                    );
                }
            }
            eprintln!("{line}");
        }
        for f in flows.iter_mut() {
            let now = sim.now();
            let started = sim.elapsed() >= f.start;
            let ep = sim.endpoint(f.from);
            let handle = match f.handle {
                Some(h) => h,
                None if started => *f.handle.insert(ep.connect(now, f.to)),
                None => continue,
            };
            while ep.send_backlog(handle) < BACKLOG {
                if ep.send(handle, vec![0x5a; MSG], false).is_err() {
                    break;
                }
            }
            while ep.poll_event().is_some() {}
            max_mem_sender = max_mem_sender.max(ep.memory_usage(handle).unwrap_or(0));
            let ep = sim.endpoint(f.to);
            while let Some((_, e)) = ep.poll_event() {
                if let Event::Message(m) = e {
                    f.delivered += m.len() as u64;
                }
            }
            for h in ep.connections() {
                max_mem_receiver = max_mem_receiver.max(ep.memory_usage(h).unwrap_or(0));
            }
        }
        false
    });
    let span = (secs - warm) as f64;
    let mut retransmitted = 0;
    let mut lost = 0;
    for f in &flows {
        if let Some(st) = f.handle.and_then(|h| sim.endpoint(f.from).stats(h)) {
            retransmitted += st.packets_retransmitted;
            lost += st.packets_lost;
        }
    }
    Run {
        goodput_mbps: flows
            .iter()
            .zip(&warm_marks)
            .map(|(f, w)| (f.delivered - w) as f64 * 8.0 / span / 1e6)
            .collect(),
        max_mem_sender,
        max_mem_receiver,
        retransmitted,
        lost,
    }
}

/// Two flows of `cc` sharing the bottleneck with `loss`: (flow 1, flow 2, ratio).
fn fairness(cc: CcKind, loss: f64, secs: u64, warm: u64, seed: u64) -> (f64, f64, f64) {
    let r = run(cc, loss, 2, secs, warm, seed);
    let (x, y) = (r.goodput_mbps[0], r.goodput_mbps[1]);
    (x, y, x.min(y) / x.max(y).max(1e-9))
}

/// `nflows` bbr flows sharing the bottleneck, for `seeds` seeds from
/// `first` at each loss rate: each flow's goodput, their sum, and min/max.
fn fairness_sweep(first: u64, seeds: u64, nflows: usize, secs: u64, warm: u64, losses: &[f64]) {
    println!("{nflows} bbr flows on one 100 Mbit/s, 40 ms RTT bottleneck, goodput from t={warm}s to t={secs}s");
    println!();
    println!("| loss | seed | flows (Mbit/s) | total | min/max |");
    println!("|---|---|---|---|---|");
    for &loss in losses {
        let mut worst = f64::MAX;
        for seed in first..first + seeds {
            let g = run(CcKind::Bbr, loss, nflows, secs, warm, seed).goodput_mbps;
            let max = g.iter().copied().fold(0.0, f64::max);
            let min = g.iter().copied().fold(f64::MAX, f64::min);
            let ratio = min / max.max(1e-9);
            worst = worst.min(ratio);
            let each: Vec<String> = g.iter().map(|x| format!("{x:.1}")).collect();
            println!(
                "| {:.0}% | {seed} | {} | {:.1} | {ratio:.2} |",
                loss * 100.0,
                each.join(" / "),
                g.iter().sum::<f64>()
            );
        }
        println!(
            "| {:.0}% | worst of {seeds} | | | {worst:.2} |",
            loss * 100.0
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seed: u64 = std::env::var("RUDP_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let (secs, warm) = if quick { (10, 2) } else { (30, 5) };
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--fairness") {
        let seeds = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(10);
        let losses: Vec<f64> = match args.iter().position(|a| a == "--loss") {
            Some(j) => args
                .get(j + 1)
                .and_then(|p| p.parse::<f64>().ok())
                .map(|p| vec![p / 100.0])
                .unwrap_or_default(),
            None => vec![0.0, 0.01, 0.05],
        };
        let nflows = match args.iter().position(|a| a == "--flows") {
            Some(j) => args.get(j + 1).and_then(|n| n.parse().ok()).unwrap_or(2),
            None => 2,
        };
        fairness_sweep(seed, seeds, nflows.max(1), secs, warm, &losses);
        return;
    }
    println!("rudp on a simulated 100 Mbit/s path (counting {FRAME_OVERHEAD} header bytes per datagram: 97.2 Mbit/s of UDP payload), 40 ms RTT, one-BDP (500 kB) drop-tail queue, loss in both directions");
    println!("goodput = application bytes delivered from t={warm}s to t={secs}s (virtual time)");
    println!();
    println!("| controller | loss | goodput (Mbit/s) | lost pkts | retransmitted pkts | max mem sender / receiver |");
    println!("|---|---|---|---|---|---|");
    for cc in [CcKind::Bbr, CcKind::NewReno] {
        for loss in [0.0, 0.01, 0.05, 0.10, 0.30] {
            let r = run(cc, loss, 1, secs, warm, seed);
            println!(
                "| {cc} | {:.0}% | {:.1} | {} | {} | {:.1} MB / {:.1} MB |",
                loss * 100.0,
                r.goodput_mbps[0],
                r.lost,
                r.retransmitted,
                r.max_mem_sender as f64 / 1e6,
                r.max_mem_receiver as f64 / 1e6,
            );
        }
    }
    println!();
    println!("| two flows, one bottleneck | flow 1 (Mbit/s) | flow 2 (Mbit/s) | ratio |");
    println!("|---|---|---|---|");
    for cc in [CcKind::Bbr, CcKind::NewReno] {
        for loss in [0.0, 0.01] {
            let (x, y, ratio) = fairness(cc, loss, secs, warm, seed + 1);
            println!(
                "| {cc}, {:.0}% loss | {x:.1} | {y:.1} | {ratio:.2} |",
                loss * 100.0
            );
        }
    }
}
