//! `peer`: a chunkswarm peer. Connects to the tracker, then takes console
//! commands (register-peer, list, register-group, upload, status, help, quit)
//! from a prompt or, when stdin is not a terminal, one per line.

use chunkswarm::cli::parse_rate;
use chunkswarm::peer::node::NodeConfig;
use chunkswarm::peer::process::{
    connect_tracker, spawn_console, spawn_signal_listener, PeerConfig, PeerLoop,
};
use chunkswarm::peer::swarm::SwarmConfig;
use chunkswarm::rudp::driver::{Driver, TransportArgs};
use clap::Parser;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "A chunkswarm peer: share files and download them from a swarm."
)]
struct Args {
    /// Directory of the files this peer shares and where downloads are written.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Local IP address for the rudp (UDP) socket. Default: every address
    /// of the tracker's family (0.0.0.0, or :: for an IPv6 tracker).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// UDP port for rudp traffic; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// IP address other peers should use to reach this one (default: the
    /// source address the tracker sees).
    #[arg(long)]
    advertise: Option<IpAddr>,
    /// Heartbeat interval in milliseconds (the peer sends them at least as
    /// often as the tracker asks).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    heartbeat_ms: u64,
    /// Cap this peer's upload rate (chunks to all peers together; each
    /// connection is also paced at most at this rate, and the UDP socket as
    /// a whole at it plus rudp's and IP's headers, 3%, acknowledgements and
    /// control messages included), as a size per second (`2MB/s`) or in
    /// bits (`20mbit`). Default: no cap.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_upload: Option<u64>,
    /// Do not print a line per chunk received (the summary is still printed).
    #[arg(long)]
    quiet_chunks: bool,
    /// Never draw progress bars (they are drawn only when stdout is a
    /// terminal: under the chunk lines, or above the console's prompt).
    #[arg(long)]
    no_progress: bool,
    /// Test only: serve every chunk with a byte flipped (peers must detect it).
    #[arg(long, hide = true)]
    corrupt_served_chunks: bool,
    #[command(flatten)]
    transport: TransportArgs,
    #[command(flatten)]
    verbosity: chunkswarm::cli::Verbosity,
    /// Host name or IP address of the tracker.
    tracker_host: String,
    /// TCP port of the tracker.
    tracker_port: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.verbosity.init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    match std::fs::metadata(&args.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "{} is not a directory; give --dir a directory",
                args.dir.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "cannot use --dir {}: {e}; create it first",
                args.dir.display()
            ))
        }
    }
    args.transport.impair.validate()?;
    let (stream, tracker) = connect_tracker(
        &args.tracker_host,
        args.tracker_port,
        Duration::from_secs(5),
    )?;
    // Others reach us at the address the tracker sees, so listen in its family.
    let bind = args.bind.unwrap_or(match tracker {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    let udp_addr = SocketAddr::new(bind, args.port);
    let driver = Driver::bind(udp_addr, args.transport.driver_options())
        .map_err(|e| format!("{e}; pick another --port or --bind"))?;
    let config = PeerConfig {
        dir: args.dir,
        tracker_name: tracker.to_string(),
        tracker_addr: tracker,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        advertise: args.advertise,
        rudp: chunkswarm::rudp::Config {
            max_send_rate: args.max_upload,
            ..args.transport.endpoint_config()
        },
        node: NodeConfig {
            max_upload_rate: args.max_upload,
            ..NodeConfig::default()
        },
        swarm: SwarmConfig {
            corrupt_uploads: args.corrupt_served_chunks,
            ..SwarmConfig::default()
        },
        quiet_chunks: args.quiet_chunks,
        progress_bars: !args.no_progress,
        seed: seed(),
    };
    let mut peer =
        PeerLoop::new(stream, driver, config).map_err(|e| format!("cannot start the peer: {e}"))?;
    spawn_signal_listener(peer.console_sender())
        .map_err(|e| format!("cannot catch signals: {e}"))?;
    spawn_console(peer.console_sender()).map_err(|e| format!("cannot start the console: {e}"))?;
    peer.run().map_err(|e| e.to_string())
}

/// A different seed per run (the swarm's and rudp's random choices).
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
