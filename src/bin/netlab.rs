//! netlab: reproducible loss experiments in network namespaces (Linux, root).
//! Argument parsing and wiring only; the lab itself is `chunkswarm::lab`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use chunkswarm::cli::parse_size;
use chunkswarm::cli::{parse_duration, parse_fraction, parse_seconds};
use chunkswarm::lab::compare::{run_compare, CompareReport, CompareSpec, Protocol};
use chunkswarm::lab::delay_line::{DelaySpec, LossModel};
use chunkswarm::lab::nfqueue::NfQueue;
use chunkswarm::lab::topology::{cleanup, ImpairMethod, PathSpec};
use chunkswarm::lab::units::Rate;
use chunkswarm::lab::{check_environment, grid, process, swarm, LabError};

#[derive(Parser)]
#[command(
    name = "netlab",
    version,
    about = "Loss experiments on one Linux machine: namespaces joined through a router that imposes rate, delay and loss",
    long_about = "Builds network namespaces (named cs-<pid>-...), runs an experiment inside them and always removes them again, also on Ctrl-C or failure. Needs root and iproute2, iptables, ethtool, ping (and iperf3 when rudp-perf has no TCP mode). Where the kernel lacks netem, delay and loss come from netlab's own NFQUEUE delayer in the router namespace."
)]
struct Cli {
    #[command(flatten)]
    verbosity: chunkswarm::cli::Verbosity,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// rudp (each congestion controller) against TCP CUBIC and TCP BBR on one impaired path.
    Compare(CompareArgs),
    /// The comparison over loss {0,0.5,1,2,5,10,20}% × RTT {2,10,40,100} ms: CSV, SVG plot, Markdown table.
    Grid(GridArgs),
    /// Distribute one file among N peers, each on its own host with a capped upload.
    Swarm(SwarmArgs),
    /// Remove namespaces (cs-<pid>-...) left behind by netlab runs that were killed.
    Cleanup {
        /// Also remove namespaces of netlab runs that are still alive.
        #[arg(long)]
        all: bool,
    },
    /// (internal) the NFQUEUE delayer; runs inside the router namespace.
    #[command(hide = true)]
    Delayer(DelayerArgs),
}

#[derive(Args, Clone)]
struct PathArgs {
    /// Bottleneck rate in each direction (tc spelling: 100mbit, 1gbit, 800kbit).
    #[arg(long, default_value = "100mbit", value_parser = parse_rate)]
    rate: Rate,
    /// Round-trip time added by the router (half each way): 40ms, 0.1s.
    #[arg(long, default_value = "40ms", value_parser = parse_duration)]
    rtt: Duration,
    /// Packet loss in each direction: 1%, 0.5%.
    #[arg(long, default_value = "0%", value_parser = parse_fraction)]
    loss: f64,
    /// Extra one-way delay, uniform in [0, JITTER]; packets keep their order.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    jitter: Duration,
    /// Bursty loss (Gilbert-Elliott) with this mean burst length in packets, at the same
    /// average --loss. Default: uniform loss.
    #[arg(long)]
    burst: Option<f64>,
    /// Seed for the loss and jitter draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How to impose delay and loss: netem (kernel qdisc), nfqueue (our userspace delayer), auto.
    #[arg(long, default_value = "auto")]
    impair: ImpairMethod,
}

impl PathArgs {
    fn path(&self) -> Result<PathSpec, LabError> {
        let loss = match self.burst {
            Some(b) if !(b >= 1.0 && b.is_finite()) => {
                return Err(LabError::Setup(format!(
                    "--burst {b}: a mean burst length is at least 1 packet"
                )))
            }
            Some(b) => LossModel::burst(self.loss, b),
            None => LossModel::Uniform(self.loss),
        };
        Ok(PathSpec {
            rtt: self.rtt,
            jitter: self.jitter,
            loss,
            seed: self.seed,
        })
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Length of each run (seconds, or with a unit: 500ms).
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    secs: Duration,
    /// Only these rows, comma-separated (rudp-newreno, rudp-bbr, tcp-cubic, tcp-bbr);
    /// `none` only measures the path. Default: all four.
    #[arg(long, value_delimiter = ',')]
    protocols: Vec<String>,
    /// The rudp-perf program (default: next to this netlab binary).
    #[arg(long)]
    perf_bin: Option<PathBuf>,
    /// Pings sent to measure the path's RTT and loss before the runs (0: none; at most 10000).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    probes: u32,
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    path: PathArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Print one JSON object instead of the table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV (a header, then one line per protocol) instead of the table.
    #[arg(long)]
    csv: bool,
}

#[derive(Args)]
struct GridArgs {
    /// Directory for grid.csv, grid.svg and grid.md (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Bottleneck rate in each direction.
    #[arg(long, default_value = "100mbit", value_parser = parse_rate)]
    rate: Rate,
    /// Loss values, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_fraction, default_value = "0%,0.5%,1%,2%,5%,10%,20%")]
    losses: Vec<f64>,
    /// RTT values, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_duration, default_value = "2ms,10ms,40ms,100ms")]
    rtts: Vec<Duration>,
    /// Seed for the loss draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How to impose delay and loss: netem, nfqueue, auto.
    #[arg(long, default_value = "auto")]
    impair: ImpairMethod,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct SwarmArgs {
    /// Number of peers (one of them starts with the file).
    #[arg(long, default_value_t = 6)]
    peers: usize,
    /// Upload cap of every peer.
    #[arg(long, default_value = "20mbit", value_parser = parse_rate)]
    rate: Rate,
    /// Size of the file distributed (10MB, 4MiB; at least 1 byte).
    #[arg(long, default_value = "10MB", value_parser = parse_file_size)]
    size: u64,
    /// Packet loss in each direction through the router.
    #[arg(long, default_value = "0%", value_parser = parse_fraction)]
    loss: f64,
    /// Round-trip time between any two peers.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    rtt: Duration,
    /// Each peer's own --max-upload (chunk bytes per second), as a share of
    /// --rate; with rudp's and IP's headers the peer's socket then sends
    /// 3.2% more (acknowledgements included); 0% runs the peers without a
    /// cap of their own.
    #[arg(long, default_value_t = swarm::PEER_UPLOAD_SHARE, value_parser = parse_fraction)]
    peer_cap: f64,
    /// The demo program that runs the peers (default: next to this netlab binary).
    #[arg(long)]
    demo_bin: Option<PathBuf>,
    /// Give up after this long (seconds).
    #[arg(long, default_value = "300", value_parser = parse_seconds)]
    timeout: Duration,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DelayerArgs {
    #[arg(long)]
    queue: u16,
    #[arg(long, value_parser = parse_duration)]
    delay: Duration,
    #[arg(long, default_value = "0us", value_parser = parse_duration)]
    jitter: Duration,
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    #[arg(long)]
    ge_good_bad: Option<f64>,
    #[arg(long)]
    ge_bad_good: Option<f64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    s.parse::<Rate>().map_err(|e| e.to_string())
}

/// `netlab swarm --size`: a size of at least one byte.
fn parse_file_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("the file must hold at least one byte".into()),
        n => Ok(n),
    }
}

/// A program that sits next to this executable, or `explicit` (`flag`
/// names it), which must exist: checked before any namespace is built.
fn sibling(explicit: Option<PathBuf>, flag: &str, name: &str) -> Result<PathBuf, LabError> {
    match explicit {
        Some(path) if !path.is_file() => Err(LabError::Setup(format!(
            "{flag} {}: no such program; give the path of the {name} binary",
            path.display()
        ))),
        Some(path) => Ok(path),
        None => Ok(std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join(name)))
            .unwrap_or_else(|| PathBuf::from(name))),
    }
}

fn protocols(names: &[String]) -> Result<Vec<Protocol>, LabError> {
    let all = Protocol::all();
    if names.is_empty() {
        return Ok(all);
    }
    if names == ["none"] {
        return Ok(Vec::new());
    }
    names
        .iter()
        .map(|n| {
            all.iter().find(|p| p.name() == *n).cloned().ok_or_else(|| {
                LabError::Setup(format!(
                    "unknown protocol {n:?} (rudp-newreno, rudp-bbr, tcp-cubic, tcp-bbr)"
                ))
            })
        })
        .collect()
}

fn self_exe() -> Result<PathBuf, LabError> {
    std::env::current_exe().map_err(|err| LabError::Io {
        what: "finding the netlab executable",
        err,
    })
}

fn compare(args: CompareArgs) -> Result<(), LabError> {
    let perf_bin = sibling(args.run.perf_bin, "--perf-bin", "rudp-perf")?;
    check_environment()?;
    process::install_interrupt_handlers()?;
    let spec = CompareSpec {
        rate: args.path.rate,
        path: args.path.path()?,
        duration: args.run.secs,
        method: args.path.impair,
        protocols: protocols(&args.run.protocols)?,
        perf_bin,
        delayer_program: self_exe()?,
        probes: args.run.probes,
    };
    let report = run_compare(&spec)?;
    let text = if args.json {
        format!("{}\n", report.to_json())
    } else if args.csv {
        format!(
            "{}\n{}\n",
            CompareReport::CSV_HEADER,
            report.csv_rows().join("\n")
        )
    } else {
        report.to_table()
    };
    print!("{text}");
    Ok(())
}

fn run_grid(args: GridArgs) -> Result<(), LabError> {
    let perf_bin = sibling(args.run.perf_bin, "--perf-bin", "rudp-perf")?;
    std::fs::create_dir_all(&args.out).map_err(|e| {
        LabError::Setup(format!(
            "cannot create --out {}: {e}; give a writable directory",
            args.out.display()
        ))
    })?;
    check_environment()?;
    process::install_interrupt_handlers()?;
    let spec = grid::GridSpec {
        rate: args.rate,
        losses: args.losses,
        rtts: args.rtts,
        seed: args.seed,
        method: args.impair,
        duration: args.run.secs,
        protocols: protocols(&args.run.protocols)?,
        perf_bin,
        delayer_program: self_exe()?,
        probes: args.run.probes.min(200),
    };
    let files = grid::run_grid(&spec, &args.out)?;
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

fn run_swarm(args: SwarmArgs) -> Result<(), LabError> {
    let demo_bin = sibling(args.demo_bin, "--demo-bin", "demo")?;
    check_environment()?;
    process::install_interrupt_handlers()?;
    let spec = swarm::SwarmSpec {
        peers: args.peers,
        upload: args.rate,
        file_size: args.size,
        path: PathSpec {
            rtt: args.rtt,
            jitter: Duration::ZERO,
            loss: LossModel::Uniform(args.loss),
            seed: 1,
        },
        demo_bin,
        delayer_program: self_exe()?,
        timeout: args.timeout,
        peer_upload_share: (args.peer_cap > 0.0).then_some(args.peer_cap),
    };
    let report = swarm::run_swarm(&spec)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

fn delayer(args: DelayerArgs) -> Result<(), LabError> {
    let loss = match (args.ge_good_bad, args.ge_bad_good) {
        (Some(p_good_bad), Some(p_bad_good)) => LossModel::Burst {
            p_good_bad,
            p_bad_good,
        },
        _ => LossModel::Uniform(args.loss),
    };
    let spec = DelaySpec {
        delay: args.delay,
        jitter: args.jitter,
        loss,
        seed: args.seed,
    };
    process::install_interrupt_handlers()?;
    let mut queue = NfQueue::bind(args.queue).map_err(|e| LabError::Setup(e.to_string()))?;
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "ready");
    let _ = stdout.flush();
    let report = queue
        .run(spec, &process::interrupt())
        .map_err(|e| LabError::Setup(e.to_string()))?;
    let _ = writeln!(stdout, "{}", report.to_json());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logging();
    let result = match cli.command {
        Cmd::Compare(a) => compare(a),
        Cmd::Grid(a) => run_grid(a),
        Cmd::Swarm(a) => run_swarm(a),
        Cmd::Cleanup { all } => check_environment()
            .and_then(|()| cleanup(all))
            .map(|removed| {
                for r in &removed {
                    println!("removed {r}");
                }
                if removed.is_empty() {
                    println!("nothing to clean up");
                }
            }),
        Cmd::Delayer(a) => delayer(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
