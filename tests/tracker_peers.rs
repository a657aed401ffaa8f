//! The tracker and several `peer` processes on loopback, driven through
//! their stdin: registrations, list, group joins and leaves pushed to
//! everyone, refusals, peers that die (SIGKILL) or freeze (SIGSTOP), and
//! clients that send garbage.
//!
//! Waits are bounded (`WAIT`) only so that a bug fails the test instead of
//! hanging it; nothing here asserts how fast anything is.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

mod support;

const WAIT: Duration = Duration::from_secs(20);

/// A short heartbeat so that silence is detected quickly, yet long enough
/// that a peer on a loaded 2-core machine is not dropped by mistake (the
/// tracker drops after 2.5 intervals of silence).
const SHORT_HEARTBEAT_MS: u64 = 300;

/// A child process whose stdout lines arrive on a channel.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    name: String,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        let (mut child, lines) = support::spawn_with_lines(&mut cmd, false);
        Proc {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            name: name.to_string(),
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to peer");
        stdin.flush().expect("flush");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for a line containing `needle`; returns it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: no line with {needle:?}; saw:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends a command and returns the first line of its answer that contains `needle`.
    fn ask(&mut self, command: &str, needle: &str) -> String {
        self.send(command);
        self.expect(needle)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit (bounded); its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tracker(heartbeat_ms: u64) -> (Proc, u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracker"));
    cmd.args([
        "--bind",
        "127.0.0.1",
        "--heartbeat-ms",
        &heartbeat_ms.to_string(),
        // `--port` here; the other suites give the port as the argument.
        "--port",
        "0",
    ]);
    let mut t = Proc::spawn("tracker", cmd);
    let line = t.expect("tracker listening on ");
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in the first line");
    (t, port)
}

fn start_peer(name: &str, port: u16, dir: &Path, heartbeat_ms: u64) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("--dir")
        .arg(dir)
        .args([
            "--bind",
            "127.0.0.1",
            "--heartbeat-ms",
            &heartbeat_ms.to_string(),
        ])
        .args(["127.0.0.1", &port.to_string()]);
    let mut p = Proc::spawn(name, cmd);
    p.expect(" online: tracker");
    p
}

/// A fresh directory under the target dir, removed first if it exists.
fn scratch(test: &str, peer: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("tracker_peers")
        .join(test)
        .join(peer);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn write_file(dir: &Path, name: &str, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 / 7) as u8).collect();
    std::fs::write(dir.join(name), data).expect("write");
}

/// Peer id from a line such as "peer 3 online: ...".
fn peer_id(online_line: &str) -> String {
    online_line
        .split(" online")
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn every_command_joins_leaves_and_refusals() {
    let (_tracker, port) = start_tracker(2000);
    let (da, db, dc) = (
        scratch("every", "a"),
        scratch("every", "b"),
        scratch("every", "c"),
    );
    write_file(&da, "movie.mp4", 250_000);
    write_file(&db, "movie.mp4", 1_000); // same name, another owner
    write_file(&dc, "exists.bin", 10);
    std::fs::create_dir(da.join("adir")).expect("mkdir");

    let mut a = start_peer("a", port, &da, 2000);
    let line = a.ask("register-peer movie.mp4", "registered movie.mp4");
    assert!(line.contains("250000 bytes, 3 chunks"), "{line}");

    // Refusals: each one line starting with "error:", and nothing is lost.
    let line = a.ask("register-peer missing.bin", "error:");
    assert!(line.contains("there is no"), "{line}");
    let line = a.ask("register-peer adir", "error:");
    assert!(line.contains("not a regular file"), "{line}");
    let line = a.ask("register-peer ../movie.mp4", "error:");
    assert!(line.contains("plain name"), "{line}");
    let line = a.ask("register-peer movie.mp4", "error:");
    assert!(line.contains("already share"), "{line}");
    let line = a.ask("register-group movie.mp4", "error:");
    assert!(line.contains("you own movie.mp4"), "{line}");
    let line = a.ask("frobnicate", "error:");
    assert!(line.contains("unknown command"), "{line}");
    let line = a.ask("upload", "error:");
    assert!(line.contains("nobody has joined"), "{line}");

    let mut b = start_peer("b", port, &db, 2000);
    let line = b.ask("register-peer movie.mp4", "error:");
    assert!(
        line.contains("already shares a file named movie.mp4"),
        "{line}"
    );
    let line = b.ask("register-group movie.mp4", "error:");
    assert!(line.contains("already exists"), "{line}");
    std::fs::remove_file(db.join("movie.mp4")).expect("rm");
    let line = b.ask("register-group nope.bin", "error:");
    assert!(line.contains("no shared file is named nope.bin"), "{line}");

    let line = b.ask("list", "movie.mp4");
    assert!(
        line.contains("3 chunks") && line.contains("group 0"),
        "{line}"
    );
    b.ask("register-group movie.mp4", "joined the group of movie.mp4");
    let b_id = peer_id(&b.seen[0]);
    a.expect(&format!("group movie.mp4: {b_id} at 127.0.0.1:"));
    let line = b.ask("register-group movie.mp4", "error:");
    assert!(line.contains("already in its group"), "{line}");

    let mut c = start_peer("c", port, &dc, 2000);
    let c_id = peer_id(&c.seen[0]);
    let line = c.ask("register-group movie.mp4", "joined the group of movie.mp4");
    assert!(line.contains(&format!("members: {b_id}, {c_id}")), "{line}");
    let line = a.expect(&format!("{c_id} at"));
    assert!(line.contains("joined; members now 2"), "{line}");
    let line = b.expect(&format!("{c_id} at"));
    assert!(line.contains("joined; members now 2"), "{line}");
    let line = c.ask("list", "movie.mp4");
    assert!(line.contains("group 2"), "{line}");

    // The owner's upload fetches the group and sends the file to it.
    let line = a.ask("upload movie.mp4", "upload movie.mp4:");
    assert!(line.contains(&format!("to 2 members: {b_id}")), "{line}");
    b.expect("complete movie.mp4");
    c.expect("complete movie.mp4");
    let line = a.ask("status", "sharing:");
    assert!(
        line.contains("movie.mp4") && line.contains("2 members"),
        "{line}"
    );
    a.ask("help", "register-group <filename>");
    let line = c.ask("status", "downloading:");
    assert!(line.contains("movie.mp4"), "{line}");

    // quit: the others see c leave.
    c.ask("quit", "bye");
    assert_eq!(c.wait_exit(), Some(0));
    let line = a.expect(&format!("{c_id} left"));
    assert!(line.contains("members now 1"), "{line}");
    b.expect(&format!("{c_id} left"));

    // The owner goes: b's group closes and the file leaves list.
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(), Some(0));
    b.expect("group movie.mp4: closed");
    b.ask("list", "list: no shared files");
}

#[test]
fn killed_or_frozen_peers_leave_within_the_heartbeat_bound() {
    let (_tracker, port) = start_tracker(SHORT_HEARTBEAT_MS);
    let (da, db, dc, dd) = (
        scratch("killed", "a"),
        scratch("killed", "b"),
        scratch("killed", "c"),
        scratch("killed", "d"),
    );
    write_file(&da, "f.bin", 300_000);
    write_file(&dd, "g.bin", 10);
    let mut a = start_peer("a", port, &da, SHORT_HEARTBEAT_MS);
    a.ask("register-peer f.bin", "registered f.bin");
    let mut b = start_peer("b", port, &db, SHORT_HEARTBEAT_MS);
    let mut c = start_peer("c", port, &dc, SHORT_HEARTBEAT_MS);
    let mut d = start_peer("d", port, &dd, SHORT_HEARTBEAT_MS);
    d.ask("register-peer g.bin", "registered g.bin");
    let (b_id, c_id) = (peer_id(&b.seen[0]), peer_id(&c.seen[0]));
    b.ask("register-group f.bin", "joined");
    c.ask("register-group f.bin", "joined");
    c.ask("register-group g.bin", "joined");
    a.expect(&format!("{c_id} at"));

    // SIGKILL: the kernel closes c's connection; it leaves both groups.
    c.signal(libc::SIGKILL);
    a.expect(&format!("group f.bin: {c_id} left"));
    b.expect(&format!("group f.bin: {c_id} left"));
    d.expect(&format!("group g.bin: {c_id} left"));

    // SIGSTOP: b's connection stays open but silent; heartbeats catch it.
    b.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    a.expect(&format!("group f.bin: {b_id} left"));
    let took = frozen_at.elapsed();
    eprintln!(
        "frozen peer dropped after {took:?} (heartbeat {SHORT_HEARTBEAT_MS} ms; bound 3 intervals)"
    );
    let line = d.ask("list", "f.bin");
    assert!(line.contains("group 0"), "{line}");
    b.signal(libc::SIGCONT);
    // When b wakes, the tracker has dropped it: it says so, stays up, opens
    // a new session and joins its group again.
    let lost = b.expect("error: ");
    assert!(lost.contains("transfers go on"), "{lost}");
    b.expect("is back");
    b.expect("rejoined the group of f.bin");
    let line = d.ask("list", "f.bin");
    assert!(line.contains("group 1"), "{line}");
}

#[test]
fn end_of_input_keeps_an_owner_and_stops_an_idle_peer() {
    let (_tracker, port) = start_tracker(2000);
    let (da, db) = (scratch("eof", "a"), scratch("eof", "b"));
    write_file(&da, "keep.bin", 5);
    let mut a = start_peer("a", port, &da, 2000);
    a.ask("register-peer keep.bin", "registered keep.bin");
    a.close_stdin();
    let mut b = start_peer("b", port, &db, 2000);
    // a is still there after its input ended.
    let line = b.ask("list", "keep.bin");
    assert!(line.contains("5 bytes"), "{line}");
    b.close_stdin();
    assert_eq!(b.wait_exit(), Some(0));
    let mut c = start_peer("c", port, &db, 2000);
    c.ask("list", "keep.bin");
    a.signal(libc::SIGINT);
    assert_eq!(a.wait_exit(), Some(0));
    c.ask("list", "no shared files");
}

/// Reads from a raw client until the tracker closes it; the bytes it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn tracker_survives_bad_clients_and_keeps_everyone_elses_state() {
    let (_tracker, port) = start_tracker(SHORT_HEARTBEAT_MS);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (da, db) = (scratch("bad", "a"), scratch("bad", "b"));
    write_file(&da, "x.bin", 200_000);
    let mut a = start_peer("a", port, &da, SHORT_HEARTBEAT_MS);
    a.ask("register-peer x.bin", "registered x.bin");
    let mut b = start_peer("b", port, &db, SHORT_HEARTBEAT_MS);
    b.ask("register-group x.bin", "joined");

    // Thousands of idle connections (kept open until the end; the tracker
    // drops them for silence, and nobody else notices).
    let _ = chunkswarm::tracker::server::raise_fd_limit();
    let idle: Vec<TcpStream> = (0..2000)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert!(idle.len() >= 1000, "only {} connections", idle.len());

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("unknown type", vec![0, 0, 0, 2, 0xC1, 0x7E]),
        ("bad magic", vec![0, 0, 0, 2, 0x17, 0x03]),
        ("huge length", vec![0x7F, 0xFF, 0xFF, 0xFF, 0xC1, 0x01]),
        (
            "request before hello",
            vec![0, 0, 0, 6, 0xC1, 0x03, 0, 0, 0, 1],
        ),
        ("bad hello", vec![0, 0, 0, 5, 0xC1, 0x01, 0x10, 0x00, 9]),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(&bytes).expect("write");
        let answer = read_to_close(&mut s);
        // A Refused frame (type 0x87), then the tracker closed the session.
        assert!(answer.len() > 6 && answer[5] == 0x87, "{what}: {answer:?}");
    }
    // A frame cut short, then the client hangs up.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&[0, 0, 1, 0, 0xC1, 0x02, 1, 2]).expect("write");
    drop(s);
    // A frame cut short, and the client stays: dropped after the silence limit.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&[0, 0, 1, 0, 0xC1]).expect("write");
    assert!(read_to_close(&mut s).is_empty());

    // Nobody else's state changed: the file, its owner and its group are intact,
    // and the tracker still serves new peers.
    let line = b.ask("list", "x.bin");
    assert!(line.contains("group 1"), "{line}");
    let mut c = start_peer("c", port, &scratch("bad", "c"), SHORT_HEARTBEAT_MS);
    c.ask("register-group x.bin", "joined");
    a.expect("joined; members now 2");
    drop(idle);
}
