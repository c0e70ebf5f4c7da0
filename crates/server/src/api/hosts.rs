//! `/api/v1/hosts`: hosts, join tokens, removal, encryption mode and reboot.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use tresor_api::requests::TokenRequest;
use tresor_api::views::{Host, HostMode, HostRebooted, HostRemoved, HostWithVms, JoinToken};
use tresor_core::access::Privilege;

use super::{authorize, ApiError, ApiJson, ApiPath, AppState};

/// `GET /api/v1/hosts`.
pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Host>>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing hosts")?;
    Ok(Json(s.hosts().list()?))
}

/// `GET /api/v1/hosts/{name}`: one host, with its VMs.
pub(super) async fn show(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<HostWithVms>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading a host")?;
    Ok(Json(s.hosts().show(&name)?))
}

/// `POST /api/v1/hosts/token`: a one-time join token.
pub(super) async fn token(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Option<ApiJson<TokenRequest>>,
) -> Result<Json<JoinToken>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterHost,
        "Creating a join token",
    )?;
    let req = body.map(|b| b.0).unwrap_or_default();
    Ok(Json(s.hosts().join_token(req)?))
}

/// `DELETE /api/v1/hosts/{name}`: the host is forgotten and its certificate refused from now
/// on; its session ends. Its VMs stay registered (shown disconnected) until unregistered.
pub(super) async fn remove(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(host): ApiPath<String>,
) -> Result<Json<HostRemoved>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterHost,
        &format!("Removing host {host}"),
    )?;
    s.hosts().remove(&user, &host)?;
    Ok(Json(HostRemoved {
        host,
        removed: true,
    }))
}

/// `POST /api/v1/hosts/{name}/enable-encryption`.
pub(super) async fn enable_encryption(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(host): ApiPath<String>,
) -> Result<Json<HostMode>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterHost,
        &format!("Enabling encryption on host {host}"),
    )?;
    let crypto_state = s.hosts().enable_encryption(&user, &host).await?;
    Ok(Json(HostMode { host, crypto_state }))
}

/// `POST /api/v1/hosts/{name}/disable-encryption`: the mode ends when the host restarts.
pub(super) async fn disable_encryption(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(host): ApiPath<String>,
) -> Result<Json<HostMode>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::CryptoRegisterHost,
        &format!("Disabling encryption on host {host}"),
    )?;
    let crypto_state = s.hosts().disable_encryption(&user, &host).await?;
    Ok(Json(HostMode { host, crypto_state }))
}

/// `POST /api/v1/hosts/{name}/reboot`.
pub(super) async fn reboot(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(host): ApiPath<String>,
) -> Result<Json<HostRebooted>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::HostConfig,
        &format!("Rebooting host {host}"),
    )?;
    s.hosts().reboot(&user, &host).await?;
    Ok(Json(HostRebooted {
        host,
        rebooted: true,
    }))
}
