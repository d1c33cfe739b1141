//! The reads of one sweep: counter files with `pread`, link counters from
//! one netlink dump, the reading thread's CPU clock, and the open-file
//! limit the kept descriptors need.

use super::*;

/// Reads the counter files of an entry, one `pread` each.
pub(super) fn read_counters(
    cgroups: &Cgroups,
    buf: &mut Vec<u8>,
    name: &JailName,
    e: &Entry,
) -> Result<CgroupUsage, JailError> {
    let files = usage_files(cgroups.version());
    let mut texts: Vec<String> = Vec::with_capacity(files.len());
    for (i, f) in e.counters.iter().enumerate() {
        let Some(f) = f else {
            texts.push(String::new());
            continue;
        };
        let n = pread_all(f, buf).map_err(|err| {
            let (c, file) = files[i];
            JailError::io("read", cgroups.dir(c, name.as_str()).join(file))(err)
        })?;
        texts.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let read = |controller: &str, file: &str| {
        files
            .iter()
            .position(|&(c, f)| c == controller && f == file)
            .and_then(|i| texts.get(i).cloned())
            .unwrap_or_default()
    };
    Ok(parse_usage(cgroups.version(), &read))
}

/// Reads a kernel file from its start into `buf` (grown as needed); returns
/// the length. cgroupfs and sysfs regenerate the text at offset 0, so one
/// call reads a fresh counter.
fn pread_all(f: &File, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut len = 0;
    loop {
        let n = f.read_at(&mut buf[len..], u64::try_from(len).unwrap_or(u64::MAX))?;
        len += n;
        if n == 0 || len < buf.len() {
            return Ok(len);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// Reads the counters of every link into `links`, once per sweep that
/// reads a jail with a network; false when they could not be read (each
/// jail's sysfs files are read then).
pub(super) fn dump_links(
    netlink: &mut Option<Netlink>,
    links: &mut HashMap<u32, LinkStats>,
) -> bool {
    if netlink.is_none() {
        *netlink = Netlink::route().ok();
    }
    let Some(nl) = netlink.as_mut() else {
        return false;
    };
    match nl.link_stats(links) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "reading link counters over netlink failed; reading sysfs");
            *netlink = None;
            false
        }
    }
}

/// The jail's network counters from the dump; its link's index is looked
/// up when unknown or gone (a restarted jail has a new link).
pub(super) fn link_counters(link: &mut Link, links: &HashMap<u32, LinkStats>) -> NetCounters {
    let stats = link
        .index
        .and_then(|i| links.get(&i))
        .or_else(|| {
            link.index = netlink::link_index(&link.name).ok();
            links.get(&link.index?)
        })
        .copied()
        .unwrap_or_default();
    // What the host end sends, the jail receives, and the other way round.
    NetCounters {
        rx_bytes: stats.tx_bytes,
        tx_bytes: stats.rx_bytes,
        rx_packets: stats.tx_packets,
        tx_packets: stats.rx_packets,
    }
}

pub(super) fn usage(cg: &CgroupUsage, disk_used_bytes: u64, net: &NetCounters) -> Usage {
    Usage {
        cpu_usec: cg.cpu_usec,
        memory_bytes: cg.memory_bytes,
        memory_peak_bytes: cg.memory_peak_bytes,
        pids: cg.pids,
        io_read_bytes: cg.io_read_bytes,
        io_write_bytes: cg.io_write_bytes,
        disk_used_bytes,
        oom_kills: cg.oom_kills,
        memory_limit_hits: cg.memory_limit_hits,
        pids_limit_hits: cg.pids_limit_hits,
        cpu_throttled_periods: cg.cpu_throttled_periods,
        net_rx_bytes: net.rx_bytes,
        net_tx_bytes: net.tx_bytes,
        net_rx_packets: net.rx_packets,
        net_tx_packets: net.tx_packets,
    }
}

/// CPU time (user and system) the calling thread has used.
pub(super) fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec that lives on this stack frame.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The process's soft limit on open files.
pub(super) fn open_file_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// The soft open-file limit the process had before
/// [`raise_open_file_limit`].
static CALLER_NOFILE: OnceLock<(u64, u64)> = OnceLock::new();

/// Raises the process's soft limit on open files to its hard limit, so a
/// [`UsageReader`] may keep the counter files of every jail open (eleven a
/// jail on cgroup v1; the limit applies to its descriptor table). Commands started in jails afterwards still get the
/// limit the process had before. Returns the new soft limit.
pub fn raise_open_file_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let before = *CALLER_NOFILE.get_or_init(|| (soft, hard));
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft.max(before.0)
}

/// Gives a process about to exec a jail's command the open-file limit the
/// caller had before [`raise_open_file_limit`]. Safe after `fork`: one
/// atomic load and one system call.
pub(crate) fn restore_open_file_limit() {
    if let Some(&(soft, hard)) = CALLER_NOFILE.get() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, soft, hard);
    }
}
