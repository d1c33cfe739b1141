//! The jail engine: namespaces, cgroups, volumes and root filesystems.
//!
//! This crate is the only code in Stockade that makes privileged syscalls.
