//! Unpacking real layouts and archives built here, hostile ones included.
//! Owners are set with lchown, so these run as root (as the agent does).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// One tar entry of a test layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Owned(&'a str, &'a [u8], u64),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str),
}

/// Writes a tar with names set raw (so `..` gets through, as a hostile
/// registry would send it).
fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, data, uid): (&str, _, &[u8], u64) = match e {
            E::Dir(n) => (n, tar::EntryType::Directory, b"", 0),
            E::File(n, d) => (n, tar::EntryType::Regular, d, 0),
            E::Owned(n, d, uid) => (n, tar::EntryType::Regular, d, *uid),
            E::Link(n, _) => (n, tar::EntryType::Symlink, b"", 0),
            E::Hard(n, _) => (n, tar::EntryType::Link, b"", 0),
            E::Char(n) => (n, tar::EntryType::Char, b"", 0),
        };
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if matches!(e, E::Dir(_)) { 0o755 } else { 0o644 });
        h.set_uid(uid);
        h.set_gid(uid);
        if let E::Link(_, t) | E::Hard(_, t) = e {
            h.as_gnu_mut().unwrap().linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/serve"],"Cmd":["--port","8080"],"Env":["PATH=/usr/bin:/bin","GREETING=hello"],"WorkingDir":"/srv/app","User":"www"}}"#;

/// Writes an OCI layout of `layers` into `dir`; returns the manifest digest.
fn layout(dir: &Path, layers: &[Vec<u8>]) -> String {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha(bytes);
        fs::write(blobs.join(&d[7..]), bytes).unwrap();
        d
    };
    let config = put(CONFIG.as_bytes());
    let layers: Vec<_> = layers
        .iter()
        .map(|l| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(l), "size": l.len()})
        })
        .collect();
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": CONFIG.len()},
        "layers": layers})
    .to_string();
    let m = put(manifest.as_bytes());
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(
        dir.join("index.json"),
        serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m, "size": manifest.len()}]}).to_string(),
    )
    .unwrap();
    m
}

struct Case {
    tmp: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("root")).unwrap();
        fs::create_dir(tmp.path().join("src")).unwrap();
        Case { tmp }
    }
    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }
    fn src(&self) -> PathBuf {
        self.tmp.path().join("src")
    }
    fn unpack(&self, layers: &[Vec<u8>]) -> Result<ImageConfig, ImageError> {
        layout(&self.src(), layers);
        unpack(
            &self.src(),
            &self.root(),
            &self.tmp.path().join("scratch"),
            &Bounds::default(),
        )
    }
}

#[test]
fn layers_apply_in_order_with_whiteouts_and_opaque_folders() {
    let case = Case::new();
    let base = gz(&tar_of(&[
        E::Dir("etc/"),
        E::File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        E::File("etc/old.conf", b"old"),
        E::Dir("var/cache/"),
        E::File("var/cache/a", b"a"),
        E::File("var/cache/b", b"b"),
        E::Owned("srv/app/index.html", b"v1", 33),
        E::Link("bin/sh", "/bin/busybox"),
    ]));
    let top = gz(&tar_of(&[
        E::File("etc/.wh.old.conf", b""),
        E::File("var/cache/new", b"n"),
        E::File("var/cache/.wh..wh..opq", b""),
        E::Owned("srv/app/index.html", b"v2", 33),
        E::Hard("srv/app/copy.html", "srv/app/index.html"),
    ]));
    let config = case.unpack(&[base, top]).unwrap();
    let root = case.root();
    assert!(root.join("etc/passwd").is_file());
    assert!(!root.join("etc/old.conf").exists(), "whiteout removes");
    assert!(
        !root.join("etc/.wh.old.conf").exists(),
        "whiteouts are not files"
    );
    assert!(
        !root.join("var/cache/a").exists(),
        "opaque hides lower files"
    );
    assert_eq!(
        fs::read(root.join("var/cache/new")).unwrap(),
        b"n",
        "same-layer file kept"
    );
    assert_eq!(fs::read(root.join("srv/app/index.html")).unwrap(), b"v2");
    let meta = fs::metadata(root.join("srv/app/index.html")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (33, 33));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    assert_eq!(meta.nlink(), 2, "hard link made");
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(config.entrypoint, ["/bin/serve"]);
    assert_eq!(config.command(&[]), ["/bin/serve", "--port", "8080"]);
    assert_eq!(
        config.command(&["--debug".into()]),
        ["/bin/serve", "--debug"]
    );
    assert_eq!(config.workdir, "/srv/app");
    assert_eq!(config.user, "www");
    assert!(
        config
            .env_pairs()
            .contains(&("GREETING".into(), "hello".into()))
    );
}

#[test]
fn escapes_devices_and_foreign_owners_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_owned();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (tar_of(&[E::File("../../escaped", b"x")]), "`..`"),
        (
            tar_of(&[E::Link("etc", &target), E::File("etc/passwd", b"x")]),
            "symbolic link",
        ),
        (tar_of(&[E::Hard("stolen", "../../etc/shadow")]), "`..`"),
        (
            tar_of(&[E::Hard("stolen", "missing")]),
            "hard link to no file",
        ),
        (tar_of(&[E::Char("dev/mem")]), "device node"),
        (tar_of(&[E::Owned("f", b"x", 100_000)]), "65536 ids"),
        (tar_of(&[E::File(".wh...", b"")]), "whiteout of no file"),
        (tar_of(&[E::File("etc/.wh..", b"")]), "whiteout of no file"),
    ];
    for (layer, reason) in cases {
        let case = Case::new();
        let err = case.unpack(&[gz(&layer)]).unwrap_err().to_string();
        assert!(err.contains(reason), "{err} (wanted {reason})");
    }
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside"
    );
}

#[test]
fn bounds_and_digests_are_enforced() {
    let case = Case::new();
    layout(
        &case.src(),
        &[gz(&tar_of(&[
            E::File("big", &[7u8; 4096]),
            E::File("b", b"1"),
        ]))],
    );
    let small = Bounds {
        max_bytes: 1000,
        ..Bounds::default()
    };
    let err = unpack(
        &case.src(),
        &case.root(),
        &case.tmp.path().join("s"),
        &small,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
    let few = Bounds {
        max_entries: 1,
        ..Bounds::default()
    };
    let root2 = case.tmp.path().join("root2");
    fs::create_dir(&root2).unwrap();
    let err = unpack(&case.src(), &root2, &case.tmp.path().join("s"), &few).unwrap_err();
    assert!(err.to_string().contains("more than 1 files"), "{err}");

    // A layer changed after its manifest was written.
    let case = Case::new();
    let good = gz(&tar_of(&[E::File("a", b"a")]));
    layout(&case.src(), std::slice::from_ref(&good));
    let blob = case.src().join("blobs/sha256").join(&sha(&good)[7..]);
    fs::write(&blob, gz(&tar_of(&[E::File("a", b"evil")]))).unwrap();
    let err = unpack(
        &case.src(),
        &case.root(),
        &case.tmp.path().join("s"),
        &Bounds::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
}

/// Packs `dir` as a tar archive at `out`.
fn archive_of(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn oci_and_docker_save_archives_unpack() {
    // An OCI layout as an archive (what `docker save` writes since 25).
    let case = Case::new();
    layout(&case.src(), &[gz(&tar_of(&[E::File("hello.txt", b"hi")]))]);
    let archive = case.tmp.path().join("image.tar");
    archive_of(&case.src(), &archive);
    assert!(is_oci(&archive));
    let scratch = case.tmp.path().join("scratch");
    let config = unpack(&archive, &case.root(), &scratch, &Bounds::default()).unwrap();
    assert_eq!(fs::read(case.root().join("hello.txt")).unwrap(), b"hi");
    assert_eq!(config.cmd, ["--port", "8080"]);
    assert!(!scratch.exists(), "scratch removed");

    // A legacy `docker save`: manifest.json, a config file, layer folders.
    let case = Case::new();
    let src = case.src();
    fs::create_dir_all(src.join("abc")).unwrap();
    fs::write(
        src.join("abc/layer.tar"),
        tar_of(&[E::File("legacy.txt", b"old")]),
    )
    .unwrap();
    fs::write(src.join("cfg.json"), CONFIG).unwrap();
    fs::write(
        src.join("manifest.json"),
        r#"[{"Config":"cfg.json","RepoTags":["site:1"],"Layers":["abc/layer.tar"]}]"#,
    )
    .unwrap();
    let archive = case.tmp.path().join("save.tar");
    archive_of(&src, &archive);
    assert!(is_oci(&archive));
    let config = unpack(&archive, &case.root(), &scratch, &Bounds::default()).unwrap();
    assert_eq!(fs::read(case.root().join("legacy.txt")).unwrap(), b"old");
    assert_eq!(config.user, "www");

    // A plain root filesystem tarball is not an OCI image.
    let plain = case.tmp.path().join("rootfs.tar");
    fs::write(&plain, tar_of(&[E::File("etc/hostname", b"x")])).unwrap();
    assert!(!is_oci(&plain));
}

#[test]
fn an_archive_cannot_write_through_its_own_links() {
    // A `docker save` whose `blobs` is a link out, then a file under it.
    let outside = tempfile::tempdir().unwrap();
    let case = Case::new();
    let archive = case.tmp.path().join("evil.tar");
    fs::write(
        &archive,
        tar_of(&[
            E::Link("blobs", outside.path().to_str().unwrap()),
            E::File("blobs/planted", b"x"),
            E::File("manifest.json", b"[]"),
        ]),
    )
    .unwrap();
    let err = unpack(
        &archive,
        &case.root(),
        &case.tmp.path().join("s"),
        &Bounds::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing planted outside"
    );
    assert!(!case.tmp.path().join("s").exists(), "scratch removed");
}

#[test]
fn long_names_work_oversized_extensions_are_refused_and_opaque_hides_deep() {
    // A path past the 100 bytes of a tar header, through a GNU long name.
    let case = Case::new();
    let long = format!("srv/{}/deep.txt", "n".repeat(150));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, &long, &b"deep"[..]).unwrap();
    case.unpack(&[gz(&b.into_inner().unwrap())]).unwrap();
    assert_eq!(fs::read(case.root().join(&long)).unwrap(), b"deep");

    // A long name record declaring 1 MiB: refused before it is read.
    let case = Case::new();
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(1 << 20);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &vec![b'a'; 1 << 20][..]).unwrap();
    let err = case
        .unpack(&[gz(&b.into_inner().unwrap())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("extension record over 64 KiB"), "{err}");

    // An opaque folder hides lower files below folders the layer lists again.
    let case = Case::new();
    let lower = gz(&tar_of(&[
        E::File("var/cache/sub/old", b"o"),
        E::File("var/cache/keep", b"k"),
    ]));
    let upper = gz(&tar_of(&[
        E::Dir("var/cache/sub/"),
        E::File("var/cache/sub/new", b"n"),
        E::File("var/cache/.wh..wh..opq", b""),
    ]));
    case.unpack(&[lower, upper]).unwrap();
    let root = case.root();
    assert!(
        !root.join("var/cache/sub/old").exists(),
        "lower file under a listed folder hidden"
    );
    assert!(!root.join("var/cache/keep").exists());
    assert!(root.join("var/cache/sub/new").exists());
}
