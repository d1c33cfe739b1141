//! One error type for the panel, mapped to one status and a styled page.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use askama::Template;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The request is not signed in; answered with a redirect to sign-in.
    #[error("please sign in")]
    SignInRequired,
    /// Signed in, but not allowed.
    #[error("you are not allowed to do this")]
    Forbidden,
    /// Nothing here (or nothing this user may see).
    #[error("this page does not exist")]
    NotFound,
    /// A form without a valid CSRF token.
    #[error("this form has expired; reload the page and try again")]
    Csrf,
    /// Anything unexpected: logged with its chain, shown as a plain 500.
    #[error("something went wrong on our side")]
    Unexpected(#[from] anyhow::Error),
}

impl WebError {
    /// The error of a load several requests shared: each gets the same
    /// answer (the chain of an unexpected error is kept as text).
    pub(crate) fn shared(self: std::sync::Arc<Self>) -> WebError {
        match std::sync::Arc::try_unwrap(self) {
            Ok(e) => e,
            Err(e) => match &*e {
                WebError::SignInRequired => WebError::SignInRequired,
                WebError::Forbidden => WebError::Forbidden,
                WebError::NotFound => WebError::NotFound,
                WebError::Csrf => WebError::Csrf,
                WebError::Unexpected(err) => WebError::Unexpected(anyhow::anyhow!("{err:#}")),
            },
        }
    }
}

impl From<stockade_store::StoreError> for WebError {
    fn from(e: stockade_store::StoreError) -> Self {
        match e {
            stockade_store::StoreError::NotFound => WebError::NotFound,
            other => WebError::Unexpected(other.into()),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    message: String,
}

impl ResponseError for WebError {
    fn status_code(&self) -> StatusCode {
        match self {
            WebError::SignInRequired => StatusCode::SEE_OTHER,
            WebError::Forbidden | WebError::Csrf => StatusCode::FORBIDDEN,
            WebError::NotFound => StatusCode::NOT_FOUND,
            WebError::Unexpected(e) if stockade_store::unavailable(e) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            WebError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let WebError::SignInRequired = self {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/login"))
                .finish();
        }
        let status = self.status_code();
        if let WebError::Unexpected(e) = self {
            if status == StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(error = %e, "the database is unreachable; answered 503");
            } else {
                tracing::error!(error = ?e, "request failed");
            }
        }
        let (title, message) = match status {
            StatusCode::FORBIDDEN => ("Forbidden", self.to_string()),
            StatusCode::NOT_FOUND => ("Not found", self.to_string()),
            StatusCode::SERVICE_UNAVAILABLE => (
                "Temporarily unavailable",
                "The panel cannot reach its database for a moment. Nothing was changed; please try again shortly.".to_owned(),
            ),
            _ => ("Server error", self.to_string()),
        };
        let page = ErrorPage {
            status: status.as_u16(),
            title,
            message,
        };
        let mut res = HttpResponse::build(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            res.insert_header((
                header::RETRY_AFTER,
                crate::api::error::UNAVAILABLE_RETRY_SECS.to_string(),
            ));
        }
        match page.render() {
            Ok(body) => res.content_type("text/html; charset=utf-8").body(body),
            Err(_) => res.body(self.to_string()),
        }
    }
}

/// The fallback route.
pub(crate) async fn not_found() -> Result<HttpResponse, WebError> {
    Err(WebError::NotFound)
}

/// Refuses, before any handler, a request whose path or query holds a NUL
/// byte (`%00`): no text the panel or the API keeps may contain one, and the
/// database would refuse it later with a 500. Answers 422, in the API's
/// error shape under `/api/`.
pub(crate) async fn refuse_nul_bytes(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let raw = req.uri().path_and_query().map_or("", |p| p.as_str());
    if raw.to_ascii_lowercase().contains("%00") {
        let message = "a NUL byte (%00) is not allowed in an address";
        let res = if req.path().starts_with("/api/") {
            crate::api::ApiError::Validation {
                message: message.into(),
                field: None,
            }
            .error_response()
        } else {
            HttpResponse::UnprocessableEntity()
                .content_type("text/plain; charset=utf-8")
                .body(format!("Refused: {message}."))
        };
        return Ok(req.into_response(res));
    }
    next.call(req)
        .await
        .map(actix_web::dev::ServiceResponse::map_into_boxed_body)
}
