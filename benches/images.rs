//! Pulling an image as a node does when staff add it: a 30 MiB image (one
//! layer of incompressible data under a small busybox layer) in the local
//! registry, behind token authentication, pulled with the account into a
//! staging layout (every blob checked against its digest) and unpacked
//! safely into a tree; 5 rounds, median. The registry is the Debian
//! `docker-registry` package on loopback.
//!
//! Run as root: `cargo bench --bench images`.

#[path = "../tests/common/ports.rs"]
mod ports;
#[path = "../tests/common/registry.rs"]
mod registry;

use std::time::{Duration, Instant};

use rand::RngCore;
use registry::{Entry, TestRegistry};
use stockade_image::registry::Credentials;

const ROUNDS: usize = 5;
const DATA: usize = 30 << 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("run as root: the unpacked files get the image's owners");
        std::process::exit(1);
    }
    let registry = TestRegistry::start();
    let mut data = vec![0u8; DATA];
    rand::rng().fill_bytes(&mut data);
    let big = registry::layer(&[Entry::File("srv/data.bin", &data, 0o644, 0)]);
    let base = registry::busybox_layer();
    let size = u32::try_from(big.len() + base.len()).expect("under 4 GiB");
    let config = registry::config(&[], &["/bin/sh"], &[], "", "");
    registry
        .push("bench/site:1", vec![base, big], &config)
        .await;
    let reference = registry.reference("bench/site:1");
    let account = Credentials {
        username: registry::USER.into(),
        password: registry::PASSWORD.into(),
    };
    let bounds = stockade_image::Bounds::default();
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let work = tempfile::tempdir().unwrap();
        let (layout, root) = (work.path().join("layout"), work.path().join("root"));
        std::fs::create_dir(&root).unwrap();
        let started = Instant::now();
        stockade_image::registry::pull(&reference, Some(&account), &layout, &bounds)
            .await
            .unwrap();
        stockade_image::unpack(&layout, &root, &work.path().join("scratch"), &bounds).unwrap();
        times.push(started.elapsed());
        assert_eq!(
            std::fs::metadata(root.join("srv/data.bin")).unwrap().len(),
            DATA as u64
        );
    }
    let m = median(times);
    let mib = f64::from(size) / f64::from(1u32 << 20);
    println!(
        "pull and unpack a {mib:.1} MiB image from the local registry (token auth): median {:.0} ms ({:.0} MiB/s) over {ROUNDS} rounds",
        m.as_secs_f64() * 1000.0,
        mib / m.as_secs_f64()
    );
}
