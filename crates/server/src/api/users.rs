//! `/api/v1/login`, `/api/v1/me`, `/api/v1/users`, `/api/v1/roles`: who may do what.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use tresor_api::requests::{Login, NewPassword, NewRole, NewUser, RoleGrant, SetValue};
use tresor_api::views::UserRoles;
use tresor_api::views::{LoggedOut, LoginToken, Me, PasswordSet, Removed, Role, User, UserLang};
use tresor_core::access::Privilege;

use super::{authorize, ApiError, ApiJson, ApiPath, AppState};

/// `POST /api/v1/login`: a user's password for an API token.
pub(super) async fn login(
    State(s): State<AppState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    ApiJson(body): ApiJson<Login>,
) -> Result<Json<LoginToken>, ApiError> {
    let from = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| addr.ip());
    Ok(Json(
        s.accounts().login(&body.user, body.password, from).await?,
    ))
}

/// `GET /api/v1/me`: the user a token belongs to, and what it may do (the console hides what
/// would be refused).
pub(super) async fn me(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Me>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::SystemView,
        "Reading your own account",
    )?;
    Ok(Json(s.accounts().me(&user)?))
}

/// `PUT /api/v1/me/lang`: remembers the user's language (the console's switch).
pub(super) async fn set_lang(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SetValue>,
) -> Result<Json<UserLang>, ApiError> {
    let user = authorize(
        &s,
        &headers,
        Privilege::SystemView,
        "Choosing your language",
    )?;
    Ok(Json(s.accounts().set_lang(&user, &body.value)?))
}

pub(super) async fn list_users(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<User>>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        "Listing users",
    )?;
    Ok(Json(s.accounts().users()?))
}

pub(super) async fn add_user(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<Json<User>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Adding user {}", body.name),
    )?;
    Ok(Json(s.accounts().add_user(body).await?))
}

pub(super) async fn remove_user(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Removed>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Removing user {name}"),
    )?;
    s.accounts().remove_user(&name)?;
    Ok(Json(Removed {
        name,
        removed: true,
    }))
}

pub(super) async fn grant(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<RoleGrant>,
) -> Result<Json<UserRoles>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Granting role {} to {name}", body.role),
    )?;
    let roles = s.accounts().grant(&name, &body.role)?;
    Ok(Json(UserRoles { user: name, roles }))
}

pub(super) async fn revoke(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath((name, role)): ApiPath<(String, String)>,
) -> Result<Json<UserRoles>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Taking role {role} from {name}"),
    )?;
    let roles = s.accounts().revoke(&name, &role)?;
    Ok(Json(UserRoles { user: name, roles }))
}

pub(super) async fn list_roles(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Role>>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Listing roles")?;
    Ok(Json(s.accounts().roles()?))
}

pub(super) async fn show_role(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Role>, ApiError> {
    authorize(&s, &headers, Privilege::SystemView, "Reading a role")?;
    Ok(Json(s.accounts().role(&name)?))
}

pub(super) async fn put_role(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewRole>,
) -> Result<Json<Role>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Defining role {}", body.name),
    )?;
    Ok(Json(s.accounts().put_role(&body)?))
}

pub(super) async fn remove_role(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Removed>, ApiError> {
    authorize(
        &s,
        &headers,
        Privilege::AuthorizationModify,
        &format!("Removing role {name}"),
    )?;
    s.accounts().remove_role(&name)?;
    Ok(Json(Removed {
        name,
        removed: true,
    }))
}

/// `PUT /api/v1/users/{name}/password`: one's own with any valid token (and the current
/// password), another's with `Authorization.ModifyPermissions`.
pub(super) async fn set_password(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<NewPassword>,
) -> Result<Json<PasswordSet>, ApiError> {
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
    let keep = super::bearer(&headers).map(super::token_hash);
    Ok(Json(
        s.accounts().set_password(&name, own, body, keep).await?,
    ))
}

/// `POST /api/v1/logout`: the token used for this request stops working.
pub(super) async fn logout(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<LoggedOut>, ApiError> {
    let user = super::authenticate(&s, &headers)?;
    if let Some(token) = super::bearer(&headers) {
        s.accounts().logout(&super::token_hash(token))?;
    }
    Ok(Json(LoggedOut {
        user,
        logged_out: true,
    }))
}
