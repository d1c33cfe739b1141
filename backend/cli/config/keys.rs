//! Every setting's key, meaning and default: the README's table, checked
//! by a test, and the list an unknown key's error shows.

/// Each key, its meaning and default, for the README and `--help`.
pub const KEYS: &[(&str, &str)] = &[
    ("listen", "address:port of the web server (127.0.0.1:8080)"),
    (
        "public_url",
        "URL users reach the panel at (http://<listen>)",
    ),
    (
        "database_url",
        "external PostgreSQL URL; unset = managed local cluster (also DATABASE_URL)",
    ),
    (
        "pg_data",
        "data folder of the managed PostgreSQL cluster (./var/pg)",
    ),
    ("state_dir", "node state folder of the agent (./var/state)"),
    (
        "web_database_url",
        "external PostgreSQL URL of the web tier's own role (database_url)",
    ),
    (
        "agent_database_url",
        "external PostgreSQL URL of the agent's own role (database_url)",
    ),
    (
        "run_as",
        "unprivileged user the web server runs as when started as root (stockade)",
    ),
    (
        "db_run_as",
        "another unprivileged user, that the managed PostgreSQL runs as (stockade-db)",
    ),
    ("admin_email", "first admin account (admin@localhost)"),
    (
        "admin_password",
        "its password; unset = generated and printed once",
    ),
    (
        "trusted_proxies",
        "reverse proxies (CIDR or addresses, comma-separated) whose X-Forwarded-For is believed (none)",
    ),
    (
        "webhook_allow",
        "networks webhooks may reach although internal, comma-separated (none)",
    ),
    (
        "staff_password",
        "password of the account `staff create` makes; unset = generated and printed once",
    ),
    ("node_name", "this node's name (host name)"),
    ("heartbeat_secs", "seconds between agent heartbeats (5)"),
    ("log", "log filter (info)"),
    ("session_idle_minutes", "idle session expiry (60)"),
    ("session_max_hours", "absolute session expiry (12)"),
    ("web_workers", "web worker threads, 0 = one per CPU (0)"),
    (
        "page_cache_secs",
        "seconds the panel keeps page data between changes, 0 = none (5)",
    ),
    (
        "resync_secs",
        "seconds between full reconciles of the node's jails (30)",
    ),
    ("sample_secs", "seconds between usage samples (10)"),
    (
        "sample_retention_hours",
        "hours raw usage samples are kept (48)",
    ),
    (
        "proxy_http",
        "where the node's reverse proxy serves jails' domains over HTTP, or off (0.0.0.0:80)",
    ),
    (
        "proxy_https",
        "where it serves them over HTTPS, or off (0.0.0.0:443)",
    ),
    (
        "acme_directory",
        "ACME directory certificates are ordered from, or off (Let's Encrypt)",
    ),
    (
        "acme_root",
        "PEM file of a root the ACME directory's TLS is checked against (the host's roots)",
    ),
    (
        "acme_email",
        "contact address of the node's ACME account (none)",
    ),
    (
        "certificate_key_file",
        "the provider's certificate key, made if missing; copy it to every node (<state_dir>/certificate.key)",
    ),
    (
        "agent_metrics",
        "loopback address:port of the agent's metrics, or off (127.0.0.1:9464)",
    ),
    (
        "agent_logs",
        "address:port where the agent serves jails' output to the web tier on single-use tickets, port 0 for any; a loopback or private address, or off (127.0.0.1:0)",
    ),
    (
        "agent_ssh",
        "address:port of the node's SSH gateway, where customers log in to their jails as <jail>+<tenant> with their keys, port 0 for any, or off (0.0.0.0:2222)",
    ),
    (
        "backup_target",
        "where backups of jails go: an absolute folder, or s3://bucket/prefix?endpoint=URL&region=NAME for an S3-compatible store (keys from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); the same on every node, so a backup restores and a jail moves anywhere; or off (<state_dir>/backups)",
    ),
    (
        "stop_grace_secs",
        "seconds between SIGTERM and SIGKILL when a jail stops (10)",
    ),
    (
        "console_kib",
        "KiB of each jail's newest output kept on the node, at least 16 (4096)",
    ),
    (
        "step_deadline_secs",
        "seconds the agent waits for one step of a jail before giving up on it (120)",
    ),
    (
        "jail_parallelism",
        "jails the agent works on at the same time, at least 1 (8)",
    ),
    (
        "signup_plan",
        "plan self sign-up puts new tenants on; unset = sign-up off",
    ),
    ("bridge", "the node's jail bridge (stk0)"),
    (
        "jail_network",
        "gateway/prefix of the node's jail addresses, or off (10.77.0.1/16)",
    ),
    (
        "published_ports",
        "the node's ports that jails' ports are published on (20000-29999)",
    ),
    (
        "firewall_table",
        "nftables table (inet) of the node's firewall (stockade)",
    ),
    (
        "cgroup_manager",
        "where the agent puts its jails' cgroups: cgroupfs (a group of its own) or systemd (the subtree delegated to its unit) (cgroupfs)",
    ),
    (
        "cgroup_parent",
        "cgroup holding the node's jails (stockade)",
    ),
];

pub(super) fn known_keys() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}
