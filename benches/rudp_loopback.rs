//! Clean loopback, one connection: rudp goodput against a raw UDP blast of
//! the same datagram size measured in the same run, and TCP for reference.
//!
//! `cargo bench --bench rudp_loopback` (RUDP_BENCH_SECS=N per run, default 3;
//! RUDP_BENCH_RUNS=N interleaved runs per case, default 3, the median is shown;
//! RUDP_BENCH_CC=newreno to change the controller). Server and client are
//! separate `rudp-perf` processes, as with iperf3. Goodput is what the
//! receiving application verified, divided by the client's elapsed time.
//! Two servers run: one with batched I/O (sendmmsg/recvmmsg, UDP GSO/GRO), one
//! with a system call per datagram (what `iperf3 -u -l 1472` does), so each
//! rudp figure has a raw baseline with the same I/O path.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The goal of issue 3: rudp at least 70% of the raw blast.
const GOAL: f64 = 0.70;
const PERF: &str = env!("CARGO_BIN_EXE_rudp-perf");

/// A server process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(PERF)
            .args(["server", "--bind", "127.0.0.1", "--port", "0", "-q"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("rudp-perf server starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected server output {first:?}"))
            .to_string();
        // Keep the pipe drained: the server prints a line per client.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `"key":` in a flat JSON object.
fn json_number(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let rest = &json[json.find(&pat)? + pat.len()..];
    rest[..rest.find([',', '}'])?].trim().parse().ok()
}

/// One client run; returns its JSON line.
fn client(server: &Server, secs: f64, cc: &str, extra: &[&str]) -> Option<String> {
    let secs_arg = secs.to_string();
    let mut child = Command::new(PERF)
        .args([
            "client",
            &server.addr,
            "--time",
            &secs_arg,
            "--cc",
            cc,
            "--json",
            "-q",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("rudp-perf client starts");
    let limit = Instant::now() + Duration::from_secs_f64(secs + 60.0);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                std::io::Read::read_to_string(child.stdout.as_mut()?, &mut out).ok()?;
                if !status.success() {
                    eprintln!("client {extra:?} failed: {status}");
                    return None;
                }
                return out.lines().last().map(str::to_string);
            }
            Ok(None) if Instant::now() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("client {extra:?} did not finish");
                return None;
            }
        }
    }
}

fn main() {
    let secs: f64 = std::env::var("RUDP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let runs: usize = std::env::var("RUDP_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let cc = std::env::var("RUDP_BENCH_CC").unwrap_or_else(|_| "bbr".to_string());
    let batched = Server::start(&[]);
    let plain = Server::start(&["--no-batch"]);

    println!(
        "rudp loopback benchmark: one connection, 1472-byte datagrams, cc {cc}, \
         median of {runs} interleaved runs of {secs} s (rudp-perf processes)"
    );
    let cases: [(&str, &Server, &[&str]); 5] = [
        (
            "raw UDP blast, 1 syscall/datagram",
            &plain,
            &["--raw-udp", "--no-batch"],
        ),
        ("rudp, 1 syscall/datagram", &plain, &["--no-batch"]),
        ("raw UDP blast, mmsg+GSO/GRO", &batched, &["--raw-udp"]),
        ("rudp, mmsg+GSO/GRO", &batched, &[]),
        ("TCP (reference)", &batched, &["--tcp"]),
    ];
    let mut results: Vec<Vec<String>> = vec![Vec::new(); cases.len()];
    for _ in 0..runs {
        for (i, (_, server, extra)) in cases.iter().enumerate() {
            results[i].extend(client(server, secs, &cc, extra));
        }
    }
    let mut medians = Vec::new();
    for (i, (label, ..)) in cases.iter().enumerate() {
        let mut g: Vec<f64> = results[i]
            .iter()
            .filter_map(|j| json_number(j, "goodput_mbps"))
            .collect();
        let runs: Vec<String> = g.iter().map(|v| format!("{v:.0}")).collect();
        g.sort_by(f64::total_cmp);
        let median = (!g.is_empty()).then(|| g[g.len() / 2]);
        medians.push(median);
        match (median, results[i].last()) {
            (Some(m), Some(last)) => println!(
                "{label:<34} {m:>9.1} Mbit/s  (runs {}; last: {} lost, {} retransmitted, {} send calls)",
                runs.join(" "),
                json_number(last, "lost_packets").unwrap_or(0.0),
                json_number(last, "retransmitted_packets").unwrap_or(0.0),
                json_number(last, "send_calls").unwrap_or(0.0),
            ),
            _ => println!("{label:<34} failed"),
        }
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
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
        ratio(medians[1], medians[0]),
    );
    show(
        "rudp / raw blast, same I/O (mmsg+GSO/GRO)",
        ratio(medians[3], medians[2]),
    );
    show(
        "best rudp / raw blast like iperf3 -u -l 1472",
        ratio(medians[3], medians[0]),
    );
    if let Some(r) = ratio(medians[3], medians[4]) {
        println!("rudp (mmsg+GSO/GRO) / TCP: {r:.2}");
    }
}
