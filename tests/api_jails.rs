//! The jail resource of the JSON API: quota-checked creation, limits,
//! desired and observed state, scopes and tenant binding.

mod api_support;
mod common;

use api_support::{Api, expect_error, token};
use serde_json::{Value, json};
use stockade_store::tokens::Scope;

const MIB: u64 = 1 << 20;

fn jail(name: &str, memory_mib: u64) -> Value {
    json!({"name": name, "image": "busybox",
           "limits": {"cpu_millicores": 250, "memory_bytes": memory_mib * MIB, "pids": 64, "disk_bytes": 256 * MIB}})
}

#[tokio::test]
async fn jails_are_created_within_quota_and_driven_through_their_states() {
    let api = Api::spawn().await;
    api.node().await;
    let t = api.tenant("jt").await;
    let base = format!("/api/v1/tenants/{t}/jails");
    let res = api
        .post(&base, &api.admin, &jail("web-1", 256))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let j: Value = res.json().await.unwrap();
    assert_eq!(j["name"], "web-1");
    assert_eq!(j["kind"], "system");
    assert_eq!(j["desired_state"], "running");
    assert_eq!(j["observed_state"], "pending");
    assert_eq!(j["generation"], 1);
    // The starter plan's per-jail ceilings fill unset rates.
    assert_eq!(j["limits"]["io_read_bps"], 52428800);
    let id = j["id"].as_str().unwrap().to_owned();
    let path = format!("{base}/{id}");

    // Starter allows 1 GiB of memory in all: 1 GiB more does not fit.
    let res = api
        .post(&base, &api.admin, &jail("web-2", 1024))
        .send()
        .await
        .unwrap();
    let err = expect_error(res, 422, "quota_exceeded").await;
    assert!(
        err["error"]["message"].as_str().unwrap().contains("memory"),
        "{err}"
    );
    let res = api
        .post(&base, &api.admin, &jail("web-1", 64))
        .send()
        .await
        .unwrap();
    expect_error(res, 409, "conflict").await;
    let res = api
        .post(&base, &api.admin, &json!({"name": "x", "image": "../etc", "limits": {"cpu_millicores": 1, "memory_bytes": 1, "pids": 1, "disk_bytes": 1}}))
        .send()
        .await
        .unwrap();
    expect_error(res, 422, "validation_failed").await;
    let res = api
        .post(&base, &api.admin, &json!({"name": "x", "image": "busybox", "limits": {"cpu_millicores": 0, "memory_bytes": 1, "pids": 1, "disk_bytes": 1}}))
        .send()
        .await
        .unwrap();
    expect_error(res, 422, "validation_failed").await;

    let res = api
        .patch(
            &path,
            &api.admin,
            &json!({"limits": {"memory_bytes": 512 * MIB}}),
        )
        .send()
        .await
        .unwrap();
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["limits"]["memory_bytes"], 512 * MIB);
    assert_eq!(changed["limits"]["cpu_millicores"], 250);
    assert_eq!(changed["generation"], 2);
    // A volume only grows.
    let res = api
        .patch(
            &path,
            &api.admin,
            &json!({"limits": {"disk_bytes": 128 * MIB}}),
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 422, "quota_exceeded").await;
    // Values no node can apply are refused here, by name, not on the node.
    for (limits, field) in [
        (json!({"disk_bytes": 1}), "disk_bytes"),
        (json!({"pids": 1}), "pids"),
        (json!({"net_egress_bps": 1202}), "net_egress_bps"),
    ] {
        let res = api
            .patch(&path, &api.admin, &json!({ "limits": limits }))
            .send()
            .await
            .unwrap();
        let err = expect_error(res, 422, "validation_failed").await;
        assert_eq!(err["error"]["details"]["field"], field, "{err}");
    }

    let stop: Value = api
        .post(&format!("{path}/stop"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stop["desired_state"], "stopped");
    let start: Value = api
        .post(&format!("{path}/start"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(start["desired_state"], "running");
    let restart: Value = api
        .post(&format!("{path}/restart"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(restart["desired_state"], "running");
    assert!(restart["generation"].as_i64() > start["generation"].as_i64());

    let list: Value = api
        .get(&base, &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let got: Value = api
        .get(&path, &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], id.as_str());

    // Suspending the tenant: starting is refused until it is unsuspended.
    api.post(
        &format!("/api/v1/tenants/{t}/suspend"),
        &api.admin,
        &json!({}),
    )
    .send()
    .await
    .unwrap();
    let got: Value = api
        .get(&path, &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["desired_state"], "stopped");
    let res = api
        .post(&format!("{path}/start"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap();
    expect_error(res, 409, "invalid_state").await;
    api.post(
        &format!("/api/v1/tenants/{t}/unsuspend"),
        &api.admin,
        &json!({}),
    )
    .send()
    .await
    .unwrap();

    let deleted: Value = api
        .delete(&path, &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deleted["desired_state"], "deleted");
    let res = api
        .post(&format!("{path}/start"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap();
    expect_error(res, 404, "not_found").await;
}

#[tokio::test]
async fn a_jails_command_and_environment_change_with_secrets_never_shown() {
    let api = Api::spawn().await;
    api.node().await;
    let t = api.tenant("je").await;
    let base = format!("/api/v1/tenants/{t}/jails");
    let j: Value = api
        .post(&base, &api.admin, &jail("app", 128))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = format!("{base}/{}", j["id"].as_str().unwrap());
    let res = api
        .patch(
            &path,
            &api.admin,
            &json!({"command": ["sh", "-c", "echo \"$MODE\"; sleep 60"],
                    "env": [{"name": "MODE", "value": "prod"},
                            {"name": "TOKEN", "value": "s3cret", "secret": true}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await.unwrap();
    assert_eq!(
        changed["command"],
        json!(["sh", "-c", "echo \"$MODE\"; sleep 60"])
    );
    assert_eq!(
        changed["env"],
        json!([{"name": "MODE", "value": "prod", "secret": false},
               {"name": "TOKEN", "value": null, "secret": true}])
    );
    assert_eq!(changed["generation"], 2, "one change, one generation");
    assert_eq!(
        changed["limits"]["memory_bytes"],
        128 * MIB,
        "limits untouched"
    );
    let shown = api
        .get(&path, &api.admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !shown.contains("s3cret"),
        "a secret's value is never shown: {shown}"
    );

    // A secret given without a value keeps the stored one; a new one needs one.
    let res = api
        .patch(
            &path,
            &api.admin,
            &json!({"env": [{"name": "TOKEN", "secret": true}, {"name": "OTHER", "secret": true}]}),
        )
        .send()
        .await
        .unwrap();
    let err = expect_error(res, 422, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "env", "{err}");
    assert!(err.to_string().contains("OTHER"), "{err}");
    let res = api
        .patch(
            &path,
            &api.admin,
            &json!({"env": [{"name": "TOKEN", "secret": true}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let stored = stockade_store::jails::list_for_tenant(&api.pool, t)
        .await
        .unwrap();
    assert_eq!(stored[0].env.len(), 1);
    assert_eq!(stored[0].env[0].value, "s3cret", "kept");

    // Bad names and NUL bytes are refused by field, and change nothing.
    for (body, field) in [
        (json!({"env": [{"name": "1BAD", "value": "x"}]}), "env"),
        (
            json!({"env": [{"name": "A", "value": "x"}, {"name": "A", "value": "y"}]}),
            "env",
        ),
        (json!({"command": ["a\u{0}b"]}), "command"),
    ] {
        let res = api.patch(&path, &api.admin, &body).send().await.unwrap();
        let err = expect_error(res, 422, "validation_failed").await;
        assert_eq!(err["error"]["details"]["field"], field, "{err}");
    }
    let after: Value = api
        .get(&path, &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        after["env"],
        json!([{"name": "TOKEN", "value": null, "secret": true}])
    );
}

#[tokio::test]
async fn jail_scopes_and_tenant_binding_are_enforced() {
    let api = Api::spawn().await;
    api.node().await;
    let a = api.tenant("ja").await;
    let b = api.tenant("jb").await;
    let res = api
        .post(
            &format!("/api/v1/tenants/{b}/jails"),
            &api.admin,
            &jail("secret", 64),
        )
        .send()
        .await
        .unwrap();
    let b_jail: Value = res.json().await.unwrap();
    let b_path = format!(
        "/api/v1/tenants/{b}/jails/{}",
        b_jail["id"].as_str().unwrap()
    );

    let reader = token(&api.pool, &[Scope::JailsRead], Some(a)).await;
    let res = api
        .post(
            &format!("/api/v1/tenants/{a}/jails"),
            &reader,
            &jail("w", 64),
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 403, "forbidden").await;
    let res = api
        .get(&format!("/api/v1/tenants/{a}/jails"), &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for res in [
        api.get(&b_path, &reader).send().await.unwrap(),
        api.get(&format!("/api/v1/tenants/{b}/jails"), &reader)
            .send()
            .await
            .unwrap(),
    ] {
        expect_error(res, 404, "not_found").await;
    }
    let writer = token(&api.pool, &[Scope::JailsWrite], Some(a)).await;
    let res = api
        .post(&format!("{b_path}/stop"), &writer, &json!({}))
        .send()
        .await
        .unwrap();
    expect_error(res, 404, "not_found").await;
    // A jail id of tenant B under tenant A's path is not found either.
    let wrong = format!(
        "/api/v1/tenants/{a}/jails/{}",
        b_jail["id"].as_str().unwrap()
    );
    let res = api.get(&wrong, &api.admin).send().await.unwrap();
    expect_error(res, 404, "not_found").await;
    let res = api
        .post(
            &format!("/api/v1/tenants/{a}/jails"),
            &writer,
            &jail("mine", 64),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = api
        .get(
            &format!("/api/v1/tenants/{}/jails", uuid::Uuid::new_v4()),
            &api.admin,
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 404, "not_found").await;
}

#[tokio::test]
async fn an_image_no_node_offers_is_refused_naming_those_offered() {
    let api = Api::spawn().await;
    let node = api.node().await;
    stockade_store::nodes::heartbeat(
        &api.pool,
        node,
        Some(&["busybox".to_owned(), "debian".to_owned()]),
    )
    .await
    .unwrap();
    let t = api.tenant("imgs").await;
    let base = format!("/api/v1/tenants/{t}/jails");
    let mut asked = jail("web-1", 64);
    asked["image"] = json!("alpine");
    let res = api.post(&base, &api.admin, &asked).send().await.unwrap();
    let err = expect_error(res, 422, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "image", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"alpine\"") && message.contains("busybox, debian"),
        "{message}"
    );
    // Nothing was made.
    let list: Value = api
        .get(&base, &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");

    asked["image"] = json!("debian");
    let res = api.post(&base, &api.admin, &asked).send().await.unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
}

#[tokio::test]
async fn whole_numbers_written_as_fractions_are_taken_and_real_fractions_refused() {
    let api = Api::spawn().await;
    api.node().await;
    let t = api.tenant("fractions").await;
    let base = format!("/api/v1/tenants/{t}/jails");
    let body = json!({"name": "web-1", "image": "busybox",
        "limits": {"cpu_millicores": 250.0, "memory_bytes": 67108864.0, "pids": 64, "disk_bytes": 268_435_456.0}});
    let res = api.post(&base, &api.admin, &body).send().await.unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let j: Value = res.json().await.unwrap();
    assert_eq!(j["limits"]["memory_bytes"], 67108864);
    let body = json!({"name": "web-2", "image": "busybox",
        "limits": {"cpu_millicores": 250.5, "memory_bytes": 67108864, "pids": 64, "disk_bytes": 256 * MIB}});
    let res = api.post(&base, &api.admin, &body).send().await.unwrap();
    expect_error(res, 422, "validation_failed").await;
}

#[tokio::test]
async fn published_ports_come_from_the_node_pool_within_the_allowance_and_go_with_their_jail() {
    let api = Api::spawn().await;
    api.node().await;
    let t = api.tenant("pt").await;
    let base = format!("/api/v1/tenants/{t}/jails");
    let res = api
        .post(&base, &api.admin, &jail("web", 64))
        .send()
        .await
        .unwrap();
    let j: Value = res.json().await.unwrap();
    let id = j["id"].as_str().unwrap().to_owned();
    assert_eq!(j["outbound_nat"], true, "the plans reach the world: {j}");
    let ports = format!("{base}/{id}/ports");
    let publish = |body: Value| api.post(&ports, &api.admin, &body).send();

    // The lowest free port of the node's pool; TCP unless said.
    let res = publish(json!({"jail_port": 80})).await.unwrap();
    assert_eq!(res.status(), 201);
    let web: Value = res.json().await.unwrap();
    assert_eq!(
        (&web["protocol"], &web["host_port"], &web["jail_port"]),
        (&json!("tcp"), &json!(20000), &json!(80))
    );
    // The same number over UDP is another port.
    let res = publish(json!({"jail_port": 53, "protocol": "udp"}))
        .await
        .unwrap();
    let dns: Value = res.json().await.unwrap();
    assert_eq!(
        (&dns["protocol"], &dns["host_port"]),
        (&json!("udp"), &json!(20000))
    );

    // Bad input names its field; nothing is published by it.
    for (body, field) in [
        (json!({"jail_port": 80}), "jail_port"),
        (json!({"jail_port": 81, "host_port": 20000}), "host_port"),
        (json!({"jail_port": 81, "host_port": 8080}), "host_port"),
        (json!({"jail_port": 0}), "jail_port"),
        (json!({"jail_port": 70000}), "jail_port"),
        (json!({"jail_port": 81, "protocol": "sctp"}), "protocol"),
    ] {
        let err = expect_error(
            publish(body.clone()).await.unwrap(),
            422,
            "validation_failed",
        )
        .await;
        assert!(
            err["error"]["message"].as_str().unwrap().starts_with(field),
            "{body}: {err}"
        );
    }
    // A node port asked for inside the pool is taken as asked.
    let res = publish(json!({"jail_port": 443, "host_port": 20443}))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // The tenant's override lowers the allowance: the fourth is refused.
    let res = api
        .patch(
            &format!("/api/v1/tenants/{t}"),
            &api.admin,
            &json!({"quota_overrides": {"max_published_ports": 3}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let err = expect_error(
        publish(json!({"jail_port": 8080})).await.unwrap(),
        422,
        "quota_exceeded",
    )
    .await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("published ports"),
        "{err}"
    );
    let list: Value = api
        .get(&ports, &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((&list["limit"], &list["used"]), (&json!(3), &json!(3)));
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    let shown: Value = api
        .get(&format!("{base}/{id}"), &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown["published_ports"],
        json!(["20000:80/tcp", "20443:443/tcp", "20000:53/udp"])
    );
    assert!(shown["generation"].as_i64().unwrap() > j["generation"].as_i64().unwrap());

    // Another tenant's token sees none of it.
    let other = api.tenant("pt-other").await;
    let theirs = token(
        &api.pool,
        &[Scope::JailsRead, Scope::JailsWrite],
        Some(other),
    )
    .await;
    let res = api.get(&ports, &theirs).send().await.unwrap();
    assert!(matches!(res.status().as_u16(), 403 | 404));
    let res = api
        .delete(&format!("{ports}/{}", web["id"].as_str().unwrap()), &theirs)
        .send()
        .await
        .unwrap();
    assert!(matches!(res.status().as_u16(), 403 | 404));

    // Taking one back frees its node port.
    let res = api
        .delete(
            &format!("{ports}/{}", web["id"].as_str().unwrap()),
            &api.admin,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let res = api
        .delete(
            &format!("{ports}/{}", web["id"].as_str().unwrap()),
            &api.admin,
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 404, "not_found").await;

    // Outbound access off for the plan: the jail says so, with a new generation.
    let plan: Value = api
        .get("/api/v1/plans", &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let starter = plan["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "starter")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = shown["generation"].as_i64().unwrap();
    let res = api
        .patch(
            &format!("/api/v1/plans/{starter}"),
            &api.admin,
            &json!({"outbound_nat": false}),
        )
        .send()
        .await
        .unwrap();
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["outbound_nat"], false);
    let shown: Value = api
        .get(&format!("{base}/{id}"), &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["outbound_nat"], false);
    assert!(shown["generation"].as_i64().unwrap() > before);

    // Deleting the jail releases its ports: another jail gets 20000 again.
    let res = api
        .delete(&format!("{base}/{id}"), &api.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = api
        .post(&base, &api.admin, &jail("web-2", 64))
        .send()
        .await
        .unwrap();
    let second: Value = res.json().await.unwrap();
    let res = api
        .post(
            &format!("{base}/{}/ports", second["id"].as_str().unwrap()),
            &api.admin,
            &json!({"jail_port": 80}),
        )
        .send()
        .await
        .unwrap();
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["host_port"], 20000, "{again}");
}

#[tokio::test]
async fn a_domain_routes_once_its_txt_record_proves_it_or_staff_waive_the_proof() {
    use std::process::{Command, Stdio};
    if !std::path::Path::new("/usr/bin/pebble-challtestsrv").exists() {
        eprintln!("SKIPPED: needs pebble-challtestsrv (scripts/test installs pebble)");
        return;
    }
    // A DNS server of this test's own, whose records the test sets.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (dns, management) = (free(), free());
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _dns = Reap(
        Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{management}")])
            .args([
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = Api::spawn_proving(
        api_support::fast_settings(),
        Some(([127, 0, 0, 1], dns).into()),
    )
    .await;
    let node = api.node().await;
    let t = api.tenant("proof").await;
    let base = format!("/api/v1/tenants/{t}/jails");
    let j: Value = api
        .post(&base, &api.admin, &jail("web", 64))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let domains = format!("{base}/{}/domains", j["id"].as_str().unwrap());
    let d: Value = api
        .post(&domains, &api.admin, &json!({"name": "site.test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["proven"], false, "{d}");
    assert_eq!(d["proof_record"]["name"], "_stockade.site.test");
    let value = d["proof_record"]["value"].as_str().unwrap().to_owned();
    assert!(value.starts_with("stockade-proof="));
    let routes = || stockade_store::domains::routes_for_node(&api.pool, node);
    assert!(
        routes().await.unwrap().is_empty(),
        "no route before the proof"
    );
    let verify = format!("{domains}/{}/verify", d["id"].as_str().unwrap());
    let err = expect_error(
        api.post(&verify, &api.admin, &json!({}))
            .send()
            .await
            .unwrap(),
        409,
        "not_proven",
    )
    .await;
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no TXT record _stockade.site.test"),
        "{err}"
    );
    // A record holding something else proves nothing.
    let set_txt = |value: String| {
        let client = reqwest::Client::new();
        async move {
            let r = client
                .post(format!("http://127.0.0.1:{management}/set-txt"))
                .json(&json!({"host": "_stockade.site.test.", "value": value}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    };
    set_txt("stockade-proof=someone-else".into()).await;
    let res = api
        .post(&verify, &api.admin, &json!({}))
        .send()
        .await
        .unwrap();
    expect_error(res, 409, "not_proven").await;
    set_txt(value).await;
    let proven: Value = api
        .post(&verify, &api.admin, &json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(proven["proven"], true, "{proven}");
    assert_eq!(proven["proof_record"], Value::Null);
    let r = routes().await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].names, ["site.test"]);

    // Staff may waive a proof; the audit log says who.
    let other: Value = api
        .post(&domains, &api.admin, &json!({"name": "other.test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(routes().await.unwrap().len(), 1);
    stockade_store::domains::mark_verified(
        &api.pool,
        t,
        other["id"].as_str().unwrap().parse().unwrap(),
        Some("admin@provider.test"),
    )
    .await
    .unwrap();
    assert_eq!(routes().await.unwrap().len(), 2);
}
