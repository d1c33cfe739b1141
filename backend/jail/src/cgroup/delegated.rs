//! Jails in a subtree systemd delegated to the agent's unit
//! (`Delegate=yes`), as on hosts where systemd owns the cgroup tree: the
//! jails go under `<the unit's group>/jails`, and on v2 the agent first moves
//! itself into `<the unit's group>/agent`, since a group that hands
//! controllers to its children may hold no process itself.

use std::fs;
use std::path::Path;

use super::Version;
use crate::error::JailError;

/// The group of this process that systemd manages, from the text of
/// `/proc/self/cgroup`: the unified entry (`0::/…`) on v2; on v1 and hybrid
/// hosts systemd's own hierarchy (`name=systemd`), else the unified entry.
/// `None` at the root (not started as a unit) or when neither is there.
pub fn own_group(proc_self_cgroup: &str, version: Version) -> Option<String> {
    let entry = |wanted: &str| {
        proc_self_cgroup.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (controllers == wanted).then(|| path.trim().to_owned())
        })
    };
    let path = match version {
        Version::V2 => entry(""),
        Version::V1 => entry("name=systemd").or_else(|| entry("")),
    }?;
    let path = path.trim_matches('/');
    (!path.is_empty() && !path.split('/').any(|p| p == ".." || p == ".")).then(|| path.to_owned())
}

/// The parent, relative to the cgroup root, of the jails of an agent whose
/// unit has a delegated subtree; on v2 moves this process into the unit's
/// `agent` leaf first.
pub fn delegated_parent(
    cgroup_root: &Path,
    proc_root: &Path,
    version: Version,
) -> Result<String, JailError> {
    let file = proc_root.join("self/cgroup");
    let text = fs::read_to_string(&file).map_err(JailError::io("read", &file))?;
    let own = own_group(&text, version).ok_or_else(|| JailError::Invalid {
        what: "cgroup_manager = systemd",
        reason: "this process is in no systemd unit's group \
                     (run the agent as a unit with Delegate=yes)"
            .into(),
    })?;
    let own = own.strip_suffix("/agent").map(str::to_owned).unwrap_or(own);
    if version == Version::V2 {
        let leaf = cgroup_root.join(&own).join("agent");
        fs::create_dir_all(&leaf).map_err(JailError::io("create cgroup", &leaf))?;
        let procs = leaf.join("cgroup.procs");
        fs::write(&procs, "0").map_err(JailError::io("join", &procs))?;
    }
    Ok(format!("{own}/jails"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "12:memory:/system.slice/stockade-agent.service
4:cpu,cpuacct:/system.slice/stockade-agent.service
1:name=systemd:/system.slice/stockade-agent.service
0::/system.slice/stockade-agent.service
";

    #[test]
    fn the_units_group_is_found_on_each_kind_of_host() {
        assert_eq!(
            own_group(HYBRID, Version::V1).as_deref(),
            Some("system.slice/stockade-agent.service")
        );
        assert_eq!(
            own_group(
                "0::/system.slice/stockade-agent.service/agent\n",
                Version::V2
            )
            .as_deref(),
            Some("system.slice/stockade-agent.service/agent")
        );
        // v1 without systemd's hierarchy: the unified entry.
        assert_eq!(
            own_group(
                "4:memory:/elsewhere\n0::/system.slice/a.service\n",
                Version::V1
            )
            .as_deref(),
            Some("system.slice/a.service")
        );
    }

    #[test]
    fn a_process_outside_any_unit_is_refused() {
        assert_eq!(own_group("0::/\n", Version::V2), None);
        assert_eq!(own_group("1:name=systemd:/\n0::/\n", Version::V1), None);
        assert_eq!(own_group("4:memory:/x\n", Version::V2), None);
        assert_eq!(own_group("0::/a/../b\n", Version::V2), None);
    }

    #[test]
    fn on_v2_the_agent_moves_into_its_leaf_and_jails_go_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let (root, proc_root) = (dir.path().join("cgroup"), dir.path().join("proc"));
        fs::create_dir_all(proc_root.join("self")).unwrap();
        fs::write(
            proc_root.join("self/cgroup"),
            "0::/system.slice/stockade-agent.service\n",
        )
        .unwrap();
        let parent = delegated_parent(&root, &proc_root, Version::V2).unwrap();
        assert_eq!(parent, "system.slice/stockade-agent.service/jails");
        let procs = root.join("system.slice/stockade-agent.service/agent/cgroup.procs");
        assert_eq!(fs::read_to_string(procs).unwrap(), "0");
        // Started again, already in its leaf: the same parent.
        fs::write(
            proc_root.join("self/cgroup"),
            "0::/system.slice/stockade-agent.service/agent\n",
        )
        .unwrap();
        assert_eq!(
            delegated_parent(&root, &proc_root, Version::V2).unwrap(),
            parent
        );
        fs::write(proc_root.join("self/cgroup"), "0::/\n").unwrap();
        let err = delegated_parent(&root, &proc_root, Version::V2).unwrap_err();
        assert!(err.to_string().contains("Delegate=yes"), "{err}");
    }
}
