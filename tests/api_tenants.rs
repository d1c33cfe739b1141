//! The tenant and plan resources of the JSON API: auth, scopes, tenant
//! binding, validation, paging, lifecycle, idempotency, errors, rate limit.

mod api_support;
mod common;

use api_support::{Api, expect_error, token};
use secrecy::SecretString;
use serde_json::{Value, json};
use stockade_domain::Email;
use stockade_store::tokens::{self, Scope};
use stockade_store::{password, users};

#[tokio::test]
async fn requests_without_a_valid_token_are_401_and_scopes_are_enforced() {
    let api = Api::spawn().await;
    let res = api
        .client
        .get(api.url("/api/v1/tenants"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    expect_error(res, 401, "unauthorized").await;
    let res = api
        .get("/api/v1/tenants", "stk_00000000_nope")
        .send()
        .await
        .unwrap();
    expect_error(res, 401, "unauthorized").await;
    let res = api.get("/api/v1/tenants", "garbage").send().await.unwrap();
    expect_error(res, 401, "unauthorized").await;

    let reader = token(&api.pool, &[Scope::TenantsRead], None).await;
    let res = api.get("/api/v1/tenants", &reader).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // A missing scope is refused before the body is looked at.
    let res = api
        .client
        .post(api.url("/api/v1/tenants"))
        .bearer_auth(&reader)
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(res, 403, "forbidden").await;
    let usage_only = token(&api.pool, &[Scope::UsageRead], None).await;
    let res = api.get("/api/v1/plans", &usage_only).send().await.unwrap();
    expect_error(res, 403, "forbidden").await;

    // Revoked tokens stop working; use is recorded.
    let list = tokens::list(&api.pool).await.unwrap();
    let used = list
        .iter()
        .find(|t| t.scopes == [Scope::TenantsRead])
        .unwrap();
    assert!(used.last_used_at.is_some());
    tokens::revoke(&api.pool, &used.prefix).await.unwrap();
    let res = api.get("/api/v1/tenants", &reader).send().await.unwrap();
    expect_error(res, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_token_bound_to_a_tenant_sees_only_that_tenant() {
    let api = Api::spawn().await;
    let a = api.tenant("tenant-a").await;
    let b = api.tenant("tenant-b").await;
    let bound = token(&api.pool, &Scope::ALL, Some(a)).await;
    let res = api
        .get(&format!("/api/v1/tenants/{a}"), &bound)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for path in [
        format!("/api/v1/tenants/{b}"),
        format!("/api/v1/tenants/{b}/jails"),
        format!("/api/v1/tenants/{b}/usage"),
    ] {
        let res = api.get(&path, &bound).send().await.unwrap();
        expect_error(res, 404, "not_found").await;
    }
    let res = api
        .post(&format!("/api/v1/tenants/{b}/suspend"), &bound, &json!({}))
        .send()
        .await
        .unwrap();
    expect_error(res, 404, "not_found").await;
    let list: Value = api
        .get("/api/v1/tenants", &bound)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let slugs: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["tenant-a"]);
    // Provider-wide actions need an unbound token.
    let res = api
        .post(
            "/api/v1/tenants",
            &bound,
            &json!({"slug": "c", "display_name": "C", "plan": "starter"}),
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 403, "forbidden").await;
    let month: Value = api
        .get(
            &format!("/api/v1/usage?month={}", chrono::Utc::now().format("%Y-%m")),
            &bound,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = month["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.to_string()]);
}

#[tokio::test]
async fn a_tenants_own_token_cannot_change_what_the_provider_bills() {
    let api = Api::spawn().await;
    let a = api.tenant("tenant-a").await;
    let bound = token(&api.pool, &Scope::ALL, Some(a)).await;
    let before: Value = api
        .get(&format!("/api/v1/tenants/{a}"), &bound)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Its plan, its quota overrides (the transfer allowance among them), its
    // suspension and its termination: each a 403, and nothing changes.
    for body in [
        json!({"plan": "business"}),
        json!({"quota_overrides": {"max_jails": 1000}}),
        json!({"quota_overrides": {"monthly_transfer_bytes": 0}}),
    ] {
        let res = api
            .patch(&format!("/api/v1/tenants/{a}"), &bound, &body)
            .send()
            .await
            .unwrap();
        expect_error(res, 403, "forbidden").await;
    }
    for (path, method) in [
        (format!("/api/v1/tenants/{a}/suspend"), "POST"),
        (format!("/api/v1/tenants/{a}/unsuspend"), "POST"),
        (format!("/api/v1/tenants/{a}"), "DELETE"),
    ] {
        let req = match method {
            "POST" => api.post(&path, &bound, &json!({})),
            _ => api.delete(&path, &bound),
        };
        let res = req.send().await.unwrap();
        expect_error(res, 403, "forbidden").await;
    }
    let after: Value = api
        .get(&format!("/api/v1/tenants/{a}"), &bound)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before, after);
    // The provider's token still can.
    let provider = token(&api.pool, &Scope::ALL, None).await;
    let res = api
        .patch(
            &format!("/api/v1/tenants/{a}"),
            &provider,
            &json!({"plan": "business"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = api
        .post(
            &format!("/api/v1/tenants/{a}/suspend"),
            &provider,
            &json!({}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn terminating_a_tenant_ends_its_access_and_suspension_stops_uploads() {
    let api = Api::spawn().await;
    let res = api
        .post(
            "/api/v1/tenants",
            &api.admin,
            &json!({"slug": "leaving", "display_name": "Leaving", "plan": "starter", "owner_email": "owner@leaving.example"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let id: uuid::Uuid = body["tenant"]["id"].as_str().unwrap().parse().unwrap();
    let email = Email::parse("owner@leaving.example").unwrap();
    let (owner, _) = users::find_for_sign_in(&api.pool, &email)
        .await
        .unwrap()
        .unwrap();
    let expiry = stockade_store::sessions::Expiry {
        idle: chrono::Duration::minutes(30),
        absolute: chrono::Duration::hours(1),
    };
    let session = stockade_store::sessions::create(&api.pool, owner.id, expiry, None)
        .await
        .unwrap();
    let bound = token(&api.pool, &Scope::ALL, Some(id)).await;
    let path = format!("/api/v1/tenants/{id}");
    assert_eq!(api.get(&path, &bound).send().await.unwrap().status(), 200);

    // Suspended: uploads are refused, with the reason.
    let res = api
        .post(&format!("{path}/suspend"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let refused =
        stockade_store::uploads::create(&api.pool, id, uuid::Uuid::new_v4(), "a.txt", b"x")
            .await
            .unwrap_err();
    assert!(
        refused.to_string().contains("the account is suspended"),
        "{refused}"
    );

    // Terminated: its token, its sessions and its sign-in all end.
    let res = api.delete(&path, &api.admin).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = api.get(&path, &bound).send().await.unwrap();
    expect_error(res, 401, "unauthorized").await;
    assert!(
        tokens::list(&api.pool)
            .await
            .unwrap()
            .iter()
            .filter(|t| t.tenant_id == Some(id))
            .all(|t| t.revoked_at.is_some())
    );
    assert!(
        stockade_store::sessions::touch(&api.pool, &session, expiry)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        users::find_for_sign_in(&api.pool, &email)
            .await
            .unwrap()
            .is_none()
    );
    // The provider's own token is untouched.
    assert_eq!(
        api.get(&path, &api.admin).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn creating_a_tenant_with_an_owner_gives_a_password_that_signs_in() {
    let api = Api::spawn().await;
    let res = api
        .post(
            "/api/v1/tenants",
            &api.admin,
            &json!({"slug": "acme", "display_name": "Acme Ltd", "plan": "business", "owner_email": "Owner@Acme.Example"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    let tenant = &body["tenant"];
    assert_eq!(tenant["slug"], "acme");
    assert_eq!(tenant["plan"], "business");
    assert_eq!(tenant["status"], "active");
    assert!(chrono::DateTime::parse_from_rfc3339(tenant["created_at"].as_str().unwrap()).is_ok());
    assert_eq!(
        location,
        format!("/api/v1/tenants/{}", tenant["id"].as_str().unwrap())
    );
    assert_eq!(body["owner"]["email"], "owner@acme.example");
    let pw = body["owner"]["password"].as_str().unwrap().to_owned();
    let (user, phc) =
        users::find_for_sign_in(&api.pool, &Email::parse("owner@acme.example").unwrap())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        user.tenant_id.unwrap().to_string(),
        tenant["id"].as_str().unwrap()
    );
    assert!(password::verify(&SecretString::from(pw), &phc));

    // The same owner email again fails whole: no tenant is left behind.
    let res = api
        .post(
            "/api/v1/tenants",
            &api.admin,
            &json!({"slug": "acme-2", "display_name": "Acme 2", "plan": "starter", "owner_email": "owner@acme.example"}),
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 409, "conflict").await;
    let res = api
        .get("/api/v1/tenants?search=acme-2", &api.admin)
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn bad_input_is_refused_with_the_error_shape_never_a_500() {
    let api = Api::spawn().await;
    api.tenant("taken").await;
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (
            json!({"slug": "taken", "display_name": "X", "plan": "starter"}),
            409,
            "conflict",
            None,
        ),
        // The fields of a request by position: refused, nothing created.
        (
            json!(["by-position", "By position", "starter", null]),
            422,
            "validation_failed",
            None,
        ),
        (
            json!({"slug": "../etc", "display_name": "X", "plan": "starter"}),
            422,
            "validation_failed",
            Some("slug"),
        ),
        (
            json!({"slug": "ok", "display_name": "", "plan": "starter"}),
            422,
            "validation_failed",
            Some("display_name"),
        ),
        (
            json!({"slug": "ok", "display_name": "X", "plan": "nope"}),
            422,
            "validation_failed",
            Some("plan"),
        ),
        (
            json!({"slug": "ok", "display_name": "X", "plan": "starter", "extra": 1}),
            422,
            "validation_failed",
            None,
        ),
        (
            json!({"slug": "ok", "display_name": "X"}),
            422,
            "validation_failed",
            None,
        ),
        (
            json!({"slug": 5, "display_name": "X", "plan": "starter"}),
            422,
            "validation_failed",
            None,
        ),
        (
            json!({"slug": "ok", "display_name": "X", "plan": "starter", "owner_email": "nope"}),
            422,
            "validation_failed",
            Some("email"),
        ),
    ];
    for (body, status, code, field) in cases {
        let res = api
            .post("/api/v1/tenants", &api.admin, &body)
            .send()
            .await
            .unwrap();
        let got = expect_error(res, status, code).await;
        if let Some(field) = field {
            assert_eq!(got["error"]["details"]["field"], field, "{got}");
        }
    }
    let res = api
        .client
        .post(api.url("/api/v1/tenants"))
        .bearer_auth(&api.admin)
        .header("content-type", "application/json")
        .body("{\"slug\": ")
        .send()
        .await
        .unwrap();
    expect_error(res, 400, "bad_request").await;
    let res = api
        .client
        .post(api.url("/api/v1/tenants"))
        .bearer_auth(&api.admin)
        .header("content-type", "application/json")
        .body(format!("{{\"slug\": \"{}\"}}", "x".repeat(70_000)))
        .send()
        .await
        .unwrap();
    expect_error(res, 413, "payload_too_large").await;
    let res = api
        .get("/api/v1/tenants/not-a-uuid", &api.admin)
        .send()
        .await
        .unwrap();
    expect_error(res, 404, "not_found").await;
    let res = api
        .get("/api/v1/nothing-here", &api.admin)
        .send()
        .await
        .unwrap();
    expect_error(res, 404, "not_found").await;
    let res = api
        .client
        .put(api.url("/api/v1/tenants"))
        .bearer_auth(&api.admin)
        .send()
        .await
        .unwrap();
    expect_error(res, 405, "method_not_allowed").await;
    let res = api
        .get("/api/v1/tenants?status=gone", &api.admin)
        .send()
        .await
        .unwrap();
    expect_error(res, 422, "validation_failed").await;
    let res = api
        .get("/api/v1/tenants?limit=-1", &api.admin)
        .send()
        .await
        .unwrap();
    expect_error(res, 422, "validation_failed").await;
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_405_with_allow() {
    let api = Api::spawn().await;
    for (path, allow) in [
        ("/api/v1/tenants", "GET, POST"),
        ("/api/v1/plans", "GET, POST"),
        ("/metrics", "GET"),
    ] {
        let res = api
            .client
            .put(api.url(path))
            .bearer_auth(&api.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{path}");
        assert_eq!(res.headers()["allow"], allow, "{path}");
        expect_error(res, 405, "method_not_allowed").await;
    }
}

#[tokio::test]
async fn tenants_page_by_cursor_and_filter_by_status() {
    let api = Api::spawn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(api.tenant(&format!("t{i}")).await);
    }
    api.post(
        &format!("/api/v1/tenants/{}/suspend", ids[1]),
        &api.admin,
        &json!({}),
    )
    .send()
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/tenants?limit=2&cursor={c}"),
            None => "/api/v1/tenants?limit=2".to_owned(),
        };
        let page: Value = api
            .get(&path, &api.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for t in page["data"].as_array().unwrap() {
            seen.push(t["slug"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["t0", "t1", "t2", "t3", "t4"]);
    let page: Value = api
        .get("/api/v1/tenants?status=suspended", &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["slug"], "t1");
}

#[tokio::test]
async fn plan_changes_overrides_and_the_lifecycle() {
    let api = Api::spawn().await;
    let id = api.tenant("life").await;
    let path = format!("/api/v1/tenants/{id}");
    let res = api
        .patch(&path, &api.admin, &json!({"plan": "business", "quota_overrides": {"max_jails": 7, "memory_bytes": 1073741824}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let t: Value = res.json().await.unwrap();
    assert_eq!(t["plan"], "business");
    assert_eq!(t["quota_overrides"]["max_jails"], 7);
    assert_eq!(t["quota_overrides"]["memory_bytes"], 1073741824u64);
    assert!(t["quota_overrides"]["cpu_millicores"].is_null());

    let res = api
        .post(&format!("{path}/unsuspend"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap();
    expect_error(res, 409, "invalid_state").await;
    let res = api
        .post(&format!("{path}/suspend"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "suspended");
    let res = api
        .post(&format!("{path}/suspend"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap();
    expect_error(res, 409, "invalid_state").await;
    let res = api
        .post(&format!("{path}/unsuspend"), &api.admin, &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "active");
    let res = api.delete(&path, &api.admin).send().await.unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "terminated");
    let res = api.delete(&path, &api.admin).send().await.unwrap();
    expect_error(res, 409, "invalid_state").await;
    let res = api
        .patch(&path, &api.admin, &json!({"plan": "starter"}))
        .send()
        .await
        .unwrap();
    expect_error(res, 409, "invalid_state").await;
    let actions = stockade_store::audit::count_action(&api.pool, "tenant.suspend")
        .await
        .unwrap();
    assert_eq!(actions, 1);
}

#[tokio::test]
async fn plans_are_listed_created_and_changed() {
    let api = Api::spawn().await;
    let quota = json!({"cpu_millicores": 2000, "memory_bytes": 2147483648u64, "pids": 512,
                       "disk_bytes": 10737418240u64, "max_jails": 5});
    let res = api
        .post(
            "/api/v1/plans",
            &api.admin,
            &json!({"name": "pro", "display_name": "Pro", "quota": quota}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let plan: Value = res.json().await.unwrap();
    assert_eq!(plan["quota"]["max_jails"], 5);
    assert_eq!(plan["quota"]["io_read_bps"], 0);
    let res = api
        .post(
            "/api/v1/plans",
            &api.admin,
            &json!({"name": "pro", "display_name": "Pro", "quota": quota}),
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 409, "conflict").await;
    // A rate every jail of the plan would get, but no node can apply.
    let mut slow = quota.clone();
    slow["net_egress_bps"] = json!(1202);
    let res = api
        .post(
            "/api/v1/plans",
            &api.admin,
            &json!({"name": "slow", "display_name": "Slow", "quota": slow}),
        )
        .send()
        .await
        .unwrap();
    let err = expect_error(res, 422, "validation_failed").await;
    assert_eq!(err["error"]["details"]["field"], "net_egress_bps", "{err}");
    let id = plan["id"].as_str().unwrap();
    let res = api
        .patch(
            &format!("/api/v1/plans/{id}"),
            &api.admin,
            &json!({"display_name": "Pro 2"}),
        )
        .send()
        .await
        .unwrap();
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["display_name"], "Pro 2");
    assert_eq!(changed["quota"]["max_jails"], 5);
    let list: Value = api
        .get("/api/v1/plans", &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["business", "pro", "starter"]);
    // A tenant can be put on it by id.
    let res = api
        .post(
            "/api/v1/tenants",
            &api.admin,
            &json!({"slug": "p", "display_name": "P", "plan": id}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["tenant"]["plan"], "pro");
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body() {
    let api = Api::spawn().await;
    let body = json!({"slug": "once", "display_name": "Once", "plan": "starter"});
    let first = api
        .post("/api/v1/tenants", &api.admin, &body)
        .header("Idempotency-Key", "key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = api
        .post("/api/v1/tenants", &api.admin, &body)
        .header("Idempotency-Key", "key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other = api
        .post(
            "/api/v1/tenants",
            &api.admin,
            &json!({"slug": "twice", "display_name": "T", "plan": "starter"}),
        )
        .header("Idempotency-Key", "key-1")
        .send()
        .await
        .unwrap();
    expect_error(other, 409, "idempotency_key_reused").await;
    // Keys are per token: another token's same key is a new request.
    let other_token = token(&api.pool, &[Scope::TenantsWrite], None).await;
    let res = api
        .post("/api/v1/tenants", &other_token, &body)
        .header("Idempotency-Key", "key-1")
        .send()
        .await
        .unwrap();
    expect_error(res, 409, "conflict").await;
    let list: Value = api
        .get("/api/v1/tenants", &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    // A generated password is shown once: neither the stored answer nor its
    // replay holds it, and the replay says what it left out.
    let body = json!({"slug": "owned", "display_name": "Owned", "plan": "starter", "owner_email": "o@owned.example"});
    let first: Value = api
        .post("/api/v1/tenants", &api.admin, &body)
        .header("Idempotency-Key", "key-2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let password = first["owner"]["password"].as_str().unwrap().to_owned();
    let again: Value = api
        .post("/api/v1/tenants", &api.admin, &body)
        .header("Idempotency-Key", "key-2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(again["owner"]["password"].is_null(), "{again}");
    assert_eq!(again["secrets_omitted"], json!(["owner.password"]));
    assert_eq!(again["tenant"], first["tenant"]);
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_keys WHERE convert_from(response_body, 'UTF8') LIKE '%' || $1 || '%'",
    )
    .bind(&password)
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_with_retry_after() {
    let api = Api::spawn_with(stockade_web::ApiSettings {
        rate_per_sec: 1,
        rate_burst: 3,
        ..api_support::fast_settings()
    })
    .await;
    for _ in 0..3 {
        let res = api.get("/api/v1/plans", &api.admin).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = api.get("/api/v1/plans", &api.admin).send().await.unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    expect_error(res, 429, "rate_limited").await;
}

#[tokio::test]
async fn the_spec_reference_page_and_metrics_are_served() {
    let api = Api::spawn().await;
    let spec: Value = api
        .client
        .get(api.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert!(spec["paths"]["/api/v1/tenants/{tenant_id}/usage"]["get"].is_object());
    let mut ids = std::collections::BTreeSet::new();
    for item in spec["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"]
                .as_str()
                .expect("every operation has an id");
            assert!(ids.insert(id.to_owned()), "operation id {id} is unique");
            assert!(op["responses"]["401"].is_object(), "{id} documents 401");
        }
    }
    let links = &spec["paths"]["/api/v1/tenants"]["post"]["responses"]["201"]["links"];
    assert_eq!(
        links["get_tenants_tenant_id"]["operationId"],
        "get_tenants_tenant_id"
    );
    assert_eq!(
        links["get_tenants_tenant_id"]["parameters"]["tenant_id"],
        "$response.body#/tenant/id"
    );
    let page = api.client.get(api.url("/api/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("POST /api/v1/tenants"));
    assert!(!html.contains("<script>"), "no inline script");
    api.get("/api/v1/plans", &api.admin).send().await.unwrap();
    let m = api.tenant("m").await;
    // A method no one knows counts as `other`, whatever its spelling.
    for odd in ["BREW", "SPIDER"] {
        api.client
            .request(
                reqwest::Method::from_bytes(odd.as_bytes()).unwrap(),
                api.url("/api/v1/plans"),
            )
            .send()
            .await
            .unwrap();
    }
    // The figures cover every tenant: no token, or a tenant's own, gets none.
    let res = api.client.get(api.url("/metrics")).send().await.unwrap();
    expect_error(res, 401, "unauthorized").await;
    let bound = token(&api.pool, &Scope::ALL, Some(m)).await;
    let res = api.get("/metrics", &bound).send().await.unwrap();
    expect_error(res, 403, "forbidden").await;
    let reader = token(&api.pool, &[Scope::MetricsRead], None).await;
    let res = api.get("/metrics", &reader).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let metrics = res.text().await.unwrap();
    assert!(
        !metrics.contains("BREW") && !metrics.contains("SPIDER"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stockade_http_requests_total{method=\"other\",route=\"/api/v1/plans\""),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "stockade_http_requests_total{method=\"GET\",route=\"/api/v1/plans\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "stockade_http_request_duration_seconds_bucket{route=\"/api/v1/plans\",le=\"+Inf\"}"
    ));
    assert!(metrics.contains("stockade_tenants{status=\"active\"} 1"));
}

fn cli(api: &Api, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stockade"))
        .args(args)
        .env("DATABASE_URL", &api.database_url)
        .env_remove("STOCKADE_CONFIG")
        .env("STOCKADE_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn tokens_are_created_listed_and_revoked_on_the_command_line() {
    let api = Api::spawn().await;
    let t = api.tenant("cli-tenant").await;
    let (ok, out) = cli(
        &api,
        &[
            "token",
            "create",
            "--name",
            "billing",
            "--scope",
            "tenants:read",
            "--scope",
            "usage:read",
            "--tenant",
            "cli-tenant",
        ],
    );
    assert!(ok, "{out}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("the token is printed once")
        .to_owned();
    let res = api
        .get(&format!("/api/v1/tenants/{t}"), &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = api.get("/api/v1/plans", &secret).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = api
        .post(&format!("/api/v1/tenants/{t}/suspend"), &secret, &json!({}))
        .send()
        .await
        .unwrap();
    expect_error(res, 403, "forbidden").await;

    let (ok, listing) = cli(&api, &["token", "ls"]);
    assert!(ok, "{listing}");
    assert!(!listing.contains(&secret), "secrets are never listed");
    let prefix = &secret[..12];
    let line = listing
        .lines()
        .find(|l| l.contains(prefix))
        .expect("listed by prefix");
    assert!(
        line.contains("active") && line.contains("usage:read"),
        "{line}"
    );

    let (ok, out) = cli(&api, &["token", "revoke", prefix]);
    assert!(ok, "{out}");
    let res = api.get("/api/v1/plans", &secret).send().await.unwrap();
    expect_error(res, 401, "unauthorized").await;
    let (_, listing) = cli(&api, &["token", "ls"]);
    assert!(
        listing
            .lines()
            .any(|l| l.contains(prefix) && l.contains("revoked")),
        "{listing}"
    );

    let (ok, out) = cli(
        &api,
        &["token", "create", "--name", "x", "--scope", "root:all"],
    );
    assert!(!ok && out.contains("scope"), "{out}");
    let (ok, out) = cli(&api, &["token", "revoke", "stk_nothing"]);
    assert!(!ok, "{out}");
}

/// Every operation of the API description, called with a token bound to
/// tenant A (every scope) on tenant B's ids: nothing of B is reached, and
/// what only the provider may do is refused outright.
#[tokio::test]
async fn a_tenant_bound_token_reaches_nothing_of_another_tenant_on_any_route() {
    let api = Api::spawn().await;
    api.node().await;
    let a = api.tenant("matrix-a").await;
    let b = api.tenant("matrix-b").await;
    let bound_a = token(&api.pool, &Scope::ALL, Some(a)).await;
    let bound_b = token(&api.pool, &Scope::ALL, Some(b)).await;
    let jail_body = json!({"name": "site", "image": "busybox",
        "limits": {"cpu_millicores": 100, "memory_bytes": 64u64 << 20, "pids": 16, "disk_bytes": 64u64 << 20}});
    let res = api
        .post(&format!("/api/v1/tenants/{b}/jails"), &bound_b, &jail_body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let jail_b = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hook_body =
        json!({"url": "http://127.0.0.1:9/hook", "event_types": ["jail.state_changed"]});
    let res = api
        .post("/api/v1/webhooks", &bound_b, &hook_body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let hook_b = res.json::<Value>().await.unwrap()["webhook"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let plan: Value = api
        .get("/api/v1/plans", &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let plan_id = plan["data"][0]["id"].as_str().unwrap().to_owned();
    let spec: Value = api
        .get("/api/v1/openapi.json", &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let mut seen = 0;
    for (template, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let path = template
                .replace("{tenant_id}", &b.to_string())
                .replace("{jail_id}", &jail_b)
                .replace("{webhook_id}", &hook_b)
                .replace("{plan_id}", &plan_id)
                .replace("{port_id}", &uuid::Uuid::new_v4().to_string())
                .replace("{domain_id}", &uuid::Uuid::new_v4().to_string())
                .replace("{key_id}", &uuid::Uuid::new_v4().to_string())
                .replace("{snapshot_id}", &uuid::Uuid::new_v4().to_string())
                .replace("{backup_id}", &uuid::Uuid::new_v4().to_string())
                .replace("{name}", "busybox");
            assert!(
                !path.contains('{'),
                "a path parameter not covered: {template}"
            );
            let body = match (method.as_str(), template.as_str()) {
                ("post", "/api/v1/tenants") => {
                    json!({"slug": "matrix-c", "display_name": "C", "plan": "starter"})
                }
                ("post", "/api/v1/plans") => json!({"name": "matrix", "display_name": "M",
                    "quota": {"max_jails": 1, "cpu_millicores": 100, "memory_bytes": 64u64 << 20,
                              "pids": 16, "disk_bytes": 64u64 << 20}}),
                ("post", "/api/v1/webhooks") => hook_body.clone(),
                ("post", t) if t.ends_with("/jails") => jail_body.clone(),
                ("post", t) if t.ends_with("/ports") => json!({"jail_port": 80}),
                ("post", t) if t.ends_with("/domains") => json!({"name": "matrix.test"}),
                ("post", t) if t.ends_with("/move") => json!({"node": "n1"}),
                ("post", "/api/v1/images") => json!({"name": "matrix"}),
                ("patch", "/api/v1/images/{name}") => json!({"offered": false}),
                ("post", t) if t.ends_with("/ssh-keys") => json!({"public_key":
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPvJFKfKUMrcCg/hBw3I6n+A48uSWfhqbdrZWVdqblnH"}),
                ("put", t) if t.ends_with("/certificate") => {
                    json!({"chain_pem": "-", "key_pem": "-"})
                }
                ("patch", t) if t.ends_with("{jail_id}") => {
                    json!({"limits": {"memory_bytes": 32u64 << 20}})
                }
                ("patch", "/api/v1/tenants/{tenant_id}") => json!({"plan": "business"}),
                ("patch", _) => json!({"display_name": "taken"}),
                _ => json!({}),
            };
            let req = match method.as_str() {
                "get" => api.get(&path, &bound_a),
                "post" => api.post(&path, &bound_a, &body),
                "patch" => api.patch(&path, &bound_a, &body),
                "put" => api.put(&path, &bound_a, &body),
                "delete" => api.delete(&path, &bound_a),
                other => panic!("a method the test does not know: {other}"),
            };
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            let what = format!("{} {template}: {status} {text}", method.to_uppercase());
            let names_b = template.contains('{') && !template.starts_with("/api/v1/plans");
            let provider_only = matches!(
                (method.as_str(), template.as_str()),
                ("post", "/api/v1/tenants")
                    | ("post", "/api/v1/plans")
                    | ("patch", "/api/v1/plans/{plan_id}")
                    | ("post", "/api/v1/images")
            );
            if names_b {
                assert!(status == 404 || status == 403, "B was reached: {what}");
            } else if provider_only {
                assert_eq!(status, 403, "{what}");
            } else {
                assert!(status < 500, "{what}");
                assert!(
                    !text.contains(&b.to_string())
                        && !text.contains("matrix-b")
                        && !text.contains(&hook_b),
                    "B shows through: {what}"
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 19, "only {seen} operations in the description");
    // Nothing of B changed: its jail and endpoint are still there, as made.
    let res = api
        .get(&format!("/api/v1/tenants/{b}/jails/{jail_b}"), &bound_b)
        .send()
        .await
        .unwrap();
    let jail: Value = res.json().await.unwrap();
    assert_eq!(jail["desired_state"], "running", "{jail}");
    assert_eq!(jail["limits"]["memory_bytes"], 64u64 << 20);
    let res = api
        .get(&format!("/api/v1/webhooks/{hook_b}"), &bound_b)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let tenant: Value = api
        .get(&format!("/api/v1/tenants/{b}"), &api.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tenant["status"], "active", "{tenant}");
    assert_eq!(tenant["plan"], "starter", "{tenant}");
}
