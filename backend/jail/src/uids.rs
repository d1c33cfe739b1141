//! Host uid/gid ranges of jails with a user namespace, and moving a
//! volume's files from one range to another.
//!
//! Each range held by a jail is a symbolic link `<state>/uids/<first host
//! id>` whose target is the jail's name. Making a link fails if the name
//! exists, so two jails created at once, by two threads or two processes of
//! the node, never get the same range; the name is part of the link itself,
//! so a range is never seen held by nobody, even after a crash, without a
//! temporary file or a flush. It is made before the jail's record and
//! removed only once the jail is destroyed, so ranges survive restarts by
//! construction. (Range files of earlier versions, regular files holding
//! the name, are read the same.) Ranges that
//! overlap an id of a host account or group, or a subordinate range of
//! `/etc/subuid` or `/etc/subgid`, are never given out.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::fs;
use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat, fstatat};
use nix::unistd::{Gid, Uid, fchownat};

use crate::engine::UID_RANGE;
use crate::error::JailError;
use crate::state::{self, JailRecord};

/// The folder of range files under a node's state folder.
pub(crate) fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("uids")
}

/// The ranges of ids `[start, end)` taken on the host by accounts, groups
/// and subordinate id ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct HostIds(Vec<(u64, u64)>);

impl HostIds {
    /// Reads `passwd`, `group`, `subuid` and `subgid` in `etc`; a missing
    /// file holds nothing.
    pub(crate) fn read(etc: &Path) -> Result<Self, JailError> {
        let mut ids = Vec::new();
        for (file, subordinate) in [
            ("passwd", false),
            ("group", false),
            ("subuid", true),
            ("subgid", true),
        ] {
            let path = etc.join(file);
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(JailError::io("read", &path)(e)),
            };
            ids.extend(parse(&text, subordinate));
        }
        Ok(Self(ids))
    }

    /// Whether any host id lies in `[start, start + len)`.
    pub(crate) fn overlaps(&self, start: u32, len: u32) -> bool {
        let (s, e) = (u64::from(start), u64::from(start) + u64::from(len));
        self.0.iter().any(|&(a, b)| a < e && s < b)
    }
}

/// The id ranges of one file: the third field of `passwd`/`group` lines
/// (one id each), or the second and third of `subuid`/`subgid` lines
/// (start and count). Comments and malformed lines are skipped.
fn parse(text: &str, subordinate: bool) -> Vec<(u64, u64)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split(':');
            if subordinate {
                let start: u64 = fields.nth(1)?.trim().parse().ok()?;
                let count: u64 = fields.next()?.trim().parse().ok()?;
                Some((start, start + count))
            } else {
                let id: u64 = fields.nth(2)?.trim().parse().ok()?;
                Some((id, id + 1))
            }
        })
        .collect()
}

/// Where ranges come from: `count` ranges of [`UID_RANGE`] ids from `base`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool {
    pub base: u32,
    pub count: u32,
}

impl Pool {
    fn starts(self) -> impl Iterator<Item = u32> {
        (0..self.count)
            .map_while(move |k| k.checked_mul(UID_RANGE)?.checked_add(self.base))
            .filter(|b| b.checked_add(UID_RANGE).is_some())
    }
}

fn file_of(uids: &Path, start: u32) -> PathBuf {
    uids.join(start.to_string())
}

/// The ranges held on the node: (first host id, jail).
pub(crate) fn held(uids: &Path) -> Result<Vec<(u32, String)>, JailError> {
    let entries = match fs::read_dir(uids) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(JailError::io("read", uids)(e)),
    };
    let mut held = Vec::new();
    for entry in entries {
        let entry = entry.map_err(JailError::io("read", uids))?;
        let Some(start) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let path = entry.path();
        match owner_of(&path) {
            Ok(jail) => held.push((start, jail)),
            // Released meanwhile.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(JailError::io("read", &path)(e)),
        }
    }
    held.sort();
    Ok(held)
}

/// The jail a range file names: a link's target, or (earlier versions) a
/// regular file's text.
fn owner_of(path: &Path) -> std::io::Result<String> {
    match fs::read_link(path) {
        Ok(target) => Ok(target.to_string_lossy().into_owned()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Ok(fs::read_to_string(path)?.trim().to_owned())
        }
        Err(e) => Err(e),
    }
}

/// Makes the range file `start` for `jail` (a link naming it); `false` if
/// the range is held already.
fn take(uids: &Path, start: u32, jail: &str) -> Result<bool, JailError> {
    let path = file_of(uids, start);
    match std::os::unix::fs::symlink(jail, &path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(JailError::io("link", &path)(e)),
    }
}

/// Gives `jail` the first range of `pool` that no jail holds and no host
/// account uses; returns its first host id.
pub(crate) fn claim(uids: &Path, pool: Pool, host: &HostIds, jail: &str) -> Result<u32, JailError> {
    // The names are the ranges: listing the folder is enough.
    let held: BTreeSet<u32> = match fs::read_dir(uids) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(JailError::io("read", uids)(e)),
    };
    let mut in_use = 0u32;
    let mut on_host = 0u32;
    for start in pool.starts() {
        // A range given out under another pool setting may straddle this one.
        if held
            .range(start.saturating_sub(UID_RANGE - 1)..start.saturating_add(UID_RANGE))
            .next()
            .is_some()
        {
            in_use += 1;
            continue;
        }
        if host.overlaps(start, UID_RANGE) {
            on_host += 1;
            continue;
        }
        if take(uids, start, jail)? {
            return Ok(start);
        }
        // Taken by another jail since the folder was read.
        in_use += 1;
    }
    let total = in_use + on_host;
    let mut reason = format!("no free uid range: {in_use} of {total} in use");
    if on_host > 0 {
        reason.push_str(&format!(
            " ({on_host} more overlap ids of host accounts or subordinate ranges)"
        ));
    }
    Err(JailError::Invalid {
        what: "user namespace",
        reason,
    })
}

/// Makes sure the range file of `start` names `jail` (a jail whose record
/// holds a range from before range files existed). Refuses a range held
/// by another jail.
pub(crate) fn adopt(uids: &Path, start: u32, jail: &str) -> Result<(), JailError> {
    if take(uids, start, jail)? {
        return Ok(());
    }
    let path = file_of(uids, start);
    let owner = owner_of(&path).map_err(JailError::io("read", &path))?;
    if owner == jail {
        Ok(())
    } else {
        Err(JailError::Invalid {
            what: "user namespace",
            reason: format!("uid range {start} of jail {jail} is held by jail {owner}"),
        })
    }
}

/// Releases every range `jail` holds. Idempotent.
pub(crate) fn release(uids: &Path, jail: &str) -> Result<(), JailError> {
    for (start, owner) in held(uids)? {
        if owner == jail {
            let path = file_of(uids, start);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(JailError::io("remove", &path)(e)),
            }
        }
    }
    Ok(())
}

/// Makes the range folder if missing, holding the ranges of every record
/// that has one (records written before range files existed). It is filled
/// under a name of its own and renamed into place, so no claim ever sees
/// it half-filled.
pub(crate) fn ensure_dir(state_dir: &Path) -> Result<(), JailError> {
    let uids = dir(state_dir);
    if uids.is_dir() {
        return Ok(());
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = state_dir.join(format!(".uids-{}-{nanos}", std::process::id()));
    fs::create_dir(&tmp).map_err(JailError::io("create", &tmp))?;
    let filled = (|| {
        for (name, _, rec) in crate::discover::state_dirs(&state::jails_dir(state_dir)) {
            if let Some(JailRecord {
                uid_base: Some(start),
                ..
            }) = rec
            {
                take(&tmp, start, &name)?;
            }
        }
        Ok(())
    })();
    let placed = filled.and_then(|()| match fs::rename(&tmp, &uids) {
        Ok(()) => Ok(()),
        // Another process of the node made it first.
        Err(_) if uids.is_dir() => Ok(()),
        Err(e) => Err(JailError::io("rename", &uids)(e)),
    });
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    placed
}

/// Moves the owners of every file under `top` whose user (or group) id
/// lies in `[from, from + UID_RANGE)` to the same offset from `to`; ids
/// outside that range are left as they are, so running it again after a
/// crash half-way finishes the job without moving anything twice. Never
/// follows a symlink (the link itself is changed) and never enters a
/// directory of another filesystem. Set-user-ID and set-group-ID bits,
/// which a change of owner clears, are put back.
pub(crate) fn shift_tree(top: &Path, from: u32, to: u32) -> Result<(), JailError> {
    let name = c".";
    let fd = match open_dir(&AT_FDCWD, &crate::engine::c_path(top)) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(JailError::sys("open", top)(e)),
    };
    let st =
        fstatat(&fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(JailError::sys("stat", top))?;
    let shift = Shift {
        from,
        to,
        dev: st.st_dev,
    };
    shift.entry(&fd, name, &st, top)?;
    shift.dir(fd, top)
}

fn open_dir(dirfd: &impl AsFd, name: &CStr) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat(
        dirfd,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

struct Shift {
    from: u32,
    to: u32,
    /// The filesystem of the top folder; nothing else is entered.
    dev: u64,
}

impl Shift {
    fn id(&self, id: u32) -> u32 {
        if id >= self.from && id - self.from < UID_RANGE {
            id - self.from + self.to
        } else {
            id
        }
    }

    /// Changes the owner of `name` in `dirfd` (stat `st`) if it is in range.
    fn entry(
        &self,
        dirfd: &impl AsFd,
        name: &CStr,
        st: &libc::stat,
        path: &Path,
    ) -> Result<(), JailError> {
        let (uid, gid) = (self.id(st.st_uid), self.id(st.st_gid));
        if (uid, gid) == (st.st_uid, st.st_gid) {
            return Ok(());
        }
        fchownat(
            dirfd,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(JailError::sys("chown", path))?;
        let special = st.st_mode & (libc::S_ISUID | libc::S_ISGID);
        if st.st_mode & libc::S_IFMT == libc::S_IFREG && special != 0 {
            // A regular file (never a link): following is the same as not.
            fchmodat(
                dirfd,
                name,
                Mode::from_bits_truncate(st.st_mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(JailError::sys("chmod", path))?;
        }
        Ok(())
    }

    /// Shifts everything in the open directory `fd` (named `path`).
    fn dir(&self, fd: OwnedFd, path: &Path) -> Result<(), JailError> {
        // The stream reads the names; calls are made relative to `fd`.
        let stream = fd.try_clone().map_err(JailError::io("read", path))?;
        let mut stream = Dir::from_fd(stream).map_err(JailError::sys("read", path))?;
        let names = crate::teardown::entry_names(&mut stream, path)?;
        drop(stream);
        for name in names {
            let child = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let st = match fstatat(&fd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(JailError::sys("stat", &child)(e)),
            };
            self.entry(&fd, &name, &st, &child)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_dev == self.dev {
                let sub = open_dir(&fd, &name).map_err(JailError::sys("open", &child))?;
                self.dir(sub, &child)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: Pool = Pool {
        base: 1_000_000,
        count: 4,
    };

    #[test]
    fn host_ids_come_from_accounts_groups_and_subordinate_ranges() {
        let etc = tempfile::tempdir().unwrap();
        fs::write(
            etc.path().join("passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1065536:1065536::/:/bin/false\n# c:x:5:5\n",
        )
        .unwrap();
        fs::write(etc.path().join("group"), "root:x:0:\nstaff:x:1200000:\n").unwrap();
        fs::write(etc.path().join("subuid"), "alice:1196608:10\n").unwrap();
        let ids = HostIds::read(etc.path()).unwrap();
        assert!(ids.overlaps(0, 1));
        assert!(!ids.overlaps(1_000_000, UID_RANGE));
        assert!(ids.overlaps(1_065_536, UID_RANGE));
        assert!(ids.overlaps(1_196_608 - UID_RANGE + 1, UID_RANGE));
        assert!(!ids.overlaps(1_196_608 + 10, 10));
        assert!(!ids.overlaps(5, 1), "a comment is no account");
    }

    #[test]
    fn no_two_jails_share_a_range_even_claimed_at_once() {
        let state = tempfile::tempdir().unwrap();
        let uids = dir(state.path());
        fs::create_dir(&uids).unwrap();
        let got: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let uids = &uids;
                    s.spawn(move || claim(uids, POOL, &HostIds::default(), &format!("j{i}")))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        let distinct: BTreeSet<u32> = got.iter().copied().collect();
        assert_eq!(distinct.len(), 4, "{got:?}");
        assert!(
            distinct
                .iter()
                .all(|b| (b - POOL.base).is_multiple_of(UID_RANGE))
        );
        let err = claim(&uids, POOL, &HostIds::default(), "j5").unwrap_err();
        assert!(
            err.to_string().contains("no free uid range: 4 of 4 in use"),
            "{err}"
        );
    }

    #[test]
    fn ranges_overlapping_host_ids_are_skipped_and_counted() {
        let state = tempfile::tempdir().unwrap();
        let uids = dir(state.path());
        fs::create_dir(&uids).unwrap();
        let host = HostIds(vec![(1_000_100, 1_000_101), (1_065_536, 1_131_072)]);
        assert_eq!(claim(&uids, POOL, &host, "a").unwrap(), 1_131_072);
        assert_eq!(claim(&uids, POOL, &host, "b").unwrap(), 1_196_608);
        let err = claim(&uids, POOL, &host, "c").unwrap_err().to_string();
        assert!(err.contains("2 of 4 in use"), "{err}");
        assert!(err.contains("2 more overlap"), "{err}");
    }

    #[test]
    fn a_released_range_is_given_out_again_and_adopt_refuses_anothers() {
        let state = tempfile::tempdir().unwrap();
        let uids = dir(state.path());
        fs::create_dir(&uids).unwrap();
        let a = claim(&uids, POOL, &HostIds::default(), "a").unwrap();
        let b = claim(&uids, POOL, &HostIds::default(), "b").unwrap();
        assert!(adopt(&uids, a, "b").is_err());
        adopt(&uids, a, "a").unwrap();
        release(&uids, "a").unwrap();
        release(&uids, "a").unwrap();
        assert_eq!(held(&uids).unwrap(), vec![(b, "b".to_owned())]);
        assert_eq!(claim(&uids, POOL, &HostIds::default(), "c").unwrap(), a);
        // A range file of an earlier version (a regular file) still holds.
        let old = POOL.base + 3 * UID_RANGE;
        fs::write(file_of(&uids, old), "old\n").unwrap();
        assert!(held(&uids).unwrap().contains(&(old, "old".to_owned())));
        assert_ne!(claim(&uids, POOL, &HostIds::default(), "d").unwrap(), old);
        assert!(claim(&uids, POOL, &HostIds::default(), "e").is_err());
        release(&uids, "old").unwrap();
        assert_eq!(claim(&uids, POOL, &HostIds::default(), "e").unwrap(), old);
    }

    #[test]
    fn shifting_moves_only_ids_in_range_and_keeps_links() {
        let root = tempfile::tempdir().unwrap();
        let top = root.path().join("upper");
        fs::create_dir_all(top.join("d/e")).unwrap();
        fs::write(top.join("d/e/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", top.join("link")).unwrap();
        std::os::unix::fs::lchown(top.join("d/e/f"), Some(33), Some(34)).unwrap();
        std::os::unix::fs::lchown(top.join("d"), Some(70_000), Some(0)).unwrap();
        let passwd = fs::metadata("/etc/passwd").unwrap();
        shift_tree(&top, 0, 1_000_000).unwrap();
        shift_tree(&top, 0, 1_000_000).unwrap();
        use std::os::unix::fs::MetadataExt;
        let owner = |p: &str| {
            let m = fs::symlink_metadata(top.join(p)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(owner(""), (1_000_000, 1_000_000));
        assert_eq!(owner("d/e/f"), (1_000_033, 1_000_034));
        assert_eq!(owner("d"), (70_000, 1_000_000));
        assert_eq!(owner("link"), (1_000_000, 1_000_000));
        let after = fs::metadata("/etc/passwd").unwrap();
        assert_eq!((after.uid(), after.gid()), (passwd.uid(), passwd.gid()));
        shift_tree(&top, 1_000_000, 0).unwrap();
        assert_eq!(owner("d/e/f"), (33, 34));
        assert_eq!(owner(""), (0, 0));
    }
}
