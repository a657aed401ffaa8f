//! Small pieces shared by the binaries: logging set-up from `-v`/`-q`, and
//! parsers for sizes and rates given on the command line.

use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};

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

/// Parses a byte count such as `4000000`, `4MB` (10^6), `4MiB` (2^20), `100k`, `1.5GB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 4MB, 512KiB or 1000000)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1048576.0,
        "g" | "gb" => 1e9,
        "gib" => 1073741824.0,
        other => {
            return Err(format!(
                "unknown size unit '{other}' in '{s}' (use B, KB, KiB, MB, MiB, GB, GiB)"
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
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MB"), Ok(4_000_000));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("100k"), Ok(100_000));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("12345"), Ok(12345));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("").is_err());
    }
}
