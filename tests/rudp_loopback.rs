//! rudp over real sockets on loopback: the mio driver moves 100 MB intact,
//! through its impairment too; rudp-perf works end to end as processes; junk
//! datagrams sprayed at a server do not disturb a transfer.

use chunkswarm::rudp::driver::perf::{
    self, Amount, ClientOptions, Mode, Pattern, Server, ServerOptions, Verifier, MESSAGE_SIZE,
};
use chunkswarm::rudp::driver::{self, run_endpoint, Driver, DriverOptions, Step};
use chunkswarm::rudp::impair::{ImpairConfig, ImpairCounters};
use chunkswarm::rudp::{Config, Endpoint, Event};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const LOCALHOST: &str = "127.0.0.1:0";
/// Every transfer here must finish well within this (they take seconds).
const LIMIT: Duration = Duration::from_secs(90);

/// Receives `count` perf messages on `driver`, verifying each, then answers
/// "all here" and waits for the sender to close. Returns the verifier.
fn receive_all(mut driver: Driver, count: u64) -> Verifier {
    let mut endpoint = Endpoint::new(Config::default(), 2);
    let mut verifier = Verifier::new(MESSAGE_SIZE);
    let mut answered = false;
    let result = run_endpoint(&mut driver, &mut endpoint, LIMIT, |now, ep| {
        while let Some((h, ev)) = ep.poll_event() {
            match ev {
                Event::Message(m) => {
                    verifier.check(now, &m);
                    let r = verifier.report();
                    if !answered && r.messages + r.bad + r.duplicates >= count {
                        answered = true;
                        ep.send(h, b"all here".to_vec(), true).expect("reply");
                    }
                }
                Event::Closed(_) if answered => return Step::Done(()),
                Event::Closed(e) => panic!("receiver: connection closed early: {e}"),
                Event::Connected => {}
            }
        }
        Step::Continue
    });
    result.expect("receiver finished in time");
    verifier
}

/// Sends `count` perf messages from `driver` to `to`, keeping at most 8 MiB
/// queued, waits for the receiver's answer and closes. Returns what the
/// driver's impairment did, if it had one.
fn send_all(mut driver: Driver, to: SocketAddr, count: u64) -> Option<ImpairCounters> {
    let mut endpoint = Endpoint::new(
        Config {
            accept_incoming: false,
            ..Config::default()
        },
        1,
    );
    let pattern = Pattern::new(MESSAGE_SIZE);
    let handle = endpoint.connect(driver::now(), to);
    let mut connected = false;
    let mut next = 0u64;
    let mut closing = false;
    let result = run_endpoint(&mut driver, &mut endpoint, LIMIT, |now, ep| {
        while let Some((_, ev)) = ep.poll_event() {
            match ev {
                Event::Connected => connected = true,
                Event::Message(m) => {
                    assert_eq!(m, b"all here");
                    ep.close(now, handle);
                    closing = true;
                }
                Event::Closed(_) if closing => return Step::Done(()),
                Event::Closed(e) => panic!("sender: connection closed early: {e}"),
            }
        }
        while connected && next < count && ep.send_backlog(handle) < 8 << 20 {
            ep.send(handle, pattern.message(next), false).expect("send");
            next += 1;
        }
        Step::Continue
    });
    result.expect("sender finished in time");
    driver.impair_counters().cloned()
}

/// Moves `count` messages between two drivers in two threads.
fn transfer(count: u64, sender_options: DriverOptions) -> (Verifier, Option<ImpairCounters>) {
    let rx = Driver::bind(LOCALHOST.parse().unwrap(), DriverOptions::default()).expect("bind");
    let tx = Driver::bind(LOCALHOST.parse().unwrap(), sender_options).expect("bind");
    let to = rx.local_addr();
    let receiver = thread::spawn(move || receive_all(rx, count));
    let impaired = send_all(tx, to, count);
    (receiver.join().expect("receiver thread"), impaired)
}

#[test]
fn driver_moves_100_megabytes_intact() {
    let count = 100_000_000u64.div_ceil(MESSAGE_SIZE as u64);
    let (v, impaired) = transfer(count, DriverOptions::default());
    assert_eq!(impaired, None);
    let r = v.report();
    assert_eq!(r.bad, 0);
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.messages, count);
    assert_eq!(r.bytes, count * MESSAGE_SIZE as u64);
}

#[test]
fn driver_moves_data_intact_without_batching() {
    let count = 100;
    let options = DriverOptions {
        batch: false,
        gso: false,
        ..DriverOptions::default()
    };
    let r = transfer(count, options).0.report();
    assert_eq!((r.messages, r.bad, r.duplicates), (count, 0, 0));
}

#[test]
fn driver_impairment_loses_and_mangles_but_data_arrives_intact() {
    let count = 50;
    let options = DriverOptions {
        impair: Some(ImpairConfig {
            loss: 0.05,
            duplicate: 0.02,
            corrupt: 0.01,
            reorder: 0.02,
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(1),
            seed: 7,
            ..ImpairConfig::default()
        }),
        ..DriverOptions::default()
    };
    let (v, impaired) = transfer(count, options);
    let r = v.report();
    assert_eq!((r.messages, r.bad, r.duplicates), (count, 0, 0));
    let c = impaired.expect("the sender was impaired");
    assert!(
        c.dropped > 0 && c.duplicated > 0 && c.corrupted > 0,
        "{c:?}"
    );
}

/// What the in-process perf server thread yields.
type ServerOutcome = (
    chunkswarm::rudp::endpoint::EndpointCounters,
    Vec<perf::ClientSummary>,
);

/// Runs a perf server in a thread; returns its address, its stop flag and
/// the thread, which yields the endpoint's drop counters and the summaries.
fn perf_server() -> (
    SocketAddr,
    Arc<AtomicBool>,
    thread::JoinHandle<ServerOutcome>,
) {
    let mut server = Server::bind(ServerOptions {
        bind: LOCALHOST.parse().unwrap(),
        config: Config::default(),
        driver: DriverOptions::default(),
        one_off: true,
        seed: 3,
    })
    .expect("server binds");
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = thread::spawn(move || {
        let mut summaries = Vec::new();
        server
            .serve(&flag, &mut |s| summaries.push(s.clone()))
            .expect("server runs");
        (server.endpoint_counters(), summaries)
    });
    (addr, stop, handle)
}

fn client_options(server: SocketAddr, mode: Mode, bytes: u64) -> ClientOptions {
    ClientOptions {
        server,
        mode,
        amount: Amount::Bytes(bytes),
        config: Config::default(),
        driver: DriverOptions::default(),
        tcp_cc: None,
        seed: 4,
    }
}

#[test]
fn junk_datagrams_do_not_disturb_a_transfer() {
    let (server, stop, handle) = perf_server();
    let spraying = Arc::new(AtomicBool::new(true));
    let spray_flag = Arc::clone(&spraying);
    let sprayer = thread::spawn(move || {
        let socket = UdpSocket::bind(LOCALHOST).expect("bind");
        let mut rng = chunkswarm::rng::Rng::new(99);
        let mut sent = 0u64;
        let deadline = Instant::now() + LIMIT;
        while spray_flag.load(Ordering::Relaxed) && Instant::now() < deadline && sent < 200_000 {
            let len = rng.below(1500) as usize;
            let mut junk = vec![0u8; len];
            rng.fill(&mut junk);
            let _ = socket.send_to(&junk, server);
            sent += 1;
            if sent % 64 == 0 {
                thread::sleep(Duration::from_micros(200));
            }
        }
        sent
    });
    let bytes = 30_000_000;
    let report = perf::run_client(&client_options(server, Mode::Rudp, bytes), &mut |_| {})
        .expect("transfer completes despite junk");
    spraying.store(false, Ordering::Relaxed);
    let junk_sent = sprayer.join().expect("sprayer");
    stop.store(true, Ordering::Relaxed);
    let (counters, summaries) = handle.join().expect("server thread");
    assert!(junk_sent > 0);
    assert_eq!(report.bad_messages, 0);
    assert_eq!(report.bytes, report.sent_bytes);
    assert!(report.bytes >= bytes);
    let dropped = counters.bad_crc
        + counters.malformed
        + counters.unknown_connection
        + counters.bad_version
        + counters.bad_cookie;
    assert!(dropped > 0, "the junk was not counted: {counters:?}");
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].report.bad, 0);
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The number after `"key":` in a flat JSON object.
fn json_number(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing in {json}"))
        + pat.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// Runs `rudp-perf client` with `args` and a time limit; returns its stdout.
fn perf_client(args: &[&str]) -> String {
    perf_client_within(args, LIMIT)
}

/// Like `perf_client`, with the time limit `limit`.
fn perf_client_within(args: &[&str], limit: Duration) -> String {
    let mut child = Process(
        Command::new(env!("CARGO_BIN_EXE_rudp-perf"))
            .arg("client")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("client starts"),
    );
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            let mut out = String::new();
            std::io::Read::read_to_string(child.0.stdout.as_mut().expect("stdout"), &mut out)
                .expect("read stdout");
            assert!(status.success(), "client failed: {status}; output:\n{out}");
            return out;
        }
        assert!(Instant::now() < deadline, "client did not finish in time");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `rudp-perf server` on a free loopback port; returns it and its address.
fn perf_server_process(one_off: bool) -> (Process, String, thread::JoinHandle<Vec<String>>) {
    let mut server = Process(
        Command::new(env!("CARGO_BIN_EXE_rudp-perf"))
            .args(["server", "--bind", "127.0.0.1", "--port", "0"])
            .args(if one_off { &["--one-off"][..] } else { &[][..] })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("server starts"),
    );
    let mut lines = BufReader::new(server.0.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    // The server prints a line per client; keep its pipe drained.
    let reader = thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    (server, addr, reader)
}

/// A timed run over a path so lossy that the queued data cannot all arrive
/// soon ends within `--time` plus the report grace (5 s) all the same, with
/// what the server verified so far; it used to wait up to 30 s more.
#[test]
fn rudp_perf_timed_run_over_a_bad_path_ends_in_time() {
    let (_server, addr, _reader) = perf_server_process(true);
    let args = [
        addr.as_str(),
        "--time",
        "1",
        "--cc",
        "newreno",
        "--loss",
        "40%",
        "--delay",
        "50ms",
        "--json",
    ];
    let out = perf_client_within(&args, Duration::from_secs(12));
    let json = out.lines().last().expect("output").to_string();
    let bytes = json_number(&json, "bytes");
    assert!(bytes <= json_number(&json, "sent_bytes"), "{json}");
    assert!(json.contains("\"partial\":"), "{json}");
}

#[test]
fn rudp_perf_processes_report_json() {
    let (server, addr, reader) = perf_server_process(false);

    for extra in [&[][..], &["--tcp"][..], &["--raw-udp"][..]] {
        let mut args = vec![addr.as_str(), "--bytes", "20MB", "--json"];
        args.extend_from_slice(extra);
        let out = perf_client(&args);
        let json = out.lines().last().expect("output").to_string();
        assert!(
            json.starts_with('{') && json.ends_with('}'),
            "last line is not JSON: {json}"
        );
        let bytes = json_number(&json, "bytes");
        let seconds = json_number(&json, "seconds");
        let goodput = json_number(&json, "goodput_mbps");
        assert!(seconds > 0.0);
        assert!((goodput - bytes * 8.0 / seconds / 1e6).abs() <= 0.01 * goodput + 0.01);
        for key in ["retransmitted_packets", "lost_packets", "srtt_ms"] {
            assert!(json_number(&json, key) >= 0.0);
        }
        if extra != ["--raw-udp"] {
            // Reliable modes: every byte sent was verified by the server.
            assert_eq!(bytes, json_number(&json, "sent_bytes"), "{json}");
            assert!(bytes >= 20e6);
        } else {
            assert!(bytes > 0.0);
        }
    }
    drop(server);
    let server_lines = reader.join().expect("reader");
    assert_eq!(
        server_lines
            .iter()
            .filter(|l| l.contains("verified"))
            .count(),
        3,
        "{server_lines:?}"
    );
}
