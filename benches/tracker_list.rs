//! One tracker holding 2,000 concurrent peer sessions: how long does `list`
//! take while they are connected?
//!
//! The tracker runs in this process on its own thread (its mio loop, as in
//! the `tracker` binary). A driver thread holds 2,000 sessions in one mio
//! loop: 100 owners share a file each, the other 1,900 join one of those
//! groups (so every join is pushed to the group), and every session sends
//! heartbeats and asks `list` every 2 s, staggered. A probe session then
//! sends `list` requests one after another and times each answer.
//!
//!     cargo bench --bench tracker_list
//!
//! Environment: SESSIONS (default 2000), PROBES (default 2000).

use chunkswarm::manifest::{Manifest, CHUNK_SIZE};
use chunkswarm::peer::tracker_client::{TrackerClient, TrackerEvent};
use chunkswarm::tracker::server::{raise_fd_limit, Server, ServerConfig};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OWNERS: usize = 100;
const HEARTBEAT: Duration = Duration::from_secs(2);
const BACKGROUND_LIST_EVERY: Duration = Duration::from_secs(2);
/// The target.
const TARGET_P99: Duration = Duration::from_millis(50);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn manifest(i: usize) -> Manifest {
    let size = 25 * CHUNK_SIZE as u64 - 1234;
    Manifest {
        name: format!("video-{i:03}.mp4"),
        size,
        chunk_size: CHUNK_SIZE,
        chunk_hashes: (0..25).map(|c| [(i ^ c) as u8; 32]).collect(),
        file_hash: [i as u8; 32],
    }
}

struct Session {
    stream: TcpStream,
    client: TrackerClient,
    next_list: Instant,
}

/// Writes what a session has queued, as far as the socket takes it.
fn flush(s: &mut Session) -> io::Result<()> {
    loop {
        let out = s.client.output();
        if out.is_empty() {
            return Ok(());
        }
        match s.stream.write(out) {
            Ok(n) => s.client.consume_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Reads what a session received; counts the events of interest.
fn read(s: &mut Session, buf: &mut [u8], counts: &mut Counts) -> io::Result<()> {
    loop {
        match s.stream.read(buf) {
            Ok(0) => return Err(io::Error::other("tracker closed a session")),
            Ok(n) => {
                s.client
                    .handle_bytes(Instant::now(), &buf[..n])
                    .map_err(io::Error::other)?;
                while let Some(ev) = s.client.poll_event() {
                    match ev {
                        TrackerEvent::Registered { .. } => counts.registered += 1,
                        TrackerEvent::Group { req: Some(_), .. } => counts.joined += 1,
                        TrackerEvent::Group { req: None, .. } => counts.pushes += 1,
                        TrackerEvent::Files { .. } => counts.lists += 1,
                        TrackerEvent::Refused { message, .. } => {
                            return Err(io::Error::other(format!("refused: {message}")))
                        }
                        _ => {}
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[derive(Default, Debug)]
struct Counts {
    registered: usize,
    joined: usize,
    pushes: usize,
    lists: usize,
}

/// Holds `n` sessions until `stop`; `ready` is set once all have registered
/// or joined. Returns the counts.
fn drive_sessions(
    tracker: SocketAddr,
    n: usize,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> io::Result<Counts> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut sessions: Vec<Session> = Vec::with_capacity(n);
    let mut counts = Counts::default();
    let mut buf = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let connect = |i: usize, poll: &mut Poll| -> io::Result<Session> {
        let std_stream = std::net::TcpStream::connect(tracker)?;
        std_stream.set_nonblocking(true)?;
        std_stream.set_nodelay(true)?;
        let mut stream = TcpStream::from_std(std_stream);
        poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let now = Instant::now();
        let mut client = TrackerClient::new(now, 10_000 + i as u16, None, HEARTBEAT / 2);
        if i < OWNERS {
            client.register_file(manifest(i));
        } else {
            client.join_group(&manifest(i % OWNERS).name);
        }
        // Stagger the background lists over the period.
        let offset = BACKGROUND_LIST_EVERY.mul_f64(i as f64 / n as f64);
        Ok(Session {
            stream,
            client,
            next_list: now + BACKGROUND_LIST_EVERY + offset,
        })
    };
    let mut step = |sessions: &mut Vec<Session>, counts: &mut Counts, poll: &mut Poll| {
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        for ev in events.iter() {
            if let Some(s) = sessions.get_mut(ev.token().0) {
                read(s, &mut buf, counts)?;
            }
        }
        let now = Instant::now();
        for s in sessions.iter_mut() {
            s.client.handle_timeout(now).map_err(io::Error::other)?;
            if ready.load(Ordering::Relaxed) && now >= s.next_list {
                s.client.list();
                s.next_list = now + BACKGROUND_LIST_EVERY;
            }
            flush(s)?;
        }
        Ok::<(), io::Error>(())
    };
    // Owners first, so that every join finds its file.
    for i in 0..OWNERS.min(n) {
        sessions.push(connect(i, &mut poll)?);
    }
    while counts.registered < OWNERS.min(n) {
        step(&mut sessions, &mut counts, &mut poll)?;
    }
    for i in OWNERS..n {
        sessions.push(connect(i, &mut poll)?);
        if i % 100 == 0 {
            step(&mut sessions, &mut counts, &mut poll)?;
        }
    }
    while counts.joined < n.saturating_sub(OWNERS) {
        step(&mut sessions, &mut counts, &mut poll)?;
    }
    eprintln!(
        "{n} sessions up in {:.1} s ({} owners, {} members)",
        start.elapsed().as_secs_f64(),
        counts.registered,
        counts.joined
    );
    ready.store(true, Ordering::SeqCst);
    while !stop.load(Ordering::SeqCst) {
        step(&mut sessions, &mut counts, &mut poll)?;
    }
    Ok(counts)
}

/// A blocking session that times `probes` list requests.
fn probe(tracker: SocketAddr, probes: usize) -> io::Result<(Vec<Duration>, usize, u32)> {
    let mut stream = std::net::TcpStream::connect(tracker)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut client = TrackerClient::new(Instant::now(), 9_999, None, HEARTBEAT / 2);
    let mut buf = vec![0u8; 256 * 1024];
    let mut latencies = Vec::with_capacity(probes);
    let (mut files, mut members) = (0, 0);
    for _ in 0..probes {
        client
            .handle_timeout(Instant::now())
            .map_err(io::Error::other)?;
        let req = client.list();
        let sent = Instant::now();
        stream.write_all(client.output())?;
        client.consume_output(client.output().len());
        'answer: loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::other("tracker closed the probe"));
            }
            client
                .handle_bytes(Instant::now(), &buf[..n])
                .map_err(io::Error::other)?;
            while let Some(ev) = client.poll_event() {
                if let TrackerEvent::Files { req: r, files: f } = ev {
                    if r == req {
                        latencies.push(sent.elapsed());
                        files = f.len();
                        members = f.iter().map(|e| e.group_size).sum();
                        break 'answer;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok((latencies, files, members))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then run small.
    let benching = std::env::args().any(|a| a == "--bench");
    let n = env_usize("SESSIONS", if benching { 2000 } else { 200 });
    let probes = env_usize("PROBES", if benching { 2000 } else { 100 });
    match raise_fd_limit() {
        Ok(limit) if (limit as usize) < 2 * n + 64 => {
            eprintln!(
                "error: open-file limit {limit} is too low for {n} sessions; raise ulimit -n"
            );
            std::process::exit(1);
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
    let config = ServerConfig {
        heartbeat: HEARTBEAT,
        ..ServerConfig::default()
    };
    let mut server = match Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot start the tracker: {e}");
            std::process::exit(1);
        }
    };
    let addr = server.local_addr().expect("bound address");
    let stop_server = server.stop_handle();
    let tracker = std::thread::spawn(move || server.run());

    let ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let (ready, stop) = (ready.clone(), stop.clone());
        std::thread::spawn(move || drive_sessions(addr, n, ready, stop))
    };
    while !ready.load(Ordering::SeqCst) {
        if driver.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = if ready.load(Ordering::SeqCst) {
        // Let the background lists start before measuring.
        std::thread::sleep(BACKGROUND_LIST_EVERY);
        probe(addr, probes)
    } else {
        Err(io::Error::other("the sessions never came up"))
    };
    stop.store(true, Ordering::SeqCst);
    let counts = driver.join().expect("driver thread");
    stop_server.stop();
    let _ = tracker.join();

    let counts = match counts {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: session driver failed: {e}");
            std::process::exit(1);
        }
    };
    let (mut lat, files, members) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: probe failed: {e}");
            std::process::exit(1);
        }
    };
    lat.sort();
    let p99 = percentile(&lat, 0.99);
    println!(
        "tracker_list: {n} sessions ({OWNERS} owners, {members} group members still listed), {} probe lists of {files} files",
        lat.len()
    );
    println!(
        "  list latency: p50 {}  p99 {}  max {}  (target p99 < {})",
        ms(percentile(&lat, 0.5)),
        ms(p99),
        ms(lat[lat.len() - 1]),
        ms(TARGET_P99)
    );
    println!(
        "  meanwhile: {} background lists answered, {} group pushes",
        counts.lists, counts.pushes
    );
    if members as usize != n.saturating_sub(OWNERS) {
        eprintln!("error: sessions were dropped during the run");
        std::process::exit(1);
    }
    if p99 >= TARGET_P99 {
        eprintln!("error: p99 {} misses the target", ms(p99));
        std::process::exit(1);
    }
}
