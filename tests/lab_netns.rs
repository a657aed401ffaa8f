//! netlab end to end, in real network namespaces (needs root and iproute2;
//! each test prints why and returns when it cannot run). Short runs: a
//! compare cell, a small swarm star, and an interrupted run, one at a time.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chunkswarm::lab::probe::one_way_loss_tolerance;
use serde_json::Value;

/// The namespace tests share the two cores; run them one after another.
static SERIAL: Mutex<()> = Mutex::new(());

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: netlab needs root for network namespaces");
        return false;
    }
    if let Err(e) = chunkswarm::lab::check_environment() {
        eprintln!("skipping: {e}");
        return false;
    }
    true
}

fn netlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netlab"))
}

fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("cs-{pid}-")))
        .map(str::to_string)
        .collect()
}

/// Runs netlab with `args`, returns (pid, stdout) after checking it succeeded.
fn run_json(args: &[&str]) -> (u32, Value) {
    let child = netlab()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "netlab {args:?} failed: {stderr}");
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    (pid, v)
}

fn assert_path(measured: &Value, rtt_ms: f64, loss: f64, probes: u32) {
    let rtt = measured["rtt_ms"].as_f64().expect("a measured RTT");
    assert!(
        (rtt - rtt_ms).abs() <= 0.1 * rtt_ms,
        "measured RTT {rtt:.2} ms is not within 10% of {rtt_ms} ms"
    );
    let measured_loss = measured["loss"].as_f64().expect("a measured loss");
    let tolerance = one_way_loss_tolerance(loss, probes);
    assert!(
        (measured_loss - loss).abs() <= tolerance,
        "measured loss {:.3}% each way is not within ±{:.3} points of {:.3}%",
        measured_loss * 100.0,
        tolerance * 100.0,
        loss * 100.0
    );
}

#[test]
fn compare_cell_measures_the_path_it_was_asked_for_and_cleans_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let (pid, v) = run_json(&[
        "compare", "--rate", "100mbit", "--rtt", "20ms", "--loss", "2%", "--secs", "2", "--probes",
        "800", "--json", "-q",
    ]);
    // The path: RTT within 10%; loss within three standard errors of 800 probes.
    assert_path(&v["measured"], 20.0, 0.02, 800);
    assert_eq!(v["rtt_ms"].as_f64(), Some(20.0));
    // Every row that ran moved data; every row that did not says why.
    let rows = v["rows"].as_array().unwrap();
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(rows.len() + skipped.len(), 4, "{v}");
    for row in rows {
        assert!(row["goodput_mbps"].as_f64().unwrap() > 0.1, "{row}");
        let name = row["protocol"].as_str().unwrap();
        assert!(["rudp-newreno", "rudp-bbr", "tcp-cubic", "tcp-bbr"].contains(&name));
    }
    for s in skipped {
        eprintln!("row skipped: {s}");
        assert!(!s["reason"].as_str().unwrap().is_empty());
    }
    // Under the delayer, the router saw the traffic and dropped about 2% of it.
    if v["impairment"] == "nfqueue" {
        let d = &v["delayer"];
        let (seen, lost) = (d["seen"].as_u64().unwrap(), d["lost"].as_u64().unwrap());
        assert!(seen > 1000, "{d}");
        let rate = lost as f64 / seen as f64;
        assert!((0.01..0.03).contains(&rate), "delayer dropped {rate}");
        assert_eq!(
            d["queue_dropped"].as_u64(),
            Some(0),
            "queue overflowed: {d}"
        );
    }
    assert!(
        namespaces_of(pid).is_empty(),
        "left behind: {:?}",
        namespaces_of(pid)
    );
}

#[test]
fn swarm_star_has_the_asked_path_between_peers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let (pid, v) = run_json(&[
        "swarm",
        "--peers",
        "4",
        "--rate",
        "20mbit",
        "--size",
        "10MB",
        "--rtt",
        "20ms",
        "--loss",
        "2%",
        "--json",
        "-q",
        "--timeout",
        "60",
    ]);
    let measured = serde_json::json!({"rtt_ms": v["measured_rtt_ms"], "loss": v["measured_loss"]});
    assert_path(&measured, 20.0, 0.02, 200);
    // 1 owner + 3 downloaders at 20 Mbit/s, 80 Mbit: max(4, 240/80 = 3) s; client-server 12 s.
    assert_eq!(v["p2p_bound_s"].as_f64(), Some(4.0));
    assert_eq!(v["client_server_s"].as_f64(), Some(12.0));
    // The demo ran in the namespaces and every copy was verified.
    let t = v["measured_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("no distribution time: {}", v["note"]));
    assert!(t >= 4.0, "faster than the lower bound: {t}");
    assert!(
        namespaces_of(pid).is_empty(),
        "left behind: {:?}",
        namespaces_of(pid)
    );
}

#[test]
fn interrupted_run_removes_its_namespaces() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let child = netlab()
        .args([
            "compare", "--rtt", "10ms", "--loss", "1%", "--secs", "20", "--probes", "2000", "-q",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    while namespaces_of(pid).len() < 3 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(namespaces_of(pid).len(), 3, "the topology never came up");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: interrupted"), "{stderr}");
    assert!(
        namespaces_of(pid).is_empty(),
        "left behind: {:?}",
        namespaces_of(pid)
    );
}
