//! The delayer's decisions, sans-IO: which queued packet is lost, and when each
//! surviving one is released. The NFQUEUE driver (`nfqueue.rs`) feeds packet ids
//! and the current time in, and turns what comes out into verdicts.
//!
//! Packets leave in the order they arrived: a packet's release time is its
//! arrival + delay + jitter, but never earlier than the release of the packet
//! before it. That keeps one batch verdict ("accept every id up to N") correct,
//! and it is what a real link does too (jitter without reordering).

use std::collections::VecDeque;
use std::time::Duration;

use crate::rng::Rng;

/// How packets are lost, decided per packet from a seeded generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossModel {
    /// Each packet is lost independently with this probability.
    Uniform(f64),
    /// Gilbert–Elliott with a loss-free Good state and an all-loss Bad state:
    /// from Good a packet moves to Bad with `p_good_bad`, from Bad back with
    /// `p_bad_good`. The mean loss burst is `1 / p_bad_good` packets.
    Burst { p_good_bad: f64, p_bad_good: f64 },
}

impl LossModel {
    /// Bursty loss with a long-run loss rate `loss` and mean burst length
    /// `mean_burst` packets. The stationary share of the Bad state is
    /// p_gb / (p_gb + p_bg); setting it to `loss` gives p_gb = loss·p_bg / (1 − loss).
    pub fn burst(loss: f64, mean_burst: f64) -> LossModel {
        let loss = loss.clamp(0.0, 0.999);
        let p_bad_good = 1.0 / mean_burst.max(1.0);
        let p_good_bad = (loss * p_bad_good / (1.0 - loss)).min(1.0);
        LossModel::Burst {
            p_good_bad,
            p_bad_good,
        }
    }

    /// The long-run fraction of packets lost.
    pub fn mean_loss(&self) -> f64 {
        match *self {
            LossModel::Uniform(p) => p.clamp(0.0, 1.0),
            LossModel::Burst {
                p_good_bad,
                p_bad_good,
            } => {
                if p_good_bad + p_bad_good == 0.0 {
                    0.0
                } else {
                    p_good_bad / (p_good_bad + p_bad_good)
                }
            }
        }
    }
}

/// Running state of a loss model.
#[derive(Debug, Clone)]
pub struct LossProcess {
    model: LossModel,
    in_bad_state: bool,
    rng: Rng,
}

impl LossProcess {
    pub fn new(model: LossModel, seed: u64) -> Self {
        LossProcess {
            model,
            in_bad_state: false,
            rng: Rng::new(seed),
        }
    }

    /// Decides the fate of the next packet: true when it is lost.
    pub fn next_is_lost(&mut self) -> bool {
        match self.model {
            LossModel::Uniform(p) => self.rng.chance(p),
            LossModel::Burst {
                p_good_bad,
                p_bad_good,
            } => {
                let flip = if self.in_bad_state {
                    p_bad_good
                } else {
                    p_good_bad
                };
                if self.rng.chance(flip) {
                    self.in_bad_state = !self.in_bad_state;
                }
                self.in_bad_state
            }
        }
    }
}

/// What the delayer imposes on every packet crossing the router.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelaySpec {
    /// Constant delay added to every packet (one way).
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter], without reordering.
    pub jitter: Duration,
    pub loss: LossModel,
    pub seed: u64,
}

/// What the delay line decided about an arriving packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Drop it now.
    Lost,
    /// Held; it will come out of `pop_due` at this time.
    HeldUntil(Duration),
}

/// Counters the delayer reports when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayLineCounters {
    pub seen: u64,
    pub lost: u64,
    pub released: u64,
}

/// Packets held in arrival order with their release times. Time is a
/// `Duration` since an arbitrary epoch chosen by the driver.
#[derive(Debug)]
pub struct DelayLine<Id> {
    spec: DelaySpec,
    loss: LossProcess,
    jitter_rng: Rng,
    held: VecDeque<(Duration, Id)>,
    last_release: Duration,
    counters: DelayLineCounters,
}

impl<Id: Copy> DelayLine<Id> {
    pub fn new(spec: DelaySpec) -> Self {
        DelayLine {
            loss: LossProcess::new(spec.loss, spec.seed),
            jitter_rng: Rng::new(spec.seed ^ 0x6a09_e667_f3bc_c908),
            spec,
            held: VecDeque::new(),
            last_release: Duration::ZERO,
            counters: DelayLineCounters::default(),
        }
    }

    /// A packet `id` arrived at `now`.
    pub fn admit(&mut self, now: Duration, id: Id) -> Admission {
        self.counters.seen += 1;
        if self.loss.next_is_lost() {
            self.counters.lost += 1;
            return Admission::Lost;
        }
        let jitter_ns = self.spec.jitter.as_nanos() as u64;
        let extra = Duration::from_nanos(self.jitter_rng.below(jitter_ns.saturating_add(1)));
        let release = (now + self.spec.delay + extra).max(self.last_release);
        self.last_release = release;
        self.held.push_back((release, id));
        Admission::HeldUntil(release)
    }

    /// Removes every packet due at `now` and returns the id of the last one:
    /// a batch verdict up to that id releases all of them, in order.
    pub fn pop_due(&mut self, now: Duration) -> Option<Id> {
        let mut last = None;
        while let Some(&(release, id)) = self.held.front() {
            if release > now {
                break;
            }
            self.held.pop_front();
            self.counters.released += 1;
            last = Some(id);
        }
        last
    }

    /// When the earliest held packet is due.
    pub fn next_release(&self) -> Option<Duration> {
        self.held.front().map(|&(release, _)| release)
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn counters(&self) -> DelayLineCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(delay_ms: u64, jitter_ms: u64, loss: LossModel) -> DelaySpec {
        DelaySpec {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss,
            seed: 42,
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn holds_each_packet_for_the_delay() {
        let mut line = DelayLine::new(spec(20, 0, LossModel::Uniform(0.0)));
        assert_eq!(line.admit(ms(0), 1u32), Admission::HeldUntil(ms(20)));
        assert_eq!(line.admit(ms(5), 2u32), Admission::HeldUntil(ms(25)));
        assert_eq!(line.next_release(), Some(ms(20)));
        assert_eq!(line.pop_due(ms(19)), None);
        assert_eq!(line.pop_due(ms(20)), Some(1));
        assert_eq!(line.pop_due(ms(24)), None);
        assert_eq!(line.pop_due(ms(30)), Some(2));
        assert_eq!(line.next_release(), None);
        assert_eq!(line.counters().released, 2);
    }

    #[test]
    fn a_late_wakeup_releases_the_whole_batch_up_to_the_last_due_id() {
        let mut line = DelayLine::new(spec(10, 0, LossModel::Uniform(0.0)));
        for id in 0..5u32 {
            line.admit(ms(id as u64), id);
        }
        assert_eq!(line.pop_due(ms(12)), Some(2));
        assert_eq!(line.held(), 2);
        assert_eq!(line.pop_due(ms(100)), Some(4));
        assert_eq!(line.held(), 0);
    }

    #[test]
    fn jitter_stays_in_bounds_and_never_reorders() {
        let mut line = DelayLine::new(spec(10, 5, LossModel::Uniform(0.0)));
        let mut previous = Duration::ZERO;
        let mut spread = false;
        for i in 0..2000u64 {
            let now = Duration::from_micros(i * 100);
            let Admission::HeldUntil(t) = line.admit(now, i) else {
                panic!("no loss configured");
            };
            assert!(t >= previous, "release times must not go backwards");
            assert!(t >= now + ms(10));
            assert!(t <= now + ms(15) || t == previous);
            spread |= t > now + ms(12);
            previous = t;
        }
        assert!(spread, "jitter never added more than 2 ms");
    }

    #[test]
    fn uniform_loss_matches_its_rate_and_is_seeded() {
        let run = |seed| {
            let mut s = spec(1, 0, LossModel::Uniform(0.05));
            s.seed = seed;
            let mut line = DelayLine::new(s);
            (0..100_000u32)
                .map(|id| line.admit(ms(0), id) == Admission::Lost)
                .collect::<Vec<_>>()
        };
        let a = run(1);
        let lost = a.iter().filter(|&&l| l).count();
        assert!((4_700..=5_300).contains(&lost), "lost {lost} of 100000");
        assert_eq!(a, run(1), "same seed, same losses");
        assert_ne!(a, run(2));
    }

    #[test]
    fn lost_packets_are_not_held() {
        let mut line = DelayLine::new(spec(1, 0, LossModel::Uniform(1.0)));
        assert_eq!(line.admit(ms(0), 7u8), Admission::Lost);
        assert_eq!(line.held(), 0);
        assert_eq!(line.pop_due(ms(10)), None);
        assert_eq!(
            line.counters(),
            DelayLineCounters {
                seen: 1,
                lost: 1,
                released: 0
            }
        );
    }

    #[test]
    fn burst_loss_has_the_asked_rate_and_burst_length() {
        let model = LossModel::burst(0.02, 4.0);
        assert!((model.mean_loss() - 0.02).abs() < 1e-12);
        let mut process = LossProcess::new(model, 9);
        let (mut lost, mut bursts, mut previous) = (0u32, 0u32, false);
        let n = 400_000;
        for _ in 0..n {
            let l = process.next_is_lost();
            lost += l as u32;
            bursts += (l && !previous) as u32;
            previous = l;
        }
        let rate = lost as f64 / n as f64;
        let mean_burst = lost as f64 / bursts as f64;
        assert!((0.017..0.023).contains(&rate), "loss rate {rate}");
        assert!((3.5..4.5).contains(&mean_burst), "mean burst {mean_burst}");
    }

    #[test]
    fn degenerate_burst_parameters_stay_probabilities() {
        assert_eq!(LossModel::burst(0.0, 3.0).mean_loss(), 0.0);
        let LossModel::Burst {
            p_good_bad,
            p_bad_good,
        } = LossModel::burst(0.9, 0.1)
        else {
            unreachable!()
        };
        assert!((0.0..=1.0).contains(&p_good_bad) && (0.0..=1.0).contains(&p_bad_good));
    }
}
