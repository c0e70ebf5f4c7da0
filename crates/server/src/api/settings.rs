//! `/api/v1/settings`: the operators' choices that change how the server behaves.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use tresor_api::requests::SetValue;
use tresor_api::views::{Setting, Settings};
use tresor_core::access::Privilege;

use super::{authorize, ApiError, ApiJson, ApiPath, AppState};

pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Settings>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading the settings")?;
    Ok(Json(s.settings().all()?))
}

pub(super) async fn get_one(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<Setting>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading the settings")?;
    Ok(Json(s.settings().get(&key)?))
}

/// `PUT /api/v1/settings/{key}`: the unlock policy needs
/// `Cryptographer.ManageEncryptionPolicy`.
pub(super) async fn set(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(key): ApiPath<String>,
    ApiJson(body): ApiJson<SetValue>,
) -> Result<Json<Setting>, ApiError> {
    // Who asks first; which privilege depends on the setting.
    let caller = super::caller(&s, &headers)?;
    crate::service::settings::Settings::check_key(&key)?;
    caller.require(
        Privilege::CryptoManageEncryptionPolicy,
        "Changing the unlock policy",
    )?;
    Ok(Json(s.settings().set(&key, &body.value)?))
}
