//! Users, their passwords (argon2id) and API tokens, and the roles granted to them. The built-in
//! roles are written by the server at every start and cannot be changed or removed.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tresor_core::access::{BuiltinRole, Privilege};
use zeroize::Zeroizing;

use crate::store::{Store, StoreError};

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("A user or role name is 1 to 64 letters, digits, '-', '_', '.' or '@'; {0:?} is not")]
    BadName(String),
    #[error("A password has at least 12 characters")]
    WeakPassword,
    #[error("User {0} exists already")]
    UserExists(String),
    #[error("No user {0}; list them with `tresor user list`")]
    NoUser(String),
    #[error("No role {0}; list them with `tresor role list`")]
    NoRole(String),
    #[error("Role {0} is built in and cannot be changed or removed; create a role of your own")]
    BuiltinRole(String),
    #[error("Unknown privilege {0}; `tresor role show Administrator` lists them all")]
    UnknownPrivilege(String),
    #[error("Wrong user name or password")]
    BadCredentials,
    #[error(
        "User {0} is the last one with the Administrator role; grant it to another user first"
    )]
    LastAdministrator(String),
    #[error("The random number generator failed")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreError),
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

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn random<const N: usize>() -> Result<[u8; N], AccountError> {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| AccountError::Random)?;
    Ok(b)
}

/// An argon2id hash of a password in PHC form.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let salt = SaltString::encode_b64(&random::<16>()?).map_err(|_| AccountError::Random)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AccountError::Random)
}

/// Whether `password` matches the stored hash. A user without a password (`!`) never matches.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new API token: 32 random bytes, hex.
pub fn new_token() -> Result<Zeroizing<String>, AccountError> {
    Ok(Zeroizing::new(
        random::<32>()?.iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

/// Users and roles over the store.
#[derive(Debug)]
pub struct Accounts<'a> {
    store: &'a Store,
}

impl<'a> Accounts<'a> {
    pub fn new(store: &'a Store) -> Accounts<'a> {
        Accounts { store }
    }

    fn role_exists(&self, role: &str) -> Result<bool, AccountError> {
        Ok(self.store.roles()?.iter().any(|(n, _)| n == role))
    }

    /// Adds a user with a password and roles.
    pub fn add_user(
        &self,
        name: &str,
        password: &str,
        roles: &[String],
    ) -> Result<(), AccountError> {
        if !valid_name(name) {
            return Err(AccountError::BadName(name.into()));
        }
        if password.chars().count() < 12 {
            return Err(AccountError::WeakPassword);
        }
        if self.store.password_hash(name)?.is_some() {
            return Err(AccountError::UserExists(name.into()));
        }
        for r in roles {
            if !self.role_exists(r)? {
                return Err(AccountError::NoRole(r.clone()));
            }
        }
        self.store.add_user(name, &hash_password(password)?)?;
        for r in roles {
            self.store.grant(name, r)?;
        }
        Ok(())
    }

    /// Sets a user's password.
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), AccountError> {
        if password.chars().count() < 12 {
            return Err(AccountError::WeakPassword);
        }
        if !self
            .store
            .set_password_hash(name, &hash_password(password)?)?
        {
            return Err(AccountError::NoUser(name.into()));
        }
        Ok(())
    }

    /// Whether `password` is the user's.
    pub fn check_password(&self, name: &str, password: &str) -> bool {
        match self.store.password_hash(name) {
            Ok(Some(h)) => verify_password(&h, password),
            _ => false,
        }
    }

    /// Checks a password and hands out a new token for the user.
    pub fn login(&self, name: &str, password: &str) -> Result<Zeroizing<String>, AccountError> {
        let hash = self.store.password_hash(name)?;
        // Spend the same time whether the user exists or not.
        let ok = match &hash {
            Some(h) => verify_password(h, password),
            None => {
                let _ = verify_password(DUMMY_HASH, password);
                false
            }
        };
        if !ok {
            return Err(AccountError::BadCredentials);
        }
        let token = new_token()?;
        self.store
            .add_token(&token_hash(&token), name, "login", crate::enrol::now())?;
        Ok(token)
    }

    fn administrators(&self) -> Result<Vec<String>, AccountError> {
        let mut out = Vec::new();
        for u in self.store.users()? {
            if self
                .store
                .grants_of(&u)?
                .iter()
                .any(|r| r == BuiltinRole::Administrator.name())
            {
                out.push(u);
            }
        }
        Ok(out)
    }

    /// Removes a user and its tokens; the last administrator stays.
    pub fn remove_user(&self, name: &str) -> Result<(), AccountError> {
        if self.store.password_hash(name)?.is_none() {
            return Err(AccountError::NoUser(name.into()));
        }
        if self.administrators()? == [name.to_owned()] {
            return Err(AccountError::LastAdministrator(name.into()));
        }
        self.store.remove_user(name)?;
        Ok(())
    }

    pub fn grant(&self, user: &str, role: &str) -> Result<(), AccountError> {
        if self.store.password_hash(user)?.is_none() {
            return Err(AccountError::NoUser(user.into()));
        }
        if !self.role_exists(role)? {
            return Err(AccountError::NoRole(role.into()));
        }
        self.store.grant(user, role)?;
        Ok(())
    }

    pub fn revoke(&self, user: &str, role: &str) -> Result<(), AccountError> {
        if role == BuiltinRole::Administrator.name() && self.administrators()? == [user.to_owned()]
        {
            return Err(AccountError::LastAdministrator(user.into()));
        }
        if !self.store.ungrant(user, role)? {
            return Err(AccountError::NoRole(format!("{role} (for user {user})")));
        }
        Ok(())
    }

    /// Creates or changes a role of the operators' own.
    pub fn put_role(&self, name: &str, privileges: &[String]) -> Result<(), AccountError> {
        if !valid_name(name) {
            return Err(AccountError::BadName(name.into()));
        }
        if BuiltinRole::ALL.iter().any(|r| r.name() == name) {
            return Err(AccountError::BuiltinRole(name.into()));
        }
        let mut ids = Vec::new();
        for p in privileges {
            let privilege =
                Privilege::from_id(p).ok_or_else(|| AccountError::UnknownPrivilege(p.clone()))?;
            ids.push(privilege.id().to_owned());
        }
        ids.sort();
        ids.dedup();
        self.store.put_role(name, &ids)?;
        Ok(())
    }

    pub fn remove_role(&self, name: &str) -> Result<(), AccountError> {
        if BuiltinRole::ALL.iter().any(|r| r.name() == name) {
            return Err(AccountError::BuiltinRole(name.into()));
        }
        if !self.store.remove_role(name)? {
            return Err(AccountError::NoRole(name.into()));
        }
        Ok(())
    }
}

/// A valid argon2id hash of a random password, to verify against when the user does not exist.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$4q+1a1B6bfb4n3J8JxCw7pG0n6kS6mQv8lXNJXkRyW4";

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        let s = Store::in_memory().unwrap();
        seed_roles(&s).unwrap();
        s
    }

    #[test]
    fn passwords_are_hashed_and_verified() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse battery!"));
        assert!(!verify_password("!", ""), "no password never matches");
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn users_log_in_and_the_last_administrator_stays() {
        let s = store();
        let a = Accounts::new(&s);
        a.add_user("alice", "a long password", &["Administrator".into()])
            .unwrap();
        assert!(matches!(
            a.add_user("bob", "short", &[]),
            Err(AccountError::WeakPassword)
        ));
        assert!(matches!(
            a.add_user("bob", "a long password", &["Nope".into()]),
            Err(AccountError::NoRole(_))
        ));
        assert!(
            s.password_hash("bob").unwrap().is_none(),
            "nothing half-made"
        );
        let token = a.login("alice", "a long password").unwrap();
        assert_eq!(
            s.token_user(&token_hash(&token))
                .unwrap()
                .map(|(user, label, _)| (user, label)),
            Some(("alice".to_owned(), "login".to_owned()))
        );
        assert!(matches!(
            a.login("alice", "wrong password"),
            Err(AccountError::BadCredentials)
        ));
        assert!(matches!(
            a.login("nobody", "a long password"),
            Err(AccountError::BadCredentials)
        ));
        assert!(matches!(
            a.remove_user("alice"),
            Err(AccountError::LastAdministrator(_))
        ));
        assert!(matches!(
            a.revoke("alice", "Administrator"),
            Err(AccountError::LastAdministrator(_))
        ));
        a.add_user("bob", "another long one", &["Administrator".into()])
            .unwrap();
        a.remove_user("alice").unwrap();
        assert!(
            s.token_user(&token_hash(&token)).unwrap().is_none(),
            "a removed user's tokens go with it"
        );
    }

    #[test]
    fn roles_of_our_own_hold_known_privileges_and_built_in_ones_stay() {
        let s = store();
        let a = Accounts::new(&s);
        a.put_role(
            "Operator",
            &["VirtualMachine.PowerOn".into(), "System.View".into()],
        )
        .unwrap();
        assert!(matches!(
            a.put_role("Operator", &["Cryptographer.Everything".into()]),
            Err(AccountError::UnknownPrivilege(_))
        ));
        assert!(matches!(
            a.put_role("Administrator", &[]),
            Err(AccountError::BuiltinRole(_))
        ));
        assert!(matches!(
            a.remove_role("ReadOnly"),
            Err(AccountError::BuiltinRole(_))
        ));
        a.add_user("op", "operators password", &["Operator".into()])
            .unwrap();
        assert_eq!(
            s.privileges_of("op").unwrap(),
            ["System.View", "VirtualMachine.PowerOn"]
        );
        a.remove_role("Operator").unwrap();
        assert!(s.privileges_of("op").unwrap().is_empty());
    }
}

/// What protects sign-in: a bound on concurrent password checks (each costs argon2's memory),
/// a doubling wait after repeated failures per user and per address, and how long a login
/// token lives.
#[derive(Debug)]
pub struct LoginGuard {
    /// Seconds a token from `login` stays valid.
    pub token_ttl_secs: i64,
    hashing: tokio::sync::Semaphore,
    failures: std::sync::Mutex<std::collections::HashMap<String, Backoff>>,
}

#[derive(Clone, Copy, Debug)]
struct Backoff {
    failures: u32,
    until: std::time::Instant,
}

/// Failures allowed before waits begin, the longest wait, and how many users and addresses
/// are remembered.
const FREE_FAILURES: u32 = 3;
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(300);
const REMEMBERED: usize = 100_000;

impl LoginGuard {
    pub fn new(token_ttl_secs: i64) -> LoginGuard {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LoginGuard {
            token_ttl_secs,
            hashing: tokio::sync::Semaphore::new(cores),
            failures: Default::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Backoff>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the caller must wait before trying again, if any of `keys` (a user, an
    /// address) is waiting.
    pub fn wait(&self, keys: &[String]) -> Option<std::time::Duration> {
        let now = std::time::Instant::now();
        let f = self.failures();
        keys.iter()
            .filter_map(|k| f.get(k))
            .filter(|b| b.until > now)
            .map(|b| b.until - now)
            .max()
    }

    /// A wrong password for `keys`: from the fourth on, a wait of 1, 2, 4 … 300 s.
    pub fn failed(&self, keys: &[String]) {
        let now = std::time::Instant::now();
        let mut f = self.failures();
        if f.len() >= REMEMBERED {
            f.retain(|_, b| b.until > now);
        }
        for k in keys {
            if f.len() >= REMEMBERED && !f.contains_key(k) {
                continue;
            }
            let b = f.entry(k.clone()).or_insert(Backoff {
                failures: 0,
                until: now,
            });
            b.failures += 1;
            if b.failures > FREE_FAILURES {
                let exp = (b.failures - FREE_FAILURES - 1).min(16);
                b.until = now + std::time::Duration::from_secs(1 << exp).min(MAX_WAIT);
            }
        }
    }

    /// A successful sign-in ends the user's waits (not the address's).
    pub fn succeeded(&self, user_key: &str) {
        self.failures().remove(user_key);
    }

    /// A permit to run one password check; waits while as many run as there are cores.
    pub async fn hashing(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.hashing.acquire().await.ok()
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn waits_start_after_three_failures_double_and_end_with_success() {
        let g = LoginGuard::new(3600);
        let keys = ["user:alice".to_owned(), "addr:10.0.0.1".to_owned()];
        for _ in 0..3 {
            g.failed(&keys);
        }
        assert_eq!(g.wait(&keys), None, "three tries are free");
        g.failed(&keys);
        let first = g.wait(&keys).unwrap();
        assert!(first <= std::time::Duration::from_secs(1));
        g.failed(&keys);
        assert!(g.wait(&keys).unwrap() > first);
        g.succeeded("user:alice");
        assert!(
            g.wait(&["user:alice".to_owned()]).is_none(),
            "the user may sign in"
        );
        assert!(
            g.wait(&["addr:10.0.0.1".to_owned()]).is_some(),
            "the address still waits"
        );
    }
}
