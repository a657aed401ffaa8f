//! Running the tools an experiment needs (ip, tc, iptables, ping, the perf
//! programs), each bounded in time, and noticing Ctrl-C so that the RAII guards
//! above can tear the namespaces down on the way out.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::LabError;

static INTERRUPT: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn interrupt_flag() -> &'static Arc<AtomicBool> {
    INTERRUPT.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Turns SIGINT, SIGTERM and SIGHUP into a flag that every wait below checks,
/// so an interrupted experiment unwinds through its guards and cleans up.
pub fn install_interrupt_handlers() -> Result<(), LabError> {
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(interrupt_flag())).map_err(|err| {
            LabError::Io {
                what: "installing a signal handler",
                err,
            }
        })?;
    }
    Ok(())
}

/// The shared stop flag (the delayer stops on it too).
pub fn interrupt() -> Arc<AtomicBool> {
    Arc::clone(interrupt_flag())
}

pub fn interrupted() -> bool {
    interrupt_flag().load(Ordering::Relaxed)
}

/// Sleeps up to `d`, returning early with an error when interrupted.
pub fn sleep(d: Duration) -> Result<(), LabError> {
    let end = Instant::now() + d;
    loop {
        if interrupted() {
            return Err(LabError::Interrupted);
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// What a finished command printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Starts `cmd` with no stdin and its stdout and stderr captured.
fn spawn_piped(cmd: &mut Command, what: &str) -> Result<Child, LabError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| LabError::Spawn {
            cmd: what.to_string(),
            err,
        })
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = r.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `cmd` to completion within `limit`; killed on timeout or Ctrl-C.
/// A non-zero exit is returned as an `Output`, not an error.
pub fn output(cmd: Command, limit: Duration) -> Result<Output, LabError> {
    output_with(cmd, limit, true)
}

/// Runs a teardown step: like [`run`], but Ctrl-C does not cut it short.
pub fn run_to_completion(cmd: Command) -> Result<String, LabError> {
    let what = describe(&cmd);
    checked(what, output_with(cmd, Duration::from_secs(30), false)?)
}

fn output_with(mut cmd: Command, limit: Duration, interruptible: bool) -> Result<Output, LabError> {
    let what = describe(&cmd);
    let mut child = spawn_piped(&mut cmd, &what)?;
    let out = child.stdout.take().map(collect);
    let err = child.stderr.take().map(collect);
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(err) => {
                return Err(LabError::Io {
                    what: "waiting for a child",
                    err,
                })
            }
        }
        let stop = interruptible && interrupted();
        if stop || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(if stop {
                LabError::Interrupted
            } else {
                LabError::Timeout {
                    cmd: what,
                    after: limit,
                }
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let join = |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(Output {
        status: status.code(),
        stdout: join(out),
        stderr: join(err),
    })
}

/// Runs `cmd` and fails with its stderr when it exits non-zero.
pub fn run(cmd: Command) -> Result<String, LabError> {
    let what = describe(&cmd);
    checked(what, output(cmd, Duration::from_secs(30))?)
}

fn checked(what: String, out: Output) -> Result<String, LabError> {
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(LabError::Command {
            cmd: what,
            status: out.status,
            stderr: out.stderr.trim().to_string(),
        })
    }
}

/// Directories the lab's tools (ip, tc, iptables, sysctl) live in, which a
/// user's or sudo's PATH may lack.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// `path` (a PATH value) with the `SBIN_DIRS` it lacks appended.
fn path_with_sbin(path: Option<&std::ffi::OsStr>) -> std::ffi::OsString {
    let mut dirs: Vec<std::path::PathBuf> =
        path.map_or_else(Vec::new, |p| std::env::split_paths(p).collect());
    for d in SBIN_DIRS {
        if !dirs.iter().any(|x| x.as_os_str() == d) {
            dirs.push(d.into());
        }
    }
    // Joining fails only on a directory containing ':', which came from PATH itself.
    std::env::join_paths(&dirs)
        .unwrap_or_else(|_| path.map(|p| p.to_os_string()).unwrap_or_default())
}

/// Builds a command from a program and its arguments. The program is looked
/// up (and runs, with `ip netns exec` too) on PATH plus /usr/sbin and /sbin.
pub fn command<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Command {
    static PATH: OnceLock<std::ffi::OsString> = OnceLock::new();
    let path = PATH.get_or_init(|| path_with_sbin(std::env::var_os("PATH").as_deref()));
    let mut c = Command::new(program);
    c.env("PATH", path);
    c.args(args);
    c
}

/// A program running in the background for the length of an experiment
/// (a server, the delayer). Dropping it stops it: SIGTERM, then SIGKILL.
pub struct Background {
    what: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<String>>,
}

impl Background {
    /// Starts `cmd`; it dies with us (PR_SET_PDEATHSIG) even if we are killed.
    pub fn spawn(mut cmd: Command) -> Result<Background, LabError> {
        use std::os::unix::process::CommandExt;
        let what = describe(&cmd);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = spawn_piped(&mut cmd, &what)?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stdout.take().map(|out| {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            })
        });
        let stderr = child.stderr.take().map(collect);
        Ok(Background {
            what,
            child,
            lines,
            reader,
            stderr,
        })
    }

    pub fn describe(&self) -> &str {
        &self.what
    }

    /// Waits until a stdout line satisfies `pred`, the program exits, or `limit` passes.
    pub fn wait_for_line(
        &mut self,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, LabError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .ok()
                .and_then(|l| l.iter().find(|l| pred(l)).cloned())
            {
                return Ok(l);
            }
            if interrupted() {
                return Err(LabError::Interrupted);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let stderr = self.take_stderr();
                return Err(LabError::Command {
                    cmd: self.what.clone(),
                    status: status.code(),
                    stderr,
                });
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    cmd: self.what.clone(),
                    after: limit,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Stops the program (SIGTERM, then SIGKILL after `grace`) and returns its stdout lines.
    pub fn stop(mut self, grace: Duration) -> Vec<String> {
        self.terminate(grace);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn terminate(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.terminate(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sbin_is_appended_to_path_once() {
        let p = path_with_sbin(Some(std::ffi::OsStr::new("/bin:/usr/sbin")));
        assert_eq!(p, "/bin:/usr/sbin:/usr/local/sbin:/sbin");
        assert_eq!(path_with_sbin(None), "/usr/local/sbin:/usr/sbin:/sbin");
    }

    use super::*;
}
