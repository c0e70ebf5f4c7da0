//! `/api/v1/providers`: key providers, their trust, the default and their status.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use tresor_api::requests::{AddProvider, SignedCertificate};
use tresor_api::views::{
    Provider, ProviderAdded, ProviderDefault, ProviderRemoved, ProviderStatus,
};
use tresor_core::access::Privilege;

use super::{authorize, ApiError, ApiJson, ApiPath, AppState};

pub(super) async fn add(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddProvider>,
) -> Result<Json<ProviderAdded>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoManageKeyServers,
        &format!("Adding key provider {}", body.name),
    )?;
    Ok(Json(s.provider_service().add(body)?))
}

pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Provider>>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoReadKeyServersInfo,
        "Listing key providers",
    )?;
    Ok(Json(s.provider_service().list()?))
}

pub(super) async fn show(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Provider>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoReadKeyServersInfo,
        &format!("Reading key provider {name}"),
    )?;
    Ok(Json(s.provider_service().show(&name)?))
}

/// Probes the provider now and answers with what it found.
pub(super) async fn status(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProviderStatus>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoReadKeyServersInfo,
        &format!("Checking key provider {name}"),
    )?;
    Ok(Json(s.provider_service().probe(&name).await?))
}

pub(super) async fn set_default(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProviderDefault>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoManageKeyServers,
        &format!("Making {name} the default key provider"),
    )?;
    s.provider_service().set_default(&name)?;
    Ok(Json(ProviderDefault {
        provider: name,
        is_default: true,
    }))
}

/// The certificate the provider signed from the server's CSR.
pub(super) async fn certificate(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<SignedCertificate>,
) -> Result<Json<Provider>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoManageKeyServers,
        &format!("Setting the client certificate of key provider {name}"),
    )?;
    Ok(Json(s.provider_service().complete_csr(&name, &body)?))
}

pub(super) async fn remove(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProviderRemoved>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoManageKeyServers,
        &format!("Removing key provider {name}"),
    )?;
    s.provider_service().remove(&name)?;
    Ok(Json(ProviderRemoved {
        provider: name,
        removed: true,
    }))
}
