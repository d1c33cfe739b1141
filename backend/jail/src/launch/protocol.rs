//! How the processes of a start talk: failure records on the report pipe,
//! and the go-ahead with the descriptors it carries.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use stockade_init::{MSG_ERROR, MSG_PID, MSG_USERNS, Stage};

/// Reports a failure and ends the child without running any exit handlers.
pub(super) fn fail(fd: RawFd, stage: Stage, index: usize, errno: Errno) -> ! {
    stockade_init::fail(fd, stage, index, errno as i32)
}

/// What the children reported.
#[derive(Debug, Default)]
pub(super) struct Report {
    pub(super) pid: Option<i32>,
    /// The launcher is in its new user namespace, waiting for id maps.
    pub(super) userns: bool,
    pub(super) error: Option<(Stage, usize, Errno)>,
}

/// Reads records into `rep` until `enough` says so or the pipe ends.
pub(super) fn read_report(r: &OwnedFd, rep: &mut Report, enough: impl Fn(&Report) -> bool) {
    let mut buf = [0u8; 16];
    let mut filled = 0;
    loop {
        if filled == 0 && enough(rep) {
            break;
        }
        match nix::unistd::read(r, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled < 16 {
                    continue;
                }
                filled = 0;
                let word =
                    |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
                match word(0) {
                    MSG_PID => rep.pid = i32::try_from(word(4)).ok(),
                    MSG_USERNS => rep.userns = true,
                    MSG_ERROR if rep.error.is_none() => {
                        if let Some(stage) = Stage::from_u32(word(4)) {
                            let errno = Errno::from_raw(i32::from_ne_bytes([
                                buf[12], buf[13], buf[14], buf[15],
                            ]));
                            rep.error = Some((
                                stage,
                                usize::try_from(word(8)).unwrap_or(usize::MAX),
                                errno,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
}

/// Waits for a child, retrying on EINTR; returns its status as a shell
/// would: the exit code, or 128 + the signal number.
pub(super) fn wait_code(pid: Pid) -> Result<i32, Errno> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Most descriptors a go-ahead carries: one per cgroup hierarchy.
pub(super) const MAX_GO_FDS: usize = 8;

/// Control-message space for [`MAX_GO_FDS`] descriptors, aligned as
/// `struct cmsghdr` needs.
#[repr(C, align(8))]
pub(super) struct GoControl([u8; 64]);

/// Waits for the engine's go-ahead byte and takes the descriptors sent with
/// it into `fds` (close-on-exec); `None` if the engine gave up.
pub(super) fn wait_go(go: RawFd, fds: &mut [RawFd; MAX_GO_FDS]) -> Option<usize> {
    let mut byte = [0u8; 1];
    let mut control = GoControl([0; 64]);
    loop {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: an all-zero msghdr is valid (no name, no buffers).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len();
        // SAFETY: recvmsg fills the live stack buffers `msg` points to.
        let n = unsafe { libc::recvmsg(go, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if n != 1 {
            return None;
        }
        let mut count = 0;
        // SAFETY: the CMSG_* helpers walk the control buffer the kernel
        // filled, within the length it set; descriptor data is read
        // unaligned from there.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    let len = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        if count < MAX_GO_FDS {
                            fds[count] = data.add(i).read_unaligned();
                            count += 1;
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&raw const msg, c);
            }
        }
        return Some(count);
    }
}

/// Sends the go-ahead byte with `fds`.
pub(super) fn send_go(go: &OwnedFd, fds: &[OwnedFd]) -> Result<(), Errno> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut byte = [1u8; 1];
    let mut control = GoControl([0; 64]);
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: an all-zero msghdr is valid (no name, no buffers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        let bytes = std::mem::size_of_val(raw.as_slice());
        let bytes = u32::try_from(bytes).map_err(|_| Errno::EINVAL)?;
        // SAFETY: CMSG_SPACE is arithmetic on a length.
        let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
        if raw.len() > MAX_GO_FDS || space > control.0.len() {
            return Err(Errno::EINVAL);
        }
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the first header lies inside `control`, which has room
        // for the header and the descriptors (checked above); the data is
        // written unaligned.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&raw const msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(c),
                bytes as usize,
            );
        }
    }
    loop {
        // SAFETY: sendmsg reads the live buffers `msg` points to.
        let n = unsafe { libc::sendmsg(go.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
        if n == 1 {
            return Ok(());
        }
        let e = Errno::last();
        if n < 0 && e != Errno::EINTR {
            return Err(e);
        }
    }
}
