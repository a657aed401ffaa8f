//! `demo`: the class-project demo in one command. Starts one tracker and N
//! peers as separate processes on loopback, has every peer register a file,
//! N-1 peers join the owner's group, and the owner upload; then checks that
//! every copy is identical.

use chunkswarm::cli::{parse_fraction, parse_rate, parse_size};
use chunkswarm::demo::{self, DemoOptions};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "demo",
    about = "One tracker and N peers on loopback distribute one file; exits 0 only if every copy is verified",
    after_help = "Example: cargo run --release --bin demo -- --peers 6 --size 4MB --loss 5%"
)]
struct Args {
    /// Peers in all, the owner included: 2 to 64 (the class project uses 6).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(2..=64))]
    peers: u16,
    /// Size of the generated file, e.g. 4MB, 10MiB (0 to 4GiB; every peer keeps a copy on this disk).
    #[arg(long, default_value = "4MB", value_parser = parse_demo_size)]
    size: u64,
    /// Distribute this file (e.g. a video of at least 2 MB) instead of a generated one.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Drop this share of every peer's outgoing rudp datagrams (rudp's own impairment), e.g. 5%
    /// (a bare number is a percentage too: 5 means 5%); below 100%. Default: no loss.
    #[arg(long, value_name = "PCT", value_parser = parse_loss_percent)]
    loss: Option<f64>,
    /// Cap every peer's upload rate, e.g. 20mbit or 2MB/s. Default: no cap.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_upload: Option<u64>,
    /// Keep the peers' directories (printed at the end).
    #[arg(long)]
    keep: bool,
    /// Give up if the distribution has not completed after this many seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Do not echo the peers' output; print only the final table.
    #[arg(long, short)]
    quiet: bool,
    /// Directory with the tracker and peer executables (default: next to this one).
    #[arg(long, hide = true)]
    bin_dir: Option<PathBuf>,
    /// Working directory (default: a fresh one under the system's temp dir).
    #[arg(long, hide = true)]
    work_dir: Option<PathBuf>,
    /// Command prefix for peer i, `{i}` replaced (used by netlab swarm).
    #[arg(long, hide = true)]
    peer_wrap: Option<String>,
    /// Address peer i binds, `{i}` replaced.
    #[arg(long, hide = true, default_value = "127.0.0.1")]
    peer_addr: String,
    /// Address the tracker binds.
    #[arg(long, hide = true, default_value = "127.0.0.1")]
    tracker_addr: String,
    /// Extra argument passed to every peer (repeatable).
    #[arg(long = "peer-arg", hide = true, allow_hyphen_values = true)]
    peer_args: Vec<String>,
}

/// The largest generated file: six copies of it land on this disk.
const MAX_DEMO_SIZE: u64 = 4 << 30;

/// `--size`: a size of at most [`MAX_DEMO_SIZE`].
fn parse_demo_size(s: &str) -> Result<u64, String> {
    let size = parse_size(s)?;
    if size > MAX_DEMO_SIZE {
        return Err(format!(
            "{s} is too large for the demo (at most 4GiB: every peer keeps a copy on this disk)"
        ));
    }
    Ok(size)
}

/// `--loss`: `5%`, or `5` meaning 5% (the flag is a percentage); below 100%.
/// Returns the fraction the peers' `--loss` takes.
fn parse_loss_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let with_percent = if t.ends_with('%') {
        t.to_string()
    } else {
        format!("{t}%")
    };
    let loss = parse_fraction(&with_percent).map_err(|_| {
        format!("'{s}' is not a loss percentage (e.g. 5% or 5, from 0 to below 100)")
    })?;
    if loss >= 1.0 {
        return Err(format!(
            "a loss of {s} drops every datagram, so nothing would arrive; give less than 100%"
        ));
    }
    Ok(loss)
}

/// Under `cargo run`, builds the sibling `tracker` and `peer` binaries with
/// the same profile first, so that the demo never runs stale ones.
fn build_siblings(exe_dir: &std::path::Path) {
    let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) else {
        return;
    };
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--bin",
        "tracker",
        "--bin",
        "peer",
        "--manifest-path",
    ])
    .arg(PathBuf::from(manifest_dir).join("Cargo.toml"));
    if exe_dir.ends_with("release") {
        cmd.arg("--release");
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("error: demo: building the tracker and peer binaries failed ({s})");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("warning: could not run cargo to build the peers ({e}); using what is built")
        }
    }
}

fn main() {
    let args = Args::parse();
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        let dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            .unwrap_or_else(|| PathBuf::from("."));
        build_siblings(&dir);
        dir
    });
    let mut peer_args = args.peer_args.clone();
    if let Some(loss) = args.loss {
        peer_args.extend(["--loss".into(), loss.to_string()]);
    }
    if let Some(rate) = args.max_upload {
        peer_args.extend(["--max-upload".into(), format!("{rate}B/s")]);
    }
    let opts = DemoOptions {
        peers: args.peers as usize,
        size: args.size,
        file: args.file.clone(),
        peer_args,
        keep: args.keep,
        timeout: Duration::from_secs(args.timeout),
        bin_dir,
        work_dir: args.work_dir.clone(),
        peer_wrap: args.peer_wrap.clone(),
        peer_addr: args.peer_addr.clone(),
        tracker_addr: args.tracker_addr.clone(),
        echo: !args.quiet,
        seed: 1,
    };
    let result = demo::run(&opts);
    let kept = || {
        if opts.keep {
            let dir = demo::work_dir(&opts);
            println!("kept the peers' directories under {}", dir.display());
        }
    };
    match result {
        Ok(report) => {
            println!();
            print!("{}", report.table());
            if let Some(rate) = args.max_upload {
                print_bounds(&report, rate);
            }
            kept();
            std::process::exit(if report.all_verified() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("error: demo: {e}");
            kept();
            std::process::exit(1);
        }
    }
}

/// With every upload capped at `rate` bytes/s: the distribution time beside
/// the P2P lower bound max(F/u_s, N·F/(u_s + Σu_i)) and the client-server
/// time N·F/u_s.
fn print_bounds(report: &demo::DemoReport, rate: u64) {
    use chunkswarm::lab::{swarm, units::Rate};
    let u = Rate::from_bits_per_sec(rate.saturating_mul(8));
    let n = report.clients.len();
    let (Some(bound), Some(cs)) = (
        swarm::p2p_lower_bound(report.size, u, &vec![u; n]),
        swarm::client_server_time(n, report.size, u),
    ) else {
        return;
    };
    let measured = match report.distribution_time {
        Some(d) if report.all_verified() => format!(
            "{:.2}s = {:.2} x the P2P lower bound",
            d.as_secs_f64(),
            d.as_secs_f64() / bound.as_secs_f64().max(1e-9)
        ),
        _ => "incomplete".to_string(),
    };
    println!(
        "every upload capped at {}: P2P lower bound max(F/u_s, N·F/(u_s+Σu_i)) {:.2}s, client-server N·F/u_s {:.2}s; measured {measured}",
        chunkswarm::peer::progress::rate(rate, std::time::Duration::from_secs(1)),
        bound.as_secs_f64(),
        cs.as_secs_f64(),
    );
}
