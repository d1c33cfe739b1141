//! One change to a jail at a time, across processes. The agent, the
//! `stockade jail` command and anything else with an engine on the same
//! state folder take the jail's lock before they change it, so that a jail
//! removed by hand is never half made again by a start running beside the
//! removal, nor its folder written into while it is being removed.
//!
//! A lock is an exclusive `flock` on a file named after the jail in the
//! state folder's `locks` folder, outside the jail's own folder, which a
//! removal deletes. A removal deletes the lock file too, while it holds it;
//! whoever was waiting on the deleted file sees that its file is no longer
//! the one named and takes the lock again on a new one.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::JailError;

thread_local! {
    /// The jails whose lock this thread holds: a change that makes another
    /// (a failed creation removing what it made, a restart) takes the lock
    /// once, not again from inside.
    static HELD: RefCell<HashSet<PathBuf>> = RefCell::new(HashSet::new());
}

/// The folder of the jails' lock files.
pub(super) fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("locks")
}

/// A held jail lock; released when dropped.
#[must_use = "the lock is released when dropped"]
pub(super) struct JailLock {
    /// The lock file's path and the open file holding the lock; `None` when
    /// an outer caller in this thread holds it.
    held: Option<(PathBuf, File)>,
}

impl Drop for JailLock {
    fn drop(&mut self) {
        if let Some((path, file)) = self.held.take() {
            HELD.with(|h| h.borrow_mut().remove(&path));
            // Closing the file releases the lock.
            drop(file);
        }
    }
}

/// Takes the lock of jail `name`, waiting for whoever holds it.
pub(super) fn lock(dir: &Path, name: &str) -> Result<JailLock, JailError> {
    let path = dir.join(name);
    if HELD.with(|h| h.borrow().contains(&path)) {
        return Ok(JailLock { held: None });
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(JailError::io("create", dir)(e)),
    }
    loop {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(JailError::io("open", &path))?;
        loop {
            // SAFETY: flock only locks the open file.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(JailError::sys("lock", &path)(e)),
            }
        }
        // A removal may have deleted the file while this one waited on it:
        // then the lock is taken again on the file the name now gives.
        let mine = file.metadata().map_err(JailError::io("stat", &path))?;
        match fs::symlink_metadata(&path) {
            Ok(named) if named.ino() == mine.ino() && named.dev() == mine.dev() => {
                HELD.with(|h| h.borrow_mut().insert(path.clone()));
                return Ok(JailLock {
                    held: Some((path, file)),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(JailError::io("stat", &path)(e)),
        }
    }
}

/// Deletes jail `name`'s lock file; the caller holds the lock (the jail is
/// gone, and whoever waits takes the lock on a new file).
pub(super) fn forget(dir: &Path, name: &str) -> Result<(), JailError> {
    let path = dir.join(name);
    debug_assert!(HELD.with(|h| h.borrow().contains(&path)));
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(JailError::io("remove", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn a_second_taker_waits_and_a_thread_takes_its_own_lock_again() {
        let state = tempfile::tempdir().unwrap();
        let dir = dir(state.path());
        let first = lock(&dir, "web").unwrap();
        // Again from the same thread: no wait on itself.
        let inner = lock(&dir, "web").unwrap();
        drop(inner);
        let taken = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (dir, taken) = (dir.clone(), Arc::clone(&taken));
            std::thread::spawn(move || {
                let _l = lock(&dir, "web").unwrap();
                taken.store(true, Ordering::SeqCst);
            })
        };
        // Another jail's lock is not this one.
        drop(lock(&dir, "other").unwrap());
        std::thread::sleep(Duration::from_millis(200));
        assert!(!taken.load(Ordering::SeqCst), "taken while held");
        // The inner release did not release the outer lock; this does.
        drop(first);
        waiter.join().unwrap();
        assert!(taken.load(Ordering::SeqCst));
    }

    #[test]
    fn a_taker_waiting_on_a_deleted_lock_file_holds_the_new_one() {
        let state = tempfile::tempdir().unwrap();
        let dir = dir(state.path());
        let first = lock(&dir, "web").unwrap();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let waiter = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let _l = lock(&dir, "web").unwrap();
                held_tx.send(()).unwrap();
                let _ = done_rx.recv();
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        // The jail is removed: its lock file goes, then the lock.
        forget(&dir, "web").unwrap();
        drop(first);
        held_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // The waiter holds the lock the name now gives: a third waits.
        let taken = Arc::new(AtomicBool::new(false));
        let third = {
            let (dir, taken) = (dir.clone(), Arc::clone(&taken));
            std::thread::spawn(move || {
                let _l = lock(&dir, "web").unwrap();
                taken.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !taken.load(Ordering::SeqCst),
            "the waiter held a deleted file's lock"
        );
        done_tx.send(()).unwrap();
        waiter.join().unwrap();
        third.join().unwrap();
        assert!(taken.load(Ordering::SeqCst));
    }
}
