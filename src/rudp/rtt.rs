//! Round-trip time estimation: RFC 6298 (SRTT, RTTVAR) with RFC 9002 §5's
//! min_rtt and ack-delay adjustment.
//!
//! RFC 6298 §3 (Karn) forbids samples from retransmitted segments because an
//! acknowledgement of a resent TCP segment is ambiguous. rudp never reuses a
//! packet number: a retransmission carries the lost *data* in a new packet
//! with a new number, so an ACK always names exactly one transmission and
//! every sample is unambiguous (the same reasoning as RFC 9002 §5.1).

use std::time::Duration;

/// RFC 9002 §6.2.2: initial RTT before any sample.
pub const INITIAL_RTT: Duration = Duration::from_millis(333);
/// RFC 9002 §6.1.2: timer granularity.
pub const GRANULARITY: Duration = Duration::from_millis(1);
/// Our delayed-ACK bound (RFC 9000 §13.2.1 suggests 25 ms), advertised implicitly.
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(25);

#[derive(Debug, Clone)]
pub struct RttEstimator {
    latest: Duration,
    smoothed: Option<Duration>,
    var: Duration,
    min: Duration,
}

impl Default for RttEstimator {
    fn default() -> Self {
        RttEstimator::new()
    }
}

impl RttEstimator {
    pub fn new() -> Self {
        RttEstimator {
            latest: INITIAL_RTT,
            smoothed: None,
            var: INITIAL_RTT / 2,
            min: INITIAL_RTT,
        }
    }

    pub fn has_sample(&self) -> bool {
        self.smoothed.is_some()
    }

    /// SRTT, or the initial RTT before any sample.
    pub fn srtt(&self) -> Duration {
        self.smoothed.unwrap_or(INITIAL_RTT)
    }

    pub fn rttvar(&self) -> Duration {
        self.var
    }

    pub fn latest(&self) -> Duration {
        self.latest
    }

    pub fn min(&self) -> Duration {
        self.min
    }

    /// Feeds one sample (`rtt` measured from send to ACK receipt; `ack_delay`
    /// what the peer says it held the ACK).
    pub fn update(&mut self, rtt: Duration, ack_delay: Duration) {
        self.latest = rtt;
        // RFC 9002 §5.2: min_rtt ignores ack delay.
        match self.smoothed {
            None => {
                self.min = rtt;
                // RFC 6298 §2.2: SRTT <- R, RTTVAR <- R/2.
                self.smoothed = Some(rtt);
                self.var = rtt / 2;
            }
            Some(srtt) => {
                self.min = self.min.min(rtt);
                // RFC 9002 §5.3: subtract the ack delay unless that would go below min_rtt.
                let ack_delay = ack_delay.min(MAX_ACK_DELAY);
                let adjusted = if rtt >= self.min + ack_delay {
                    rtt - ack_delay
                } else {
                    rtt
                };
                // RFC 6298 §2.3: beta = 1/4, alpha = 1/8.
                let diff = srtt.abs_diff(adjusted);
                self.var = (self.var * 3 + diff) / 4;
                self.smoothed = Some((srtt * 7 + adjusted) / 8);
            }
        }
    }

    /// RFC 9002 §6.2.1: PTO = smoothed_rtt + max(4*rttvar, kGranularity) + max_ack_delay.
    pub fn pto_base(&self) -> Duration {
        self.srtt() + (self.var * 4).max(GRANULARITY) + MAX_ACK_DELAY
    }

    /// RFC 9002 §6.1.2: loss delay = 9/8 × max(smoothed_rtt, latest_rtt), at least kGranularity.
    pub fn loss_delay(&self) -> Duration {
        (self.srtt().max(self.latest) * 9 / 8).max(GRANULARITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_then_smoothing() {
        let mut r = RttEstimator::new();
        assert_eq!(r.srtt(), INITIAL_RTT);
        r.update(Duration::from_millis(100), Duration::ZERO);
        assert_eq!(r.srtt(), Duration::from_millis(100));
        assert_eq!(r.rttvar(), Duration::from_millis(50));
        r.update(Duration::from_millis(200), Duration::ZERO);
        assert_eq!(r.srtt(), Duration::from_micros(112_500));
        assert_eq!(r.rttvar(), Duration::from_micros(62_500));
        assert_eq!(r.min(), Duration::from_millis(100));
        // Ack delay is subtracted only when it keeps the sample above min_rtt.
        r.update(Duration::from_millis(110), Duration::from_millis(20));
        assert_eq!(r.latest(), Duration::from_millis(110));
        assert!(r.srtt() < Duration::from_micros(112_500));
    }
}
