//! The REST API under `/api/v1`: the HTTP layer in front of [`crate::service`]. Every request
//! carries an API token (`Authorization: Bearer …`); a handler extracts the request,
//! authenticates the caller, checks the privilege the operation needs, calls one service method
//! and answers its typed result (`tresor_api::views`). Errors are one JSON shape with a stable
//! code, whose HTTP status is decided here, in one place ([`ApiError`]).
//!
//! One file per resource: [`vms`], [`hosts`], [`events`], [`alarms`], [`providers`], [`users`]
//! (users, roles, login), [`settings`]; [`openapi`] is the document.

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tresor_api::ErrorCode;
use tresor_core::access::Privilege;

mod alarms;
mod events;
mod hosts;
pub mod openapi;
mod providers;
pub mod settings;
mod tasks;
mod users;
mod vms;

pub use crate::accounts::{seed_roles, token_hash};
pub use crate::service::vms::{vm_json_text, vm_view};
pub use crate::service::Context as AppState;
use crate::service::{Caller, ServiceError};

/// An API error: what a service or an extractor refused, answered with the status its code
/// decides and one JSON shape: `{"error": {"code", "message", "messages": {"en", "de"}}}`.
pub type ApiError = ServiceError;

/// What the layer in front of a server that shares its database with others needs.
#[derive(Debug)]
pub struct Standby {
    pub leadership: std::sync::Arc<crate::lease::Leadership>,
    pub forwarder: crate::forward::Forwarder,
    /// When a leader that could not be reached was last logged (once in ten seconds: while
    /// a dead leader's lease runs out, every write would say it again).
    pub unreachable_said: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Standby {
    pub fn new(
        leadership: std::sync::Arc<crate::lease::Leadership>,
        forwarder: crate::forward::Forwarder,
    ) -> Standby {
        Standby {
            leadership,
            forwarder,
            unreachable_said: std::sync::Mutex::new(None),
        }
    }

    /// Whether it is time to log again that the leader cannot be reached.
    fn say_unreachable(&self) -> bool {
        let mut said = self
            .unreachable_said
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let due = said.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10));
        if due {
            *said = Some(std::time::Instant::now());
        }
        due
    }
}

/// In front of a server that shares its database with others: while another server leads,
/// reads are answered here and writes are sent on to the leader, whose answer is given back
/// (when the leader cannot be reached: 307, its address in `Location`, with the API's error shape
/// saying so); while no server leads, writes are refused (503). A request a standby sent on
/// carries the client's address, believed only under the servers' MAC.
pub async fn standby(
    axum::extract::State(s): axum::extract::State<std::sync::Arc<Standby>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::extract::ConnectInfo;
    use axum::http::Method;
    use std::net::SocketAddr;
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let forwarded = match req.headers().get(crate::forward::FORWARDED_FOR) {
        None => false,
        Some(value) => {
            let said = value.to_str().unwrap_or("");
            match s.forwarder.verify(
                said,
                req.method().as_str(),
                &path,
                std::time::SystemTime::now(),
            ) {
                Ok(client) => {
                    req.extensions_mut()
                        .insert(ConnectInfo(SocketAddr::new(client, 0)));
                    true
                }
                Err(e) => {
                    return ApiError::new(
                        ErrorCode::BadRequest,
                        format!("{e}; only Tresor's servers send it, remove it from the request"),
                    )
                    .into_response()
                }
            }
        }
    };
    if s.leadership.leads() || matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
    {
        return next.run(req).await;
    }
    let Some(leader) = s.leadership.leader_url() else {
        return ApiError::new(
            ErrorCode::NoLeader,
            "No server leads at the moment (a standby takes over when the last leader's lease runs out); try again in a few seconds",
        )
        .into_response();
    };
    // Sent on once at most: a request another standby sent here is not sent on again.
    if !forwarded {
        let client = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        match s.forwarder.forward(&leader, req, client).await {
            Ok(answer) => return answer,
            Err(crate::forward::Failure::NotSent(why)) => {
                if s.say_unreachable() {
                    tracing::warn!(leader = %leader, error = %why, "cannot send writes on to the leader; clients are sent there (said again in 10 s at the earliest)");
                }
            }
            Err(crate::forward::Failure::NoAnswer(why)) => {
                tracing::warn!(leader = %leader, error = %why, "the leader's answer to a write sent on did not come back");
                return ApiError::new(
                    ErrorCode::LeaderLost,
                    format!(
                        "This server sent the request to the leader, {leader}, whose answer did not come back ({why}); it may have been carried out: check with a read before you send it again"
                    ),
                )
                .into_response();
            }
        }
    }
    let mut answer = ApiError::new(
        ErrorCode::NotLeader,
        format!(
            "This server stands by; the server that leads, {leader}, takes writes. Send the request there (tresor does when its server list names both)"
        ),
    )
    .into_response();
    if let Ok(location) = axum::http::HeaderValue::from_str(&format!("{leader}{path}")) {
        answer
            .headers_mut()
            .insert(axum::http::header::LOCATION, location);
    }
    answer
}

/// The HTTP status of an error, which its code decides.
pub fn status_of(e: &ApiError) -> StatusCode {
    StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = status_of(&self);
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(de) = self.message_de {
            error["messages"] = json!({"en": self.message, "de": de});
        }
        (status, Json(json!({ "error": error }))).into_response()
    }
}

/// A JSON request body. Unlike axum's `Json`, a body that cannot be read is refused in the API's
/// one error shape (400, `badRequest`), saying what was wrong; and every body is a JSON object
/// (serde would read a struct from an array as well, which no request of the API is).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

fn body_error(r: axum::extract::rejection::JsonRejection) -> ApiError {
    bad_body(&r.body_text())
}

fn bad_body(why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::BadRequest,
        format!(
            "The request body is not what this operation takes ({why}); see /api/v1/openapi.json"
        ),
    )
}

/// Whether a request says its body is JSON (`application/json`, or a `+json` type).
fn says_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .is_some_and(|t| {
            t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
        })
}

/// Reads a JSON object of type `T` from a request that says it carries JSON.
async fn json_object<S, T>(req: axum::extract::Request, state: &S) -> Result<T, ApiError>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    use axum::extract::FromRequest;
    if !says_json(req.headers()) {
        return Err(bad_body(
            "it needs the header Content-Type: application/json",
        ));
    }
    let bytes = axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|r| bad_body(&r.body_text()))?;
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(bad_body("it must be a JSON object, {...}"));
    }
    Json::<T>::from_bytes(&bytes)
        .map(|Json(v)| v)
        .map_err(body_error)
}

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        json_object(req, state).await.map(ApiJson)
    }
}

/// An optional body: absent when the request names no content type.
impl<S, T> axum::extract::OptionalFromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &S,
    ) -> Result<Option<Self>, ApiError> {
        if !req.headers().contains_key(axum::http::header::CONTENT_TYPE) {
            return Ok(None);
        }
        json_object(req, state).await.map(|v| Some(ApiJson(v)))
    }
}

/// A query string. Unlike axum's `Query`, one that cannot be read is refused in the API's one
/// error shape (400, `badRequest`), saying what was wrong.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|r| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "The query is not what this operation takes ({}); see /api/v1/openapi.json",
                        r.body_text()
                    ),
                )
            })
    }
}

/// Path parameters, refused in the API's error shape when they cannot be read (an alarm id that
/// is not a number).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|r| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("No such object: {}", r.body_text()),
                )
            })
    }
}

tokio::task_local! {
    /// The user the request being answered comes from, once [`authenticate`] knows it (for the
    /// access log).
    static ACCESS_USER: std::sync::Arc<std::sync::OnceLock<String>>;
}

/// The access log and the API's request metrics: one line per request (method, route, path,
/// status, user, duration), at `info` on the target `tresor::access`. Never a header, a query
/// or a body: tokens, passwords and key material do not reach it.
async fn access(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let path = req.uri().path().to_owned();
    let user = std::sync::Arc::new(std::sync::OnceLock::new());
    let response = ACCESS_USER.scope(user.clone(), next.run(req)).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    crate::metrics::METRICS.api_request(&method, &route, status, took);
    tracing::info!(
        target: "tresor::access",
        method = %method,
        route,
        path,
        status,
        user = user.get().map(String::as_str).unwrap_or("-"),
        duration_ms = took.as_secs_f64() * 1000.0,
        "api request"
    );
    response
}

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
}

/// The user a request's token belongs to.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = bearer(headers).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "No API token; log in with `tresor login` or set TRESOR_TOKEN",
        )
        .de("Kein API-Token; melden Sie sich mit `tresor login` an oder setzen Sie TRESOR_TOKEN")
    })?;
    let invalid = || {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "The API token is not valid; log in again with `tresor login`",
        )
        .de("Das API-Token ist nicht gültig; melden Sie sich mit `tresor login` erneut an")
    };
    let (user, label, created) = state
        .store
        .token_user(&token_hash(token))?
        .ok_or_else(invalid)?;
    // Tokens from a login expire; the one `server init` printed is the operator's to revoke.
    if label == "login" && crate::enrol::now() - created > state.logins.token_ttl_secs {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "The API token has expired; log in again with `tresor login`",
        )
        .de("Das API-Token ist abgelaufen; melden Sie sich mit `tresor login` erneut an"));
    }
    let _ = ACCESS_USER.try_with(|u| u.set(user.clone()));
    Ok(user)
}

/// Who a request comes from, with their privileges.
fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let user = authenticate(state, headers)?;
    let privileges = state.store.privileges_of(&user)?;
    Ok(Caller::new(user, privileges))
}

/// Who a request comes from, if they may do `action` with `privilege`.
fn permit(
    state: &AppState,
    headers: &HeaderMap,
    privilege: Privilege,
    action: &str,
) -> Result<Caller, ApiError> {
    let caller = caller(state, headers)?;
    caller.require(privilege, action)?;
    Ok(caller)
}

/// The user a request comes from, if they may do `action` with `privilege`.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    privilege: Privilege,
    action: &str,
) -> Result<String, ApiError> {
    Ok(permit(state, headers, privilege, action)?.user)
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    // The VM list is answered from renderings made when VMs are written.
    state.store.render_vms_with(vm_json_text);
    use crate::api::{alarms as a, events as e, hosts as h, vms as v};
    Router::new()
        .route("/api/v1/vms", get(v::list).post(v::create))
        .route("/api/v1/vms/register", post(v::register))
        .route("/api/v1/vms/adopt", post(v::adopt))
        .route("/api/v1/vms/unlock", post(v::unlock_many))
        .route("/api/v1/vms/{name}/diagnose", get(v::diagnose))
        .route("/api/v1/vms/{name}/add-disk", post(v::add_disk))
        .route("/api/v1/vms/{name}/files/{kind}", put(v::upload))
        .route(
            "/api/v1/vms/{name}/console",
            get(v::console_read).post(v::console_write),
        )
        .route("/api/v1/vms/{name}/{op}", post(v::action))
        .route("/api/v1/vms/{name}", get(v::show))
        .route("/api/v1/hosts", get(h::list))
        .route("/api/v1/hosts/token", post(h::token))
        .route(
            "/api/v1/hosts/{name}/enable-encryption",
            post(h::enable_encryption),
        )
        .route("/api/v1/hosts/{name}/reboot", post(h::reboot))
        .route("/api/v1/hosts/{name}", get(h::show).delete(h::remove))
        .route(
            "/api/v1/hosts/{name}/disable-encryption",
            post(h::disable_encryption),
        )
        .route("/api/v1/events", get(e::list))
        .route("/api/v1/events/stream", get(e::stream))
        .route("/api/v1/alarms", get(a::list))
        .route("/api/v1/alarms/{id}/ack", post(a::acknowledge))
        .route(
            "/api/v1/providers",
            get(providers::list).post(providers::add),
        )
        .route(
            "/api/v1/providers/{name}",
            get(providers::show).delete(providers::remove),
        )
        .route("/api/v1/providers/{name}/status", get(providers::status))
        .route(
            "/api/v1/providers/{name}/default",
            post(providers::set_default),
        )
        .route(
            "/api/v1/providers/{name}/certificate",
            post(providers::certificate),
        )
        .route(
            "/api/v1/openapi.json",
            get(|| async { Json(openapi::document()) }),
        )
        .route("/api/v1/login", post(users::login))
        .route("/api/v1/me", get(users::me))
        .route("/api/v1/logout", post(users::logout))
        .route(
            "/api/v1/users/{name}/password",
            axum::routing::put(users::set_password),
        )
        .route("/api/v1/me/lang", axum::routing::put(users::set_lang))
        .route(
            "/api/v1/users",
            get(users::list_users).post(users::add_user),
        )
        .route(
            "/api/v1/users/{name}",
            axum::routing::delete(users::remove_user),
        )
        .route("/api/v1/users/{name}/roles", post(users::grant))
        .route(
            "/api/v1/users/{name}/roles/{role}",
            axum::routing::delete(users::revoke),
        )
        .route(
            "/api/v1/roles",
            get(users::list_roles).post(users::put_role),
        )
        .route(
            "/api/v1/roles/{name}",
            get(users::show_role).delete(users::remove_role),
        )
        .route("/api/v1/tasks", get(tasks::list))
        .route("/api/v1/tasks/{id}", get(tasks::show))
        .route("/api/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/v1/settings", get(settings::list))
        .route(
            "/api/v1/settings/{key}",
            get(settings::get_one).put(settings::set),
        )
        .merge(crate::console::routes())
        .layer(axum::middleware::from_fn(access))
        .with_state(state)
}
