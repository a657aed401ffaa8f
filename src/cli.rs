//! Small pieces shared by the binaries: logging set-up from `-v`/`-q`, and
//! parsers for sizes and rates given on the command line.

use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};
use std::time::Duration;

/// The `-v`/`-q` flags every binary takes; flatten it into a clap parser.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Verbosity {
    /// More log output on stderr (repeat for more; the default level is info).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, display_order = 900)]
    pub verbose: u8,
    /// Less log output on stderr (repeat for less: -q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, display_order = 901)]
    pub quiet: u8,
}

impl Verbosity {
    /// Starts logging at the level these flags ask for.
    pub fn init_logging(self) {
        init_logging(self.verbose, self.quiet);
    }
}

/// Logs to stderr: info by default, each `-v` one level more, each `-q` one less.
pub fn init_logging(verbose: u8, quiet: u8) {
    let level = match 3i16 + verbose as i16 - quiet as i16 {
        i16::MIN..=0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let config = ConfigBuilder::new()
        .set_time_level(LevelFilter::Debug)
        .set_target_level(LevelFilter::Debug)
        .set_thread_level(LevelFilter::Off)
        .build();
    let _ = TermLogger::init(level, config, TerminalMode::Stderr, ColorChoice::Never);
}

/// `" 12.5MS "` → (12.5, "ms"): the leading number (finite, >= 0) and the
/// lower-cased unit after it; None when there is no number.
fn number_and_unit(s: &str) -> Option<(f64, String)> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    value
        .is_finite()
        .then(|| (value, unit.trim().to_lowercase()))
}

/// A duration: `40ms`, `1.5s`, `250us`, `2m`; a bare number is milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (v, unit) =
        number_and_unit(s).ok_or_else(|| format!("invalid duration '{s}' (e.g. 40ms)"))?;
    let secs = match unit.as_str() {
        "" | "ms" => v / 1e3,
        "s" | "sec" => v,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "m" | "min" => v * 60.0,
        other => return Err(format!("unknown time unit '{other}' in '{s}'")),
    };
    if (0.0..=86_400.0 * 365.0).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("duration '{s}' is out of range"))
    }
}

/// A run length: a bare number is seconds here (`--secs 10`), or a
/// duration with a unit (`500ms`); never zero.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let err = || format!("'{s}' is not a number of seconds (e.g. 10)");
    let d = match number_and_unit(s) {
        Some((v, unit)) if unit.is_empty() => {
            if v > 86_400.0 {
                return Err(err());
            }
            Duration::from_secs_f64(v)
        }
        Some(_) => parse_duration(s).map_err(|_| err())?,
        None => return Err(err()),
    };
    if d.is_zero() {
        return Err(err());
    }
    Ok(d)
}

/// A probability: `1%`, `0.5 %` or `0.01`, within [0, 1].
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 0.01),
        None => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid probability '{s}' (e.g. 1% or 0.01)"))?;
    let v = v * scale;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("probability '{s}' is outside 0..100%"))
    }
}

/// Parses a byte count such as `4000000`, `4MB` (10^6), `4MiB` (2^20), `100k`, `1.5GB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (value, unit) = number_and_unit(s)
        .ok_or_else(|| format!("'{s}' is not a size (try 4MB, 512KiB or 1000000)"))?;
    let mult: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1048576.0,
        "g" | "gb" => 1e9,
        "gib" => 1073741824.0,
        "t" | "tb" => 1e12,
        "tib" => 1099511627776.0,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{s}' (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            ))
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size '{s}' is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a rate into bytes per second: a size per second (`2MB/s`,
/// `512KiB/s`) or a link rate in bits (`20mbit`, `1.5gbit`, `800kbit`; see
/// [`crate::lab::units::Rate`]).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bytes = match t.strip_suffix("/s") {
        Some(size) => parse_size(size)?,
        None if number_and_unit(t).is_some_and(|(v, unit)| v == 0.0 && !unit.is_empty()) => 0,
        None if number_and_unit(t).is_some_and(|(_, unit)| unit.is_empty()) => {
            return Err(format!(
                "'{s}' has no unit; say 20mbit (bits per second) or 2MB/s (bytes per second)"
            ))
        }
        None => t
            .parse::<crate::lab::units::Rate>()
            .map_err(|_| format!("'{s}' is not a rate (try 20mbit or 2MB/s)"))?
            .bytes_per_sec(),
    };
    if bytes == 0 {
        return Err(format!("rate '{s}' is zero; give a positive rate"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2MB/s"), Ok(2_000_000));
        assert_eq!(parse_rate("512KiB/s"), Ok(512 * 1024));
        assert_eq!(parse_rate("20mbit"), Ok(2_500_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("0mbit").unwrap_err().contains("zero"));
        assert!(parse_rate("0").unwrap_err().contains("no unit"));
        assert!(parse_rate("2000000").unwrap_err().contains("no unit"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MB"), Ok(4_000_000));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("100k"), Ok(100_000));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("12345"), Ok(12345));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn fractions_accept_percent_and_plain() {
        assert_eq!(parse_fraction("1%"), Ok(0.01));
        assert_eq!(parse_fraction("0.5%"), Ok(0.005));
        assert_eq!(parse_fraction("0.01"), Ok(0.01));
        assert_eq!(parse_fraction(" 50 %"), Ok(0.5));
        assert_eq!(parse_fraction("0"), Ok(0.0));
        for bad in ["", "%", "101%", "2", "-1", "-1%", "x", "NaN", "5 percent"] {
            assert!(parse_fraction(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_have_units() {
        assert_eq!(parse_duration("40ms"), Ok(Duration::from_millis(40)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_millis(7)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        for bad in [
            "",
            "ms",
            "-1ms",
            "3 weeks",
            "5 parsecs",
            "1e400s",
            "1e999s",
            "99999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("0ms").is_err());
        assert!(parse_seconds("x").is_err());
    }
}
