//! The `demo` binary as a user drives it: odd options are refused with one
//! `error:` line (never a panic), and a demo stopped by a signal leaves no
//! process and (SIGTERM) no directory behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

fn demo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo"));
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_peer"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    cmd.arg("--bin-dir").arg(bin_dir);
    cmd
}

fn run(args: &[&str]) -> Output {
    demo()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run demo")
}

fn one_error_line(out: &Output, needle: &str) {
    support::assert_one_error_line(out, needle, "demo");
}

#[test]
fn odd_options_are_refused_with_one_error_line() {
    for (args, needle) in [
        (&["--size", "100GB"][..], "too large"),
        (&["--size", "1TB"][..], "too large"),
        (&["--loss", "100"][..], "drops every datagram"),
        (&["--loss", "100%"][..], "drops every datagram"),
        (&["--loss", "lots"][..], "not a loss percentage"),
        (&["--max-upload", "0"][..], "no unit"),
        (&["--max-upload", "0MB/s"][..], "zero"),
        (&["--timeout", "0"][..], "--timeout"),
        (&["--peers", "1"][..], "--peers"),
        (
            &["--file", "/nonexistent/file.bin"][..],
            "/nonexistent/file.bin",
        ),
    ] {
        let out = run(&[&["-q"][..], args].concat());
        one_error_line(&out, needle);
    }
}

#[test]
fn a_bare_loss_number_is_a_percentage() {
    // `--loss 30` used to reach the peers as a probability of 30 and kill them.
    let work = scratch("bare_loss");
    let out = run(&[
        "-q",
        "--peers",
        "2",
        "--size",
        "300KB",
        "--loss",
        "30",
        "--timeout",
        "60",
        "--work-dir",
        work.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all 1 copies identical"), "{stdout}");
}

fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli_demo-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// A slow demo (capped uploads), started and waited for until its clients
/// are downloading.
fn slow_demo(work: &Path) -> Child {
    let child = demo()
        .args([
            "-q",
            "--peers",
            "3",
            "--size",
            "20MB",
            "--max-upload",
            "1MB/s",
        ])
        .arg("--work-dir")
        .arg(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demo");
    let deadline = Instant::now() + Duration::from_secs(20);
    let part = work.join("peer1").join("video.bin.part");
    while !part.exists() {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("demo did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for pid in &left {
                // SAFETY: kill(2) on processes this test started (their command line names its dir).
                unsafe {
                    libc::kill(*pid as libc::pid_t, libc::SIGKILL);
                }
            }
            panic!("processes outlived the demo: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_stops_every_process_and_removes_the_directories() {
    let work = scratch("sigterm");
    let mut child = slow_demo(&work);
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_exit(&mut child, Duration::from_secs(15));
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    wait_gone(work.to_str().expect("utf-8 path"), Duration::from_secs(5));
    assert!(!status.success());
    assert!(stderr.contains("error: demo: interrupted"), "{stderr}");
    assert!(!work.exists(), "{} left behind", work.display());
}

#[test]
fn sigkill_of_the_demo_takes_its_processes_along() {
    let work = scratch("sigkill");
    let mut child = slow_demo(&work);
    let _ = child.kill();
    let _ = child.wait();
    wait_gone(work.to_str().expect("utf-8 path"), Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&work);
}

/// With every upload capped, the demo prints its distribution time beside
/// the P2P lower bound and the client-server time (1+2 peers, 1 MB at
/// 2 MB/s: bound max(0.5, 1/3) s, client-server 1 s).
#[test]
fn a_capped_demo_prints_the_bounds() {
    let work = scratch("bounds");
    let out = run(&[
        "-q",
        "--peers",
        "3",
        "--size",
        "1MB",
        "--max-upload",
        "2MB/s",
        "--work-dir",
        work.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("every upload capped at 2.00 MB/s"))
        .unwrap_or_else(|| panic!("no bounds line:\n{stdout}"));
    assert!(
        line.contains("P2P lower bound max(F/u_s, N·F/(u_s+Σu_i)) 0.50s"),
        "{line}"
    );
    assert!(line.contains("client-server N·F/u_s 1.00s"), "{line}");
    assert!(line.contains("x the P2P lower bound"), "{line}");
}
