//! What a jail's processes exec, prepared before any fork: the command's
//! candidates, argv and envp as NUL-terminated arrays.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;

use stockade_init::JAIL_PATH;

use crate::error::JailError;

/// A command ready to exec: candidates from the jail's PATH, argv and envp
/// as NUL-terminated arrays, all allocated before any fork.
#[derive(Debug)]
pub(crate) struct ExecPlan {
    pub(super) candidates: Vec<CString>,
    pub(super) argv: Vec<CString>,
    pub(super) envp: Vec<CString>,
    pub(super) argv_ptrs: Vec<*const libc::c_char>,
    pub(super) envp_ptrs: Vec<*const libc::c_char>,
    pub(super) candidate_ptrs: Vec<*const libc::c_char>,
    /// Exec'd from this descriptor instead of a path (see [`Self::exec_join_program`]).
    pub(super) descriptor: Option<libc::c_int>,
}

pub(super) fn cstring(what: &'static str, s: &str) -> Result<CString, JailError> {
    CString::new(s).map_err(|_| JailError::Invalid {
        what,
        reason: format!("{s:?} contains a NUL byte"),
    })
}

impl ExecPlan {
    /// Prepares `argv` with the environment `env`; a bare command name is
    /// looked up in [`JAIL_PATH`] inside the jail at exec time.
    pub fn new(argv: &[String], env: &[(&str, &str)]) -> Result<Self, JailError> {
        let first = argv.first().ok_or(JailError::Invalid {
            what: "command",
            reason: "is empty".into(),
        })?;
        let candidates = if first.contains('/') {
            vec![cstring("command", first)?]
        } else {
            JAIL_PATH
                .split(':')
                .map(|d| cstring("command", &format!("{d}/{first}")))
                .collect::<Result<_, _>>()?
        };
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| cstring("command", a))
            .collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env
            .iter()
            .map(|(k, v)| cstring("environment", &format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        Ok(Self {
            candidate_ptrs: candidates.iter().map(|c| c.as_ptr()).collect(),
            candidates,
            argv,
            envp,
            argv_ptrs,
            envp_ptrs,
            descriptor: None,
        })
    }

    /// The same arguments and environment, exec'd from the program a
    /// [`super::Join`] passes (its `program`), not from the jail's files.
    pub fn exec_join_program(mut self) -> Self {
        self.descriptor = Some(super::JOIN_PROGRAM_FD);
        self
    }

    /// The init program's arguments and environment for this command: a
    /// started jail's log limit, whether the command gets a terminal, then
    /// the command itself; its environment is the command's.
    pub fn for_init(&self, log_limit: Option<u64>, tty: bool, identity: &Identity) -> InitPlan {
        let mut argv = vec![c"stockade-init".to_owned()];
        if let Some(dir) = &identity.workdir {
            argv.push(c"--cwd".to_owned());
            argv.push(CString::new(dir.as_str()).unwrap_or_default());
        }
        if let Some((uid, gid)) = identity.user {
            argv.push(c"--user".to_owned());
            argv.push(CString::new(format!("{uid}:{gid}")).unwrap_or_default());
        }
        if let Some(limit) = log_limit {
            argv.push(c"--log".to_owned());
            argv.push(CString::new(limit.to_string()).unwrap_or_default());
        }
        if tty {
            argv.push(c"--tty".to_owned());
        }
        argv.push(c"--".to_owned());
        argv.extend(self.argv.iter().cloned());
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        InitPlan {
            argv,
            argv_ptrs,
            envp_ptrs: self.envp_ptrs.clone(),
        }
    }

    /// The program as the user gave it, for error messages.
    pub fn program(&self) -> PathBuf {
        PathBuf::from(std::ffi::OsStr::from_bytes(self.argv[0].as_bytes()))
    }

    /// Tries each candidate; returns only on failure, with the most telling
    /// errno (a permission problem beats "not found" on another PATH entry).
    pub(super) fn exec(&self) -> Errno {
        let _ = (&self.candidates, &self.envp);
        if let Some(fd) = self.descriptor {
            // SAFETY: an empty NUL-terminated path, with the arrays above,
            // alive for the call; returns only on failure.
            unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    c"".as_ptr(),
                    self.argv_ptrs.as_ptr(),
                    self.envp_ptrs.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
            }
            return Errno::last();
        }
        // SAFETY: the plan holds NUL-terminated strings and NULL-terminated
        // arrays of them, alive for the call.
        Errno::from_raw(unsafe {
            stockade_init::exec_first(
                &self.candidate_ptrs,
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            )
        })
    }
}

/// Who the command runs as and where, inside the jail (an image's
/// defaults); `None`s: root, in `/`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub workdir: Option<String>,
    pub user: Option<(u32, u32)>,
}

/// The init program's argv (NUL-terminated) and the command's environment,
/// prepared before any fork.
#[derive(Debug)]
pub(crate) struct InitPlan {
    pub(super) argv: Vec<CString>,
    pub(super) argv_ptrs: Vec<*const libc::c_char>,
    pub(super) envp_ptrs: Vec<*const libc::c_char>,
}
