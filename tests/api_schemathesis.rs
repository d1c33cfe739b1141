//! Property-based testing of the served OpenAPI description with
//! Schemathesis: no server errors, and every answer conforms to the spec
//! (status codes, content types, headers and bodies).
//!
//! `scripts/test` installs Schemathesis with pip when it is missing. Without
//! it this test says loudly that it was skipped, except under CI, where a
//! missing Schemathesis fails.

mod api_support;
mod common;

use std::process::Stdio;
use std::time::Duration;

use api_support::Api;
use serde_json::json;

fn schemathesis() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("schemathesis"))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_spec_holds_under_schemathesis() {
    let Some(bin) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is not installed (scripts/test installs it with pip)"
        );
        eprintln!(
            "SKIPPED: schemathesis is not installed; run scripts/test or `pip install schemathesis`"
        );
        return;
    };
    // Generated webhook URLs must never be called: this app sends no webhooks.
    let mut settings = api_support::fast_settings();
    settings.delivery.enabled = false;
    let api = Api::spawn_with(settings).await;
    api.node().await;
    // Something to find: a tenant with a jail, a webhook endpoint.
    let tenant = api.tenant("seeded").await;
    api.post(
        &format!("/api/v1/tenants/{tenant}/jails"),
        &api.admin,
        &json!({"name": "web", "image": "busybox",
                "limits": {"cpu_millicores": 100, "memory_bytes": 67108864, "pids": 32, "disk_bytes": 67108864}}),
    )
    .send()
    .await
    .unwrap();
    // Another run (other checks, another seed) without editing the test.
    let checks = std::env::var("API_FUZZ_CHECKS").unwrap_or_else(|_| {
        "not_a_server_error,status_code_conformance,content_type_conformance,\
         response_headers_conformance,response_schema_conformance"
            .into()
    });
    let seed = std::env::var("API_FUZZ_SEED").unwrap_or_else(|_| "42".into());
    let work = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(bin)
        .current_dir(work.path())
        .args([
            "run",
            &api.url("/api/v1/openapi.json"),
            "--url",
            &api.address,
            "--header",
            &format!("Authorization: Bearer {}", api.admin),
            "--checks",
            &checks,
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "40",
            "--workers",
            "2",
            "--seed",
            &seed,
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            "--no-color",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run schemathesis");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = tokio::spawn(async move {
        let mut s = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut s)
            .await
            .ok();
        s
    });
    let err = tokio::spawn(async move {
        let mut s = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut s)
            .await
            .ok();
        s
    });
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .expect("schemathesis finishes within 5 minutes")
        .unwrap();
    let (out, err) = (out.await.unwrap(), err.await.unwrap());
    println!("{out}\n{err}");
    assert!(
        status.success(),
        "schemathesis found problems:\n{out}\n{err}"
    );
}
