//! The loss lab: reproducible experiments on one Linux machine. Network
//! namespaces joined through a router namespace that imposes rate, delay and
//! loss (netem where the kernel has it, our NFQUEUE delayer otherwise), and the
//! experiments run there: `compare` (rudp against TCP), `grid`, `swarm`.
//!
//! - [`units`]: rates, durations, percentages, sizes as written on the command line.
//! - [`delay_line`]: the delayer's loss and release decisions (sans-IO).
//! - [`nfqueue`]: the delayer's raw-netlink NFQUEUE driver.
//! - [`process`], [`topology`]: running tools, namespaces, links, teardown.
//! - [`probe`]: measuring a path's RTT and loss before an experiment.
//! - [`compare`], [`grid`], [`swarm`]: the experiments and their reports.

pub mod compare;
pub mod delay_line;
pub mod grid;
pub mod nfqueue;
pub mod probe;
pub mod process;
pub mod swarm;
pub mod topology;
pub mod units;

use std::fmt;

/// Why an experiment could not run.
#[derive(Debug)]
pub enum LabError {
    /// The lab needs root (namespaces, tc, iptables).
    NotRoot,
    /// A tool is not installed.
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    Spawn {
        cmd: String,
        err: std::io::Error,
    },
    Command {
        cmd: String,
        status: Option<i32>,
        stderr: String,
    },
    Timeout {
        cmd: String,
        after: std::time::Duration,
    },
    Interrupted,
    Setup(String),
    /// A tool's output could not be read.
    BadOutput {
        tool: String,
        detail: String,
    },
    Io {
        what: &'static str,
        err: std::io::Error,
    },
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::NotRoot => write!(
                f,
                "netlab needs root (network namespaces, tc and iptables); run it with sudo"
            ),
            LabError::MissingTool { tool, package } => {
                write!(f, "{tool} is not installed (apt-get install -y {package})")
            }
            LabError::Spawn { cmd, err } => write!(f, "could not start `{cmd}`: {err}"),
            LabError::Command {
                cmd,
                status,
                stderr,
            } => {
                let status = status.map_or("a signal".to_string(), |s| format!("status {s}"));
                let detail = stderr.lines().last().unwrap_or("");
                write!(f, "`{cmd}` failed with {status}: {detail}")
            }
            LabError::Timeout { cmd, after } => {
                write!(f, "`{cmd}` did not finish within {} s", after.as_secs())
            }
            LabError::Interrupted => write!(f, "interrupted; namespaces removed"),
            LabError::Setup(s) => write!(f, "{s}"),
            LabError::BadOutput { tool, detail } => {
                write!(f, "could not read the output of {tool}: {detail}")
            }
            LabError::Io { what, err } => write!(f, "{what}: {err}"),
        }
    }
}

impl std::error::Error for LabError {}

/// Tools the lab runs, with the Debian package that provides each.
pub const REQUIRED_TOOLS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("iptables", "iptables"),
    ("ethtool", "ethtool"),
    ("ping", "iputils-ping"),
    ("sysctl", "procps"),
];

/// Finds `tool` on PATH (or the usual sbin directories).
pub fn find_tool(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(std::path::PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Checks that we are root and that every required tool is present.
pub fn check_environment() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    for (tool, package) in REQUIRED_TOOLS {
        if find_tool(tool).is_none() {
            return Err(LabError::MissingTool { tool, package });
        }
    }
    Ok(())
}
