//! `rudp-perf`: measures rudp goodput between two hosts, in the spirit of
//! iperf3. The server verifies every 100 KiB message it receives and reports
//! back; `--tcp` runs the same transfer over TCP, `--raw-udp` blasts
//! unreliable datagrams of the same size as the baseline.

use chunkswarm::cli::{parse_seconds, parse_size};
use chunkswarm::rudp::driver::perf::{
    self, Amount, ClientOptions, Mode, Server, ServerOptions, DEFAULT_PORT,
};
use chunkswarm::rudp::driver::TransportArgs;
use clap::{Parser, Subcommand};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "rudp-perf",
    about = "Measure rudp goodput (bytes the receiving application verified per second)",
    after_help = "Example:\n  rudp-perf server &\n  rudp-perf client 127.0.0.1:7000 --time 5 --json\n  rudp-perf client 127.0.0.1:7000 --tcp --tcp-cc bbr"
)]
struct Cli {
    #[command(flatten)]
    verbosity: chunkswarm::cli::Verbosity,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Accept clients (rudp on UDP, TCP on the same port) and verify what they send.
    Server(ServerArgs),
    /// Send 100 KiB messages to a server and report the goodput it verified.
    Client(ClientArgs),
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// UDP and TCP port to listen on (0: any free port).
    #[arg(long, short, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Exit after the first client.
    #[arg(long, short = '1')]
    one_off: bool,
    #[command(flatten)]
    transport: TransportArgs,
}

#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// The server, HOST:PORT (port 7000 if left out).
    server: String,
    /// Send for this many seconds (or a duration with a unit, e.g. 500ms; at most a day).
    #[arg(
        long,
        short,
        value_name = "SECS",
        default_value = "10",
        value_parser = parse_seconds,
        conflicts_with = "bytes"
    )]
    time: Duration,
    /// Send this many bytes instead of --time (e.g. 100MB), rounded up to whole 100 KiB messages.
    #[arg(long, short = 'n', value_name = "SIZE", value_parser = parse_bytes)]
    bytes: Option<u64>,
    /// Run the same transfer over TCP instead of rudp.
    #[arg(long, conflicts_with = "raw_udp")]
    tcp: bool,
    /// TCP congestion control for --tcp (TCP_CONGESTION, e.g. cubic, bbr). Default: the
    /// kernel's (sysctl net.ipv4.tcp_congestion_control).
    #[arg(long, value_name = "NAME", requires = "tcp")]
    tcp_cc: Option<String>,
    /// Blast datagrams of --mtu bytes without reliability or congestion
    /// control (the baseline; what arrives is counted, not retransmitted;
    /// the impairment flags do not apply).
    #[arg(long)]
    raw_udp: bool,
    /// Print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    transport: TransportArgs,
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

/// `--bytes`: a size, not zero.
fn parse_bytes(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err("send at least one byte".into()),
        n => Ok(n),
    }
}

fn resolve(server: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let found = match server.to_socket_addrs() {
        Ok(mut addrs) => addrs.next(),
        // No port given: a bare host name.
        Err(_) => (server, DEFAULT_PORT)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve '{server}': {e}"))?
            .next(),
    };
    found.ok_or_else(|| format!("'{server}' has no address"))
}

fn run_server(args: ServerArgs) -> Result<(), String> {
    args.transport.impair.validate()?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }
    let mut server = Server::bind(ServerOptions {
        bind: SocketAddr::new(args.bind, args.port),
        config: args.transport.endpoint_config(),
        driver: args.transport.driver_options(),
        one_off: args.one_off,
        seed: seed(),
    })
    .map_err(|e| e.to_string())?;
    println!("listening on {}", server.local_addr());
    server
        .serve(&stop, &mut |summary| println!("{summary}"))
        .map_err(|e| e.to_string())
}

fn run_client(args: ClientArgs) -> Result<(), String> {
    args.transport.impair.validate()?;
    let server = resolve(&args.server)?;
    let mode = if args.tcp {
        Mode::Tcp
    } else if args.raw_udp {
        Mode::RawUdp
    } else {
        Mode::Rudp
    };
    let amount = match args.bytes {
        Some(b) => Amount::Bytes(b),
        None => Amount::Time(args.time),
    };
    let opts = ClientOptions {
        server,
        mode,
        amount,
        config: args.transport.endpoint_config(),
        driver: args.transport.driver_options(),
        tcp_cc: args.tcp_cc.clone(),
        seed: seed(),
    };
    println!(
        "{} client to {server}: mtu {}, cc {}",
        mode.name(),
        opts.config.max_udp_payload,
        match mode {
            Mode::Tcp => args.tcp_cc.as_deref().unwrap_or("default"),
            Mode::RawUdp => "none",
            Mode::Rudp => opts.config.cc.name(),
        }
    );
    let report = perf::run_client(&opts, &mut |iv| println!("{iv}"))
        .map_err(|e| format!("{e}; is `rudp-perf server` (still) running at {server}?"))?;
    println!("{report}");
    if args.json {
        println!("{}", report.to_json());
    }
    if report.bad_messages > 0 {
        return Err(format!(
            "the server found {} corrupted messages",
            report.bad_messages
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init_logging();
    let result = match cli.command {
        Command::Server(a) => run_server(a),
        Command::Client(a) => run_client(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
