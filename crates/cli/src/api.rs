//! The CLI's use of the API client: a small runtime per request, the server's trust decided from
//! the command line, the environment and the pins `tresor login` keeps.

use std::future::Future;

use serde_json::Value;
use tresor_api::{Client, ClientError, Trust};

use crate::CliError;

/// Runs `f` to completion on a runtime of its own (the CLI is synchronous).
pub(crate) fn block_on<F: Future>(f: F) -> Result<F::Output, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::msg(format!("Cannot start the runtime: {e}")))?;
    Ok(rt.block_on(f))
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        match e {
            ClientError::Api { error, .. } => CliError::Api(error),
            other => CliError::msg(other.to_string()),
        }
    }
}

/// Whether `TRESOR_INSECURE` asks for no certificate checks (tests only); says so on standard
/// error when it does.
pub(crate) fn insecure() -> bool {
    let on = std::env::var("TRESOR_INSECURE")
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false);
    static SAID: std::sync::Once = std::sync::Once::new();
    if on {
        SAID.call_once(|| eprintln!(
            "tresor: warning: TRESOR_INSECURE is set, so the server's certificate is not checked; it exists for tests only (anyone between you and the server could read your password and token)"
        ));
    }
    on
}

/// How to trust `server`: the CA given, else the pin `tresor login` stored, else (tests only)
/// nothing; with none of them, an HTTPS server is refused with its fingerprint shown.
pub(crate) fn trust(server: &str, ca: Option<&std::path::Path>) -> Result<Trust, CliError> {
    if let Some(ca) = ca {
        return Ok(Trust::ca_file(ca)?);
    }
    if let Some(pin) = crate::access::pinned_fingerprint(server)? {
        return Ok(Trust::Pinned(pin));
    }
    if insecure() {
        return Ok(Trust::Insecure);
    }
    Ok(Trust::Ca(Vec::new()))
}

/// A request body given as JSON text (empty: none).
pub(crate) fn json_body(body: &str) -> Result<Option<Value>, CliError> {
    if body.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(body)
        .map(Some)
        .map_err(|e| CliError::msg(format!("The request body is not JSON: {e}")))
}

/// One request; the status and the body as text.
pub(crate) fn send_text(
    client: &Client,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), CliError> {
    let body = json_body(body)?;
    Ok(block_on(client.send_text(method, path, body.as_ref()))??)
}
