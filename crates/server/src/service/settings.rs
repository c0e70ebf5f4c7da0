//! Settings: the operators' choices that change how the server behaves (for now the unlock
//! policy).

use tresor_api::views::{Setting, Settings as AllSettings};
use tresor_api::ErrorCode;
use tresor_core::reconcile::UnlockPolicy;

use super::{Context, ServiceError};
use crate::store::{Store, StoreError};

/// The settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    pub(super) cx: &'a Context,
}

/// The key of the unlock policy.
pub const UNLOCK_POLICY: &str = "unlock.policy";

/// The unlock policy as stored; `automatic` when never set.
pub fn unlock_policy(store: &Store) -> Result<UnlockPolicy, StoreError> {
    Ok(match store.setting(UNLOCK_POLICY)?.as_deref() {
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

fn unknown(key: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::NotFound,
        format!("No setting {key}; the settings are: {UNLOCK_POLICY}"),
    )
}

impl Settings<'_> {
    /// Whether `key` names a setting (the privilege to change it depends on which).
    pub fn check_key(key: &str) -> Result<(), ServiceError> {
        if key == UNLOCK_POLICY {
            Ok(())
        } else {
            Err(unknown(key))
        }
    }

    pub fn all(&self) -> Result<AllSettings, ServiceError> {
        Ok(AllSettings {
            unlock_policy: policy_name(unlock_policy(&self.cx.store)?).into(),
        })
    }

    pub fn get(&self, key: &str) -> Result<Setting, ServiceError> {
        Self::check_key(key)?;
        Ok(Setting {
            key: key.to_owned(),
            value: policy_name(unlock_policy(&self.cx.store)?).into(),
        })
    }

    /// Changes a setting; the engine follows a new unlock policy at once.
    pub fn set(&self, key: &str, value: &str) -> Result<Setting, ServiceError> {
        Self::check_key(key)?;
        let policy = match value {
            "automatic" => UnlockPolicy::Automatic,
            "manual" => UnlockPolicy::Manual,
            other => {
                return Err(ServiceError::new(
                    ErrorCode::Invalid,
                    format!("{UNLOCK_POLICY} is automatic or manual, not {other:?}"),
                ))
            }
        };
        self.cx
            .store
            .set_setting(UNLOCK_POLICY, policy_name(policy))?;
        self.cx.engine.set_policy(policy);
        Ok(Setting {
            key: key.to_owned(),
            value: policy_name(policy).into(),
        })
    }
}
