//! Runs one command in a transient busybox jail and exits with its code:
//! `jail_run STATE_DIR [--disk BYTES] [--repeat N] -- COMMAND...`
//! (a manual check and a timing aid; the product's CLI is `stockade jail run`).

use std::time::Instant;

use stockade_jail::{Engine, EngineConfig, JailKind, JailName, JailSpec, Limits};

fn main() -> anyhow_free::Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .ok_or("usage: jail_run STATE_DIR [--disk BYTES] [--repeat N] -- COMMAND...")?;
    let (opts, command) = (&args[..split], &args[split + 1..]);
    let state = opts.first().ok_or("STATE_DIR missing")?;
    let mut disk = 0;
    let mut repeat = 1;
    for pair in opts[1..].chunks(2) {
        match pair {
            [k, v] if k == "--disk" => disk = v.parse()?,
            [k, v] if k == "--repeat" => repeat = v.parse()?,
            _ => return Err("unknown option".into()),
        }
    }
    let engine = Engine::new(EngineConfig::new(
        format!("{state}/state"),
        format!("{state}/images"),
    ))?;
    engine.ensure_busybox()?;
    let mut code = 0;
    for i in 0..repeat {
        let name = JailName::parse(&format!("run-{}-{i}", std::process::id()))?;
        let spec = JailSpec {
            hostname: name.clone(),
            name,
            image: "busybox".into(),
            kind: JailKind::App,
            command: vec![],
            limits: Limits {
                cpu_millicores: 500,
                memory_bytes: 256 << 20,
                pids: 128,
                disk_bytes: disk,
                ..Limits::default()
            },
            network: None,
            user_namespace: false,
            env: Vec::new(),
        };
        let t = Instant::now();
        code = engine.run(&spec, command)?;
        eprintln!("run took {:?}", t.elapsed());
    }
    std::process::exit(code);
}

mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
