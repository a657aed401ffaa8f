//! End to end: a real `tracker` and real `peer` processes on loopback,
//! driven through their consoles, distribute a file over rudp; then the
//! faults: a member SIGKILLed mid-download, the owner quitting once every
//! chunk lives on some member, a member that serves corrupted chunks, and a
//! peer killed mid-download that resumes from its `.part` after a restart.
//!
//! `--max-upload` slows the transfers so that the faults land mid-download.
//! Waits are bounded (`WAIT`) only so that a bug fails a test instead of
//! hanging it; nothing here asserts how fast anything is.

use chunkswarm::demo::parse_chunk_line;
use chunkswarm::manifest::{hex, sha256, CHUNK_SIZE};
use chunkswarm::rng::Rng;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

mod support;

const WAIT: Duration = Duration::from_secs(60);
/// Tracker heartbeat: a killed peer leaves its group within 2.5 of these.
const HEARTBEAT_MS: &str = "300";
const FILE: &str = "video.bin";

/// One process; its stdout and stderr lines arrive on a channel.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<String>,
    lines: Vec<String>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        let (mut child, rx) = support::spawn_with_lines(&mut cmd, true);
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            rx,
            lines: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("console open");
        writeln!(stdin, "{line}").expect("write to console");
        stdin.flush().expect("flush console");
    }

    /// Takes in what arrived so far.
    fn drain(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.lines.push(l);
        }
    }

    /// Waits for a line (seen before or new) that satisfies `pred`.
    fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut from = 0;
        loop {
            if let Some(l) = self.lines[from..].iter().find(|l| pred(l)) {
                return l.clone();
            }
            from = self.lines.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(l) => self.lines.push(l),
                Err(_) if Instant::now() < deadline => {}
                Err(_) => panic!(
                    "{}: no line for {what}; saw:\n{}",
                    self.name,
                    self.lines.join("\n")
                ),
            }
        }
    }

    fn expect(&mut self, needle: &str) -> String {
        self.wait_for(needle, |l| l.contains(needle))
    }

    /// Chunk indices (1-based) this process printed `chunk i/n from` lines for.
    fn chunks(&mut self) -> Vec<u32> {
        self.drain();
        self.lines
            .iter()
            .filter_map(|l| parse_chunk_line(l).map(|(i, _, _)| i))
            .collect()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tracker, peer 0 owning a file of `size` random bytes, and `members`
/// peers that join its group; each peer gets `extra(i)` as extra arguments.
struct Swarm {
    tracker: Proc,
    port: String,
    peers: Vec<Proc>,
    dirs: Vec<PathBuf>,
    data: Vec<u8>,
    _work: TempDir,
}

/// On a failure, shows what every process printed.
impl Drop for Swarm {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for p in std::iter::once(&mut self.tracker).chain(self.peers.iter_mut()) {
            p.drain();
            eprintln!("---- {} ----\n{}", p.name, p.lines.join("\n"));
        }
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_peer(name: &str, dir: &Path, port: &str, extra: &[String]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("--dir")
        .arg(dir)
        .args(["--bind", "127.0.0.1", "--heartbeat-ms", HEARTBEAT_MS])
        .args(extra)
        .args(["127.0.0.1", port]);
    let mut p = Proc::spawn(name, cmd);
    p.expect("online");
    p
}

impl Swarm {
    fn start(
        test: &str,
        members: usize,
        size: usize,
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Swarm {
        let work =
            std::env::temp_dir().join(format!("chunkswarm-e2e-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let work = TempDir(work);
        let mut tracker = Proc::spawn("tracker", {
            let mut c = Command::new(env!("CARGO_BIN_EXE_tracker"));
            c.args(["--bind", "127.0.0.1", "--heartbeat-ms", HEARTBEAT_MS, "0"]);
            c
        });
        let line = tracker.expect("tracker listening on");
        let port = line.rsplit(':').next().expect("port").trim().to_string();
        let mut data = vec![0u8; size];
        Rng::new(size as u64).fill(&mut data);
        let mut dirs = Vec::new();
        let mut peers = Vec::new();
        for i in 0..=members {
            let dir = work.0.join(format!("peer{i}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            if i == 0 {
                std::fs::write(dir.join(FILE), &data).expect("write file");
            }
            peers.push(start_peer(&format!("peer{i}"), &dir, &port, &extra(i)));
            dirs.push(dir);
        }
        peers[0].send(&format!("register-peer {FILE}"));
        peers[0].expect(&format!("registered {FILE}"));
        for p in peers.iter_mut().skip(1) {
            p.send(&format!("register-group {FILE}"));
            p.expect(&format!("joined the group of {FILE}"));
        }
        Swarm {
            tracker,
            port,
            peers,
            dirs,
            data,
            _work: work,
        }
    }

    fn chunk_count(&self) -> u32 {
        self.data.len().div_ceil(CHUNK_SIZE as usize) as u32
    }

    fn upload(&mut self) {
        self.peers[0].send(&format!("upload {FILE}"));
        self.peers[0].expect(&format!("upload {FILE}: sending"));
    }

    /// Peer `i` completes: its summary appears and its file matches the original.
    fn assert_complete(&mut self, i: usize) {
        let n = self.chunk_count();
        let hash = hex(&sha256(&self.data));
        let p = &mut self.peers[i];
        p.expect(&format!("complete {FILE}"));
        let line = p.expect("sha256");
        assert!(line.contains(&format!("sha256 {hash} verified")), "{line}");
        p.expect("  time ");
        let path = self.dirs[i].join(FILE);
        let got = std::fs::read(&path).expect("downloaded file");
        assert!(
            got == self.data,
            "{}: {} differs from the original",
            p.name,
            path.display()
        );
        assert!(
            !self.dirs[i].join(format!("{FILE}.part")).exists(),
            "{}: the .part file is left over",
            p.name
        );
        let chunks = p.chunks();
        assert!(chunks.iter().all(|&c| (1..=n).contains(&c)), "{chunks:?}");
        let distinct: BTreeSet<u32> = chunks.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            chunks.len(),
            "{}: a chunk printed twice",
            p.name
        );
    }
}

fn rate(r: &str) -> Vec<String> {
    vec!["--max-upload".into(), r.into()]
}

#[test]
fn six_peers_distribute_a_file_every_copy_identical() {
    let mut s = Swarm::start("six", 5, 2_500_000, |_| Vec::new());
    let n = s.chunk_count();
    s.upload();
    for i in 1..=5 {
        s.assert_complete(i);
        // One line per chunk, every chunk once, and the summary's sources add up.
        let p = &mut s.peers[i];
        let chunks: BTreeSet<u32> = p.chunks().into_iter().collect();
        assert_eq!(chunks, (1..=n).collect(), "{}", p.name);
        let mut summed = 0;
        p.wait_for("per-source counts adding up to the chunk count", |l| {
            if let Some(k) = l.strip_prefix("  from ").and_then(|r| {
                r.rsplit(": ")
                    .next()?
                    .strip_suffix(" chunks")?
                    .parse::<u32>()
                    .ok()
            }) {
                summed += k;
            }
            summed == n
        });
        assert!(
            p.lines.iter().any(|l| l.contains("(owner): ")),
            "{}: no chunk from the owner",
            p.name
        );
    }
    // Everyone keeps serving after completion; status says so.
    s.peers[1].send("status");
    let line = s.peers[1].expect("downloading: video.bin");
    assert!(
        line.contains(&format!("{n}/{n} chunks, complete")),
        "{line}"
    );
    s.peers[1].expect("  neighbours:");
}

#[test]
fn a_member_killed_mid_download_the_rest_complete() {
    let mut s = Swarm::start("kill", 5, 3_000_000, |_| rate("1MB/s"));
    s.upload();
    s.peers[3].wait_for("a few chunks", |l| {
        parse_chunk_line(l).is_some_and(|(i, _, _)| i > 0)
    });
    s.peers[3].kill();
    assert!(
        !s.dirs[3].join(FILE).exists(),
        "peer3 completed before it was killed"
    );
    for i in [1, 2, 4, 5] {
        s.assert_complete(i);
    }
}

#[test]
fn the_owner_quits_once_every_chunk_is_on_a_member_the_rest_complete() {
    let mut s = Swarm::start("owner", 4, 3_000_000, |_| rate("1MB/s"));
    let n = s.chunk_count();
    s.upload();
    let deadline = Instant::now() + WAIT;
    loop {
        let held: BTreeSet<u32> = s.peers[1..].iter_mut().flat_map(|p| p.chunks()).collect();
        if held.len() == n as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chunks never all reached members: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    s.peers[0].send("quit");
    s.peers[0].expect("bye");
    let not_done = (1..=4).filter(|&i| !s.dirs[i].join(FILE).exists()).count();
    for i in 1..=4 {
        s.assert_complete(i);
    }
    // Meaningful only if someone was still downloading when the owner left.
    assert!(
        not_done > 0,
        "every member had finished before the owner quit"
    );
}

#[test]
fn a_member_serving_corrupted_chunks_poisons_nobody() {
    let mut s = Swarm::start("corrupt", 4, 2_500_000, |i| {
        if i == 2 {
            vec!["--corrupt-served-chunks".into()]
        } else {
            Vec::new()
        }
    });
    s.upload();
    for i in 1..=4 {
        s.assert_complete(i);
    }
    // The liar's chunks were seen and thrown away by someone.
    let caught = s.peers[1..].iter_mut().any(|p| {
        p.drain();
        p.lines
            .iter()
            .any(|l| l.contains("corrupted copy of chunk"))
    });
    assert!(caught, "no peer reported a corrupted chunk");
}

#[test]
fn a_peer_restarted_mid_download_resumes_from_its_part_file() {
    let mut s = Swarm::start("resume", 1, 3_000_000, |_| rate("600KB/s"));
    let n = s.chunk_count() as usize;
    s.upload();
    let mut seen = 0;
    s.peers[1].wait_for("8 chunks", |l| {
        seen += usize::from(parse_chunk_line(l).is_some());
        seen >= 8
    });
    s.peers[1].kill();
    assert!(
        s.dirs[1].join(format!("{FILE}.part")).exists(),
        "no .part file"
    );
    assert!(!s.dirs[1].join(FILE).exists(), "complete before the kill");

    // The tracker drops the dead peer (the owner's group is empty for a
    // moment); then the same directory, a new process (and port).
    s.peers[0].expect("left; members now 0");
    let mut again = start_peer("peer1-again", &s.dirs[1], &s.port, &rate("600KB/s"));
    again.send(&format!("register-group {FILE}"));
    again.expect(&format!("joined the group of {FILE}"));
    let line = again.expect("resuming from");
    assert!(line.contains(&format!("{FILE}.part")), "{line}");
    s.peers[1] = again;
    s.assert_complete(1);
    let fetched = s.peers[1].chunks().len();
    assert!(
        fetched > 0 && fetched < n,
        "the restarted peer fetched {fetched} of {n} chunks"
    );
    s.tracker.drain();
}
