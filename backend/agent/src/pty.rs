//! Terminals and pipes between the agent and a command in a jail: a
//! pseudo-terminal made for it, its size, its session, and a non-blocking
//! descriptor as an async reader and writer (the console's and the SSH
//! gateway's relays).

use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A pseudo-terminal of `cols`×`rows`; both ends close on exec, so the
/// shell holds only its own end (dup'ed onto 0-2) and hangs up with ours.
pub(crate) fn open_terminal(cols: u16, rows: u16) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).map_err(std::io::Error::from)?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(std::io::Error::from)?;
    }
    Ok((pty.master, pty.slave))
}

/// Tells the terminal of `master` its new size.
pub(crate) fn resize(master: &OwnedFd, cols: u16, rows: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `struct winsize` from a live value; the fd is ours.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &raw const size) };
}

/// The session (a process group inside the jail's cgroup and PID
/// namespace; its sid is a host pid) of the shell on the terminal of
/// `master`, if there is one.
pub(crate) fn session_of(master: &OwnedFd) -> Option<nix::unistd::Pid> {
    let mut sid: libc::pid_t = 0;
    // SAFETY: TIOCGSID writes a pid_t into a live integer; the fd is ours.
    let ok = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGSID, &raw mut sid) } == 0;
    (ok && sid > 1).then(|| nix::unistd::Pid::from_raw(sid))
}

/// A non-blocking descriptor (a pipe's end or a terminal's master) as an
/// async reader and writer.
pub(crate) struct Fd(AsyncFd<OwnedFd>);

impl Fd {
    /// Makes `fd` non-blocking and watches it.
    pub(crate) fn new(fd: OwnedFd) -> std::io::Result<Self> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
            ),
        )?;
        // SAFETY: the fd moves into the AsyncFd, which owns it until dropped.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) };
        Ok(Self(fd.map_err(|e| e.into_parts().1)?))
    }
}

impl Fd {
    /// The descriptor, for `ioctl`s.
    pub(crate) fn get_ref(&self) -> &OwnedFd {
        self.0.get_ref()
    }
}

impl AsyncRead for Fd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref(), unfilled).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A terminal whose every slave end closed: the end.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for Fd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
