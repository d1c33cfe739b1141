//! Bearer tokens: who is calling, what it may do, which tenant it may see.

use std::future::{Ready, ready};
use std::marker::PhantomData;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError, web};
use secrecy::SecretString;
use stockade_store::tokens::{self, ApiToken, Scope};
use uuid::Uuid;

use super::ApiState;
use super::error::ApiError;
use crate::AppState;

/// The authenticated token of a request.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub ApiToken);

impl Caller {
    /// A token bound to a tenant sees only that tenant: any other is "not found".
    pub fn see_tenant(&self, tenant_id: Uuid) -> Result<(), ApiError> {
        match self.0.tenant_id {
            Some(bound) if bound != tenant_id => Err(ApiError::NotFound),
            _ => Ok(()),
        }
    }

    /// Refuses tokens bound to a tenant (for provider-wide actions).
    pub fn unbound(&self) -> Result<(), ApiError> {
        if self.0.tenant_id.is_some() {
            return Err(ApiError::Forbidden(
                "a token bound to a tenant cannot do this".into(),
            ));
        }
        Ok(())
    }

    /// The bound tenant, if any.
    pub fn tenant(&self) -> Option<Uuid> {
        self.0.tenant_id
    }

    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("token:{}", self.0.name)
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or(ApiError::Unauthorized),
        )
    }
}

/// A scope a handler needs, as a type, so the check runs before the body is read.
pub(crate) trait Needs {
    /// The scope.
    const SCOPE: Scope;
}

macro_rules! scope_marker {
    ($($ty:ident => $scope:ident),+ $(,)?) => {
        $(
            #[doc = concat!("Needs the `", stringify!($scope), "` scope.")]
            pub(crate) struct $ty;
            impl Needs for $ty {
                const SCOPE: Scope = Scope::$scope;
            }
        )+
    };
}

scope_marker!(
    TenantsRead => TenantsRead,
    TenantsWrite => TenantsWrite,
    JailsRead => JailsRead,
    JailsWrite => JailsWrite,
    UsageRead => UsageRead,
    WebhooksWrite => WebhooksWrite,
    MetricsRead => MetricsRead,
    DomainsWrite => DomainsWrite,
);

/// The caller, holding scope `N`; extracting it answers 403 otherwise.
pub(crate) struct Authorized<N>(pub Caller, pub PhantomData<N>);

impl<N: Needs> FromRequest for Authorized<N> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let caller = req.extensions().get::<Caller>().cloned();
        ready(match caller {
            None => Err(ApiError::Unauthorized),
            Some(c) if c.0.has(N::SCOPE) => Ok(Authorized(c, PhantomData)),
            Some(_) => Err(ApiError::Forbidden(format!(
                "this token lacks the {} scope",
                N::SCOPE
            ))),
        })
    }
}

fn bearer(req: &ServiceRequest) -> Option<SecretString> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| SecretString::from(token.trim().to_owned()))
}

/// Authenticates every API request and applies the token's rate limit.
pub(crate) async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let app = req.app_data::<web::Data<AppState>>().cloned();
    let api = req.app_data::<web::Data<ApiState>>().cloned();
    let (Some(app), Some(api)) = (app, api) else {
        return Err(ApiError::Unexpected(anyhow::anyhow!("API state missing")).into());
    };
    let refuse = |req: ServiceRequest, e: ApiError| {
        let res = e.error_response();
        Ok(req.into_response(res))
    };
    let Some(raw) = bearer(&req) else {
        return refuse(req, ApiError::Unauthorized);
    };
    let token = match tokens::authenticate(&app.pool, &raw).await {
        Ok(Some(t)) => t,
        Ok(None) => return refuse(req, ApiError::Unauthorized),
        Err(e) => return refuse(req, e.into()),
    };
    if let Err(retry_after) = api.limiter.take(token.id) {
        return refuse(req, ApiError::RateLimited(retry_after));
    }
    req.extensions_mut().insert(Caller(token));
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}
