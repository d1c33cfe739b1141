//! Builds `stockade-init`, the jail's PID 1, as a statically linked program
//! (it runs inside jails whose images carry no C library of the node's) and
//! hands it to the engine, which embeds it. Only this one program is linked
//! statically; every other binary of the workspace stays dynamic.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let init = dir.join("../init");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let target = std::env::var("TARGET").expect("set by cargo");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for f in ["Cargo.toml", "src/lib.rs", "src/main.rs", "src/sftp.rs"] {
        println!("cargo:rerun-if-changed={}", init.join(f).display());
    }
    // A target folder of its own: the outer build holds the lock on the
    // workspace's. The C library is linked in (crt-static) for this one
    // program only, which is why it is built by `cargo rustc`.
    let status = Command::new(cargo)
        .args(["rustc", "--release", "--locked", "--bin", "stockade-init"])
        .arg("--manifest-path")
        .arg(init.join("Cargo.toml"))
        .args(["--target", &target])
        .arg("--target-dir")
        .arg(out.join("init-build"))
        .args([
            "--",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=debuginfo",
        ])
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building stockade-init failed");
    let built = out
        .join("init-build")
        .join(&target)
        .join("release/stockade-init");
    std::fs::copy(&built, out.join("stockade-init")).expect("stockade-init was built");
    // Names the node's copy of this version (FNV-1a, 64 bits).
    let bytes = std::fs::read(&built).expect("stockade-init was built");
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    println!("cargo:rustc-env=STOCKADE_INIT_HASH={hash:016x}");
}
