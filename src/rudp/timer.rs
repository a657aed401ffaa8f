//! Timers as data (after quinn-proto's `connection/timer.rs`): a connection
//! keeps one optional deadline per [`Timer`]; `poll_timeout` is the earliest.

use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// RFC 9002 §6: loss-time or probe timeout.
    LossDetection = 0,
    /// Delayed ACK (at most 25 ms, RFC 9000 §13.2.1).
    Ack = 1,
    /// No datagram received for `Config::idle_timeout`.
    Idle = 2,
    /// Nothing sent for `Config::keepalive_interval`: send a PING.
    KeepAlive = 3,
    /// Initiator: resend the INITIAL (handshake backoff).
    Handshake = 4,
    /// Draining after the peer's CLOSE: forget the connection when it fires.
    Drain = 5,
}

impl Timer {
    pub const COUNT: usize = 6;
    pub const ALL: [Timer; Timer::COUNT] = [
        Timer::LossDetection,
        Timer::Ack,
        Timer::Idle,
        Timer::KeepAlive,
        Timer::Handshake,
        Timer::Drain,
    ];
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TimerTable {
    data: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.data[timer as usize] = Some(at);
    }

    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.data[timer as usize]
    }

    pub fn stop(&mut self, timer: Timer) {
        self.data[timer as usize] = None;
    }

    pub fn set_or_stop(&mut self, timer: Timer, at: Option<Instant>) {
        self.data[timer as usize] = at;
    }

    /// The earliest deadline.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.data.iter().flatten().min().copied()
    }

    /// True (and stops it) if `timer` is due at `now`.
    pub fn expire(&mut self, timer: Timer, now: Instant) -> bool {
        match self.data[timer as usize] {
            Some(t) if t <= now => {
                self.data[timer as usize] = None;
                true
            }
            _ => false,
        }
    }
}
