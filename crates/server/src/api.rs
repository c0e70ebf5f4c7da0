//! The REST API under `/api/v1`. Every request carries an API token (`Authorization: Bearer
//! …`); every operation checks its privilege. Errors are one JSON shape with a stable code.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_core::access::Privilege;
use tresor_core::protocol::VmReport;
use tresor_core::Lang;

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
}

/// An API error: an HTTP status, a stable code, and a message that says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            "The server cannot read or write its database; see its log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
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

/// The user a request comes from, if it may do `action` with `privilege`.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    privilege: Privilege,
    action: &str,
) -> Result<String, ApiError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "No API token; log in with `tresor login` or set TRESOR_TOKEN",
            )
        })?;
    let user = state.store.token_user(&token_hash(token))?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "The API token is not valid; log in again with `tresor login`",
        )
    })?;
    let privileges = state.store.privileges_of(&user)?;
    if !privileges.iter().any(|p| p == privilege.id()) {
        let denied = tresor_core::access::Denied {
            user: user.clone(),
            action: action.into(),
            privilege,
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            denied.to_string(),
        ));
    }
    Ok(user)
}

/// A VM as the surface defines it (`tresor vm show NAME -o json`).
pub fn vm_json(record: &VmRecord) -> Value {
    let report: Option<VmReport> = serde_json::from_str(&record.report).ok();
    let key = |k: &tresor_core::ids::KeyRef| json!({"keyId": k.key_id, "providerId": {"id": k.provider()}});
    let disks: Vec<Value> = report
        .as_ref()
        .map(|r| {
            r.disks
                .iter()
                .map(|path| {
                    let file = std::path::Path::new(path)
                        .file_name()
                        .and_then(|f| f.to_str())
                        .unwrap_or_default()
                        .to_owned();
                    let hk = r.keys.iter().find(|k| {
                        k.uses
                            .iter()
                            .any(|u| matches!(u, tresor_core::vm::KeyUse::Disk(p) if p == &file))
                    });
                    json!({
                        "path": path,
                        "keyId": hk.map(|k| key(&k.key)),
                        "keyAvailable": hk.map(|k| k.on_host).unwrap_or(true),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "name": record.name,
        "id": record.id,
        "host": record.host,
        "path": record.path,
        "powerState": record.power_state,
        "connectionState": record.connection_state,
        "cryptoState": record.crypto_state,
        "lockReason": record.lock_reason,
        "config": {"keyId": report.as_ref().and_then(|r| r.key_id.as_ref()).map(key)},
        "disks": disks,
    })
}

async fn list_vms(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<VmQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing VMs")?;
    let vms = if q.locked.unwrap_or(false) {
        s.store.locked_vms()?
    } else {
        s.store.vms()?
    };
    Ok(Json(Value::Array(vms.iter().map(vm_json).collect())))
}

#[derive(Debug, Deserialize)]
struct VmQuery {
    locked: Option<bool>,
}

fn no_vm(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "notFound",
        format!("No VM named {name}; list them with `tresor vm list`"),
    )
}

async fn show_vm(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading a VM")?;
    let record = s.store.vm(&name)?.ok_or_else(|| no_vm(&name))?;
    Ok(Json(vm_json(&record)))
}

async fn unlock_vm(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterVm,
        &format!("Unlocking VM {name}"),
    )?;
    s.store.vm(&name)?.ok_or_else(|| no_vm(&name))?;
    s.engine.request_unlock(&name);
    Ok(Json(json!({"vm": name, "unlock": "requested"})))
}

async fn host_token(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<TokenRequest>>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterHost,
        "Creating a join token",
    )?;
    let ttl = body
        .and_then(|b| b.0.ttl_secs)
        .unwrap_or(3600)
        .clamp(60, 7 * 86400);
    let token = s.enroller.new_token(ttl)?;
    Ok(Json(json!({"token": token, "ttlSecs": ttl})))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    ttl_secs: Option<i64>,
}

async fn list_hosts(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing hosts")?;
    let connected = s.hub.connected();
    let hosts: Vec<Value> = s
        .store
        .hosts()?
        .into_iter()
        .map(|h| json!({"name": h.name, "connected": connected.contains(&h.name), "cryptoState": h.crypto_state}))
        .collect();
    Ok(Json(Value::Array(hosts)))
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
    Query(q): Query<EventQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing events")?;
    let lang: Lang = q
        .lang
        .as_deref()
        .unwrap_or("en")
        .parse()
        .map_err(|m: String| ApiError::new(StatusCode::BAD_REQUEST, "badRequest", m))?;
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
        .into_iter()
        .map(|e| {
            let args: Vec<(&str, &str)> = e.args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let message = tresor_core::events::by_id(&e.event_type).map(|t| tresor_core::events::render(t, lang, &args)).unwrap_or_default();
            json!({"id": e.id, "time": e.time, "type": e.event_type, "severity": e.severity, "vm": e.vm, "host": e.host,
                   "provider": e.provider, "user": e.user, "message": message})
        })
        .collect();
    Ok(Json(Value::Array(events)))
}

async fn list_alarms(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing alarms")?;
    Ok(Json(
        serde_json::to_value(s.store.alarms(true)?).unwrap_or_default(),
    ))
}

async fn ack_alarm(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::AlarmAcknowledge,
        "Acknowledging an alarm",
    )?;
    if !s.store.acknowledge_alarm(id, &user)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "notFound",
            format!("No alarm {id}; list them with `tresor alarm list`"),
        ));
    }
    Ok(Json(json!({"alarm": id, "acknowledgedBy": user})))
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/vms", get(list_vms))
        .route("/api/v1/vms/{name}", get(show_vm))
        .route("/api/v1/vms/{name}/unlock", post(unlock_vm))
        .route("/api/v1/hosts", get(list_hosts))
        .route("/api/v1/hosts/token", post(host_token))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/alarms", get(list_alarms))
        .route("/api/v1/alarms/{id}/ack", post(ack_alarm))
        .with_state(state)
}
