//! The web console: one page and its script and style, compiled into the binary (no separate
//! install, nothing fetched at run time). It speaks only the public REST API with the signed-in
//! user's token; the server checks every action as it does for the CLI.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// Strict: only this origin's script and style, no inline script, no framing.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The console's routes: `/` and `/console/…`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
}

#[cfg(test)]
mod tests {
    use tresor_core::vm::{ConnectionState, CryptoState, LockReason};

    /// The part of the script between `start` and the next line that closes it.
    fn block<'a>(start: &str, from: &'a str) -> &'a str {
        let i = from
            .find(start)
            .unwrap_or_else(|| panic!("{start} in the console's script"));
        let rest = &from[i..];
        let end = rest.find("\n    },").unwrap_or(rest.len());
        &rest[..end]
    }

    /// Every lock reason and state the core knows has its words in the console, in both
    /// languages: a new variant that the console does not name fails here.
    #[test]
    fn the_console_names_every_lock_reason_and_state() {
        let script = super::SCRIPT;
        let de_at = script.find("\n  de: {").expect("the German texts");
        let (en, de) = script.split_at(de_at);
        for (lang, texts) in [("en", en), ("de", de)] {
            let causes = block("causes: {", texts);
            let reasons = block("reasons: {", texts);
            for r in LockReason::ALL {
                let key = format!("{}:", r.as_str());
                assert!(causes.contains(&key), "{lang} causes lack {key}");
                assert!(reasons.contains(&key), "{lang} reasons lack {key}");
            }
        }
        let badges = block("badges: {", de);
        for name in CryptoState::ALL
            .map(CryptoState::as_str)
            .into_iter()
            .chain(ConnectionState::ALL.map(ConnectionState::as_str))
        {
            assert!(
                badges.contains(&format!("{name}:")),
                "German badges lack {name}"
            );
        }
    }
}
