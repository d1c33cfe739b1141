//! `/api/v1/tenants/{tenant_id}/jails`: a tenant's jails, their limits and state.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stockade_domain::{DesiredState, EnvVar, JailKind, JailName, Limits};
use stockade_store::jails::{self, Jail, NewJail};
use stockade_store::tenants;
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Authorized, JailsRead, JailsWrite};
use super::error::ApiError;
use super::resource;
use super::tenants::record;
use super::types::{LimitsBody, check_u32, check_u64};
use crate::AppState;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        resource("/tenants/{tenant_id}/jails")
            .route(web::get().to(list))
            .route(web::post().to(create)),
    )
    .service(
        resource("/tenants/{tenant_id}/jails/{jail_id}")
            .route(web::get().to(get))
            .route(web::patch().to(update))
            .route(web::delete().to(delete)),
    )
    .service(resource("/tenants/{tenant_id}/jails/{jail_id}/start").route(web::post().to(start)))
    .service(resource("/tenants/{tenant_id}/jails/{jail_id}/stop").route(web::post().to(stop)))
    .service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/restart").route(web::post().to(restart)),
    )
    .service(resource("/tenants/{tenant_id}/jails/{jail_id}/logs").route(web::get().to(logs)))
    .service(
        resource("/tenants/{tenant_id}/jails/{jail_id}/grow-back").route(web::post().to(grow_back)),
    );
}

/// A jail, with what users want and what its node last saw.
#[derive(Debug, Serialize, ToSchema)]
pub struct JailOut {
    /// Stable id.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// The node it is placed on.
    pub node_id: Option<Uuid>,
    /// Name within the tenant; also its hostname.
    pub name: String,
    /// Root filesystem image.
    pub image: String,
    /// `app` or `system`.
    pub kind: String,
    /// Command (empty = the image's default).
    pub command: Vec<String>,
    /// Resource limits.
    pub limits: LimitsBody,
    /// What users want: `running`, `stopped` or `deleted`.
    pub desired_state: String,
    /// What the node last saw: `pending`, `starting`, `running`,
    /// `crash_looping` (its command keeps ending soon after each start and
    /// is restarted after a growing pause), `stopped`, `failed` (see
    /// `last_error`) or `deleted`.
    pub observed_state: String,
    /// Restarts by its node after its command ended on its own.
    pub restart_count: u32,
    /// How its command last ended on its own, if it ever did.
    pub last_exit: Option<ExitOut>,
    /// When its current run began; absent while nothing runs.
    pub started_at: Option<DateTime<Utc>>,
    /// A crash-looping jail is not started again before this.
    pub retry_at: Option<DateTime<Utc>>,
    /// Environment variables of its command (secrets without their value).
    pub env: Vec<EnvVarOut>,
    /// What its node probes to tell it is healthy, if anything.
    #[schema(value_type = Option<Object>)]
    pub health_check: Option<stockade_domain::HealthCheck>,
    /// `unknown` (no check, or no answer yet), `healthy` or `unhealthy`.
    pub health: String,
    /// The last failure of its health check, in words.
    pub health_detail: Option<String>,
    /// The CPU, memory and process limits it had before a lowered quota
    /// shrank it (see `grow-back`); absent when it was not shrunk.
    #[schema(value_type = Option<Object>)]
    pub shrunk_from: Option<jails::ShrunkFrom>,
    /// Bumped on every change of desired state or limits.
    pub generation: i64,
    /// The generation the node last converged to.
    pub observed_generation: i64,
    /// Address in the node's network.
    pub address: Option<String>,
    /// The node's last error on this jail.
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Ports of its node forwarded to it, as `NODE:JAIL/PROTOCOL`.
    pub published_ports: Vec<String>,
    /// Whether it reaches the world through its node (its plan or tenant
    /// override says).
    pub outbound_nat: bool,
}

/// How a jail's command ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExitOut {
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// When the node saw it end.
    pub at: DateTime<Utc>,
    /// In words, e.g. `exited with code 3`, `killed by signal 9 (SIGKILL)`.
    pub description: String,
}

impl From<Jail> for JailOut {
    fn from(j: Jail) -> Self {
        JailOut {
            id: j.id,
            tenant_id: j.tenant_id,
            node_id: j.node_id,
            name: j.name.to_string(),
            image: j.image,
            kind: j.kind.as_str().to_owned(),
            command: j.command,
            limits: j.limits.into(),
            desired_state: j.desired_state.as_str().to_owned(),
            observed_state: j.observed_state.as_str().to_owned(),
            restart_count: j.run.restart_count,
            last_exit: j.run.last_exit.map(|e| ExitOut {
                code: e.code,
                signal: e.signal,
                at: e.at,
                description: e.describe(),
            }),
            started_at: j.run.started_at,
            retry_at: j.run.retry_at,
            health_check: j.health_check,
            health: j.health.as_str().to_owned(),
            health_detail: j.health_detail,
            shrunk_from: j.shrunk_from,
            env: j
                .env
                .into_iter()
                .map(|v| EnvVarOut {
                    value: (!v.secret).then_some(v.value),
                    name: v.name,
                    secret: v.secret,
                })
                .collect(),
            generation: j.generation,
            observed_generation: j.observed_generation,
            address: j.address,
            last_error: j.last_error,
            created_at: j.created_at,
            published_ports: j
                .published
                .iter()
                .map(|p| format!("{}:{}/{}", p.host_port, p.jail_port, p.protocol))
                .collect(),
            outbound_nat: j.outbound_nat,
        }
    }
}

/// A tenant's jails.
#[derive(Debug, Serialize, ToSchema)]
pub struct JailList {
    /// The jails that are not deleted, by name.
    pub data: Vec<JailOut>,
}

/// A new jail.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJail {
    /// Name within the tenant: a-z, 0-9 and inner '-'.
    #[schema(example = "web-1", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// Root filesystem image.
    #[schema(example = "busybox", pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    pub image: String,
    /// `app` (one command) or `system` (long-running; the default).
    #[serde(default)]
    #[schema(pattern = "^(app|system)$")]
    pub kind: Option<String>,
    /// Command to run (empty = the image's default): at most 64 arguments
    /// of at most 4096 characters, without NUL.
    #[serde(default)]
    #[schema(schema_with = command_schema)]
    pub command: Vec<String>,
    /// Resource limits, within the tenant's quota.
    pub limits: LimitsBody,
}

/// At most 64 arguments of at most 4096 characters, none with a NUL.
fn command_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_ARGUMENT_CHARS))
                .pattern(Some("^[^\\u0000]*$")),
        )
        .max_items(Some(MAX_ARGUMENTS))
        .build()
}

const MAX_ARGUMENTS: usize = 64;
const MAX_ARGUMENT_CHARS: usize = 4096;

fn image(raw: &str) -> Result<String, ApiError> {
    Ok(stockade_domain::image_name(raw)?)
}

impl TryFrom<CreateJail> for NewJail {
    type Error = ApiError;
    fn try_from(b: CreateJail) -> Result<Self, ApiError> {
        if b.command.len() > MAX_ARGUMENTS
            || b.command
                .iter()
                .any(|a| a.chars().count() > MAX_ARGUMENT_CHARS || a.contains('\0'))
        {
            return Err(ApiError::field(
                "command",
                "at most 64 arguments of at most 4096 characters, without NUL",
            ));
        }
        Ok(NewJail {
            name: JailName::parse(&b.name)?,
            image: image(&b.image)?,
            kind: b.kind.as_deref().unwrap_or("system").parse::<JailKind>()?,
            command: b.command,
            limits: b.limits.try_into()?,
        })
    }
}

async fn visible_tenant(
    state: &AppState,
    caller: &super::auth::Caller,
    tenant_id: Uuid,
) -> Result<(), ApiError> {
    caller.see_tenant(tenant_id)?;
    tenants::get(&state.pool, tenant_id).await?;
    Ok(())
}

/// Lists a tenant's jails.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/jails", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id")),
    responses((status = 200, description = "The tenant's jails", body = JailList)),
    security(("bearer" = ["jails:read"])))]
pub(crate) async fn list(
    Authorized(caller, _): Authorized<JailsRead>,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let tenant_id = path.into_inner();
    visible_tenant(&state, &caller, tenant_id).await?;
    let data = jails::list_for_tenant(&state.pool, tenant_id)
        .await?
        .into_iter()
        .map(JailOut::from)
        .collect();
    Ok(HttpResponse::Ok().json(JailList { data }))
}

/// Creates a jail within the tenant's quota and places it on a node.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/jails", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for a retry: 1 to 255 visible ASCII characters", pattern = "^[!-~]{1,255}$")),
    request_body = CreateJail,
    responses((status = 201, description = "Created", body = JailOut)),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn create(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<Uuid>,
    body: web::Json<CreateJail>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let new = NewJail::try_from(body.into_inner())?;
    let tenant_id = path.into_inner();
    caller.see_tenant(tenant_id)?;
    if caller.tenant().is_some() {
        // A tenant's own token picks among the offered images only.
        stockade_store::images::check_offered(&state.pool, &new.image).await?;
    }
    let jail = jails::create(&state.pool, tenant_id, &new).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "jail.create",
        jail.name.as_str(),
    )
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((
            "Location",
            format!("/api/v1/tenants/{tenant_id}/jails/{}", jail.id),
        ))
        .json(JailOut::from(jail)))
}

/// One jail.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    responses((status = 200, description = "The jail", body = JailOut)),
    security(("bearer" = ["jails:read"])))]
pub(crate) async fn get(
    Authorized(caller, _): Authorized<JailsRead>,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let jail = jails::get(&state.pool, tenant_id, jail_id).await?;
    Ok(HttpResponse::Ok().json(JailOut::from(jail)))
}

/// Grows a jail shrunk by a lowered quota back to the CPU, memory and
/// process limits it had (`shrunk_from`), when the quota has room now.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/grow-back", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    responses((status = 200, description = "The grown jail", body = JailOut),
              (status = 409, description = "The jail was not shrunk (`invalid_state`)", body = crate::api::error::ErrorBody),
              (status = 422, description = "The quota has no room for it yet (`quota_exceeded`)", body = crate::api::error::ErrorBody)),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn grow_back(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let current = jails::get(&state.pool, tenant_id, jail_id).await?;
    if current.desired_state == DesiredState::Deleted {
        return Err(ApiError::NotFound);
    }
    let jail = jails::grow_back(&state.pool, tenant_id, jail_id).await?;
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "jail.grow_back",
        jail.name.as_str(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(JailOut::from(jail)))
}

/// What part of a jail's output to send.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// The last lines to send first (default 100, at most 10,000).
    pub tail: Option<usize>,
    /// Go on sending what the jail prints, as it prints it.
    pub follow: Option<bool>,
}

/// The jail's output (what its command writes to stdout and stderr, the
/// newest part its node keeps), as plain text.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}/logs", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id"), LogsQuery),
    responses((status = 200, description = "The output, streamed while `follow`", content_type = "text/plain"),
              (status = 409, description = "The jail is on no node yet, or its node serves no output (`output_not_served`)", body = crate::api::error::ErrorBody),
              (status = 503, description = "The jail's node does not answer now", body = crate::api::error::ErrorBody)),
    security(("bearer" = ["jails:read"])))]
pub(crate) async fn logs(
    Authorized(caller, _): Authorized<JailsRead>,
    path: web::Path<(Uuid, Uuid)>,
    query: web::Query<LogsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let tail = query.tail.unwrap_or(100);
    if tail > 10_000 {
        return Err(ApiError::field("tail", "a number of lines from 0 to 10000"));
    }
    let jail = jails::get(&state.pool, tenant_id, jail_id).await?;
    if jail.desired_state == DesiredState::Deleted {
        return Err(ApiError::NotFound);
    }
    let ask = crate::output::Ask {
        tail,
        follow: query.follow.unwrap_or(false),
    };
    if caller.unbound().is_ok() {
        // The provider read a customer's output: on the record, and shown
        // to the tenant's users.
        let actor = caller.actor();
        stockade_store::audit::record(
            &state.pool,
            &stockade_store::audit::Entry {
                actor_user_id: None,
                actor: &actor,
                tenant_id: Some(tenant_id),
                action: "jail.output_read",
                target: jail.name.as_str(),
                client_addr: None,
                details: serde_json::json!({ "jail_id": jail_id, "by_provider": true }),
            },
        )
        .await?;
    }
    crate::output::open(&state, tenant_id, jail_id, ask, None)
        .await
        .map_err(|e| match e {
            crate::output::OutputError::NotFound => ApiError::NotFound,
            crate::output::OutputError::Invalid(m) => ApiError::field("tail", m),
            crate::output::OutputError::NotServed(m) => ApiError::Conflict {
                code: "output_not_served",
                message: m,
            },
            crate::output::OutputError::Unavailable(m) => ApiError::NodeUnavailable(m),
            crate::output::OutputError::Store(e) => e.into(),
        })
}

/// Changes to a jail; absent fields stay as they are. A new command or
/// environment restarts a running jail.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateJail {
    /// New limits (each field optional).
    pub limits: Option<LimitsPatch>,
    /// Another image, one the jail's node offers; the files the jail
    /// changed stay on top of it. A running jail restarts with it.
    pub image: Option<String>,
    /// New command, as a list of arguments (empty: the image's default,
    /// system jails only).
    pub command: Option<Vec<String>>,
    /// New environment, replacing the whole list. A secret given with
    /// `value` absent keeps its stored value.
    pub env: Option<Vec<EnvVarIn>>,
    /// A health check `{kind: http|tcp, port, path?, interval_secs?, failures?}`,
    /// or null to remove it.
    #[serde(default, deserialize_with = "some_or_null")]
    #[schema(value_type = Option<Object>)]
    pub health_check: Option<Option<stockade_domain::HealthCheck>>,
}

/// A field that may be absent (`None`), null (`Some(None)`) or a value.
fn some_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An environment variable as given.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVarIn {
    /// `[A-Za-z_][A-Za-z0-9_]*`.
    pub name: String,
    /// Its value; absent only for a secret that keeps its stored value.
    pub value: Option<String>,
    /// Never shown again once set.
    #[serde(default)]
    pub secret: bool,
}

/// An environment variable as shown: a secret's value never is.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvVarOut {
    /// Its name.
    pub name: String,
    /// Its value; absent for a secret.
    pub value: Option<String>,
    /// Whether it is a secret.
    pub secret: bool,
}

/// The environment asked for, with stored secrets kept where no value is given.
fn merge_env(given: Vec<EnvVarIn>, current: &[EnvVar]) -> Result<Vec<EnvVar>, ApiError> {
    given
        .into_iter()
        .map(|v| {
            let value = match (v.value, v.secret) {
                (Some(value), _) => value,
                (None, true) => current
                    .iter()
                    .find(|c| c.secret && c.name == v.name)
                    .map(|c| c.value.clone())
                    .ok_or_else(|| {
                        ApiError::from(stockade_domain::ParseError {
                            field: "env",
                            reason: format!("{}: a new secret needs a value", v.name),
                        })
                    })?,
                (None, false) => {
                    return Err(stockade_domain::ParseError {
                        field: "env",
                        reason: format!("{}: a value is needed", v.name),
                    }
                    .into());
                }
            };
            EnvVar::new(&v.name, &value, v.secret).map_err(ApiError::from)
        })
        .collect()
}

/// Limits to change.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// CPU, millicores.
    #[schema(minimum = 10, maximum = 2147483647)]
    pub cpu_millicores: Option<u32>,
    /// Memory, bytes.
    #[schema(minimum = 4194304, maximum = 9223372036854775807_u64)]
    pub memory_bytes: Option<u64>,
    /// Processes.
    #[schema(minimum = 4, maximum = 2147483647)]
    pub pids: Option<u32>,
    /// Volume size, bytes (it only grows).
    #[schema(minimum = 16777216, maximum = 9223372036854775807_u64)]
    pub disk_bytes: Option<u64>,
    /// Read rate, bytes/s.
    #[schema(schema_with = crate::api::types::io_rate_or_null)]
    pub io_read_bps: Option<u64>,
    /// Write rate, bytes/s.
    #[schema(schema_with = crate::api::types::io_rate_or_null)]
    pub io_write_bps: Option<u64>,
    /// Read operations/s.
    pub io_read_iops: Option<u64>,
    /// Write operations/s.
    pub io_write_iops: Option<u64>,
    /// Outbound rate, bits/s.
    #[schema(schema_with = crate::api::types::net_rate_or_null)]
    pub net_egress_bps: Option<u64>,
    /// Inbound rate, bits/s.
    #[schema(schema_with = crate::api::types::net_rate_or_null)]
    pub net_ingress_bps: Option<u64>,
}

impl LimitsPatch {
    fn check(&self) -> Result<(), ApiError> {
        for (field, v) in [("cpu_millicores", self.cpu_millicores), ("pids", self.pids)] {
            if let Some(v) = v {
                check_u32(field, v)?;
            }
        }
        for (field, v) in [
            ("memory_bytes", self.memory_bytes),
            ("disk_bytes", self.disk_bytes),
            ("io_read_bps", self.io_read_bps),
            ("io_write_bps", self.io_write_bps),
            ("io_read_iops", self.io_read_iops),
            ("io_write_iops", self.io_write_iops),
            ("net_egress_bps", self.net_egress_bps),
            ("net_ingress_bps", self.net_ingress_bps),
        ] {
            if let Some(v) = v {
                check_u64(field, v)?;
            }
        }
        Ok(())
    }

    fn apply(&self, l: Limits) -> Result<Limits, ApiError> {
        let merged = LimitsBody {
            cpu_millicores: self.cpu_millicores.unwrap_or(l.cpu_millicores),
            memory_bytes: self.memory_bytes.unwrap_or(l.memory_bytes),
            pids: self.pids.unwrap_or(l.pids),
            disk_bytes: self.disk_bytes.unwrap_or(l.disk_bytes),
            io_read_bps: self.io_read_bps.unwrap_or(l.io_read_bps),
            io_write_bps: self.io_write_bps.unwrap_or(l.io_write_bps),
            io_read_iops: self.io_read_iops.unwrap_or(l.io_read_iops),
            io_write_iops: self.io_write_iops.unwrap_or(l.io_write_iops),
            net_egress_bps: self.net_egress_bps.unwrap_or(l.net_egress_bps),
            net_ingress_bps: self.net_ingress_bps.unwrap_or(l.net_ingress_bps),
        };
        merged.try_into()
    }
}

/// Changes a jail's limits within the tenant's quota.
#[utoipa::path(patch, path = "/api/v1/tenants/{tenant_id}/jails/{jail_id}", tag = "jails",
    params(("tenant_id" = Uuid, Path, description = "Tenant id"),
           ("jail_id" = Uuid, Path, description = "Jail id")),
    request_body = UpdateJail,
    responses((status = 200, description = "The changed jail", body = JailOut)),
    security(("bearer" = ["jails:write"])))]
pub(crate) async fn update(
    Authorized(caller, _): Authorized<JailsWrite>,
    path: web::Path<(Uuid, Uuid)>,
    body: web::Json<UpdateJail>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let limits_given = body.limits.is_some();
    let patch = body.limits.unwrap_or_default();
    patch.check()?;
    if let Some(c) = &body.command {
        stockade_domain::program::check_command(c)?;
    }
    if let Some(Some(c)) = &body.health_check {
        c.check()?;
    }
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let current = jails::get(&state.pool, tenant_id, jail_id).await?;
    if current.desired_state == DesiredState::Deleted {
        return Err(ApiError::NotFound);
    }
    let env = body.env.map(|e| merge_env(e, &current.env)).transpose()?;
    if let Some(e) = &env {
        stockade_domain::program::check_env(e)?;
    }
    // Every part of the change or none: what a suspended tenant may not
    // change is refused before anything is written.
    let status = tenants::get(&state.pool, tenant_id).await?.status;
    if status != stockade_domain::TenantStatus::Active {
        return Err(
            stockade_store::StoreError::InvalidState(format!("the tenant is {status}")).into(),
        );
    }
    if current.kind == JailKind::App && body.command.as_ref().is_some_and(Vec::is_empty) {
        return Err(stockade_domain::ParseError {
            field: "command",
            reason: "an app jail needs a command".into(),
        }
        .into());
    }
    // Checked before anything is written: a refused request changes nothing.
    if let Some(image) = &body.image
        && caller.tenant().is_some()
        && *image != current.image
    {
        stockade_store::images::check_offered(&state.pool, image).await?;
    }
    let limits = patch.apply(current.limits)?;
    let mut jail = current;
    if limits_given
        || (body.command.is_none()
            && env.is_none()
            && body.health_check.is_none()
            && body.image.is_none())
    {
        jail = jails::update_limits(&state.pool, tenant_id, jail_id, &limits).await?;
    }
    if let Some(check) = &body.health_check {
        jail = jails::set_health_check(&state.pool, tenant_id, jail_id, check.as_ref()).await?;
    }
    if body.command.is_some() || env.is_some() || body.image.is_some() {
        jail = jails::update_program(
            &state.pool,
            tenant_id,
            jail_id,
            jails::ProgramChange {
                image: body.image.as_deref(),
                command: body.command.as_deref(),
                env: env.as_deref(),
            },
        )
        .await?;
    }
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        "jail.update",
        jail.name.as_str(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(JailOut::from(jail)))
}

/// What a jail action asks of the jail.
enum Change {
    /// This desired state.
    To(DesiredState),
    /// Running, with a new init: a new restart generation.
    Restart,
}

async fn set(
    caller: super::auth::Caller,
    path: web::Path<(Uuid, Uuid)>,
    state: web::Data<AppState>,
    req: HttpRequest,
    change: Change,
    action: &str,
) -> Result<HttpResponse, ApiError> {
    let (tenant_id, jail_id) = path.into_inner();
    caller.see_tenant(tenant_id)?;
    let jail = match change {
        Change::To(desired) => jails::set_desired(&state.pool, tenant_id, jail_id, desired).await?,
        Change::Restart => jails::restart(&state.pool, tenant_id, jail_id).await?,
    };
    record(
        &state,
        &req,
        &caller,
        Some(tenant_id),
        action,
        jail.name.as_str(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(JailOut::from(jail)))
}

macro_rules! jail_action {
    ($name:ident, $method:ident, $path:literal, $change:expr, $action:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path($method, path = $path, tag = "jails",
                            params(("tenant_id" = Uuid, Path, description = "Tenant id"),
                                   ("jail_id" = Uuid, Path, description = "Jail id")),
                            responses((status = 200, description = "The jail", body = JailOut)),
                            security(("bearer" = ["jails:write"])))]
        pub(crate) async fn $name(
            Authorized(caller, _): Authorized<JailsWrite>,
            path: web::Path<(Uuid, Uuid)>,
            state: web::Data<AppState>,
            req: HttpRequest,
        ) -> Result<HttpResponse, ApiError> {
            set(caller, path, state, req, $change, $action).await
        }
    };
}

jail_action!(
    start,
    post,
    "/api/v1/tenants/{tenant_id}/jails/{jail_id}/start",
    Change::To(DesiredState::Running),
    "jail.start",
    "Starts a jail (the tenant must be active)."
);
jail_action!(
    stop,
    post,
    "/api/v1/tenants/{tenant_id}/jails/{jail_id}/stop",
    Change::To(DesiredState::Stopped),
    "jail.stop",
    "Stops a jail; its volume is kept."
);
jail_action!(
    restart,
    post,
    "/api/v1/tenants/{tenant_id}/jails/{jail_id}/restart",
    Change::Restart,
    "jail.restart",
    "Restarts a jail: its node stops it and starts it afresh (a new init), or starts it if it was stopped."
);
jail_action!(
    delete,
    delete,
    "/api/v1/tenants/{tenant_id}/jails/{jail_id}",
    Change::To(DesiredState::Deleted),
    "jail.delete",
    "Deletes a jail: its node destroys it; its usage stays for billing."
);
