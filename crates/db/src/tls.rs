//! TLS to PostgreSQL, configured as libpq is: `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in
//! the connection string's query (`postgres://tresor@db:5432/tresor?sslmode=verify-full&
//! sslrootcert=/etc/tresor/db-ca.pem`). The driver knows only `disable`, `prefer` and `require`;
//! these parameters are taken out of the string here and the rest is left to it.

use std::path::PathBuf;
use std::sync::Arc;

use tresor_tls::DatabaseVerify;

/// libpq's `sslmode`, without `allow` (plain first, TLS only if the server insists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not supported; write disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn driver(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// The TLS parameters of a connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The connection string without its TLS parameters, and those parameters.
pub fn split(url: &str) -> Result<(String, TlsSettings), String> {
    let mut settings = TlsSettings {
        // libpq's default.
        mode: SslMode::Prefer,
        root_cert: None,
        cert: None,
        key: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), settings));
    };
    let mut kept = Vec::new();
    let mut mode = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded =
            || percent_decode(value).map_err(|e| format!("{key} in the connection string: {e}"));
        match key {
            "sslmode" => mode = Some(SslMode::parse(&decoded()?)?),
            "sslrootcert" => settings.root_cert = Some(PathBuf::from(decoded()?)),
            "sslcert" => settings.cert = Some(PathBuf::from(decoded()?)),
            "sslkey" => settings.key = Some(PathBuf::from(decoded()?)),
            "sslpassword" | "sslcrl" | "sslcrldir" | "sslsni" => {
                return Err(format!(
                    "{key} is not supported; remove it (keys in sslkey are read unencrypted, from a file only the daemon reads)"
                ))
            }
            _ => kept.push(pair),
        }
    }
    // A root certificate alone asks for a checked connection (stricter than libpq, whose
    // default `prefer` would still fall back to plain text).
    settings.mode = match mode {
        Some(m) => m,
        None if settings.root_cert.is_some() => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if matches!(settings.mode, SslMode::VerifyCa | SslMode::VerifyFull)
        && settings.root_cert.is_none()
    {
        return Err(format!(
            "sslmode={} needs sslrootcert=FILE, the CA certificate (PEM) that issued the database server's certificate",
            settings.mode.as_str()
        ));
    }
    for (name, path) in [
        ("sslrootcert", &settings.root_cert),
        ("sslcert", &settings.cert),
        ("sslkey", &settings.key),
    ] {
        if path.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(format!(
                "{name} must be an absolute path (a daemon's working folder is not its configuration's)"
            ));
        }
    }
    if settings.cert.is_some() != settings.key.is_some() {
        return Err("sslcert and sslkey go together: give both (the client certificate and its key, PEM) or neither".into());
    }
    if settings.mode == SslMode::Disable
        && (settings.root_cert.is_some() || settings.cert.is_some())
    {
        return Err("sslmode=disable with sslrootcert or sslcert: remove one or the other".into());
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, settings))
}

fn percent_decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|d| d.into_owned())
        .map_err(|_| "not UTF-8 once decoded".to_owned())
}

impl TlsSettings {
    /// The driver's mode and the connector that does what these settings ask.
    pub fn connector(
        &self,
    ) -> Result<
        (
            tokio_postgres::config::SslMode,
            tokio_postgres_rustls::MakeRustlsConnect,
        ),
        String,
    > {
        let verify = match self.mode {
            SslMode::VerifyFull => DatabaseVerify::ChainAndName,
            SslMode::VerifyCa => DatabaseVerify::Chain,
            // As libpq's `require`: a root certificate given checks the chain.
            SslMode::Require | SslMode::Prefer if self.root_cert.is_some() => DatabaseVerify::Chain,
            _ => DatabaseVerify::Nothing,
        };
        let cas = match &self.root_cert {
            Some(path) => tresor_tls::load_certs(path).map_err(|e| format!("sslrootcert: {e}"))?,
            None => Vec::new(),
        };
        let client = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((
                tresor_tls::load_certs(cert).map_err(|e| format!("sslcert: {e}"))?,
                tresor_tls::load_key(key).map_err(|e| format!("sslkey: {e}"))?,
            )),
            _ => None,
        };
        let config = tresor_tls::database_client_config(verify, &cas, client)
            .map_err(|e| format!("its TLS settings cannot be used: {e}"))?;
        Ok((
            self.mode.driver(),
            tokio_postgres_rustls::MakeRustlsConnect::new(Arc::unwrap_or_clone(config)),
        ))
    }

    /// Whether someone between this process and the database could read or change what passes.
    pub fn unverified(&self) -> bool {
        match self.mode {
            SslMode::VerifyFull | SslMode::VerifyCa => false,
            SslMode::Require => self.root_cert.is_none(),
            // `prefer` falls back to plain text when the server offers no TLS.
            SslMode::Disable | SslMode::Prefer => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_parameters_are_taken_out_of_the_string() {
        let (url, s) = split(
            "postgres://t@db:5432/x?connect_timeout=3&sslmode=verify-full&sslrootcert=/etc/ca%20dir/ca.pem&application_name=a",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://t@db:5432/x?connect_timeout=3&application_name=a"
        );
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca dir/ca.pem")));
        assert!(!s.unverified());

        let (url, s) = split("postgres://t@db/x").unwrap();
        assert_eq!(url, "postgres://t@db/x");
        assert_eq!(s.mode, SslMode::Prefer);
        assert!(s.unverified());

        // A root certificate alone asks for a checked connection.
        let (url, s) = split("postgres://t@db/x?sslrootcert=/ca.pem").unwrap();
        assert_eq!(url, "postgres://t@db/x");
        assert_eq!(s.mode, SslMode::VerifyFull);
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_what_to_write() {
        let err = |u: &str| split(u).unwrap_err();
        assert!(err("postgres://t@db/x?sslmode=verify-full").contains("needs sslrootcert"));
        assert!(err("postgres://t@db/x?sslmode=allow").contains("not supported"));
        assert!(err("postgres://t@db/x?sslcert=/c.pem").contains("go together"));
        assert!(err("postgres://t@db/x?sslmode=disable&sslrootcert=/ca.pem").contains("disable"));
        assert!(err("postgres://t@db/x?sslrootcert=ca.pem").contains("absolute path"));
        assert!(err("postgres://t@db/x?sslpassword=x").contains("not supported"));
        assert!(err("postgres://t@db/x?sslrootcert=/%ff").contains("UTF-8"));
    }
}
