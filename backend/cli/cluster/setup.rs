//! Making and handing over the cluster's folders, its authentication files, its lock and its first initdb.

use super::*;

/// Gives a data folder made by an earlier release (when one account ran
/// both PostgreSQL and the web server) to the database's own account.
pub(super) fn hand_over(data_dir: &Path, who: &RunAs) -> anyhow::Result<()> {
    let meta = fs::symlink_metadata(data_dir)
        .with_context(|| format!("cannot read {}", data_dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a folder", data_dir.display());
    }
    if meta.uid() == who.uid || !Uid::effective().is_root() {
        return Ok(());
    }
    tracing::info!(data = %data_dir.display(), user = %who.name, "handing the PostgreSQL data folder to its own account");
    // `chown -R` does not follow symbolic links.
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", who.uid, who.gid))
        .arg(data_dir)
        .status()
        .context("cannot run chown")?;
    if !status.success() {
        bail!(
            "cannot give {} to the user {}",
            data_dir.display(),
            who.name
        );
    }
    Ok(())
}

/// Makes the socket folder: the database's account's, readable by all
/// (the socket itself is open to all; peer authentication decides).
pub(super) fn make_socket_dir(dir: &Path, who: &RunAs) -> anyhow::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!("{} exists and is not a folder; move it away", dir.display()),
        Err(_) => {
            fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::lchown(dir, Some(who.uid), Some(who.gid))
        .with_context(|| format!("cannot hand {} to {}", dir.display(), who.name))?;
    Ok(())
}

/// Who may connect as which role: written at every start, so a cluster
/// made by an earlier release loses its `trust` too.
fn auth_files(who: &RunAs, web: Option<&RunAs>) -> (String, String) {
    let hba = "# Written by Stockade at every start; changes here are lost.\n\
               # The local socket only, every account named by the kernel (peer)\n\
               # and mapped to the roles it may use in pg_ident.conf.\n\
               local all all peer map=stockade\n"
        .to_owned();
    let mut ident = String::from(
        "# Written by Stockade at every start; changes here are lost.\n\
         # MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n",
    );
    let mut map = |account: &str, roles: &[&str]| {
        for role in roles {
            ident.push_str(&format!("stockade {account} {role}\n"));
        }
    };
    let all = [
        DB_USER,
        stockade_store::roles::WEB,
        stockade_store::roles::AGENT,
    ];
    if Uid::effective().is_root() {
        // Root runs the agent, migrations and the command line.
        map("root", &all);
        map(&who.name, &[DB_USER]);
        if let Some(web) = web {
            map(&web.name, &[stockade_store::roles::WEB]);
        }
    } else {
        // One account runs everything.
        map(&who.name, &all);
    }
    (hba, ident)
}

/// Writes the cluster's authentication files into its data folder, each
/// created afresh (never through a link the folder's account planted) and
/// renamed into place.
pub(super) fn write_auth(data_dir: &Path, who: &RunAs, web: Option<&RunAs>) -> anyhow::Result<()> {
    let (hba, ident) = auth_files(who, web);
    for (name, text) in [("pg_hba.conf", hba), ("pg_ident.conf", ident)] {
        let fresh = data_dir.join(format!(".{name}.new"));
        match fs::remove_file(&fresh) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", fresh.display()));
            }
            _ => {}
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&fresh)
            .with_context(|| format!("cannot create {}", fresh.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::os::unix::fs::fchown(&file, Some(who.uid), Some(who.gid))?;
        fs::rename(&fresh, data_dir.join(name))
            .with_context(|| format!("cannot write {}", data_dir.join(name).display()))?;
    }
    Ok(())
}

/// Takes the folder's lock file, or says who holds it.
pub(super) fn take_lock(data_dir: &Path) -> anyhow::Result<Flock<File>> {
    let mut path = data_dir.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            lock.seek(SeekFrom::Start(0))?;
            writeln!(lock, "{}", std::process::id())?;
            Ok(lock)
        }
        Err((mut file, _)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "another Stockade process (pid {}) is already running on {}; stop it first",
                holder.trim(),
                data_dir.display()
            )
        }
    }
}

/// Runs `initdb` into a scratch folder and renames it into place, so an
/// interrupted first start leaves no half-made cluster behind.
pub(super) fn init(bindir: &Path, data_dir: &Path, who: &RunAs) -> anyhow::Result<()> {
    if data_dir.exists() {
        let empty = fs::read_dir(data_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            bail!(
                "{} exists but is not a PostgreSQL data folder; move it away or choose another STOCKADE_PG_DATA",
                data_dir.display()
            );
        }
        fs::remove_dir(data_dir)?;
    }
    let mut scratch = data_dir.as_os_str().to_owned();
    scratch.push(".initdb");
    let scratch = PathBuf::from(scratch);
    if scratch.exists() {
        fs::remove_dir_all(&scratch)
            .with_context(|| format!("cannot remove {}", scratch.display()))?;
    }
    fs::create_dir(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o700))?;
    nix::unistd::chown(&scratch, Some(who.uid.into()), Some(who.gid.into()))
        .with_context(|| format!("cannot hand {} to {}", scratch.display(), who.name))?;
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D")
        .arg(&scratch)
        .args([
            "--username",
            DB_USER,
            "--auth-local",
            "peer",
            "--auth-host",
            "reject",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-instructions",
        ])
        .stdin(Stdio::null());
    if Uid::effective().is_root() {
        cmd.uid(who.uid).gid(who.gid); // std clears supplementary groups when root sets a uid
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", bindir.join("initdb").display()))?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&scratch);
        bail!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fs::rename(&scratch, data_dir)
        .with_context(|| format!("cannot move the new cluster to {}", data_dir.display()))?;
    Ok(())
}

pub(super) fn log_tail(path: &Path, from: u64) -> String {
    let text = read_own_file(path).unwrap_or_default();
    let text = text
        .get(usize::try_from(from).unwrap_or(0)..)
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
