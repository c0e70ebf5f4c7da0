//! The REST API under `/api/v1`. Every request carries an API token (`Authorization: Bearer
//! …`); every operation checks its privilege. Errors are one JSON shape with a stable code.

use futures_util::StreamExt;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_api::requests::{
    AddDisk, CreateVm, CryptoRequest, RegisterRequest, TokenRequest, UnlockMany,
};
use tresor_api::ErrorCode;
use tresor_core::access::Privilege;
use tresor_core::protocol::VmReport;
use tresor_core::Lang;

pub mod openapi;
mod providers;
pub mod settings;
mod users;

use crate::agents::AgentHub;
use crate::engine::Engine;
use crate::enrol::Enroller;
use crate::store::{EventFilter, Store, StoreError, VmRecord};

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub engine: Arc<Engine>,
    pub hub: Arc<AgentHub>,
    pub enroller: Arc<Enroller>,
    pub broker: Arc<crate::broker::KeyBroker>,
    pub providers: Arc<crate::providers::Providers>,
    /// Sign-in limits and how long login tokens live.
    pub logins: Arc<crate::accounts::LoginGuard>,
}

/// An API error: an HTTP status, a stable code, and a message that says what to do; for the
/// messages an operator meets in the console, the same in German as well.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub message_de: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            message_de: None,
        }
    }

    /// The HTTP status, which the code decides.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The same message in German (answered as `messages.de` beside `message`).
    pub fn de(mut self, message: impl Into<String>) -> ApiError {
        self.message_de = Some(message.into());
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store failed");
        ApiError::new(
            ErrorCode::Storage,
            "The server cannot read or write its database; see its log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(de) = self.message_de {
            error["messages"] = json!({"en": self.message, "de": de});
        }
        (status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<crate::broker::BrokerError> for ApiError {
    fn from(e: crate::broker::BrokerError) -> ApiError {
        use crate::broker::BrokerError;
        let code = match &e {
            BrokerError::UnknownProvider(_) => ErrorCode::NotFound,
            BrokerError::Create { error, .. } if error.is_connection() => {
                ErrorCode::ProviderUnreachable
            }
            BrokerError::Create { .. } | BrokerError::Deactivate { .. } => ErrorCode::ProviderError,
        };
        ApiError::new(code, e.to_string())
    }
}

/// A JSON request body. Unlike axum's `Json`, a body that cannot be read is refused in the API's
/// one error shape (400, `badRequest`), saying what was wrong.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

fn body_error(r: axum::extract::rejection::JsonRejection) -> ApiError {
    ApiError::new(
        ErrorCode::BadRequest,
        format!(
            "The request body is not what this operation takes ({}); see /api/v1/openapi.json",
            r.body_text()
        ),
    )
}

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| ApiJson(v))
            .map_err(body_error)
    }
}

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
        <Json<T> as axum::extract::OptionalFromRequest<S>>::from_request(req, state)
            .await
            .map(|o| o.map(|Json(v)| ApiJson(v)))
            .map_err(body_error)
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

/// Writes the built-in roles (`Administrator`, `NoCryptoAdmin`, `ReadOnly`) with their current
/// privileges.
pub fn seed_roles(store: &Store) -> Result<(), StoreError> {
    for role in tresor_core::access::BuiltinRole::ALL {
        let privileges: Vec<String> = role
            .privileges()
            .iter()
            .map(|p| p.id().to_owned())
            .collect();
        store.put_role(role.name(), &privileges)?;
    }
    Ok(())
}

/// SHA-256 of a token, as stored.
pub fn token_hash(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    Ok(user)
}

/// The user a request comes from, if it may do `action` with `privilege`.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    privilege: Privilege,
    action: &str,
) -> Result<String, ApiError> {
    let user = authenticate(state, headers)?;
    let privileges = state.store.privileges_of(&user)?;
    if !privileges.iter().any(|p| p == privilege.id()) {
        let denied = tresor_core::access::Denied {
            user: user.clone(),
            action: action.into(),
            privilege,
        };
        return Err(ApiError::new(ErrorCode::Forbidden, denied.to_string()).de(denied.message_de()));
    }
    Ok(user)
}

/// A VM as the surface defines it (`tresor vm show NAME -o json`).
pub fn vm_json(record: &VmRecord) -> Value {
    serde_json::to_value(vm_view(record)).unwrap_or_default()
}

/// The same, as JSON text (the VM list renders tens of thousands of these, once per change).
pub fn vm_json_text(record: &VmRecord) -> String {
    serde_json::to_string(&vm_view(record)).unwrap_or_default()
}

/// A state name the store holds for a VM or host `object`, read back; one it does not know (it
/// writes only known ones) is logged and shown as `fallback`.
fn state_of<T: std::str::FromStr>(name: &str, object: &str, fallback: T) -> T {
    name.parse().unwrap_or_else(|_| {
        tracing::error!(%object, state = %name, "a stored state has an unknown name");
        fallback
    })
}

/// A VM as the API shows it: the registry's record and the host's last report.
pub fn vm_view(record: &VmRecord) -> tresor_api::views::Vm {
    use tresor_api::views::{ConnectionState, CryptoState, Disk, KeyId, PowerState, ProviderId};
    let report: Option<VmReport> = serde_json::from_str(&record.report).ok();
    let key = |k: &tresor_core::ids::KeyRef| KeyId {
        key_id: k.key_id.clone(),
        provider_id: ProviderId {
            id: k.provider().to_owned(),
        },
    };
    let disks = report
        .as_ref()
        .map(|r| {
            r.disks
                .iter()
                .map(|path| {
                    let file = std::path::Path::new(path)
                        .file_name()
                        .and_then(|f| f.to_str())
                        .unwrap_or_default();
                    let hk = r.keys.iter().find(|k| {
                        k.uses
                            .iter()
                            .any(|u| matches!(u, tresor_core::vm::KeyUse::Disk(p) if p == file))
                    });
                    Disk {
                        path: path.clone(),
                        key_id: hk.map(|k| key(&k.key)),
                        key_available: hk.map(|k| k.on_host).unwrap_or(true),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let name = &record.name;
    let crypto_state = state_of(&record.crypto_state, name, CryptoState::Locked);
    tresor_api::views::Vm {
        name: record.name.clone(),
        id: record.id.clone(),
        host: record.host.clone(),
        path: record.path.clone(),
        power_state: state_of(&record.power_state, name, PowerState::PoweredOff),
        connection_state: state_of(
            &record.connection_state,
            name,
            ConnectionState::Disconnected,
        ),
        crypto_state,
        lock_reason: record
            .lock_reason
            .as_deref()
            .filter(|_| crypto_state == CryptoState::Locked)
            .and_then(|r| r.parse().ok()),
        config: tresor_api::views::VmConfig {
            key_id: report.as_ref().and_then(|r| r.key_id.as_ref()).map(key),
        },
        disks,
    }
}

/// The VM list, answered from the store's memory with each VM's JSON rendered once per change
/// (the list is asked for often, by people and scripts, and can hold tens of thousands of VMs).
/// Filters: `locked`, `host`, `provider`; pages: `limit` and `offset`, with the number of VMs
/// that match in `X-Total-Count`.
async fn list_vms(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<VmQuery>,
) -> Result<axum::response::Response, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing VMs")?;
    if q.discovered.unwrap_or(false) {
        return Ok(Json(discovered_json(&s, q.host.as_deref())).into_response());
    }
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(usize::MAX));
    let (total, page) = s.store.select_vms(
        |r| {
            (!q.locked.unwrap_or(false) || r.crypto_state == "locked")
                && q.host.as_ref().is_none_or(|h| &r.host == h)
                && q.provider
                    .as_ref()
                    .is_none_or(|p| r.key_provider.as_ref() == Some(p))
        },
        offset,
        limit,
    );
    // Streamed in pieces from the snapshot taken above: the whole list of tens of thousands of
    // VMs is megabytes, and its first bytes leave before the last are copied. Each piece starts
    // with `[` (the first) or `,`, and the last ends with `]`.
    let length = 1
        + page
            .iter()
            .map(|v| v.rendered(vm_json_text).len() + 1)
            .sum::<usize>()
        + usize::from(page.is_empty());
    let pieces = page.len().div_ceil(LIST_PIECE).max(1);
    let body = futures_util::stream::iter(0..pieces).map(move |i| {
        let mut piece = Vec::with_capacity(64 * LIST_PIECE);
        let vms = page.iter().skip(i * LIST_PIECE).take(LIST_PIECE);
        for (j, v) in vms.enumerate() {
            piece.push(if i == 0 && j == 0 { b'[' } else { b',' });
            piece.extend_from_slice(v.rendered(vm_json_text).as_bytes());
        }
        if page.is_empty() {
            piece.push(b'[');
        }
        if i + 1 == pieces {
            piece.push(b']');
        }
        Ok::<_, std::convert::Infallible>(piece)
    });
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/json".to_owned(),
            ),
            (axum::http::header::CONTENT_LENGTH, length.to_string()),
            (
                axum::http::HeaderName::from_static("x-total-count"),
                total.to_string(),
            ),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// VMs per piece of the streamed VM list (about 32 KiB).
const LIST_PIECE: usize = 512;

/// The VMs hosts report that the registry does not hold as reported: what each is and why it
/// is not admitted.
fn discovered_json(s: &AppState, host: Option<&str>) -> Value {
    let vms: Vec<Value> = s
        .engine
        .discovered()
        .into_iter()
        .filter(|d| host.is_none_or(|h| d.host == h))
        .map(|d| {
            json!({
                "name": d.report.name,
                "id": d.report.id,
                "host": d.host,
                "path": d.report.path,
                "encrypted": d.report.encrypted,
                "powerState": d.report.power_state.as_str(),
                "config": {"keyId": d.report.key_id},
                "keyIds": d.report.keys.iter().map(|k| &k.key).collect::<Vec<_>>(),
                "discovered": true,
                "reason": d.reason,
                "message": format!("Not registered: {}", d.reason),
                "nextStep": format!(
                    "If it is yours: tresor vm register {} --host {} (needs Cryptographer.RegisterVM when its keys must be fetched)",
                    d.report.path, d.host
                ),
            })
        })
        .collect();
    Value::Array(vms)
}

#[derive(Debug, Deserialize)]
struct VmQuery {
    /// The VMs hosts report that the registry does not admit, instead of the registered ones.
    discovered: Option<bool>,
    locked: Option<bool>,
    host: Option<String>,
    provider: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

fn no_host(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("No host {name}; list them with `tresor host list`"),
    )
}

/// The provider asked for, or else the default one.
fn provider_or_default(s: &AppState, asked: Option<String>) -> Result<String, ApiError> {
    match asked {
        Some(p) => Ok(p),
        None => s
            .store
            .providers()?
            .into_iter()
            .find(|p| p.is_default)
            .map(|p| p.name)
            .ok_or_else(|| {
                ApiError::new(ErrorCode::NoProvider,
                    "No default key provider; add one with `tresor provider add`, or name one with --provider",
                )
            }),
    }
}

fn no_vm(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("No VM named {name}; list them with `tresor vm list`"),
    )
    .de(format!(
        "Es gibt keine VM namens {name}; `tresor vm list` zeigt alle"
    ))
}

async fn show_vm(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading a VM")?;
    let record = s.store.vm(&name)?.ok_or_else(|| {
        // A VM a host reports but the registry does not hold: say where it is.
        match s.engine.discovered().into_iter().find(|d| d.report.name == name) {
            Some(d) => ApiError::new(ErrorCode::NotRegistered,
                format!(
                    "VM {name} is not registered: host {} reports it in {} ({}); see `tresor vm list --discovered`, and register it if it is yours",
                    d.host, d.report.path, d.reason
                ),
            ),
            None => no_vm(&name),
        }
    })?;
    Ok(Json(vm_json(&record)))
}

#[derive(Deserialize)]
struct LangQuery {
    lang: Option<String>,
}

fn parse_lang(lang: Option<&str>) -> Result<Lang, ApiError> {
    lang.unwrap_or("en")
        .parse()
        .map_err(|m: String| ApiError::new(ErrorCode::BadRequest, m))
}

/// Walks the troubleshooting procedure for one VM: which case applies, the evidence, and the
/// next step.
async fn diagnose_vm(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<LangQuery>,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(&s, &headers, Privilege::SystemView, "Diagnosing a VM")?;
    let lang = parse_lang(q.lang.as_deref())?;
    let record = s.store.vm(&name)?.ok_or_else(|| no_vm(&name))?;
    let privileges = s.store.privileges_of(&user)?;
    let user_may_unlock = privileges
        .iter()
        .any(|p| p == Privilege::CryptoRegisterVm.id());
    let user_may_read_providers = privileges
        .iter()
        .any(|p| p == Privilege::CryptoReadKeyServersInfo.id());
    let view = s.engine.vm(&name);
    let (host_connected, verdict) = match &view {
        Some(v) => (v.host_connected, v.verdict.clone()),
        None => (false, None),
    };
    let encrypted = view.as_ref().is_some_and(|v| v.report.encrypted);
    let input = tresor_core::diagnose::DiagnoseInput {
        vm: name.clone(),
        host: view
            .as_ref()
            .map(|v| v.host.clone())
            .unwrap_or_else(|| record.host.clone()),
        host_connected,
        crypto_state: match (&verdict, encrypted) {
            (_, false) => tresor_core::vm::CryptoState::Unencrypted,
            (Some(v), true) => v.crypto_state,
            (None, true) => tresor_core::vm::CryptoState::Unlocked,
        },
        lock_reason: verdict.as_ref().and_then(|v| v.lock_reason),
        missing: verdict
            .as_ref()
            .map(|v| {
                v.missing
                    .iter()
                    .map(|k| tresor_core::diagnose::MissingKey {
                        key_id: k.key.key_id.clone(),
                        provider: k.key.provider().to_owned(),
                        uses: k.uses.clone(),
                        answer: k.provider.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        user_may_unlock,
    };
    let providers: std::collections::BTreeSet<String> =
        input.missing.iter().map(|k| k.provider.clone()).collect();
    let diagnosis = tresor_core::diagnose::diagnose(&input, lang);
    let mut v = serde_json::to_value(diagnosis).unwrap_or(Value::Null);
    // Each provider involved (endpoints, certificates), only for those who may read providers:
    // as last probed when that is a few seconds old, else probed now (and so at most once in
    // that time, however often diagnoses are asked for).
    if user_may_read_providers {
        let mut statuses = serde_json::Map::new();
        for p in providers {
            let cached = s
                .providers
                .last_status(&p)
                .filter(|st| crate::enrol::now() - st.checked_at <= FRESH_STATUS_SECS);
            let status = match cached {
                Some(st) => Some(st),
                None => match s.providers.probe(&p).await {
                    Ok(st) => Some(st),
                    Err(_) => s.providers.last_status(&p),
                },
            };
            if let Some(st) = status {
                statuses.insert(p, serde_json::to_value(st).unwrap_or_default());
            }
        }
        v["providerStatus"] = Value::Object(statuses);
    }
    Ok(Json(v))
}

/// How old a provider's status may be for a diagnosis to show it without probing again.
const FRESH_STATUS_SECS: i64 = 5;

async fn unlock_vm(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterVm,
        &format!("Unlocking VM {name}"),
    )?;
    let record = s.store.vm(&name)?.ok_or_else(|| no_vm(&name))?;
    let (requested, failed) = request_unlocks(&s, &user, vec![record]).await?;
    if let Some(f) = failed.into_iter().next() {
        return Err(f.error);
    }
    Ok(Json(
        json!({"vm": name, "unlock": if requested.is_empty() { "nothing to do" } else { "requested" }}),
    ))
}

/// An unlock that cannot be done now, and why.
struct UnlockFailure {
    vm: String,
    key: tresor_core::ids::KeyRef,
    error: ApiError,
}

/// Asks the providers now for the keys the VMs' hosts lack. The VMs whose keys are all there are
/// unlocked (the engine pushes them, the material already at hand); for the others the unlock
/// fails at once, with the provider's answer, and is over (nothing stays pending to happen later
/// by itself). Each outcome is audited.
async fn request_unlocks(
    s: &AppState,
    user: &str,
    vms: Vec<VmRecord>,
) -> Result<(Vec<String>, Vec<UnlockFailure>), ApiError> {
    use tresor_core::vm::ProviderAnswer;
    let mut missing: std::collections::BTreeMap<String, Vec<tresor_core::ids::KeyRef>> =
        Default::default();
    let mut wanted: std::collections::BTreeSet<tresor_core::ids::KeyRef> = Default::default();
    for vm in &vms {
        let keys = s.engine.missing_keys(&vm.name);
        wanted.extend(keys.iter().cloned());
        missing.insert(vm.name.clone(), keys);
    }
    // Many keys of one provider per request.
    let mut by_provider: std::collections::BTreeMap<String, Vec<tresor_core::ids::KeyRef>> =
        Default::default();
    for k in wanted {
        by_provider
            .entry(k.provider().to_owned())
            .or_default()
            .push(k);
    }
    let mut answers: std::collections::HashMap<tresor_core::ids::KeyRef, ProviderAnswer> =
        Default::default();
    let mut materials: std::collections::HashMap<
        tresor_core::ids::KeyRef,
        tresor_core::protocol::SecretBytes,
    > = Default::default();
    for (provider, keys) in by_provider {
        for chunk in keys.chunks(32) {
            let got = s.broker.fetch_many(&provider, chunk).await;
            for (key, (answer, material)) in chunk.iter().zip(got) {
                answers.insert(key.clone(), answer);
                if let Some(m) = material {
                    materials.insert(key.clone(), m);
                }
            }
        }
    }
    let mut requested = Vec::new();
    let mut failed = Vec::new();
    for vm in vms {
        let keys = missing.remove(&vm.name).unwrap_or_default();
        let bad = keys.iter().find_map(|k| match answers.get(k) {
            Some(ProviderAnswer::Active) | None => None,
            Some(a) => Some((k.clone(), a.clone())),
        });
        match bad {
            None => {
                if !keys.is_empty() {
                    // The engine pushes with the material at hand.
                    for k in &keys {
                        let material = materials.remove(k);
                        if material.is_some() {
                            s.engine.take_answer(k, ProviderAnswer::Active, material);
                        }
                    }
                    s.engine.request_unlock(&vm.name, user);
                    requested.push(vm.name.clone());
                    audit_unlock(s, user, &vm)?;
                }
            }
            Some((key, answer)) => {
                let p = key.provider();
                let (code, why, why_de) = match &answer {
                    ProviderAnswer::Unreachable(e) => (ErrorCode::ProviderUnreachable,
                        format!("key provider {p} cannot be reached ({e}; kmsClusterError)"),
                        format!("der Schlüsselanbieter {p} ist nicht erreichbar ({e}; kmsClusterError)"),
                    ),
                    ProviderAnswer::PermissionDenied(e) => (ErrorCode::ProviderRefused,
                        format!("key provider {p} refuses the server ({e}; kmsClusterError)"),
                        format!("der Schlüsselanbieter {p} weist den Server ab ({e}; kmsClusterError)"),
                    ),
                    ProviderAnswer::NotFound => (ErrorCode::KeyMissingOnKms,
                        format!("key {key} is not on the provider (keyMissingOnKms)"),
                        format!("Schlüssel {key} ist nicht auf dem Anbieter (keyMissingOnKms)"),
                    ),
                    ProviderAnswer::NotActive(state) => (ErrorCode::KeyMissingOnKms,
                        format!("key {key} is {state} on the provider (keyMissingOnKms); its administrator reactivates it"),
                        format!("Schlüssel {key} ist auf dem Anbieter {state} (keyMissingOnKms); dessen Administrator aktiviert ihn wieder"),
                    ),
                    _ => (ErrorCode::ProviderError,
                        format!("{answer:?}"),
                        format!("{answer:?}"),
                    ),
                };
                s.store.add_event(&crate::store::EventRow {
                    id: 0,
                    time: crate::enrol::now(),
                    event_type: tresor_core::events::CRYPTO_OPERATION_FAILED.id.into(),
                    severity: "warning".into(),
                    vm: Some(vm.name.clone()),
                    host: None,
                    provider: Some(key.provider().into()),
                    user: Some(user.into()),
                    args: vec![
                        ("user".into(), user.into()),
                        ("operation".into(), "unlock".into()),
                        ("key".into(), key.key_id.clone()),
                        ("error".into(), why.clone()),
                    ],
                })?;
                s.engine.take_answer(&key, answer.clone(), None);
                let error = ApiError::new(
                    code,
                    format!(
                        "Cannot unlock VM {}: {why}. Nothing was changed; run `tresor vm diagnose {}` for the way forward",
                        vm.name, vm.name
                    ),
                )
                .de(format!(
                    "VM {} kann nicht entsperrt werden: {why_de}. Nichts wurde geändert; `tresor vm diagnose {}` zeigt den Weg",
                    vm.name, vm.name
                ));
                failed.push(UnlockFailure {
                    vm: vm.name.clone(),
                    key,
                    error,
                });
            }
        }
    }
    // Material no requested VM needs is dropped (and wiped) here.
    drop(materials);
    Ok((requested, failed))
}

/// The audit record of an unlock a person asked for (the VM's key names it).
fn audit_unlock(s: &AppState, user: &str, record: &VmRecord) -> Result<(), ApiError> {
    if let (Some(p), Some(id)) = (&record.key_provider, &record.key_id) {
        record_crypto(
            s,
            user,
            "unlock",
            &record.name,
            &tresor_core::ids::KeyRef::new(p, id),
        )?;
    }
    Ok(())
}

/// Whether a VM needs a key of `provider` (its own KEK or a disk's).
fn uses_provider(vm: &VmRecord, provider: &str) -> bool {
    if vm.key_provider.as_deref() == Some(provider) {
        return true;
    }
    serde_json::from_str::<VmReport>(&vm.report)
        .map(|r| r.keys.iter().any(|k| k.key.provider() == provider))
        .unwrap_or(false)
}

/// Asks for many VMs to be unlocked: named ones, every locked one, the locked ones of a host, or
/// those whose keys come from a provider. The answer names the VMs asked for; the client follows
/// their state for progress.
async fn unlock_many(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Option<ApiJson<UnlockMany>>,
) -> Result<Json<Value>, ApiError> {
    let req = body.map(|b| b.0).unwrap_or_default();
    let selectors = usize::from(!req.names.is_empty())
        + usize::from(req.all)
        + usize::from(req.host.is_some())
        + usize::from(req.provider.is_some());
    if selectors != 1 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "Say which VMs to unlock: names, all, a host or a provider (exactly one of them)",
        ));
    }
    let what = if req.all {
        "Unlocking every locked VM".to_owned()
    } else if let Some(h) = &req.host {
        format!("Unlocking the VMs of host {h}")
    } else if let Some(p) = &req.provider {
        format!("Unlocking the VMs with keys of provider {p}")
    } else {
        format!("Unlocking VM {}", req.names.join(", "))
    };
    let user = authorize(&s, &headers, Privilege::CryptoRegisterVm, &what)?;
    let vms: Vec<VmRecord> = if !req.names.is_empty() {
        let mut v = Vec::new();
        for n in &req.names {
            v.push(s.store.vm(n)?.ok_or_else(|| no_vm(n))?);
        }
        v
    } else {
        if let Some(h) = &req.host {
            if !s.store.hosts()?.iter().any(|x| &x.name == h) {
                return Err(no_host(h));
            }
        }
        if let Some(p) = &req.provider {
            if s.store.provider(p)?.is_none() {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("No key provider {p}; list them with `tresor provider list`"),
                ));
            }
        }
        s.store
            .locked_vms()?
            .into_iter()
            .filter(|v| req.host.as_ref().is_none_or(|h| &v.host == h))
            .filter(|v| req.provider.as_ref().is_none_or(|p| uses_provider(v, p)))
            .collect()
    };
    let (requested, failed) = request_unlocks(&s, &user, vms).await?;
    let failed: Vec<Value> = failed
        .into_iter()
        .map(|f| {
            json!({"vm": f.vm, "keyId": f.key, "code": f.error.code, "message": f.error.message})
        })
        .collect();
    Ok(Json(json!({"requested": requested, "failed": failed})))
}

async fn host_token(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Option<ApiJson<TokenRequest>>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterHost,
        "Creating a join token",
    )?;
    let req = body.map(|b| b.0).unwrap_or_default();
    let ttl = req.ttl_secs.unwrap_or(3600).clamp(60, 7 * 86400);
    if let Some(h) = &req.host {
        check_name(tresor_core::ids::NameKind::Host, h)?;
    }
    if req.replace && req.host.is_none() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "Replacing a host needs its name: tresor host token --host NAME --replace",
        ));
    }
    let grant = crate::store::JoinGrant {
        host: req.host.clone(),
        replace: req.replace,
    };
    let token = s.enroller.new_token(ttl, &grant)?;
    Ok(Json(
        json!({"token": token, "ttlSecs": ttl, "host": req.host, "replace": req.replace}),
    ))
}

/// `DELETE /api/v1/hosts/{name}`: the host is forgotten and its certificate refused from now
/// on; its session ends. Its VMs stay registered (shown disconnected) until unregistered.
async fn remove_host(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(host): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterHost,
        &format!("Removing host {host}"),
    )?;
    if !s.store.remove_host(&host)? {
        return Err(no_host(&host));
    }
    s.hub.disconnect(&host);
    s.store.add_event(&crate::store::EventRow {
        id: 0,
        time: crate::enrol::now(),
        event_type: tresor_core::events::HOST_REMOVED.id.into(),
        severity: "warning".into(),
        vm: None,
        host: Some(host.clone()),
        provider: None,
        user: Some(user.clone()),
        args: vec![("host".into(), host.clone()), ("user".into(), user)],
    })?;
    Ok(Json(json!({"host": host, "removed": true})))
}

async fn list_hosts(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing hosts")?;
    Ok(Json(
        serde_json::to_value(host_views(&s)?).unwrap_or_default(),
    ))
}

/// One host, with its VMs.
async fn show_host(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading a host")?;
    let host = host_views(&s)?
        .into_iter()
        .find(|h| h.name == name)
        .ok_or_else(|| no_host(&name))?;
    let vms = s
        .store
        .vms()?
        .iter()
        .filter(|v| v.host == name)
        .map(vm_view)
        .collect();
    let host = tresor_api::views::HostWithVms { host, vms };
    Ok(Json(serde_json::to_value(host).unwrap_or_default()))
}

/// Takes a host out of encryption mode; the mode ends when the host restarts.
async fn disable_encryption(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(host): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterHost,
        &format!("Disabling encryption on host {host}"),
    )?;
    let mut record = s
        .store
        .hosts()?
        .into_iter()
        .find(|h| h.name == host)
        .ok_or_else(|| no_host(&host))?;
    reply_error(
        s.hub
            .request(
                &host,
                tresor_core::protocol::Command::DisableEncryption,
                AGENT_TIMEOUT,
            )
            .await
            .map_err(agent_error)?,
    )?;
    record.crypto_state = "pendingIncapable".into();
    s.store.put_host(&record)?;
    s.store.add_event(&crate::store::EventRow {
        id: 0,
        time: crate::enrol::now(),
        event_type: tresor_core::events::HOST_CRYPTO_DISABLED.id.into(),
        severity: "info".into(),
        vm: None,
        host: Some(host.clone()),
        provider: None,
        user: Some(user),
        args: vec![("host".into(), host.clone())],
    })?;
    Ok(Json(
        json!({"host": host, "cryptoState": "pendingIncapable"}),
    ))
}

/// The hosts as the API shows them.
fn host_views(s: &AppState) -> Result<Vec<tresor_api::views::Host>, ApiError> {
    let connected = s.hub.connected();
    // One pass over the VMs, not one per host: there may be thousands of each.
    let mut counts: std::collections::HashMap<&str, (usize, usize)> = Default::default();
    let vms = s.store.stored_vms();
    for v in &vms {
        let c = counts.entry(v.record.host.as_str()).or_default();
        c.0 += 1;
        if v.record.crypto_state == "locked" {
            c.1 += 1;
        }
    }
    // The keys its VMs report as held (the host key comes on top in encryption mode).
    let held = s.engine.keys_held_by_host();
    let hosts = s
        .store
        .hosts()?
        .into_iter()
        .map(|h| {
            let (vm_count, locked) = counts.get(h.name.as_str()).copied().unwrap_or_default();
            tresor_api::views::Host {
                connected: connected.contains(&h.name),
                crypto_state: state_of(
                    &h.crypto_state,
                    &h.name,
                    tresor_api::views::HostCryptoState::Incapable,
                ),
                vm_count: vm_count as u64,
                locked_vm_count: locked as u64,
                keys_held: held.get(&h.name).copied().unwrap_or(0) as u64,
                last_seen: h.last_seen,
                name: h.name,
            }
        })
        .collect();
    Ok(hosts)
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    vm: Option<String>,
    host: Option<String>,
    provider: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    since: Option<i64>,
    after: Option<i64>,
    limit: Option<u32>,
    lang: Option<String>,
}

async fn list_events(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing events")?;
    let lang = parse_lang(q.lang.as_deref())?;
    let filter = EventFilter {
        vm: q.vm,
        host: q.host,
        provider: q.provider,
        event_type: q.event_type,
        since: q.since,
        after_id: q.after,
        limit: q.limit,
    };
    let events: Vec<Value> = s
        .store
        .events(&filter)?
        .iter()
        .map(|e| event_json(e, lang))
        .collect();
    Ok(Json(Value::Array(events)))
}

/// An event as the API gives it, its message in `lang`.
fn event_json(e: &crate::store::EventRow, lang: Lang) -> Value {
    serde_json::to_value(event_view(e, lang)).unwrap_or_default()
}

/// An event as the API shows it, its message in `lang`.
fn event_view(e: &crate::store::EventRow, lang: Lang) -> tresor_api::views::Event {
    let args: Vec<(&str, &str)> = e
        .args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let message = tresor_core::events::by_id(&e.event_type)
        .map(|t| tresor_core::events::render(t, lang, &args))
        .unwrap_or_default();
    tresor_api::views::Event {
        id: e.id,
        time: e.time,
        event_type: e.event_type.clone(),
        severity: e.severity.clone(),
        vm: e.vm.clone(),
        host: e.host.clone(),
        provider: e.provider.clone(),
        user: e.user.clone(),
        message,
    }
}

/// `GET /api/v1/events/stream`: the events as they happen (Server-Sent Events), from the one
/// after `after` (or from now), filtered like the list. Browsers reconnect with
/// `Last-Event-ID`, which is honoured.
async fn stream_events(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    authorize(&s, &headers, Privilege::SystemView, "Following events")?;
    let lang = parse_lang(q.lang.as_deref())?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let start = match resume.or(q.after) {
        Some(a) => a,
        None => s.store.last_event_id()?,
    };
    let filter = EventFilter {
        vm: q.vm,
        host: q.host,
        provider: q.provider,
        event_type: q.event_type,
        since: q.since,
        after_id: Some(start),
        limit: Some(500),
    };
    let store = s.store.clone();
    let stream = futures_util::stream::unfold(
        (store, filter, std::collections::VecDeque::new()),
        move |(store, mut filter, mut queue)| async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    let e: crate::store::EventRow = e;
                    let event = Event::default()
                        .id(e.id.to_string())
                        .event("event")
                        .data(event_json(&e, lang).to_string());
                    return Some((
                        Ok::<_, std::convert::Infallible>(event),
                        (store, filter, queue),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                match store.events(&filter) {
                    Ok(rows) => {
                        if let Some(last) = rows.last() {
                            filter.after_id = Some(last.id);
                        }
                        queue.extend(rows);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read events for a stream");
                        return None;
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn list_alarms(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing alarms")?;
    let alarms: Vec<Value> = s.store.alarms(true)?.iter().map(alarm_json).collect();
    Ok(Json(Value::Array(alarms)))
}

/// An alarm with what it means and what to do about it.
fn alarm_json(a: &crate::store::AlarmRow) -> Value {
    serde_json::to_value(alarm_view(a)).unwrap_or_default()
}

/// An alarm as the API shows it.
fn alarm_view(a: &crate::store::AlarmRow) -> tresor_api::views::Alarm {
    let (what, name) = a.object.split_once(':').unwrap_or(("", a.object.as_str()));
    let (message, next) = match (a.kind.as_str(), what) {
        ("vm.locked", _) => (
            format!("VM {name} is locked ({})", a.reason),
            format!("Run `tresor vm diagnose {name}` and follow its next step"),
        ),
        ("provider.unreachable", _) => (
            format!("Key provider {name} cannot be reached: {}", a.reason),
            format!("Check the provider and the network to it; `tresor provider status {name}` probes it again"),
        ),
        ("key.push.failed", _) => (
            format!("The keys of VM {name} {}", a.reason),
            format!("Check host connectivity and its agent's log; the server tries again. `tresor vm diagnose {name}`"),
        ),
        ("vm.operation.failing", _) => (
            format!("An interrupted operation on VM {name} keeps failing: {}", a.reason),
            format!("Read host's agent log for VM {name}; the agent keeps trying, and the alarm clears when it succeeds"),
        ),
        ("vm.discovered", _) => {
            let host = name.split('/').next().unwrap_or(name);
            (
                format!("Host {host} reports a VM the server has not registered: {}", a.reason),
                format!("Check host {host}; if the VM is yours, register it (`tresor vm list --discovered` shows its folder)"),
            )
        }
        ("provider.certificate.expiring", _) => {
            let provider = name.split(':').next().unwrap_or(name);
            (
                format!("Key provider {provider}: {}", a.reason),
                format!("Renew the certificate, then remove and add provider {provider} again with the new one"),
            )
        }
        _ => (a.reason.clone(), String::new()),
    };
    tresor_api::views::Alarm {
        id: a.id,
        kind: a.kind.clone(),
        object: a.object.clone(),
        reason: a.reason.clone(),
        raised: a.raised,
        cleared: a.cleared,
        acknowledged_by: a.acknowledged_by.clone(),
        message,
        next_step: next,
    }
}

async fn ack_alarm(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::AlarmAcknowledge,
        "Acknowledging an alarm",
    )?;
    if !s.store.acknowledge_alarm(id, &user)? {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("No alarm {id}; list them with `tresor alarm list`"),
        ));
    }
    Ok(Json(json!({"alarm": id, "acknowledgedBy": user})))
}

fn agent_error(e: crate::agents::HubError) -> ApiError {
    ApiError::new(ErrorCode::HostUnavailable, e.to_string())
}

fn reply_error(
    reply: tresor_core::protocol::Reply,
) -> Result<tresor_core::protocol::Reply, ApiError> {
    match reply {
        tresor_core::protocol::Reply::Failed { code, message } => {
            // What the host says of itself keeps its meaning; anything else it refused is its
            // own reason.
            let code = match code.as_str() {
                "noSuchVm" => ErrorCode::NotFound,
                "exists" => ErrorCode::Exists,
                _ => ErrorCode::HostRefused,
            };
            Err(ApiError::new(code, message))
        }
        other => Ok(other),
    }
}

const AGENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A key's material from its provider, for a push that follows at once; `what` names it in the
/// error ("new key", "host key").
async fn fetch_key(
    s: &AppState,
    key: tresor_core::ids::KeyRef,
    what: &str,
) -> Result<tresor_core::protocol::KeyMaterial, ApiError> {
    let (answer, material) = s.broker.fetch(&key).await;
    let material = material.ok_or_else(|| {
        ApiError::new(
            ErrorCode::ProviderError,
            format!("The {what} {key} cannot be fetched: {answer:?}"),
        )
    })?;
    Ok(tresor_core::protocol::KeyMaterial { key, material })
}

/// A new KEK on `provider` for `purpose`, with its material.
async fn new_key(
    s: &AppState,
    provider: &str,
    purpose: &str,
) -> Result<tresor_core::protocol::KeyMaterial, ApiError> {
    let key = s.broker.create_kek(provider, purpose).await?;
    fetch_key(s, key, "new key").await
}

/// Sends keys to a host and waits until it holds them.
async fn push_keys(
    s: &AppState,
    host: &str,
    keys: Vec<tresor_core::protocol::KeyMaterial>,
) -> Result<(), ApiError> {
    reply_error(
        s.hub
            .request(
                host,
                tresor_core::protocol::Command::PushKeys { keys },
                AGENT_TIMEOUT,
            )
            .await
            .map_err(agent_error)?,
    )?;
    Ok(())
}

async fn create_vm(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateVm>,
) -> Result<Json<Value>, ApiError> {
    let privilege = if req.encrypt {
        Privilege::CryptoEncryptNew
    } else {
        Privilege::VmCreate
    };
    let user = authorize(
        &s,
        &headers,
        privilege,
        &format!("Creating VM {}", req.name),
    )?;
    check_name(tresor_core::ids::NameKind::Vm, &req.name)?;
    check_name(tresor_core::ids::NameKind::Host, &req.host)?;
    let all_disks: Vec<u64> = req
        .disks
        .iter()
        .chain(&req.own_key_disks)
        .copied()
        .collect();
    tresor_core::protocol::check_shape(0, &all_disks, Some(req.memory_mib)).map_err(bad_shape)?;
    if !req.own_key_disks.is_empty() && !req.encrypt {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "Disks with a key of their own need an encrypted VM; add --encrypt",
        ));
    }
    // What can be checked is checked before a key is made on the provider.
    if !s.hub.connected().contains(&req.host) {
        return Err(if s.store.hosts()?.iter().any(|h| h.name == req.host) {
            ApiError::new(
                ErrorCode::HostUnavailable,
                format!(
                    "Host {} is not connected; start its agent and try again",
                    req.host
                ),
            )
        } else {
            no_host(&req.host)
        });
    }
    if let Some(other) = s.engine.registration(&req.name) {
        return Err(ApiError::new(
            ErrorCode::Exists,
            format!(
                "A VM named {} is registered already (on host {})",
                req.name, other.host
            ),
        ));
    }
    // The registry decides the VM's id and keys before the host makes anything.
    let id = new_vm_id()?;
    let mut own_keys = Vec::new();
    let mut created: Vec<tresor_core::ids::KeyRef> = Vec::new();
    let key = if req.encrypt {
        let provider = provider_or_default(&s, req.provider.clone())?;
        let mut purposes = vec![req.name.clone()];
        for i in 0..req.own_key_disks.len() {
            purposes.push(format!("{}-disk{}", req.name, req.disks.len() + i));
        }
        let mut keys = Vec::new();
        for purpose in purposes {
            match new_key(&s, &provider, &purpose).await {
                Ok(k) => keys.push(k),
                Err(e) => {
                    let made: Vec<_> = keys.iter().map(|k| k.key.clone()).collect();
                    retire_keys(&s, &user, Audited::Vm(&req.name), &made).await;
                    return Err(e);
                }
            }
        }
        let refs: Vec<tresor_core::ids::KeyRef> = keys.iter().map(|k| k.key.clone()).collect();
        created = refs.clone();
        if let Err(e) = register_vm(&s, &id, &req.name, &req.host, refs.iter().cloned()) {
            retire_keys(&s, &user, Audited::Vm(&req.name), &refs).await;
            return Err(e);
        }
        if let Err(e) = push_keys(&s, &req.host, keys).await {
            s.engine.forget(&req.name);
            s.store.remove_vm(&req.name)?;
            retire_keys(&s, &user, Audited::Vm(&req.name), &refs).await;
            return Err(e);
        }
        own_keys = refs[1..].to_vec();
        Some(refs[0].clone())
    } else {
        register_vm(&s, &id, &req.name, &req.host, [])?;
        None
    };
    let spec = tresor_core::protocol::VmSpec {
        id: Some(id),
        name: req.name.clone(),
        memory_mib: req.memory_mib,
        vcpus: 1,
        disks: req
            .disks
            .iter()
            .map(|size| tresor_core::protocol::DiskSpec {
                size: *size,
                own_key: None,
            })
            .chain(req.own_key_disks.iter().zip(&own_keys).map(|(size, k)| {
                tresor_core::protocol::DiskSpec {
                    size: *size,
                    own_key: Some(k.clone()),
                }
            }))
            .collect(),
        key: key.clone(),
    };
    let reply = s
        .hub
        .request(
            &req.host,
            tresor_core::protocol::Command::CreateVm { spec },
            AGENT_TIMEOUT,
        )
        .await
        .map_err(agent_error)
        .and_then(reply_error);
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            // Nothing was made: the registration and the new keys go again.
            s.engine.forget(&req.name);
            s.store.remove_vm(&req.name)?;
            retire_keys(&s, &user, Audited::Vm(&req.name), &created).await;
            return Err(e);
        }
    };
    if let Some(k) = &key {
        record_crypto(&s, &user, "create-encrypted", &req.name, k)?;
    }
    let tresor_core::protocol::Reply::Vm { vm } = reply else {
        return Err(ApiError::new(
            ErrorCode::HostRefused,
            "The host did not report the new VM",
        ));
    };
    s.engine.observe_report(&req.host, Arc::new(vm));
    s.engine.tick().await;
    let record = s.store.vm(&req.name)?.ok_or_else(|| no_vm(&req.name))?;
    Ok(Json(vm_json(&record)))
}

/// Refuses a name that could become a path, an option or a line break (400, `badName`).
pub(crate) fn check_name(kind: tresor_core::ids::NameKind, name: &str) -> Result<(), ApiError> {
    tresor_core::ids::check_name(kind, name)
        .map_err(|e| ApiError::new(ErrorCode::BadName, e.to_string()))
}

/// A key made for a VM's operation that failed: no longer allowed to the VM, forgotten by its
/// host (if it got there), and deactivated on its provider.
async fn disown_key(
    s: &AppState,
    user: &str,
    vm: &str,
    host: &str,
    key: &tresor_core::ids::KeyRef,
) {
    if let Some(mut reg) = s.engine.registration(vm) {
        reg.keys.retain(|k| k != key);
        if let Err(e) = s.engine.register(reg) {
            tracing::error!(%vm, key = %key, error = %e, "cannot take an unused key from the registry");
        }
    }
    let forget = tresor_core::protocol::Command::ForgetKeys {
        keys: vec![key.clone()],
    };
    if let Err(e) = s.hub.request(host, forget, AGENT_TIMEOUT).await {
        tracing::warn!(%host, key = %key, error = %e, "the host could not be told to forget an unused key");
    }
    retire_keys(s, user, Audited::Vm(vm), std::slice::from_ref(key)).await;
}

/// Deactivates keys the server made for an operation that failed, each audited; a key that
/// cannot be deactivated is named in the log and an alarm, so that nothing Active is forgotten.
async fn retire_keys(
    s: &AppState,
    user: &str,
    made_for: Audited<'_>,
    keys: &[tresor_core::ids::KeyRef],
) {
    for key in keys {
        let result = s
            .broker
            .deactivate(
                key,
                &format!("tresor: the operation on {made_for} that made it failed"),
            )
            .await;
        match result {
            Ok(()) => {
                let _ = crypto_event(s, user, "deactivate unused key", made_for, key);
            }
            Err(e) => {
                tracing::error!(%made_for, key = %key, error = %e, "a key made for a failed operation is still Active");
                let _ = s.store.raise_alarm(
                    "key.orphaned",
                    &format!("provider:{}/{}", key.provider(), key.key_id),
                    &e.to_string(),
                    crate::enrol::now(),
                );
            }
        }
    }
}

fn bad_shape(e: tresor_core::protocol::ShapeError) -> ApiError {
    ApiError::new(ErrorCode::BadShape, e.to_string())
}

/// A new VM id, chosen by the server.
fn new_vm_id() -> Result<String, ApiError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).map_err(|_| {
        ApiError::new(
            ErrorCode::Internal,
            "The system's random number generator failed; try again",
        )
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Registers a VM with these keys (written before the answer), unless the registry refuses it.
fn register_vm(
    s: &AppState,
    id: &str,
    name: &str,
    host: &str,
    keys: impl IntoIterator<Item = tresor_core::ids::KeyRef>,
) -> Result<(), ApiError> {
    let reg = tresor_core::registry::Registration {
        id: id.to_owned(),
        name: name.to_owned(),
        host: host.to_owned(),
        keys: keys.into_iter().collect(),
    };
    admit(s, reg)
}

/// Adds a registration (or changes one) after the registry's checks.
fn admit(s: &AppState, reg: tresor_core::registry::Registration) -> Result<(), ApiError> {
    s.engine
        .check_registration(&reg)
        .map_err(|c| ApiError::new(ErrorCode::RegistryConflict, c.to_string()))?;
    s.engine.register(reg)?;
    Ok(())
}

/// Lets a registered VM use one more key (a new key of the server's, before it is pushed).
fn allow_key(s: &AppState, vm: &str, key: &tresor_core::ids::KeyRef) -> Result<(), ApiError> {
    let mut reg = s.engine.registration(vm).ok_or_else(|| no_vm(vm))?;
    reg.keys.insert(key.clone());
    s.engine.register(reg)?;
    Ok(())
}

/// After an operation the server started, a VM keeps only the keys its host still names (the
/// registry never gains a key from what a host says).
fn settle_keys(s: &AppState, report: &VmReport) -> Result<(), ApiError> {
    let Some(mut reg) = s.engine.registration(&report.name) else {
        return Ok(());
    };
    let named: std::collections::BTreeSet<_> = report.keys.iter().map(|k| &k.key).collect();
    let before = reg.keys.len();
    reg.keys.retain(|k| named.contains(k));
    if reg.keys.len() != before {
        s.engine.register(reg)?;
    }
    Ok(())
}

/// What a cryptographic operation was done on, for its audit record.
#[derive(Clone, Copy, Debug)]
enum Audited<'a> {
    Vm(&'a str),
    Host(&'a str),
}

impl std::fmt::Display for Audited<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Audited::Vm(n) => write!(f, "VM {n}"),
            Audited::Host(n) => write!(f, "host {n}"),
        }
    }
}

/// The audit record of a cryptographic operation on a VM.
fn record_crypto(
    s: &AppState,
    user: &str,
    operation: &str,
    vm: &str,
    key: &tresor_core::ids::KeyRef,
) -> Result<(), ApiError> {
    crypto_event(s, user, operation, Audited::Vm(vm), key)
}

/// The audit record of a cryptographic operation on a VM or a host.
fn crypto_event(
    s: &AppState,
    user: &str,
    operation: &str,
    on: Audited<'_>,
    key: &tresor_core::ids::KeyRef,
) -> Result<(), ApiError> {
    let (vm, host) = match on {
        Audited::Vm(v) => (Some(v.to_owned()), None),
        Audited::Host(h) => (None, Some(h.to_owned())),
    };
    s.store.add_event(&crate::store::EventRow {
        id: 0,
        time: crate::enrol::now(),
        event_type: tresor_core::events::CRYPTO_OPERATION.id.into(),
        severity: "info".into(),
        vm,
        host,
        provider: Some(key.provider().into()),
        user: Some(user.into()),
        args: vec![
            ("user".into(), user.into()),
            ("operation".into(), operation.into()),
            ("key".into(), key.key_id.clone()),
        ],
    })?;
    Ok(())
}

async fn power(
    s: &AppState,
    headers: &HeaderMap,
    name: &str,
    on: bool,
) -> Result<Json<Value>, ApiError> {
    let (privilege, op) = if on {
        (Privilege::VmPowerOn, tresor_core::ops::VmOp::PowerOn)
    } else {
        (Privilege::VmPowerOff, tresor_core::ops::VmOp::PowerOff)
    };
    authorize(
        s,
        headers,
        privilege,
        &format!("Powering VM {name} {}", if on { "on" } else { "off" }),
    )?;
    let record = s.store.vm(name)?.ok_or_else(|| no_vm(name))?;
    let (state, reason) = lock_of(&record);
    tresor_core::ops::check(name, op, state, reason).map_err(|r| {
        // Only a disk's key missing (the VM itself is readable): the disk's exact message first.
        let disk = vm_json(&record)["disks"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["keyAvailable"] == false).cloned());
        match disk.and_then(|d| d["path"].as_str().map(str::to_owned)) {
            Some(path) if on && record.connection_state != "invalid" => ApiError::new(
                ErrorCode::DiskKeyMissing,
                format!(
                    "{} {}",
                    tresor_core::ops::disk_key_missing(&path, Lang::En),
                    r.message
                ),
            )
            .de(format!(
                "{} {}",
                tresor_core::ops::disk_key_missing(&path, Lang::De),
                r.message_de
            )),
            _ => ApiError::new(ErrorCode::VmLocked, r.message).de(r.message_de),
        }
    })?;
    let command = if on {
        tresor_core::protocol::Command::PowerOn { vm: name.into() }
    } else {
        tresor_core::protocol::Command::PowerOff { vm: name.into() }
    };
    reply_error(
        s.hub
            .request(&record.host, command, AGENT_TIMEOUT)
            .await
            .map_err(agent_error)?,
    )?;
    Ok(Json(
        json!({"vm": name, "powerState": if on { "poweredOn" } else { "poweredOff" }}),
    ))
}

async fn enable_encryption(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(host): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterHost,
        &format!("Enabling encryption on host {host}"),
    )?;
    let mut record = s
        .store
        .hosts()?
        .into_iter()
        .find(|h| h.name == host)
        .ok_or_else(|| no_host(&host))?;
    if !s.hub.connected().contains(&host) {
        return Err(ApiError::new(ErrorCode::HostUnavailable,
            format!("Host {host} is not connected; start its agent and try again"),
        )
        .de(format!(
            "Host {host} ist nicht verbunden; starten Sie seinen Agenten und versuchen Sie es erneut"
        )));
    }
    // A host keeps its host key: enabling again (after a restart) sends the same one.
    let new_key = record.host_key_id.is_none();
    let key = match (&record.host_key_provider, &record.host_key_id) {
        (Some(p), Some(id)) => tresor_core::ids::KeyRef::new(p, id),
        _ => {
            let provider = provider_or_default(&s, None)?;
            s.broker
                .create_kek(&provider, &format!("host:{host}"))
                .await?
        }
    };
    let command = tresor_core::protocol::Command::EnableEncryption {
        host_key: fetch_key(&s, key.clone(), "host key").await?,
    };
    // A host that did not answer may have taken the key; one that refused did not.
    let reply = s
        .hub
        .request(&host, command, AGENT_TIMEOUT)
        .await
        .map_err(agent_error)?;
    if let Err(e) = reply_error(reply) {
        if new_key {
            retire_keys(&s, &user, Audited::Host(&host), std::slice::from_ref(&key)).await;
        }
        return Err(e);
    }
    record.crypto_state = "safe".into();
    record.host_key_provider = Some(key.provider().to_owned());
    record.host_key_id = Some(key.key_id.clone());
    s.store.put_host(&record)?;
    s.store.add_event(&crate::store::EventRow {
        id: 0,
        time: crate::enrol::now(),
        event_type: tresor_core::events::HOST_CRYPTO_ENABLED.id.into(),
        severity: "info".into(),
        vm: None,
        host: Some(host.clone()),
        provider: Some(key.provider().to_owned()),
        user: Some(user),
        args: vec![("host".into(), host.clone())],
    })?;
    Ok(Json(json!({"host": host, "cryptoState": "safe"})))
}

/// The VM's lock state, for the operations a locked VM refuses.
fn lock_of(
    record: &VmRecord,
) -> (
    tresor_core::vm::CryptoState,
    Option<tresor_core::vm::LockReason>,
) {
    let state = match record.crypto_state.as_str() {
        "locked" => tresor_core::vm::CryptoState::Locked,
        "unencrypted" => tresor_core::vm::CryptoState::Unencrypted,
        _ => tresor_core::vm::CryptoState::Unlocked,
    };
    let reason = match record.lock_reason.as_deref() {
        Some("kmsClusterError") => Some(tresor_core::vm::LockReason::KmsClusterError),
        Some("keyMissingOnKms") => Some(tresor_core::vm::LockReason::KeyMissingOnKms),
        Some("keyMissingOnHost") => Some(tresor_core::vm::LockReason::KeyMissingOnHost),
        _ => None,
    };
    (state, reason)
}

/// Registers VMs from their directories on a host. An encrypted VM whose keys the host lacks (the
/// server must fetch them) needs `Cryptographer.RegisterVM`.
async fn register(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(&s, &headers, Privilege::VmRegister, "Registering VMs")?;
    let paths = match (&req.path, req.all) {
        (Some(p), false) => vec![p.clone()],
        (None, true) => match reply_error(
            s.hub
                .request(
                    &req.host,
                    tresor_core::protocol::Command::ListVmDirs,
                    AGENT_TIMEOUT,
                )
                .await
                .map_err(agent_error)?,
        )? {
            tresor_core::protocol::Reply::VmDirs { paths } => paths,
            _ => Vec::new(),
        },
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "Give either a path or all",
            ))
        }
    };
    let privileges = s.store.privileges_of(&user)?;
    let may_fetch = privileges
        .iter()
        .any(|p| p == Privilege::CryptoRegisterVm.id());
    // First what each folder holds, asked without registering anything; every privilege and
    // every conflict is decided before the host or the registry changes.
    let mut found = Vec::new();
    for path in paths {
        let reply = reply_error(
            s.hub
                .request(
                    &req.host,
                    tresor_core::protocol::Command::Inspect { path: path.clone() },
                    AGENT_TIMEOUT,
                )
                .await
                .map_err(agent_error)?,
        )?;
        let tresor_core::protocol::Reply::Vm { vm } = reply else {
            continue;
        };
        check_name(tresor_core::ids::NameKind::Vm, &vm.name)?;
        let needs_fetch = vm.encrypted && vm.keys.iter().any(|k| !k.on_host);
        if needs_fetch && !may_fetch {
            let denied = tresor_core::access::Denied {
                user: user.clone(),
                action: format!(
                    "Registering encrypted VM {} whose keys must be fetched",
                    vm.name
                ),
                privilege: Privilege::CryptoRegisterVm,
            };
            return Err(
                ApiError::new(ErrorCode::Forbidden, denied.to_string()).de(denied.message_de())
            );
        }
        let reg = tresor_core::registry::Registration::of_report(&req.host, &vm);
        s.engine
            .check_registration(&reg)
            .map_err(|c| ApiError::new(ErrorCode::RegistryConflict, c.to_string()))?;
        found.push((path, reg, vm.encrypted));
    }
    let mut registered = Vec::new();
    for (path, reg, encrypted) in found {
        let name = reg.name.clone();
        admit(&s, reg)?;
        let reply = s
            .hub
            .request(
                &req.host,
                tresor_core::protocol::Command::Register { path },
                AGENT_TIMEOUT,
            )
            .await
            .map_err(agent_error)
            .and_then(reply_error);
        let vm = match reply {
            Ok(tresor_core::protocol::Reply::Vm { vm }) => vm,
            Ok(_) => continue,
            Err(e) => {
                s.engine.forget(&name);
                s.store.remove_vm(&name)?;
                return Err(e);
            }
        };
        s.engine.observe_report(&req.host, Arc::new(vm));
        // Registering unlocks, under either policy, when the user may cause keys to move.
        if encrypted && may_fetch {
            s.engine.request_unlock(&name, &user);
        }
        registered.push(name);
    }
    s.engine.tick().await;
    Ok(Json(json!({"registered": registered})))
}

/// Adds a disk to a powered-off VM: encrypted with the VM's key, or with a new key of its own
/// (created on the VM's provider and sent to the host first).
async fn add_disk(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AddDisk>,
) -> Result<Json<Value>, ApiError> {
    let record = match s.store.vm(&name)? {
        Some(r) => r,
        None => {
            authorize(
                &s,
                &headers,
                Privilege::VmConfig,
                &format!("Adding a disk to VM {name}"),
            )?;
            return Err(no_vm(&name));
        }
    };
    let privilege = if record.encrypted {
        Privilege::CryptoAddDisk
    } else {
        Privilege::VmConfig
    };
    let user = authorize(
        &s,
        &headers,
        privilege,
        &format!("Adding a disk to VM {name}"),
    )?;
    let (state, reason) = lock_of(&record);
    tresor_core::ops::check(&name, tresor_core::ops::VmOp::AddDisk, state, reason)
        .map_err(|r| ApiError::new(ErrorCode::VmLocked, r.message).de(r.message_de))?;
    if req.size == 0 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "A disk needs a size above zero, for example --size 10G",
        ));
    }
    let disks_before = serde_json::from_str::<VmReport>(&record.report)
        .map(|r| r.disks.len())
        .unwrap_or(0);
    tresor_core::protocol::check_shape(disks_before, &[req.size], None).map_err(bad_shape)?;
    let own_key = if req.own_key {
        let provider = record.key_provider.clone().ok_or_else(|| {
            ApiError::new(ErrorCode::PlainVm,
                format!("VM {name} is not encrypted; a disk with a key of its own needs an encrypted VM (tresor vm encrypt {name})"),
            )
        })?;
        let material = new_key(&s, &provider, &format!("{name}-disk")).await?;
        let key = material.key.clone();
        allow_key(&s, &name, &key)?;
        if let Err(e) = push_keys(&s, &record.host, vec![material]).await {
            disown_key(&s, &user, &name, &record.host, &key).await;
            return Err(e);
        }
        record_crypto(&s, &user, "add disk", &name, &key)?;
        Some(key)
    } else {
        None
    };
    let answer = s
        .hub
        .request(
            &record.host,
            tresor_core::protocol::Command::AddDisk {
                vm: name.clone(),
                disk: tresor_core::protocol::DiskSpec {
                    size: req.size,
                    own_key: own_key.clone(),
                },
            },
            AGENT_TIMEOUT,
        )
        .await
        .map_err(agent_error)?;
    let reply = match reply_error(answer) {
        Ok(r) => r,
        Err(e) => {
            // The host refused: the disk's new key is used by nothing. (When the host did not
            // answer, the disk may still be made; the key stays.)
            if let Some(key) = &own_key {
                disown_key(&s, &user, &name, &record.host, key).await;
            }
            return Err(e);
        }
    };
    if let tresor_core::protocol::Reply::Vm { vm } = reply {
        s.engine.observe_report(&record.host, Arc::new(vm));
        s.engine.tick().await;
    }
    let record = s.store.vm(&name)?.ok_or_else(|| no_vm(&name))?;
    Ok(Json(vm_json(&record)))
}

/// Unregister, reload, delete, encrypt, decrypt and rekey: checked against the VM's lock state and
/// the privilege each needs, then carried out by the VM's host.
async fn vm_op(
    s: &AppState,
    headers: &HeaderMap,
    name: &str,
    op: &str,
    body: Option<CryptoRequest>,
) -> Result<Json<Value>, ApiError> {
    use tresor_core::ops::VmOp;
    let (privilege, vm_op) = match op {
        "unregister" => (Privilege::VmUnregister, VmOp::Unregister),
        "reload" => (Privilege::VmConfig, VmOp::Reload),
        "delete" => (Privilege::VmDelete, VmOp::Delete),
        "encrypt" => (Privilege::CryptoEncrypt, VmOp::Encrypt),
        "decrypt" => (Privilege::CryptoDecrypt, VmOp::Decrypt),
        _ => (
            Privilege::CryptoRecrypt,
            if body.as_ref().is_some_and(|b| b.deep) {
                VmOp::DeepRekey
            } else {
                VmOp::Rekey
            },
        ),
    };
    let user = authorize(s, headers, privilege, &format!("{op} of VM {name}"))?;
    let record = s.store.vm(name)?.ok_or_else(|| no_vm(name))?;
    let (state, reason) = lock_of(&record);
    tresor_core::ops::check(name, vm_op, state, reason)
        .map_err(|r| ApiError::new(ErrorCode::VmLocked, r.message).de(r.message_de))?;
    use tresor_core::protocol::Command;
    let mut new_key_made = None;
    let command = match op {
        "unregister" => Command::Unregister { vm: name.into() },
        "reload" => Command::Reload { vm: name.into() },
        "delete" => Command::Delete { vm: name.into() },
        "decrypt" => Command::Decrypt { vm: name.into() },
        "encrypt" | "rekey" => {
            let provider = provider_or_default(
                s,
                body.as_ref()
                    .and_then(|b| b.provider.clone())
                    .or_else(|| record.key_provider.clone()),
            )?;
            let material = new_key(s, &provider, name).await?;
            let key = material.key.clone();
            if let Err(e) = allow_key(s, name, &key) {
                retire_keys(s, &user, Audited::Vm(name), std::slice::from_ref(&key)).await;
                return Err(e);
            }
            if let Err(e) = push_keys(s, &record.host, vec![material]).await {
                retire_keys(s, &user, Audited::Vm(name), std::slice::from_ref(&key)).await;
                return Err(e);
            }
            new_key_made = Some(key.clone());
            record_crypto(
                s,
                &user,
                if op == "encrypt" {
                    "encrypt"
                } else if vm_op == VmOp::DeepRekey {
                    "deep rekey"
                } else {
                    "rekey"
                },
                name,
                &key,
            )?;
            if op == "encrypt" {
                Command::Encrypt {
                    vm: name.into(),
                    key,
                }
            } else {
                Command::Rekey {
                    vm: name.into(),
                    key,
                    deep: vm_op == VmOp::DeepRekey,
                }
            }
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("No operation {op}"),
            ))
        }
    };
    let reply = s
        .hub
        .request(&record.host, command, AGENT_TIMEOUT)
        .await
        .map_err(agent_error)?;
    let reply = match reply_error(reply) {
        Ok(r) => r,
        Err(e) => {
            // The host refused or undid the operation: its new key is used by nothing. (When
            // the host did not answer, the operation may still finish; the key stays.)
            if let Some(key) = &new_key_made {
                retire_keys(s, &user, Audited::Vm(name), std::slice::from_ref(key)).await;
            }
            return Err(e);
        }
    };
    match (op, reply) {
        ("unregister" | "delete", _) => {
            // The engine first: a pass of it that is under way may still write the VM.
            s.engine.forget(name);
            s.store.remove_vm(name)?;
        }
        (_, tresor_core::protocol::Reply::Vm { vm }) => {
            if op != "reload" {
                settle_keys(s, &vm)?;
            }
            s.engine.observe_report(&record.host, Arc::new(vm));
            s.engine.tick().await;
        }
        _ => {}
    }
    Ok(Json(json!({"vm": name, "done": op})))
}

async fn vm_action(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((name, op)): Path<(String, String)>,
    body: Option<ApiJson<CryptoRequest>>,
) -> Result<Json<Value>, ApiError> {
    match op.as_str() {
        "power-on" => power(&s, &headers, &name, true).await,
        "power-off" => power(&s, &headers, &name, false).await,
        "unlock" => unlock_vm(State(s), headers, Path(name)).await,
        "unregister" | "reload" | "delete" | "encrypt" | "decrypt" | "rekey" => {
            vm_op(&s, &headers, &name, &op, body.map(|b| b.0)).await
        }
        other => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("No VM operation {other}"),
        )),
    }
}

async fn reboot_host(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(host): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::HostConfig,
        &format!("Rebooting host {host}"),
    )?;
    if !s.store.hosts()?.iter().any(|h| h.name == host) {
        return Err(no_host(&host));
    }
    reply_error(
        s.hub
            .request(&host, tresor_core::protocol::Command::Reboot, AGENT_TIMEOUT)
            .await
            .map_err(agent_error)?,
    )?;
    Ok(Json(json!({"host": host, "rebooted": true})))
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    // The VM list is answered from renderings made when VMs are written.
    state.store.render_vms_with(vm_json_text);
    Router::new()
        .route("/api/v1/vms", get(list_vms).post(create_vm))
        .route("/api/v1/vms/register", post(register))
        .route("/api/v1/vms/unlock", post(unlock_many))
        .route("/api/v1/vms/{name}/diagnose", get(diagnose_vm))
        .route("/api/v1/vms/{name}/add-disk", post(add_disk))
        .route("/api/v1/vms/{name}/{op}", post(vm_action))
        .route("/api/v1/vms/{name}", get(show_vm))
        .route("/api/v1/hosts", get(list_hosts))
        .route("/api/v1/hosts/token", post(host_token))
        .route(
            "/api/v1/hosts/{name}/enable-encryption",
            post(enable_encryption),
        )
        .route("/api/v1/hosts/{name}/reboot", post(reboot_host))
        .route("/api/v1/hosts/{name}", get(show_host).delete(remove_host))
        .route(
            "/api/v1/hosts/{name}/disable-encryption",
            post(disable_encryption),
        )
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/stream", get(stream_events))
        .route("/api/v1/alarms", get(list_alarms))
        .route("/api/v1/alarms/{id}/ack", post(ack_alarm))
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
        .route("/api/v1/settings", get(settings::list))
        .route(
            "/api/v1/settings/{key}",
            get(settings::get_one).put(settings::set),
        )
        .merge(crate::console::routes())
        .with_state(state)
}
