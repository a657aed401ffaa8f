//! CPU cost of rudp's sans-IO hot path: two endpoints in one thread, wired
//! back to back with no network (each datagram handed straight over), on the
//! real clock. Reports datagrams per second and nanoseconds per datagram for
//! the sender and receiver work together (poll_transmit + handle_datagram on
//! both sides, ACKs included). The driver's budget is ~200k datagrams/s.
//!
//! Run: `cargo bench --bench rudp_hotpath`

use chunkswarm::rudp::{CcKind, Config, Endpoint, Event};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn main() {
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
    for cc in CcKind::ALL {
        let cfg = Config {
            cc,
            ..Config::default()
        };
        let mut ea = Endpoint::new(cfg.clone(), 1);
        let mut eb = Endpoint::new(cfg, 2);
        let start = Instant::now();
        let h = ea.connect(start, b);
        let mut buf = Vec::with_capacity(2048);
        let mut data_datagrams = 0u64;
        let mut delivered = 0u64;
        let run = Duration::from_secs(2);
        while start.elapsed() < run {
            while ea.send_backlog(h) < 8 << 20 {
                if ea.send(h, vec![1; 100 * 1024], false).is_err() {
                    break;
                }
            }
            let now = Instant::now();
            if ea.poll_timeout().is_some_and(|t| t <= now) {
                ea.handle_timeout(now);
            }
            if eb.poll_timeout().is_some_and(|t| t <= now) {
                eb.handle_timeout(now);
            }
            // A burst from A, then B's answers.
            for _ in 0..64 {
                let Some(t) = ea.poll_transmit(now, &mut buf) else {
                    break;
                };
                eb.handle_datagram(now, a, &buf[..t.len]);
                data_datagrams += 1;
            }
            while let Some(t) = eb.poll_transmit(now, &mut buf) {
                ea.handle_datagram(now, b, &buf[..t.len]);
            }
            while let Some((_, e)) = eb.poll_event() {
                if let Event::Message(m) = e {
                    delivered += m.len() as u64;
                }
            }
            while ea.poll_event().is_some() {}
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{cc}: {:.0} datagrams/s from A ({:.0} ns each, both sides' work), goodput {:.2} Gbit/s",
            data_datagrams as f64 / secs,
            secs * 1e9 / data_datagrams.max(1) as f64,
            delivered as f64 * 8.0 / secs / 1e9
        );
    }
}
