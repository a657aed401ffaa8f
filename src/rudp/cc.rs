//! Congestion control behind one trait, a token-bucket pacer, and
//! delivery-rate sampling.
//!
//! - [`NewReno`]: RFC 5681 / RFC 6582 as adapted by RFC 9002 §7 (one window
//!   reduction per round trip of loss; persistent congestion collapses to the
//!   minimum window). It is the reference that behaves like TCP.
//! - [`Bbr`]: model-based, in the spirit of BBR (draft-cardwell-iccrg-bbr):
//!   a windowed max of delivery-rate samples over 10 rounds (bottleneck
//!   bandwidth), a 10-second min-RTT filter, a pacing-gain cycle, and a window
//!   of one BDP plus a fixed 128 KB. Random loss is *not* congestion: a round
//!   counts as congested only if it lost more than the long-run random rate
//!   explains (by [`Bbr::LOSS_THRESH`], BBRv2's 2%, plus a few binomial
//!   standard deviations) *and* even its smallest RTT sample is above
//!   [`Bbr::QUEUE_RTT_FACTOR`] × min RTT (a queue). A congested round cuts
//!   `inflight_hi` by [`Bbr::BETA`] (as in BBRv2), at most once per round
//!   trip, ends Startup, and in ProbeBW starts a ProbeRTT (see
//!   [`Bbr::OVERFLOW_PROBE_RTT_INTERVAL`]); the bound then grows back 1, 2,
//!   4, 8, … packets per round (BBRv3 ProbeBW_UP). So a drop-tail queue
//!   overflow still backs the flow off. Pacing and window are raised by the
//!   long-run loss rate so random loss does not idle the link.
//! - [`DeliveryRateEstimator`][]: draft-cheng-iccrg-delivery-rate-estimation.
//! - [`Pacer`][]: a token bucket releasing bytes at the controller's pacing rate.

use super::rtt::RttEstimator;
use super::CcKind;
use crate::rng::Rng;
use std::time::{Duration, Instant};

/// What one ACK told the controller.
#[derive(Debug, Clone, Copy)]
pub struct AckEvent {
    pub now: Instant,
    /// Bytes newly acknowledged by this ACK (ack-eliciting packets only).
    pub bytes_acked: u64,
    /// Send time of the most recently sent packet this ACK newly acknowledged.
    pub largest_sent_time: Instant,
    /// Bytes in flight after processing the ACK.
    pub in_flight: u64,
    pub rate: Option<RateSample>,
}

/// Loss declared while processing an ACK or a timeout.
#[derive(Debug, Clone, Copy)]
pub struct LossEvent {
    pub now: Instant,
    pub bytes_lost: u64,
    pub packets_lost: u64,
    /// Send time of the most recently sent lost packet.
    pub largest_sent_time: Instant,
    /// RFC 9002 §7.6: losses spanning more than the persistent-congestion duration.
    pub persistent: bool,
    pub in_flight: u64,
}

pub trait Controller: Send {
    fn on_packet_sent(&mut self, now: Instant, bytes: u64, in_flight: u64);
    fn on_ack(&mut self, ev: &AckEvent, rtt: &RttEstimator);
    fn on_loss(&mut self, ev: &LossEvent, rtt: &RttEstimator);
    /// Congestion window in bytes.
    fn window(&self) -> u64;
    /// Bytes per second the pacer should release.
    fn pacing_rate(&self, rtt: &RttEstimator) -> u64;
    fn name(&self) -> &'static str;
}

/// A controller of `kind`; `seed` feeds its random choices (BBR's ProbeBW
/// phase), so that flows started together do not probe in lockstep.
pub fn new_controller(kind: CcKind, mss: u64, seed: u64) -> Box<dyn Controller> {
    match kind {
        CcKind::NewReno => Box::new(NewReno::new(mss)),
        CcKind::Bbr => Box::new(Bbr::new(mss, seed)),
    }
}

/// RFC 9002 §7.2: initial window min(10 × max_datagram_size, max(2 × mds, 14720)).
pub fn initial_window(mss: u64) -> u64 {
    (10 * mss).min((2 * mss).max(14_720))
}

/// RFC 9002 §7.2: minimum window 2 × max_datagram_size.
pub fn minimum_window(mss: u64) -> u64 {
    2 * mss
}

pub struct NewReno {
    mss: u64,
    cwnd: u64,
    ssthresh: u64,
    /// Bytes acknowledged in congestion avoidance, toward the next +1 MSS.
    ca_acked: u64,
    /// RFC 9002 §7.3.2: packets sent before this time belong to the recovery period.
    recovery_start: Option<Instant>,
}

impl NewReno {
    /// RFC 9002 §7.3.2: kLossReductionFactor = 0.5.
    const LOSS_REDUCTION_NUM: u64 = 1;
    const LOSS_REDUCTION_DEN: u64 = 2;

    pub fn new(mss: u64) -> Self {
        NewReno {
            mss,
            cwnd: initial_window(mss),
            ssthresh: u64::MAX,
            ca_acked: 0,
            recovery_start: None,
        }
    }

    fn in_recovery(&self, sent: Instant) -> bool {
        self.recovery_start.is_some_and(|r| sent <= r)
    }
}

impl Controller for NewReno {
    fn on_packet_sent(&mut self, _now: Instant, _bytes: u64, _in_flight: u64) {}

    fn on_ack(&mut self, ev: &AckEvent, _rtt: &RttEstimator) {
        if self.in_recovery(ev.largest_sent_time) {
            return; // RFC 9002 §7.3.2: no window growth during recovery
        }
        if self.cwnd < self.ssthresh {
            // RFC 5681 §3.1 slow start (byte counting, RFC 3465).
            self.cwnd += ev.bytes_acked;
        } else {
            // Congestion avoidance: one MSS per window acknowledged.
            self.ca_acked += ev.bytes_acked;
            if self.ca_acked >= self.cwnd {
                self.ca_acked -= self.cwnd;
                self.cwnd += self.mss;
            }
        }
    }

    fn on_loss(&mut self, ev: &LossEvent, _rtt: &RttEstimator) {
        if !self.in_recovery(ev.largest_sent_time) {
            // RFC 6582 / RFC 9002 §7.3.2: one reduction per recovery period.
            self.recovery_start = Some(ev.now);
            self.cwnd = (self.cwnd * Self::LOSS_REDUCTION_NUM / Self::LOSS_REDUCTION_DEN)
                .max(minimum_window(self.mss));
            self.ssthresh = self.cwnd;
            self.ca_acked = 0;
        }
        if ev.persistent {
            // RFC 9002 §7.6.2
            self.cwnd = minimum_window(self.mss);
        }
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn pacing_rate(&self, rtt: &RttEstimator) -> u64 {
        // RFC 9002 §7.7: pace at N × cwnd / srtt with N = 1.25.
        let srtt = rtt.srtt().as_secs_f64().max(1e-6);
        (1.25 * self.cwnd as f64 / srtt) as u64
    }

    fn name(&self) -> &'static str {
        "newreno"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BbrState {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

pub struct Bbr {
    mss: u64,
    state: BbrState,
    /// Per-round maximum delivery rate (bytes/s) of the last BW_WINDOW rounds.
    bw_rounds: [u64; Bbr::BW_WINDOW],
    round: u64,
    next_round_delivered: u64,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Option<Instant>,
    /// Startup: bandwidth at the last growth check and rounds without 25% growth.
    full_bw: u64,
    full_bw_rounds: u32,
    cycle_index: usize,
    cycle_start: Option<Instant>,
    probe_rtt_done: Option<Instant>,
    /// BBRv2-style upper bound on inflight, cut by congested rounds.
    inflight_hi: u64,
    inflight_hi_growth_rounds: u32,
    /// Loss accounting for the current round.
    round_lost: u64,
    /// Of those, bytes sent after the last cut of inflight_hi.
    round_fresh_lost: u64,
    /// When inflight_hi was last cut: losses of packets sent before it
    /// are the cut's cause, not a sign that it fell short.
    recovery_start: Option<Instant>,
    round_acked: u64,
    round_min_rtt: Duration,
    round_max_inflight: u64,
    /// Long-run loss rate of uncongested rounds (EWMA with gain 1/8).
    loss_ewma: f64,
    cwnd: u64,
    rng: Rng,
}

impl Bbr {
    /// Bottleneck-bandwidth filter length in rounds (draft-cardwell-iccrg-bbr BBR.BtlBwFilterLen).
    pub const BW_WINDOW: usize = 10;
    /// min_rtt filter length (BBR.MinRTTFilterLen = 10 s) and ProbeRTT duration (200 ms).
    pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
    pub const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
    /// A congested round in ProbeBW also starts a ProbeRTT, unless one
    /// ended less than this long ago (BBRv2's ProbeRTT interval). An
    /// overflow is often a new flow's Startup; the new flow measured the
    /// queue the others keep into its min_rtt (50 ms on a 40 ms path) and,
    /// its window being BDP-proportional, took up to 60% of the link for
    /// the 10 s until its own ProbeRTT. While the others hold BDP/2 and it
    /// drains after Startup, the queue empties and it measures the path.
    /// The interval keeps many flows, which overflow the queue often, from
    /// spending their time in ProbeRTT (without it four flows on 100 Mbit/s
    /// delivered 84 Mbit/s in all, with it 94).
    pub const OVERFLOW_PROBE_RTT_INTERVAL: Duration = Duration::from_secs(5);
    /// An overflow's ProbeRTT lasts this many min RTTs (at least
    /// [`Bbr::OVERFLOW_PROBE_RTT_MIN`], at most [`Bbr::PROBE_RTT_DURATION`]):
    /// 200 ms on a 40 ms path, as before, but 20 ms on a 2 ms one. The
    /// queue empties within one round of holding BDP/2 and the next round
    /// measures the path; a fixed 200 ms at BDP/2 every 5 s cost 3 Mbit/s of
    /// 95 on 2 and 10 ms paths (netlab compare, where every probe overflows
    /// the router's queue), which TCP BBR kept.
    pub const OVERFLOW_PROBE_RTT_RTTS: u32 = 5;
    pub const OVERFLOW_PROBE_RTT_MIN: Duration = Duration::from_millis(20);
    /// A sample within min_rtt/16 (at least [`Bbr::MIN_RTT_SLACK`]) of
    /// min_rtt confirms it: the filter's window restarts without ProbeRTT.
    const MIN_RTT_CONFIRM_DIV: u32 = 16;
    const MIN_RTT_SLACK: Duration = Duration::from_micros(100);
    /// 2/ln(2): the startup gain.
    pub const HIGH_GAIN: f64 = 2.885;
    /// ProbeBW window: CWND_GAIN × BDP plus [`Bbr::ADDITIVE_WINDOW`] plus
    /// two send quanta. 1 rather than BBR's 2: with the pacing floor of
    /// [`Bbr::pacing_rate`] the window is what is in flight, and flows
    /// sharing a bottleneck settle where each keeps its additive term in the
    /// queue. Flow i then delivers A / (RTT − CWND_GAIN × min_rtt_i × e_i),
    /// with e_i ≥ 1 its max filter's overestimate: the smaller the gain, the
    /// less a flow's share depends on errors in its own estimates (with 1.5
    /// and 64 KB, a few percent more max-filter noise in one flow left it
    /// 20% ahead).
    pub const CWND_GAIN: f64 = 1.0;
    /// Bytes every flow gets on top of its BDP-proportional window, the same
    /// for all flows whatever their rate. Flows sharing a bottleneck are
    /// window-limited, each delivering cwnd/RTT; a term proportional to the
    /// flow's own bandwidth estimate would keep any split (a neutral
    /// equilibrium: the first flow kept 60%), a common additive term pulls
    /// the shares together like TCP's additive increase. It is also the
    /// smallest window on a sub-millisecond path (loopback), where the BDP
    /// is a few kilobytes and batching of sends and ACKs needs more. Two
    /// flows keep 2 × 128 KB in the queue, half of a one-BDP queue at
    /// 100 Mbit/s × 40 ms; more flows overflow it and the loss rule shares.
    pub const ADDITIVE_WINDOW: u64 = 128 * 1024;
    /// BBRv3 BBRStartupCwndGain: 2, not the pacing gain. With 2.885 × BDP in
    /// flight Startup overflowed a one-BDP queue by 0.9 BDP for the three
    /// rounds it takes to see the bandwidth plateau (~900 drops at 100 Mbit/s × 40 ms).
    pub const STARTUP_CWND_GAIN: f64 = 2.0;
    /// BBRv2 ProbeRTT: inflight halved to BDP/2 (not 4 packets) drains the queue.
    pub const PROBE_RTT_CWND_GAIN: f64 = 0.5;
    pub const PACING_CYCLE: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    /// BBRv2 BBR.LossThresh: a round losing more than 2% may be congested.
    pub const LOSS_THRESH: f64 = 0.02;
    /// BBRv2 BBR.Beta: multiplicative cut of inflight_hi on a congested round.
    pub const BETA: f64 = 0.7;
    /// A round whose smallest RTT exceeds min_rtt by this factor has a
    /// queue. Small, because a flow that started while another kept a
    /// queue has that queue in its min_rtt (up to ~70 ms on a 40 ms path
    /// whose full queue gives 80 ms); with 1.5 such a flow never saw a
    /// queue, never backed off, and kept 1.1 MB in flight against the other's
    /// 50 KB. A path without any queue still never reads as congested.
    pub const QUEUE_RTT_FACTOR: f64 = 1.125;
    /// Largest send quantum (draft-cardwell-iccrg-bbr: 64 KB).
    pub const MAX_QUANTUM: u64 = 64 * 1024;
    /// Fewest lost packets in a round that can mark it congested.
    const MIN_CONGESTION_LOSSES: u64 = 3;
    /// Binomial standard deviations of random loss a congested round must exceed.
    const LOSS_SIGMAS: f64 = 2.5;
    /// inflight_hi regrowth per round doubles up to 2^this packets (32
    /// packets, 45 KB per round): quick after a cut, yet additive, the same
    /// for every flow, so that repeated cuts converge to equal shares.
    const MAX_GROWTH_SHIFT: u32 = 5;
    /// Rounds with fewer packets than this say nothing about loss rate.
    const MIN_ROUND_PACKETS: u64 = 16;
    /// Random-loss compensation is capped at this loss rate.
    const MAX_COMPENSATED_LOSS: f64 = 0.35;

    pub fn new(mss: u64, seed: u64) -> Self {
        Bbr {
            mss,
            state: BbrState::Startup,
            bw_rounds: [0; Self::BW_WINDOW],
            round: 0,
            next_round_delivered: 0,
            min_rtt: None,
            min_rtt_stamp: None,
            full_bw: 0,
            full_bw_rounds: 0,
            cycle_index: 2,
            cycle_start: None,
            probe_rtt_done: None,
            inflight_hi: u64::MAX,
            inflight_hi_growth_rounds: 0,
            round_lost: 0,
            round_fresh_lost: 0,
            recovery_start: None,
            round_acked: 0,
            round_min_rtt: Duration::MAX,
            round_max_inflight: 0,
            loss_ewma: 0.0,
            cwnd: initial_window(mss),
            rng: Rng::new(seed),
        }
    }

    /// Enters ProbeBW at a random phase other than the 0.75 one (Linux BBR
    /// bbr_reset_probe_bw_mode): flows that start together probe apart.
    fn enter_probe_bw(&mut self, now: Instant) {
        self.state = BbrState::ProbeBw;
        let phases = Self::PACING_CYCLE.len() as u64;
        self.cycle_index = match self.rng.below(phases - 1) as usize {
            0 => 0,
            i => i + 1,
        };
        self.cycle_start = Some(now);
    }

    /// The BBRv2-style inflight bound, if a congested round has set one.
    pub fn inflight_hi(&self) -> Option<u64> {
        (self.inflight_hi != u64::MAX).then_some(self.inflight_hi)
    }

    pub fn btl_bw(&self) -> u64 {
        self.bw_rounds.iter().copied().max().unwrap_or(0)
    }

    fn bdp(&self, gain: f64) -> Option<u64> {
        let bw = self.btl_bw();
        let rtt = self.min_rtt?;
        if bw == 0 {
            return None;
        }
        Some((gain * bw as f64 * rtt.as_secs_f64()) as u64)
    }

    fn pacing_gain(&self) -> f64 {
        match self.state {
            BbrState::Startup => Self::HIGH_GAIN,
            BbrState::Drain => 1.0 / Self::HIGH_GAIN,
            BbrState::ProbeBw => Self::PACING_CYCLE[self.cycle_index],
            BbrState::ProbeRtt => 1.0,
        }
    }

    fn loss_compensation(&self) -> f64 {
        1.0 / (1.0 - self.loss_ewma.min(Self::MAX_COMPENSATED_LOSS))
    }

    /// Whether `lost` of `total` bytes is more than random loss at the
    /// long-run rate explains: above it by [`Bbr::LOSS_THRESH`] plus
    /// [`Bbr::LOSS_SIGMAS`] binomial standard deviations, and at least
    /// [`Bbr::MIN_CONGESTION_LOSSES`] packets. The deviation term keeps a
    /// flow with a small share (few packets per round, so a noisy rate)
    /// from reading random loss as congestion and starving further.
    fn excess_loss(&self, lost: u64, total: u64) -> bool {
        let mss = self.mss.max(1) as f64;
        let n = total as f64 / mss;
        let p = self.loss_ewma;
        let expected = n * (p + Self::LOSS_THRESH) + Self::LOSS_SIGMAS * (n * p * (1.0 - p)).sqrt();
        lost >= Self::MIN_CONGESTION_LOSSES * self.mss && lost as f64 / mss > expected
    }

    fn end_round(&mut self, now: Instant, rtt: &RttEstimator) {
        let total = self.round_lost + self.round_acked;
        let packets = total / self.mss.max(1);
        // A round with few packets says nothing about the loss rate; it is
        // not congested, and inflight_hi still grows (else a flow cut below
        // MIN_ROUND_PACKETS per round would stay there for good).
        let mut congested = false;
        if packets >= Self::MIN_ROUND_PACKETS {
            let rate = self.round_lost as f64 / total as f64;
            let min_rtt = self.min_rtt.unwrap_or(rtt.min()).as_secs_f64();
            // Even the round's smallest RTT sample above min_rtt: a queue
            // (a single delayed ACK cannot fake this). Without one, no loss
            // is an overflow: random loss never ends Startup (at 10% it did
            // on the first lossy round, and cost 3 Mbit/s on a real path).
            let queued = self.round_min_rtt.as_secs_f64() > min_rtt * Self::QUEUE_RTT_FACTOR;
            // Only losses of packets sent after the last cut can say that
            // the cut was not enough (one reduction per round trip, as
            // RFC 9002 §7.3.2 for NewReno): without this, the losses of
            // one overflow cut the bound again round after round.
            congested = self.excess_loss(self.round_fresh_lost, total) && queued;
            // The long-run random loss rate learns from every round that is
            // not a queue overflow (a new random rate shows as excess loss
            // without a queue first).
            if !congested && !(queued && self.excess_loss(self.round_lost, total)) {
                self.loss_ewma = 0.875 * self.loss_ewma + 0.125 * rate;
            }
        }
        if congested {
            // Congested round: back inflight_hi off from what was in flight.
            let base = self.round_max_inflight.min(self.inflight_hi);
            self.inflight_hi = ((base as f64 * Self::BETA) as u64).max(4 * self.mss);
            self.inflight_hi_growth_rounds = 0;
            self.recovery_start = Some(now);
            if self.state == BbrState::Startup {
                self.state = BbrState::Drain;
            } else if self.state == BbrState::ProbeBw
                // See OVERFLOW_PROBE_RTT_INTERVAL.
                && self
                    .probe_rtt_done
                    .is_none_or(|t| now.saturating_duration_since(t) >= Self::OVERFLOW_PROBE_RTT_INTERVAL)
            {
                self.state = BbrState::ProbeRtt;
                self.probe_rtt_done = Some(now + self.overflow_probe_rtt_duration());
            }
        } else if self.inflight_hi != u64::MAX {
            // Probe the bound back up, doubling the step every round
            // (BBRv3 ProbeBW_UP: 1, 2, 4, 8, ... packets per round trip).
            let step = self.mss << self.inflight_hi_growth_rounds.min(Self::MAX_GROWTH_SHIFT);
            self.inflight_hi_growth_rounds = self.inflight_hi_growth_rounds.saturating_add(1);
            self.inflight_hi = self.inflight_hi.saturating_add(step);
        }
        self.round_lost = 0;
        self.round_fresh_lost = 0;
        self.round_acked = 0;
        self.round_min_rtt = Duration::MAX;
        self.round_max_inflight = 0;
    }

    fn overflow_probe_rtt_duration(&self) -> Duration {
        self.min_rtt
            .map_or(Self::PROBE_RTT_DURATION, |m| {
                m.saturating_mul(Self::OVERFLOW_PROBE_RTT_RTTS)
            })
            .clamp(Self::OVERFLOW_PROBE_RTT_MIN, Self::PROBE_RTT_DURATION)
    }

    /// Send quantum: what the pacer releases in one burst, about 1 ms at the
    /// bottleneck rate, between 2 MSS and 64 KB (Linux BBR's tso_segs_goal).
    fn quantum(&self) -> u64 {
        let per_ms = self.btl_bw() / 1000;
        per_ms.clamp(2 * self.mss, Self::MAX_QUANTUM.max(2 * self.mss))
    }

    fn update_cwnd(&mut self) {
        // BBRQuantizationBudget: 3 quanta on top of the BDP, so that on very
        // short paths (loopback) ACK and send batching do not starve the pipe.
        let extra = 2 * self.quantum() + Self::ADDITIVE_WINDOW;
        let target = match self.state {
            BbrState::ProbeRtt => self
                .bdp(Self::PROBE_RTT_CWND_GAIN)
                .map_or(4 * self.mss, |b| b.max(4 * self.mss)),
            BbrState::Startup => self
                .bdp(Self::STARTUP_CWND_GAIN)
                .map_or(self.cwnd, |b| b + extra)
                .max(self.cwnd),
            // Randomly lost packets stay in flight until declared lost (up
            // to 9/8 RTT): as many more bytes keep the pipe full.
            _ => self
                .bdp(Self::CWND_GAIN * self.loss_compensation())
                .map_or(self.cwnd, |b| b + extra),
        };
        self.cwnd = target.min(self.inflight_hi).max(4 * self.mss);
    }
}

impl Controller for Bbr {
    fn on_packet_sent(&mut self, _now: Instant, _bytes: u64, _in_flight: u64) {}

    fn on_ack(&mut self, ev: &AckEvent, rtt: &RttEstimator) {
        let now = ev.now;
        self.round_acked += ev.bytes_acked;
        self.round_min_rtt = self.round_min_rtt.min(rtt.latest());
        self.round_max_inflight = self.round_max_inflight.max(ev.in_flight + ev.bytes_acked);
        // min_rtt filter.
        let sample = rtt.latest();
        let expired = self
            .min_rtt_stamp
            .is_some_and(|t| now.saturating_duration_since(t) > Self::MIN_RTT_WINDOW);
        if self.min_rtt.is_none_or(|m| sample <= m) || (expired && self.state != BbrState::ProbeRtt)
        {
            if expired
                && self.min_rtt.is_some_and(|m| sample > m)
                && self.state == BbrState::ProbeBw
            {
                // Stale estimate: drain the queue to re-measure (BBR ProbeRTT).
                self.state = BbrState::ProbeRtt;
                self.probe_rtt_done = Some(now + Self::PROBE_RTT_DURATION);
            }
            self.min_rtt = Some(sample);
            self.min_rtt_stamp = Some(now);
        } else if self
            .min_rtt
            .is_some_and(|m| sample <= m + (m / Self::MIN_RTT_CONFIRM_DIV).max(Self::MIN_RTT_SLACK))
        {
            // The queue drained by itself (a ProbeBW 0.75 phase, a lull): the
            // path's RTT is still min_rtt, so it needs no ProbeRTT to re-measure.
            self.min_rtt_stamp = Some(now);
        }
        if let Some(rs) = ev.rate {
            // Rounds (draft-cardwell BBRUpdateRound).
            if rs.prior_delivered >= self.next_round_delivered {
                self.next_round_delivered = rs.delivered;
                self.round += 1;
                self.bw_rounds[(self.round as usize) % Self::BW_WINDOW] = 0;
                self.end_round(now, rtt);
                if self.state == BbrState::Startup {
                    let bw = self.btl_bw();
                    if bw >= self.full_bw + self.full_bw / 4 {
                        self.full_bw = bw;
                        self.full_bw_rounds = 0;
                    } else {
                        self.full_bw_rounds += 1;
                        if self.full_bw_rounds >= 3 {
                            self.state = BbrState::Drain;
                        }
                    }
                }
            }
            if rs.delivery_rate > 0 && (!rs.app_limited || rs.delivery_rate > self.btl_bw()) {
                let slot = &mut self.bw_rounds[(self.round as usize) % Self::BW_WINDOW];
                *slot = (*slot).max(rs.delivery_rate);
            }
        }
        match self.state {
            BbrState::Drain => {
                if self.bdp(1.0).is_some_and(|b| ev.in_flight <= b) {
                    self.enter_probe_bw(now);
                }
            }
            BbrState::ProbeBw => {
                let phase = self.min_rtt.unwrap_or(rtt.srtt());
                if self
                    .cycle_start
                    .is_none_or(|t| now.saturating_duration_since(t) >= phase)
                {
                    self.cycle_index = (self.cycle_index + 1) % Self::PACING_CYCLE.len();
                    self.cycle_start = Some(now);
                }
            }
            BbrState::ProbeRtt => {
                if self.probe_rtt_done.is_some_and(|t| now >= t) {
                    self.min_rtt_stamp = Some(now);
                    self.enter_probe_bw(now);
                }
            }
            BbrState::Startup => {}
        }
        self.update_cwnd();
    }

    fn on_loss(&mut self, ev: &LossEvent, _rtt: &RttEstimator) {
        self.round_lost += ev.bytes_lost;
        if self.recovery_start.is_none_or(|r| ev.largest_sent_time > r) {
            self.round_fresh_lost += ev.bytes_lost;
        }
        if ev.persistent {
            // The path went silent for a long time: restart the model.
            self.cwnd = 4 * self.mss;
            self.bw_rounds = [0; Self::BW_WINDOW];
            self.full_bw = 0;
            self.full_bw_rounds = 0;
            self.state = BbrState::Startup;
        }
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn pacing_rate(&self, rtt: &RttEstimator) -> u64 {
        let bw = self.btl_bw();
        if bw == 0 {
            // Before any sample: initial window over the (initial) RTT, with startup gain.
            let srtt = rtt.srtt().as_secs_f64().max(1e-6);
            return (Self::HIGH_GAIN * self.cwnd as f64 / srtt) as u64;
        }
        let rate = (self.pacing_gain() * self.loss_compensation() * bw as f64) as u64;
        if self.state == BbrState::ProbeBw && self.pacing_gain() >= 1.0 {
            // Outside the 0.75 phase pace at least the window per RTT: the
            // window, not a stale max-filtered bandwidth, then sets a flow's
            // share (see ADDITIVE_WINDOW), and a flow whose estimate lags its
            // window is not held below its share.
            let srtt = rtt.srtt().as_secs_f64().max(1e-6);
            let window_rate = self.loss_compensation() * self.cwnd as f64 / srtt;
            return rate.max(window_rate as u64);
        }
        rate
    }

    fn name(&self) -> &'static str {
        "bbr"
    }
}

/// Per-packet state for delivery-rate sampling, recorded when it is sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateState {
    pub delivered: u64,
    pub delivered_time: Option<Instant>,
    pub first_sent_time: Option<Instant>,
    pub app_limited: bool,
}

/// One delivery-rate sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateSample {
    /// Bytes per second.
    pub delivery_rate: u64,
    /// Connection-wide delivered bytes before / after the sampled packet.
    pub prior_delivered: u64,
    pub delivered: u64,
    pub interval: Duration,
    pub app_limited: bool,
}

/// draft-cheng-iccrg-delivery-rate-estimation: C.delivered, C.delivered_time,
/// C.first_sent_time, C.app_limited.
#[derive(Debug, Default)]
pub struct DeliveryRateEstimator {
    delivered: u64,
    delivered_time: Option<Instant>,
    first_sent_time: Option<Instant>,
    /// Delivered count at which the app-limited phase ends (0 = not limited).
    app_limited_until: u64,
    /// Best sample of the ACK being processed.
    pending: Option<(RateState, Instant)>,
}

impl DeliveryRateEstimator {
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// §3.2 on send: stamps the packet. `in_flight` is before this packet.
    pub fn on_sent(&mut self, now: Instant, in_flight: u64) -> RateState {
        if in_flight == 0 {
            self.first_sent_time = Some(now);
            self.delivered_time = Some(now);
        }
        RateState {
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            app_limited: self.app_limited_until > 0,
        }
    }

    /// §3.3: the sender ran out of data with room in its window.
    pub fn on_app_limited(&mut self, in_flight: u64) {
        self.app_limited_until = (self.delivered + in_flight).max(1);
    }

    /// §3.3 per newly acknowledged packet.
    pub fn on_acked(&mut self, now: Instant, st: &RateState, sent_time: Instant, bytes: u64) {
        self.delivered += bytes;
        self.delivered_time = Some(now);
        if self.app_limited_until > 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        let better = self
            .pending
            .as_ref()
            .is_none_or(|(p, _)| st.delivered > p.delivered);
        if better && st.delivered_time.is_some() {
            self.pending = Some((*st, sent_time));
            self.first_sent_time = Some(sent_time);
        }
    }

    /// §3.3 at the end of an ACK: the sample from the most recent packet acked.
    pub fn take_sample(&mut self, now: Instant) -> Option<RateSample> {
        let (st, sent_time) = self.pending.take()?;
        let send_elapsed = sent_time.saturating_duration_since(st.first_sent_time?);
        let ack_elapsed = now.saturating_duration_since(st.delivered_time?);
        let interval = send_elapsed.max(ack_elapsed);
        let delivered = self.delivered - st.delivered;
        if interval < Duration::from_micros(1) {
            return None;
        }
        Some(RateSample {
            delivery_rate: (delivered as f64 / interval.as_secs_f64()) as u64,
            prior_delivered: st.delivered,
            delivered: self.delivered,
            interval,
            app_limited: st.app_limited,
        })
    }
}

/// Token-bucket pacer: bytes accrue at `rate` up to a burst of
/// `max(BURST_PACKETS × mss, rate × BURST_TIME)`. A packet may leave when the
/// bucket holds at least its size.
#[derive(Debug, Clone)]
pub struct Pacer {
    mss: u64,
    tokens: f64,
    last: Option<Instant>,
    rate: u64,
}

impl Pacer {
    pub const BURST_PACKETS: u64 = 10;
    pub const BURST_TIME: Duration = Duration::from_millis(2);

    pub fn new(mss: u64) -> Self {
        Pacer {
            mss,
            tokens: (Self::BURST_PACKETS * mss) as f64,
            last: None,
            rate: 0,
        }
    }

    fn capacity(&self) -> f64 {
        (Self::BURST_PACKETS * self.mss)
            .max((self.rate as f64 * Self::BURST_TIME.as_secs_f64()) as u64) as f64
    }

    pub fn set_rate(&mut self, rate: u64) {
        self.rate = rate.max(1);
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate as f64).min(self.capacity());
        }
        self.last = Some(now);
    }

    /// None if `bytes` may go now; otherwise when they may.
    pub fn delay_until(&mut self, now: Instant, bytes: u64) -> Option<Instant> {
        self.refill(now);
        if self.tokens >= bytes as f64 {
            return None;
        }
        let wait = (bytes as f64 - self.tokens) / self.rate.max(1) as f64;
        Some(now + Duration::from_secs_f64(wait.min(1.0)) + Duration::from_nanos(1))
    }

    pub fn on_sent(&mut self, bytes: u64) {
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn newreno_halves_once_per_recovery_and_grows() {
        let mss = 1400;
        let mut c = NewReno::new(mss);
        let rtt = RttEstimator::new();
        let t = t0();
        let w0 = c.window();
        c.on_ack(
            &AckEvent {
                now: t,
                bytes_acked: mss,
                largest_sent_time: t,
                in_flight: 0,
                rate: None,
            },
            &rtt,
        );
        assert_eq!(c.window(), w0 + mss);
        let loss = |now| LossEvent {
            now,
            bytes_lost: mss,
            packets_lost: 1,
            largest_sent_time: t,
            persistent: false,
            in_flight: 0,
        };
        c.on_loss(&loss(t + Duration::from_millis(1)), &rtt);
        let w1 = c.window();
        assert_eq!(w1, (w0 + mss) / 2);
        // A second loss of a packet sent before recovery began: no second cut.
        c.on_loss(&loss(t + Duration::from_millis(2)), &rtt);
        assert_eq!(c.window(), w1);
    }

    /// Feeds `rounds` rounds of `per_round` acked packets each, every one with RTT
    /// `rtt_ms`, losing `loss_every`-th packets; returns the time reached.
    fn bbr_rounds(
        bbr: &mut Bbr,
        rtt: &mut RttEstimator,
        t: Instant,
        rtt_ms: u64,
        loss_every: u64,
        rounds: u64,
        per_round: u64,
    ) -> Instant {
        let mss = 1400;
        let mut now = t;
        for _ in 0..rounds {
            for i in 0..per_round {
                now += Duration::from_micros(200);
                rtt.update(Duration::from_millis(rtt_ms), Duration::ZERO);
                if loss_every > 0 && i % loss_every == 0 {
                    bbr.on_loss(
                        &LossEvent {
                            now,
                            bytes_lost: mss,
                            packets_lost: 1,
                            largest_sent_time: now,
                            persistent: false,
                            in_flight: per_round * mss,
                        },
                        rtt,
                    );
                }
                let delivered = bbr.round * per_round * mss + (i + 1) * mss;
                bbr.on_ack(
                    &AckEvent {
                        now,
                        bytes_acked: mss,
                        largest_sent_time: now,
                        in_flight: per_round * mss,
                        rate: Some(RateSample {
                            delivery_rate: 7_000_000,
                            // Sent one round ago: each round's first ack starts a new round.
                            prior_delivered: if i == 0 { bbr.next_round_delivered } else { 0 },
                            delivered,
                            interval: Duration::from_millis(rtt_ms),
                            app_limited: false,
                        }),
                    },
                    rtt,
                );
            }
        }
        now
    }

    #[test]
    fn bbr_ignores_random_loss_but_backs_off_from_a_full_queue() {
        let mut bbr = Bbr::new(1400, 1);
        let mut rtt = RttEstimator::new();
        let t = t0();
        // Clean rounds at 20 ms, then 5% loss with no queue: not congestion.
        let t = bbr_rounds(&mut bbr, &mut rtt, t, 20, 0, 10, 100);
        let t = bbr_rounds(&mut bbr, &mut rtt, t, 20, 20, 10, 100);
        assert_eq!(bbr.inflight_hi(), None);
        let cwnd = bbr.window();
        assert!(cwnd >= 3 * 7_000_000 / 100, "cwnd {cwnd} below 1.5 x BDP");
        // The same 5% with every RTT sample doubled (a queue) is still the
        // random rate: no back-off.
        let t = bbr_rounds(&mut bbr, &mut rtt, t, 40, 20, 3, 100);
        assert_eq!(bbr.inflight_hi(), None);
        // A standing queue that drops 20%, well above the random rate: back off.
        bbr_rounds(&mut bbr, &mut rtt, t, 40, 5, 3, 100);
        let hi = bbr
            .inflight_hi()
            .expect("a congested round sets inflight_hi");
        assert!(hi < 100 * 1400, "{hi}");
        assert!(bbr.window() <= hi);
    }

    /// A flow cut to a few packets per round (too few to judge their loss
    /// rate) must still grow inflight_hi: it stayed at 20 KB for good once,
    /// starving one of two flows sharing a link (fairness 0.02).
    #[test]
    fn bbr_inflight_hi_grows_back_from_a_small_window() {
        let mut bbr = Bbr::new(1400, 1);
        let mut rtt = RttEstimator::new();
        let t = bbr_rounds(&mut bbr, &mut rtt, t0(), 20, 0, 10, 100);
        let t = bbr_rounds(&mut bbr, &mut rtt, t, 40, 5, 3, 100);
        let hi = bbr
            .inflight_hi()
            .expect("a congested round sets inflight_hi");
        bbr_rounds(&mut bbr, &mut rtt, t, 20, 0, 30, 5);
        let grown = bbr.inflight_hi().unwrap_or(u64::MAX);
        assert!(grown > hi + 100 * 1400, "inflight_hi {hi} -> {grown}");
    }

    /// Declares `lost` packets sent at `lost_sent` lost in the current
    /// round, then feeds one more round of `per_round` acked packets at
    /// `rtt_ms`, whose first ACK ends (and judges) the current round.
    fn bbr_round_with_losses(
        bbr: &mut Bbr,
        rtt: &mut RttEstimator,
        t: Instant,
        rtt_ms: u64,
        per_round: u64,
        lost: u64,
        lost_sent: Instant,
    ) -> Instant {
        let mss = 1400;
        for _ in 0..lost {
            bbr.on_loss(
                &LossEvent {
                    now: t,
                    bytes_lost: mss,
                    packets_lost: 1,
                    largest_sent_time: lost_sent,
                    persistent: false,
                    in_flight: per_round * mss,
                },
                rtt,
            );
        }
        bbr_rounds(bbr, rtt, t, rtt_ms, 0, 1, per_round)
    }

    /// Random loss at the long-run rate is not congestion even where a few
    /// packets per round make the rate noisy; a burst well above it is.
    #[test]
    fn bbr_excess_loss_allows_for_random_loss_of_a_small_share() {
        let mss = 1400;
        let mut bbr = Bbr::new(mss, 1);
        bbr.loss_ewma = 0.01;
        // 30 packets, 2 lost: 6.7%, over 1% + 2%, but two random losses in
        // 30 packets at 1% are not rare.
        assert!(!bbr.excess_loss(2 * mss, 30 * mss));
        assert!(bbr.excess_loss(8 * mss, 30 * mss));
        // 600 packets: 1% random is 6 ± 2.4; 30 is a queue overflow.
        assert!(!bbr.excess_loss(10 * mss, 600 * mss));
        assert!(bbr.excess_loss(30 * mss, 600 * mss));
        // Never on fewer than MIN_CONGESTION_LOSSES packets.
        bbr.loss_ewma = 0.0;
        assert!(!bbr.excess_loss(2 * mss, 1000 * mss));
    }

    /// One overflow cuts inflight_hi once: its losses declared in the next
    /// round (packets sent before the cut) do not cut again; fresh losses
    /// above the random rate do. The bound then grows back 1, 2, 4, ...
    /// packets per round, up to 2^MAX_GROWTH_SHIFT.
    #[test]
    fn bbr_cuts_inflight_hi_once_per_round_trip_then_regrows() {
        let mss = 1400;
        let mut bbr = Bbr::new(mss, 1);
        let mut rtt = RttEstimator::new();
        let t = bbr_rounds(&mut bbr, &mut rtt, t0(), 20, 0, 10, 100);
        // A queue doubles the RTT: no loss, no cut.
        let t = bbr_rounds(&mut bbr, &mut rtt, t, 40, 0, 2, 100);
        assert_eq!(bbr.inflight_hi(), None);
        // An overflow: 20 of 100 lost.
        let t = bbr_round_with_losses(&mut bbr, &mut rtt, t, 40, 100, 20, t);
        let hi = bbr.inflight_hi().expect("an overflow sets inflight_hi");
        assert!(hi <= (100 * mss) * 7 / 10 + mss, "{hi}");
        // More losses of packets sent before the cut: no second cut, the
        // bound starts growing (+1 packet).
        let before_cut = t - Duration::from_millis(30);
        let t = bbr_round_with_losses(&mut bbr, &mut rtt, t, 40, 100, 20, before_cut);
        assert_eq!(bbr.inflight_hi(), Some(hi + mss));
        // Clean rounds: +2, +4, ..., +32, +32 packets.
        let mut expect = hi + mss;
        let mut t = t;
        for step in [2, 4, 8, 16, 32, 32, 32] {
            t = bbr_rounds(&mut bbr, &mut rtt, t, 40, 0, 1, 100);
            expect += step * mss;
            assert_eq!(bbr.inflight_hi(), Some(expect));
        }
        // Fresh losses well above the random rate cut again.
        bbr_round_with_losses(&mut bbr, &mut rtt, t, 40, 100, 20, t);
        let cut = bbr.inflight_hi().unwrap_or(u64::MAX);
        assert!(cut < expect, "{cut} >= {expect}");
    }

    /// A flow that starts while another keeps a queue measures that queue
    /// into its min_rtt (60 ms here): its RTT rises only a little (to 70 ms,
    /// the full queue), yet its Startup must end on the losses of the queue
    /// it overflows. Random loss at the RTT of an empty queue must not end it.
    #[test]
    fn bbr_startup_ends_on_overflow_even_with_a_queue_in_min_rtt() {
        let mss = 1400;
        let startup = |rtt_ms| {
            let mut bbr = Bbr::new(mss, 1);
            let mut rtt = RttEstimator::new();
            // Two rounds: too few to see the (constant) bandwidth plateau.
            let t = bbr_rounds(&mut bbr, &mut rtt, t0(), 60, 0, 1, 50);
            assert_eq!(bbr.state, BbrState::Startup);
            // 10% lost in a round at `rtt_ms`.
            let t = bbr_rounds(&mut bbr, &mut rtt, t, rtt_ms, 0, 1, 200);
            bbr_round_with_losses(&mut bbr, &mut rtt, t, rtt_ms, 200, 20, t);
            bbr
        };
        let random = startup(60);
        assert_eq!(random.state, BbrState::Startup);
        assert_eq!(random.inflight_hi(), None);
        let overflow = startup(70);
        assert_ne!(overflow.state, BbrState::Startup);
        assert!(overflow.inflight_hi().is_some());
    }

    /// An overflow in ProbeBW drains the flow's queue for a ProbeRTT (so a
    /// newly started flow can measure the path's RTT), at most once per
    /// OVERFLOW_PROBE_RTT_INTERVAL.
    #[test]
    fn bbr_overflow_starts_a_probe_rtt_at_most_every_interval() {
        let mss = 1400;
        let mut bbr = Bbr::new(mss, 1);
        let mut rtt = RttEstimator::new();
        let t = bbr_rounds(&mut bbr, &mut rtt, t0(), 20, 0, 10, 100);
        assert_eq!(bbr.state, BbrState::ProbeBw);
        let t = bbr_rounds(&mut bbr, &mut rtt, t, 40, 0, 2, 100);
        let t = bbr_round_with_losses(&mut bbr, &mut rtt, t, 40, 100, 20, t);
        assert_eq!(bbr.state, BbrState::ProbeRtt);
        // BDP/2: 7 MB/s x 20 ms / 2.
        assert!(bbr.window() <= 70_000 + mss, "{}", bbr.window());
        // 300 ms later ProbeRTT is over.
        let t = bbr_rounds(&mut bbr, &mut rtt, t, 20, 0, 15, 100);
        assert_eq!(bbr.state, BbrState::ProbeBw);
        // Another overflow within the interval only cuts inflight_hi.
        let t = bbr_rounds(&mut bbr, &mut rtt, t, 40, 0, 2, 100);
        let hi = bbr.inflight_hi();
        bbr_round_with_losses(&mut bbr, &mut rtt, t, 40, 100, 40, t);
        assert_eq!(bbr.state, BbrState::ProbeBw);
        assert!(
            bbr.inflight_hi() < hi,
            "{:?} -> {:?}",
            hi,
            bbr.inflight_hi()
        );
    }

    /// An overflow's ProbeRTT lasts five min RTTs within [20 ms, 200 ms]:
    /// short paths do not spend 200 ms of every 5 s at half their rate.
    #[test]
    fn bbr_overflow_probe_rtt_scales_with_the_path() {
        let mut bbr = Bbr::new(1400, 1);
        assert_eq!(bbr.overflow_probe_rtt_duration(), Bbr::PROBE_RTT_DURATION);
        for (rtt_ms, want_ms) in [(1, 20), (2, 20), (10, 50), (40, 200), (100, 200)] {
            bbr.min_rtt = Some(Duration::from_millis(rtt_ms));
            assert_eq!(
                bbr.overflow_probe_rtt_duration(),
                Duration::from_millis(want_ms),
                "{rtt_ms} ms"
            );
        }
    }

    #[test]
    fn pacer_releases_at_rate() {
        let mut p = Pacer::new(1000);
        p.set_rate(1_000_000); // 1 MB/s: a 1000-byte packet per ms
        let t = t0();
        let mut now = t;
        let mut sent = 0u64;
        while now < t + Duration::from_secs(1) {
            match p.delay_until(now, 1000) {
                None => {
                    p.on_sent(1000);
                    sent += 1000;
                }
                Some(at) => now = at,
            }
        }
        // One second at 1 MB/s plus the initial burst.
        assert!((1_000_000..=1_000_000 + 11_000).contains(&sent), "{sent}");
    }

    #[test]
    fn delivery_rate_of_a_steady_flow() {
        let mut d = DeliveryRateEstimator::default();
        let t = t0();
        let ms = Duration::from_millis(1);
        // One 1000-byte packet per ms, each acked 10 ms later.
        let mut sent = Vec::new();
        let mut last = None;
        for i in 0..100u32 {
            let now = t + ms * i;
            let inflight = sent
                .iter()
                .filter(|(s, _): &&(Instant, _)| *s + ms * 10 > now)
                .count() as u64
                * 1000;
            sent.push((now, d.on_sent(now, inflight)));
            if i >= 10 {
                let (st_time, st) = sent[(i - 10) as usize];
                d.on_acked(now, &st, st_time, 1000);
                last = d.take_sample(now);
            }
        }
        let s = last.unwrap();
        assert!((900_000..1_100_000).contains(&s.delivery_rate), "{s:?}");
    }
}
