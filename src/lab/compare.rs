//! `netlab compare`: one path (rate, RTT, loss), then rudp with each congestion
//! controller and TCP with CUBIC and with BBR across it for the same time, one
//! row each. rudp-perf (next to the netlab binary, or `--perf-bin`) runs every
//! row it can; iperf3 stands in for the TCP rows when rudp-perf lacks `--tcp`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::nfqueue::DelayerReport;
use super::probe::{measure_path, PathMeasurement};
use super::process::{self, command, Background};
use super::topology::{ImpairMethod, PathSpec, Topology, TopologySpec};
use super::units::Rate;
use super::LabError;

/// What is run in one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// rudp with this congestion controller (`newreno`, `bbr`).
    Rudp(String),
    /// TCP with this congestion control algorithm (`cubic`, `bbr`).
    Tcp(String),
}

impl Protocol {
    pub fn name(&self) -> String {
        match self {
            Protocol::Rudp(cc) => format!("rudp-{cc}"),
            Protocol::Tcp(cc) => format!("tcp-{cc}"),
        }
    }

    /// The rows of a comparison, in order.
    pub fn all() -> Vec<Protocol> {
        vec![
            Protocol::Rudp("newreno".into()),
            Protocol::Rudp("bbr".into()),
            Protocol::Tcp("cubic".into()),
            Protocol::Tcp("bbr".into()),
        ]
    }
}

/// One row's result.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub protocol: String,
    pub goodput_mbps: f64,
    pub retransmissions: u64,
    /// Smoothed RTT the sender saw, when the tool reports it.
    pub rtt_ms: Option<f64>,
    pub bytes: u64,
    pub seconds: f64,
    /// The program that produced it (`rudp-perf`, `iperf3`).
    pub tool: &'static str,
}

/// The whole experiment.
#[derive(Debug, Clone)]
pub struct CompareSpec {
    pub rate: Rate,
    pub path: PathSpec,
    pub duration: Duration,
    pub method: ImpairMethod,
    pub protocols: Vec<Protocol>,
    /// rudp-perf; rows needing it are skipped (with the reason) when absent.
    pub perf_bin: PathBuf,
    /// This program, run in the router namespace as the delayer.
    pub delayer_program: PathBuf,
    /// Pings sent to measure the path first (0 to skip).
    pub probes: u32,
}

/// What `compare` measured.
#[derive(Debug, Clone)]
pub struct CompareReport {
    pub rate: Rate,
    pub path: PathSpec,
    pub duration: Duration,
    pub method: Option<ImpairMethod>,
    pub measured: Option<PathMeasurement>,
    pub rows: Vec<RunResult>,
    /// Rows that did not run, with why.
    pub skipped: Vec<(String, String)>,
    pub delayer: Option<DelayerReport>,
}

const FIRST_PORT: u16 = 5201;

/// The tools that can run a row, found once.
struct Tools {
    perf: Option<PathBuf>,
    perf_has_tcp: bool,
    iperf3: Option<PathBuf>,
}

impl Tools {
    fn find(perf_bin: &Path) -> Tools {
        let perf = perf_bin.is_file().then(|| perf_bin.to_path_buf());
        let perf_has_tcp = perf.as_ref().is_some_and(|p| {
            process::output(
                command(&p.to_string_lossy(), &["client", "--help"]),
                Duration::from_secs(5),
            )
            .is_ok_and(|o| o.stdout.contains("--tcp"))
        });
        Tools {
            perf,
            perf_has_tcp,
            iperf3: super::find_tool("iperf3"),
        }
    }
}

/// Makes `cc` usable for TCP (loading its module if needed); Err says why not.
pub fn ensure_tcp_congestion_control(cc: &str) -> Result<(), String> {
    let path = "/proc/sys/net/ipv4/tcp_available_congestion_control";
    let available = || std::fs::read_to_string(path).unwrap_or_default();
    if available().split_whitespace().any(|a| a == cc) {
        return Ok(());
    }
    let _ = process::output(
        command("modprobe", &[format!("tcp_{cc}")]),
        Duration::from_secs(10),
    );
    if available().split_whitespace().any(|a| a == cc) {
        Ok(())
    } else {
        Err(format!(
            "TCP congestion control {cc} is not available in this kernel (modprobe tcp_{cc} failed)"
        ))
    }
}

/// Runs the experiment; the topology is gone when this returns.
pub fn run_compare(spec: &CompareSpec) -> Result<CompareReport, LabError> {
    let tools = Tools::find(&spec.perf_bin);
    let mut topo = Topology::build(&TopologySpec {
        host_names: TopologySpec::pair(),
        router_rate: Some(spec.rate),
        host_upload: None,
        path: spec.path,
        method: spec.method,
        delayer_program: spec.delayer_program.clone(),
    })?;
    let (a, b) = match (topo.host(0), topo.host(1)) {
        (Some(a), Some(b)) => (a.clone(), b.clone()),
        _ => return Err(LabError::Setup("the pair topology has no two hosts".into())),
    };
    let measured = if spec.probes > 0 {
        let interval = Duration::from_millis(5);
        let m = measure_path(&a.ns, b.addr, spec.probes, interval)?;
        log::info!(
            "path: rtt {:.2} ms median (min {:.2}), loss {:.2}% each way from {} probes",
            m.rtt_median_ms,
            m.rtt_min_ms,
            m.one_way_loss() * 100.0,
            m.sent
        );
        Some(m)
    } else {
        None
    };
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (i, protocol) in spec.protocols.iter().enumerate() {
        let port = FIRST_PORT + i as u16;
        let result = match protocol {
            Protocol::Rudp(cc) => match &tools.perf {
                Some(perf) => run_rudp_perf(perf, &a, &b, port, spec.duration, Some(cc), None),
                None => {
                    skipped.push((
                        protocol.name(),
                        format!("{} not found", spec.perf_bin.display()),
                    ));
                    continue;
                }
            },
            Protocol::Tcp(cc) => {
                if let Err(why) = ensure_tcp_congestion_control(cc) {
                    skipped.push((protocol.name(), why));
                    continue;
                }
                match (&tools.perf, tools.perf_has_tcp, &tools.iperf3) {
                    (Some(perf), true, _) => {
                        run_rudp_perf(perf, &a, &b, port, spec.duration, None, Some(cc))
                    }
                    (_, _, Some(iperf3)) => run_iperf3(iperf3, &a, &b, port, spec.duration, cc),
                    _ => {
                        skipped.push((
                            protocol.name(),
                            "neither rudp-perf with --tcp nor iperf3 is available".into(),
                        ));
                        continue;
                    }
                }
            }
        };
        match result {
            Ok(mut r) => {
                r.protocol = protocol.name();
                log::info!(
                    "{}: {:.1} Mbit/s, {} retransmissions",
                    r.protocol,
                    r.goodput_mbps,
                    r.retransmissions
                );
                rows.push(r);
            }
            Err(LabError::Interrupted) => return Err(LabError::Interrupted),
            Err(e) => skipped.push((protocol.name(), e.to_string())),
        }
        process::sleep(Duration::from_millis(500))?;
    }
    let delayer = topo.stop_delayer();
    Ok(CompareReport {
        rate: spec.rate,
        path: spec.path,
        duration: spec.duration,
        method: topo.method,
        measured,
        rows,
        skipped,
        delayer,
    })
}

use super::topology::Host;

/// How long a client may take before its row counts as hung.
fn client_limit(duration: Duration) -> Duration {
    duration * 2 + Duration::from_secs(10)
}

/// Starts a server, waits until it prints `ready_line` (or a moment without
/// one), then runs `client` to completion.
fn with_server(
    server: std::process::Command,
    ready_line: Option<&str>,
    client: std::process::Command,
    duration: Duration,
) -> Result<process::Output, LabError> {
    let mut server = Background::spawn(server)?;
    match ready_line {
        Some(prefix) => {
            server.wait_for_line(Duration::from_secs(10), |l| l.starts_with(prefix))?;
        }
        None => process::sleep(Duration::from_millis(300))?,
    }
    let out = process::output(client, client_limit(duration));
    let server_lines = server.stop(Duration::from_millis(500));
    let out = out?;
    if !out.success() {
        log::debug!("server said: {}", server_lines.join(" | "));
    }
    Ok(out)
}

fn run_rudp_perf(
    perf: &Path,
    a: &Host,
    b: &Host,
    port: u16,
    duration: Duration,
    cc: Option<&str>,
    tcp_cc: Option<&str>,
) -> Result<RunResult, LabError> {
    let perf_s = perf.to_string_lossy().into_owned();
    let server_args = vec![
        "server".to_string(),
        "--bind".into(),
        b.addr.to_string(),
        "--port".into(),
        port.to_string(),
    ];
    let mut client_args = vec![
        "client".to_string(),
        format!("{}:{port}", b.addr),
        "--time".into(),
        format!("{}", duration.as_secs_f64()),
        "--json".into(),
    ];
    if let Some(cc) = cc {
        client_args.extend(["--cc".into(), cc.into()]);
    }
    if let Some(tcp_cc) = tcp_cc {
        // The server takes TCP on the same port without being told.
        client_args.extend(["--tcp".into(), "--tcp-cc".into(), tcp_cc.into()]);
    }
    let out = with_server(
        b.ns.exec(&perf_s, &server_args),
        Some("listening on"),
        a.ns.exec(&perf_s, &client_args),
        duration,
    )?;
    if !out.success() {
        return Err(LabError::Command {
            cmd: format!("rudp-perf {}", client_args.join(" ")),
            status: out.status,
            stderr: out.stderr,
        });
    }
    parse_rudp_perf(&out.stdout)
}

/// Reads rudp-perf's `--json` summary: the last stdout line that is a JSON object.
pub fn parse_rudp_perf(stdout: &str) -> Result<RunResult, LabError> {
    let bad = |detail: String| LabError::BadOutput {
        tool: "rudp-perf".into(),
        detail,
    };
    let v: Value = stdout
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l.trim())
                .ok()
                .filter(Value::is_object)
        })
        .ok_or_else(|| bad("no JSON summary line".into()))?;
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    Ok(RunResult {
        protocol: String::new(),
        goodput_mbps: f("goodput_mbps").ok_or_else(|| bad("no goodput_mbps".into()))?,
        retransmissions: f("retransmitted_packets").unwrap_or(0.0) as u64,
        rtt_ms: f("srtt_ms"),
        bytes: f("bytes").unwrap_or(0.0) as u64,
        seconds: f("seconds").unwrap_or(0.0),
        tool: "rudp-perf",
    })
}

fn run_iperf3(
    iperf3: &Path,
    a: &Host,
    b: &Host,
    port: u16,
    duration: Duration,
    cc: &str,
) -> Result<RunResult, LabError> {
    let iperf3 = iperf3.to_string_lossy().into_owned();
    let server = b.ns.exec(
        &iperf3,
        &[
            "-s",
            "-1",
            "-B",
            &b.addr.to_string(),
            "-p",
            &port.to_string(),
        ],
    );
    let secs = format!("{}", duration.as_secs_f64().ceil().max(1.0));
    let client = a.ns.exec(
        &iperf3,
        &[
            "-c",
            &b.addr.to_string(),
            "-p",
            &port.to_string(),
            "-t",
            &secs,
            "-C",
            cc,
            "-J",
        ],
    );
    let out = with_server(server, None, client, duration)?;
    // iperf3 -J reports failures as JSON too.
    parse_iperf3(&out.stdout)
}

/// Reads `iperf3 -J`: receiver goodput, sender retransmits, sender mean RTT.
pub fn parse_iperf3(stdout: &str) -> Result<RunResult, LabError> {
    let bad = |detail: String| LabError::BadOutput {
        tool: "iperf3".into(),
        detail,
    };
    let v: Value = serde_json::from_str(stdout).map_err(|e| bad(e.to_string()))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(bad(err.to_string()));
    }
    let end = v.get("end").ok_or_else(|| bad("no end section".into()))?;
    let received = end
        .get("sum_received")
        .ok_or_else(|| bad("no sum_received".into()))?;
    let bps = received
        .get("bits_per_second")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("no bits_per_second".into()))?;
    let retrans = end
        .pointer("/sum_sent/retransmits")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let rtt_us = end
        .pointer("/streams/0/sender/mean_rtt")
        .and_then(Value::as_f64);
    Ok(RunResult {
        protocol: String::new(),
        goodput_mbps: bps / 1e6,
        retransmissions: retrans,
        rtt_ms: rtt_us.map(|us| us / 1000.0),
        bytes: received.get("bytes").and_then(Value::as_u64).unwrap_or(0),
        seconds: received
            .get("seconds")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        tool: "iperf3",
    })
}

fn method_name(m: Option<ImpairMethod>) -> &'static str {
    match m {
        Some(ImpairMethod::Netem) => "netem",
        Some(ImpairMethod::Nfqueue) => "nfqueue",
        Some(ImpairMethod::Auto) | None => "none",
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

impl CompareReport {
    fn measured_rtt_ms(&self) -> Option<f64> {
        self.measured
            .map(|m| m.rtt_median_ms)
            .filter(|v| v.is_finite())
    }

    /// Human-readable: the path, then one row per protocol.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "path: rate {}, rtt {} ms, loss {:.2}% each way ({}), {} s per run",
            self.rate,
            self.path.rtt.as_millis(),
            self.path.loss.mean_loss() * 100.0,
            method_name(self.method),
            self.duration.as_secs_f64()
        );
        if let Some(m) = self.measured {
            let _ = writeln!(
                s,
                "measured: rtt {:.2} ms median (avg {:.2}, min {:.2}, max {:.2}), loss {:.2}% each way ({} of {} probes lost)",
                m.rtt_median_ms,
                m.rtt_avg_ms,
                m.rtt_min_ms,
                m.rtt_max_ms,
                m.one_way_loss() * 100.0,
                m.sent - m.received.min(m.sent),
                m.sent
            );
        }
        let _ = writeln!(
            s,
            "{:<14} {:>12} {:>9} {:>8}  tool",
            "protocol", "goodput_mbps", "retrans", "rtt_ms"
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{:<14} {:>12.1} {:>9} {:>8}  {}",
                r.protocol,
                r.goodput_mbps,
                r.retransmissions,
                opt(r.rtt_ms),
                r.tool
            );
        }
        for (name, why) in &self.skipped {
            let _ = writeln!(s, "{name:<14} skipped: {why}");
        }
        s
    }

    pub fn to_json(&self) -> Value {
        json!({
            "rate_mbit": self.rate.mbit(),
            "rtt_ms": self.path.rtt.as_secs_f64() * 1e3,
            "jitter_ms": self.path.jitter.as_secs_f64() * 1e3,
            "loss": self.path.loss.mean_loss(),
            "secs": self.duration.as_secs_f64(),
            "impairment": method_name(self.method),
            "measured": self.measured.map(|m| json!({
                "rtt_ms": m.rtt_median_ms.is_finite().then_some(m.rtt_median_ms),
                "rtt_min_ms": m.rtt_min_ms.is_finite().then_some(m.rtt_min_ms),
                "loss": m.one_way_loss(),
                "probes": m.sent,
            })),
            "rows": self.rows.iter().map(|r| json!({
                "protocol": r.protocol,
                "goodput_mbps": r.goodput_mbps,
                "retransmissions": r.retransmissions,
                "rtt_ms": r.rtt_ms,
                "bytes": r.bytes,
                "seconds": r.seconds,
                "tool": r.tool,
            })).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|(p, why)| json!({"protocol": p, "reason": why})).collect::<Vec<_>>(),
            "delayer": self.delayer.map(|d| json!({
                "seen": d.line.seen, "lost": d.line.lost, "released": d.line.released,
                "queue_dropped": d.queue_dropped, "enobufs": d.enobufs,
            })),
        })
    }

    pub const CSV_HEADER: &'static str = "protocol,goodput_mbps,retransmissions,rtt_ms,rate_mbit,rtt_asked_ms,loss_asked,rtt_measured_ms,loss_measured,secs,tool";

    /// One CSV line per row (no header).
    pub fn csv_rows(&self) -> Vec<String> {
        let measured_loss = self.measured.map(|m| format!("{:.5}", m.one_way_loss()));
        self.rows
            .iter()
            .map(|r| {
                format!(
                    "{},{:.2},{},{},{},{},{},{},{},{},{}",
                    r.protocol,
                    r.goodput_mbps,
                    r.retransmissions,
                    r.rtt_ms.map_or(String::new(), |v| format!("{v:.2}")),
                    self.rate.mbit(),
                    self.path.rtt.as_secs_f64() * 1e3,
                    self.path.loss.mean_loss(),
                    self.measured_rtt_ms()
                        .map_or(String::new(), |v| format!("{v:.2}")),
                    measured_loss.clone().unwrap_or_default(),
                    self.duration.as_secs_f64(),
                    r.tool
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rudp_perf_summary_is_its_last_json_line() {
        let out = "progress 1\n{\"goodput_mbps\": 93.5, \"bytes\": 116875000, \"seconds\": 10.0, \"retransmitted_packets\": 812, \"lost_packets\": 790, \"srtt_ms\": 41.2}\n";
        let r = parse_rudp_perf(out).unwrap();
        assert_eq!(r.goodput_mbps, 93.5);
        assert_eq!(r.retransmissions, 812);
        assert_eq!(r.rtt_ms, Some(41.2));
        assert_eq!(r.bytes, 116_875_000);
        assert!(parse_rudp_perf("no json here\n[1,2]\n").is_err());
        assert!(parse_rudp_perf("{\"bytes\": 1}").is_err());
    }

    #[test]
    fn iperf3_json_gives_goodput_retransmits_and_rtt() {
        let out = r#"{"start":{},"end":{"streams":[{"sender":{"mean_rtt":40321}}],
            "sum_sent":{"retransmits":57,"bytes":9000000},
            "sum_received":{"bytes":8000000,"seconds":10.0,"bits_per_second":6400000.0}}}"#;
        let r = parse_iperf3(out).unwrap();
        assert_eq!(r.goodput_mbps, 6.4);
        assert_eq!(r.retransmissions, 57);
        assert_eq!(r.rtt_ms, Some(40.321));
        assert!(parse_iperf3(r#"{"start":{},"error":"unable to connect"}"#).is_err());
        assert!(parse_iperf3("not json").is_err());
    }

    #[test]
    fn protocol_names_are_the_row_labels() {
        let names: Vec<String> = Protocol::all().iter().map(Protocol::name).collect();
        assert_eq!(names, ["rudp-newreno", "rudp-bbr", "tcp-cubic", "tcp-bbr"]);
    }
}
