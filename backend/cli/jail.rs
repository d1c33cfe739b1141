//! `stockade jail …` and `stockade image …`: jails on this host, without the
//! database, for operators and for measuring the engine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use stockade_domain::{ByteSize, JailKind, JailName, Limits, Millicores};
use stockade_jail::{Engine, EngineConfig, JailSpec, JailStatus, NetSpec, Publish, parse_rate};

use crate::config::Config;

/// Limits given on the command line.
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// CPU, as millicores (500m) or cores (1.5).
    #[arg(long, default_value = "1")]
    cpu: String,
    /// Memory limit, e.g. 256M; no swap beyond it.
    #[arg(long, default_value = "256M")]
    memory: String,
    /// Maximum processes and threads.
    #[arg(long, default_value_t = 128)]
    pids: u32,
    /// Volume size, e.g. 1G; without it, a temporary 256 MiB layer (run only).
    #[arg(long)]
    disk: Option<String>,
    /// Read rate limit on the volume, e.g. 10M (bytes/s).
    #[arg(long)]
    io_read_bps: Option<String>,
    /// Write rate limit on the volume, e.g. 10M (bytes/s).
    #[arg(long)]
    io_write_bps: Option<String>,
    /// Outbound network rate, e.g. 10mbit (bits/s; kbit, mbit, gbit).
    #[arg(long)]
    net_egress: Option<String>,
    /// Inbound network rate, e.g. 10mbit (bits/s; kbit, mbit, gbit).
    #[arg(long)]
    net_ingress: Option<String>,
}

/// Network options given on the command line.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Publish a jail port on a host port, HOST:JAIL (e.g. 8080:80); repeatable.
    #[arg(long = "publish", value_name = "HOST:JAIL")]
    publish: Vec<String>,
    /// The jail's address (default: the next free one of the node's pool).
    #[arg(long)]
    address: Option<std::net::Ipv4Addr>,
    /// Outbound NAT to the world (off: the jail reaches nothing outside).
    #[arg(long)]
    nat: bool,
}

impl NetArgs {
    /// Whether any option asks for a network.
    fn any(&self) -> bool {
        !self.publish.is_empty() || self.address.is_some() || self.nat
    }

    /// Checks the options without touching the host.
    fn parse(&self) -> anyhow::Result<Vec<Publish>> {
        Ok(self
            .publish
            .iter()
            .map(|p| Publish::parse(p))
            .collect::<Result<_, _>>()?)
    }

    fn spec(&self, engine: &Engine, publish: Vec<Publish>) -> anyhow::Result<NetSpec> {
        let address = match self.address {
            Some(a) => a,
            None => engine.allocate_address()?,
        };
        Ok(NetSpec {
            address,
            publish,
            nat: self.nat,
        })
    }
}

fn net_rate(field: &'static str, v: &Option<String>) -> anyhow::Result<u64> {
    Ok(v.as_deref()
        .map(|s| parse_rate(field, s))
        .transpose()?
        .unwrap_or(0))
}

impl LimitArgs {
    fn wants_network(&self) -> bool {
        self.net_egress.is_some() || self.net_ingress.is_some()
    }

    fn parse(&self, disk_required: bool) -> anyhow::Result<Limits> {
        if self.pids == 0 {
            anyhow::bail!("pids: must be more than 0");
        }
        let disk = match &self.disk {
            Some(d) => ByteSize::parse("disk", d)?.bytes(),
            None if disk_required => ByteSize::parse("disk", "1G")?.bytes(),
            None => 0,
        };
        let rate = |field: &'static str, v: &Option<String>| -> anyhow::Result<u64> {
            Ok(v.as_deref()
                .map(|s| ByteSize::parse(field, s))
                .transpose()?
                .map_or(0, ByteSize::bytes))
        };
        let memory = ByteSize::parse("memory", &self.memory)?.bytes();
        if memory < (4 << 20) {
            anyhow::bail!("memory: must be at least 4M");
        }
        Ok(Limits {
            cpu_millicores: Millicores::parse("cpu", &self.cpu)?.millis(),
            memory_bytes: memory,
            pids: self.pids,
            disk_bytes: disk,
            io_read_bps: rate("io-read-bps", &self.io_read_bps)?,
            io_write_bps: rate("io-write-bps", &self.io_write_bps)?,
            net_egress_bps: net_rate("net-egress", &self.net_egress)?,
            net_ingress_bps: net_rate("net-ingress", &self.net_ingress)?,
            ..Limits::default()
        })
    }
}

#[derive(Subcommand)]
pub enum JailCommand {
    /// Run a command in a transient app jail; passes its output through, exits
    /// with its exit code, and removes the jail.
    Run {
        /// Jail name (also its hostname); random when not given.
        #[arg(long)]
        name: Option<String>,
        /// Image to run.
        #[arg(long, default_value = "busybox")]
        image: String,
        #[command(flatten)]
        limits: Box<LimitArgs>,
        /// Give the jail a network interface on the node's bridge (implied by
        /// --publish, --address, --nat and the network rates).
        #[arg(long)]
        net: bool,
        #[command(flatten)]
        network: Box<NetArgs>,
        /// Accepted for compatibility: a user namespace is the default.
        #[arg(long, hide = true, conflicts_with = "no_userns")]
        userns: bool,
        /// No user namespace: root in the jail is root on the host. By
        /// default root in a jail is an unprivileged host uid of a range of
        /// its own.
        #[arg(long)]
        no_userns: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Create a persistent jail (volume, cgroup, record) without starting it.
    Create {
        /// Jail name (also its hostname).
        name: String,
        /// Image to run.
        #[arg(long, default_value = "busybox")]
        image: String,
        /// `system` (long-running) or `app` (ends with its command).
        #[arg(long, default_value = "system")]
        kind: String,
        #[command(flatten)]
        limits: Box<LimitArgs>,
        /// No network interface: loopback only. (By default a jail gets one
        /// on the node's bridge when the bridge can be set up.)
        #[arg(long, conflicts_with_all = ["publish", "address", "nat", "net_egress", "net_ingress"])]
        no_net: bool,
        #[command(flatten)]
        network: Box<NetArgs>,
        /// Accepted for compatibility: a user namespace is the default.
        #[arg(long, hide = true, conflicts_with = "no_userns")]
        userns: bool,
        /// No user namespace: root in the jail is root on the host. By
        /// default root in a jail is an unprivileged host uid of a range of
        /// its own.
        #[arg(long)]
        no_userns: bool,
        /// The command (default: the image's init, or busybox httpd).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Start a jail; it keeps running after this command exits.
    Start { name: String },
    /// Stop a jail: SIGTERM, then SIGKILL after the grace time.
    Stop {
        name: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 10)]
        grace: u64,
    },
    /// Stop and start a jail.
    Restart {
        name: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 10)]
        grace: u64,
    },
    /// Run a command inside a running jail (same namespaces, cgroup, limits).
    Exec {
        name: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Destroy a jail: nothing of it is left on the host.
    Rm { name: String },
    /// List the jails on this host.
    Ls,
    /// Print a jail's usage: CPU, memory, processes, IO, disk and limit hits.
    Stats { name: String },
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import an image: an OCI image layout (a folder or an archive of
    /// one), a `docker save` archive, or a root filesystem tarball.
    Import {
        /// Image name.
        name: String,
        /// The layout folder or archive (compressed or not).
        tarball: PathBuf,
    },
    /// List the images on this host.
    Ls,
}

/// The engine of host-local jails (apart from the agent's, which has its own
/// state folder and cgroup parent).
fn engine(cfg: &Config) -> anyhow::Result<Engine> {
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("jails need root; run this as root");
    }
    let state = std::path::absolute(cfg.state_dir.join("local"))?;
    let images = std::path::absolute(cfg.state_dir.join("images"))?;
    let mut engine_cfg = EngineConfig::new(state, images);
    engine_cfg.cgroup_parent = cfg.cgroup_parent.clone();
    engine_cfg.bridge = cfg.bridge.clone();
    engine_cfg.firewall_table = cfg.firewall_table.clone();
    engine_cfg.console_bytes = cfg.console_kib << 10;
    if let Some(net) = cfg.jail_network {
        engine_cfg.gateway = net;
    }
    Ok(Engine::new(engine_cfg)?)
}

fn name_or_random(name: Option<String>) -> anyhow::Result<JailName> {
    match name {
        Some(n) => Ok(JailName::parse(&n)?),
        None => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            Ok(JailName::parse(&format!("run-{}", &id[..12]))?)
        }
    }
}

fn check_image(engine: &Engine, image: &str) -> anyhow::Result<()> {
    if image == stockade_jail::BUSYBOX {
        engine.ensure_busybox()?;
        return Ok(());
    }
    let images = engine.images()?;
    if !images.iter().any(|i| i == image) {
        anyhow::bail!(
            "image {image:?} does not exist; import it with `stockade image import {image} TARBALL` (images here: {})",
            images.join(", ")
        );
    }
    Ok(())
}

pub fn run(cfg: &Config, cmd: JailCommand) -> anyhow::Result<ExitCode> {
    // Parse everything before touching the host: bad input leaves nothing behind.
    match cmd {
        JailCommand::Run {
            name,
            image,
            limits,
            net,
            network,
            userns: _,
            no_userns,
            command,
        } => {
            let name = name_or_random(name)?;
            let wants_net = net || network.any() || limits.wants_network();
            let limits = limits.parse(false)?;
            let publish = network.parse()?;
            let engine = engine(cfg)?;
            check_image(&engine, &image)?;
            let network = if wants_net {
                Some(network.spec(&engine, publish)?)
            } else {
                None
            };
            let spec = JailSpec {
                name: name.clone(),
                hostname: name,
                image,
                kind: JailKind::App,
                command: command.clone(),
                limits,
                network,
                user_namespace: !no_userns,
                env: Vec::new(),
            };
            let code = engine.run(&spec, &command)?;
            Ok(ExitCode::from(
                u8::try_from(code.clamp(0, 255)).unwrap_or(1),
            ))
        }
        JailCommand::Create {
            name,
            image,
            kind,
            limits,
            no_net,
            network,
            userns: _,
            no_userns,
            command,
        } => {
            let name = JailName::parse(&name)?;
            let kind: JailKind = kind.parse()?;
            if kind == JailKind::App && command.is_empty() {
                anyhow::bail!("an app jail needs a command after --");
            }
            let asked = network.any() || limits.wants_network();
            let limits = limits.parse(true)?;
            let publish = network.parse()?;
            let engine = engine(cfg)?;
            check_image(&engine, &image)?;
            let net = if no_net || (cfg.jail_network.is_none() && !asked) {
                None
            } else {
                match engine.ensure_network() {
                    Ok(()) => Some(network.spec(&engine, publish)?),
                    Err(e) if asked => return Err(e.into()),
                    Err(e) => {
                        eprintln!("note: {name} gets no network (loopback only): {e}");
                        None
                    }
                }
            };
            let address = net.as_ref().map(|n| n.address);
            engine.create(&JailSpec {
                name: name.clone(),
                hostname: name.clone(),
                image,
                kind,
                command,
                limits,
                network: net,
                user_namespace: !no_userns,
                env: Vec::new(),
            })?;
            match address {
                Some(a) => println!("created {name} ({a})"),
                None => println!("created {name}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Start { name } => {
            let name = JailName::parse(&name)?;
            engine(cfg)?.start(&name)?;
            println!("started {name}");
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Stop { name, grace } => {
            let name = JailName::parse(&name)?;
            engine(cfg)?.stop(&name, Duration::from_secs(grace))?;
            println!("stopped {name}");
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Restart { name, grace } => {
            let name = JailName::parse(&name)?;
            engine(cfg)?.restart(&name, Duration::from_secs(grace))?;
            println!("restarted {name}");
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Exec { name, command } => {
            let name = JailName::parse(&name)?;
            let code = engine(cfg)?.exec(&name, &command)?;
            Ok(ExitCode::from(
                u8::try_from(code.clamp(0, 255)).unwrap_or(1),
            ))
        }
        JailCommand::Rm { name } => {
            let name = JailName::parse(&name)?;
            engine(cfg)?.destroy(&name)?;
            println!("removed {name}");
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Ls => {
            let engine = engine(cfg)?;
            let found = engine.discover()?;
            println!("{:24} {:9} {:>8}  IMAGE", "NAME", "STATE", "PID");
            for (name, j) in &found.jails {
                let image = j.record.as_ref().map_or("-", |r| r.spec.image.as_str());
                let state = format!("{:?}", j.condition()).to_lowercase();
                let pid = j.init.map_or("-".to_owned(), |p| p.to_string());
                println!("{name:24} {state:9} {pid:>8}  {image}");
            }
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Stats { name } => {
            let name = JailName::parse(&name)?;
            let engine = engine(cfg)?;
            let status = engine.status(&name)?.context("no such jail")?;
            let u = engine.usage(&name)?;
            let state = match status {
                JailStatus::Running { pid } => format!("running (pid {pid})"),
                JailStatus::Stopped => "stopped".into(),
            };
            println!("state               {state}");
            println!(
                "cpu time            {}.{:06} s",
                u.cpu_usec / 1_000_000,
                u.cpu_usec % 1_000_000
            );
            println!(
                "memory              {} (peak {})",
                ByteSize(u.memory_bytes),
                ByteSize(u.memory_peak_bytes)
            );
            println!("processes           {}", u.pids);
            println!(
                "io read / written   {} / {}",
                ByteSize(u.io_read_bytes),
                ByteSize(u.io_write_bytes)
            );
            println!("disk used           {}", ByteSize(u.disk_used_bytes));
            println!("oom kills           {}", u.oom_kills);
            println!("memory limit hits   {}", u.memory_limit_hits);
            println!("pids limit hits     {}", u.pids_limit_hits);
            println!("cpu throttled       {} periods", u.cpu_throttled_periods);
            println!(
                "network rx / tx     {} / {} ({} / {} packets)",
                ByteSize(u.net_rx_bytes),
                ByteSize(u.net_tx_bytes),
                u.net_rx_packets,
                u.net_tx_packets
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn image(cfg: &Config, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Import { name, tarball } => {
            let name = JailName::parse(&name).context("image name")?;
            if !tarball.is_file() && !tarball.join("index.json").is_file() {
                anyhow::bail!(
                    "{} is neither a file nor an OCI image layout folder",
                    tarball.display()
                );
            }
            engine(cfg)?.import_image(name.as_str(), &tarball)?;
            println!("imported {name}");
        }
        ImageCommand::Ls => {
            let engine = engine(cfg)?;
            engine.ensure_busybox()?;
            for i in engine.images()? {
                println!("{i}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
