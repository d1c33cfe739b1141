//! A terminal of the jail's own for `run` and `exec` from an interactive
//! caller: the command's stdin, stdout and stderr are the slave end of a
//! new pseudo-terminal, and the caller's process relays between its own
//! terminal (put in raw mode meanwhile) and the master end. The caller's
//! terminal is never open inside the jail, so nothing there can fake its
//! input (TIOCSTI), change its settings or signal its other processes.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::error::JailError;

/// An open terminal pair and the relay threads; the caller's terminal
/// settings come back when it is dropped.
pub(crate) struct Terminal {
    slave: Option<OwnedFd>,
    saved: Option<Termios>,
    output_done: mpsc::Receiver<()>,
}

impl Terminal {
    /// A terminal for the jail when the caller's stdin is one; `None`
    /// otherwise (the command then gets the caller's streams, in a session
    /// of its own).
    pub fn for_caller() -> Result<Option<Self>, JailError> {
        let stdin = std::io::stdin();
        if !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return Ok(None);
        }
        let mut size = std::mem::MaybeUninit::<libc::winsize>::zeroed();
        // SAFETY: TIOCGWINSZ fills a `struct winsize`; on failure it stays zeroed.
        unsafe { libc::ioctl(0, libc::TIOCGWINSZ, size.as_mut_ptr()) };
        // SAFETY: zero-initialised above, possibly filled by the kernel.
        let size = unsafe { size.assume_init() };
        let saved = tcgetattr(stdin.as_fd()).ok();
        let pty = nix::pty::openpty(Some(&size), saved.as_ref())
            .map_err(JailError::sys("openpty", "/dev/ptmx"))?;
        let master_in = pty
            .master
            .try_clone()
            .map_err(JailError::io("dup", "/dev/ptmx"))?;
        if let Some(t) = &saved {
            let mut raw = t.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }
        let (done, output_done) = mpsc::channel();
        let mut master = std::fs::File::from(pty.master);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut out = std::io::stdout();
            // EIO once every slave descriptor is closed: the command ended.
            while let Ok(n @ 1..) = master.read(&mut buf) {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            let _ = done.send(());
        });
        // Caller input: ends with the caller's stdin or the process.
        std::thread::spawn(move || {
            let mut master = std::fs::File::from(master_in);
            let mut buf = [0u8; 4096];
            let mut input = std::io::stdin();
            while let Ok(n @ 1..) = input.read(&mut buf) {
                if master.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        Ok(Some(Self {
            slave: Some(pty.slave),
            saved,
            output_done,
        }))
    }

    /// The slave end, for the jail's command.
    pub fn slave(&mut self) -> Option<OwnedFd> {
        self.slave.take()
    }

    /// Once the command has ended: lets the last of its output through
    /// (processes it left behind may hold the terminal; they are not
    /// waited for long).
    pub fn finish(self) {
        let _ = self.output_done.recv_timeout(Duration::from_millis(500));
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}
