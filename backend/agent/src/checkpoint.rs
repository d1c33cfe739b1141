//! Whether this node could move jails live (checkpointed with CRIU and
//! restored with their processes and memory), and in words why not. A
//! jail always moves cold here: stopped, its volume shipped through the
//! backup target, started on its new node. The answer is recorded with the
//! node, so staff see it where they move jails.

use std::process::Command;
use std::time::Duration;

/// Why this node moves jails cold, in a sentence. With `check`, CRIU's
/// own check is run (`stockade doctor`); the agent does not run it when it
/// starts, because the check probes the kernel's features (namespaces,
/// netlink, the firewall) beside the node's running jails.
pub fn cold_moves_because(check: bool) -> String {
    let Some(criu) = ["/usr/sbin/criu", "/usr/bin/criu", "/sbin/criu"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file())
    else {
        return "CRIU is not installed on this node".to_owned();
    };
    if !check {
        return "CRIU is installed, but Stockade does not checkpoint jails yet \
                (`stockade doctor` says whether CRIU can run on this node's kernel)"
            .to_owned();
    }
    let mut child = match Command::new(criu)
        .arg("check")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return format!("CRIU does not run on this node ({e})"),
    };
    // `criu check` answers in well under a second; never hang the start.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return "CRIU's check did not answer on this node".to_owned();
            }
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return format!("CRIU's check failed on this node ({e})"),
    };
    if out.status.success() {
        return "CRIU's check passes on this node, but Stockade does not checkpoint jails yet"
            .to_owned();
    }
    format!(
        "CRIU cannot run on this node's kernel ({})",
        reason(&String::from_utf8_lossy(&out.stderr))
    )
}

/// The telling line of `criu check`'s errors, without its source position.
fn reason(stderr: &str) -> String {
    stderr
        .lines()
        .map(|l| match l.split_once("): ") {
            Some((head, rest)) if head.starts_with("Error (") => rest.trim(),
            _ => l.trim(),
        })
        .find(|l| !l.is_empty() && !l.starts_with("exited, status"))
        .unwrap_or("no reason given")
        .to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_telling_line_is_kept() {
        let stderr = "Error (criu/util.c:642): exited, status=1\nError (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\nError (criu/crtools.c:260): Could not initialize kernel features detection.\n";
        assert_eq!(
            super::reason(stderr),
            "vdso: Unexpected rt vDSO area bounds"
        );
        assert_eq!(super::reason(""), "no reason given");
    }
}
