//! What is written for each limit, usage as read, and groups on a folder.

use super::*;

fn limits() -> Limits {
    Limits {
        cpu_millicores: 500,
        memory_bytes: 256 << 20,
        pids: 128,
        disk_bytes: 1 << 30,
        io_read_bps: 10 << 20,
        io_write_bps: 0,
        io_read_iops: 0,
        io_write_iops: 100,
        ..Limits::default()
    }
}

fn render(ws: &[Write]) -> Vec<String> {
    ws.iter()
        .map(|w| format!("{}/{}={}", w.controller, w.file, w.value))
        .collect()
}

#[test]
fn v1_limits_become_cfs_quota_memsw_and_blkio_rules() {
    let ws = limit_writes(Version::V1, &limits(), Some((7, 3)));
    assert_eq!(
        render(&ws),
        [
            "cpu/cpu.cfs_period_us=100000",
            "cpu/cpu.cfs_quota_us=50000",
            "memory/memory.limit_in_bytes=268435456",
            "memory/memory.memsw.limit_in_bytes=268435456",
            "pids/pids.max=128",
            "blkio/blkio.throttle.read_bps_device=7:3 10485760",
            "blkio/blkio.throttle.write_bps_device=7:3 0",
            "blkio/blkio.throttle.read_iops_device=7:3 0",
            "blkio/blkio.throttle.write_iops_device=7:3 100",
        ]
    );
}

#[test]
fn v2_limits_use_max_for_unlimited_and_forbid_swap() {
    let mut l = limits();
    l.cpu_millicores = 0;
    l.pids = 0;
    let ws = limit_writes(Version::V2, &l, Some((7, 3)));
    assert_eq!(
        render(&ws),
        [
            "/cpu.max=max 100000",
            "/memory.max=268435456",
            "/memory.swap.max=0",
            "/pids.max=max",
            "/io.max=7:3 rbps=10485760 wbps=max riops=max wiops=100",
        ]
    );
}

#[test]
fn no_device_means_no_io_rules() {
    let ws = limit_writes(Version::V1, &limits(), None);
    assert!(ws.iter().all(|w| w.controller != "blkio"));
}

#[test]
fn usage_parses_v1_and_v2_files() {
    let v1 = |c: &str, f: &str| -> String {
        match (c, f) {
            ("cpuacct", "cpuacct.usage") => "2500000\n".into(),
            ("memory", "memory.usage_in_bytes") => "4096\n".into(),
            ("memory", "memory.max_usage_in_bytes") => "8192\n".into(),
            ("memory", "memory.oom_control") => {
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n".into()
            }
            ("memory", "memory.failcnt") => "17\n".into(),
            ("pids", "pids.current") => "3\n".into(),
            ("pids", "pids.events") => "max 5\n".into(),
            ("cpu", "cpu.stat") => "nr_periods 10\nnr_throttled 4\nthrottled_time 9\n".into(),
            ("blkio", "blkio.throttle.io_service_bytes_recursive") => {
                "7:3 Read 100\n7:3 Write 200\n7:3 Sync 300\n7:3 Total 300\nTotal 300\n".into()
            }
            _ => String::new(),
        }
    };
    let u = parse_usage(Version::V1, &v1);
    assert_eq!(
        u,
        CgroupUsage {
            cpu_usec: 2500,
            memory_bytes: 4096,
            memory_peak_bytes: 8192,
            pids: 3,
            io_read_bytes: 100,
            io_write_bytes: 200,
            oom_kills: 2,
            memory_limit_hits: 17,
            pids_limit_hits: 5,
            cpu_throttled_periods: 4,
        }
    );
    let v2 = |_: &str, f: &str| -> String {
        match f {
            "cpu.stat" => "usage_usec 77\nnr_throttled 6\n".into(),
            "memory.events" => "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n".into(),
            "io.stat" => "7:3 rbytes=10 wbytes=20 rios=1 wios=2\n8:0 rbytes=1 wbytes=2\n".into(),
            "pids.events" => "max 0\n".into(),
            _ => String::new(),
        }
    };
    let u = parse_usage(Version::V2, &v2);
    assert_eq!(
        (
            u.cpu_usec,
            u.cpu_throttled_periods,
            u.memory_limit_hits,
            u.oom_kills
        ),
        (77, 6, 9, 1)
    );
    assert_eq!((u.io_read_bytes, u.io_write_bytes), (11, 22));
}

#[test]
fn usage_reads_exactly_the_listed_files() {
    for version in [Version::V1, Version::V2] {
        let asked = std::cell::RefCell::new(Vec::new());
        parse_usage(version, &|c: &str, f: &str| {
            asked.borrow_mut().push((c.to_owned(), f.to_owned()));
            String::new()
        });
        let mut asked = asked.into_inner();
        asked.sort();
        asked.dedup();
        let mut listed: Vec<(String, String)> = usage_files(version)
            .iter()
            .map(|(c, f)| ((*c).to_owned(), (*f).to_owned()))
            .collect();
        listed.sort();
        assert_eq!(asked, listed, "{version:?}");
    }
}

#[test]
fn groups_are_created_written_listed_and_removed_on_a_fake_root() {
    let root = tempfile::tempdir().unwrap();
    for c in V1_CONTROLLERS {
        fs::create_dir(root.path().join(c)).unwrap();
    }
    let cg = Cgroups::detect(root.path(), "stockade");
    assert_eq!(cg.version(), Version::V1);
    cg.ensure("web").unwrap();
    cg.apply("web", &limits(), None).unwrap();
    let quota = fs::read_to_string(root.path().join("cpu/stockade/web/cpu.cfs_quota_us")).unwrap();
    assert_eq!(quota, "50000");
    // swap accounting absent on this fake host: the optional file is skipped
    assert!(
        !root
            .path()
            .join("memory/stockade/web/memory.memsw.limit_in_bytes")
            .exists()
    );
    assert_eq!(cg.list().len(), V1_CONTROLLERS.len());
    // Devices: everything denied, then the allow-list.
    let allowed =
        fs::read_to_string(root.path().join("devices/stockade/web/devices.allow")).unwrap();
    assert!(allowed.contains("c 136:* rwm"), "{allowed}");
    // A real cgroupfs removes its files itself; a temp folder does not.
    for d in cg.dirs("web") {
        for e in fs::read_dir(&d).unwrap() {
            fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
    cg.remove("web").unwrap();
    cg.remove("web").unwrap();
    assert!(cg.list().is_empty());
}

#[test]
fn v2_is_detected_by_its_controllers_file() {
    let root = tempfile::tempdir().unwrap();
    fs::write(
        root.path().join("cgroup.controllers"),
        "cpu memory pids io\n",
    )
    .unwrap();
    let cg = Cgroups::detect(root.path(), "stockade");
    assert_eq!(cg.version(), Version::V2);
    assert_eq!(cg.dirs("a"), vec![root.path().join("stockade/a")]);
    // A group is killed whole through its `cgroup.kill`, where present.
    fs::create_dir_all(root.path().join("stockade/a")).unwrap();
    assert!(!cg.kill("a"), "a kernel without cgroup.kill");
    fs::write(root.path().join("stockade/a/cgroup.kill"), "").unwrap();
    assert!(cg.kill("a"));
    let written = fs::read_to_string(root.path().join("stockade/a/cgroup.kill")).unwrap();
    assert_eq!(written, "1");
    // v1 has no such file: each member is signalled instead.
    let v1 = tempfile::tempdir().unwrap();
    for c in V1_CONTROLLERS {
        fs::create_dir(v1.path().join(c)).unwrap();
    }
    assert!(!Cgroups::detect(v1.path(), "stockade").kill("a"));
}
