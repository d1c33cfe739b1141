//! Finding every jail-related object on the node: state records, cgroups,
//! mounts, loop devices, processes and veths, grouped by jail name, so an agent
//! starting up can adopt what it wants and remove the rest.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::hostinfo::{LoopDevice, MountEntry};
use crate::state::JailRecord;

/// Every object of one jail found on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiscoveredJail {
    /// Its state record, if one exists and parses.
    pub record: Option<JailRecord>,
    /// Its state folder, if present.
    pub state_dir: Option<PathBuf>,
    /// Its cgroup folders.
    pub cgroups: Vec<PathBuf>,
    /// Mount points of its objects in the caller's mount namespace.
    pub mounts: Vec<PathBuf>,
    /// Loop devices backed by its volume.
    pub loop_devices: Vec<PathBuf>,
    /// Host pids in its cgroup.
    pub processes: Vec<i32>,
    /// Host pid of its init, if the recorded init is alive.
    pub init: Option<i32>,
    /// Its host-side veth, if present on the node's bridge.
    pub links: Vec<String>,
}

/// What an agent should make of a discovered jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Recorded and its init runs.
    Running,
    /// Recorded, nothing runs (volume may be mounted).
    Stopped,
    /// Recorded as transient (`run`) or recorded running with a dead init
    /// but processes left: leftovers of a crash; destroy it.
    Stale,
    /// Objects without a record: nobody owns them; destroy it.
    Orphaned,
}

impl DiscoveredJail {
    /// Classifies the jail from what was found.
    pub fn condition(&self) -> Condition {
        match &self.record {
            None => Condition::Orphaned,
            Some(r) if r.transient && self.init.is_none() => Condition::Stale,
            Some(_) if self.init.is_some() => Condition::Running,
            Some(_) if !self.processes.is_empty() => Condition::Stale,
            Some(_) => Condition::Stopped,
        }
    }
}

/// The jails found on the node, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Discovered {
    /// Every jail with at least one object, by name.
    pub jails: BTreeMap<String, DiscoveredJail>,
    /// Ports of the node's bridge that belong to no jail found (a jail
    /// whose every other trace is gone); remove with
    /// `Engine::remove_stray_link`.
    pub stray_links: Vec<String>,
}

/// The jail a path under `<state>/jails/` belongs to.
fn jail_of(jails_dir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(jails_dir).ok()?;
    Some(
        rel.components()
            .next()?
            .as_os_str()
            .to_string_lossy()
            .into_owned(),
    )
}

/// What was read from the host, as plain data.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub state_dirs: Vec<(String, PathBuf, Option<JailRecord>)>,
    pub cgroups: Vec<(String, PathBuf)>,
    pub cgroup_pids: Vec<(String, Vec<i32>)>,
    pub mounts: Vec<MountEntry>,
    pub loops: Vec<LoopDevice>,
    pub live_inits: Vec<(String, i32)>,
    /// Ports of the node's bridge.
    pub bridge_ports: Vec<String>,
}

/// Groups observed objects by jail; objects outside `jails_dir` are ignored.
pub(crate) fn group(jails_dir: &Path, seen: Observed) -> Discovered {
    let mut out = Discovered::default();
    for (name, dir, record) in seen.state_dirs {
        let j = out.jails.entry(name).or_default();
        j.state_dir = Some(dir);
        j.record = record;
    }
    for (name, dir) in seen.cgroups {
        out.jails.entry(name).or_default().cgroups.push(dir);
    }
    for (name, pids) in seen.cgroup_pids {
        let j = out.jails.entry(name).or_default();
        j.processes.extend(pids);
        j.processes.sort_unstable();
        j.processes.dedup();
    }
    for m in seen.mounts {
        if let Some(name) = jail_of(jails_dir, &m.mount_point) {
            out.jails
                .entry(name)
                .or_default()
                .mounts
                .push(m.mount_point);
        }
    }
    for l in seen.loops {
        if let Some(name) = jail_of(jails_dir, &l.backing_file) {
            out.jails
                .entry(name)
                .or_default()
                .loop_devices
                .push(l.device);
        }
    }
    for (name, pid) in seen.live_inits {
        out.jails.entry(name).or_default().init = Some(pid);
    }
    let mut ports = seen.bridge_ports;
    for (name, j) in &mut out.jails {
        let link = crate::net::host_link(name);
        if let Some(i) = ports.iter().position(|p| *p == link) {
            j.links.push(ports.swap_remove(i));
        }
    }
    ports.sort();
    out.stray_links = ports;
    out
}

/// The jail folders under `jails_dir` with their records.
pub(crate) fn state_dirs(jails_dir: &Path) -> Vec<(String, PathBuf, Option<JailRecord>)> {
    let Ok(rd) = fs::read_dir(jails_dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| {
            let record = fs::read(e.path().join("jail.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path(),
                record,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::JailSpec;
    use crate::state::{InitProcess, Upper};
    use stockade_domain::{JailKind, JailName, Limits};

    fn record(transient: bool) -> JailRecord {
        JailRecord {
            spec: JailSpec {
                name: JailName::parse("a").unwrap(),
                hostname: JailName::parse("a").unwrap(),
                image: "busybox".into(),
                kind: JailKind::App,
                command: vec!["true".into()],
                limits: Limits::default(),
                network: None,
                user_namespace: false,
                env: Vec::new(),
            },
            upper: Upper::Volume,
            loop_device: None,
            init: Some(InitProcess {
                pid: 10,
                start_time: 1,
            }),
            transient,
            uid_base: None,
            id_shift: None,
            last_exit: None,
        }
    }

    #[test]
    fn bridge_ports_go_to_their_jails_and_the_rest_are_strays() {
        let jails = Path::new("/s/jails");
        let web = crate::net::host_link("web");
        let seen = Observed {
            state_dirs: vec![("web".into(), jails.join("web"), Some(record(false)))],
            bridge_ports: vec!["sk0123456789ab".into(), web.clone()],
            ..Observed::default()
        };
        let d = group(jails, seen);
        assert_eq!(d.jails["web"].links, [web]);
        assert_eq!(d.stray_links, ["sk0123456789ab"]);
    }

    #[test]
    fn objects_are_grouped_by_jail_and_classified() {
        let jails = Path::new("/s/jails");
        let seen = Observed {
            state_dirs: vec![
                ("web".into(), jails.join("web"), Some(record(false))),
                ("old".into(), jails.join("old"), Some(record(false))),
                ("tmp".into(), jails.join("tmp"), Some(record(true))),
            ],
            cgroups: vec![
                ("web".into(), "/cg/cpu/stockade/web".into()),
                ("lost".into(), "/cg/cpu/stockade/lost".into()),
            ],
            cgroup_pids: vec![("web".into(), vec![10, 11]), ("lost".into(), vec![99])],
            mounts: vec![
                MountEntry {
                    mount_point: jails.join("web/volume"),
                    fstype: "ext4".into(),
                    source: "/dev/loop1".into(),
                },
                MountEntry {
                    mount_point: "/home".into(),
                    fstype: "ext4".into(),
                    source: "/dev/sda2".into(),
                },
            ],
            loops: vec![
                LoopDevice {
                    device: "/dev/loop1".into(),
                    backing_file: jails.join("web/volume.img"),
                },
                LoopDevice {
                    device: "/dev/loop2".into(),
                    backing_file: jails.join("gone/volume.img"),
                },
                LoopDevice {
                    device: "/dev/loop3".into(),
                    backing_file: "/var/lib/other.img".into(),
                },
            ],
            live_inits: vec![("web".into(), 10)],
            bridge_ports: vec![],
        };
        let d = group(jails, seen);
        assert_eq!(
            d.jails.keys().collect::<Vec<_>>(),
            ["gone", "lost", "old", "tmp", "web"]
        );
        let web = &d.jails["web"];
        assert_eq!(web.condition(), Condition::Running);
        assert_eq!(web.mounts, [jails.join("web/volume")]);
        assert_eq!(web.loop_devices, [PathBuf::from("/dev/loop1")]);
        assert_eq!(web.processes, [10, 11]);
        assert_eq!(d.jails["old"].condition(), Condition::Stopped);
        assert_eq!(d.jails["tmp"].condition(), Condition::Stale);
        assert_eq!(d.jails["lost"].condition(), Condition::Orphaned);
        assert_eq!(d.jails["gone"].condition(), Condition::Orphaned);
        assert_eq!(d.jails["gone"].loop_devices, [PathBuf::from("/dev/loop2")]);
    }
}
