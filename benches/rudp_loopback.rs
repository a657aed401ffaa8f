//! Clean loopback, one connection: rudp goodput against a raw UDP blast of
//! the same datagram size measured in the same run, and TCP for reference.
//!
//! `cargo bench --bench rudp_loopback` (RUDP_BENCH_SECS=N per run, default 5;
//! RUDP_BENCH_CC=newreno to change the controller). Goodput is what the
//! receiving application verified, divided by the client's elapsed time.
//! Two servers run: one with batched I/O (sendmmsg/recvmmsg, UDP GSO/GRO), one
//! with a system call per datagram (what `iperf3 -u -l 1472` does), so each
//! rudp figure has a raw baseline with the same I/O path.

use chunkswarm::rudp::driver::perf::{
    run_client, Amount, ClientOptions, Mode, PerfReport, Server, ServerOptions,
};
use chunkswarm::rudp::driver::DriverOptions;
use chunkswarm::rudp::{CcKind, Config};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The goal of issue 3: rudp at least 70% of the raw blast.
const GOAL: f64 = 0.70;

fn driver_options(batch: bool) -> DriverOptions {
    DriverOptions {
        batch,
        gso: batch,
        ..DriverOptions::default()
    }
}

fn start_server(batch: bool, stop: &Arc<AtomicBool>) -> (SocketAddr, thread::JoinHandle<()>) {
    let mut server = Server::bind(ServerOptions {
        bind: "127.0.0.1:0".parse().expect("address"),
        config: Config::default(),
        driver: driver_options(batch),
        one_off: false,
        seed: 11,
    })
    .unwrap_or_else(|e| panic!("server: {e}"));
    let addr = server.local_addr();
    let stop = Arc::clone(stop);
    let handle = thread::spawn(move || {
        if let Err(e) = server.serve(&stop, &mut |_| {}) {
            eprintln!("server: {e}");
        }
    });
    (addr, handle)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters nothing here.
    let secs: f64 = std::env::var("RUDP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let cc: CcKind = std::env::var("RUDP_BENCH_CC")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    let stop = Arc::new(AtomicBool::new(false));
    let (batched, h1) = start_server(true, &stop);
    let (plain, h2) = start_server(false, &stop);

    let run = |label: &str, server: SocketAddr, mode: Mode, batch: bool| -> Option<PerfReport> {
        let opts = ClientOptions {
            server,
            mode,
            amount: Amount::Time(Duration::from_secs_f64(secs)),
            config: Config {
                cc,
                ..Config::default()
            },
            driver: driver_options(batch),
            tcp_cc: None,
            seed: 12,
        };
        match run_client(&opts, &mut |_| {}) {
            Ok(r) => {
                println!(
                    "{label:<34} {:>9.1} Mbit/s  ({:.0} MB in {:.2} s, {} lost, {} retransmitted, {} send calls)",
                    r.goodput_mbps,
                    r.bytes as f64 / 1e6,
                    r.seconds,
                    r.lost_packets,
                    r.retransmitted_packets,
                    r.send_calls
                );
                Some(r)
            }
            Err(e) => {
                println!("{label:<34} failed: {e}");
                None
            }
        }
    };

    println!(
        "rudp loopback benchmark: one connection, 1472-byte datagrams, {secs} s per run, cc {cc}"
    );
    let raw_plain = run(
        "raw UDP blast, 1 syscall/datagram",
        plain,
        Mode::RawUdp,
        false,
    );
    let rudp_plain = run("rudp, 1 syscall/datagram", plain, Mode::Rudp, false);
    let raw_batched = run("raw UDP blast, mmsg+GSO/GRO", batched, Mode::RawUdp, true);
    let rudp_batched = run("rudp, mmsg+GSO/GRO", batched, Mode::Rudp, true);
    let tcp = run("TCP (reference)", batched, Mode::Tcp, true);
    stop.store(true, Ordering::Relaxed);
    let _ = h1.join();
    let _ = h2.join();

    let ratio = |a: &Option<PerfReport>, b: &Option<PerfReport>| match (a, b) {
        (Some(a), Some(b)) if b.goodput_mbps > 0.0 => Some(a.goodput_mbps / b.goodput_mbps),
        _ => None,
    };
    let show = |name: &str, r: Option<f64>| match r {
        Some(r) => println!(
            "ratio {name:<44} {r:.2} ({})",
            if r >= GOAL {
                "meets the 0.70 goal"
            } else {
                "below the 0.70 goal"
            }
        ),
        None => println!("ratio {name:<44} n/a"),
    };
    show(
        "rudp / raw blast, same I/O (1 syscall/dgram)",
        ratio(&rudp_plain, &raw_plain),
    );
    show(
        "rudp / raw blast, same I/O (mmsg+GSO/GRO)",
        ratio(&rudp_batched, &raw_batched),
    );
    show(
        "best rudp / raw blast like iperf3 -u -l 1472",
        ratio(&rudp_batched, &raw_plain),
    );
    if let (Some(r), Some(t)) = (&rudp_batched, &tcp) {
        println!(
            "rudp (mmsg+GSO/GRO) / TCP: {:.2}",
            r.goodput_mbps / t.goodput_mbps
        );
    }
}
