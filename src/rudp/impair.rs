//! Seeded datagram impairment for experiments and tests: uniform or
//! Gilbert–Elliott burst loss, delay, jitter, duplication, reordering and
//! corruption. Sans-IO: the driver pushes each outgoing datagram in and sends
//! what `pop_ready` releases; the simulator uses the same models per link.
//!
//! Order of decisions for one pushed datagram (each draw from one seeded
//! [`Rng`], so a seed fixes the whole run):
//! 1. loss (Gilbert–Elliott if `burst` is set, else uniform `loss`);
//! 2. corruption (one random bit of the copy flipped);
//! 3. release time = `now + delay + U[0, jitter]`, plus `delay/2 + 1 ms` if
//!    the datagram is picked for reordering;
//! 4. duplication: a second copy with its own jitter draw.
//!
//! Held datagrams wait in a min-heap on (release time, arrival sequence), so
//! datagrams with equal release times leave in the order they came in.

use crate::rng::Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Two-state burst-loss model: in state Good a datagram is lost with
/// `loss_good`, in Bad with `loss_bad`; after each datagram the state flips
/// Good→Bad with `p_good_bad`, Bad→Good with `p_bad_good`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    pub p_good_bad: f64,
    pub p_bad_good: f64,
    pub loss_good: f64,
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// Long-run loss probability: the stationary share of Bad times its loss
    /// plus the share of Good times its loss.
    pub fn mean_loss(&self) -> f64 {
        let denom = self.p_good_bad + self.p_bad_good;
        if denom <= 0.0 {
            return self.loss_good;
        }
        let bad = self.p_good_bad / denom;
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }

    /// Mean number of datagrams per visit to the Bad state.
    pub fn mean_burst_len(&self) -> f64 {
        if self.p_bad_good <= 0.0 {
            f64::INFINITY
        } else {
            1.0 / self.p_bad_good
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImpairConfig {
    /// Uniform loss probability in [0, 1] (ignored when `burst` is set).
    pub loss: f64,
    pub burst: Option<GilbertElliott>,
    /// Constant one-way delay added to every datagram.
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter]; reorders datagrams as a side effect.
    pub jitter: Duration,
    /// Probability a datagram is sent twice.
    pub duplicate: f64,
    /// Probability a datagram is held back behind later ones (by `delay/2 + 1 ms`).
    pub reorder: f64,
    /// Probability one random bit of the datagram is flipped.
    pub corrupt: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImpairCounters {
    /// Datagrams pushed and not dropped (duplicates not counted twice).
    pub passed: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub reordered: u64,
}

/// One held datagram; ordered by (release, seq) through `Reverse` in the heap.
#[derive(Debug)]
struct Held {
    release: Instant,
    seq: u64,
    dest: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.seq) == (other.release, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(other.release, other.seq))
    }
}

/// The loss decision alone (uniform or Gilbert–Elliott), reusable by the
/// simulator's links.
#[derive(Debug, Clone)]
pub struct LossModel {
    uniform: f64,
    burst: Option<GilbertElliott>,
    in_bad: bool,
}

impl LossModel {
    pub fn new(uniform: f64, burst: Option<GilbertElliott>) -> Self {
        LossModel {
            uniform,
            burst,
            in_bad: false,
        }
    }

    pub fn is_lossless(&self) -> bool {
        match self.burst {
            Some(ge) => ge.loss_good <= 0.0 && (ge.loss_bad <= 0.0 || ge.p_good_bad <= 0.0),
            None => self.uniform <= 0.0,
        }
    }

    /// Decides whether the next datagram is lost, then advances the burst state.
    pub fn lose(&mut self, rng: &mut Rng) -> bool {
        match self.burst {
            None => rng.chance(self.uniform),
            Some(ge) => {
                let lost = rng.chance(if self.in_bad {
                    ge.loss_bad
                } else {
                    ge.loss_good
                });
                let flip = rng.chance(if self.in_bad {
                    ge.p_bad_good
                } else {
                    ge.p_good_bad
                });
                if flip {
                    self.in_bad = !self.in_bad;
                }
                lost
            }
        }
    }
}

pub struct Impairment {
    cfg: ImpairConfig,
    rng: Rng,
    loss: LossModel,
    held: BinaryHeap<Reverse<Held>>,
    next_seq: u64,
    counters: ImpairCounters,
}

impl Impairment {
    pub fn new(cfg: ImpairConfig) -> Self {
        Impairment {
            rng: Rng::new(cfg.seed),
            loss: LossModel::new(cfg.loss, cfg.burst),
            cfg,
            held: BinaryHeap::new(),
            next_seq: 0,
            counters: ImpairCounters::default(),
        }
    }

    pub fn config(&self) -> &ImpairConfig {
        &self.cfg
    }

    /// True when the configuration changes nothing (the driver then skips it).
    pub fn is_noop(&self) -> bool {
        self.loss.is_lossless()
            && self.cfg.delay.is_zero()
            && self.cfg.jitter.is_zero()
            && self.cfg.duplicate <= 0.0
            && self.cfg.reorder <= 0.0
            && self.cfg.corrupt <= 0.0
    }

    /// Takes one datagram to `dest` sent at `now`; it may be dropped, duplicated,
    /// corrupted or held.
    pub fn push(&mut self, now: Instant, dest: SocketAddr, datagram: &[u8]) {
        if self.loss.lose(&mut self.rng) {
            self.counters.dropped += 1;
            return;
        }
        self.counters.passed += 1;
        let mut data = datagram.to_vec();
        if !data.is_empty() && self.rng.chance(self.cfg.corrupt) {
            let bit = self.rng.below(data.len() as u64 * 8);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.counters.corrupted += 1;
        }
        let mut release = now + self.cfg.delay + self.jitter();
        if self.rng.chance(self.cfg.reorder) {
            release += self.cfg.delay / 2 + Duration::from_millis(1);
            self.counters.reordered += 1;
        }
        if self.rng.chance(self.cfg.duplicate) {
            self.counters.duplicated += 1;
            let dup_release = now + self.cfg.delay + self.jitter();
            self.hold(dup_release, dest, data.clone());
        }
        self.hold(release, dest, data);
    }

    fn jitter(&mut self) -> Duration {
        let j = self.cfg.jitter.as_nanos() as u64;
        if j == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.below(j + 1))
        }
    }

    fn hold(&mut self, release: Instant, dest: SocketAddr, data: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.held.push(Reverse(Held {
            release,
            seq,
            dest,
            data,
        }));
    }

    /// The next datagram whose release time is at or before `now`.
    pub fn pop_ready(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if self.held.peek()?.0.release > now {
            return None;
        }
        let Reverse(h) = self.held.pop()?;
        Some((h.dest, h.data))
    }

    /// The earliest held datagram with its release time, whatever the time
    /// now (the simulator schedules releases itself).
    pub fn pop_next(&mut self) -> Option<(Instant, SocketAddr, Vec<u8>)> {
        let Reverse(h) = self.held.pop()?;
        Some((h.release, h.dest, h.data))
    }

    /// When the earliest held datagram is due.
    pub fn next_release(&self) -> Option<Instant> {
        self.held.peek().map(|h| h.0.release)
    }

    /// Datagrams currently held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn counters(&self) -> &ImpairCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn drain(imp: &mut Impairment, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((_, d)) = imp.pop_ready(now) {
            out.push(d);
        }
        out
    }

    #[test]
    fn noop_passes_everything_in_order() {
        let mut imp = Impairment::new(ImpairConfig::default());
        assert!(imp.is_noop());
        let t = Instant::now();
        for i in 0..100u8 {
            imp.push(t, addr(), &[i]);
        }
        let got = drain(&mut imp, t);
        assert_eq!(got, (0..100u8).map(|i| vec![i]).collect::<Vec<_>>());
        assert_eq!(imp.counters().passed, 100);
    }

    #[test]
    fn uniform_loss_rate_is_close() {
        let mut imp = Impairment::new(ImpairConfig {
            loss: 0.1,
            seed: 5,
            ..Default::default()
        });
        assert!(!imp.is_noop());
        let t = Instant::now();
        for _ in 0..20_000 {
            imp.push(t, addr(), &[0; 10]);
        }
        let dropped = imp.counters().dropped as f64 / 20_000.0;
        assert!((0.09..0.11).contains(&dropped), "{dropped}");
        assert_eq!(drain(&mut imp, t).len() as u64, imp.counters().passed);
    }

    #[test]
    fn gilbert_elliott_loss_comes_in_bursts() {
        let ge = GilbertElliott {
            p_good_bad: 0.01,
            p_bad_good: 0.25,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        let mut imp = Impairment::new(ImpairConfig {
            burst: Some(ge),
            seed: 9,
            ..Default::default()
        });
        let t = Instant::now();
        let mut lost = Vec::new();
        let n = 50_000;
        for i in 0..n {
            let before = imp.counters().dropped;
            imp.push(t, addr(), &[0]);
            if imp.counters().dropped > before {
                lost.push(i);
            }
        }
        let rate = lost.len() as f64 / n as f64;
        let expect = ge.mean_loss();
        assert!((rate - expect).abs() < 0.015, "{rate} vs {expect}");
        // Runs of consecutive losses average near the mean burst length (4).
        let runs = 1 + lost.windows(2).filter(|w| w[1] != w[0] + 1).count();
        let mean_run = lost.len() as f64 / runs as f64;
        assert!(mean_run > 2.5, "mean burst {mean_run}");
    }

    #[test]
    fn delay_and_jitter_hold_until_release() {
        let mut imp = Impairment::new(ImpairConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            seed: 1,
            ..Default::default()
        });
        let t = Instant::now();
        for i in 0..50u8 {
            imp.push(t, addr(), &[i]);
        }
        assert!(imp.pop_ready(t + Duration::from_millis(9)).is_none());
        let first = imp.next_release().unwrap();
        assert!(first >= t + Duration::from_millis(10));
        assert_eq!(drain(&mut imp, t + Duration::from_millis(15)).len(), 50);
        assert!(imp.next_release().is_none());
    }

    #[test]
    fn duplicate_reorder_corrupt_happen_at_their_rates() {
        let mut imp = Impairment::new(ImpairConfig {
            delay: Duration::from_millis(4),
            duplicate: 0.05,
            reorder: 0.2,
            corrupt: 0.01,
            seed: 77,
            ..Default::default()
        });
        let t = Instant::now();
        let n = 20_000u32;
        for i in 0..n {
            imp.push(
                t + Duration::from_micros(100 * i as u64),
                addr(),
                &i.to_be_bytes(),
            );
        }
        let got = drain(&mut imp, t + Duration::from_secs(10));
        let c = imp.counters().clone();
        assert_eq!(got.len() as u64, c.passed + c.duplicated);
        assert!((800..1200).contains(&c.duplicated), "{c:?}");
        assert!((3600..4400).contains(&c.reordered), "{c:?}");
        assert!((120..290).contains(&c.corrupted), "{c:?}");
        let out_of_order = got
            .windows(2)
            .filter(|w| w[1].as_slice() < w[0].as_slice())
            .count();
        assert!(out_of_order > 1000, "{out_of_order}");
        // Exactly `corrupted` datagrams differ from every sent value by one bit.
        let flipped = got
            .iter()
            .filter(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) >= n)
            .count();
        assert!(flipped as u64 <= 2 * c.corrupted);
    }

    #[test]
    fn same_seed_same_fate() {
        let cfg = ImpairConfig {
            loss: 0.3,
            jitter: Duration::from_millis(3),
            duplicate: 0.1,
            seed: 42,
            ..Default::default()
        };
        let run = || {
            let mut imp = Impairment::new(cfg.clone());
            let t = Instant::now();
            for i in 0..1000u32 {
                imp.push(t, addr(), &i.to_be_bytes());
            }
            drain(&mut imp, t + Duration::from_secs(1))
        };
        assert_eq!(run(), run());
    }
}
