//! What a downloading peer shows: one line per chunk received
//! (`chunk 17/31 from 10.0.0.3:7001`), a summary when the file is complete
//! and verified, and, when stdout is a terminal not shared with the line
//! editor, an indicatif progress bar per download. The lines are formatted
//! here (pure, tested); the peer process prints them.

use crate::manifest::{hex, ChunkIndex, Digest32};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// `chunk 17/31 from 10.0.0.3:7001` (chunks are numbered from 1 on screen).
pub fn chunk_line(index: ChunkIndex, chunk_count: u32, from: SocketAddr) -> String {
    format!("chunk {}/{chunk_count} from {from}", u64::from(index) + 1)
}

/// A chunk that failed its SHA-256 check (worded so that it is never taken
/// for a received chunk).
pub fn bad_chunk_line(name: &str, index: ChunkIndex, chunk_count: u32, from: SocketAddr) -> String {
    format!(
        "{name}: threw away a corrupted copy of chunk #{} of {chunk_count} from {from}; asking elsewhere",
        u64::from(index) + 1
    )
}

/// Bytes per second as `4.76 MB/s (38.1 Mbit/s)`.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let bps = bytes as f64 / secs;
    format!("{:.2} MB/s ({:.1} Mbit/s)", bps / 1e6, bps * 8.0 / 1e6)
}

/// What a finished download reports.
#[derive(Debug, Clone)]
pub struct Summary<'a> {
    pub name: &'a str,
    pub path: &'a Path,
    pub size: u64,
    pub chunk_count: u32,
    pub sha256: &'a Digest32,
    /// From the first chunk of this run to the verified file.
    pub elapsed: Duration,
    /// Bytes received in this run.
    pub bytes: u64,
    /// Chunks found in the `.part` file at start.
    pub resumed: u32,
    /// Verified chunks received, by source.
    pub sources: &'a BTreeMap<SocketAddr, u32>,
    /// The owner's address, marked in the source list.
    pub owner: Option<SocketAddr>,
}

impl Summary<'_> {
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!("complete {}: {}", self.name, self.path.display()),
            format!(
                "  size {} bytes ({} chunks), sha256 {} verified",
                self.size,
                self.chunk_count,
                hex(self.sha256)
            ),
            format!(
                "  time {:.2} s, {}",
                self.elapsed.as_secs_f64(),
                rate(self.bytes, self.elapsed)
            ),
        ];
        if self.resumed > 0 {
            out.push(format!(
                "  resumed {} chunks from the .part file",
                self.resumed
            ));
        }
        for (src, n) in self.sources {
            let tag = if Some(*src) == self.owner {
                " (owner)"
            } else {
                ""
            };
            out.push(format!("  from {src}{tag}: {n} chunks"));
        }
        out
    }
}

/// One download as the console sees it.
#[derive(Debug)]
pub struct Download {
    pub name: String,
    pub file: Digest32,
    pub chunk_count: u32,
    pub size: u64,
    /// Chunks held when the download (re)started.
    pub resumed: u32,
    pub first_chunk: Option<Instant>,
    pub bytes: u64,
    pub received: u32,
    pub done: bool,
    bar: Option<ProgressBar>,
}

impl Download {
    pub fn new(name: String, file: Digest32, chunk_count: u32, size: u64, resumed: u32) -> Self {
        Download {
            name,
            file,
            chunk_count,
            size,
            resumed,
            first_chunk: None,
            bytes: 0,
            received: 0,
            done: false,
            bar: None,
        }
    }

    /// A chunk of `len` bytes arrived at `now`.
    pub fn on_chunk(&mut self, now: Instant, len: u64) {
        self.first_chunk.get_or_insert(now);
        self.bytes += len;
        self.received += 1;
        if let Some(bar) = &self.bar {
            bar.inc(len);
        }
    }

    pub fn elapsed(&self, now: Instant) -> Duration {
        self.first_chunk
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    pub fn finish(&mut self) {
        self.done = true;
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Progress bars on stdout, or nothing when stdout is not a terminal (or
/// the line editor owns it: rustyline redraws its prompt on the same line
/// and the two would fight, so the prompt wins and `status` shows progress).
pub struct Bars {
    multi: Option<MultiProgress>,
    /// The bars drawn (handles; finished ones are pruned).
    shown: Vec<ProgressBar>,
}

impl Bars {
    pub fn new(enabled: bool) -> Self {
        Bars {
            multi: enabled.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout())),
            shown: Vec::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.multi.is_some()
    }

    /// Turns bars off for good (the line editor took the terminal).
    pub fn disable(&mut self) {
        self.multi = None;
        self.shown.clear();
    }

    /// Gives `d` a bar, when bars are on.
    pub fn attach(&mut self, d: &mut Download, have: u32) {
        let Some(multi) = &self.multi else {
            return;
        };
        let bar = multi.add(ProgressBar::new(d.size));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(d.name.clone());
        let held = u64::from(have) * u64::from(crate::manifest::CHUNK_SIZE);
        bar.set_position(held.min(d.size));
        self.shown.push(bar.clone());
        d.bar = Some(bar);
    }

    /// Prints a line above the bars; false when no bar is on screen (print
    /// it yourself).
    pub fn println(&mut self, line: &str) -> bool {
        self.shown.retain(|b| !b.is_finished());
        match &self.multi {
            Some(m) if !self.shown.is_empty() => m.println(line).is_ok(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 3], port))
    }

    #[test]
    fn chunk_lines_number_from_one() {
        assert_eq!(
            chunk_line(16, 31, a(7001)),
            "chunk 17/31 from 10.0.0.3:7001"
        );
        let bad = bad_chunk_line("f", 3, 31, a(7001));
        assert!(crate::demo::parse_chunk_line(&bad).is_none(), "{bad}");
    }

    #[test]
    fn summary_lists_every_source() {
        let mut sources = BTreeMap::new();
        sources.insert(a(1), 3);
        sources.insert(a(2), 5);
        let s = Summary {
            name: "f.bin",
            path: Path::new("/d/f.bin"),
            size: 800_000,
            chunk_count: 8,
            sha256: &[0xab; 32],
            elapsed: Duration::from_millis(500),
            bytes: 800_000,
            resumed: 0,
            sources: &sources,
            owner: Some(a(1)),
        };
        let lines = s.lines();
        assert_eq!(lines[0], "complete f.bin: /d/f.bin");
        assert!(lines[1].contains(&"ab".repeat(32)));
        assert!(lines[2].contains("1.60 MB/s"), "{}", lines[2]);
        assert_eq!(lines[3], "  from 10.0.0.3:1 (owner): 3 chunks");
        assert_eq!(lines[4], "  from 10.0.0.3:2: 5 chunks");
        for l in &lines {
            assert!(crate::demo::parse_chunk_line(l).is_none(), "{l}");
        }
    }
}
