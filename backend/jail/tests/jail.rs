//! Root-only tests of real jails: lifecycle, isolation, and each quota
//! proven by a workload inside a jail. Each test checks on exit (through
//! the fixture) that no mount, loop device, cgroup or state is left.

mod common;

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use stockade_jail::{Condition, Engine, EngineConfig, JailKind, JailName, JailStatus, Limits};

fn sh(f: &Fixture, name: &JailName, script: &str) -> i32 {
    f.engine
        .exec(name, &["sh".into(), "-c".into(), script.into()])
        .unwrap()
}

fn running_pid(f: &Fixture, name: &JailName) -> i32 {
    match f.engine.status(name).unwrap() {
        Some(JailStatus::Running { pid }) => pid,
        other => panic!("{name} not running: {other:?}"),
    }
}

const SLEEPER: &[&str] = &["sleep", "600"];

#[test]
fn run_passes_exit_codes_and_leaves_nothing() {
    if !root_or_skip("run_passes_exit_codes_and_leaves_nothing") {
        return;
    }
    let f = Fixture::new();
    let spec = f.spec("run", JailKind::App, &[], small_limits());
    assert_eq!(f.engine.run(&spec, &["/bin/true".into()]).unwrap(), 0);
    let spec = f.spec("run", JailKind::App, &[], small_limits());
    assert_eq!(
        f.engine
            .run(&spec, &["sh".into(), "-c".into(), "exit 7".into()])
            .unwrap(),
        7
    );
    let spec = f.spec("run", JailKind::App, &[], small_limits());
    assert_eq!(
        f.engine
            .run(&spec, &["sh".into(), "-c".into(), "kill -9 $$".into()])
            .unwrap(),
        137
    );
    let spec = f.spec("run", JailKind::App, &[], small_limits());
    let err = f
        .engine
        .run(&spec, &["/no/such/program".into()])
        .unwrap_err();
    assert!(err.to_string().contains("/no/such/program"), "{err}");
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

/// Run by `run_passes_stdout_through` in a child process.
#[test]
#[ignore = "helper, run by run_passes_stdout_through"]
fn helper_run_echo() {
    let Ok(state) = std::env::var("STOCKADE_TEST_STATE") else {
        return;
    };
    let mut cfg = EngineConfig::new(format!("{state}/state"), format!("{state}/images"));
    cfg.cgroup_parent = std::env::var("STOCKADE_TEST_CGROUP").unwrap();
    let engine = Engine::new(cfg).unwrap();
    let name = JailName::parse(&std::env::var("STOCKADE_TEST_JAIL").unwrap()).unwrap();
    let spec = stockade_jail::JailSpec {
        hostname: name.clone(),
        name,
        image: "busybox".into(),
        kind: JailKind::App,
        command: vec![],
        limits: small_limits(),
        network: None,
        user_namespace: false,
        env: Vec::new(),
    };
    let code = engine
        .run(
            &spec,
            &[
                "sh".into(),
                "-c".into(),
                "echo out-marker; echo err-marker >&2; exit 3".into(),
            ],
        )
        .unwrap();
    std::process::exit(code);
}

#[test]
fn run_passes_stdout_through() {
    if !root_or_skip("run_passes_stdout_through") {
        return;
    }
    let f = Fixture::new();
    let spec = f.spec("stdio", JailKind::App, &[], small_limits());
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_run_echo",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STOCKADE_TEST_STATE", f.dir.path())
        .env("STOCKADE_TEST_CGROUP", &f.cgroup_parent)
        .env("STOCKADE_TEST_JAIL", spec.name.as_str())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("out-marker"),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err-marker"),
        "{out:?}"
    );
}

#[test]
fn lifecycle_steps_are_idempotent_and_limits_change_live() {
    if !root_or_skip("lifecycle_steps_are_idempotent_and_limits_change_live") {
        return;
    }
    let f = Fixture::new();
    let mut limits = small_limits();
    limits.disk_bytes = 64 << 20;
    let spec = f.spec("life", JailKind::System, SLEEPER, limits);
    let name = spec.name.clone();
    assert_eq!(f.engine.status(&name).unwrap(), None);
    f.engine.create(&spec).unwrap();
    f.engine.create(&spec).unwrap();
    assert_eq!(f.engine.status(&name).unwrap(), Some(JailStatus::Stopped));
    f.engine.start(&name).unwrap();
    let pid = running_pid(&f, &name);
    f.engine.start(&name).unwrap();
    assert_eq!(
        running_pid(&f, &name),
        pid,
        "start of a running jail is a no-op"
    );
    // Files written survive a restart: they live on the volume.
    assert_eq!(sh(&f, &name, "echo kept > /root/file"), 0);
    f.engine.restart(&name, Duration::from_secs(2)).unwrap();
    assert_ne!(running_pid(&f, &name), pid);
    assert_eq!(sh(&f, &name, "[ \"$(cat /root/file)\" = kept ]"), 0);
    // Limits change live: memory and pids in the cgroup, disk grows online.
    let mut bigger = limits;
    bigger.memory_bytes = 200 << 20;
    bigger.pids = 99;
    bigger.disk_bytes = 128 << 20;
    // Online growth needs CAP_SYS_RESOURCE (the ext4 resize ioctl); on a
    // host without it the volume grows while the jail is stopped.
    let online = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap() & (1 << 24) != 0)
        .unwrap();
    if online {
        f.engine.update_limits(&name, &bigger).unwrap();
    } else {
        eprintln!("no CAP_SYS_RESOURCE: growing the volume offline");
        f.engine.stop(&name, Duration::from_secs(2)).unwrap();
        f.engine.update_limits(&name, &bigger).unwrap();
        f.engine.start(&name).unwrap();
        assert_eq!(
            sh(&f, &name, "[ \"$(cat /root/file)\" = kept ]"),
            0,
            "data survives growth"
        );
    }
    let cg = |ctrl: &str, file: &str| {
        std::fs::read_to_string(format!(
            "/sys/fs/cgroup/{ctrl}/{}/{name}/{file}",
            f.cgroup_parent
        ))
        .unwrap()
    };
    assert_eq!(
        cg("memory", "memory.limit_in_bytes").trim(),
        (200u64 << 20).to_string()
    );
    assert_eq!(cg("pids", "pids.max").trim(), "99");
    // df inside the jail sees the grown volume (1K blocks, > 100 MiB).
    assert_eq!(
        sh(
            &f,
            &name,
            "[ $(df -k / | tail -1 | awk '{print $2}') -gt 102400 ]"
        ),
        0
    );
    let mut shrink = bigger;
    shrink.disk_bytes = 32 << 20;
    assert!(f.engine.update_limits(&name, &shrink).is_err());
    f.engine.stop(&name, Duration::from_secs(2)).unwrap();
    f.engine.stop(&name, Duration::from_secs(2)).unwrap();
    assert_eq!(f.engine.status(&name).unwrap(), Some(JailStatus::Stopped));
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_err(),
        "init gone"
    );
    f.engine.destroy(&name).unwrap();
    f.engine.destroy(&name).unwrap();
    assert_eq!(f.engine.status(&name).unwrap(), None);
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn jail_sees_only_its_processes_hostname_and_image() {
    if !root_or_skip("jail_sees_only_its_processes_hostname_and_image") {
        return;
    }
    let f = Fixture::new();
    let marker = f.dir.path().join("host-only-marker");
    std::fs::write(&marker, "secret").unwrap();
    let host_name = nix::unistd::gethostname().unwrap();
    let spec = f.spec("iso", JailKind::App, &[], small_limits());
    let script = format!(
        "[ \"$(hostname)\" = {name} ] || exit 10; \
         ! hostname changed-inside 2>/dev/null || exit 11; \
         [ $(ls -d /proc/[0-9]* | wc -l) -le 6 ] || exit 12; \
         [ -d /proc/1 ] && [ ! -e /proc/1/exe ] || exit 13; \
         [ ! -e {marker} ] || exit 14; \
         [ ! -e /home/{marker_name} ] || exit 15; \
         [ \"$(ls /sys/class/net)\" = lo ] || exit 16; \
         [ -c /dev/null ] && [ -c /dev/urandom ] && [ -c /dev/pts/ptmx ] || exit 17; \
         [ ! -e /dev/vda ] && [ ! -e /dev/sda ] || exit 18; \
         ! mount -t tmpfs none /mnt 2>/dev/null || exit 19; \
         ! echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || exit 20; \
         ! mknod /tmp/disk b 8 0 2>/dev/null || exit 21; \
         echo x > /tmp/w && [ -d /proc/self ] || exit 22; \
         ! grep -qv ':/$' /proc/self/cgroup || exit 23",
        name = spec.name,
        marker = marker.display(),
        marker_name = marker.file_name().unwrap().to_string_lossy(),
    );
    assert_eq!(
        f.engine
            .run(&spec, &["sh".into(), "-c".into(), script])
            .unwrap(),
        0
    );
    // With full privileges inside the jail's UTS namespace, a new hostname
    // is the jail's alone.
    let spec = f.spec("uts", JailKind::System, SLEEPER, small_limits());
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let pid = running_pid(&f, &spec.name);
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/uts")).unwrap();
    // SAFETY: the child makes only system calls, then _exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let ok = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWUTS).is_ok()
                && nix::unistd::sethostname("changed-inside").is_ok();
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            assert_eq!(
                nix::sys::wait::waitpid(child, None).unwrap(),
                nix::sys::wait::WaitStatus::Exited(child, 0)
            );
        }
    }
    assert_eq!(
        sh(&f, &spec.name, "[ \"$(hostname)\" = changed-inside ]"),
        0
    );
    assert_eq!(
        nix::unistd::gethostname().unwrap(),
        host_name,
        "host hostname untouched"
    );
}

#[test]
fn chroot_escape_does_not_reach_the_host_root() {
    if !root_or_skip("chroot_escape_does_not_reach_the_host_root") {
        return;
    }
    let f = Fixture::new();
    let marker = f.dir.path().join("escape-marker");
    std::fs::write(&marker, "host").unwrap();
    let spec = f.spec("esc", JailKind::System, SLEEPER, small_limits());
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let pid = running_pid(&f, &spec.name);
    // The classic escape, done with full root privileges inside the jail's
    // mount namespace: mkdir x; chroot x; cd ../../..; chroot .
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).unwrap();
    let marker_c = CString::new(marker.to_str().unwrap()).unwrap();
    // SAFETY: the child makes only system calls on prepared data, then _exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let code = (|| -> Result<i32, nix::Error> {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS)?;
                nix::unistd::chdir(c"/")?;
                let _ =
                    nix::unistd::mkdir(c"/tmp/x", nix::sys::stat::Mode::from_bits_truncate(0o755));
                nix::unistd::chroot(c"/tmp/x")?;
                for _ in 0..64 {
                    nix::unistd::chdir(c"..")?;
                }
                nix::unistd::chroot(c".")?;
                // SAFETY: access on a valid C string.
                let seen = unsafe { libc::access(marker_c.as_ptr(), libc::F_OK) } == 0;
                // SAFETY: as above.
                let has_busybox =
                    unsafe { libc::access(c"/bin/busybox".as_ptr(), libc::F_OK) } == 0;
                Ok(if seen {
                    1
                } else if !has_busybox {
                    2
                } else {
                    0
                })
            })()
            .unwrap_or(3);
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(child, 0),
                "1: host visible, 2: not in the jail, 3: syscall failed"
            );
        }
    }
}

/// Run by `jail_survives_its_starter_being_killed` in a child process.
#[test]
#[ignore = "helper, run by jail_survives_its_starter_being_killed"]
fn helper_start_then_hang() {
    let Ok(state) = std::env::var("STOCKADE_TEST_STATE") else {
        return;
    };
    let mut cfg = EngineConfig::new(format!("{state}/state"), format!("{state}/images"));
    cfg.cgroup_parent = std::env::var("STOCKADE_TEST_CGROUP").unwrap();
    let engine = Engine::new(cfg).unwrap();
    let name = JailName::parse(&std::env::var("STOCKADE_TEST_JAIL").unwrap()).unwrap();
    engine.start(&name).unwrap();
    println!("started");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn jail_survives_its_starter_being_killed() {
    if !root_or_skip("jail_survives_its_starter_being_killed") {
        return;
    }
    let f = Fixture::new();
    let mut limits = small_limits();
    limits.disk_bytes = 32 << 20;
    let spec = f.spec("orphan", JailKind::System, SLEEPER, limits);
    f.engine.create(&spec).unwrap();
    let mut starter = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_start_then_hang",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STOCKADE_TEST_STATE", f.dir.path())
        .env("STOCKADE_TEST_CGROUP", &f.cgroup_parent)
        .env("STOCKADE_TEST_JAIL", spec.name.as_str())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(starter.stdout.take().unwrap());
    let started = std::io::BufRead::lines(out)
        .map_while(Result::ok)
        .any(|l| l.contains("started"));
    assert!(started, "the helper started the jail");
    let pid = running_pid(&f, &spec.name);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(starter.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    starter.wait().unwrap();
    assert_eq!(
        running_pid(&f, &spec.name),
        pid,
        "the jail outlives its starter"
    );
    assert_eq!(sh(&f, &spec.name, "true"), 0);
    f.engine.destroy(&spec.name).unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn system_jail_serves_http_on_its_own_loopback() {
    if !root_or_skip("system_jail_serves_http_on_its_own_loopback") {
        return;
    }
    let f = Fixture::new();
    let spec = f.spec("www", JailKind::System, &[], small_limits());
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let script = "for i in $(seq 1 100); do wget -q -O - http://127.0.0.1/ 2>/dev/null | grep -q 'It works' && exit 0; usleep 20000; done; exit 1";
    assert_eq!(sh(&f, &spec.name, script), 0);
    // The init forwards SIGTERM to httpd: a graceful stop.
    let t = Instant::now();
    f.engine.stop(&spec.name, Duration::from_secs(5)).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "httpd should exit on SIGTERM"
    );
}

#[test]
fn fork_bomb_stays_at_the_pids_limit() {
    if !root_or_skip("fork_bomb_stays_at_the_pids_limit") {
        return;
    }
    let f = Fixture::new();
    let limits = Limits {
        cpu_millicores: 500,
        memory_bytes: 128 << 20,
        pids: 32,
        ..Limits::default()
    };
    let spec = f.spec(
        "bomb",
        JailKind::System,
        &["sh", "-c", "b(){ b | b & }; b; sleep 600"],
        limits,
    );
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut usage = f.engine.usage(&spec.name).unwrap();
    while usage.pids_limit_hits == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        usage = f.engine.usage(&spec.name).unwrap();
    }
    assert!(usage.pids_limit_hits > 0, "{usage:?}");
    assert!(usage.pids <= 32, "{usage:?}");
    assert!(
        Command::new("true").status().unwrap().success(),
        "the host can still fork"
    );
    f.engine.destroy(&spec.name).unwrap();
}

#[test]
fn memory_hog_is_oom_killed_inside_the_jail_and_counted() {
    if !root_or_skip("memory_hog_is_oom_killed_inside_the_jail_and_counted") {
        return;
    }
    let f = Fixture::new();
    let limits = Limits {
        cpu_millicores: 1000,
        memory_bytes: 32 << 20,
        pids: 64,
        ..Limits::default()
    };
    let spec = f.spec("oom", JailKind::System, SLEEPER, limits);
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let code = f
        .engine
        .exec(
            &spec.name,
            &[
                "dd".into(),
                "if=/dev/zero".into(),
                "of=/dev/null".into(),
                "bs=128M".into(),
                "count=1".into(),
            ],
        )
        .unwrap();
    assert_eq!(code, 137, "dd is SIGKILLed by the OOM killer");
    let usage = f.engine.usage(&spec.name).unwrap();
    assert!(usage.oom_kills >= 1, "{usage:?}");
    assert!(usage.memory_limit_hits >= 1, "{usage:?}");
    assert!(usage.memory_peak_bytes <= 33 << 20, "{usage:?}");
    assert!(
        f.engine
            .status(&spec.name)
            .unwrap()
            .is_some_and(|s| matches!(s, JailStatus::Running { .. })),
        "the jail's init survives"
    );
}

#[test]
fn writing_past_the_disk_quota_fails_with_enospc() {
    if !root_or_skip("writing_past_the_disk_quota_fails_with_enospc") {
        return;
    }
    let f = Fixture::new();
    let limits = Limits {
        disk_bytes: 64 << 20,
        ..small_limits()
    };
    let spec = f.spec("disk", JailKind::System, SLEEPER, limits);
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let script = "dd if=/dev/zero of=/fill bs=1M count=200 2>/tmp/err; grep -q 'No space left' /tmp/err || exit 10; \
                  s=$(stat -c %s /fill); [ $s -gt 40000000 ] && [ $s -le 67108864 ] || exit 11";
    assert_eq!(sh(&f, &spec.name, script), 0);
    let usage = f.engine.usage(&spec.name).unwrap();
    assert!(
        usage.disk_used_bytes > 40 << 20 && usage.disk_used_bytes <= 64 << 20,
        "{usage:?}"
    );
    let img = f
        .state_dir()
        .join("jails")
        .join(spec.name.as_str())
        .join("volume.img");
    assert_eq!(
        std::fs::metadata(img).unwrap().len(),
        64 << 20,
        "the host file never grows past the quota"
    );
}

#[test]
fn the_usage_reader_follows_a_jail_through_restart_and_re_creation() {
    if !root_or_skip("the_usage_reader_follows_a_jail_through_restart_and_re_creation") {
        return;
    }
    let f = Fixture::new();
    let spec = f.spec("meter", JailKind::System, SLEEPER, small_limits());
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let mut reader = f.engine.usage_reader();
    let mut read = || {
        let mut s = reader.sweep([&spec.name]);
        (s.usage.pop().unwrap(), s.open_files)
    };
    let (first, kept) = read();
    let first = first.unwrap();
    assert!(first.pids >= 1 && first.memory_bytes > 0, "{first:?}");
    assert!(
        kept >= 9,
        "counter files and the init's pidfd are kept: {kept}"
    );
    // CPU time and a file written in the jail show on the next sweep.
    let work = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; \
                dd if=/dev/zero of=/data bs=1M count=4 2>/dev/null";
    assert_eq!(sh(&f, &spec.name, work), 0);
    let (busy, open) = read();
    let busy = busy.unwrap();
    assert!(
        busy.cpu_usec >= first.cpu_usec + 100_000,
        "{first:?} {busy:?}"
    );
    assert!(busy.disk_used_bytes >= 4 << 20, "{busy:?}");
    assert_eq!(open, kept);

    f.engine.restart(&spec.name, Duration::ZERO).unwrap();
    let (restarted, open) = read();
    let restarted = restarted.unwrap();
    assert!(restarted.pids >= 1, "{restarted:?}");
    assert!(
        restarted.cpu_usec >= busy.cpu_usec,
        "the group and its counters stay"
    );
    assert_eq!(open, kept);

    // Destroyed and made again under the same name: a new group.
    f.engine.destroy(&spec.name).unwrap();
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let (again, open) = read();
    let again = again.unwrap();
    assert!(again.cpu_usec < busy.cpu_usec, "{busy:?} {again:?}");
    assert!(again.pids >= 1, "{again:?}");
    assert_eq!(open, kept);

    f.engine.destroy(&spec.name).unwrap();
    let (gone, open) = read();
    assert!(gone.is_err(), "{gone:?}");
    assert_eq!(open, 0);
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn cpu_hog_gets_its_quota() {
    if !root_or_skip("cpu_hog_gets_its_quota") {
        return;
    }
    let f = Fixture::new();
    let limits = Limits {
        cpu_millicores: 500,
        ..small_limits()
    };
    let spec = f.spec(
        "cpu",
        JailKind::System,
        &["sh", "-c", "while :; do :; done & while :; do :; done"],
        limits,
    );
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let a = f.engine.usage(&spec.name).unwrap();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let b = f.engine.usage(&spec.name).unwrap();
    let wall = u64::try_from(t.elapsed().as_micros()).unwrap();
    let used = b.cpu_usec - a.cpu_usec;
    let expected = wall / 2;
    assert!(
        used.abs_diff(expected) * 10 <= expected,
        "used {used} µs of CPU in {wall} µs, expected {expected} ±10%"
    );
    assert!(b.cpu_throttled_periods > a.cpu_throttled_periods, "{b:?}");
}

#[test]
fn io_write_rate_is_throttled_on_the_volume() {
    if !root_or_skip("io_write_rate_is_throttled_on_the_volume") {
        return;
    }
    let f = Fixture::new();
    let limits = Limits {
        disk_bytes: 128 << 20,
        io_write_bps: 4 << 20,
        ..small_limits()
    };
    let spec = f.spec("io", JailKind::System, SLEEPER, limits);
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let before = f.engine.usage(&spec.name).unwrap();
    let t = Instant::now();
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "dd if=/dev/zero of=/data bs=1M count=8 oflag=direct 2>/dev/null"
        ),
        0
    );
    let took = t.elapsed().as_secs_f64();
    let after = f.engine.usage(&spec.name).unwrap();
    // 8 MiB at 4 MiB/s: 2 s, ±15%.
    assert!(
        (1.7..=2.3).contains(&took),
        "8 MiB took {took:.2}s at 4 MiB/s"
    );
    assert!(
        after.io_write_bytes - before.io_write_bytes >= 8 << 20,
        "{after:?}"
    );
}

#[test]
fn discover_finds_and_classifies_every_jail_object() {
    if !root_or_skip("discover_finds_and_classifies_every_jail_object") {
        return;
    }
    let f = Fixture::new();
    let running = f.spec(
        "disc",
        JailKind::System,
        SLEEPER,
        Limits {
            disk_bytes: 32 << 20,
            ..small_limits()
        },
    );
    let stopped = f.spec("disc", JailKind::System, SLEEPER, small_limits());
    f.engine.create(&running).unwrap();
    f.engine.start(&running.name).unwrap();
    f.engine.create(&stopped).unwrap();
    // A group nobody recorded, as a crashed agent could leave.
    let orphan = unique("lost");
    let orphan_dir = std::path::Path::new("/sys/fs/cgroup/pids")
        .join(&f.cgroup_parent)
        .join(orphan.as_str());
    std::fs::create_dir(&orphan_dir).unwrap();
    let d = f.engine.discover().unwrap();
    let r = &d.jails[running.name.as_str()];
    assert_eq!(r.condition(), Condition::Running);
    assert_eq!(r.init, Some(running_pid(&f, &running.name)));
    assert_eq!(r.mounts.len(), 1, "{r:?}");
    assert_eq!(r.loop_devices.len(), 1, "{r:?}");
    assert!(r.processes.contains(&r.init.unwrap()), "{r:?}");
    assert!(r.cgroups.len() >= 3, "{r:?}");
    assert_eq!(
        d.jails[stopped.name.as_str()].condition(),
        Condition::Stopped
    );
    assert_eq!(d.jails[orphan.as_str()].condition(), Condition::Orphaned);
    // destroy works from the name alone.
    f.engine.destroy(&orphan).unwrap();
    assert!(!orphan_dir.exists());
}

#[test]
fn console_output_is_bounded_and_keeps_the_newest() {
    if !root_or_skip("console_output_is_bounded_and_keeps_the_newest") {
        return;
    }
    const LIMIT: u64 = 64 << 10;
    let f = Fixture::with_config(|cfg| cfg.console_bytes = LIMIT);
    // About 4 MiB of output, far past the limit, then a last line.
    let script = "yes 0123456789abcdef0123456789abcdef | head -c 4000000; \
                  echo; echo last-line; exec sleep 600";
    let spec = f.spec(
        "noisy",
        JailKind::System,
        &["sh", "-c", script],
        small_limits(),
    );
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let log = f
        .state_dir()
        .join("jails")
        .join(spec.name.as_str())
        .join("console.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.ends_with("last-line\n") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.ends_with("last-line\n"), "the newest output is kept");
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(
        size <= LIMIT,
        "console.log holds {size} bytes, limit {LIMIT}"
    );
    assert!(
        size >= LIMIT / 4,
        "recent output is kept, not only the last line"
    );
    assert!(text.contains("0123456789abcdef\n"));
    // The log is the node's, not the jail's: only root reads it.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&log).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "console.log mode {mode:o}");
    // A restart writes on into the same log, within the same limit.
    let before = std::fs::metadata(&log).unwrap().modified().unwrap();
    f.engine.restart(&spec.name, Duration::ZERO).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let meta = std::fs::metadata(&log).unwrap();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if meta.modified().unwrap() > before && text.ends_with("last-line\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted jail's output is kept"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::metadata(&log).unwrap().len() <= LIMIT);
    f.engine.destroy(&spec.name).unwrap();
}

#[test]
fn exec_gets_a_session_of_its_own_and_no_inherited_descriptors() {
    if !root_or_skip("exec_gets_a_session_of_its_own_and_no_inherited_descriptors") {
        return;
    }
    let f = Fixture::new();
    let spec = f.spec("sess", JailKind::System, SLEEPER, small_limits());
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    // A descriptor this process would pass on to a child it execs.
    let leaked = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    nix::fcntl::fcntl(
        &leaked,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    // Field 6 of stat is the session, 7 the controlling terminal.
    let session = if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        // An interactive caller's command gets a terminal of its own.
        "set -- $(cat /proc/$$/stat); [ \"$6\" = \"$$\" ] && [ \"$7\" != 0 ]"
    } else {
        "set -- $(cat /proc/$$/stat); [ \"$6\" = \"$$\" ] && [ \"$7\" = 0 ]"
    };
    assert_eq!(
        sh(&f, &spec.name, session),
        0,
        "a session without a terminal"
    );
    // The shell's own descriptors, listed by the shell itself (no pipe of a
    // command substitution): stdio, and the listing's own folder.
    let fds = format!(
        "set -- /proc/$$/fd/*; [ ! -e /proc/$$/fd/{fd} ] && [ $# -le 4 ] || {{ ls -l /proc/$$/fd >&2; exit 1; }}"
    );
    assert_eq!(sh(&f, &spec.name, &fds), 0, "only stdio reaches the jail");
    // Run jails too.
    let spec = f.spec("sess-run", JailKind::App, &[], small_limits());
    assert_eq!(
        f.engine
            .run(
                &spec,
                &[
                    "sh".into(),
                    "-c".into(),
                    format!("{session} || exit 2; {fds}")
                ]
            )
            .unwrap(),
        0
    );
    drop(leaked);
}

#[test]
fn jails_see_no_device_nodes_block_devices_or_allocator_statistics() {
    if !root_or_skip("jails_see_no_device_nodes_block_devices_or_allocator_statistics") {
        return;
    }
    let f = Fixture::new();
    let limits = Limits {
        disk_bytes: 32 << 20,
        ..small_limits()
    };
    let spec = f.spec("masked", JailKind::System, SLEEPER, limits);
    f.engine.create(&spec).unwrap();
    let dir = f.state_dir().join("jails").join(spec.name.as_str());
    // A device node in the jail's volume, as a restored backup or an old
    // image could bring one (a harmless one, so that only `nodev` stops it).
    nix::sys::stat::mknod(
        &dir.join("volume/upper/zero-node"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 5),
    )
    .unwrap();
    f.engine.start(&spec.name).unwrap();
    assert_ne!(
        sh(&f, &spec.name, "head -c 1 /zero-node >/dev/null"),
        0,
        "a device node on the jail's root does not work"
    );
    assert_eq!(sh(&f, &spec.name, "head -c 1 /dev/zero >/dev/null"), 0);
    // A device node on the jail's /dev (not `nodev`), made from the host:
    // the jail's own volume, a block device. The device allow-list of the
    // jail's cgroup refuses it.
    let pid = running_pid(&f, &spec.name);
    let volume = std::fs::metadata(dir.join("volume")).unwrap();
    let dev = std::os::unix::fs::MetadataExt::dev(&volume);
    nix::sys::stat::mknod(
        std::path::Path::new(&format!("/proc/{pid}/root/dev/disk")),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        dev,
    )
    .unwrap();
    assert_ne!(
        sh(&f, &spec.name, "head -c 1 /dev/disk >/dev/null"),
        0,
        "the jail cannot read a block device, its own volume included"
    );
    // The node has block devices (this jail's volume is a loop device),
    // whose backing files would name other tenants' jails.
    assert!(std::fs::read_dir("/sys/block").unwrap().next().is_some());
    for hidden in [
        "/sys/block",
        "/sys/class/block",
        "/sys/devices/virtual/block",
    ] {
        assert_eq!(
            sh(&f, &spec.name, &format!("[ -z \"$(ls {hidden})\" ]")),
            0,
            "{hidden} is empty in a jail"
        );
    }
    assert_eq!(
        sh(&f, &spec.name, "[ ! -s /proc/slabinfo ]"),
        0,
        "/proc/slabinfo shows nothing"
    );
    // The node's state is root's.
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&f.state_dir()), 0o711);
    assert_eq!(mode(&f.state_dir().join("jails")), 0o711);
    assert_eq!(mode(&dir), 0o700);
    f.engine.destroy(&spec.name).unwrap();
}

#[test]
fn a_jails_init_is_a_program_of_its_own_not_a_copy_of_the_engine() {
    if !root_or_skip("a_jails_init_is_a_program_of_its_own_not_a_copy_of_the_engine") {
        return;
    }
    let f = Fixture::new();
    let spec = f.spec("init", JailKind::System, SLEEPER, small_limits());
    f.engine.create(&spec).unwrap();
    f.engine.start(&spec.name).unwrap();
    let pid = running_pid(&f, &spec.name);
    // PID 1 runs the node's copy of the init program, never the engine's
    // binary: root's, read-only for all, and not writable even by host
    // root while a jail runs it.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.starts_with(f.state_dir().join("init"))
            && exe
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("stockade-init-"),
        "{exe:?}"
    );
    assert_ne!(exe, std::env::current_exe().unwrap());
    let meta = std::fs::metadata(&exe).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o555));
    let write = std::fs::OpenOptions::new().write(true).open(&exe);
    assert_eq!(
        write.unwrap_err().raw_os_error(),
        Some(libc::ETXTBSY),
        "the running init's file must refuse writes"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"stockade-init\0"), "{cmdline:?}");
    // Nothing of the engine's: no socket or file of the test process, only
    // its stdio, the log, the console pipe and its signal descriptor.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            std::fs::read_link(e.unwrap().path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(fds.len() <= 6, "{fds:?}");
    assert!(!fds.iter().any(|l| l.starts_with("socket:")), "{fds:?}");
    // The engine's memory is not there: the init is a small program.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    assert!(rss_kib < 4096, "the init holds {rss_kib} KiB");
    // Inside the jail, PID 1 can be neither read nor replaced.
    assert_eq!(
        sh(
            &f,
            &spec.name,
            "! cat /proc/1/maps >/dev/null 2>&1 && ! (echo x >/proc/1/exe) 2>/dev/null"
        ),
        0
    );
    f.engine.destroy(&spec.name).unwrap();
}

/// The agent's steps for a stopped jail whose disk quota was raised: its
/// spec is made again with the new limits, then the limits are applied.
/// The volume's image and filesystem grow; nothing is lost.
#[test]
fn a_stopped_jails_volume_grows_when_its_spec_is_made_again_with_more_disk() {
    if !root_or_skip("a_stopped_jails_volume_grows_when_its_spec_is_made_again_with_more_disk") {
        return;
    }
    let f = Fixture::new();
    let mut limits = small_limits();
    limits.disk_bytes = 16 << 20;
    let spec = f.spec("grows", JailKind::System, SLEEPER, limits);
    let name = spec.name.clone();
    f.engine.create(&spec).unwrap();
    f.engine.start(&name).unwrap();
    assert_eq!(sh(&f, &name, "echo kept > /root/file"), 0);
    f.engine.stop(&name, Duration::from_secs(2)).unwrap();

    let mut bigger = spec.clone();
    bigger.limits.disk_bytes = 24 << 20;
    f.engine.create(&bigger).unwrap();
    f.engine.update_limits(&name, &bigger.limits).unwrap();
    let image = f
        .dir
        .path()
        .join("state/jails")
        .join(name.as_str())
        .join("volume.img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 24 << 20);
    f.engine.start(&name).unwrap();
    // df inside the jail sees more than the first 16 MiB (1K blocks).
    assert_eq!(
        sh(
            &f,
            &name,
            "[ $(df -k / | tail -1 | awk '{print $2}') -gt 18432 ]"
        ),
        0,
        "the filesystem grew"
    );
    assert_eq!(sh(&f, &name, "[ \"$(cat /root/file)\" = kept ]"), 0);
    f.engine.destroy(&name).unwrap();
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}
