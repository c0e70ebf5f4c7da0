//! `/api/v1/login`, `/api/v1/me`, `/api/v1/users`, `/api/v1/roles`: who may do what.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tresor_api::ErrorCode;
use tresor_core::access::Privilege;
use zeroize::Zeroizing;

use super::{authorize, ApiError, ApiJson, AppState};
use crate::accounts::{AccountError, Accounts};

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> ApiError {
        let e = match e {
            AccountError::Store(inner) => return inner.into(),
            other => other,
        };
        let code = match &e {
            AccountError::Store(_) => ErrorCode::Storage,
            AccountError::BadCredentials => ErrorCode::Unauthenticated,
            AccountError::NoUser(_) | AccountError::NoRole(_) => ErrorCode::NotFound,
            AccountError::UserExists(_)
            | AccountError::BuiltinRole(_)
            | AccountError::LastAdministrator(_) => ErrorCode::Conflict,
            AccountError::Random => ErrorCode::Internal,
            _ => ErrorCode::Invalid,
        };
        let error = ApiError::new(code, e.to_string());
        match e {
            AccountError::BadCredentials => {
                error.de("Falscher Benutzername oder falsches Passwort")
            }
            _ => error,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Login {
    user: String,
    password: Zeroizing<String>,
}

/// Exchanges a user's password for an API token.
pub(super) async fn login(
    State(s): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    ApiJson(body): ApiJson<Login>,
) -> Result<Json<Value>, ApiError> {
    // Who is trying: the user named and the address it comes from; each waits after repeated
    // failures, before any password is checked.
    let user_key = format!("user:{}", body.user.chars().take(64).collect::<String>());
    let mut keys = vec![user_key.clone()];
    if let Some(axum::Extension(axum::extract::ConnectInfo(addr))) = peer {
        keys.push(format!("addr:{}", addr.ip()));
    }
    if let Some(wait) = s.logins.wait(&keys) {
        return Err(too_many(wait));
    }
    // argon2 takes tens of milliseconds and megabytes: as many at once as there are cores, off
    // the async workers.
    let _permit = s.logins.hashing().await;
    // Failures may have piled up while this one waited for its turn.
    if let Some(wait) = s.logins.wait(&keys) {
        return Err(too_many(wait));
    }
    let store = s.store.clone();
    let (user, password) = (body.user.clone(), body.password);
    let result = tokio::task::spawn_blocking(move || Accounts::new(&store).login(&user, &password))
        .await
        .map_err(|_| ApiError::new(ErrorCode::Internal, "Login failed; see the server log"))?;
    match result {
        Ok(token) => {
            s.logins.succeeded(&user_key);
            Ok(Json(
                json!({"token": token.as_str(), "expiresInSecs": s.logins.token_ttl_secs}),
            ))
        }
        Err(e) => {
            if matches!(e, AccountError::BadCredentials) {
                s.logins.failed(&keys);
            }
            Err(e.into())
        }
    }
}

/// 429 with how long to wait.
fn too_many(wait: std::time::Duration) -> ApiError {
    ApiError::new(ErrorCode::TooManyAttempts,
        format!(
            "Too many failed sign-ins for this user or from this address; try again in {} s",
            wait.as_secs().max(1)
        ),
    )
    .de(format!(
        "Zu viele fehlgeschlagene Anmeldungen für diesen Benutzer oder von dieser Adresse; versuchen Sie es in {} s erneut",
        wait.as_secs().max(1)
    ))
}

/// The user a token belongs to, and what it may do (the console hides what would be refused).
pub(super) async fn me(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::SystemView,
        "Reading your own account",
    )?;
    let lang = s
        .store
        .setting(&format!("lang.{user}"))?
        .unwrap_or_else(|| "en".into());
    Ok(Json(json!({
        "user": user,
        "roles": s.store.grants_of(&user)?,
        "privileges": s.store.privileges_of(&user)?,
        "lang": lang,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LangValue {
    value: String,
}

/// Remembers the user's language (the console's switch).
pub(super) async fn set_lang(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LangValue>,
) -> Result<Json<Value>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::SystemView,
        "Choosing your language",
    )?;
    let lang = crate::service::parse_lang(Some(&body.value))?;
    let value = match lang {
        tresor_core::Lang::En => "en",
        tresor_core::Lang::De => "de",
    };
    s.store.set_setting(&format!("lang.{user}"), value)?;
    Ok(Json(json!({"user": user, "lang": value})))
}

pub(super) async fn list_users(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        "Listing users",
    )?;
    let mut out = Vec::new();
    for u in s.store.users()? {
        out.push(json!({"name": u, "roles": s.store.grants_of(&u)?}));
    }
    Ok(Json(Value::Array(out)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUser {
    name: String,
    password: Zeroizing<String>,
    #[serde(default)]
    roles: Vec<String>,
}

pub(super) async fn add_user(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Adding user {}", body.name),
    )?;
    crate::service::check_name(tresor_core::ids::NameKind::User, &body.name)?;
    let store = s.store.clone();
    let (name, roles) = (body.name.clone(), body.roles.clone());
    tokio::task::spawn_blocking(move || {
        Accounts::new(&store).add_user(&body.name, &body.password, &body.roles)
    })
    .await
    .map_err(|_| {
        ApiError::new(
            ErrorCode::Internal,
            "Adding the user failed; see the server log",
        )
    })??;
    Ok(Json(json!({"name": name, "roles": roles})))
}

pub(super) async fn remove_user(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Removing user {name}"),
    )?;
    Accounts::new(&s.store).remove_user(&name)?;
    Ok(Json(json!({"name": name, "removed": true})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleName {
    role: String,
}

pub(super) async fn grant(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RoleName>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Granting role {} to {name}", body.role),
    )?;
    Accounts::new(&s.store).grant(&name, &body.role)?;
    Ok(Json(
        json!({"user": name, "roles": s.store.grants_of(&name)?}),
    ))
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path((name, role)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Taking role {role} from {name}"),
    )?;
    Accounts::new(&s.store).revoke(&name, &role)?;
    Ok(Json(
        json!({"user": name, "roles": s.store.grants_of(&name)?}),
    ))
}

fn role_json(name: &str, privileges: &[String]) -> Value {
    let builtin = tresor_core::access::BuiltinRole::ALL
        .iter()
        .any(|r| r.name() == name);
    json!({"name": name, "builtIn": builtin, "privileges": privileges})
}

pub(super) async fn list_roles(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing roles")?;
    Ok(Json(Value::Array(
        s.store
            .roles()?
            .iter()
            .map(|(n, p)| role_json(n, p))
            .collect(),
    )))
}

pub(super) async fn show_role(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading a role")?;
    let roles = s.store.roles()?;
    let (n, p) = roles
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or(AccountError::NoRole(name.clone()))?;
    Ok(Json(role_json(n, p)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewRole {
    name: String,
    privileges: Vec<String>,
}

pub(super) async fn put_role(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewRole>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Defining role {}", body.name),
    )?;
    crate::service::check_name(tresor_core::ids::NameKind::Role, &body.name)?;
    Accounts::new(&s.store).put_role(&body.name, &body.privileges)?;
    show_role(State(s), headers, Path(body.name)).await
}

pub(super) async fn remove_role(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Removing role {name}"),
    )?;
    Accounts::new(&s.store).remove_role(&name)?;
    Ok(Json(json!({"name": name, "removed": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub(super) struct NewPassword {
    password: Zeroizing<String>,
    /// One's own password is changed only with the current one.
    current_password: Option<Zeroizing<String>>,
}

/// Sets a user's password: one's own with any valid token, another's with
/// `Authorization.ModifyPermissions`.
pub(super) async fn set_password(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<NewPassword>,
) -> Result<Json<Value>, ApiError> {
    let me = super::authenticate(&s, &headers)?;
    let own = me == name;
    if !own {
        authorize(
            &s,
            &headers,
            Privilege::AuthorizationModify,
            &format!("Setting the password of user {name}"),
        )?;
    }
    let user_key = format!("user:{name}");
    if own {
        // A stolen token alone does not change the password.
        let Some(current) = body.current_password.clone() else {
            return Err(ApiError::new(
                ErrorCode::CurrentPasswordNeeded,
                "Changing your own password needs your current one (currentPassword)",
            ));
        };
        if let Some(wait) = s.logins.wait(std::slice::from_ref(&user_key)) {
            return Err(too_many(wait));
        }
        let _permit = s.logins.hashing().await;
        let store = s.store.clone();
        let who = name.clone();
        let ok = tokio::task::spawn_blocking(move || {
            Accounts::new(&store).check_password(&who, &current)
        })
        .await
        .unwrap_or(false);
        if !ok {
            s.logins.failed(std::slice::from_ref(&user_key));
            return Err(ApiError::new(
                ErrorCode::WrongPassword,
                "The current password is wrong; your password is unchanged",
            )
            .de("Das aktuelle Passwort ist falsch; Ihr Passwort ist unverändert"));
        }
    }
    let _permit = s.logins.hashing().await;
    let store = s.store.clone();
    let who = name.clone();
    tokio::task::spawn_blocking(move || Accounts::new(&store).set_password(&who, &body.password))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Internal,
                "Setting the password failed; see the server log",
            )
        })??;
    // The old password's sessions end: all of them after a reset, all but this one after a
    // change of one's own.
    let keep = own
        .then(|| super::bearer(&headers).map(super::token_hash))
        .flatten();
    let revoked = s.store.revoke_tokens(&name, keep.as_deref())?;
    Ok(Json(
        json!({"user": name, "password": "set", "tokensRevoked": revoked}),
    ))
}

/// Ends the session: the token used for this request stops working.
pub(super) async fn logout(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let user = super::authenticate(&s, &headers)?;
    if let Some(token) = super::bearer(&headers) {
        s.store.remove_token(&super::token_hash(token))?;
    }
    Ok(Json(json!({"user": user, "loggedOut": true})))
}
