//! Network namespaces joined through a router: hosts `h0..hN` (or `a`, `b`)
//! each on its own veth link to the router namespace R, which forwards between
//! them and imposes rate, delay and loss. Everything lives in namespaces named
//! `cs-<pid>-<n>-<role>`; dropping the [`Topology`] deletes them all (also when
//! an experiment fails or is interrupted), and `netlab cleanup` removes what a
//! killed run left behind.
//!
//! Addresses are 10.77.<i>.1 for host i and 10.77.<i>.254 for the router's
//! side of that link; they exist only inside these namespaces.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::delay_line::{DelaySpec, LossModel};
use super::nfqueue::DelayerReport;
use super::process::{self, command, Background};
use super::units::Rate;
use super::LabError;

/// Every namespace this tool creates starts with this.
pub const NAMESPACE_PREFIX: &str = "cs-";
/// NFQUEUE number of the delayer on host 0's link (host i uses this + i).
const FIRST_QUEUE: u16 = 100;

static TOPOLOGY_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One network namespace, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(pub String);

impl Namespace {
    /// `ip netns exec <ns> <program> <args>`.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, program: &str, args: &[S]) -> Command {
        let mut c = command("ip", &["netns", "exec", &self.0, program]);
        c.args(args);
        c
    }

    fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["-n", &self.0];
        full.extend_from_slice(args);
        process::run(command("ip", &full))
    }

    /// Runs `program` in the namespace; its stdout, or why it failed.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, LabError> {
        process::run(self.exec(program, args))
    }
}

/// How delay and loss are imposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImpairMethod {
    /// `tc qdisc netem` on the router's egress (needs the sch_netem module).
    Netem,
    /// Our userspace delayer behind an NFQUEUE rule in R's FORWARD chain.
    Nfqueue,
    /// netem where the kernel has it, the delayer otherwise.
    Auto,
}

impl std::str::FromStr for ImpairMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "netem" => Ok(ImpairMethod::Netem),
            "nfqueue" => Ok(ImpairMethod::Nfqueue),
            "auto" => Ok(ImpairMethod::Auto),
            _ => Err(format!("unknown impairment {s:?} (netem, nfqueue or auto)")),
        }
    }
}

/// The path every forwarded packet takes through R, in each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathSpec {
    /// Round-trip propagation delay (half of it is added in each direction).
    pub rtt: Duration,
    /// Extra one-way delay, uniform in [0, jitter], without reordering.
    pub jitter: Duration,
    /// Per-direction loss.
    pub loss: LossModel,
    pub seed: u64,
}

impl PathSpec {
    pub fn is_clean(&self) -> bool {
        self.rtt.is_zero() && self.jitter.is_zero() && self.loss.mean_loss() == 0.0
    }

    /// What the delayer imposes on each packet (one way).
    pub fn one_way(&self) -> DelaySpec {
        DelaySpec {
            delay: self.rtt / 2,
            jitter: self.jitter,
            loss: self.loss,
            seed: self.seed,
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct TopologySpec {
    pub host_names: Vec<String>,
    /// Rate limit on R's egress towards every host (both directions of a pair).
    pub router_rate: Option<Rate>,
    /// Rate limit on each host's own egress (its upload).
    pub host_upload: Option<Rate>,
    pub path: PathSpec,
    pub method: ImpairMethod,
    /// The program to run as the delayer (`<it> delayer ...` inside R).
    pub delayer_program: std::path::PathBuf,
}

impl TopologySpec {
    /// Hosts `a` and `b`.
    pub fn pair() -> Vec<String> {
        vec!["a".to_string(), "b".to_string()]
    }

    /// Hosts `h0` .. `h<n-1>`.
    pub fn star(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("h{i}")).collect()
    }
}

/// Host i's address.
pub fn host_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, i as u8, 1)
}

/// The router's address on host i's link.
pub fn router_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, i as u8, 254)
}

/// A host namespace and its address.
#[derive(Debug, Clone)]
pub struct Host {
    pub ns: Namespace,
    pub addr: Ipv4Addr,
    /// Its link's name on the router side.
    router_link: String,
}

/// A live topology; dropping it tears everything down.
pub struct Topology {
    pub router: Namespace,
    /// Host namespaces are named `<prefix>-<host name>`.
    pub prefix: String,
    pub hosts: Vec<Host>,
    /// The method actually used (Auto resolved).
    pub method: Option<ImpairMethod>,
    namespaces: Vec<Namespace>,
    delayers: Vec<Background>,
    delayer_report: Option<DelayerReport>,
}

fn tbf_args(rate: Rate, buffer: Duration) -> Vec<String> {
    // Burst: about 1 ms at the rate, at least two full frames.
    let burst = (rate.bytes_per_sec() / 1000).max(3028);
    // Queue: one bandwidth-delay product (at least 10 ms worth, 64 KB).
    let limit = rate
        .bytes_in(buffer.max(Duration::from_millis(10)))
        .max(65_536);
    vec![
        "tbf".into(),
        "rate".into(),
        rate.tc_arg(),
        "burst".into(),
        burst.to_string(),
        "limit".into(),
        limit.to_string(),
    ]
}

/// The hidden `delayer` subcommand's arguments for one direction.
fn delayer_args(queue: u16, one_way: &DelaySpec) -> Vec<String> {
    let mut args = vec![
        "delayer".to_string(),
        "--queue".into(),
        queue.to_string(),
        "--delay".into(),
        format!("{}us", one_way.delay.as_micros()),
        "--jitter".into(),
        format!("{}us", one_way.jitter.as_micros()),
        "--seed".into(),
        one_way.seed.to_string(),
    ];
    match one_way.loss {
        LossModel::Uniform(p) => args.extend(["--loss".into(), p.to_string()]),
        LossModel::Burst {
            p_good_bad,
            p_bad_good,
        } => args.extend([
            "--ge-good-bad".into(),
            p_good_bad.to_string(),
            "--ge-bad-good".into(),
            p_bad_good.to_string(),
        ]),
    }
    args
}

/// `netem` arguments for one direction of `path`, with an optional rate.
pub fn netem_args(path: &PathSpec, rate: Option<Rate>) -> Vec<String> {
    let one_way = path.one_way();
    let mut a = vec![
        "netem".to_string(),
        "delay".into(),
        format!("{}us", one_way.delay.as_micros()),
    ];
    if !one_way.jitter.is_zero() {
        // netem's jitter is ± around the delay; ours is [0, jitter] above it.
        a[2] = format!("{}us", (one_way.delay + one_way.jitter / 2).as_micros());
        a.push(format!("{}us", (one_way.jitter / 2).as_micros()));
    }
    match path.loss {
        LossModel::Uniform(p) if p > 0.0 => {
            a.extend(["loss".into(), format!("{}%", p * 100.0)]);
        }
        LossModel::Burst {
            p_good_bad,
            p_bad_good,
        } => a.extend([
            "loss".into(),
            "gemodel".into(),
            format!("{}%", p_good_bad * 100.0),
            format!("{}%", p_bad_good * 100.0),
            "100%".into(),
            "0%".into(),
        ]),
        LossModel::Uniform(_) => {}
    }
    if let Some(rate) = rate {
        a.extend(["rate".into(), rate.tc_arg()]);
    }
    a.extend(["limit".into(), "100000".into()]);
    a
}

impl Topology {
    /// Builds the namespaces, links, routes, shaping and impairment.
    pub fn build(spec: &TopologySpec) -> Result<Topology, LabError> {
        let n = TOPOLOGY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAMESPACE_PREFIX}{}-{n}", std::process::id());
        let router = Namespace(format!("{prefix}-r"));
        let mut topo = Topology {
            router: router.clone(),
            prefix: prefix.clone(),
            hosts: Vec::new(),
            method: None,
            namespaces: Vec::new(),
            delayers: Vec::new(),
            delayer_report: None,
        };
        if spec.host_names.is_empty() || spec.host_names.len() > 255 {
            return Err(LabError::Setup(format!(
                "{} hosts asked for; 1 to 255 are possible",
                spec.host_names.len()
            )));
        }
        // From here on, `topo` owns whatever exists and its Drop removes it.
        topo.add_namespace(&router)?;
        router.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        for (i, name) in spec.host_names.iter().enumerate() {
            let ns = Namespace(format!("{prefix}-{name}"));
            topo.add_namespace(&ns)?;
            let addr = host_address(i);
            let gateway = router_address(i);
            let router_link = format!("to-{name}");
            if router_link.len() > 15 {
                return Err(LabError::Setup(format!("host name {name:?} is too long")));
            }
            router.ip(&[
                "link",
                "add",
                &router_link,
                "type",
                "veth",
                "peer",
                "name",
                "to-r",
                "netns",
                &ns.0,
            ])?;
            router.ip(&["addr", "add", &format!("{gateway}/24"), "dev", &router_link])?;
            router.ip(&["link", "set", &router_link, "up"])?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "to-r"])?;
            ns.ip(&["link", "set", "to-r", "up"])?;
            ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
            // Without this, GSO/GRO build 64 KB super-packets that the delayer
            // and random drop treat as one packet.
            let offloads = ["-K", "", "tso", "off", "gso", "off", "gro", "off"];
            let mut a = offloads;
            a[1] = &router_link;
            router.run("ethtool", &a)?;
            a[1] = "to-r";
            ns.run("ethtool", &a)?;
            if let Some(rate) = spec.host_upload {
                let mut args = vec!["qdisc", "add", "dev", "to-r", "root"];
                let tbf = tbf_args(rate, spec.path.rtt);
                args.extend(tbf.iter().map(String::as_str));
                ns.run("tc", &args)?;
            }
            topo.hosts.push(Host {
                ns,
                addr,
                router_link,
            });
        }
        topo.impair(spec)?;
        Ok(topo)
    }

    fn add_namespace(&mut self, ns: &Namespace) -> Result<(), LabError> {
        process::run(command("ip", &["netns", "add", &ns.0]))?;
        self.namespaces.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn router_egress_qdisc(&self, args: &[String]) -> Result<(), LabError> {
        for h in &self.hosts {
            let mut a = vec!["qdisc", "add", "dev", &h.router_link, "root"];
            a.extend(args.iter().map(String::as_str));
            self.router.run("tc", &a)?;
        }
        Ok(())
    }

    fn impair(&mut self, spec: &TopologySpec) -> Result<(), LabError> {
        let method = match spec.method {
            ImpairMethod::Auto if self.has_netem() => ImpairMethod::Netem,
            ImpairMethod::Auto => ImpairMethod::Nfqueue,
            ImpairMethod::Netem if !self.has_netem() => {
                return Err(LabError::Setup(
                    "this kernel has no netem qdisc (sch_netem); use --impair nfqueue or auto"
                        .into(),
                ))
            }
            m => m,
        };
        self.method = Some(method);
        if method == ImpairMethod::Netem {
            return self.router_egress_qdisc(&netem_args(&spec.path, spec.router_rate));
        }
        if let Some(rate) = spec.router_rate {
            self.router_egress_qdisc(&tbf_args(rate, spec.path.rtt))?;
        }
        if spec.path.is_clean() {
            return Ok(());
        }
        // One delayer per link into R, each on its own queue: packets keep their
        // order per direction (as on a real link), and jitter in one direction
        // never holds back the other.
        let program = spec.delayer_program.to_string_lossy().into_owned();
        for (i, host) in self.hosts.clone().iter().enumerate() {
            let queue = FIRST_QUEUE + i as u16;
            let mut one_way = spec.path.one_way();
            one_way.seed = one_way.seed.wrapping_add(i as u64);
            let mut delayer =
                Background::spawn(self.router.exec(&program, &delayer_args(queue, &one_way)))?;
            // The queue must have a listener before the rule exists, or every packet is dropped.
            delayer
                .wait_for_line(Duration::from_secs(5), |l| l == "ready")
                .map_err(|e| LabError::Setup(format!("the delayer did not start: {e}")))?;
            self.delayers.push(delayer);
            let queue = queue.to_string();
            self.router.run(
                "iptables",
                &[
                    "-I",
                    "FORWARD",
                    "-i",
                    &host.router_link,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue,
                ],
            )?;
        }
        Ok(())
    }

    /// Whether this kernel has netem (tried on R's loopback).
    fn has_netem(&self) -> bool {
        let ok = self
            .router
            .run(
                "tc",
                &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            )
            .is_ok();
        if ok {
            let _ = self
                .router
                .run("tc", &["qdisc", "del", "dev", "lo", "root"]);
        }
        ok
    }

    pub fn host(&self, i: usize) -> Option<&Host> {
        self.hosts.get(i)
    }

    /// Stops the delayers and returns what they counted together (None without delayers).
    pub fn stop_delayer(&mut self) -> Option<DelayerReport> {
        for d in self.delayers.drain(..) {
            let lines = d.stop(Duration::from_secs(2));
            if let Some(r) = lines.iter().rev().find_map(|l| DelayerReport::from_json(l)) {
                let total = self
                    .delayer_report
                    .get_or_insert_with(DelayerReport::default);
                total.add(&r);
            }
        }
        self.delayer_report
    }

    fn teardown(&mut self) {
        self.stop_delayer();
        for ns in self.namespaces.drain(..).rev() {
            kill_namespace_processes(&ns);
            if let Err(e) = process::run_to_completion(command("ip", &["netns", "del", &ns.0])) {
                log::warn!("could not delete namespace {}: {e}", ns.0);
            }
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn kill_namespace_processes(ns: &Namespace) {
    let Ok(out) = process::run_to_completion(command("ip", &["netns", "pids", &ns.0])) else {
        return;
    };
    for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        // SAFETY: kill(2) on a pid that `ip netns pids` reported inside our namespace.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The pid embedded in a namespace name `cs-<pid>-...`.
pub fn owner_pid(namespace: &str) -> Option<u32> {
    namespace
        .strip_prefix(NAMESPACE_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Namespaces named by this tool (`ip netns list`).
pub fn our_namespaces() -> Result<Vec<String>, LabError> {
    let out = process::run(command("ip", &["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| owner_pid(n).is_some())
        .map(str::to_string)
        .collect())
}

/// Deletes leftover namespaces whose creating process is gone (all of ours
/// with `all`), killing what still runs in them. Returns the names removed.
pub fn cleanup(all: bool) -> Result<Vec<String>, LabError> {
    let mut removed = Vec::new();
    for name in our_namespaces()? {
        let alive = owner_pid(&name)
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if alive && !all {
            continue;
        }
        let ns = Namespace(name.clone());
        kill_namespace_processes(&ns);
        process::run_to_completion(command("ip", &["netns", "del", &name]))?;
        removed.push(name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_only_our_names() {
        assert_eq!(owner_pid("cs-1234-0-a"), Some(1234));
        assert_eq!(owner_pid("cs-x-0-a"), None);
        assert_eq!(owner_pid("docker-1234"), None);
    }

    #[test]
    fn netem_arguments_split_the_rtt_and_spell_burst_loss() {
        let path = PathSpec {
            rtt: Duration::from_millis(40),
            jitter: Duration::ZERO,
            loss: LossModel::Uniform(0.01),
            seed: 1,
        };
        let a = netem_args(&path, Some(Rate::from_mbit(100.0))).join(" ");
        assert_eq!(
            a,
            "netem delay 20000us loss 1% rate 100000000bit limit 100000"
        );
        let burst = PathSpec {
            loss: LossModel::burst(0.5, 2.0),
            jitter: Duration::from_millis(4),
            ..path
        };
        let a = netem_args(&burst, None).join(" ");
        assert_eq!(
            a,
            "netem delay 22000us 2000us loss gemodel 50% 50% 100% 0% limit 100000"
        );
    }

    #[test]
    fn tbf_queue_holds_one_bdp() {
        let a = tbf_args(Rate::from_mbit(100.0), Duration::from_millis(40)).join(" ");
        assert_eq!(a, "tbf rate 100000000bit burst 12500 limit 500000");
    }
}
