//! Command-line flags shared by every binary that runs a rudp endpoint
//! (`rudp-perf`, `peer`, `demo`): transport settings and send-path
//! impairment. Flatten [`TransportArgs`] into a clap parser with
//! `#[command(flatten)]`.

use super::DriverOptions;
use crate::cli::{parse_duration, parse_fraction, parse_size};
use crate::rudp::impair::{GilbertElliott, ImpairConfig};
use crate::rudp::{CcKind, Config, DEFAULT_MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD};
use std::time::Duration;

/// Largest UDP payload `--mtu` accepts (an IPv4 datagram of 64 KiB less headers).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Transport and impairment flags.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct TransportArgs {
    /// Largest UDP payload in bytes that rudp puts in one datagram (1472 fits a
    /// 1500-byte Ethernet MTU).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_UDP_PAYLOAD, value_parser = parse_mtu)]
    pub mtu: usize,

    /// Congestion controller: `bbr` (model-based) or `newreno` (like TCP).
    #[arg(long, value_name = "NAME", default_value_t = CcKind::Bbr)]
    pub cc: CcKind,

    /// Kernel socket buffer size requested for SO_RCVBUF and SO_SNDBUF
    /// (e.g. `16MiB`); as root the driver forces it past the sysctl limits.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub socket_buffer: u64,

    /// Send one datagram per system call: no sendmmsg/recvmmsg, no UDP GSO/GRO.
    #[arg(long)]
    pub no_batch: bool,

    /// Do not use UDP generic segmentation/receive offload (sendmmsg/recvmmsg stay on).
    #[arg(long)]
    pub no_gso: bool,

    #[command(flatten)]
    pub impair: ImpairArgs,
}

impl Default for TransportArgs {
    fn default() -> Self {
        TransportArgs {
            mtu: DEFAULT_MAX_UDP_PAYLOAD,
            cc: CcKind::Bbr,
            socket_buffer: 16 << 20,
            no_batch: false,
            no_gso: false,
            impair: ImpairArgs::default(),
        }
    }
}

impl TransportArgs {
    /// Endpoint configuration with these flags applied to the defaults.
    pub fn endpoint_config(&self) -> Config {
        Config {
            max_udp_payload: self.mtu,
            cc: self.cc,
            ..Config::default()
        }
    }

    /// Driver options (socket buffers, batching, impairment).
    pub fn driver_options(&self) -> DriverOptions {
        DriverOptions {
            impair: self.impair.to_config(),
            socket_buffer: usize::try_from(self.socket_buffer).unwrap_or(usize::MAX),
            batch: !self.no_batch,
            gso: !self.no_batch && !self.no_gso,
            max_send_rate: None,
        }
    }
}

/// Impairment applied by the driver to every datagram it sends, so that
/// experiments run where the kernel has no netem. All off by default.
#[derive(clap::Args, Debug, Clone, PartialEq, Default)]
pub struct ImpairArgs {
    /// Drop this fraction of sent datagrams (`1%` or `0.01`); with `--burst`
    /// it is the long-run average of bursty loss.
    #[arg(long, value_name = "P", default_value = "0", value_parser = parse_fraction)]
    pub loss: f64,

    /// Bursty (Gilbert–Elliott) loss: either the mean burst length in datagrams
    /// (e.g. `4`, averaging `--loss`), or `P_GB,P_BG[,LOSS_GOOD,LOSS_BAD]`
    /// transition and loss probabilities (e.g. `1%,25%`).
    #[arg(long, value_name = "SPEC")]
    pub burst: Option<String>,

    /// Constant one-way delay added to each sent datagram (e.g. `20ms`).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub delay: Duration,

    /// Extra random delay, uniform in [0, JITTER]; reorders as a side effect.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub jitter: Duration,

    /// Send this fraction of datagrams twice.
    #[arg(long, value_name = "P", default_value = "0", value_parser = parse_fraction)]
    pub duplicate: f64,

    /// Hold this fraction of datagrams back behind later ones.
    #[arg(long, value_name = "P", default_value = "0", value_parser = parse_fraction)]
    pub reorder: f64,

    /// Flip one random bit in this fraction of datagrams.
    #[arg(long, value_name = "P", default_value = "0", value_parser = parse_fraction)]
    pub corrupt: f64,

    /// Seed of the impairment's random choices (same seed, same choices).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
}

impl ImpairArgs {
    /// The impairment these flags describe, or None when they change nothing.
    /// `--burst` was checked by [`ImpairArgs::validate`]; an invalid one is ignored here.
    pub fn to_config(&self) -> Option<ImpairConfig> {
        let burst = self
            .burst
            .as_deref()
            .and_then(|spec| parse_burst(spec, self.loss).ok());
        let cfg = ImpairConfig {
            loss: self.loss,
            burst,
            delay: self.delay,
            jitter: self.jitter,
            duplicate: self.duplicate,
            reorder: self.reorder,
            corrupt: self.corrupt,
            seed: self.seed,
        };
        let noop = cfg.loss == 0.0
            && cfg.burst.is_none()
            && cfg.delay.is_zero()
            && cfg.jitter.is_zero()
            && cfg.duplicate == 0.0
            && cfg.reorder == 0.0
            && cfg.corrupt == 0.0;
        (!noop).then_some(cfg)
    }

    /// Checks the flags that clap cannot check alone (`--burst`).
    pub fn validate(&self) -> Result<(), String> {
        match &self.burst {
            Some(spec) => parse_burst(spec, self.loss).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// `--burst`: a mean burst length (with `loss` the average loss rate), or
/// explicit `P_GB,P_BG[,LOSS_GOOD,LOSS_BAD]`.
pub fn parse_burst(spec: &str, loss: f64) -> Result<GilbertElliott, String> {
    let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
    match parts.as_slice() {
        [mean] => {
            let mean: f64 = mean
                .parse()
                .map_err(|_| format!("invalid burst length '{mean}'"))?;
            if !(mean >= 1.0 && mean.is_finite()) {
                return Err(format!("burst length must be at least 1, not {mean}"));
            }
            if !(loss > 0.0 && loss < 1.0) {
                return Err("--burst LENGTH needs --loss between 0 and 100%".to_string());
            }
            // Bad state loses everything; its stationary probability
            // p_gb / (p_gb + p_bg) equals the average loss.
            let p_bad_good = 1.0 / mean;
            let p_good_bad = (loss * p_bad_good / (1.0 - loss)).min(1.0);
            Ok(GilbertElliott {
                p_good_bad,
                p_bad_good,
                loss_good: 0.0,
                loss_bad: 1.0,
            })
        }
        [gb, bg] => Ok(GilbertElliott {
            p_good_bad: parse_fraction(gb)?,
            p_bad_good: parse_fraction(bg)?,
            loss_good: 0.0,
            loss_bad: 1.0,
        }),
        [gb, bg, lg, lb] => Ok(GilbertElliott {
            p_good_bad: parse_fraction(gb)?,
            p_bad_good: parse_fraction(bg)?,
            loss_good: parse_fraction(lg)?,
            loss_bad: parse_fraction(lb)?,
        }),
        _ => Err(format!(
            "invalid burst '{spec}' (expected LENGTH or P_GB,P_BG[,LOSS_GOOD,LOSS_BAD])"
        )),
    }
}

/// `--mtu`: a UDP payload size between [`MIN_UDP_PAYLOAD`] and [`MAX_UDP_PAYLOAD`].
pub fn parse_mtu(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid size '{s}'"))?;
    if (MIN_UDP_PAYLOAD..=MAX_UDP_PAYLOAD).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "UDP payload must be between {MIN_UDP_PAYLOAD} and {MAX_UDP_PAYLOAD} bytes, not {n}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        transport: TransportArgs,
    }

    #[test]
    fn mtu_is_bounded() {
        assert_eq!(parse_mtu("1472"), Ok(1472));
        assert!(parse_mtu("100").is_err());
        assert!(parse_mtu("70000").is_err());
    }

    #[test]
    fn burst_length_keeps_average_loss() {
        let ge = parse_burst("4", 0.05).expect("valid");
        let bad = ge.p_good_bad / (ge.p_good_bad + ge.p_bad_good);
        assert!((bad - 0.05).abs() < 1e-9);
        assert_eq!(ge.p_bad_good, 0.25);
        assert!(parse_burst("4", 0.0).is_err());
        assert!(parse_burst("1%,25%,0,1", 0.0).is_ok());
        assert!(parse_burst("1%,2%,3%", 0.0).is_err());
    }

    #[test]
    fn defaults_impair_nothing() {
        let cli = Cli::try_parse_from(["x"]).expect("defaults parse");
        assert_eq!(cli.transport, TransportArgs::default());
        assert_eq!(cli.transport.impair.to_config(), None);
        assert!(cli.transport.driver_options().impair.is_none());
    }

    #[test]
    fn flags_reach_the_configs() {
        let cli = Cli::try_parse_from([
            "x", "--mtu", "1200", "--cc", "newreno", "--loss", "2%", "--delay", "20ms", "--burst",
            "3", "--seed", "9",
        ])
        .expect("flags parse");
        let t = &cli.transport;
        assert_eq!(t.endpoint_config().max_udp_payload, 1200);
        assert_eq!(t.endpoint_config().cc, CcKind::NewReno);
        let imp = t.impair.to_config().expect("impaired");
        assert_eq!(imp.loss, 0.02);
        assert_eq!(imp.delay, Duration::from_millis(20));
        assert_eq!(imp.seed, 9);
        assert!(imp.burst.is_some());
        assert!(Cli::try_parse_from(["x", "--loss", "200%"]).is_err());
        assert!(Cli::try_parse_from(["x", "--cc", "vegas"]).is_err());
    }
}
