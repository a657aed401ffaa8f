//! `netlab swarm`: a star of peer hosts through the router, each with its
//! upload capped, and the distribution-time bounds to hold a measured swarm
//! against (Kurose & Ross §2.5: a server with upload u_s sends a file of F bits
//! to N peers with uploads u_i).
//!
//! - client-server: D_cs = N·F / u_s (the server uploads every copy itself);
//! - P2P lower bound: D_p2p ≥ max(F / u_s, N·F / (u_s + Σu_i)) (every bit leaves
//!   the server at least once, and N·F bits must be uploaded by someone).
//!
//! Download capacity is not capped here, so the F/d_min terms drop out.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::probe::{measure_path, PathMeasurement};
use super::process;
use super::topology::{router_address, ImpairMethod, PathSpec, Topology, TopologySpec};
use super::units::Rate;
use super::LabError;

/// Client-server distribution time: N·F / u_s. `None` for a zero rate.
pub fn client_server_time(
    downloaders: usize,
    file_bytes: u64,
    server_upload: Rate,
) -> Option<Duration> {
    server_upload.time_for(file_bytes.saturating_mul(downloaders as u64))
}

/// P2P lower bound: max(F / u_s, N·F / (u_s + Σu_i)). `None` for a zero server rate.
pub fn p2p_lower_bound(
    file_bytes: u64,
    server_upload: Rate,
    peer_uploads: &[Rate],
) -> Option<Duration> {
    let first_copy = server_upload.time_for(file_bytes)?;
    let total_upload: u64 =
        server_upload.bits_per_sec() + peer_uploads.iter().map(|r| r.bits_per_sec()).sum::<u64>();
    let all_copies = Rate::from_bits_per_sec(total_upload)
        .time_for(file_bytes.saturating_mul(peer_uploads.len() as u64))?;
    Some(first_copy.max(all_copies))
}

/// The swarm experiment.
#[derive(Debug, Clone)]
pub struct SwarmSpec {
    /// Peers in all, the owner of the file included (1 + N downloaders).
    pub peers: usize,
    pub upload: Rate,
    pub file_size: u64,
    pub path: PathSpec,
    pub demo_bin: PathBuf,
    pub delayer_program: PathBuf,
    pub timeout: Duration,
    /// Each peer's own `--max-upload`, as a share of `upload` (None: no cap
    /// of its own, the host's TBF alone limits it). A user sets a torrent
    /// client's cap a little below the link rate. The cap counts chunk
    /// bytes, and the peer paces everything its socket sends at what those
    /// need with rudp's and IP's headers (+3.2%), acknowledgements and
    /// control included: at 95% that is 98% of the link in IP packets and
    /// 98.9% in the Ethernet frames the TBF counts, so the kernel's queue
    /// stays short and the peer, not the queue, decides which chunk goes
    /// next. (Before the peer paced its socket as a whole, a peer serving
    /// many neighbours overran the 64 KB TBF queue: 24% of the owner's
    /// packets were dropped.)
    pub peer_upload_share: Option<f64>,
}

/// The `peer_upload_share` netlab uses unless told otherwise.
pub const PEER_UPLOAD_SHARE: f64 = 0.95;

impl SwarmSpec {
    fn downloaders(&self) -> usize {
        self.peers.saturating_sub(1)
    }

    pub fn p2p_bound(&self) -> Option<Duration> {
        p2p_lower_bound(
            self.file_size,
            self.upload,
            &vec![self.upload; self.downloaders()],
        )
    }

    pub fn client_server(&self) -> Option<Duration> {
        client_server_time(self.downloaders(), self.file_size, self.upload)
    }

    /// The `--max-upload` each peer gets (see `peer_upload_share`).
    pub fn peer_cap(&self) -> Option<Rate> {
        let share = self.peer_upload_share.filter(|s| *s > 0.0 && *s <= 1.0)?;
        let bits = (self.upload.bits_per_sec() as f64 * share) as u64;
        Some(Rate::from_bits_per_sec(bits.max(8)))
    }
}

/// What the swarm run measured, beside the bounds.
#[derive(Debug, Clone)]
pub struct SwarmReport {
    pub spec: SwarmSpec,
    pub measured_path: Option<PathMeasurement>,
    /// Time until every downloader held a verified copy, when the run happened.
    pub distribution_time: Option<Duration>,
    /// Why there is no distribution time.
    pub note: Option<String>,
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

impl SwarmReport {
    pub fn to_text(&self) -> String {
        let s = &self.spec;
        let mut out = format!(
            "swarm: {} peers (1 owner + {} downloaders), upload {} each, file {} bytes, rtt {} ms, loss {:.2}% each way\n",
            s.peers,
            s.downloaders(),
            s.upload,
            s.file_size,
            s.path.rtt.as_millis(),
            s.path.loss.mean_loss() * 100.0
        );
        if let Some(cap) = s.peer_cap() {
            out += &format!(
                "each peer runs with --max-upload {cap} (its own cap, below the link's)\n"
            );
        }
        if let Some(m) = self.measured_path {
            out += &format!(
                "measured between two peers: rtt {:.2} ms (median), loss {:.2}% each way\n",
                m.rtt_median_ms,
                m.one_way_loss() * 100.0
            );
        }
        let f = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        out += &format!("P2P lower bound:     {}\n", f(s.p2p_bound()));
        out += &format!("client-server time:  {}\n", f(s.client_server()));
        out += &format!("measured:            {}", f(self.distribution_time));
        if let (Some(t), Some(b)) = (self.distribution_time, s.p2p_bound()) {
            out += &format!(
                " ({:.2} × the P2P bound)",
                t.as_secs_f64() / b.as_secs_f64()
            );
        }
        out.push('\n');
        if let Some(note) = &self.note {
            out += &format!("note: {note}\n");
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.spec;
        json!({
            "peers": s.peers,
            "upload_mbit": s.upload.mbit(),
            "file_bytes": s.file_size,
            "peer_max_upload_mbit": s.peer_cap().map(|r| r.mbit()),
            "rtt_ms": s.path.rtt.as_secs_f64() * 1e3,
            "loss": s.path.loss.mean_loss(),
            "p2p_bound_s": secs(s.p2p_bound()),
            "client_server_s": secs(s.client_server()),
            "measured_s": secs(self.distribution_time),
            "measured_rtt_ms": self.measured_path.map(|m| m.rtt_median_ms).filter(|v| v.is_finite()),
            "measured_loss": self.measured_path.map(|m| m.one_way_loss()),
            "note": self.note,
        })
    }
}

/// Builds the star (one host per peer, uploads capped), measures the path
/// between two peers, then runs the demo inside the router namespace: its
/// tracker listens on R's address on h0's link, and peer i runs in host
/// namespace h<i> (`--peer-wrap`), bound to that host's address.
pub fn run_swarm(spec: &SwarmSpec) -> Result<SwarmReport, LabError> {
    if spec.peers < 2 || spec.peers > 255 {
        return Err(LabError::Setup("a swarm needs 2 to 255 peers".into()));
    }
    let topo = Topology::build(&TopologySpec {
        host_names: TopologySpec::star(spec.peers),
        router_rate: None,
        host_upload: Some(spec.upload),
        path: spec.path,
        method: ImpairMethod::Auto,
        delayer_program: spec.delayer_program.clone(),
    })?;
    let measured_path = match (topo.host(0), topo.host(1)) {
        (Some(a), Some(b)) => Some(measure_path(&a.ns, b.addr, 200, Duration::from_millis(5))?),
        _ => None,
    };
    let mut report = SwarmReport {
        spec: spec.clone(),
        measured_path,
        distribution_time: None,
        note: None,
    };
    if !spec.demo_bin.is_file() {
        report.note = Some(format!(
            "{} not found (build it: cargo build --bin demo --bin tracker --bin peer), so no distribution time was measured",
            spec.demo_bin.display()
        ));
        return Ok(report);
    }
    let bin_dir = spec
        .demo_bin
        .parent()
        .map_or_else(|| ".".into(), |d| d.display().to_string());
    let args = [
        "--peers".to_string(),
        spec.peers.to_string(),
        "--size".into(),
        spec.file_size.to_string(),
        "--timeout".into(),
        spec.timeout.as_secs().max(1).to_string(),
        "--quiet".into(),
        "--bin-dir".into(),
        bin_dir,
        "--tracker-addr".into(),
        router_address(0).to_string(),
        "--peer-wrap".into(),
        format!("ip netns exec {}-h{{i}}", topo.prefix),
        "--peer-addr".into(),
        "10.77.{i}.1".into(),
    ];
    let mut args = args.to_vec();
    if let Some(cap) = spec.peer_cap() {
        args.push(format!("--max-upload={}bit", cap.bits_per_sec()));
    }
    let demo = spec.demo_bin.to_string_lossy().into_owned();
    let out = process::output(
        topo.router.exec(&demo, &args),
        spec.timeout + Duration::from_secs(60),
    )?;
    report.distribution_time = parse_distribution_time(&out.stdout);
    if report.distribution_time.is_none() || !out.success() {
        let why = out
            .stderr
            .lines()
            .rev()
            .find(|l| l.contains("error"))
            .or_else(|| out.stdout.lines().last())
            .unwrap_or("no output")
            .trim()
            .to_string();
        report.note = Some(format!("the demo did not complete: {why}"));
    }
    log::debug!("demo said:\n{}", out.stdout);
    // What each host's upload limiter passed and dropped: the bytes every
    // peer sent (chunks, headers, ACKs, duplicates) and whether its own cap
    // kept TBF's queue from overflowing. Only asked for when it is logged.
    if log::log_enabled!(log::Level::Debug) {
        for h in &topo.hosts {
            match h.ns.run("tc", &["-s", "qdisc", "show", "dev", "to-r"]) {
                Ok(text) => {
                    let sent = text.lines().find(|l| l.contains("Sent"));
                    let sent = sent.unwrap_or("no counters").trim();
                    log::debug!("{} upload (TBF): {sent}", h.ns.0);
                }
                Err(e) => log::debug!("{}: {e}", h.ns.0),
            }
        }
    }
    Ok(report)
}

/// The demo's closing line: `all N copies identical; distribution took 4.21s (...)`.
pub fn parse_distribution_time(stdout: &str) -> Option<Duration> {
    let line = stdout
        .lines()
        .find(|l| l.contains("copies identical; distribution took "))?;
    let rest = line.split("distribution took ").nth(1)?;
    let secs: f64 = rest.split('s').next()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_for_the_issue_swarms() {
        let u = Rate::from_mbit(20.0);
        let f = 10_000_000; // 80 Mbit: 4 s at 20 Mbit/s
                            // 1 + 5: max(4 s, 5·80/(20 + 5·20) = 3.33 s) = 4 s; client-server 5·4 = 20 s.
        assert_eq!(p2p_lower_bound(f, u, &[u; 5]), Some(Duration::from_secs(4)));
        assert_eq!(client_server_time(5, f, u), Some(Duration::from_secs(20)));
        // 1 + 15: max(4, 15·80/320 = 3.75) = 4 s; client-server 60 s.
        assert_eq!(
            p2p_lower_bound(f, u, &[u; 15]),
            Some(Duration::from_secs(4))
        );
        assert_eq!(client_server_time(15, f, u), Some(Duration::from_secs(60)));
    }

    #[test]
    fn slow_peers_make_the_aggregate_term_bind() {
        let server = Rate::from_mbit(20.0);
        let peers = [Rate::from_mbit(1.0); 10];
        // N·F/(u_s + Σu_i) = 10·80 Mbit / 30 Mbit/s = 26.67 s > F/u_s = 4 s.
        let b = p2p_lower_bound(10_000_000, server, &peers).unwrap();
        assert!((b.as_secs_f64() - 800.0 / 30.0).abs() < 1e-9);
        assert_eq!(p2p_lower_bound(1, Rate::from_bits_per_sec(0), &peers), None);
    }

    #[test]
    fn distribution_time_comes_from_the_demo_summary() {
        let out = "peer5  4.10s  yes  10.77.0.1:7001:40\nall 5 copies identical; distribution took 4.21s (2.4 MB/s per client)\n";
        assert_eq!(
            parse_distribution_time(out),
            Some(Duration::from_millis(4210))
        );
        assert_eq!(
            parse_distribution_time("NOT every copy is verified\n"),
            None
        );
        assert_eq!(
            parse_distribution_time("all 5 copies identical; distribution took xs"),
            None
        );
    }

    #[test]
    fn no_downloaders_take_no_time() {
        let u = Rate::from_mbit(20.0);
        assert_eq!(client_server_time(0, 1000, u), Some(Duration::ZERO));
        assert_eq!(
            p2p_lower_bound(10_000_000, u, &[]),
            Some(Duration::from_secs(4))
        );
    }
}
