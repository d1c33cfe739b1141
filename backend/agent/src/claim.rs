//! One agent per set of host names: the cgroup parent group, bridge and
//! firewall table an agent uses are claimed on the host before it touches
//! anything, so a second agent started with the same names (another state
//! folder, the same node name) stops with a clear error instead of taking
//! the first one's jails for strays.
//!
//! A claim is a small file naming the holder (pid, process start time and
//! state folder), checked and written under a brief `flock`. It names a
//! process rather than holding a lock for the agent's life because jail
//! processes started by the agent must not keep its claim alive.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

/// Field 22 of `/proc/<pid>/stat`: when the process started.
fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The host names this agent holds; given back (their files removed) when dropped.
#[derive(Debug)]
#[must_use = "the names are given back when this is dropped"]
pub struct Claims {
    files: Vec<std::path::PathBuf>,
}

impl Drop for Claims {
    fn drop(&mut self) {
        let mine = format!("{} ", std::process::id());
        for f in &self.files {
            if fs::read_to_string(f).is_ok_and(|held| held.starts_with(&mine)) {
                let _ = fs::remove_file(f);
            }
        }
    }
}

/// Claims each (kind, name) for this process, whose state folder is
/// `state_dir`. Fails, naming the holder, when a live process of another
/// state folder holds one; a claim of a process that has ended is taken over.
pub fn claim_host_names(
    run_dir: &Path,
    proc_root: &Path,
    state_dir: &Path,
    names: &[(&str, &str)],
) -> anyhow::Result<Claims> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let me = std::process::id();
    let my_start = start_time(proc_root, me).unwrap_or(0);
    let mut claims = Claims { files: Vec::new() };
    for (kind, name) in names {
        // A cgroup parent in a delegated subtree is a path: one file name.
        let path = run_dir.join(format!("{kind}-{}", name.replace('/', "%")));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut file = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("cannot lock {}", path.display()))?;
        let mut held = String::new();
        file.read_to_string(&mut held)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut parts = held.splitn(3, ' ');
        let holder = (
            parts.next().and_then(|p| p.parse::<u32>().ok()),
            parts.next().and_then(|s| s.parse::<u64>().ok()),
            parts.next().map(str::trim),
        );
        if let (Some(pid), Some(start), Some(dir)) = holder
            && pid != me
            && start_time(proc_root, pid) == Some(start)
            && Path::new(dir) != state_dir
        {
            anyhow::bail!(
                "the {kind} {name:?} is in use by the agent of state folder {dir} (pid {pid}); \
                 give each agent on a host its own node_name (its cgroup group), bridge, \
                 firewall_table and state_dir"
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{me} {my_start} {}", state_dir.display())
            .with_context(|| format!("cannot write {}", path.display()))?;
        claims.files.push(path);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(run: &Path, state: &str) -> anyhow::Result<Claims> {
        claim_host_names(
            run,
            Path::new("/proc"),
            Path::new(state),
            &[("cgroup", "stockade-x")],
        )
    }

    #[test]
    fn a_live_holder_of_another_state_folder_keeps_its_names() {
        let run = std::env::temp_dir().join(format!("stockade-claim-{}", std::process::id()));
        let path = run.join("cgroup-stockade-x");
        let mine = claim(&run, "/a").unwrap();
        assert!(fs::read_to_string(&path).unwrap().ends_with(" /a"));
        // Pretend the holder is another live process: our parent.
        let parent = nix::unistd::getppid().as_raw().unsigned_abs();
        let start = start_time(Path::new("/proc"), parent).unwrap();
        fs::write(&path, format!("{parent} {start} /a")).unwrap();
        let e = claim(&run, "/b").unwrap_err().to_string();
        assert!(e.contains("in use by the agent of state folder /a"), "{e}");
        // A holder that has ended (another start time) is taken over.
        fs::write(&path, format!("{parent} {} /a", start + 1)).unwrap();
        let taken = claim(&run, "/b").unwrap();
        assert!(fs::read_to_string(&path).unwrap().ends_with(" /b"));
        // Given back when dropped.
        drop(mine);
        drop(taken);
        assert!(!path.exists());
        fs::remove_dir_all(&run).unwrap();
    }
}
