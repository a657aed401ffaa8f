//! Every binary's command line as a user meets it: `-h` explains every
//! flag, and a bad argument is one `error:` line and a non-zero exit, never
//! a panic. None of these runs reaches the network.

use std::process::{Command, Output, Stdio};

mod support;

fn run(exe: &str, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run")
}

const BINARIES: [&str; 5] = [
    env!("CARGO_BIN_EXE_tracker"),
    env!("CARGO_BIN_EXE_peer"),
    env!("CARGO_BIN_EXE_demo"),
    env!("CARGO_BIN_EXE_rudp-perf"),
    env!("CARGO_BIN_EXE_netlab"),
];

/// The option lines of a `-h` text that carry no description.
fn undocumented_options(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .filter(|l| l.trim_start().starts_with('-'))
        .filter(|l| {
            let flag_end = l
                .trim_start()
                .find("  ")
                .map(|i| i + l.len() - l.trim_start().len());
            flag_end.is_none_or(|i| l[i..].trim().is_empty())
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_help_explains_every_flag() {
    let sample = "Usage: x\n\nOptions:\n      --foo <FOO>\n      --bar  Does bar [default: 1]\n";
    assert_eq!(undocumented_options(sample), ["      --foo <FOO>"]);
    let mut pages: Vec<(&str, Vec<&str>)> = BINARIES.iter().map(|b| (*b, vec!["-h"])).collect();
    let perf = env!("CARGO_BIN_EXE_rudp-perf");
    let netlab = env!("CARGO_BIN_EXE_netlab");
    for sub in ["server", "client"] {
        pages.push((perf, vec![sub, "-h"]));
    }
    for sub in ["compare", "grid", "swarm", "cleanup"] {
        pages.push((netlab, vec![sub, "-h"]));
    }
    for (exe, args) in pages {
        let out = run(exe, &args);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{exe} {args:?}");
        assert!(help.contains("Options:"), "{exe} {args:?}:\n{help}");
        let bare = undocumented_options(&help);
        assert!(
            bare.is_empty(),
            "{exe} {args:?}: no description for {bare:?}"
        );
    }
}

#[test]
fn bad_arguments_are_one_error_line_and_a_failure() {
    let (tracker, peer) = (env!("CARGO_BIN_EXE_tracker"), env!("CARGO_BIN_EXE_peer"));
    let (perf, netlab) = (
        env!("CARGO_BIN_EXE_rudp-perf"),
        env!("CARGO_BIN_EXE_netlab"),
    );
    let cases: &[(&str, &[&str], &str)] = &[
        (tracker, &["99999"], "99999"),
        (tracker, &["5150", "--port", "5151"], "--port"),
        (tracker, &["--bind", "1.2.3"], "--bind"),
        (tracker, &["--heartbeat-ms", "0"], "--heartbeat-ms"),
        (peer, &["127.0.0.1"], "required arguments"),
        (
            peer,
            &["--dir", "/nonexistent-dir", "127.0.0.1", "5150"],
            "--dir",
        ),
        (peer, &["--max-upload", "0", "127.0.0.1", "5150"], "no unit"),
        (peer, &["--loss", "200%", "127.0.0.1", "5150"], "--loss"),
        (peer, &["--mtu", "10", "127.0.0.1", "5150"], "--mtu"),
        // A panic (Duration::from_secs_f64 overflow) before.
        (
            perf,
            &["client", "127.0.0.1:7000", "--time", "1e20"],
            "--time",
        ),
        (
            perf,
            &["client", "127.0.0.1:7000", "--bytes", "0"],
            "at least one byte",
        ),
        (perf, &["client", "127.0.0.1:7000", "--time", "0"], "--time"),
        (perf, &["server", "--port", "99999"], "--port"),
        // Checked before any namespace is built.
        (
            netlab,
            &["compare", "--perf-bin", "/nonexistent/rudp-perf"],
            "no such program",
        ),
        (netlab, &["compare", "--probes", "99999999"], "--probes"),
        (netlab, &["swarm", "--size", "0"], "at least one byte"),
        (
            netlab,
            &["swarm", "--demo-bin", "/nonexistent/demo"],
            "no such program",
        ),
        (
            netlab,
            &["grid", "--out", "/proc/no/such/dir"],
            "/proc/no/such/dir",
        ),
        (netlab, &["compare", "--secs", "0"], "--secs"),
    ];
    for (exe, args, needle) in cases {
        let out = run(exe, args);
        support::assert_one_error_line(&out, needle, &format!("{exe} {args:?}"));
    }
}

#[test]
fn a_client_without_a_server_fails_with_a_hint() {
    // Port 1 on loopback: nobody listens (rudp: no handshake; TCP: refused).
    for extra in [&[][..], &["--tcp"][..]] {
        let perf = env!("CARGO_BIN_EXE_rudp-perf");
        let out = run(
            perf,
            &[&["client", "127.0.0.1:1", "--time", "1"][..], extra].concat(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: "), "{stderr}");
        assert!(
            last.contains("is `rudp-perf server` (still) running at 127.0.0.1:1"),
            "{last}"
        );
    }
}
