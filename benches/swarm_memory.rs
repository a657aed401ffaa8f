//! A large file between two `peer` processes on loopback: the peak resident
//! memory (VmHWM in /proc/PID/status) of each peer must stay under 64 MB,
//! whatever the file size (chunks go straight to disk, the transport's and
//! the node's buffers are bounded).
//!
//! `cargo bench --bench swarm_memory` (1 GiB); `-- --size 256MiB` for a
//! shorter run. Prints the transfer time and each peer's VmHWM; exits 1 if
//! a peer went over the limit or the copy is wrong. Linux only (/proc).

use chunkswarm::cli::parse_size;
use chunkswarm::rng::Rng;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

const LIMIT_KB: u64 = 64 * 1000;
const FILE: &str = "big.bin";

struct Proc {
    child: Child,
    rx: Receiver<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let (child, rx) = support::spawn_with_lines(&mut cmd, false);
        Proc { child, rx }
    }

    fn send(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    fn expect(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => {
                    eprintln!("error: no line with {needle:?} within {within:?}");
                    std::process::exit(1);
                }
            }
        }
    }

    /// A field of /proc/PID/status, in kB.
    fn status_kb(&self, field: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = s.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peer(dir: &Path, port: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_peer"));
    cmd.arg("--dir")
        .arg(dir)
        .args(["--bind", "127.0.0.1", "--quiet-chunks", "127.0.0.1", port]);
    let mut p = Proc::spawn(cmd);
    p.expect("online", Duration::from_secs(10));
    p
}

fn main() {
    let mut size: u64 = 1 << 30;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--size" {
            match args.next().map(|s| parse_size(&s)) {
                Some(Ok(s)) => size = s,
                _ => {
                    eprintln!("error: --size needs a size such as 1GiB");
                    std::process::exit(2);
                }
            }
        }
    }
    let work = std::env::temp_dir().join(format!("chunkswarm-memory-{}", std::process::id()));
    let (owner_dir, member_dir) = (work.join("owner"), work.join("member"));
    for d in [&owner_dir, &member_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    // The file, written in 1 MiB pieces (so the bench itself stays small).
    {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(owner_dir.join(FILE)).expect("create"));
        let mut rng = Rng::new(7);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).expect("write");
            left -= n as u64;
        }
        f.flush().expect("flush");
    }

    let mut tracker = Proc::spawn({
        let mut c = Command::new(env!("CARGO_BIN_EXE_tracker"));
        c.args(["--bind", "127.0.0.1", "0"]);
        c
    });
    let line = tracker.expect("tracker listening on", Duration::from_secs(10));
    let port = line.rsplit(':').next().unwrap_or("0").trim().to_string();
    let mut owner = peer(&owner_dir, &port);
    let mut member = peer(&member_dir, &port);
    owner.send(&format!("register-peer {FILE}"));
    owner.expect(&format!("registered {FILE}"), Duration::from_secs(120));
    member.send(&format!("register-group {FILE}"));
    member.expect("joined the group", Duration::from_secs(10));
    let start = Instant::now();
    owner.send(&format!("upload {FILE}"));
    member.expect(&format!("complete {FILE}"), Duration::from_secs(600));
    let secs = start.elapsed().as_secs_f64();
    let verified = member.expect("sha256", Duration::from_secs(10));
    let owner_hwm = owner.status_kb("VmHWM:");
    let member_hwm = member.status_kb("VmHWM:");
    drop((owner, member, tracker));
    let _ = std::fs::remove_dir_all(&work);

    println!(
        "{} bytes between two peers on loopback in {secs:.2} s ({:.0} Mbit/s); {}",
        size,
        size as f64 * 8.0 / secs / 1e6,
        if verified.contains("verified") {
            "copy verified"
        } else {
            "copy NOT verified"
        }
    );
    let mut ok = verified.contains("verified");
    for (who, hwm) in [("owner", owner_hwm), ("member", member_hwm)] {
        match hwm {
            Some(kb) => {
                let pass = kb < LIMIT_KB;
                ok &= pass;
                println!(
                    "{who:>6}: peak resident memory (VmHWM) {:.1} MB {}",
                    kb as f64 / 1000.0,
                    if pass {
                        "< 64 MB: ok"
                    } else {
                        ">= 64 MB: TOO MUCH"
                    }
                );
            }
            None => {
                ok = false;
                println!("{who:>6}: VmHWM unavailable (not Linux?)");
            }
        }
    }
    std::process::exit(if ok { 0 } else { 1 });
}
