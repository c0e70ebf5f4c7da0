//! `tresor login`, `tresor user …`, `tresor role …`, `tresor grant`: who may do what. A login
//! stores its token in the user's configuration folder (mode 0600), one per server.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tresor_api::requests::{Login, NewPassword, NewRole, NewUser, RoleGrant};
use tresor_api::views::{LoginToken, Me, Role, User, UserRoles};
use zeroize::Zeroizing;

use crate::client::{json_text, typed, Conn};
use crate::output;
use crate::CliError;

/// Where `tresor login` keeps tokens: `$TRESOR_CONFIG_DIR`, else `$XDG_CONFIG_HOME/tresor`, else
/// `~/.config/tresor`.
fn config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TRESOR_CONFIG_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(d).join("tresor"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/tresor"))
}

fn credentials_file() -> Option<PathBuf> {
    config_dir().map(|d| d.join("credentials.json"))
}

fn read_credentials(path: &Path) -> Result<serde_json::Map<String, Value>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .ok_or_else(|| {
                CliError::msg(format!(
                    "{} is not a credentials file; remove it and log in again",
                    path.display()
                ))
            })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(CliError::msg(format!(
            "Cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The token `tresor login` stored for `server`.
pub fn stored_token(server: &str) -> Result<Option<Zeroizing<String>>, CliError> {
    let Some(path) = credentials_file() else {
        return Ok(None);
    };
    Ok(read_credentials(&path)?
        .get(server.trim_end_matches('/'))
        .and_then(Value::as_str)
        .map(|t| Zeroizing::new(t.to_owned())))
}

/// Where `tresor login` keeps the fingerprints of the server certificates it was told to trust.
fn known_servers_file() -> Option<PathBuf> {
    config_dir().map(|d| d.join("known_servers.json"))
}

/// The fingerprint pinned for `server`, if one is.
pub fn pinned_fingerprint(server: &str) -> Result<Option<String>, CliError> {
    let Some(path) = known_servers_file() else {
        return Ok(None);
    };
    Ok(read_credentials(&path)?
        .get(server.trim_end_matches('/'))
        .and_then(Value::as_str)
        .map(str::to_owned))
}

fn store_token(server: &str, token: &str) -> Result<PathBuf, CliError> {
    let path = credentials_file().ok_or_else(|| {
        CliError::msg("No home folder to keep the token in; set TRESOR_CONFIG_DIR")
    })?;
    store_entry(&path, server, token)
}

fn store_pin(server: &str, fingerprint: &str) -> Result<PathBuf, CliError> {
    let path = known_servers_file().ok_or_else(|| {
        CliError::msg("No home folder to keep the server's fingerprint in; set TRESOR_CONFIG_DIR")
    })?;
    store_entry(&path, server, fingerprint)
}

/// Sets `server`'s entry in the JSON object in `path` (mode 0600, in a 0700 folder).
fn store_entry(path: &Path, server: &str, value: &str) -> Result<PathBuf, CliError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = path.to_path_buf();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CliError::msg(format!("Cannot create {}: {e}", dir.display())))?;
    let mut all = read_credentials(&path)?;
    all.insert(server.trim_end_matches('/').to_owned(), json!(value));
    let text = Zeroizing::new(Value::Object(all).to_string());
    let tmp = path.with_extension("json.new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// A password from a file (its first line), a prompt on a terminal, or standard input.
fn read_password(file: Option<&Path>, prompt: &str) -> Result<Zeroizing<String>, CliError> {
    let text = match file {
        Some(f) => Zeroizing::new(std::fs::read_to_string(f).map_err(|e| {
            CliError::msg(format!(
                "Cannot read the password file {}: {e}",
                f.display()
            ))
        })?),
        None if std::io::stdin().is_terminal() => Zeroizing::new(
            rpassword::prompt_password(prompt)
                .map_err(|e| CliError::msg(format!("Cannot read the password: {e}")))?,
        ),
        None => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| CliError::msg(format!("Cannot read the password: {e}")))?;
            line
        }
    };
    let first = Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
    if first.is_empty() {
        return Err(CliError::msg("The password is empty"));
    }
    Ok(first)
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    conn: Conn,
    /// The user to log in as.
    #[arg(long)]
    user: String,
    /// A file whose first line is the password (otherwise it is asked for, or read from
    /// standard input).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Trust the server's certificate if its SHA-256 fingerprint is this one (as
    /// `tresor server fingerprint` prints it on the server), without asking.
    #[arg(long)]
    fingerprint: Option<String>,
}

/// At first contact with an HTTPS server whose certificate nothing vouches for (no CA given, no
/// pin stored): shows its fingerprint and pins it once a person (or `--fingerprint`) confirms it.
fn trust_on_first_use(a: &LoginArgs) -> Result<(), CliError> {
    if !a.conn.server.starts_with("https://")
        || a.conn.ca.is_some()
        || pinned_fingerprint(&a.conn.server)?.is_some()
        || crate::api::insecure()
    {
        return Ok(());
    }
    let seen = crate::api::block_on(tresor_api::client::first_contact(&a.conn.server))??;
    let seen_hex = tresor_tls::normalize_fingerprint(&seen).unwrap_or_default();
    let accepted = match &a.fingerprint {
        Some(given) => {
            let given_hex = tresor_tls::normalize_fingerprint(given).ok_or_else(|| {
                CliError::msg(format!(
                    "--fingerprint {given} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
                ))
            })?;
            if given_hex != seen_hex {
                return Err(CliError::msg(format!(
                    "The server at {} presented a certificate with SHA-256 fingerprint {seen}, not the {given} given: nothing was trusted and no password was sent. Check the address; if the server's certificate was replaced, compare with `tresor server fingerprint` on the server",
                    a.conn.server
                )));
            }
            true
        }
        None if std::io::stdin().is_terminal() => {
            eprintln!(
                "The server at {} presented a certificate nothing here vouches for.\nIts SHA-256 fingerprint is\n  {seen}\nCompare it with what `tresor server fingerprint` prints on the server.",
                a.conn.server
            );
            eprint!("Trust this certificate for {}? [y/N] ", a.conn.server);
            let mut answer = String::new();
            std::io::stdin()
                .read_line(&mut answer)
                .map_err(|e| CliError::msg(format!("Cannot read the answer: {e}")))?;
            matches!(answer.trim(), "y" | "Y" | "yes")
        }
        None => {
            return Err(CliError::msg(format!(
                "The server at {} presented a certificate nothing here vouches for (SHA-256 fingerprint {seen}); give its CA with --server-ca FILE or TRESOR_CA, or confirm the fingerprint with --fingerprint (compare it with `tresor server fingerprint` on the server)",
                a.conn.server
            )))
        }
    };
    if !accepted {
        return Err(CliError::msg(
            "The certificate was not trusted; nothing was sent to the server",
        ));
    }
    let path = store_pin(&a.conn.server, &seen_hex)?;
    eprintln!(
        "Pinned the certificate of {} (in {}).",
        a.conn.server,
        path.display()
    );
    Ok(())
}

pub fn run_login(a: LoginArgs) -> Result<(), CliError> {
    trust_on_first_use(&a)?;
    let password = read_password(a.password_file.as_deref(), "Password: ")?;
    let body = Login {
        user: a.user.clone(),
        password,
    };
    let v = a.conn.call_with(
        "",
        "POST",
        "/api/v1/login",
        &Zeroizing::new(json_text(&body)),
    )?;
    let token = Zeroizing::new(
        typed::<LoginToken>(&v, "a login token")
            .map_err(CliError::msg)?
            .token,
    );
    let path = store_token(&a.conn.server, &token)?;
    println!(
        "Logged in to {} as {}; the token is in {}",
        a.conn.server,
        a.user,
        path.display()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct UserCommand {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: UserSub,
}

#[derive(Debug, Subcommand)]
enum UserSub {
    /// Add a user with a password and roles.
    Add {
        /// The new user's name.
        name: String,
        /// A file whose first line is the password (at least 12 characters).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// A role to grant; repeat for more.
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Every user and their roles.
    List,
    /// Remove a user and its tokens.
    Remove {
        /// The user's name.
        name: String,
    },
    /// Take a role from a user.
    Revoke {
        /// The user's name.
        name: String,
        /// The role to take away.
        role: String,
    },
    /// Set a user's password (your own, or anyone's with Authorization.ModifyPermissions).
    Passwd {
        /// The user's name.
        name: String,
        /// A file whose first line is the new password (at least 12 characters).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// For one's own password: a file whose first line is the current one (without it, it is
        /// asked for, or read as the first line of standard input).
        #[arg(long)]
        current_password_file: Option<PathBuf>,
    },
}

pub fn run_user(cmd: UserCommand) -> Result<(), CliError> {
    let c = &cmd.conn;
    match cmd.command {
        UserSub::Add {
            name,
            password_file,
            roles,
        } => {
            let password = read_password(password_file.as_deref(), "Password for the new user: ")?;
            let body = Zeroizing::new(json_text(&NewUser {
                name: name.clone(),
                password,
                roles,
            }));
            let v = c.call("POST", "/api/v1/users", &body)?;
            c.done(&v, || format!("user {name} added"));
        }
        UserSub::List => {
            let v = c.call("GET", "/api/v1/users", "")?;
            c.print(&v, |v| {
                let users: Vec<User> = match typed(v, "users") {
                    Ok(u) => u,
                    Err(line) => return line,
                };
                let rows: Vec<Vec<String>> = users
                    .into_iter()
                    .map(|u| vec![u.name, u.roles.join(", ")])
                    .collect();
                output::table(&["USER", "ROLES"], &rows)
            });
        }
        UserSub::Remove { name } => {
            let v = c.call("DELETE", &format!("/api/v1/users/{name}"), "")?;
            c.done(&v, || format!("user {name} removed"));
        }
        UserSub::Passwd {
            name,
            password_file,
            current_password_file,
        } => {
            // One's own password: the current one first.
            let me: Me =
                typed(&c.call("GET", "/api/v1/me", "")?, "your account").map_err(CliError::msg)?;
            let current = if me.user == name {
                Some(read_password(
                    current_password_file.as_deref(),
                    "Current password: ",
                )?)
            } else {
                None
            };
            let password = read_password(password_file.as_deref(), "New password: ")?;
            let body = Zeroizing::new(json_text(&NewPassword {
                password,
                current_password: current,
            }));
            let v = c.call("PUT", &format!("/api/v1/users/{name}/password"), &body)?;
            c.done(&v, || format!("password of {name} set"));
        }
        UserSub::Revoke { name, role } => {
            let v = c.call("DELETE", &format!("/api/v1/users/{name}/roles/{role}"), "")?;
            c.done(&v, || format!("role {role} taken from {name}"));
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct RoleCommand {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: RoleSub,
}

#[derive(Debug, Subcommand)]
enum RoleSub {
    /// Every role, built-in and your own, with its privileges.
    List,
    /// A role's privileges.
    Show {
        /// The role's name.
        name: String,
    },
    /// Define a role of your own (or change one) from privileges such as Cryptographer.RegisterVM.
    Create {
        /// The role's name.
        name: String,
        /// A privilege, such as VirtualMachine.PowerOn; repeat for more.
        #[arg(long = "privilege", required = true)]
        privileges: Vec<String>,
    },
    /// Remove a role of your own; users who have it lose it.
    Remove {
        /// The role's name.
        name: String,
    },
}

pub fn run_role(cmd: RoleCommand) -> Result<(), CliError> {
    let c = &cmd.conn;
    let show = |v: &Value| {
        let role: Role = match typed(v, "a role") {
            Ok(r) => r,
            Err(line) => return line,
        };
        let mut s = format!(
            "{}{}\n",
            role.name,
            if role.built_in { " (built in)" } else { "" }
        );
        for p in &role.privileges {
            s.push_str(&format!("  {p}\n"));
        }
        s
    };
    match cmd.command {
        RoleSub::List => {
            let v = c.call("GET", "/api/v1/roles", "")?;
            c.print(&v, |v| {
                let roles: Vec<Role> = match typed(v, "roles") {
                    Ok(r) => r,
                    Err(line) => return line,
                };
                let rows: Vec<Vec<String>> = roles
                    .into_iter()
                    .map(|r| {
                        vec![
                            r.name,
                            if r.built_in { "yes" } else { "" }.into(),
                            r.privileges.len().to_string(),
                        ]
                    })
                    .collect();
                output::table(&["ROLE", "BUILT IN", "PRIVILEGES"], &rows)
            });
        }
        RoleSub::Show { name } => {
            let v = c.call("GET", &format!("/api/v1/roles/{name}"), "")?;
            c.print(&v, show);
        }
        RoleSub::Create { name, privileges } => {
            let v = c.call(
                "POST",
                "/api/v1/roles",
                &json_text(&NewRole { name, privileges }),
            )?;
            c.print(&v, show);
        }
        RoleSub::Remove { name } => {
            let v = c.call("DELETE", &format!("/api/v1/roles/{name}"), "")?;
            c.done(&v, || format!("role {name} removed"));
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    #[command(flatten)]
    conn: Conn,
    /// The user's name.
    user: String,
    /// The role to grant.
    role: String,
}

pub fn run_grant(a: GrantArgs) -> Result<(), CliError> {
    let v = a.conn.call(
        "POST",
        &format!("/api/v1/users/{}/roles", a.user),
        &json_text(&RoleGrant {
            role: a.role.clone(),
        }),
    )?;
    let roles = typed::<UserRoles>(&v, "the user's roles").map_err(CliError::msg)?;
    a.conn
        .done(&v, || format!("{}: {}", a.user, roles.roles.join(", ")));
    Ok(())
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    conn: Conn,
}

/// Ends the session on the server and forgets the stored token.
pub fn run_logout(a: LogoutArgs) -> Result<(), CliError> {
    a.conn.call("POST", "/api/v1/logout", "")?;
    if let Some(path) = credentials_file() {
        let mut all = read_credentials(&path)?;
        if all.remove(a.conn.server.trim_end_matches('/')).is_some() {
            let text = Value::Object(all).to_string();
            std::fs::write(&path, text)
                .map_err(|e| CliError::msg(format!("Cannot write {}: {e}", path.display())))?;
        }
    }
    println!("Logged out of {}", a.conn.server);
    Ok(())
}
