//! Jails made and driven through the API on a node with an agent: they run
//! in a user namespace of their own unless their tenant's plan says
//! otherwise, and a restart gives them a new init. Needs root; without it
//! the test says so loudly and returns.

mod api_support;
mod common;

use std::time::{Duration, Instant};

use api_support::Api;
use common::agent::{Node, is_root, wait_node, wait_observed};
use secrecy::SecretString;
use serde_json::{Value, json};
use stockade_domain::ObservedState;
use stockade_jail::{Engine, JailName, JailStatus};
use stockade_store::audit;
use uuid::Uuid;

/// The host uid the jail's command (its init's child) runs as, once it runs.
fn command_uid(engine: &Engine, name: &JailName) -> Option<u32> {
    let Ok(Some(JailStatus::Running { pid })) = engine.status(name) else {
        return None;
    };
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let command = children.split_whitespace().next()?;
    let status = std::fs::read_to_string(format!("/proc/{command}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

async fn wait_for_uid(engine: &Engine, name: &JailName, want: impl Fn(u32) -> bool) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(uid) = command_uid(engine, name).filter(|u| want(*u)) {
            return uid;
        }
        assert!(
            Instant::now() < deadline,
            "the jail's command never ran as wanted (last: {:?})",
            command_uid(engine, name)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn api_jails_run_unprivileged_unless_their_plan_turns_it_off() {
    if !is_root() {
        return;
    }
    let api = Api::spawn().await;
    let node = Node::new(&SecretString::from(api.database_url.clone()));
    wait_node(&api.pool, &node.name).await;
    let engine = node.engine();
    let tenant = api.tenant("uns").await;
    let res = api
        .post(
            &format!("/api/v1/tenants/{tenant}/jails"),
            &api.admin,
            &json!({"name": "web", "image": "busybox", "command": ["sleep", "3600"],
                    "limits": {"cpu_millicores": 250, "memory_bytes": 64 << 20, "pids": 64,
                               "disk_bytes": 32 << 20}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let jail: Value = res.json().await.unwrap();
    let id: Uuid = jail["id"].as_str().unwrap().parse().unwrap();
    let j = wait_observed(&api.pool, tenant, id, ObservedState::Running).await;
    let name = j.host_name();

    // The starter plan keeps the default: root in the jail is the first
    // id of a range of the node that only this jail holds.
    let ranges = engine.uid_ranges().unwrap();
    let base = ranges
        .iter()
        .find_map(|(b, n)| (n == name.as_str()).then_some(*b))
        .expect("the jail holds a uid range");
    assert!(base >= engine.config().uid_base);
    assert_eq!(wait_for_uid(&engine, &name, |_| true).await, base);

    // Staff turn it off for the plan: the running jail is restarted with
    // host ids, its range is freed, and the change is in the audit log.
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
        .unwrap();
    assert_eq!(starter["user_namespace"], true);
    let turn_off = || {
        api.patch(
            &format!("/api/v1/plans/{}", starter["id"].as_str().unwrap()),
            &api.admin,
            &json!({"user_namespace": false}),
        )
        .send()
    };
    let res = turn_off().await.unwrap();
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["user_namespace"], false);
    assert_eq!(
        audit::count_action(&api.pool, "plan.user_namespace_off")
            .await
            .unwrap(),
        1
    );
    wait_for_uid(&engine, &name, |uid| uid == 0).await;
    wait_observed(&api.pool, tenant, id, ObservedState::Running).await;
    assert!(
        engine
            .uid_ranges()
            .unwrap()
            .iter()
            .all(|(_, n)| n != name.as_str()),
        "the range is released"
    );

    // Sent again, nothing changes and nothing more is logged.
    let res = turn_off().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        audit::count_action(&api.pool, "plan.user_namespace_off")
            .await
            .unwrap(),
        1
    );

    let res = api
        .delete(&format!("/api/v1/tenants/{tenant}/jails/{id}"), &api.admin)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    wait_observed(&api.pool, tenant, id, ObservedState::Deleted).await;
    assert!(engine.discover().unwrap().jails.is_empty());
    assert!(engine.uid_ranges().unwrap().is_empty());
}

/// The host pid of the jail's init while it runs.
fn init_pid(engine: &Engine, name: &JailName) -> Option<i32> {
    match engine.status(name) {
        Ok(Some(JailStatus::Running { pid })) => Some(pid),
        _ => None,
    }
}

#[tokio::test]
async fn a_restart_through_the_api_gives_a_running_jail_a_new_init() {
    if !is_root() {
        return;
    }
    let api = Api::spawn().await;
    let node = Node::new(&SecretString::from(api.database_url.clone()));
    wait_node(&api.pool, &node.name).await;
    let engine = node.engine();
    let tenant = api.tenant("rst").await;
    let res = api
        .post(
            &format!("/api/v1/tenants/{tenant}/jails"),
            &api.admin,
            &json!({"name": "web", "image": "busybox", "command": ["sleep", "3600"],
                    "limits": {"cpu_millicores": 250, "memory_bytes": 64 << 20, "pids": 64,
                               "disk_bytes": 32 << 20}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let id: Uuid = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let name = wait_observed(&api.pool, tenant, id, ObservedState::Running)
        .await
        .host_name();
    let before = init_pid(&engine, &name).expect("the jail runs");

    let path = format!("/api/v1/tenants/{tenant}/jails/{id}");
    let res = api
        .post(&format!("{path}/restart"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let asked: Value = res.json().await.unwrap();
    let generation = asked["generation"].as_i64().unwrap();
    // The node observes the new generation with a new init.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let now: Value = api
            .get(&path, &api.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if now["observed_generation"].as_i64() >= Some(generation)
            && now["observed_state"] == "running"
            && let Some(pid) = init_pid(&engine, &name)
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the restart was never observed: {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(after, before, "a restart starts a new init");
    let old = std::fs::read_to_string(format!("/proc/{before}/stat")).ok();
    assert!(
        old.as_deref().is_none_or(|s| s.contains(") Z ")),
        "the old init is gone: {old:?}"
    );

    // The panel's restart, by the tenant's own customer, does the same.
    let password = "correct horse battery";
    let hash = stockade_store::password::hash(&SecretString::from(password.to_owned())).unwrap();
    stockade_store::users::create(
        &api.pool,
        &stockade_domain::Email::parse("owner@rst.test").unwrap(),
        &hash,
        stockade_domain::Role::Customer,
        Some(tenant),
    )
    .await
    .unwrap();
    let browser = common::new_client();
    let url = |p: &str| format!("{}{p}", api.address);
    let form = |page: String| common::hidden_field(&page, "csrf_token").expect("a CSRF token");
    let login = browser.get(url("/login")).send().await.unwrap();
    let token = form(login.text().await.unwrap());
    let signed = browser
        .post(url("/login"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("email", "owner@rst.test"),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    assert!(signed.status().is_redirection(), "signed in");
    let page = browser.get(url("/jails")).send().await.unwrap();
    let token = form(page.text().await.unwrap());
    let restarted = browser
        .post(url(&format!("/jails/{id}/restart")))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert!(
        restarted.status().is_redirection(),
        "{}",
        restarted.status()
    );
    let j = stockade_store::jails::get(&api.pool, tenant, id)
        .await
        .unwrap();
    assert!(
        j.restart_generation > generation,
        "a new restart generation"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = stockade_store::jails::get(&api.pool, tenant, id)
            .await
            .unwrap();
        if j.observed_generation >= j.restart_generation
            && j.observed_state == ObservedState::Running
            && let Some(pid) = init_pid(&engine, &name)
            && pid != after
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the panel's restart was never observed: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
