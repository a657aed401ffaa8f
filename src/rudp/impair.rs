//! Seeded datagram impairment for experiments and tests: uniform or
//! Gilbert–Elliott burst loss, delay, jitter, duplication, reordering and
//! corruption. Sans-IO: the driver pushes each outgoing datagram in and sends
//! what `pop_ready` releases; the simulator uses the same models per link.
//! (API contract; bodies to be written by the simulator work.)

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
    pub passed: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub corrupted: u64,
    pub reordered: u64,
}

pub struct Impairment {
    _cfg: ImpairConfig,
}

#[allow(unused_variables)]
impl Impairment {
    pub fn new(cfg: ImpairConfig) -> Self {
        todo!()
    }

    /// True when the configuration changes nothing (the driver then skips it).
    pub fn is_noop(&self) -> bool {
        todo!()
    }

    /// Takes one datagram to `dest` sent at `now`; it may be dropped, duplicated,
    /// corrupted or held.
    pub fn push(&mut self, now: Instant, dest: SocketAddr, datagram: &[u8]) {
        todo!()
    }

    /// The next datagram whose release time is at or before `now`.
    pub fn pop_ready(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        todo!()
    }

    /// When the earliest held datagram is due.
    pub fn next_release(&self) -> Option<Instant> {
        todo!()
    }

    pub fn counters(&self) -> &ImpairCounters {
        todo!()
    }
}
