//! Accounts: signing in (with the limits on failed attempts), one's own account and language,
//! users, roles and passwords. Password hashing (argon2id, tens of milliseconds and megabytes)
//! runs off the async workers, as many at once as there are cores.

use tresor_api::requests::{NewPassword, NewRole, NewUser};
use tresor_api::views::{LoginToken, Me, PasswordSet, Role, User, UserLang};
use tresor_api::ErrorCode;
use tresor_core::ids::NameKind;
use tresor_core::Lang;
use zeroize::Zeroizing;

use super::{check_name, Context, ServiceError};
use crate::accounts::{AccountError, Accounts as Store};

/// Accounts and roles.
#[derive(Clone, Copy, Debug)]
pub struct Accounts<'a> {
    pub(super) cx: &'a Context,
}

impl From<AccountError> for ServiceError {
    fn from(e: AccountError) -> ServiceError {
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
        let error = ServiceError::new(code, e.to_string());
        match e {
            AccountError::BadCredentials => {
                error.de("Falscher Benutzername oder falsches Passwort")
            }
            _ => error,
        }
    }
}

/// Runs account work that hashes passwords on a blocking thread; `what` names it if that fails.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, AccountError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| {
            ServiceError::new(
                ErrorCode::Internal,
                format!("{what} failed; see the server log"),
            )
        })?
        .map_err(ServiceError::from)
}

/// 429 with how long to wait.
fn too_many(wait: std::time::Duration) -> ServiceError {
    let secs = wait.as_secs().max(1);
    ServiceError::new(
        ErrorCode::TooManyAttempts,
        format!(
            "Too many failed sign-ins for this user or from this address; try again in {secs} s"
        ),
    )
    .de(format!(
        "Zu viele fehlgeschlagene Anmeldungen für diesen Benutzer oder von dieser Adresse; versuchen Sie es in {secs} s erneut"
    ))
}

impl Accounts<'_> {
    /// Exchanges a user's password for an API token. The user named and the address the attempt
    /// comes from each wait after repeated failures, before any password is checked.
    pub async fn login(
        &self,
        user: &str,
        password: Zeroizing<String>,
        from: Option<std::net::IpAddr>,
    ) -> Result<LoginToken, ServiceError> {
        let logins = &self.cx.logins;
        let user_key = format!("user:{}", user.chars().take(64).collect::<String>());
        let mut keys = vec![user_key.clone()];
        if let Some(ip) = from {
            keys.push(format!("addr:{ip}"));
        }
        if let Some(wait) = logins.wait(&keys) {
            return Err(too_many(wait));
        }
        let _permit = logins.hashing().await;
        // Failures may have piled up while this one waited for its turn.
        if let Some(wait) = logins.wait(&keys) {
            return Err(too_many(wait));
        }
        let store = self.cx.store.clone();
        let who = user.to_owned();
        let result = tokio::task::spawn_blocking(move || Store::new(&store).login(&who, &password))
            .await
            .map_err(|_| {
                ServiceError::new(ErrorCode::Internal, "Login failed; see the server log")
            })?;
        match result {
            Ok(token) => {
                logins.succeeded(&user_key);
                Ok(LoginToken {
                    token: token.as_str().to_owned(),
                    expires_in_secs: logins.token_ttl_secs,
                })
            }
            Err(e) => {
                if matches!(e, AccountError::BadCredentials) {
                    logins.failed(&keys);
                }
                Err(e.into())
            }
        }
    }

    /// A user with its roles, privileges and language.
    pub fn me(&self, user: &str) -> Result<Me, ServiceError> {
        let store = &self.cx.store;
        let lang = store
            .setting(&format!("lang.{user}"))?
            .unwrap_or_else(|| "en".into());
        Ok(Me {
            user: user.to_owned(),
            roles: store.grants_of(user)?,
            privileges: store.privileges_of(user)?,
            lang,
        })
    }

    /// Remembers a user's language.
    pub fn set_lang(&self, user: &str, value: &str) -> Result<UserLang, ServiceError> {
        let lang = super::parse_lang(Some(value))?;
        let value = match lang {
            Lang::En => "en",
            Lang::De => "de",
        };
        self.cx.store.set_setting(&format!("lang.{user}"), value)?;
        Ok(UserLang {
            user: user.to_owned(),
            lang: value.to_owned(),
        })
    }

    pub fn users(&self) -> Result<Vec<User>, ServiceError> {
        let store = &self.cx.store;
        let mut out = Vec::new();
        for name in store.users()? {
            let roles = store.grants_of(&name)?;
            out.push(User { name, roles });
        }
        Ok(out)
    }

    pub async fn add_user(&self, req: NewUser) -> Result<User, ServiceError> {
        check_name(NameKind::User, &req.name)?;
        let store = self.cx.store.clone();
        let (name, roles) = (req.name.clone(), req.roles.clone());
        blocking("Adding the user", move || {
            Store::new(&store).add_user(&req.name, &req.password, &req.roles)
        })
        .await?;
        Ok(User { name, roles })
    }

    pub fn remove_user(&self, name: &str) -> Result<(), ServiceError> {
        Store::new(&self.cx.store).remove_user(name)?;
        Ok(())
    }

    pub fn grant(&self, user: &str, role: &str) -> Result<Vec<String>, ServiceError> {
        Store::new(&self.cx.store).grant(user, role)?;
        Ok(self.cx.store.grants_of(user)?)
    }

    pub fn revoke(&self, user: &str, role: &str) -> Result<Vec<String>, ServiceError> {
        Store::new(&self.cx.store).revoke(user, role)?;
        Ok(self.cx.store.grants_of(user)?)
    }

    pub fn roles(&self) -> Result<Vec<Role>, ServiceError> {
        Ok(self
            .cx
            .store
            .roles()?
            .into_iter()
            .map(|(n, p)| role_view(n, p))
            .collect())
    }

    pub fn role(&self, name: &str) -> Result<Role, ServiceError> {
        self.roles()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| AccountError::NoRole(name.to_owned()).into())
    }

    pub fn put_role(&self, req: &NewRole) -> Result<Role, ServiceError> {
        check_name(NameKind::Role, &req.name)?;
        Store::new(&self.cx.store).put_role(&req.name, &req.privileges)?;
        self.role(&req.name)
    }

    pub fn remove_role(&self, name: &str) -> Result<(), ServiceError> {
        Store::new(&self.cx.store).remove_role(name)?;
        Ok(())
    }

    /// Sets `name`'s password. One's own (`own`) needs the current one, checked under the same
    /// limits as a login: a stolen token alone does not change it. The old password's sessions
    /// end: all of them after a reset, all but `keep` (the token of this request) after a change
    /// of one's own.
    pub async fn set_password(
        &self,
        name: &str,
        own: bool,
        req: NewPassword,
        keep: Option<String>,
    ) -> Result<PasswordSet, ServiceError> {
        let logins = &self.cx.logins;
        let user_key = format!("user:{name}");
        if own {
            let Some(current) = req.current_password.clone() else {
                return Err(ServiceError::new(
                    ErrorCode::CurrentPasswordNeeded,
                    "Changing your own password needs your current one (currentPassword)",
                ));
            };
            if let Some(wait) = logins.wait(std::slice::from_ref(&user_key)) {
                return Err(too_many(wait));
            }
            let _permit = logins.hashing().await;
            let store = self.cx.store.clone();
            let who = name.to_owned();
            let ok = tokio::task::spawn_blocking(move || {
                Store::new(&store).check_password(&who, &current)
            })
            .await
            .unwrap_or(false);
            if !ok {
                logins.failed(std::slice::from_ref(&user_key));
                return Err(ServiceError::new(
                    ErrorCode::WrongPassword,
                    "The current password is wrong; your password is unchanged",
                )
                .de("Das aktuelle Passwort ist falsch; Ihr Passwort ist unverändert"));
            }
        }
        let _permit = logins.hashing().await;
        let store = self.cx.store.clone();
        let who = name.to_owned();
        blocking("Setting the password", move || {
            Store::new(&store).set_password(&who, &req.password)
        })
        .await?;
        let keep = if own { keep } else { None };
        let revoked = self.cx.store.revoke_tokens(name, keep.as_deref())?;
        Ok(PasswordSet {
            user: name.to_owned(),
            password: "set".into(),
            tokens_revoked: revoked as u64,
        })
    }

    /// Ends the session of the token whose hash is `token_hash`.
    pub fn logout(&self, token_hash: &str) -> Result<(), ServiceError> {
        self.cx.store.remove_token(token_hash)?;
        Ok(())
    }
}

fn role_view(name: String, privileges: Vec<String>) -> Role {
    let built_in = tresor_core::access::BuiltinRole::ALL
        .iter()
        .any(|r| r.name() == name);
    Role {
        name,
        built_in,
        privileges,
    }
}
