//! The class-project demo as one command: one tracker and N peer processes,
//! driven through their consoles, distributing one file; every copy is then
//! checked against the original's SHA-256.
//!
//! This module only orchestrates processes (the `demo` binary and `netlab
//! swarm` use it); it knows the console's commands and the `chunk i/n from
//! ADDR` lines, nothing of the protocols.

use crate::manifest::{hex, Digest32};
use crate::rng::Rng;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Peers in all, the owner included.
    pub peers: usize,
    /// Size of the generated file (ignored with `file`).
    pub size: u64,
    /// Distribute this file instead of a generated one.
    pub file: Option<PathBuf>,
    /// Extra arguments given to every peer (impairment, upload cap...).
    pub peer_args: Vec<String>,
    /// Keep the working directories.
    pub keep: bool,
    /// Give up after this long.
    pub timeout: Duration,
    /// Directory holding the `tracker` and `peer` executables.
    pub bin_dir: PathBuf,
    /// Working directory (a fresh temporary one when None).
    pub work_dir: Option<PathBuf>,
    /// Command prefix for peer i, `{i}` replaced by its number (e.g. `ip netns exec host{i}`).
    pub peer_wrap: Option<String>,
    /// Address peer i binds and advertises, `{i}` replaced (default 127.0.0.1).
    pub peer_addr: String,
    /// Address the tracker binds; peers connect to it.
    pub tracker_addr: String,
    /// Print every peer's output, prefixed with its name.
    pub echo: bool,
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            peers: 6,
            size: 4_000_000,
            file: None,
            peer_args: Vec::new(),
            keep: false,
            timeout: Duration::from_secs(120),
            bin_dir: PathBuf::from("."),
            work_dir: None,
            peer_wrap: None,
            peer_addr: "127.0.0.1".into(),
            tracker_addr: "127.0.0.1".into(),
            echo: true,
            seed: 1,
        }
    }
}

#[derive(Debug)]
pub enum DemoError {
    Io(String, io::Error),
    Setup(String),
    /// A process wrote an `error:` line or died where the demo needed it.
    Peer {
        name: String,
        what: String,
    },
    Timeout(String),
    /// SIGINT, SIGTERM or SIGHUP arrived: every process was stopped.
    Interrupted,
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Io(what, e) => write!(f, "{what}: {e}"),
            DemoError::Setup(what) => write!(f, "{what}"),
            DemoError::Peer { name, what } => write!(f, "{name}: {what}"),
            DemoError::Timeout(what) => write!(f, "timed out {what}"),
            DemoError::Interrupted => write!(f, "interrupted; stopped the tracker and every peer"),
        }
    }
}

impl std::error::Error for DemoError {}

/// What one downloading peer ended with.
#[derive(Debug, Clone)]
pub struct ClientResult {
    pub name: String,
    pub path: PathBuf,
    /// Time from `upload` to the verified file appearing under its name.
    pub elapsed: Option<Duration>,
    pub sha256: Option<Digest32>,
    /// Chunks received per source address, from the peer's `chunk i/n from ADDR` lines.
    pub chunks_from: BTreeMap<String, u32>,
}

impl ClientResult {
    pub fn verified(&self, expected: &Digest32) -> bool {
        self.sha256.as_ref() == Some(expected)
    }
}

#[derive(Debug, Clone)]
pub struct DemoReport {
    pub file_name: String,
    pub size: u64,
    pub sha256: Digest32,
    pub clients: Vec<ClientResult>,
    /// Time from `upload` until the last client was verified.
    pub distribution_time: Option<Duration>,
}

impl DemoReport {
    pub fn all_verified(&self) -> bool {
        self.clients.iter().all(|c| c.verified(&self.sha256))
    }

    /// The per-client table printed at the end of the demo.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "file {} ({} bytes, sha256 {})\n",
            self.file_name,
            self.size,
            hex(&self.sha256)
        ));
        out.push_str(&format!(
            "{:<8} {:>9} {:>9}  {}\n",
            "client", "time", "verified", "chunks per source (peer0 owns the file)"
        ));
        for c in &self.clients {
            let time = c
                .elapsed
                .map(|d| format!("{:.2}s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into());
            let ok = if c.verified(&self.sha256) {
                "yes"
            } else {
                "NO"
            };
            let sources: Vec<String> = c
                .chunks_from
                .iter()
                .map(|(src, n)| format!("{src}:{n}"))
                .collect();
            out.push_str(&format!(
                "{:<8} {:>9} {:>9}  {}\n",
                c.name,
                time,
                ok,
                sources.join(" ")
            ));
        }
        match self.distribution_time {
            Some(d) if self.all_verified() => out.push_str(&format!(
                "all {} copies identical; distribution took {:.2}s ({:.1} MB/s per client)\n",
                self.clients.len(),
                d.as_secs_f64(),
                self.size as f64 / 1e6 / d.as_secs_f64().max(1e-9)
            )),
            _ => out.push_str("NOT every copy is verified\n"),
        }
        out
    }
}

/// One line of output from one process.
struct Line {
    who: usize,
    text: String,
    /// When the reader thread got it (the peer printed it just before).
    at: Instant,
}

/// A child process whose stdout and stderr are read line by line on threads.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn spawn(
        name: String,
        who: usize,
        mut cmd: Command,
        tx: &Sender<Line>,
        echo: bool,
    ) -> Result<Proc, DemoError> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| DemoError::Io(format!("cannot start {name} ({cmd:?})"), e))?;
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            let prefix = name.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(text) = line else { break };
                    if echo {
                        println!("[{prefix:>7}] {text}");
                    }
                    let at = Instant::now();
                    if tx.send(Line { who, text, at }).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Proc { name, child, stdin })
    }

    fn send(&mut self, line: &str) -> Result<(), DemoError> {
        let name = self.name.clone();
        let stdin = self.stdin.as_mut().ok_or_else(|| DemoError::Peer {
            name: name.clone(),
            what: "its console is closed".into(),
        })?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| DemoError::Io(format!("writing to {name}'s console"), e))
    }

    /// Asks the process to stop: `quit` on its console (a peer), or
    /// SIGTERM (the tracker, which has no console).
    fn ask_to_stop(&mut self, console: bool) {
        if console {
            let _ = self.send("quit");
        } else if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        self.stdin = None;
    }

    /// Waits until `deadline` for the process to exit, then kills it.
    fn reap(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child gets SIGTERM when the demo dies, even by SIGKILL, so no peer
/// outlives it (Linux `PR_SET_PDEATHSIG`; it survives `ip netns exec`).
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Set by SIGINT, SIGTERM and SIGHUP; a second signal ends the demo at once.
fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone());
            let _ = signal_hook::flag::register(sig, flag.clone());
        }
        flag
    })
    .clone()
}

fn interrupted() -> Result<(), DemoError> {
    if stop_flag().load(Ordering::Relaxed) {
        Err(DemoError::Interrupted)
    } else {
        Ok(())
    }
}

/// Everything the demo started; stopped on drop, whatever happened.
struct Processes {
    procs: Vec<Proc>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        // Peers first (all at once), then the tracker (process 0).
        for p in self.procs.iter_mut().skip(1) {
            p.ask_to_stop(true);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for p in self.procs.iter_mut().skip(1) {
            p.reap(deadline);
        }
        if let Some(t) = self.procs.first_mut() {
            t.ask_to_stop(false);
            t.reap(Instant::now() + Duration::from_secs(2));
        }
    }
}

/// Parses `chunk 17/31 from 10.0.0.3:7001` (anywhere in the line).
pub fn parse_chunk_line(line: &str) -> Option<(u32, u32, String)> {
    let rest = &line[line.find("chunk ")? + 6..];
    let (frac, rest) = rest.split_once(' ')?;
    let (i, n) = frac.split_once('/')?;
    let src = rest.strip_prefix("from ")?.split_whitespace().next()?;
    Some((i.parse().ok()?, n.parse().ok()?, src.to_string()))
}

/// The address in a peer's `peer 3 online: tracker …, rudp at 127.0.0.1:7001, dir …` line.
fn parse_rudp_address(line: &str) -> Option<String> {
    if !line.contains(" online: ") {
        return None;
    }
    let rest = &line[line.find("rudp at ")? + 8..];
    Some(rest.split([',', ' ']).next()?.to_string())
}

fn expand(template: &str, i: usize) -> String {
    template.replace("{i}", &i.to_string())
}

fn file_sha256(path: &Path) -> io::Result<Digest32> {
    use sha2::{Digest, Sha256};
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

/// `size` bytes of seeded pseudo-random data, written in blocks (memory does
/// not grow with the size).
fn write_random_file(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    let mut out = io::BufWriter::new(fs::File::create(path)?);
    let mut rng = Rng::new(seed);
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        if stop_flag().load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        let n = left.min(block.len() as u64) as usize;
        rng.fill(&mut block[..n]);
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// Refuses to start when `copies` files of `size` bytes would not fit on
/// the disk holding `dir` (with 64 MiB to spare).
fn check_free_space(dir: &Path, size: u64, copies: usize) -> Result<(), DemoError> {
    let Some(free) = free_bytes(dir) else {
        return Ok(());
    };
    let need = size.saturating_mul(copies as u64).saturating_add(64 << 20);
    if need > free {
        return Err(DemoError::Setup(format!(
            "{copies} copies of {size} bytes need {} MB but {} has only {} MB free; use a smaller --size or file",
            need / 1_000_000,
            dir.display(),
            free / 1_000_000
        )));
    }
    Ok(())
}

/// Free bytes for an unprivileged user on the disk holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) writes into the zeroed struct we own; `path` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Waits for a line from process `who` for which `pick` returns Some; an
/// `error:` line from it fails, and so does the deadline. Lines of others are
/// handed to `other`.
fn wait_for<T>(
    rx: &Receiver<Line>,
    who: usize,
    name: &str,
    what: &str,
    deadline: Instant,
    mut pick: impl FnMut(&str) -> Option<T>,
    other: &mut impl FnMut(&Line),
) -> Result<T, DemoError> {
    loop {
        interrupted()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DemoError::Timeout(format!("waiting for {name} to {what}")));
        }
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) => {
                other(&line);
                if line.who != who {
                    continue;
                }
                if line.text.trim_start().starts_with("error:") {
                    return Err(DemoError::Peer {
                        name: name.to_string(),
                        what: format!("{what} failed: {}", line.text.trim()),
                    });
                }
                if let Some(v) = pick(&line.text) {
                    return Ok(v);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(DemoError::Peer {
                    name: name.to_string(),
                    what: "every process's output closed".into(),
                })
            }
        }
    }
}

/// Runs the demo; the report says whether every copy was verified.
pub fn run(opts: &DemoOptions) -> Result<DemoReport, DemoError> {
    if opts.peers < 2 {
        return Err(DemoError::Setup(
            "the demo needs at least 2 peers (an owner and a client)".into(),
        ));
    }
    let tracker_bin = opts.bin_dir.join("tracker");
    let peer_bin = opts.bin_dir.join("peer");
    for bin in [&tracker_bin, &peer_bin] {
        if !bin.is_file() {
            return Err(DemoError::Setup(format!(
                "{} not found: build it first (cargo build --release --bins)",
                bin.display()
            )));
        }
    }
    let work = work_dir(opts);
    stop_flag();
    if work.exists() {
        fs::remove_dir_all(&work)
            .map_err(|e| DemoError::Io(format!("clearing {}", work.display()), e))?;
    }
    let result = run_in(opts, &work, &tracker_bin, &peer_bin);
    if !opts.keep {
        let _ = fs::remove_dir_all(&work);
    }
    result
}

/// Where the peers' directories go (kept there with `--keep`).
pub fn work_dir(opts: &DemoOptions) -> PathBuf {
    match &opts.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("chunkswarm-demo-{}", std::process::id())),
    }
}

fn run_in(
    opts: &DemoOptions,
    work: &Path,
    tracker_bin: &Path,
    peer_bin: &Path,
) -> Result<DemoReport, DemoError> {
    let io_err = |what: String| move |e| DemoError::Io(what, e);
    let dirs: Vec<PathBuf> = (0..opts.peers)
        .map(|i| work.join(format!("peer{i}")))
        .collect();
    for d in &dirs {
        fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
    }

    // The file to distribute, in the owner's directory; one small file of its own for every other peer.
    let file_name = match &opts.file {
        Some(p) => {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    DemoError::Setup(format!("{} has no usable file name", p.display()))
                })?
                .to_string();
            fs::copy(p, dirs[0].join(&name)).map_err(io_err(format!("copying {}", p.display())))?;
            name
        }
        None => {
            check_free_space(work, opts.size, opts.peers)?;
            write_random_file(&dirs[0].join("video.bin"), opts.size, opts.seed)
                .map_err(io_err("writing the demo file".into()))?;
            "video.bin".to_string()
        }
    };
    let original = dirs[0].join(&file_name);
    let size = fs::metadata(&original)
        .map_err(io_err(format!("reading {}", original.display())))?
        .len();
    if opts.file.is_some() {
        check_free_space(work, size.saturating_mul(opts.peers as u64 - 1), 1)?;
    }
    let sha = file_sha256(&original).map_err(io_err(format!("hashing {}", original.display())))?;
    let mut own_files = vec![file_name.clone()];
    for (i, d) in dirs.iter().enumerate().skip(1) {
        let name = format!("notes-{i}.txt");
        let text = format!("peer{i}'s own shared file\n").repeat(1000 + 100 * i);
        fs::write(d.join(&name), text).map_err(io_err(format!("writing {name}")))?;
        own_files.push(name);
    }

    let (tx, rx) = mpsc::channel::<Line>();
    let mut procs = Processes { procs: Vec::new() };
    let mut chunks: Vec<BTreeMap<String, u32>> = vec![BTreeMap::new(); opts.peers];
    // Each peer's rudp address, from its `… online: …, rudp at ADDR, …` line.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut note = |line: &Line| {
        if line.who >= 1 && line.who <= opts.peers {
            if let Some((_, _, src)) = parse_chunk_line(&line.text) {
                *chunks[line.who - 1].entry(src).or_default() += 1;
            } else if let Some(addr) = parse_rudp_address(&line.text) {
                names.insert(addr, format!("peer{}", line.who - 1));
            }
        }
    };

    // Tracker (process 0), on a free port.
    let mut cmd = Command::new(tracker_bin);
    cmd.args(["--bind", &opts.tracker_addr, "0"]);
    procs
        .procs
        .push(Proc::spawn("tracker".into(), 0, cmd, &tx, opts.echo)?);
    let start = Instant::now() + Duration::from_secs(10);
    let tracker_at = wait_for(
        &rx,
        0,
        "tracker",
        "start",
        start,
        |l| {
            l.strip_prefix("tracker listening on ")
                .map(|a| a.trim().to_string())
        },
        &mut note,
    )?;
    let (host, port) = tracker_at
        .rsplit_once(':')
        .ok_or_else(|| DemoError::Setup(format!("tracker printed a bad address '{tracker_at}'")))?;

    // Peers: process i+1 is peer i; peer 0 owns the file.
    for (i, dir) in dirs.iter().enumerate() {
        let addr = expand(&opts.peer_addr, i);
        let mut args: Vec<String> = Vec::new();
        let program = match &opts.peer_wrap {
            Some(wrap) => {
                let mut words = expand(wrap, i)
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>();
                if words.is_empty() {
                    return Err(DemoError::Setup("--peer-wrap is empty".into()));
                }
                let program = words.remove(0);
                args.extend(words);
                args.push(peer_bin.display().to_string());
                program
            }
            None => peer_bin.display().to_string(),
        };
        args.extend(["--dir".into(), dir.display().to_string()]);
        args.extend(["--bind".into(), addr.clone()]);
        args.extend(opts.peer_args.iter().cloned());
        args.extend([host.to_string(), port.to_string()]);
        let mut cmd = Command::new(program);
        cmd.args(&args);
        procs
            .procs
            .push(Proc::spawn(format!("peer{i}"), i + 1, cmd, &tx, opts.echo)?);
    }

    let step = |secs| Instant::now() + Duration::from_secs(secs);
    // Every peer registers its own file.
    for (i, name) in own_files.iter().enumerate() {
        procs.procs[i + 1].send(&format!("register-peer {name}"))?;
        wait_for(
            &rx,
            i + 1,
            &format!("peer{i}"),
            &format!("register-peer {name}"),
            step(30),
            |l| l.contains(name.as_str()).then_some(()),
            &mut note,
        )?;
    }
    procs.procs[2].send("list")?;
    wait_for(
        &rx,
        2,
        "peer1",
        "list",
        step(10),
        |l| l.contains(file_name.as_str()).then_some(()),
        &mut note,
    )?;
    // The others join the owner's group.
    for i in 1..opts.peers {
        procs.procs[i + 1].send(&format!("register-group {file_name}"))?;
        wait_for(
            &rx,
            i + 1,
            &format!("peer{i}"),
            &format!("register-group {file_name}"),
            step(10),
            |l| l.contains(file_name.as_str()).then_some(()),
            &mut note,
        )?;
    }
    // The owner's upload fetches the whole group from the tracker itself.
    procs.procs[1].send(&format!("upload {file_name}"))?;
    let upload_at = Instant::now();

    // Wait for every client's file to appear and verify.
    let deadline = upload_at + opts.timeout;
    let mut done: Vec<Option<(Duration, Digest32)>> = vec![None; opts.peers];
    // When each peer said `complete <file>: …` (it had checked the whole
    // file's SHA-256 and put it under its name): its distribution time. The
    // file check below comes later, by as much as the hashing of the other
    // copies, and must not count.
    let complete_line = format!("complete {file_name}:");
    let mut said_complete: Vec<Option<Instant>> = vec![None; opts.peers];
    let mut last_done = None;
    while done.iter().skip(1).any(Option::is_none) && Instant::now() < deadline {
        interrupted()?;
        // Lines for up to 20 ms, then look at the files (a steady stream of
        // chunk lines must not keep the loop from them).
        let look_at = Instant::now() + Duration::from_millis(20);
        while let Ok(line) = rx.recv_timeout(look_at.saturating_duration_since(Instant::now())) {
            interrupted()?;
            note(&line);
            if line.who >= 2 && line.who <= opts.peers && line.text.starts_with(&complete_line) {
                said_complete[line.who - 1].get_or_insert(line.at);
            }
            if line.who == 1
                && line.text.trim_start().starts_with("error:")
                && line.text.contains("upload")
            {
                return Err(DemoError::Peer {
                    name: "peer0".into(),
                    what: line.text.trim().to_string(),
                });
            }
        }
        for i in 1..opts.peers {
            if done[i].is_some() {
                continue;
            }
            let path = dirs[i].join(&file_name);
            let seen = Instant::now();
            if fs::metadata(&path)
                .map(|m| m.len() == size)
                .unwrap_or(false)
            {
                if let Ok(d) = file_sha256(&path) {
                    let at = said_complete[i].map_or(seen, |c| c.min(seen));
                    let t = at.saturating_duration_since(upload_at);
                    done[i] = Some((t, d));
                    last_done = last_done.max(Some(t));
                }
            }
            if let Ok(Some(status)) = procs.procs[i + 1].child.try_wait() {
                if done[i].is_none() {
                    return Err(DemoError::Peer {
                        name: format!("peer{i}"),
                        what: format!("exited ({status}) before its download completed"),
                    });
                }
            }
        }
    }
    // Collect the lines still in flight.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
        note(&line);
    }
    drop(procs);
    let clients = (1..opts.peers)
        .map(|i| ClientResult {
            name: format!("peer{i}"),
            path: dirs[i].join(&file_name),
            elapsed: done[i].map(|d| d.0),
            sha256: done[i].map(|d| d.1),
            chunks_from: chunks[i]
                .iter()
                .map(|(src, &n)| (names.get(src).cloned().unwrap_or_else(|| src.clone()), n))
                .collect(),
        })
        .collect();
    let report = DemoReport {
        file_name,
        size,
        sha256: sha,
        clients,
        distribution_time: last_done,
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lines() {
        assert_eq!(
            parse_chunk_line("chunk 17/31 from 10.0.0.3:7001"),
            Some((17, 31, "10.0.0.3:7001".into()))
        );
        assert_eq!(
            parse_chunk_line("[peer2] chunk 1/2 from 127.0.0.1:5 (owner)"),
            Some((1, 2, "127.0.0.1:5".into()))
        );
        assert_eq!(parse_chunk_line("chunk x/2 from a"), None);
        assert_eq!(parse_chunk_line("no chunks here"), None);
    }

    #[test]
    fn rudp_addresses() {
        assert_eq!(
            parse_rudp_address(
                "peer 3 online: tracker 127.0.0.1:5150, rudp at 127.0.0.1:7001, dir /d"
            ),
            Some("127.0.0.1:7001".into())
        );
        assert_eq!(parse_rudp_address("chunk 1/2 from 127.0.0.1:5"), None);
    }

    #[test]
    fn templates() {
        assert_eq!(expand("ip netns exec h{i}", 3), "ip netns exec h3");
    }
}
