//! Shared by the integration tests and benches that drive the binaries as
//! processes (each `tests/*.rs` is a crate of its own; they take this in
//! with `mod support;`, benches with a `#[path]`).
#![allow(dead_code)] // each crate uses its own part of it

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};

/// Starts `cmd` with its stdin a pipe and its output as a channel of
/// lines: stdout, and with `with_stderr` stderr too (tagged `[stderr] `;
/// otherwise it is discarded).
pub fn spawn_with_lines(cmd: &mut Command, with_stderr: bool) -> (Child, Receiver<String>) {
    let stderr = if with_stderr {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn");
    let (tx, rx) = mpsc::channel();
    if let Some(err) = child.stderr.take() {
        forward_lines(err, "[stderr] ", tx.clone());
    }
    forward_lines(child.stdout.take().expect("stdout"), "", tx);
    (child, rx)
}

/// Forwards every line of `stream` to `tx`, with `tag` in front, on a
/// thread of its own, until the stream ends or nobody listens. A line may
/// end in "\r\n" (a terminal's) or "\n"; bytes that are not UTF-8 are shown
/// as U+FFFD.
pub fn forward_lines(stream: impl Read + Send + 'static, tag: &'static str, tx: Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
            let line = String::from_utf8_lossy(&line);
            if tx
                .send(format!("{tag}{}", line.trim_end_matches('\r')))
                .is_err()
            {
                break;
            }
        }
    });
}

/// A run that failed the way a user should see it: no panic, and a first
/// line on stderr `error: …` that mentions `needle`.
pub fn assert_one_error_line(out: &Output, needle: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} succeeded");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{what}: {stderr}");
    assert!(first.contains(needle), "{what}: {first:?} lacks {needle:?}");
}
