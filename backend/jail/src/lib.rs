//! The jail engine: namespaces, cgroups, volumes and root filesystems.
//!
//! This crate is the only code in Stockade that makes privileged syscalls.
//! It needs root, a kernel with overlayfs, loop devices and ext4, and the
//! host programs `mkfs.ext4` and `resize2fs` (volumes), `tar` (image import)
//! and a static `busybox` (the built-in image); for jail networks, bridges,
//! veth, nftables and tbf, and the programs `nft` and `tc`.
//!
//! # API
//!
//! ```text
//! Engine::new(EngineConfig) -> Result<Engine>
//! engine.ensure_busybox() / import_image(name, tarball) / images()
//! engine.create(&JailSpec)                 volume + cgroup + record, if missing
//! engine.start(&name)                      no-op if running; survives the caller
//! engine.stop(&name, grace)                SIGTERM, grace, SIGKILL; idempotent
//! engine.restart(&name, grace)
//! engine.destroy(&name)                    removes every trace; idempotent
//! engine.update_limits(&name, &Limits)     live; grows the volume online,
//!                                          changes network rates
//! engine.status(&name) -> Option<JailStatus>
//! engine.usage(&name)  -> Usage
//! engine.usage_reader() -> UsageReader     .sweep(&names) -> Sweep: usage of
//!                                          many jails, files kept open
//! engine.exec(&name, argv) -> exit code    caller's stdio
//! engine.run(&JailSpec, argv) -> exit code transient: create, run, destroy
//! engine.discover() -> Discovered          every jail object on the node
//! engine.allocate_address() -> Ipv4Addr    next free address of the pool
//! engine.ensure_network()                  bridge + firewall, if missing
//! engine.remove_stray_link(&link)          a bridge port of no jail
//! engine.snapshot(&name, id) -> Snapshot   volume frozen and duplicated
//! engine.restore_snapshot(&name, id)       stopped jail's volume put back
//! engine.delete_snapshot(&name, id) / snapshots(&name)
//! allocate(pool, &used) -> Ipv4Addr        the same, for the agent's pool
//! ```
//!
//! # A jail's network and privileges
//!
//! `JailSpec::network: Some(NetSpec)` gives the jail `eth0` on the node's
//! bridge (`EngineConfig::bridge`, gateway `EngineConfig::gateway`): a veth
//! pair made directly in the jail's namespace while its init mounts the
//! root, its bridge port isolated (no jail reaches another), an nftables
//! table of the engine's own (`inet stockade`: jails reach no host service
//! but `open_ports`; published ports; optional outbound NAT), tbf on each
//! end for `Limits::net_ingress_bps` / `net_egress_bps`. `None`: loopback
//! only. Every command in a jail runs with capabilities reduced to a short
//! allow-list (all five sets), `no_new_privs`, a seccomp allow-list and
//! masked `/proc` entries. `JailSpec::user_namespace` maps the jail's root
//! to a host uid range of its own (`JailRecord::uid_base`); the image is
//! seen through an id-mapped mount.
//!
//! Exit codes are the command's, or 128 + the signal that killed it, as a
//! shell reports them.
//!
//! # Layout on the node
//!
//! `<state>/jails/<name>/` holds `jail.json` (the record), `volume.img`
//! (sparse ext4), `volume/` (its mount point, with the overlay's `upper/` and
//! `work/`), `lower/` (the id-mapped image of a jail with a user namespace)
//! `console.log` (a started jail's output) and `snapshots/` (`<id>.img`,
//! duplicates of `volume.img` as [`StorageDriver`] makes them, with
//! `<id>.json`). `<state>/mnt/` stays empty on
//! the node: each jail mounts a tmpfs of its own over it, inside its own
//! mount namespace, and assembles its root there.
//! Cgroups are `<cgroup root>[/<controller>]/<parent>/<name>`. A jail's
//! host-side veth is `sk` + 12 hex digits of a hash of its name
//! ([`host_link`]).

mod cgroup;
mod devices;
mod discover;
mod engine;
mod error;
mod files;
mod host;
mod hostinfo;
mod image;
mod launch;
mod net;
mod netlink;
mod rootfs;
mod seccomp;
mod spec;
mod state;
mod storage;
mod teardown;
mod terminal;
mod uids;
mod usage;
mod volume;
mod watch;

pub use cgroup::{Cgroups, Version as CgroupVersion, delegated_parent, own_group};
pub use discover::{Condition, Discovered, DiscoveredJail};
pub use engine::{Engine, EngineConfig, Snapshot, UID_RANGE};
pub use error::JailError;
pub use files::check_file_name;
pub use image::BUSYBOX;
pub use ipnet::Ipv4Net;
pub use net::{
    FIREWALL_TABLE, MIN_RATE_BPS, NetSpec, PoolExhausted, Protocol, Publish, allocate, host_link,
    parse_rate,
};
pub use spec::{JailSpec, JailStatus, Usage};
pub use state::{Exit, IdShift, InitProcess, JailRecord, Upper};
pub use stockade_domain::{JailKind, JailName, Limits};
pub use storage::Driver as StorageDriver;
pub use usage::{Sweep, UsageReader, raise_open_file_limit};
pub use watch::NetWatch;
