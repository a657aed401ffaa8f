//! `tracker`: the chunkswarm tracker. Keeps the online peers, the shared files
//! and their downloading groups, and tells every group member about the others.

use chunkswarm::tracker::server::{raise_fd_limit, Server, ServerConfig};
use clap::Parser;
use log::warn;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "The chunkswarm tracker: who is online, who shares what, who wants it."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// TCP port to listen on; 0 picks a free one (the first line printed tells which).
    #[arg(default_value_t = 5150)]
    port: u16,
    /// The same as the PORT argument, for those who type `--port` as with rudp-perf.
    #[arg(long = "port", value_name = "PORT", conflicts_with = "port")]
    port_flag: Option<u16>,
    /// Heartbeat interval in milliseconds: the tracker sends one to every peer
    /// this often, and drops a peer it has not heard from for 2.5 intervals.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    heartbeat_ms: u64,
    /// Most peer sessions at once; a peer beyond it is told so and turned away.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_sessions: u64,
    #[command(flatten)]
    verbosity: chunkswarm::cli::Verbosity,
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.verbosity.init_logging();
    if let Err(e) = raise_fd_limit() {
        warn!("cannot raise the open-file limit: {e}");
    }
    let addr = SocketAddr::new(args.bind, args.port_flag.unwrap_or(args.port));
    let config = ServerConfig {
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        max_sessions: usize::try_from(args.max_sessions).unwrap_or(usize::MAX),
    };
    let mut server = match Server::bind(addr, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {addr}: {e}; pick another port or stop what uses it"
            );
            return ExitCode::FAILURE;
        }
    };
    let bound = server.local_addr().unwrap_or(addr);
    println!("tracker listening on {bound}");
    let _ = std::io::stdout().flush();
    let stop = server.stop_handle();
    match Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if signals.forever().next().is_some() {
                    stop.stop();
                }
            });
        }
        Err(e) => warn!("cannot catch SIGINT/SIGTERM: {e}"),
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: tracker event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
