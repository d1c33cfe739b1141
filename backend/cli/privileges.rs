//! Giving up root for the web server.

use anyhow::Context;
use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};

use crate::cluster::RunAs;

/// Drops to `who` for good: supplementary groups, then group, then user (in
/// that order, since after setuid we could no longer change groups).
pub fn drop_to(who: &RunAs) -> anyhow::Result<()> {
    setgroups(&[]).context("cannot clear supplementary groups")?;
    setgid(Gid::from_raw(who.gid))
        .with_context(|| format!("cannot switch to group {}", who.gid))?;
    setuid(Uid::from_raw(who.uid))
        .with_context(|| format!("cannot switch to user {}", who.name))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        anyhow::bail!("root privileges could be regained after dropping them");
    }
    Ok(())
}

/// Asks the kernel to send SIGTERM when the parent dies, then checks the
/// parent has not already died in between.
pub fn exit_with_parent() -> anyhow::Result<()> {
    let parent = nix::unistd::getppid();
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot ask to exit with the parent");
    }
    if nix::unistd::getppid() != parent || parent.as_raw() == 1 {
        anyhow::bail!("the parent process is gone");
    }
    Ok(())
}
