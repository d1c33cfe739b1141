//! The audit log, filtered and paged.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use stockade_store::audit;

use super::PAGE;
use crate::auth::SignedIn;
use crate::format;
use crate::pages::{Layout, render, require_staff};
use crate::{AppState, WebError};

pub(super) struct AuditLine {
    at: String,
    at_iso: String,
    actor: String,
    tenant: String,
    action: String,
    target: String,
    addr: String,
    /// What changed, `field: old → new`, or the other details kept.
    changes: String,
}

/// An entry's details in words: each field whose value differs between
/// `before` and `after` as `field: old → new`; other details as they are.
pub(crate) fn changes(details: &serde_json::Value) -> String {
    let show = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => "none".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    match (details.get("before"), details.get("after")) {
        (Some(before), Some(after)) => {
            let mut keys: Vec<&String> = before
                .as_object()
                .into_iter()
                .chain(after.as_object())
                .flat_map(|o| o.keys())
                .collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| before.get(*k) != after.get(*k))
                .map(|k| format!("{k}: {} → {}", show(before.get(k)), show(after.get(k))))
                .collect::<Vec<_>>()
                .join("; ")
        }
        _ if details.as_object().is_some_and(serde_json::Map::is_empty) => String::new(),
        _ => details.to_string(),
    }
}

#[derive(Template)]
#[template(path = "staff_audit.html")]
pub(super) struct AuditPage {
    layout: Layout,
    entries: Vec<AuditLine>,
    f_tenant: String,
    f_actor: String,
    f_action: String,
    f_since: String,
    next: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    tenant: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    since: Option<String>,
    before: Option<i64>,
}

pub(super) async fn audit_page(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    q: web::Query<AuditQuery>,
) -> Result<HttpResponse, WebError> {
    require_staff(&s)?;
    let since = q
        .since
        .as_deref()
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc());
    let filter = audit::Filter {
        tenant: q.tenant.clone(),
        actor: q.actor.clone(),
        action: q.action.clone(),
        since,
        until: None,
    };
    let entries = audit::list(&state.pool, &filter, q.before, PAGE).await?;
    let enc = |s: &Option<String>| format::url_encode(s.as_deref().unwrap_or_default());
    let next = (entries.len() == usize::try_from(PAGE).unwrap_or(50)).then(|| {
        format!(
            "/staff/audit?tenant={}&actor={}&action={}&since={}&before={}",
            enc(&q.tenant),
            enc(&q.actor),
            enc(&q.action),
            enc(&q.since),
            entries.last().map_or(0, |e| e.id)
        )
    });
    let layout = Layout::new(&req, &s.0);
    let had_flash = layout.flash.is_some();
    let page = AuditPage {
        layout,
        entries: entries
            .into_iter()
            .map(|e| AuditLine {
                at: e.at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                at_iso: e.at.to_rfc3339(),
                actor: e.actor,
                tenant: e.tenant.unwrap_or_default(),
                action: e.action,
                target: e.target,
                addr: e.client_addr.unwrap_or_default(),
                changes: changes(&e.details),
            })
            .collect(),
        f_tenant: q.tenant.clone().unwrap_or_default(),
        f_actor: q.actor.clone().unwrap_or_default(),
        f_action: q.action.clone().unwrap_or_default(),
        f_since: q.since.clone().unwrap_or_default(),
        next,
    };
    render(StatusCode::OK, &page, had_flash)
}

#[cfg(test)]
mod tests {
    use super::changes;

    #[test]
    fn only_what_changed_is_listed_old_then_new() {
        let d = serde_json::json!({
            "before": { "status": "active", "reason": null, "plan": "starter" },
            "after": { "status": "suspended", "reason": "unpaid", "plan": "starter" },
        });
        assert_eq!(
            changes(&d),
            "reason: none → unpaid; status: active → suspended"
        );
        assert_eq!(changes(&serde_json::json!({})), "");
        assert_eq!(
            changes(&serde_json::json!({"jail": "web"})),
            r#"{"jail":"web"}"#
        );
    }
}
