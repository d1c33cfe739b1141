//! `stockade jail …` as an operator runs it. Needs root; without it the
//! tests say so loudly and return.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::agent::is_root;

/// The cgroup parent of this test process's jails, removed when the tests end.
fn parent() -> String {
    format!("stockade-cli-test-{}", std::process::id())
}

fn stockade(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stockade"))
        .env("STOCKADE_STATE_DIR", state)
        .env("STOCKADE_CGROUP_PARENT", parent())
        .env("STOCKADE_JAIL_NETWORK", "off")
        .env("STOCKADE_LOG", "warn")
        .env_remove("STOCKADE_CONFIG")
        .args(args)
        .output()
        .unwrap()
}

/// Removes this process's (empty) cgroup parents when a test ends.
struct Parents;
impl Drop for Parents {
    fn drop(&mut self) {
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(entry.path().join(parent()));
        }
    }
}

fn state_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Jail folders left in the state folder.
fn jails_left(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("local/jails"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn run_passes_output_and_exit_code_through_and_leaves_nothing() {
    if !is_root() {
        return;
    }
    let _parents = Parents;
    let state = state_dir();
    let out = stockade(
        state.path(),
        &[
            "jail",
            "run",
            "--name",
            "cli-run",
            "--memory",
            "64M",
            "--cpu",
            "500m",
            "--pids",
            "32",
            "--",
            "sh",
            "-c",
            "hostname; echo oops >&2; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli-run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
    assert!(jails_left(state.path()).is_empty());
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(parent())
            .join("cli-run")
            .exists()
    );
}

#[test]
fn bad_input_is_one_clear_line_and_creates_nothing() {
    if !is_root() {
        return;
    }
    let _parents = Parents;
    let state = state_dir();
    for (args, says) in [
        (
            &["jail", "run", "--name", "Bad_Name", "--", "true"][..],
            "may only contain a-z",
        ),
        (
            &["jail", "run", "--memory", "lots", "--", "true"][..],
            "is not a size",
        ),
        (
            &["jail", "run", "--cpu", "lots", "--", "true"][..],
            "is not a CPU amount",
        ),
        (
            &["jail", "run", "--cpu", "0", "--", "true"][..],
            "must be more than 0",
        ),
        (
            &["jail", "run", "--image", "no-such-image", "--", "true"][..],
            "does not exist",
        ),
        (
            &["jail", "create", "app1", "--kind", "app"][..],
            "needs a command",
        ),
        (&["jail", "start", "never-made"][..], "does not exist"),
    ] {
        let out = stockade(state.path(), args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    assert!(jails_left(state.path()).is_empty());
}

#[test]
fn persistent_jails_run_on_after_the_cli_and_rm_cleans_them() {
    if !is_root() {
        return;
    }
    let _parents = Parents;
    let state = state_dir();
    let ok = |args: &[&str]| {
        let out = stockade(state.path(), args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Whatever the test fails at, the jail it made goes (the fixture's
    // folder cannot while its volume is mounted).
    struct Removed<'a>(&'a Path);
    impl Drop for Removed<'_> {
        fn drop(&mut self) {
            let _ = stockade(self.0, &["jail", "rm", "cli-web"]);
        }
    }
    let _removed = Removed(state.path());
    ok(&[
        "jail", "create", "cli-web", "--disk", "32M", "--memory", "64M", "--", "sleep", "3600",
    ]);
    ok(&["jail", "start", "cli-web"]);
    let ls = ok(&["jail", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("cli-web") && l.contains("running")),
        "{ls}"
    );
    let out = stockade(
        state.path(),
        &[
            "jail",
            "exec",
            "cli-web",
            "--",
            "sh",
            "-c",
            "echo inside; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "inside");
    let stats = ok(&["jail", "stats", "cli-web"]);
    assert!(
        stats.contains("running") && stats.contains("memory"),
        "{stats}"
    );
    // A restart starts a new init.
    let pid = |ls: String| {
        ls.lines()
            .find(|l| l.starts_with("cli-web ") && l.contains(" running "))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("cli-web runs: {ls}"))
    };
    let before = pid(ok(&["jail", "ls"]));
    ok(&["jail", "restart", "cli-web", "--grace", "1"]);
    let after = pid(ok(&["jail", "ls"]));
    assert_ne!(before, after, "a restart starts a new init");
    ok(&["jail", "stop", "cli-web", "--grace", "1"]);
    ok(&["jail", "rm", "cli-web"]);
    ok(&["jail", "rm", "cli-web"]); // idempotent
    assert!(jails_left(state.path()).is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&state.path().display().to_string()),
        "no mount left"
    );
}

/// `tty_nr` as `/proc/<pid>/stat` shows it, for a terminal device number.
fn tty_nr(rdev: u64) -> u64 {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

#[test]
fn an_interactive_run_gets_a_terminal_of_its_own_not_the_operators() {
    if !is_root() {
        eprintln!("SKIPPED: jail commands need root");
        return;
    }
    let _parents = Parents;
    let state = state_dir();
    // The operator's terminal, as the test holds it.
    let pty = nix::pty::openpty(None, None).unwrap();
    let operator = nix::sys::stat::fstat(&pty.slave).unwrap().st_rdev;
    let slave = std::fs::File::from(pty.slave);
    let child = Command::new(env!("CARGO_BIN_EXE_stockade"))
        .env("STOCKADE_STATE_DIR", state.path())
        .env("STOCKADE_CGROUP_PARENT", parent())
        .env("STOCKADE_JAIL_NETWORK", "off")
        .env("STOCKADE_LOG", "warn")
        .env_remove("STOCKADE_CONFIG")
        .args(["jail", "run", "--image", "busybox", "--", "sh", "-c"])
        .arg("echo stat: $(cat /proc/$$/stat)")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    drop(slave);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // Everything the jail printed reached the operator's terminal.
    let mut master = std::fs::File::from(pty.master);
    let mut text = Vec::new();
    let _ = std::io::Read::read_to_end(&mut master, &mut text);
    let text = String::from_utf8_lossy(&text);
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("stat: "))
        .unwrap_or_else(|| panic!("no stat line in {text:?}"));
    let fields: Vec<&str> = line.split(' ').collect();
    let (pid, session, tty): (u64, u64, u64) = (
        fields[0].parse().unwrap(),
        fields[5].parse().unwrap(),
        fields[6].parse().unwrap(),
    );
    assert_eq!(
        session, pid,
        "the jail's command leads a session of its own"
    );
    assert_ne!(tty, 0, "it has a terminal");
    assert_ne!(tty, tty_nr(operator), "and it is not the operator's");
    assert!(jails_left(state.path()).is_empty());
}

#[test]
fn jails_get_a_user_namespace_unless_asked_not_to() {
    if !is_root() {
        return;
    }
    let _parents = Parents;
    let state = state_dir();
    let uid_map = |extra: &[&str]| {
        let mut args = vec!["jail", "run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "cat", "/proc/self/uid_map"]);
        let out = stockade(state.path(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .map(|f| f.parse::<u64>().unwrap())
            .collect::<Vec<_>>()
    };
    // By default root in the jail is the first id of a range of 65536 host
    // ids far from host root's.
    let map = uid_map(&[]);
    assert_eq!(map.len(), 3, "{map:?}");
    assert_eq!((map[0], map[2]), (0, 65_536), "{map:?}");
    assert!(map[1] >= 65_536, "{map:?}");
    // The old flag still works and means the same.
    assert_eq!(uid_map(&["--userns"])[2], 65_536);
    // Opting out: the whole host id space, root is host root.
    assert_eq!(uid_map(&["--no-userns"]), vec![0, 0, 4_294_967_295]);
    assert!(jails_left(state.path()).is_empty());
    let ranges = std::fs::read_dir(state.path().join("local/uids"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(ranges, 0, "every range is released with its jail");
}

/// Writes `files` as an uncompressed tar at `out`.
fn tar_file(out: &Path, files: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn a_docker_save_archive_imports_and_its_defaults_run_while_an_escaping_one_leaves_nothing() {
    if !is_root() {
        return;
    }
    let _parents = Parents;
    let state = state_dir();
    let work = tempfile::tempdir().unwrap();
    let config = common::registry::config(
        &["/bin/busybox", "sh", "-c"],
        &["echo never"],
        &["PATH=/bin", "GREETING=hello-from-archive"],
        "/srv/www",
        "www:www",
    );
    let layer = common::registry::busybox_layer();
    let archive = work.path().join("site.tar");
    tar_file(
        &archive,
        &[
            (
                "manifest.json",
                br#"[{"Config":"config.json","RepoTags":["site:1"],"Layers":["base/layer.tar"]}]"#,
            ),
            ("config.json", config.as_bytes()),
            ("base/layer.tar", &layer),
        ],
    );
    let out = stockade(
        state.path(),
        &["image", "import", "site", archive.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = stockade(
        state.path(),
        &[
            "jail",
            "run",
            "--name",
            "cli-oci",
            "--image",
            "site",
            "--memory",
            "64M",
            "--",
            "echo $GREETING $(busybox id -u):$(busybox id -g) $(pwd)",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-from-archive 33:33 /srv/www",
        "the entrypoint ran the command as the image's user, in its folder, with its env"
    );

    // A layer that climbs out with `..`: refused, and nothing of it kept.
    let evil = common::registry::layer(&[common::registry::Entry::File(
        "../../../tmp/escaped-by-image",
        b"x",
        0o644,
        0,
    )]);
    let archive = work.path().join("evil.tar");
    tar_file(
        &archive,
        &[
            (
                "manifest.json",
                br#"[{"Config":"config.json","Layers":["l/layer.tar"]}]"#,
            ),
            ("config.json", config.as_bytes()),
            ("l/layer.tar", &evil),
        ],
    );
    let out = stockade(
        state.path(),
        &["image", "import", "evil", archive.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("leads outside the image"), "{err}");
    assert!(!Path::new("/tmp/escaped-by-image").exists());
    let left: Vec<String> = std::fs::read_dir(state.path().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("evil"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
