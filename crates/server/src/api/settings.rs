//! `/api/v1/settings`: the operators' choices that change how the server behaves.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_api::ErrorCode;
use tresor_core::access::Privilege;
use tresor_core::reconcile::UnlockPolicy;

use super::{authorize, ApiError, ApiJson, AppState};
use crate::store::{Store, StoreError};

/// The unlock policy as stored; `automatic` when never set.
pub fn unlock_policy(store: &Store) -> Result<UnlockPolicy, StoreError> {
    Ok(match store.setting("unlock.policy")?.as_deref() {
        Some("manual") => UnlockPolicy::Manual,
        _ => UnlockPolicy::Automatic,
    })
}

fn policy_name(p: UnlockPolicy) -> &'static str {
    match p {
        UnlockPolicy::Automatic => "automatic",
        UnlockPolicy::Manual => "manual",
    }
}

pub(super) async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading the settings")?;
    Ok(Json(
        json!({"unlock.policy": policy_name(unlock_policy(&s.store)?)}),
    ))
}

pub(super) async fn get_one(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading the settings")?;
    match key.as_str() {
        "unlock.policy" => Ok(Json(
            json!({"key": key, "value": policy_name(unlock_policy(&s.store)?)}),
        )),
        _ => Err(unknown(&key)),
    }
}

fn unknown(key: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("No setting {key}; the settings are: unlock.policy"),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetValue {
    value: String,
}

pub(super) async fn set(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<SetValue>,
) -> Result<Json<Value>, ApiError> {
    match key.as_str() {
        "unlock.policy" => {
            authorize(
                &s,
                &headers,
                Privilege::CryptoManageEncryptionPolicy,
                "Changing the unlock policy",
            )?;
            let policy = match body.value.as_str() {
                "automatic" => UnlockPolicy::Automatic,
                "manual" => UnlockPolicy::Manual,
                other => {
                    return Err(ApiError::new(
                        ErrorCode::Invalid,
                        format!("unlock.policy is automatic or manual, not {other:?}"),
                    ))
                }
            };
            s.store.set_setting("unlock.policy", policy_name(policy))?;
            s.engine.set_policy(policy);
            Ok(Json(json!({"key": key, "value": policy_name(policy)})))
        }
        _ => Err(unknown(&key)),
    }
}
