//! The configuration's layers, checks and hand-over to the web server.

use super::*;
use secrecy::ExposeSecret;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn environment_overrides_file_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stockade.toml");
    std::fs::write(
        &file,
        "listen = \"0.0.0.0:9000\"\nheartbeat_secs = 7\nlog = \"debug\"\n",
    )
    .unwrap();
    let cfg = Config::load_from(Some(&file), &env(&[("STOCKADE_LOG", "warn")])).unwrap();
    assert_eq!(cfg.listen.port(), 9000);
    assert_eq!(cfg.heartbeat, Duration::from_secs(7));
    assert_eq!(cfg.log, "warn");
    assert_eq!(cfg.public_url, "http://127.0.0.1:9000");
    assert_eq!(cfg.run_as, "stockade");
}

#[test]
fn every_setting_but_the_secrets_is_handed_on_and_read_back_the_same() {
    let env: Vec<(String, String)> = [
        ("STOCKADE_PAGE_CACHE_SECS", "0"),
        ("STOCKADE_TRUSTED_PROXIES", "10.0.0.0/8,192.0.2.7/32"),
        ("STOCKADE_SIGNUP_PLAN", "starter"),
        ("STOCKADE_JAIL_NETWORK", "off"),
        ("STOCKADE_AGENT_METRICS", "127.0.0.1:9999"),
        ("STOCKADE_RUN_AS", "web-user"),
        ("STOCKADE_ADMIN_PASSWORD", "a long admin secret"),
        ("DATABASE_URL", "postgres://owner:pw@db/stockade"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let cfg = Config::load_from(None, &env).unwrap();
    let handed = cfg.plain_settings();
    // Every key is either handed on or a secret: a new setting cannot
    // be forgotten on the way to the web server.
    for (key, _) in KEYS {
        let var = format!("STOCKADE_{}", key.to_ascii_uppercase());
        assert!(
            handed.iter().any(|(k, _)| *k == var) != Config::SECRET_KEYS.contains(key),
            "{key} is neither handed on nor a secret"
        );
    }
    assert!(!format!("{handed:?}").contains("secret") && !format!("{handed:?}").contains("pw@"));
    let again = Config::load_from(None, &handed).unwrap();
    assert!(again.admin_password.is_none() && again.database_url.is_none());
    let show = |c: &Config| {
        KEYS.iter()
            .map(|(k, _)| format!("{k}={:?}", c.plain_value(k)))
            .collect::<Vec<_>>()
    };
    assert_eq!(show(&again), show(&cfg));
    assert_eq!(again.page_cache, Duration::ZERO);
    assert_eq!(again.trusted_proxies.len(), 2);
}

#[test]
fn the_readme_lists_every_setting() {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
    for (key, _) in KEYS {
        assert!(
            readme.contains(&format!("| `{key}` |")),
            "the README's configuration table lacks {key}"
        );
        // And each is settable from the environment.
        let var = format!("STOCKADE_{}", key.to_ascii_uppercase());
        let err = Config::load_from(None, &env(&[(var.as_str(), "\u{1}")]));
        if let Err(e) = err {
            assert!(
                !format!("{e:#}").contains("unknown setting"),
                "{var}: {e:#}"
            );
        }
    }
}

#[test]
fn the_staff_password_setting_is_known_and_checked() {
    let cfg = Config::load_from(
        None,
        &env(&[("STOCKADE_STAFF_PASSWORD", "correct horse battery")]),
    )
    .unwrap();
    assert_eq!(
        cfg.staff_password.unwrap().expose_secret(),
        "correct horse battery"
    );
    let err = Config::load_from(None, &env(&[("STOCKADE_STAFF_PASSWORD", "short")])).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("staff_password: "), "{err}");
}

#[test]
fn unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stockade.toml");
    std::fs::write(&file, "lisen = \"0.0.0.0:9000\"\n").unwrap();
    let err = format!("{:#}", Config::load_from(Some(&file), &[]).unwrap_err());
    assert!(err.contains("unknown setting \"lisen\""), "{err}");
    let err = format!(
        "{:#}",
        Config::load_from(None, &env(&[("STOCKADE_LSTEN", "x")])).unwrap_err()
    );
    assert!(
        err.contains("\"lsten\"") && err.contains("STOCKADE_LSTEN"),
        "{err}"
    );
}

#[test]
fn bad_values_say_what_and_where() {
    let err = format!(
        "{:#}",
        Config::load_from(None, &env(&[("STOCKADE_LISTEN", "nope")])).unwrap_err()
    );
    assert!(
        err.contains("listen") && err.contains("address:port"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        Config::load_from(None, &env(&[("STOCKADE_HEARTBEAT_SECS", "0")])).unwrap_err()
    );
    assert!(err.contains("at least 1"), "{err}");
    let err = format!(
        "{:#}",
        Config::load_from(None, &env(&[("DATABASE_URL", "mysql://x")])).unwrap_err()
    );
    assert!(
        err.contains("postgres://") && !err.contains("mysql"),
        "{err}"
    );
}

#[test]
fn a_wrong_type_or_a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stockade.toml");
    std::fs::write(&file, "webhook_allow = [\"10.0.0.0/8\"]\n").unwrap();
    let err = format!("{:#}", Config::load_from(Some(&file), &[]).unwrap_err());
    assert!(
        err.contains("webhook_allow") && err.contains(&file.display().to_string()),
        "{err}"
    );
    // A value the environment sets again is the one checked, and the
    // error names the variable, not the file.
    std::fs::write(&file, "console_kib = 64\n").unwrap();
    let err = format!(
        "{:#}",
        Config::load_from(Some(&file), &env(&[("STOCKADE_CONSOLE_KIB", "8")])).unwrap_err()
    );
    assert!(
        err.contains("at least 16") && err.contains("STOCKADE_CONSOLE_KIB"),
        "{err}"
    );
    let missing = dir.path().join("absent.toml");
    let err = format!("{:#}", Config::load_from(Some(&missing), &[]).unwrap_err());
    assert!(err.contains("cannot read the configuration file"), "{err}");
}

#[test]
fn secrets_never_print() {
    let cfg = Config::load_from(
        None,
        &env(&[
            ("DATABASE_URL", "postgres://u:hunter2hunter2@h/db"),
            ("STOCKADE_ADMIN_PASSWORD", "hunter2hunter2"),
        ]),
    )
    .unwrap();
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(
        cfg.admin_password.unwrap().expose_secret(),
        "hunter2hunter2"
    );
}
