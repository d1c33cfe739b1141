//! Images: read-only root trees under the image folder, shared by every
//! jail as its overlay's lower layer. `<images>/<name>/` is the tree itself.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use stockade_domain::JailName;

use crate::error::JailError;

/// The image built into every node from the host's busybox-static.
pub const BUSYBOX: &str = "busybox";

/// The folder of image `name`, which must be a label like a jail name.
pub(crate) fn path(image_dir: &Path, name: &str) -> Result<PathBuf, JailError> {
    let label = JailName::parse(name).map_err(|e| JailError::Invalid {
        what: "image name",
        reason: e.reason,
    })?;
    Ok(image_dir.join(label.as_str()))
}

/// The names of the images present, sorted.
pub(crate) fn list(image_dir: &Path) -> Result<Vec<String>, JailError> {
    let rd = match fs::read_dir(image_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(JailError::io("list", image_dir)(e)),
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// Builds an image in a hidden folder, then renames it into place, so a
/// half-built image is never used and a crash leaves only a hidden folder.
fn build(
    image_dir: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<(), JailError>,
) -> Result<(), JailError> {
    let target = path(image_dir, name)?;
    let tmp = image_dir.join(format!(".build-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(JailError::io("create", &tmp))?;
    let r = fill(&tmp)
        .and_then(|()| fs::rename(&tmp, &target).map_err(JailError::io("rename", &target)));
    if r.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    r
}

/// Unpacks an OCI image (a layout folder, an OCI archive or a `docker
/// save`) as image `name`, its configuration kept beside it; an existing
/// image of that name is an error and a refused one leaves nothing.
pub(crate) fn import_oci(
    image_dir: &Path,
    name: &str,
    source: &Path,
    bounds: &stockade_image::Bounds,
    origin: Option<(&str, &str)>,
) -> Result<stockade_image::ImageConfig, JailError> {
    let target = path(image_dir, name)?;
    if target.exists() {
        return Err(JailError::AlreadyExists(format!("image {name}")));
    }
    fs::create_dir_all(image_dir).map_err(JailError::io("create", image_dir))?;
    let scratch = image_dir.join(format!(".source-{name}-{}", std::process::id()));
    let mut config = None;
    build(image_dir, name, |tmp| {
        let mut c = stockade_image::unpack(source, tmp, &scratch, bounds).map_err(|e| {
            JailError::Invalid {
                what: "image",
                reason: e.to_string(),
            }
        })?;
        if let Some((reference, digest)) = origin {
            c.source = reference.to_owned();
            c.digest = digest.to_owned();
        }
        stockade_image::write_config(image_dir, name, &c).map_err(|e| JailError::Invalid {
            what: "image",
            reason: e.to_string(),
        })?;
        config = Some(c);
        Ok(())
    })
    .inspect_err(|_| {
        let _ = fs::remove_file(stockade_image::config_path(image_dir, name));
    })?;
    Ok(config.unwrap_or_default())
}

/// An OCI image's configuration (`None` for other images).
pub(crate) fn config(
    image_dir: &Path,
    name: &str,
) -> Result<Option<stockade_image::ImageConfig>, JailError> {
    path(image_dir, name)?;
    stockade_image::read_config(image_dir, name).map_err(|e| JailError::Invalid {
        what: "image",
        reason: e.to_string(),
    })
}

/// Removes image `name` and its configuration.
pub(crate) fn remove(image_dir: &Path, name: &str) -> Result<(), JailError> {
    let target = path(image_dir, name)?;
    // Renamed away first, so a half-removed tree is never used.
    let doomed = image_dir.join(format!(".remove-{name}-{}", std::process::id()));
    match fs::rename(&target, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(JailError::io("rename", &target)(e)),
    }
    let _ = fs::remove_file(stockade_image::config_path(image_dir, name));
    match fs::remove_dir_all(&doomed) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(JailError::io("remove", &doomed)(e))
        }
        _ => Ok(()),
    }
}

/// Unpacks an image as image `name`, replacing nothing: an existing image
/// of that name is an error. An OCI layout or archive is read as one; any
/// other tarball is taken as a root filesystem.
pub(crate) fn import(image_dir: &Path, name: &str, tarball: &Path) -> Result<(), JailError> {
    if stockade_image::is_oci(tarball) {
        return import_oci(
            image_dir,
            name,
            tarball,
            &stockade_image::Bounds::default(),
            None,
        )
        .map(drop);
    }
    let target = path(image_dir, name)?;
    if target.exists() {
        return Err(JailError::AlreadyExists(format!("image {name}")));
    }
    build(image_dir, name, |tmp| {
        let out = Command::new("tar")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(tmp)
            .args(["--numeric-owner", "--no-same-permissions"])
            .output()
            .map_err(|e| JailError::Program {
                program: "tar",
                path: tarball.to_owned(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(JailError::Program {
                program: "tar",
                path: tarball.to_owned(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let dropped = drop_devices(tmp)?;
        if dropped > 0 {
            tracing::info!(image = name, dropped, "device nodes left out of the image");
        }
        Ok(())
    })
}

/// Reads `etc/<file>` of an image tree, only if both are what they say
/// (a folder and a regular file, no link to follow out of the image).
fn image_etc(root: &Path, file: &str) -> String {
    let etc = root.join("etc");
    let path = etc.join(file);
    let real = |p: &Path, dir: bool| {
        fs::symlink_metadata(p).is_ok_and(|m| if dir { m.is_dir() } else { m.is_file() })
    };
    if !real(&etc, true) || !real(&path, false) {
        return String::new();
    }
    let mut text = String::new();
    let _ = fs::File::open(&path).and_then(|f| {
        std::io::Read::read_to_string(&mut std::io::Read::take(f, 1 << 20), &mut text)
    });
    text
}

/// An image's `user[:group]` (names looked up in the image's own
/// `/etc/passwd` and `/etc/group`, or numbers) as ids inside the jail, with
/// the user's home folder. As other runtimes do: a user without a group
/// gets its passwd entry's group, or 0 when it has no entry.
pub(crate) fn resolve_user(root: &Path, user: &str) -> Result<User, JailError> {
    let bad = |reason: String| JailError::Invalid {
        what: "image user",
        reason,
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = image_etc(root, "passwd");
    // (name, uid, gid, home) of each entry.
    let entries: Vec<(&str, u32, u32, &str)> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 6)
        .filter_map(|f| Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?, f[5])))
        .collect();
    let entry = match u.parse::<u32>() {
        Ok(uid) => entries.iter().find(|e| e.1 == uid).copied(),
        Err(_) => Some(
            entries
                .iter()
                .find(|e| e.0 == u)
                .copied()
                .ok_or_else(|| bad(format!("{u:?} is not a user of the image")))?,
        ),
    };
    let uid = match entry {
        Some(e) => e.1,
        None => u.parse().unwrap_or(0),
    };
    let gid = match g {
        None => entry.map_or(0, |e| e.2),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => image_etc(root, "group")
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| bad(format!("{g:?} is not a group of the image")))?,
        },
    };
    if uid > 65_535 || gid > 65_535 {
        return Err(bad(format!("{user:?} is beyond the 65536 ids a jail maps")));
    }
    Ok(User {
        uid,
        gid,
        home: entry
            .map(|e| e.3)
            .filter(|h| h.starts_with('/'))
            .unwrap_or("/")
            .to_owned(),
    })
}

/// Who an image's command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Removes every block and character device node below `dir` (symlinks
/// are not followed); returns how many. A jail's devices are the few its
/// /dev gets, never ones an image brings.
fn drop_devices(dir: &Path) -> Result<usize, JailError> {
    use std::os::unix::fs::FileTypeExt;
    let mut dropped = 0;
    for entry in fs::read_dir(dir).map_err(JailError::io("list", dir))? {
        let entry = entry.map_err(JailError::io("list", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(JailError::io("stat", &path))?;
        if kind.is_dir() {
            dropped += drop_devices(&path)?;
        } else if kind.is_block_device() || kind.is_char_device() {
            fs::remove_file(&path).map_err(JailError::io("remove", &path))?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// Assembles the `busybox` image from a static busybox binary if missing:
/// `/bin/busybox` and a link per applet, users, `/srv/www` and mount points.
/// The `init` applet is left out, so a system jail defaults to httpd.
pub(crate) fn ensure_busybox(image_dir: &Path, busybox: &Path) -> Result<(), JailError> {
    if path(image_dir, BUSYBOX)?.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(image_dir).map_err(JailError::io("create", image_dir))?;
    let listing = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| JailError::Program {
            program: "busybox",
            path: busybox.to_owned(),
            detail: e.to_string(),
        })?;
    if !listing.status.success() {
        return Err(JailError::Program {
            program: "busybox",
            path: busybox.to_owned(),
            detail: listing.status.to_string(),
        });
    }
    let applets = String::from_utf8_lossy(&listing.stdout).into_owned();
    build(image_dir, BUSYBOX, |root| {
        let mk = |p: &str, mode: u32| -> Result<(), JailError> {
            let d = root.join(p);
            fs::create_dir_all(&d).map_err(JailError::io("create", &d))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(mode))
                .map_err(JailError::io("chmod", &d))
        };
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "srv/www", "var/log", "home",
        ] {
            mk(d, 0o755)?;
        }
        for d in ["proc", "sys"] {
            mk(d, 0o555)?;
        }
        mk("dev", 0o755)?;
        mk("tmp", 0o1777)?;
        let bin = root.join("bin/busybox");
        fs::copy(busybox, &bin).map_err(JailError::io("copy", &bin))?;
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
            .map_err(JailError::io("chmod", &bin))?;
        for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
            let name = applet.rsplit('/').next().unwrap_or(applet);
            if matches!(name, "busybox" | "init" | "linuxrc") || applet.contains("..") {
                continue;
            }
            let link = root.join(applet);
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent).map_err(JailError::io("create", parent))?;
            }
            if !link.exists() {
                symlink("/bin/busybox", &link).map_err(JailError::io("symlink", &link))?;
            }
        }
        let files = [
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/srv/www:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            ),
            (
                "etc/group",
                "root:x:0:\ntty:x:5:\nwww:x:33:\nnogroup:x:65534:\n",
            ),
            ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
            (
                "srv/www/index.html",
                "<!doctype html><title>Stockade</title><p>It works.</p>\n",
            ),
        ];
        for (p, text) in files {
            let f = root.join(p);
            fs::write(&f, text).map_err(JailError::io("write", &f))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_users_resolve_as_other_runtimes_do() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/srv/www:/bin/sh\n",
        )
        .unwrap();
        fs::write(root.path().join("etc/group"), "root:x:0:\nweb:x:35:\n").unwrap();
        let user = |u: &str| resolve_user(root.path(), u).map(|u| (u.uid, u.gid, u.home));
        assert_eq!(user("www").unwrap(), (33, 34, "/srv/www".into()));
        assert_eq!(
            user("33").unwrap(),
            (33, 34, "/srv/www".into()),
            "number, passwd group"
        );
        assert_eq!(
            user("1001").unwrap(),
            (1001, 0, "/".into()),
            "no entry: group 0"
        );
        assert_eq!(user("www:web").unwrap().1, 35);
        assert_eq!(user("1001:7").unwrap(), (1001, 7, "/".into()));
        assert!(user("nobody").is_err());
        assert!(user("www:none").is_err());
        assert!(user("70000").is_err());
        // A passwd that is a link is not followed out of the image.
        fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).unwrap();
        assert!(user("root").is_err(), "the host's passwd is never read");
    }

    #[test]
    fn image_names_are_labels() {
        let d = Path::new("/images");
        assert_eq!(
            path(d, "busybox").unwrap(),
            PathBuf::from("/images/busybox")
        );
        for bad in ["..", "a/b", "", ".build-x"] {
            assert!(path(d, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hidden_build_folders_are_not_listed() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b", "a", ".build-c-1"] {
            fs::create_dir(d.path().join(n)).unwrap();
        }
        fs::write(d.path().join("file"), "").unwrap();
        assert_eq!(list(d.path()).unwrap(), ["a", "b"]);
        assert!(list(&d.path().join("missing")).unwrap().is_empty());
    }

    /// Packs `src` as `<dir>/root.tar`; returns it and an empty image folder.
    fn pack(dir: &Path, src: &Path) -> (PathBuf, PathBuf) {
        let tarball = dir.join("root.tar");
        let ok = Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(src)
            .arg(".")
            .status()
            .unwrap();
        assert!(ok.success());
        let images = dir.join("images");
        fs::create_dir(&images).unwrap();
        (tarball, images)
    }

    #[test]
    fn import_unpacks_a_tarball_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("etc/os-release"), "ID=test\n").unwrap();
        let (tarball, images) = pack(d.path(), &src);
        import(&images, "test", &tarball).unwrap();
        assert_eq!(
            fs::read_to_string(images.join("test/etc/os-release")).unwrap(),
            "ID=test\n"
        );
        assert!(matches!(
            import(&images, "test", &tarball),
            Err(JailError::AlreadyExists(_))
        ));
        let err = import(&images, "bad", &d.path().join("nope.tar")).unwrap_err();
        assert!(err.to_string().contains("nope.tar"), "{err}");
        assert_eq!(list(&images).unwrap(), ["test"]);
    }

    #[test]
    fn import_leaves_device_nodes_out() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED import_leaves_device_nodes_out: making device nodes needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("dev/sub")).unwrap();
        fs::write(src.join("dev/keep"), "file\n").unwrap();
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
        // /dev/mem and a disk, as a hostile image would bring them.
        for (p, kind, dev) in [
            (
                "dev/mem",
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::makedev(1, 1),
            ),
            (
                "dev/sub/sda",
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::makedev(8, 0),
            ),
        ] {
            nix::sys::stat::mknod(&src.join(p), kind, mode, dev).unwrap();
        }
        let (tarball, images) = pack(d.path(), &src);
        import(&images, "devs", &tarball).unwrap();
        let root = images.join("devs");
        assert!(root.join("dev/keep").exists(), "ordinary files stay");
        assert!(root.join("dev/sub").is_dir(), "folders stay");
        for p in ["dev/mem", "dev/sub/sda"] {
            assert!(
                fs::symlink_metadata(root.join(p)).is_err(),
                "{p} was left out"
            );
        }
    }
}
