//! Shared by the integration tests and benches that drive the binaries as
//! processes (each `tests/*.rs` is a crate of its own; they take this in
//! with `mod support;`, benches with a `#[path]`).
#![allow(dead_code)] // each crate uses its own part of it

use std::io::{BufRead, BufReader, Read};
use std::process::Output;
use std::sync::mpsc::Sender;

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
