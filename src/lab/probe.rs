//! Measuring the path before an experiment: ping from one host to another
//! through the router, many small samples, and the loss and RTT they saw.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::process;
use super::topology::Namespace;
use super::LabError;

/// What the probes saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathMeasurement {
    pub sent: u32,
    pub received: u32,
    pub rtt_min_ms: f64,
    pub rtt_avg_ms: f64,
    pub rtt_max_ms: f64,
    /// Median of the replies' round-trip times: the RTT the path imposes,
    /// robust to the few replies a busy machine schedules late (NaN if none).
    pub rtt_median_ms: f64,
}

impl PathMeasurement {
    /// Fraction of echo round trips that failed (a request or its reply lost).
    pub fn round_trip_loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.received as f64 / self.sent as f64
    }

    /// The per-direction loss that explains the round-trip loss, assuming the
    /// same independent loss each way: 1 − √(1 − round-trip loss).
    pub fn one_way_loss(&self) -> f64 {
        1.0 - (1.0 - self.round_trip_loss()).max(0.0).sqrt()
    }
}

/// How far a one-way loss estimate from `n` probes may sit from the true
/// per-direction loss `p`: three standard errors (binomial on the round trip,
/// carried through 1 − √(1 − q)), plus 0.1 percentage point.
pub fn one_way_loss_tolerance(p: f64, n: u32) -> f64 {
    let q = 1.0 - (1.0 - p) * (1.0 - p);
    let se_q = (q * (1.0 - q) / n.max(1) as f64).sqrt();
    let se_p = se_q / (2.0 * (1.0 - q).max(1e-9).sqrt());
    3.0 * se_p + 0.001
}

/// Reads iputils `ping` output: the per-reply `time=` lines and the summary.
pub fn parse_ping(text: &str) -> Option<PathMeasurement> {
    let counts = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut fields = counts.split(',');
    let sent = fields.next()?.split_whitespace().next()?.parse().ok()?;
    let received = fields.next()?.split_whitespace().next()?.parse().ok()?;
    let mut m = PathMeasurement {
        sent,
        received,
        rtt_min_ms: f64::NAN,
        rtt_avg_ms: f64::NAN,
        rtt_max_ms: f64::NAN,
        rtt_median_ms: f64::NAN,
    };
    let mut times: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    if !times.is_empty() {
        times.sort_by(f64::total_cmp);
        m.rtt_median_ms = times[times.len() / 2];
    }
    if let Some(rtt) = text
        .lines()
        .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
    {
        let values = rtt.split('=').nth(1)?.split_whitespace().next()?;
        let v: Vec<f64> = values.split('/').filter_map(|x| x.parse().ok()).collect();
        if v.len() < 3 {
            return None;
        }
        (m.rtt_min_ms, m.rtt_avg_ms, m.rtt_max_ms) = (v[0], v[1], v[2]);
    }
    Some(m)
}

/// Sends `count` pings from `from` to `to`, one every `interval`.
pub fn measure_path(
    from: &Namespace,
    to: Ipv4Addr,
    count: u32,
    interval: Duration,
) -> Result<PathMeasurement, LabError> {
    let deadline = (interval * count * 5).as_secs() + 3;
    let args = [
        "-n".to_string(),
        "-c".into(),
        count.to_string(),
        "-i".into(),
        format!("{:.3}", interval.as_secs_f64()),
        "-W".into(),
        "1".into(),
        to.to_string(),
    ];
    let out = process::output(from.exec("ping", &args), Duration::from_secs(deadline + 5))?;
    parse_ping(&out.stdout).ok_or_else(|| LabError::BadOutput {
        tool: "ping".into(),
        detail: format!("{} {}", out.stdout.trim(), out.stderr.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "PING 10.77.2.1 (10.77.2.1) 56(84) bytes of data.\n\n--- 10.77.2.1 ping statistics ---\n600 packets transmitted, 576 received, 4% packet loss, time 1399ms\nrtt min/avg/max/mdev = 20.112/20.345/21.873/0.201 ms, pipe 11\n";

    #[test]
    fn reads_counts_and_rtts() {
        let m = parse_ping(OUT).unwrap();
        assert_eq!((m.sent, m.received), (600, 576));
        assert_eq!(
            (m.rtt_min_ms, m.rtt_avg_ms, m.rtt_max_ms),
            (20.112, 20.345, 21.873)
        );
        assert!((m.round_trip_loss() - 0.04).abs() < 1e-12);
        assert!((m.one_way_loss() - 0.020204).abs() < 1e-5);
    }

    #[test]
    fn median_of_the_replies_ignores_late_outliers() {
        let text = "64 bytes from 10.77.2.1: icmp_seq=1 ttl=63 time=20.1 ms\n\
                    64 bytes from 10.77.2.1: icmp_seq=2 ttl=63 time=20.3 ms\n\
                    64 bytes from 10.77.2.1: icmp_seq=3 ttl=63 time=95.0 ms\n\
                    64 bytes from 10.77.2.1: icmp_seq=4 ttl=63 time=20.2 ms\n\
                    64 bytes from 10.77.2.1: icmp_seq=5 ttl=63 time=20.4 ms\n\
                    5 packets transmitted, 5 received, 0% packet loss, time 20ms\n\
                    rtt min/avg/max/mdev = 20.1/35.2/95.0/30.0 ms\n";
        let m = parse_ping(text).unwrap();
        assert_eq!(m.rtt_median_ms, 20.3);
        assert_eq!(m.rtt_avg_ms, 35.2);
        assert!(parse_ping(OUT).unwrap().rtt_median_ms.is_nan());
    }

    #[test]
    fn no_replies_means_no_rtt_but_a_count() {
        let m =
            parse_ping("5 packets transmitted, 0 received, +5 errors, 100% packet loss").unwrap();
        assert_eq!(m.received, 0);
        assert!(m.rtt_avg_ms.is_nan());
        assert_eq!(m.one_way_loss(), 1.0);
        assert_eq!(parse_ping("garbage"), None);
        assert_eq!(parse_ping("x packets transmitted, 1 received"), None);
    }

    #[test]
    fn tolerance_shrinks_with_more_probes() {
        let few = one_way_loss_tolerance(0.02, 100);
        let many = one_way_loss_tolerance(0.02, 10_000);
        assert!(few > many && many > 0.001);
        assert!((0.01..0.04).contains(&few), "{few}");
        assert!((one_way_loss_tolerance(0.0, 600) - 0.001).abs() < 1e-12);
    }
}
