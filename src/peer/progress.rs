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
    /// Bytes received after the first chunk (the clock starts with it, so
    /// the rate counts only what came after).
    pub rate_bytes: u64,
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
                "  time {:.2} s from the first chunk, {}",
                self.elapsed.as_secs_f64(),
                if self.rate_bytes > 0 && self.elapsed >= Duration::from_millis(1) {
                    rate(self.rate_bytes, self.elapsed)
                } else {
                    "too short to measure a rate".to_string()
                }
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
    /// Size of the first chunk of this run (the clock starts when it arrives).
    first_len: u64,
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
            first_len: 0,
            received: 0,
            done: false,
            bar: None,
        }
    }

    /// A chunk of `len` bytes arrived at `now`.
    pub fn on_chunk(&mut self, now: Instant, len: u64) {
        if self.first_chunk.is_none() {
            self.first_chunk = Some(now);
            self.first_len = len;
        }
        self.bytes += len;
        self.received += 1;
        if let Some(bar) = &self.bar {
            bar.inc(len);
        }
    }

    /// Bytes received since the clock started (after the first chunk).
    pub fn rate_bytes(&self) -> u64 {
        self.bytes - self.first_len
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

/// indicatif progress bars on stdout, or nothing when stdout is not a
/// terminal. When the line editor owns the terminal these are off (its
/// prompt and indicatif's redraws would fight) and [`PromptBars`] draws.
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

/// Progress bars for a console whose terminal the line editor owns.
///
/// The editor redraws its prompt on the last line, so bars cannot be drawn
/// by indicatif's own terminal handling there. Instead every print above the
/// prompt (through the editor's external printer, which clears the prompt,
/// writes the text and redraws it) first erases the bar lines left directly
/// above the prompt, writes the new line, and draws the bars again: the bars
/// stay pinned above the prompt and the per-chunk lines scroll above them.
#[derive(Debug, Default)]
pub struct PromptBars {
    /// Bar lines directly above the prompt now.
    on_screen: usize,
    last_draw: Option<Instant>,
}

/// Cursor one line up, clear that line, back to its first column.
const ERASE_LINE_ABOVE: &str = "\x1b[1A\x1b[2K\r";

impl PromptBars {
    /// Bars alone (no line to print) are redrawn at most this often.
    pub const REDRAW_EVERY: Duration = Duration::from_millis(250);

    /// The text of one print above the prompt: the old bars erased, `line`
    /// (if any), then `bars`, one per line. Empty when there is nothing to
    /// erase, print or draw.
    pub fn compose(&mut self, now: Instant, line: Option<&str>, bars: &[String]) -> String {
        let mut out = ERASE_LINE_ABOVE.repeat(self.on_screen);
        if let Some(line) = line {
            out.push_str(line);
            out.push('\n');
        }
        for bar in bars {
            out.push_str(bar);
            out.push('\n');
        }
        self.on_screen = bars.len();
        self.last_draw = Some(now);
        out
    }

    /// Whether a redraw of the bars alone is due.
    pub fn due(&self, now: Instant) -> bool {
        self.last_draw
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::REDRAW_EVERY)
    }
}

/// Columns of the terminal on stdout (80 when it cannot be told).
pub fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills the winsize it is given and nothing else;
    // on failure it is left zeroed and the default is used.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// One download's bar as a line of at most `width - 1` characters:
/// `movie.mp4 [=========>          ] 2.00 MiB/4.00 MiB 3.10 MiB/s`.
pub fn bar_line(d: &Download, now: Instant, width: usize) -> String {
    use indicatif::{BinaryBytes, HumanCount};
    const CELLS: usize = 24;
    let resumed = u64::from(d.resumed) * u64::from(crate::manifest::CHUNK_SIZE);
    let held = resumed.saturating_add(d.bytes).min(d.size);
    let filled = if d.size == 0 {
        CELLS
    } else {
        (held as u128 * CELLS as u128 / d.size as u128) as usize
    };
    let mut cells = "=".repeat(filled);
    if filled < CELLS {
        cells.push('>');
        cells.push_str(&" ".repeat(CELLS - filled - 1));
    }
    let secs = d.elapsed(now).as_secs_f64();
    let speed = if secs >= 0.2 {
        format!(" {}/s", BinaryBytes((d.rate_bytes() as f64 / secs) as u64))
    } else {
        String::new()
    };
    let line = format!(
        "{} [{cells}] {}/{} {} chunks{speed}",
        d.name,
        BinaryBytes(held),
        BinaryBytes(d.size),
        HumanCount(u64::from(d.resumed + d.received)),
    );
    line.chars().take(width.saturating_sub(1).max(20)).collect()
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
            rate_bytes: 800_000,
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

    fn download(size: u64) -> Download {
        Download::new("movie.mp4".into(), [7; 32], 4, size, 0)
    }

    #[test]
    fn bar_line_shows_held_bytes_and_fits_the_width() {
        let t0 = Instant::now();
        let mut d = download(409_600);
        d.on_chunk(t0, 102_400);
        assert!(
            !bar_line(&d, t0, 200).contains("/s"),
            "no rate from one chunk"
        );
        d.on_chunk(t0 + Duration::from_secs(1), 102_400);
        let line = bar_line(&d, t0 + Duration::from_secs(1), 200);
        assert!(line.contains(" 100.00 KiB/s"), "{line}");
        assert!(line.starts_with("movie.mp4 [============>"), "{line}");
        assert!(line.contains("200.00 KiB/400.00 KiB"), "{line}");
        assert!(line.contains("2 chunks"), "{line}");
        assert!(line.contains("/s"), "{line}");
        assert_eq!(bar_line(&d, t0, 30).chars().count(), 29);
        assert!(crate::demo::parse_chunk_line(&line).is_none(), "{line}");
    }

    #[test]
    fn a_complete_or_empty_download_is_a_full_bar() {
        let d = download(0);
        assert!(bar_line(&d, Instant::now(), 200).contains(&format!("[{}]", "=".repeat(24))));
    }

    #[test]
    fn prompt_bars_erase_what_they_drew_and_keep_lines_above() {
        let t0 = Instant::now();
        let mut p = PromptBars::default();
        assert!(p.due(t0));
        let bars = vec!["a [>  ]".to_string(), "b [=> ]".to_string()];
        assert_eq!(
            p.compose(t0, Some("chunk 1/4 from 10.0.0.3:1"), &bars),
            "chunk 1/4 from 10.0.0.3:1\na [>  ]\nb [=> ]\n"
        );
        assert!(!p.due(t0 + Duration::from_millis(10)));
        let again = p.compose(t0, None, &bars[..1]);
        assert_eq!(again, format!("{0}{0}a [>  ]\n", ERASE_LINE_ABOVE));
        // The last bar gone: erase it, print the line, draw nothing.
        assert_eq!(
            p.compose(t0, Some("done"), &[]),
            format!("{ERASE_LINE_ABOVE}done\n")
        );
        assert_eq!(p.compose(t0, None, &[]), "");
        assert!(p.due(t0 + PromptBars::REDRAW_EVERY));
    }
}
