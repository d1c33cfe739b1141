//! What the benches share.
#![allow(dead_code)]

pub mod node;
pub mod panel;

use stockade_domain::{JailKind, JailName, Limits};
use stockade_jail::{JailSpec, NetSpec};

/// An idle system jail (`sleep`, 100m CPU, 32 MiB, 16 pids), with a
/// network or without, unprivileged (a user namespace) as the agent runs it.
pub fn idle_jail(name: &JailName, network: Option<NetSpec>) -> JailSpec {
    JailSpec {
        name: name.clone(),
        hostname: name.clone(),
        image: "busybox".into(),
        kind: JailKind::System,
        command: vec!["sleep".into(), "1000000".into()],
        limits: Limits {
            cpu_millicores: 100,
            memory_bytes: 32 << 20,
            pids: 16,
            ..Limits::default()
        },
        network,
        user_namespace: true,
        env: Vec::new(),
    }
}

/// `wrk -t2 -c16 -d10s --latency` against `url` with `header` (`Name: value`)
/// if given: requests/s and the p99 latency as `wrk` prints it. Every
/// answer must be a success.
pub fn wrk(url: &str, header: Option<&str>) -> (f64, String) {
    let mut cmd = std::process::Command::new("wrk");
    cmd.args(["-t", "2", "-c", "16", "-d", "10s", "--latency"]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.contains("Non-2xx"),
        "every answer was a success:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .map(|l| l.trim().trim_start_matches("99%").trim().to_owned())
        .unwrap_or_default();
    (rps, p99)
}

/// A latency as `wrk` prints it (`1.23ms`, `850.00us`, `1.02s`), in ms.
pub fn wrk_ms(text: &str) -> f64 {
    if let Some(v) = text.strip_suffix("ms") {
        v.parse().unwrap_or(f64::NAN)
    } else if let Some(v) = text.strip_suffix("us") {
        v.parse::<f64>().unwrap_or(f64::NAN) / 1000.0
    } else if let Some(v) = text.strip_suffix('s') {
        v.parse::<f64>().unwrap_or(f64::NAN) * 1000.0
    } else {
        f64::NAN
    }
}
