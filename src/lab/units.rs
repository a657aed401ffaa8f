//! The quantities an experiment is written in: link rates (`100mbit`),
//! durations (`40ms`) and percentages (`1%`), parsed the way `tc` spells them
//! so a command line reads like the tc one it replaces. (Sizes: `cli::parse_size`.)

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why a quantity on the command line was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseQuantityError {
    what: &'static str,
    input: String,
}

impl ParseQuantityError {
    fn new(what: &'static str, input: &str) -> Self {
        ParseQuantityError {
            what,
            input: input.to_string(),
        }
    }
}

impl fmt::Display for ParseQuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {:?} as {}", self.input, self.what)
    }
}

impl std::error::Error for ParseQuantityError {}

/// Splits `"40ms"` into `(40.0, "ms")`; the number must be finite and >= 0.
fn split_number(s: &str) -> Option<(f64, String)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let value: f64 = s[..end].parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some((value, s[end..].trim().to_ascii_lowercase()))
}

/// A link rate in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate {
    bits_per_sec: u64,
}

impl Rate {
    pub const fn from_bits_per_sec(bits_per_sec: u64) -> Self {
        Rate { bits_per_sec }
    }

    pub fn from_mbit(mbit: f64) -> Self {
        Rate::from_bits_per_sec((mbit * 1e6).round() as u64)
    }

    pub fn bits_per_sec(self) -> u64 {
        self.bits_per_sec
    }

    pub fn bytes_per_sec(self) -> u64 {
        self.bits_per_sec / 8
    }

    pub fn mbit(self) -> f64 {
        self.bits_per_sec as f64 / 1e6
    }

    /// Bytes that cross the link in `d` (a bandwidth-delay product).
    pub fn bytes_in(self, d: Duration) -> u64 {
        (self.bits_per_sec as u128 * d.as_nanos() / 8 / 1_000_000_000) as u64
    }

    /// Time to move `bytes` at this rate; `None` for a zero rate.
    pub fn time_for(self, bytes: u64) -> Option<Duration> {
        if self.bits_per_sec == 0 {
            return None;
        }
        Some(Duration::from_secs_f64(
            bytes as f64 * 8.0 / self.bits_per_sec as f64,
        ))
    }

    /// The rate as tc writes it, in bit/s (`100000000bit`).
    pub fn tc_arg(self) -> String {
        format!("{}bit", self.bits_per_sec)
    }
}

impl FromStr for Rate {
    type Err = ParseQuantityError;

    /// `100mbit`, `1.5gbit`, `800kbit`, `12500000bit`, `100mbps`
    /// (tc's spelling: `mbps` is megabytes per second), or a plain number of bit/s.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseQuantityError::new("a rate (e.g. 100mbit)", s);
        let (value, unit) = split_number(s).ok_or_else(err)?;
        let scale = match unit.as_str() {
            "" | "bit" | "bps" => 1.0,
            "k" | "kbit" => 1e3,
            "m" | "mbit" => 1e6,
            "g" | "gbit" => 1e9,
            "kbps" => 8e3,
            "mbps" => 8e6,
            "gbps" => 8e9,
            _ => return Err(err()),
        };
        let bits = value * scale;
        if !(1.0..=1e12).contains(&bits) {
            return Err(err());
        }
        Ok(Rate::from_bits_per_sec(bits.round() as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bits_per_sec as f64;
        if b >= 1e9 {
            write!(f, "{}gbit", b / 1e9)
        } else if b >= 1e6 {
            write!(f, "{}mbit", b / 1e6)
        } else if b >= 1e3 {
            write!(f, "{}kbit", b / 1e3)
        } else {
            write!(f, "{}bit", self.bits_per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_in_tc_spelling() {
        assert_eq!(
            "100mbit".parse::<Rate>().unwrap().bits_per_sec(),
            100_000_000
        );
        assert_eq!(
            "1.5gbit".parse::<Rate>().unwrap().bits_per_sec(),
            1_500_000_000
        );
        assert_eq!("800kbit".parse::<Rate>().unwrap().bits_per_sec(), 800_000);
        assert_eq!("20M".parse::<Rate>().unwrap().bits_per_sec(), 20_000_000);
        assert_eq!("1mbps".parse::<Rate>().unwrap().bits_per_sec(), 8_000_000);
        assert_eq!("12345".parse::<Rate>().unwrap().bits_per_sec(), 12_345);
        for bad in ["", "mbit", "-5mbit", "10 furlongs", "0", "1e3mbit", "nan"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!(Rate::from_mbit(100.0).to_string(), "100mbit");
        assert_eq!(Rate::from_mbit(100.0).tc_arg(), "100000000bit");
    }

    #[test]
    fn rate_arithmetic() {
        let r = Rate::from_mbit(100.0);
        assert_eq!(r.bytes_in(Duration::from_millis(40)), 500_000);
        assert_eq!(r.time_for(12_500_000), Some(Duration::from_secs(1)));
        assert_eq!(Rate::from_bits_per_sec(0).time_for(1), None);
    }
}
