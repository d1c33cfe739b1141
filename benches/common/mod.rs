//! What the benches share.
#![allow(dead_code)]

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
    }
}
