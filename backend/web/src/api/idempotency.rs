//! `Idempotency-Key` on POST: the first answer is stored with a hash of the
//! request and replayed for a retry with the same key and body; the same key
//! with another body is refused (422). Keys live a day, per token.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpMessage, HttpResponse, ResponseError, web};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use stockade_store::idempotency::{self, Begin};

use super::auth::Caller;
use super::error::ApiError;
use crate::AppState;

/// The largest body the API reads.
pub(crate) const BODY_LIMIT: usize = 64 * 1024;
const HEADER: &str = "Idempotency-Key";

fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Wraps the API's POST handlers.
pub(crate) async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let key = req
        .headers()
        .get(HEADER)
        .map(|v| v.to_str().map(str::to_owned));
    let caller = req.extensions().get::<Caller>().cloned();
    let app = req.app_data::<web::Data<AppState>>().cloned();
    let (true, Some(key), Some(caller), Some(app)) =
        (req.method() == Method::POST, key, caller, app)
    else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let refuse = |req: ServiceRequest, e: ApiError| Ok(req.into_response(e.error_response()));
    let key = match key {
        Ok(k) if valid_key(&k) => k,
        _ => {
            return refuse(
                req,
                ApiError::BadRequest(format!(
                    "{HEADER} must be 1 to 255 visible ASCII characters"
                )),
            );
        }
    };
    // Read the body (within the API's limit) to hash it, then hand it on.
    let body = match read_body(&mut req).await {
        Ok(b) => b,
        Err(e) => return refuse(req, e),
    };
    let mut hasher = Sha256::new();
    hasher.update(req.method().as_str());
    hasher.update(b" ");
    hasher.update(req.uri().to_string());
    hasher.update(b"\n");
    hasher.update(&body);
    let hash: [u8; 32] = hasher.finalize().into();
    let token_id = caller.0.id;
    match idempotency::begin(&app.pool, token_id, &key, &hash).await {
        Err(e) => refuse(req, e.into()),
        Ok(Begin::Mismatch) => refuse(req, ApiError::IdempotencyMismatch),
        Ok(Begin::InProgress) => refuse(
            req,
            ApiError::Conflict {
                code: "idempotency_key_in_use",
                message: "a request with this Idempotency-Key is still being served".into(),
            },
        ),
        Ok(Begin::Replay {
            status,
            body,
            content_type,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let res = HttpResponse::build(status)
                .content_type(content_type)
                .insert_header(("Idempotent-Replayed", "true"))
                .body(body);
            Ok(req.into_response(res))
        }
        Ok(Begin::Fresh) => {
            req.set_payload(Bytes::clone(&body).into());
            let res = match next.call(req).await {
                Ok(res) => res,
                Err(e) => {
                    idempotency::release(&app.pool, token_id, &key).await.ok();
                    return Err(e);
                }
            };
            let status = res.status();
            let (http_req, res) = res.into_parts();
            let (head, res_body) = res.into_parts();
            let bytes = actix_web::body::to_bytes(res_body)
                .await
                .map_err(|_| ApiError::Unexpected(anyhow::anyhow!("cannot buffer the answer")))?;
            // Failures on our side, and rate limits, are not remembered: a retry runs again.
            let outcome = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                idempotency::release(&app.pool, token_id, &key).await
            } else {
                let content_type = head
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/json")
                    .to_owned();
                // Secrets shown once (a generated password, a signing
                // secret) are not kept in the database for replays.
                let kept = without_secrets(&bytes);
                idempotency::finish(
                    &app.pool,
                    token_id,
                    &key,
                    status.as_u16(),
                    kept.as_deref().unwrap_or(&bytes),
                    &content_type,
                )
                .await
            };
            if let Err(e) = outcome {
                tracing::error!(error = ?e, "storing the idempotent answer failed");
            }
            let res = head.set_body(bytes).map_into_boxed_body();
            Ok(ServiceResponse::new(http_req, res))
        }
    }
}

/// Takes the request's whole body, within the API's limit.
async fn read_body(req: &mut ServiceRequest) -> Result<Bytes, ApiError> {
    let mut payload = req.take_payload();
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(ApiError::PayloadTooLarge(BODY_LIMIT));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Names of answer fields that hold a secret shown once.
const SECRET_FIELDS: [&str; 2] = ["password", "secret"];

/// The answer as stored for replays: every secret field (at any depth) set
/// to null, and `secrets_omitted` listing where they were, so a replay says
/// what it leaves out. `None` when the answer holds no secret (or is not a
/// JSON object).
fn without_secrets(body: &[u8]) -> Option<Vec<u8>> {
    fn walk(v: &mut serde_json::Value, path: &str, found: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    let here = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if SECRET_FIELDS.contains(&k.as_str()) && child.is_string() {
                        *child = serde_json::Value::Null;
                        found.push(here);
                    } else {
                        walk(child, &here, found);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    walk(item, path, found);
                }
            }
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut found = Vec::new();
    walk(&mut v, "", &mut found);
    if found.is_empty() {
        return None;
    }
    v.as_object_mut()?
        .insert("secrets_omitted".into(), serde_json::json!(found));
    serde_json::to_vec(&v).ok()
}

/// Refuses a JSON body that is not an object (every API body is one; an
/// array would otherwise fill a request's fields by position) with 422,
/// after the caller is authenticated and within the API's body limit.
pub(crate) async fn json_objects_only(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let json = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    let with_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if !(json && with_body) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let refuse = |req: ServiceRequest, e: ApiError| Ok(req.into_response(e.error_response()));
    let body = match read_body(&mut req).await {
        Ok(b) => b,
        Err(e) => return refuse(req, e),
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return refuse(
            req,
            ApiError::Validation {
                message: "the body must be a JSON object".into(),
                field: None,
            },
        );
    }
    req.set_payload(integral_numbers(body));
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// JSON does not tell `5` from `5.0`, and JSON Schema's `integer` accepts
/// both; Rust's integers accept only the first. A body with a whole number
/// written as a fraction is passed on with it written as an integer; any
/// other body is passed on untouched (a real fraction is still refused by
/// the field it is given for).
fn integral_numbers(body: web::Bytes) -> actix_web::dev::Payload {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return body.into();
    };
    if !fix_numbers(&mut value) {
        return body.into();
    }
    serde_json::to_vec(&value).map_or_else(|_| body.into(), |b| web::Bytes::from(b).into())
}

/// Writes whole numbers given as fractions as integers; whether any was.
fn fix_numbers(v: &mut serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Exactly representable whole numbers only (below 2^53).
            if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                #[allow(clippy::cast_possible_truncation)]
                let whole = f as i64;
                *v = serde_json::Value::from(whole);
                return true;
            }
            false
        }
        serde_json::Value::Array(items) => items.iter_mut().fold(false, |c, i| fix_numbers(i) | c),
        serde_json::Value::Object(fields) => {
            fields.values_mut().fold(false, |c, i| fix_numbers(i) | c)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn whole_numbers_written_as_fractions_become_integers_and_nothing_else_changes() {
        let fixed = |body: &str| -> (bool, serde_json::Value) {
            let mut v: serde_json::Value = serde_json::from_str(body).unwrap();
            (super::fix_numbers(&mut v), v)
        };
        assert_eq!(
            fixed(r#"{"a": 5.0, "b": [1.0, 2.5], "c": {"d": -3.0}, "e": "7.0"}"#),
            (
                true,
                serde_json::json!({"a": 5, "b": [1, 2.5], "c": {"d": -3}, "e": "7.0"})
            )
        );
        assert_eq!(
            fixed(r#"{"a": 1e300, "b": 2}"#),
            (false, serde_json::json!({"a": 1e300, "b": 2}))
        );
    }

    #[test]
    fn replays_keep_no_secret_and_say_so() {
        let body = br#"{"tenant":{"id":"t"},"owner":{"email":"o@x","password":"hunter2-once"}}"#;
        let kept = super::without_secrets(body).unwrap();
        let text = String::from_utf8(kept).unwrap();
        assert!(!text.contains("hunter2-once"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["owner"]["password"].is_null());
        assert_eq!(v["secrets_omitted"], serde_json::json!(["owner.password"]));
        assert!(super::without_secrets(br#"{"tenant":{"id":"t"}}"#).is_none());
    }
}
