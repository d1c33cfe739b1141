//! The child side of a start or a join runs in a copy of a possibly
//! multi-threaded caller, where a lock another thread held (the
//! allocator's among them) stays held for ever; so it must not allocate
//! between `clone` and `exec`. This test binary's allocator ends, with a
//! word on stderr and exit code 86, any process other than the test's own
//! that allocates before it execs, so a start or join whose child allocates
//! fails here. Needs root; without it the tests say so loudly and return.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI32, Ordering};

use common::*;
use stockade_jail::{JailKind, JailStatus};

/// The pid of the test process; 0 until the guard is armed.
static OWN_PID: AtomicI32 = AtomicI32::new(0);

struct ForkedChildrenMustNotAllocate;

impl ForkedChildrenMustNotAllocate {
    fn check() {
        let own = OWN_PID.load(Ordering::Relaxed);
        // SAFETY: getpid has no preconditions.
        if own != 0 && unsafe { libc::getpid() } != own {
            let msg = b"an allocation in a forked child, before exec\n";
            // SAFETY: writes a static buffer to stderr, then ends the
            // process without running anything of the copied parent.
            unsafe {
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(86);
            }
        }
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for ForkedChildrenMustNotAllocate {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Self::check();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GUARD: ForkedChildrenMustNotAllocate = ForkedChildrenMustNotAllocate;

fn arm() {
    // SAFETY: getpid has no preconditions.
    OWN_PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
}

#[test]
fn the_guard_ends_a_forked_child_that_allocates() {
    arm();
    // SAFETY: the child only allocates (and is ended by the guard) or exits.
    match unsafe { libc::fork() } {
        0 => {
            let v: Vec<u8> = Vec::with_capacity(64);
            std::hint::black_box(&v);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        pid => {
            assert!(pid > 0, "fork failed");
            let mut status = 0;
            // SAFETY: waits for the child just forked.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(libc::WIFEXITED(status));
            assert_eq!(libc::WEXITSTATUS(status), 86, "the guard ended it");
        }
    }
}

#[test]
fn starts_runs_and_joins_allocate_nothing_between_clone_and_exec() {
    if !root_or_skip("starts_runs_and_joins_allocate_nothing_between_clone_and_exec") {
        return;
    }
    arm();
    let f = Fixture::new();
    for user_namespace in [false, true] {
        // `run`: the launcher waits for the init.
        let mut spec = f.spec("child-run", JailKind::App, &[], small_limits());
        spec.user_namespace = user_namespace;
        assert_eq!(
            f.engine
                .run(&spec, &["sh".into(), "-c".into(), "exit 3".into()])
                .unwrap(),
            3,
            "run (user namespace: {user_namespace})"
        );
        // A start: the launcher leaves the init running; then a join.
        let mut spec = f.spec(
            "child-start",
            JailKind::System,
            &["sleep", "600"],
            small_limits(),
        );
        spec.user_namespace = user_namespace;
        f.engine.create(&spec).unwrap();
        f.engine.start(&spec.name).unwrap();
        assert!(matches!(
            f.engine.status(&spec.name).unwrap(),
            Some(JailStatus::Running { .. })
        ));
        assert_eq!(
            f.engine
                .exec(&spec.name, &["sh".into(), "-c".into(), "exit 5".into()])
                .unwrap(),
            5,
            "join (user namespace: {user_namespace})"
        );
        f.engine.destroy(&spec.name).unwrap();
    }
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}
