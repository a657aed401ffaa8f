//! The `peer` binary as a user drives it: a console line that is not UTF-8,
//! a tracker that dies mid-transfer and comes back, and a "tracker" that
//! never answers. Waits are bounded only so that a bug fails instead of
//! hanging; nothing here asserts how fast anything is.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

mod support;

const WAIT: Duration = Duration::from_secs(20);

/// A running binary: stdin piped, stdout and stderr merged into one channel of lines.
struct Running {
    name: &'static str,
    child: Child,
    out: Receiver<String>,
    log: Vec<String>,
    /// The terminal's master side, for a process started on a pty.
    terminal: Option<std::fs::File>,
}

impl Running {
    fn start(name: &'static str, exe: &str, args: &[String]) -> Running {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        Running::reading(name, child, streams, None)
    }

    /// `child`, its output `streams` read as one channel of lines.
    fn reading(
        name: &'static str,
        child: Child,
        streams: Vec<Box<dyn std::io::Read + Send>>,
        terminal: Option<std::fs::File>,
    ) -> Running {
        let (tx, out) = mpsc::channel();
        for stream in streams {
            support::forward_lines(stream, "", tx.clone());
        }
        Running {
            name,
            child,
            out,
            log: Vec::new(),
            terminal,
        }
    }

    /// Starts `exe` with a pseudo-terminal as its stdin, stdout and stderr,
    /// as when a user runs it in a terminal: its console is the line editor.
    /// None when this machine has no pseudo-terminals to give.
    fn start_on_terminal(name: &'static str, exe: &str, args: &[String]) -> Option<Running> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two new descriptors into the integers given.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            eprintln!("openpty: {}", std::io::Error::last_os_error());
            return None;
        }
        // SAFETY: both are fresh descriptors this function alone owns.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let child = Command::new(exe)
            .args(args)
            .stdin(slave.try_clone().expect("dup"))
            .stdout(slave.try_clone().expect("dup"))
            .stderr(slave)
            .spawn()
            .expect("spawn");
        let terminal = std::fs::File::from(master);
        let reader = Box::new(terminal.try_clone().expect("dup"));
        Some(Running::reading(name, child, vec![reader], Some(terminal)))
    }

    fn write(&mut self, bytes: &[u8]) {
        let input: &mut dyn Write = match &mut self.terminal {
            Some(terminal) => terminal,
            None => self.child.stdin.as_mut().expect("stdin"),
        };
        input.write_all(bytes).expect("write");
        input.flush().expect("flush");
    }

    /// The first line (from now on) that contains `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while let Ok(line) = self
            .out
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.log.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
        panic!(
            "{}: no line with {needle:?}; it printed:\n{}",
            self.name,
            self.log.join("\n")
        );
    }

    /// Like [`wait_for`](Self::wait_for), but a line already printed counts too.
    fn printed(&mut self, needle: &str) -> String {
        match self.log.iter().find(|l| l.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for(needle),
        }
    }

    /// Waits (bounded) for the process to exit, which it must do with a failure.
    fn exits_with_failure(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.exited() {
                assert!(!status.success(), "{}: exited successfully", self.name);
                return;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tracker(port: u16) -> (Running, u16) {
    tracker_with(port, &[])
}

fn tracker_with(port: u16, extra: &[&str]) -> (Running, u16) {
    let args = ["--bind", "127.0.0.1", "--heartbeat-ms", "300"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .chain([port.to_string()])
        .collect::<Vec<_>>();
    let mut t = Running::start("tracker", env!("CARGO_BIN_EXE_tracker"), &args);
    let line = t.wait_for("tracker listening on ");
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("port");
    (t, port)
}

fn peer(name: &'static str, dir: &Path, port: u16, extra: &[&str]) -> Running {
    let mut args = vec!["--dir".to_string(), dir.display().to_string()];
    args.extend(
        [
            "--bind",
            "127.0.0.1",
            "--heartbeat-ms",
            "300",
            "--quiet-chunks",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    args.extend(["127.0.0.1".to_string(), port.to_string()]);
    let mut p = Running::start(name, env!("CARGO_BIN_EXE_peer"), &args);
    p.wait_for(" online: tracker");
    p
}

fn scratch(test: &str, who: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cli_peer")
        .join(test)
        .join(who);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

#[test]
fn a_line_that_is_not_utf8_is_one_error_and_the_console_goes_on() {
    let (_t, port) = tracker(0);
    let dir = scratch("utf8", "a");
    let mut a = peer("a", &dir, port, &[]);
    // A Latin-1 file name, as a script on another system might send it.
    a.write(b"register-peer caf\xe9.bin\n");
    let err = a.wait_for("error:");
    assert!(err.contains("UTF-8"), "{err}");
    a.write(b"list\n");
    a.wait_for("list: no shared files");
    a.write(b"quit\n");
    a.wait_for("bye");
}

/// Owner `a` (uploads capped at 1 MB/s) has started sending a 3 MB
/// movie.bin to member `b`.
struct Upload {
    a: Running,
    b: Running,
    a_dir: PathBuf,
    b_dir: PathBuf,
    data: Vec<u8>,
}

/// `a` shares `name`, `b` joins its group, `a` starts the upload.
fn share_join_upload(a: &mut Running, b: &mut Running, name: &str) {
    a.write(format!("register-peer {name}\n").as_bytes());
    a.wait_for(&format!("registered {name}"));
    // A terminal's Enter key sends a carriage return.
    let enter = if b.terminal.is_some() { '\r' } else { '\n' };
    b.write(format!("register-group {name}{enter}").as_bytes());
    b.wait_for(&format!("joined the group of {name}"));
    a.write(format!("upload {name}\n").as_bytes());
    a.wait_for(&format!("upload {name}: sending"));
}

fn slow_upload(test: &str, port: u16) -> Upload {
    let (a_dir, b_dir) = (scratch(test, "a"), scratch(test, "b"));
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 / 3) as u8).collect();
    std::fs::write(a_dir.join("movie.bin"), &data).expect("write");
    let mut a = peer("a", &a_dir, port, &["--max-upload", "1MB/s"]);
    let mut b = peer("b", &b_dir, port, &[]);
    share_join_upload(&mut a, &mut b, "movie.bin");
    Upload {
        a,
        b,
        a_dir,
        b_dir,
        data,
    }
}

#[test]
fn peers_outlive_their_tracker_and_rejoin_when_it_is_back() {
    let (t, port) = tracker(0);
    let Upload {
        mut a,
        mut b,
        b_dir,
        data,
        ..
    } = slow_upload("tracker_back", port);

    drop(t); // SIGKILL: the tracker is gone mid-transfer.
    for p in [&mut a, &mut b] {
        let line = p.wait_for("error:");
        assert!(line.contains("transfers go on"), "{line}");
    }
    a.write(b"list\n");
    let refused = a.wait_for("error: list");
    assert!(
        refused.contains("no connection to the tracker"),
        "{refused}"
    );
    a.write(b"status\n");
    let status = a.wait_for("status: ");
    assert!(status.contains("(connection lost, retrying)"), "{status}");
    assert!(a.exited().is_none() && b.exited().is_none());

    // Back on the same port: both share and join again, and the copy completes.
    let (_t, _) = tracker(port);
    a.wait_for("is back");
    a.wait_for("sharing movie.bin again");
    b.printed("is back");
    b.printed("complete movie.bin");
    // It may have asked before `a` shared the file again; it retries until it is in.
    b.printed("rejoined the group of movie.bin");
    assert_eq!(std::fs::read(b_dir.join("movie.bin")).expect("copy"), data);
    b.write(b"list\n");
    let listed = b.wait_for("movie.bin  3000000 bytes");
    assert!(listed.contains("group 1"), "{listed}");
}

#[test]
fn members_rejoin_by_themselves_when_a_killed_owner_shares_again() {
    let (_t, port) = tracker(0);
    let Upload {
        a,
        mut b,
        a_dir,
        b_dir,
        data,
    } = slow_upload("owner_back", port);
    drop(a); // SIGKILL mid-upload: b holds only part of the file.
    let closed = b.wait_for("closed, its owner");
    assert!(closed.contains("rejoins by itself"), "{closed}");
    b.write(b"register-group movie.bin\n");
    let refused = b.wait_for("error: register-group");
    assert!(refused.contains("already downloading"), "{refused}");

    let mut a = peer("a", &a_dir, port, &[]);
    a.write(b"register-peer movie.bin\n");
    a.wait_for("registered movie.bin");
    a.wait_for("group movie.bin: peer");
    b.printed("rejoined the group of movie.bin");
    // The owner opens the connections: a restarted owner uploads again.
    a.write(b"upload movie.bin\n");
    b.printed("complete movie.bin");
    assert_eq!(std::fs::read(b_dir.join("movie.bin")).expect("copy"), data);
    // A second upload would push every chunk again.
    a.write(b"upload movie.bin\n");
    a.wait_for("upload movie.bin: already started");
}

#[test]
fn a_rudp_address_others_cannot_reach_is_a_warning() {
    // The tracker sees the TCP session come from 127.0.0.1, so it tells the
    // group to send to 127.0.0.1:PORT, where nothing listens.
    let (_t, port) = tracker(0);
    let dir = scratch("unreachable", "a");
    let mut args = vec!["--dir".to_string(), dir.display().to_string()];
    args.extend(["--bind", "127.0.0.2", "127.0.0.1"].map(String::from));
    args.push(port.to_string());
    let mut a = Running::start("a", env!("CARGO_BIN_EXE_peer"), &args);
    let warning = a.wait_for("warning:");
    assert!(warning.contains("--bind 0.0.0.0"), "{warning}");
}

#[test]
fn a_file_too_large_is_refused_at_once_and_quit_cancels_a_long_hash() {
    let (_t, port) = tracker(0);
    let dir = scratch("large", "a");
    let sparse = |name: &str, len: u64| {
        let f = std::fs::File::create(dir.join(name)).expect("create");
        f.set_len(len).expect("sparse file");
    };
    sparse("huge.bin", (16 << 30) + 1);
    sparse("big.bin", 4 << 30);
    let mut a = peer("a", &dir, port, &[]);
    // Refused from its size, not after reading 16 GiB.
    a.write(b"register-peer huge.bin\nlist\n");
    let refused = a.wait_for("error: register-peer huge.bin");
    assert!(refused.contains("more than"), "{refused}");
    a.wait_for("list: no shared files");
    // Hashing 4 GiB takes a while: quit does not wait for it.
    a.write(b"register-peer big.bin\n");
    a.wait_for("register-peer: hashing");
    a.write(b"quit\n");
    a.wait_for("register-peer big.bin: cancelled");
    a.wait_for("bye");
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_ipv6_tracker_gets_ipv6_peers() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let args: Vec<String> = ["--bind", "::1", "0"].map(String::from).to_vec();
    let mut t = Running::start("tracker", env!("CARGO_BIN_EXE_tracker"), &args);
    let line = t.wait_for("tracker listening on ");
    let port = line
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let (a_dir, b_dir) = (scratch("ipv6", "a"), scratch("ipv6", "b"));
    std::fs::write(a_dir.join("f.bin"), vec![7u8; 250_000]).expect("write");
    let start = |name, dir: &Path| {
        let args = ["--dir", &dir.display().to_string(), "::1", &port].map(String::from);
        let mut p = Running::start(name, env!("CARGO_BIN_EXE_peer"), &args);
        // The rudp socket listens on IPv6 too: no warning, an IPv6 address.
        let online = p.wait_for(" online: ");
        assert!(online.contains("rudp at [::1]:"), "{online}");
        p
    };
    let (mut a, mut b) = (start("a", &a_dir), start("b", &b_dir));
    share_join_upload(&mut a, &mut b, "f.bin");
    b.printed("complete f.bin");
    assert!(!b.log.iter().any(|l| l.contains("warning:")), "{:?}", b.log);
    assert_eq!(
        std::fs::read(b_dir.join("f.bin")).expect("copy"),
        vec![7u8; 250_000]
    );
}

#[test]
fn a_one_byte_file_is_one_byte_in_one_chunk() {
    let (_t, port) = tracker(0);
    let (a_dir, b_dir) = (scratch("one_byte", "a"), scratch("one_byte", "b"));
    std::fs::write(a_dir.join("one.bin"), b"x").expect("write");
    let mut a = peer("a", &a_dir, port, &[]);
    let mut b = peer("b", &b_dir, port, &[]);
    share_join_upload(&mut a, &mut b, "one.bin");
    a.printed("registered one.bin: 1 byte, 1 chunk, sha256");
    b.printed("joined the group of one.bin: owner peer 1 at 127.0.0.1:");
    a.printed("upload one.bin: sending 1 chunk to 1 member");
    b.printed("complete one.bin");
    b.write(b"list\n");
    b.wait_for("one.bin  1 byte  1 chunk  owner");
    assert_eq!(std::fs::read(b_dir.join("one.bin")).expect("copy"), b"x");
}

#[test]
fn a_full_tracker_says_so() {
    let (_t, port) = tracker_with(0, &["--max-sessions", "1"]);
    let _a = peer("a", &scratch("full", "a"), port, &[]);
    let mut b = unwelcomed_peer(&scratch("full", "b"), port);
    let line = b.wait_for("error:");
    assert!(line.contains("turned this peer away"), "{line}");
    assert!(line.contains("--max-sessions"), "{line}");
    b.exits_with_failure();
}

/// A peer started without waiting for the tracker's welcome.
fn unwelcomed_peer(dir: &Path, port: u16) -> Running {
    let args = [
        "--dir".to_string(),
        dir.display().to_string(),
        "127.0.0.1".into(),
        port.to_string(),
    ];
    Running::start("peer", env!("CARGO_BIN_EXE_peer"), &args)
}

#[test]
fn a_tracker_that_never_answers_is_a_clear_error() {
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let mut a = unwelcomed_peer(&scratch("silent", "a"), port);
    let line = a.wait_for("error:");
    assert!(line.contains("is a chunkswarm tracker listening"), "{line}");
    a.exits_with_failure();
}

/// A member whose console is a terminal: a whole command arriving at once
/// (pasted, or typed faster than the editor reads) is run at once (the line
/// editor once left all but its first byte unread until the next key), and
/// while chunks arrive a progress bar is drawn above the prompt without
/// swallowing any chunk line.
#[test]
fn a_terminal_console_runs_pasted_commands_and_draws_a_bar_above_the_prompt() {
    let (_t, port) = tracker(0);
    let (a_dir, b_dir) = (scratch("terminal", "a"), scratch("terminal", "b"));
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(a_dir.join("f.bin"), &data).expect("write");
    let mut a = peer("a", &a_dir, port, &["--max-upload", "2MB/s"]);
    let args = [
        "--dir",
        &b_dir.display().to_string(),
        "--bind",
        "127.0.0.1",
        "127.0.0.1",
        &port.to_string(),
    ]
    .map(String::from);
    let Some(mut b) = Running::start_on_terminal("b", env!("CARGO_BIN_EXE_peer"), &args) else {
        eprintln!("skipped: no pseudo-terminal on this machine");
        return;
    };
    b.wait_for(" online: tracker");
    // A terminal's bracketed paste of two lines: two commands, not one
    // command with a newline in it.
    b.write(b"\x1b[200~list\nnot-a-command\x1b[201~\r");
    b.wait_for("list: ");
    b.wait_for("error: ");
    assert!(
        !b.log.iter().any(|l| l.contains("control characters")),
        "{:?}",
        b.log
    );
    share_join_upload(&mut a, &mut b, "f.bin");
    b.printed("complete f.bin");
    let bar = b
        .log
        .iter()
        .find(|l| l.contains("f.bin [") && l.contains("MiB"));
    assert!(
        bar.is_some(),
        "no progress bar drawn:\n{}",
        b.log.join("\n")
    );
    for n in 1..=20 {
        let line = format!("chunk {n}/20 from ");
        assert!(
            b.log.iter().any(|l| l.contains(&line)),
            "no {line:?}:\n{}",
            b.log.join("\n")
        );
    }
    assert_eq!(std::fs::read(b_dir.join("f.bin")).expect("copy"), data);
    b.write(b"quit\r");
}

/// An owner whose file is edited after `register-peer` sends no chunk that
/// fails its manifest check: it says the file changed and stops serving
/// it, and the member writes nothing under the file's name.
#[test]
fn an_owner_whose_file_changed_on_disk_says_so_and_serves_nothing_bad() {
    let (_t, port) = tracker(0);
    let (a_dir, b_dir) = (scratch("changed", "a"), scratch("changed", "b"));
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(a_dir.join("f.bin"), &data).expect("write");
    let mut a = peer("a", &a_dir, port, &[]);
    let mut b = peer("b", &b_dir, port, &[]);
    a.write(b"register-peer f.bin\n");
    a.wait_for("registered f.bin");
    let mut edited = data.clone();
    edited[150_000..151_000].fill(0xEE);
    std::fs::write(a_dir.join("f.bin"), &edited).expect("edit");
    b.write(b"register-group f.bin\n");
    b.wait_for("joined the group of f.bin");
    a.wait_for("group f.bin: peer");
    a.write(b"upload f.bin\n");
    let line = a.wait_for("error: f.bin: stopped sharing it");
    assert!(
        line.contains("chunk 2 of 10") && line.contains("changed on disk"),
        "{line}"
    );
    b.write(b"status\n");
    b.wait_for("f.bin");
    assert!(
        !b.log.iter().any(|l| l.contains("corrupted")),
        "{:?}",
        b.log
    );
    assert!(!b_dir.join("f.bin").exists());
}
