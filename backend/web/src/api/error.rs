//! The one error shape of the JSON API:
//! `{"error": {"code": "...", "message": "...", "details": {...}}}`.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use stockade_domain::ParseError;
use stockade_store::StoreError;
use utoipa::ToSchema;

/// Why an API request failed; each variant maps to one status and code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not the JSON expected.
    #[error("{0}")]
    BadRequest(String),
    /// No token, or not a valid one.
    #[error("a valid API token is required (Authorization: Bearer ...)")]
    Unauthorized,
    /// The token lacks a scope or the action needs an unbound token.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing here, or nothing this token may see.
    #[error("not found")]
    NotFound,
    /// The path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request conflicts with what exists (a taken name, a wrong state).
    #[error("{message}")]
    Conflict {
        /// `conflict`, `invalid_state`, ...
        code: &'static str,
        /// What conflicts.
        message: String,
    },
    /// A field was refused.
    #[error("{message}")]
    Validation {
        /// What is wrong.
        message: String,
        /// The offending field, if known.
        field: Option<String>,
    },
    /// The change would exceed the tenant's quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The idempotency key was used with another request.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    /// The body is larger than the API accepts.
    #[error("the request body is too large (at most {0} bytes)")]
    PayloadTooLarge(usize),
    /// The body is not JSON.
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// Too many requests with this token.
    #[error("too many requests; retry after {0} seconds")]
    RateLimited(u64),
    /// No node can take the jail now.
    #[error("{0}")]
    NoCapacity(String),
    /// A node cannot serve what is asked now (a jail's output).
    #[error("{0}")]
    NodeUnavailable(String),
    /// Anything unexpected: logged with its chain, answered with a bare 500.
    #[error("something went wrong on our side")]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// A refused field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation {
            message: format!("{field}: {}", message.into()),
            field: Some(field.to_owned()),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict { code, .. } => code,
            ApiError::Validation { .. } => "validation_failed",
            ApiError::QuotaExceeded(_) => "quota_exceeded",
            ApiError::IdempotencyMismatch => "idempotency_key_reused",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::NoCapacity(_) => "no_capacity",
            ApiError::NodeUnavailable(_) => "node_unavailable",
            ApiError::Unexpected(_) => "internal",
        }
    }

    fn details(&self) -> serde_json::Value {
        match self {
            ApiError::Validation { field: Some(f), .. } => serde_json::json!({ "field": f }),
            ApiError::RateLimited(secs) => serde_json::json!({ "retry_after": secs }),
            _ => serde_json::json!({}),
        }
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        ApiError::Validation {
            message: e.to_string(),
            field: Some(e.field.to_owned()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::Conflict {
                code: "conflict",
                message: format!("{what} already exists"),
            },
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Invalid { field, message } => ApiError::field(field, message),
            StoreError::QuotaExceeded(m) => ApiError::QuotaExceeded(m),
            StoreError::NoCapacity(m) => {
                ApiError::NoCapacity(format!("no node has room for this jail right now ({m})"))
            }
            StoreError::InvalidState(m) => ApiError::Conflict {
                code: "invalid_state",
                message: m,
            },
            StoreError::Unexpected(e) => ApiError::Unexpected(e),
        }
    }
}

/// Seconds a client is asked to wait while the database is unreachable.
pub(crate) const UNAVAILABLE_RETRY_SECS: u64 = 5;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`not_found`, `validation_failed`, ...).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// More about it (`field` for validation errors, `retry_after` for rate limits).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            // The key belongs to another request: a conflict with what the
            // server holds, as a key still being served is (the request
            // itself may be valid, so not a 422).
            ApiError::Conflict { .. } | ApiError::IdempotencyMismatch => StatusCode::CONFLICT,
            ApiError::Validation { .. } | ApiError::QuotaExceeded(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoCapacity(_) | ApiError::NodeUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unexpected(e) if stockade_store::unavailable(e) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let unavailable = matches!(self, ApiError::Unexpected(e) if stockade_store::unavailable(e));
        if let ApiError::Unexpected(e) = self {
            if unavailable {
                tracing::warn!(error = %e, "the database is unreachable; answered 503");
            } else {
                tracing::error!(error = ?e, "API request failed");
            }
        }
        let body = ErrorBody {
            error: if unavailable {
                ErrorDetail {
                    code: "unavailable".into(),
                    message: "the service is briefly unavailable; retry shortly".into(),
                    details: serde_json::json!({ "retry_after": UNAVAILABLE_RETRY_SECS }),
                }
            } else {
                ErrorDetail {
                    code: self.code().to_owned(),
                    message: self.to_string(),
                    details: self.details(),
                }
            },
        };
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CACHE_CONTROL, "no-store"));
        match self {
            ApiError::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::RateLimited(secs) => {
                res.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            ApiError::NoCapacity(_) => {
                res.insert_header((header::RETRY_AFTER, "30"));
            }
            ApiError::Unexpected(_) if unavailable => {
                res.insert_header((header::RETRY_AFTER, UNAVAILABLE_RETRY_SECS.to_string()));
            }
            _ => {}
        }
        res.json(body)
    }
}

/// Bad JSON bodies: syntax errors are 400, well-formed JSON with wrong or
/// unknown fields is 422, never a 500.
pub(crate) fn json_error(
    err: actix_web::error::JsonPayloadError,
    _: &HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let api = match err {
        J::OverflowKnownLength { limit, .. } | J::Overflow { limit } => {
            ApiError::PayloadTooLarge(limit)
        }
        J::ContentType => ApiError::UnsupportedMediaType,
        J::Deserialize(e) if e.is_data() => ApiError::Validation {
            message: e.to_string(),
            field: None,
        },
        J::Deserialize(e) => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
        other => ApiError::BadRequest(format!("cannot read the body: {other}")),
    };
    api.into()
}

/// Bad query strings are 422 validation errors.
pub(crate) fn query_error(
    err: actix_web::error::QueryPayloadError,
    _: &HttpRequest,
) -> actix_web::Error {
    ApiError::Validation {
        message: format!("query: {err}"),
        field: None,
    }
    .into()
}

/// A path segment that cannot be an id names nothing: 404.
pub(crate) fn path_error(_: actix_web::error::PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::NotFound.into()
}

/// The fallback of the API scope.
pub(crate) async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// The fallback of an API resource for methods it does not have.
pub(crate) async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let mut res = ApiError::MethodNotAllowed.error_response();
    let pattern = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
    if let Some(allow) = allowed_methods(&pattern)
        && let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow)
    {
        res.headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    res
}

/// The methods a route answers, as the API's description lists them
/// (`GET, POST`), for the `Allow` header of a 405.
fn allowed_methods(pattern: &str) -> Option<String> {
    static ALLOW: std::sync::OnceLock<std::collections::HashMap<String, String>> =
        std::sync::OnceLock::new();
    let allow = ALLOW.get_or_init(|| {
        let mut allow: std::collections::HashMap<String, String> = super::openapi::spec()
            .paths
            .paths
            .iter()
            .filter_map(|(path, item)| {
                let methods: Vec<&str> = [
                    ("GET", &item.get),
                    ("POST", &item.post),
                    ("PUT", &item.put),
                    ("PATCH", &item.patch),
                    ("DELETE", &item.delete),
                ]
                .into_iter()
                .filter(|(_, op)| op.is_some())
                .map(|(m, _)| m)
                .collect();
                (!methods.is_empty()).then(|| (path.clone(), methods.join(", ")))
            })
            .collect();
        allow.insert("/metrics".into(), "GET".into());
        allow
    });
    allow.get(pattern).cloned()
}
