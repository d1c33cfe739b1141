//! Read-only views of the host: the mount table and the loop devices.
//! Both are read from folders given as parameters (`/proc`, `/sys`), so the
//! parsing and the classification built on them are tested on temp folders.

use std::fs;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type (`ext4`, `overlay`, ...).
    pub fstype: String,
    /// Mount source (`/dev/loop3`, `overlay`, ...).
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space) the kernel puts in paths.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a small kernel file (procfs, sysfs, cgroupfs) in one or two
/// reads: these report a size of 0, so `fs::read_to_string` would start
/// from a tiny buffer and make a system call for every doubling of it.
pub(crate) fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(8192);
    fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// Parses the text of a mountinfo file; malformed lines are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_owned(),
                source: unescape(source),
            })
        })
        .collect()
}

/// The mounts of the calling process's mount namespace.
pub(crate) fn mounts(proc_root: &Path) -> Vec<MountEntry> {
    read_small(&proc_root.join("self/mountinfo"))
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// An attached loop device and the file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoopDevice {
    /// `/dev/loopN`.
    pub device: PathBuf,
    /// The backing file as the kernel reports it.
    pub backing_file: PathBuf,
}

/// Every attached loop device, from `<sys>/block/loop*/loop/backing_file`.
pub(crate) fn loop_devices(sys_root: &Path) -> Vec<LoopDevice> {
    let Ok(rd) = fs::read_dir(sys_root.join("block")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                return None;
            }
            let backing = read_small(&e.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim_end_matches('\n');
            let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
            Some(LoopDevice {
                device: PathBuf::from("/dev").join(&name),
                backing_file: PathBuf::from(backing),
            })
        })
        .collect()
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks
/// since boot. `None` when the process is gone or a zombie.
pub(crate) fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = read_small(&proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name may hold spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); start time is field 22.
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_point_type_and_source() {
        let text = "36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 22 7:3 / /state/jails/web/volume rw,nosuid - ext4 /dev/loop3 rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/my dir"));
        assert_eq!(m[1].fstype, "ext4");
        assert_eq!(m[1].source, "/dev/loop3");
    }

    #[test]
    fn loop_devices_are_read_from_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        for (n, backing) in [
            ("loop0", Some("/s/jails/a/volume.img (deleted)\n")),
            ("loop1", None),
            ("sda", None),
        ] {
            let d = sys.path().join("block").join(n);
            fs::create_dir_all(d.join("loop")).unwrap();
            if let Some(b) = backing {
                fs::write(d.join("loop/backing_file"), b).unwrap();
            }
        }
        let l = loop_devices(sys.path());
        assert_eq!(
            l,
            vec![LoopDevice {
                device: "/dev/loop0".into(),
                backing_file: "/s/jails/a/volume.img".into()
            }]
        );
    }

    #[test]
    fn start_time_survives_odd_command_names_and_ignores_zombies() {
        let proc = tempfile::tempdir().unwrap();
        let mk = |pid: &str, stat: &str| {
            fs::create_dir_all(proc.path().join(pid)).unwrap();
            fs::write(proc.path().join(pid).join("stat"), stat).unwrap();
        };
        let tail = "1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        mk("7", &format!("7 (a) b (c) S {tail}"));
        mk("8", &format!("8 (z) Z {tail}"));
        assert_eq!(start_time(proc.path(), 7), Some(123456));
        assert_eq!(start_time(proc.path(), 8), None);
        assert_eq!(start_time(proc.path(), 9), None);
    }
}
