//! `stockade-sftp` against the real OpenSSH client: `sftp -D` runs a
//! server program directly on pipes, as the node's SSH gateway would, so
//! these tests check the server speaks what OpenSSH's client expects,
//! through the built program under the name the engine gives it.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const SFTP: &str = "/usr/bin/sftp";

/// A folder of its own for one test, removed at the end: `bin` holds the
/// program's `stockade-sftp` link, `local` the client's files and
/// `remote` is the server's working folder.
struct Temp(PathBuf);

impl Temp {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "stockade-sftp-{tag}-{}-{nanos}",
            std::process::id()
        ));
        for sub in ["bin", "local", "remote"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_stockade-init"),
            dir.join("bin/stockade-sftp"),
        )
        .unwrap();
        Self(dir)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }

    /// Runs `sftp -b` with `batch` against the server, whose working
    /// folder is `remote`.
    fn sftp(&self, batch: &str) -> Output {
        let file = self.path("batch");
        fs::write(&file, batch).unwrap();
        let output = Command::new(SFTP)
            .arg("-b")
            .arg(&file)
            .arg("-D")
            .arg(self.path("bin/stockade-sftp"))
            .current_dir(self.path("remote"))
            .output()
            .unwrap();
        eprintln!(
            "sftp: {}\n--- stdout\n{}--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn have_sftp() -> bool {
    if Path::new(SFTP).exists() {
        return true;
    }
    eprintln!("skipped: {SFTP} is not installed");
    false
}

/// `len` bytes no compressor or lucky offset would make look right.
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        bytes.extend_from_slice(&seed.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

#[test]
fn openssh_client_uploads_lists_downloads_and_manages_files() {
    if !have_sftp() {
        return;
    }
    let t = Temp::new("client");
    let data = random_bytes(5 << 20, 0x5eed_1234_abcd_ef01);
    let (src, back) = (t.path("local/src.bin"), t.path("local/back.bin"));
    fs::write(&src, &data).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o644)).unwrap();

    let out = t.sftp(&format!(
        "pwd\n\
         mkdir d\n\
         put {src} d/file.bin\n\
         ls -l d\n\
         get d/file.bin {back}\n\
         rename d/file.bin d/moved.bin\n\
         chmod 600 d/moved.bin\n\
         symlink moved.bin d/link\n\
         ln d/moved.bin d/hard\n\
         df\n\
         ls -la d\n",
        src = src.display(),
        back = back.display(),
    ));
    assert!(out.status.success(), "sftp failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "Remote working directory: {}",
            fs::canonicalize(t.path("remote")).unwrap().display()
        )),
        "{stdout}"
    );
    // `ls -l` shows the server's long names: mode, links, owner, group,
    // size, date, name.
    let line = stdout
        .lines()
        .find(|l| l.ends_with(" file.bin"))
        .unwrap_or_else(|| panic!("no listing of file.bin in {stdout}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 9, "{line}");
    assert_eq!(fields[0], "-rw-r--r--", "{line}");
    assert_eq!(fields[4], "5242880", "{line}");
    // `ls -la` lists "." and "..", the link and the hard link.
    let listed: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("sftp> ls -la d"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for name in [".", "..", "link", "hard", "moved.bin"] {
        assert!(listed.contains(&name), "{name} in {listed:?}");
    }

    assert!(fs::read(&back).unwrap() == data, "the download differs");
    let remote = t.path("remote/d");
    assert!(!remote.join("file.bin").exists(), "renamed");
    assert!(
        fs::read(remote.join("moved.bin")).unwrap() == data,
        "the upload differs"
    );
    let mode = fs::metadata(remote.join("moved.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    assert_eq!(
        fs::read_link(remote.join("link")).unwrap(),
        Path::new("moved.bin")
    );
    assert_eq!(fs::metadata(remote.join("hard")).unwrap().nlink(), 2);

    // The protocol's own RENAME (`-l`; the client's default is OpenSSH's
    // posix-rename) refuses to replace a file. Batch mode stops at the
    // failed command, which is why it runs alone.
    fs::write(remote.join("other"), b"other").unwrap();
    let out = t.sftp("rename -l d/other d/moved.bin\n");
    assert!(!out.status.success(), "rename over an existing file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("remote rename"),
        "refused by the server: {stderr}"
    );
    assert!(fs::read(remote.join("other")).unwrap() == b"other");
    assert!(fs::read(remote.join("moved.bin")).unwrap() == data);
    let out = t.sftp("rename d/other d/moved.bin\n");
    assert!(out.status.success(), "posix-rename replaces");
    assert!(fs::read(remote.join("moved.bin")).unwrap() == b"other");
    assert!(!remote.join("other").exists());

    let out = t.sftp(
        "rm d/link\n\
         rm d/hard\n\
         rm d/moved.bin\n\
         rmdir d\n\
         ls -la\n",
    );
    assert!(out.status.success(), "sftp failed: {}", out.status);
    assert!(!remote.exists(), "removed");
    assert_eq!(fs::read_dir(t.path("remote")).unwrap().count(), 0);
}

#[test]
fn a_missing_remote_file_is_reported_and_the_session_ends_cleanly() {
    if !have_sftp() {
        return;
    }
    let t = Temp::new("missing");
    let out = t.sftp(&format!(
        "-get nothing-here {}\nls\n",
        t.path("local/x").display()
    ));
    assert!(out.status.success(), "a failure allowed with '-'");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not found"), "{stderr}");
    assert!(!t.path("local/x").exists());
}

/// A request framed for the wire: type, then fields already encoded.
fn packet(kind: u8, fields: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = [&[kind][..]]
        .iter()
        .chain(fields)
        .flat_map(|f| f.iter().copied())
        .collect();
    let mut p = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(s.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// Runs the program under its SFTP name with `umask 000`, `input` on its
/// stdin.
fn run_raw(t: &Temp, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\"")
        .arg(t.path("bin/stockade-sftp"))
        .current_dir(t.path("remote"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn the_program_serves_raw_requests_on_stdio_and_exits_by_the_protocol() {
    let t = Temp::new("raw");
    let none = 0u32.to_be_bytes();
    let mut input = packet(1, &[&3u32.to_be_bytes()]);
    // OPEN "f" (write, create) and MKDIR "d", neither with permissions.
    input.extend(packet(
        3,
        &[
            &1u32.to_be_bytes(),
            &string(b"f"),
            &0x0au32.to_be_bytes(),
            &none,
        ],
    ));
    input.extend(packet(14, &[&2u32.to_be_bytes(), &string(b"d"), &none]));
    let out = run_raw(&t, &input);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    // VERSION, HANDLE and STATUS, each frame whole.
    let kinds: Vec<u8> = {
        let (mut bytes, mut kinds) = (&out.stdout[..], Vec::new());
        while let Some((head, rest)) = bytes.split_first_chunk::<4>() {
            let len = usize::try_from(u32::from_be_bytes(*head)).unwrap();
            kinds.push(rest[0]);
            bytes = &rest[len..];
        }
        kinds
    };
    assert_eq!(kinds, [2, 102, 101]);
    // The defaults, whatever umask: 0644 for files, 0755 for folders.
    let mode = |n| {
        fs::metadata(t.path("remote").join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!((mode("f"), mode("d")), (0o644, 0o755));

    // A packet over the limit ends the session with status 1 and a line
    // on stderr, after the replies made before it.
    let mut input = packet(1, &[&3u32.to_be_bytes()]);
    input.extend_from_slice(&(1u32 << 20).to_be_bytes());
    let out = run_raw(&t, &input);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.stdout.get(4), Some(&2), "the VERSION");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("stockade-sftp: a packet of 1048576 bytes"),
        "{stderr}"
    );
}

/// Throughput of a 100 MiB upload and download through `sftp -D`, to see
/// that the server is not what limits a transfer. Measured, not asserted:
/// `cargo test -p stockade-init --release -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_of_100_mib() {
    if !have_sftp() {
        return;
    }
    let t = Temp::new("throughput");
    const SIZE: usize = 100 << 20;
    let data = random_bytes(SIZE, 42);
    let (src, back) = (t.path("local/src.bin"), t.path("local/back.bin"));
    fs::write(&src, &data).unwrap();
    let mib = f64::from(u32::try_from(SIZE >> 20).unwrap());
    for (what, batch) in [
        ("put", format!("put {} big.bin\n", src.display())),
        ("get", format!("get big.bin {}\n", back.display())),
    ] {
        let started = Instant::now();
        let out = t.sftp(&batch);
        let secs = started.elapsed().as_secs_f64();
        assert!(out.status.success(), "{what} failed");
        println!(
            "{what} of {mib} MiB through sftp -D: {secs:.2} s, {:.0} MiB/s",
            mib / secs
        );
    }
    assert!(fs::read(&back).unwrap() == data);
}
