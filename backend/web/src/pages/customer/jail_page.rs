//! One jail's page: its state, limits, usage charts and limit hits.

use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use chrono::{Duration, Utc};
use serde::Deserialize;
use std::sync::Arc;
use stockade_store::jails::{self, Jail};
use stockade_store::usage::{self, Bucket};
use uuid::Uuid;

use super::uploads::UPLOAD_LIMIT;
use super::{Layout, cached_page, customer_tenant};
use super::{parse_id, shown_state};
use crate::auth::SignedIn;
use crate::charts::{Series, figure};
use crate::format;
use crate::{AppState, WebError};

#[derive(Deserialize)]
pub(super) struct PeriodQuery {
    pub(super) period: Option<String>,
}

/// What a jail's page shows for one period (cached, see [`crate::cache`]).
pub(crate) struct JailData {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) desired: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) image: String,
    pub(crate) address: String,
    pub(crate) created: String,
    pub(crate) created_iso: String,
    pub(crate) last_error: Option<String>,
    /// A jail shrunk by a lowered quota: what it had, in words, and whether
    /// the quota has room to grow it back now.
    pub(crate) shrunk: Option<(String, bool)>,
    /// Whether root in the jail is an unprivileged host uid (its plan says).
    pub(crate) user_ids: &'static str,
    /// Limits, limit hits and charts, rendered once.
    pub(crate) usage: String,
    pub(crate) upload_limit: String,
    /// What a tenant may have waiting to be written, in words.
    pub(crate) pending_limit: String,
    pub(crate) uploads: Vec<(String, String, String)>,
    /// Published ports: id, the node's port and the jail's, with protocols.
    pub(crate) ports: Vec<(Uuid, String, String)>,
    /// How many more ports the tenant may publish, in words.
    pub(crate) ports_left: String,
    /// Whether the jail reaches the world, in words.
    pub(crate) outbound: &'static str,
    /// Domains, by name.
    pub(crate) domains: Vec<DomainLine>,
    /// What they carried today, in words.
    pub(crate) traffic: String,
    /// How to log in with SSH, when the jail's node has a gateway.
    pub(crate) ssh: Option<SshAccess>,
}

/// The jail's SSH login, as the jail page shows it.
pub(crate) struct SshAccess {
    /// `ssh -p PORT JAIL+TENANT@HOST`.
    pub(super) ssh: String,
    /// `sftp -P PORT JAIL+TENANT@HOST`.
    pub(super) sftp: String,
    /// The node's host key and its fingerprint.
    pub(super) host_key: String,
    pub(super) fingerprint: String,
}

impl SshAccess {
    fn new(gateway: stockade_store::ssh_keys::Gateway, jail: &str, tenant: &str) -> Self {
        let login = stockade_store::ssh_keys::login_name(jail, tenant);
        let (host, port) = gateway
            .endpoint
            .rsplit_once(':')
            .unwrap_or((gateway.endpoint.as_str(), "22"));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        SshAccess {
            ssh: format!("ssh -p {port} {login}@{host}"),
            sftp: format!("sftp -P {port} {login}@{host}"),
            host_key: gateway.host_key,
            fingerprint: gateway.host_fingerprint,
        }
    }
}

/// A domain as the jail page shows it.
pub(crate) struct DomainLine {
    pub(super) id: Uuid,
    /// The name, and its alias if routed.
    pub(super) names: String,
    pub(super) jail_port: u16,
    /// Its certificate in words.
    pub(super) tls: String,
    /// The certificate expires within 14 days, or could not be issued.
    pub(super) warn: bool,
    /// While not proven: the TXT record's name and value.
    pub(super) proof: Option<(String, String)>,
}

/// A jail's limits, limit hits and usage charts for one period.
#[derive(Template)]
#[template(path = "jail_usage.html")]
pub(super) struct JailUsage {
    pub(super) id: Uuid,
    pub(super) cpu: String,
    pub(super) memory: String,
    pub(super) pids: u32,
    pub(super) disk: String,
    pub(super) egress: String,
    pub(super) ingress: String,
    pub(super) hits: Vec<String>,
    pub(super) period: &'static str,
    pub(super) charts: Vec<String>,
}

#[derive(Template)]
#[template(path = "jail.html")]
pub(super) struct JailPage {
    pub(super) layout: Layout,
    pub(super) data: Arc<JailData>,
}

impl std::ops::Deref for JailPage {
    type Target = JailData;
    fn deref(&self) -> &JailData {
        &self.data
    }
}

/// Limit hits in plain words.
pub(super) fn explain_hits(
    j: &Jail,
    (oom, mem, pids, throttled): (i64, i64, i64, i64),
) -> Vec<String> {
    let times = |n: i64| {
        if n == 1 {
            "once".to_owned()
        } else {
            format!("{n} times")
        }
    };
    let mut out = Vec::new();
    if oom > 0 {
        out.push(format!(
            "A process was stopped by the memory limit of {} {} today.",
            format::bytes(j.limits.memory_bytes),
            times(oom)
        ));
    }
    if mem > oom {
        out.push(format!(
            "Memory use reached the limit of {} {} today.",
            format::bytes(j.limits.memory_bytes),
            times(mem)
        ));
    }
    if pids > 0 {
        out.push(format!(
            "Starting a process failed at the limit of {} processes {} today.",
            j.limits.pids,
            times(pids)
        ));
    }
    if throttled > 0 {
        out.push(format!(
            "The CPU limit of {} slowed the jail down in {throttled} periods of 0.1 s today.",
            format::cpu(u64::from(j.limits.cpu_millicores))
        ));
    }
    out
}

/// What tells one jail page from another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct JailPageKey {
    pub(crate) tenant: Uuid,
    jail: Uuid,
    period: &'static str,
}

pub(super) async fn detail(
    req: HttpRequest,
    state: web::Data<AppState>,
    s: SignedIn,
    path: web::Path<String>,
    q: web::Query<PeriodQuery>,
) -> Result<HttpResponse, WebError> {
    let tenant_id = customer_tenant(&s)?;
    let jail_id = parse_id(&path)?;
    let period = match q.period.as_deref() {
        Some("day") => "day",
        Some("month") => "month",
        _ => "hour",
    };
    let key = JailPageKey {
        tenant: tenant_id,
        jail: jail_id,
        period,
    };
    let mut page = cached_page(
        &req,
        &s,
        &state.caches.jail_pages,
        key,
        || jail_data(&state.pool, tenant_id, jail_id, period),
        |layout, data| JailPage { layout, data },
    )
    .await?;
    page.headers_mut().insert(
        actix_web::http::header::CONTENT_SECURITY_POLICY,
        actix_web::http::header::HeaderValue::from_static(crate::CONSOLE_CSP),
    );
    Ok(page)
}

pub(crate) async fn jail_data(
    pool: &stockade_store::PgPool,
    tenant_id: Uuid,
    jail_id: Uuid,
    period: &'static str,
) -> Result<JailData, WebError> {
    let jail = jails::get(pool, tenant_id, jail_id).await?;
    let now = Utc::now();
    let (from, bucket) = match period {
        "day" => (now - Duration::days(1), Bucket::Hour),
        "month" => (now - Duration::days(30), Bucket::Day),
        _ => (now - Duration::hours(1), Bucket::Sample),
    };
    let points = usage::jail_series(pool, tenant_id, jail.id, from, now, bucket).await?;
    let to_u = |v: i64| u64::try_from(v).unwrap_or(0);
    let series = [
        Series {
            title: "CPU",
            measures: "CPU in use, in cores (1000m = one core)",
            unit: format::cpu,
            points: points
                .iter()
                .map(|p| (p.at, to_u(p.cpu_millicores)))
                .collect(),
            limit: Some(u64::from(jail.limits.cpu_millicores)),
        },
        Series {
            title: "Memory",
            measures: "memory in use, page cache included",
            unit: format::bytes,
            points: points
                .iter()
                .map(|p| (p.at, to_u(p.memory_bytes)))
                .collect(),
            limit: Some(jail.limits.memory_bytes),
        },
        Series {
            title: "Network",
            measures: "bytes received and sent in each interval",
            unit: format::bytes,
            points: points.iter().map(|p| (p.at, to_u(p.net_bytes))).collect(),
            limit: None,
        },
        Series {
            title: "Disk",
            measures: "bytes used on its volume",
            unit: format::bytes,
            points: points.iter().map(|p| (p.at, to_u(p.disk_bytes))).collect(),
            limit: Some(jail.limits.disk_bytes),
        },
        Series {
            title: "Disk IO",
            measures: "bytes read and written in each interval",
            unit: format::bytes,
            points: points.iter().map(|p| (p.at, to_u(p.io_bytes))).collect(),
            limit: None,
        },
    ];
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(now, |d| d.and_utc());
    let hits = usage::jail_limit_hits(pool, tenant_id, jail.id, midnight).await?;
    let allowance = stockade_store::ports::allowance(pool, tenant_id).await?;
    let ports = stockade_store::ports::for_jail(pool, tenant_id, jail.id)
        .await?
        .into_iter()
        .map(|p| {
            (
                p.id,
                format!("{}/{}", p.host_port, p.protocol),
                format!("{}/{}", p.jail_port, p.protocol),
            )
        })
        .collect();
    let mut certs = stockade_store::certificates::for_tenant(pool, tenant_id).await?;
    let domains = stockade_store::domains::for_jail(pool, tenant_id, jail.id)
        .await?
        .into_iter()
        .map(|d| {
            let cert = certs
                .iter()
                .position(|c| c.domain_id == d.id)
                .map(|i| certs.swap_remove(i));
            let (tls, warn) = match (&cert, &d.acme_error) {
                (Some(c), _) => (
                    format!(
                        "{} certificate for {}, issued by {}, valid until {}{}",
                        if c.source == "acme" {
                            "Automatic"
                        } else {
                            "Uploaded"
                        },
                        c.info.names.join(", "),
                        c.info.issuer,
                        c.info.not_after.format("%Y-%m-%d"),
                        if c.expires_soon(now) {
                            " — expires within 14 days"
                        } else {
                            ""
                        }
                    ),
                    c.expires_soon(now),
                ),
                (None, Some(e)) => (format!("No certificate yet: {e}"), true),
                (None, None) => ("Certificate being issued".to_owned(), false),
            };
            DomainLine {
                proof: d.proof_record(),
                id: d.id,
                names: stockade_store::domains::names_of(&d).join(", "),
                jail_port: d.jail_port,
                tls,
                warn,
            }
        })
        .collect();
    let usage = JailUsage {
        id: jail.id,
        cpu: format::cpu(u64::from(jail.limits.cpu_millicores)),
        memory: format::bytes(jail.limits.memory_bytes),
        pids: jail.limits.pids,
        disk: format::bytes(jail.limits.disk_bytes),
        egress: format::bits_per_sec(jail.limits.net_egress_bps),
        ingress: format::bits_per_sec(jail.limits.net_ingress_bps),
        hits: explain_hits(&jail, hits),
        period,
        charts: series.iter().map(|s| figure(s, from, now)).collect(),
    };
    Ok(JailData {
        id: jail.id,
        name: jail.name.to_string(),
        state: shown_state(&jail),
        desired: jail.desired_state.as_str(),
        kind: jail.kind.as_str(),
        image: jail.image.clone(),
        address: jail.address.clone().unwrap_or_else(|| "none yet".into()),
        created: jail.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        created_iso: jail.created_at.to_rfc3339(),
        last_error: Some(super::status_note(&jail)).filter(|n| !n.is_empty()),
        shrunk: match jail.shrunk_from {
            None => None,
            Some(before) => {
                let (q, a) = jails::quota_and_allocation(pool, tenant_id).await?;
                let room = |quota: u64, used: u64, now: u64, want: u64| {
                    quota.saturating_sub(used) + now >= want
                };
                let fits = room(
                    u64::from(q.cpu_millicores),
                    a.cpu_millicores,
                    u64::from(jail.limits.cpu_millicores),
                    u64::from(before.cpu_millicores),
                ) && room(
                    q.memory_bytes,
                    a.memory_bytes,
                    jail.limits.memory_bytes,
                    before.memory_bytes,
                ) && room(
                    u64::from(q.pids),
                    a.pids,
                    u64::from(jail.limits.pids),
                    u64::from(before.pids),
                );
                Some((
                    format!(
                        "Your provider lowered your quota and this jail was shrunk: it had {}, {} memory and {} processes, and has {}, {} and {} now.",
                        format::cpu(u64::from(before.cpu_millicores)),
                        format::bytes(before.memory_bytes),
                        before.pids,
                        format::cpu(u64::from(jail.limits.cpu_millicores)),
                        format::bytes(jail.limits.memory_bytes),
                        jail.limits.pids
                    ),
                    fits,
                ))
            }
        },
        user_ids: if jail.user_namespace {
            "on"
        } else {
            "off (host root ids; set by your provider's plan)"
        },
        usage: crate::pages::fragment(&usage)?,
        upload_limit: format::bytes(UPLOAD_LIMIT as u64),
        pending_limit: format!(
            "{} files or {}",
            stockade_store::uploads::MAX_PENDING_UPLOADS,
            format::bytes(stockade_store::uploads::MAX_PENDING_BYTES.unsigned_abs())
        ),
        uploads: stockade_store::uploads::list(pool, tenant_id, jail.id)
            .await?
            .into_iter()
            .map(|u| {
                let state = match u.error {
                    Some(e) => format!("failed: {e}"),
                    None => u.state,
                };
                (
                    u.file_name,
                    format::bytes(u64::try_from(u.size_bytes).unwrap_or(0)),
                    state,
                )
            })
            .collect(),
        ports,
        domains,
        traffic: {
            let t = stockade_store::domains::traffic_today(pool, tenant_id, jail.id).await?;
            format!(
                "{} requests today, {} in, {} out",
                t.requests,
                format::bytes(t.bytes_in),
                format::bytes(t.bytes_out)
            )
        },
        ports_left: format!(
            "{} of {} left for all your jails",
            allowance.limit.saturating_sub(allowance.used),
            allowance.limit
        ),
        ssh: match stockade_store::ssh_keys::gateway_of(pool, tenant_id, jail.id).await? {
            Some(g) => {
                let tenant = stockade_store::tenants::get(pool, tenant_id).await?;
                Some(SshAccess::new(g, jail.name.as_str(), tenant.slug.as_str()))
            }
            None => None,
        },
        outbound: if jail.outbound_nat {
            "on: it reaches the world through its node"
        } else {
            "off: it reaches only what is published to it (set by your provider's plan)"
        },
    })
}
