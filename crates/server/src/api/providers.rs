//! `/api/v1/providers`: key providers, their trust, the default and their status.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_api::ErrorCode;
use tresor_core::access::Privilege;
use zeroize::Zeroizing;

use super::{authorize, ApiError, ApiJson, AppState};
use crate::providers::{Credentials, NewProvider, ProviderError};

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> ApiError {
        let e = match e {
            ProviderError::Store(inner) => return inner.into(),
            other => other,
        };
        let code = match &e {
            ProviderError::Store(_) => ErrorCode::Storage,
            ProviderError::Unknown(_) => ErrorCode::NotFound,
            ProviderError::Exists(_)
            | ProviderError::NotPending(_)
            | ProviderError::InUse { .. } => ErrorCode::Conflict,
            ProviderError::KeyFile { .. } => ErrorCode::Storage,
            _ => ErrorCode::Invalid,
        };
        ApiError::new(code, e.to_string())
    }
}

/// `POST /api/v1/providers`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AddProvider {
    name: String,
    endpoints: Vec<String>,
    ca_pem: String,
    client_cert_pem: Option<String>,
    client_key_pem: Option<String>,
    #[serde(default)]
    self_signed: bool,
    #[serde(default)]
    csr: bool,
    #[serde(default)]
    default: bool,
}

impl std::fmt::Debug for AddProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddProvider")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

pub(super) async fn add(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddProvider>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoManageKeyServers,
        &format!("Adding key provider {}", body.name),
    )?;
    crate::service::check_name(tresor_core::ids::NameKind::Provider, &body.name)?;
    let invalid = |m: &str| ApiError::new(ErrorCode::Invalid, m);
    let credentials = match (
        body.client_cert_pem,
        body.client_key_pem,
        body.self_signed,
        body.csr,
    ) {
        (Some(cert_pem), Some(key_pem), false, false) => Credentials::Upload {
            cert_pem,
            key_pem: Zeroizing::new(key_pem),
        },
        (None, None, true, false) => Credentials::SelfSigned,
        (None, None, false, true) => Credentials::Csr,
        _ => {
            return Err(invalid(
                "Choose one way for the server to prove itself to the provider: a client certificate and its key (--client-cert FILE --client-key FILE), --self-signed, or --csr OUT",
            ))
        }
    };
    let name = body.name.clone();
    let added = s.providers.add(NewProvider {
        name: body.name,
        endpoints: body.endpoints,
        ca_pem: body.ca_pem,
        credentials,
        make_default: body.default,
    })?;
    let mut view = s.providers.show(&name)?;
    view["added"] = serde_json::to_value(&added).unwrap_or_default();
    Ok(Json(view))
}

pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoReadKeyServersInfo,
        "Listing key providers",
    )?;
    Ok(Json(Value::Array(s.providers.list()?)))
}

pub(super) async fn show(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoReadKeyServersInfo,
        &format!("Reading key provider {name}"),
    )?;
    Ok(Json(s.providers.show(&name)?))
}

/// Probes the provider now and answers with what it found.
pub(super) async fn status(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoReadKeyServersInfo,
        &format!("Checking key provider {name}"),
    )?;
    let status = s.providers.probe(&name).await?;
    Ok(Json(serde_json::to_value(status).unwrap_or_default()))
}

pub(super) async fn set_default(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoManageKeyServers,
        &format!("Making {name} the default key provider"),
    )?;
    s.providers.set_default(&name)?;
    Ok(Json(json!({"provider": name, "isDefault": true})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct SignedCertificate {
    client_cert_pem: String,
}

impl std::fmt::Debug for SignedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignedCertificate")
    }
}

/// The certificate the provider signed from the server's CSR.
pub(super) async fn certificate(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SignedCertificate>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoManageKeyServers,
        &format!("Setting the client certificate of key provider {name}"),
    )?;
    s.providers.complete_csr(&name, &body.client_cert_pem)?;
    Ok(Json(s.providers.show(&name)?))
}

pub(super) async fn remove(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::CryptoManageKeyServers,
        &format!("Removing key provider {name}"),
    )?;
    s.providers.remove(&name)?;
    Ok(Json(json!({"provider": name, "removed": true})))
}
