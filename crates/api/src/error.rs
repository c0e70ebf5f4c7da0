//! Error codes and the error answer. Every error the API gives has this shape:
//!
//! ```json
//! {"error": {"code": "vmLocked", "message": "…", "messages": {"en": "…", "de": "…"}}}
//! ```
//!
//! `code` is stable (scripts test it); `message` is English and says what failed and what to do;
//! `messages` holds the same in every language the server has it in (for the messages an operator
//! meets in the console). Each code has one HTTP status.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a request failed. The HTTP status follows from the code ([`ErrorCode::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// The request is not what the operation takes (body, query, path).
    BadRequest,
    /// A name (VM, host, provider, user, role) that is not allowed.
    BadName,
    /// A VM's shape is out of bounds (disks, sizes, memory).
    BadShape,
    /// A value that is not allowed for a setting or an account.
    Invalid,
    /// No token, or one that is unknown or expired.
    Unauthenticated,
    /// The user lacks the privilege the operation needs.
    Forbidden,
    /// The current password given is wrong.
    WrongPassword,
    /// Changing one's own password needs the current one.
    CurrentPasswordNeeded,
    /// Too many failed sign-ins; wait.
    TooManyAttempts,
    /// No such VM, host, provider, user, role, alarm or setting.
    NotFound,
    /// A VM a host reports that the server's registry does not hold.
    NotRegistered,
    /// It exists already.
    Exists,
    /// The change conflicts with the present state (a user, a role).
    Conflict,
    /// The registry holds something else under that VM id, host or key.
    RegistryConflict,
    /// The VM is locked: unlock it (or unregister it).
    VmLocked,
    /// A disk's key is missing.
    DiskKeyMissing,
    /// The VM is not encrypted.
    PlainVm,
    /// The VM's host is not connected.
    HostUnavailable,
    /// The host refused the operation.
    HostRefused,
    /// No key provider is configured to make keys with.
    NoProvider,
    /// The key provider cannot be reached.
    ProviderUnreachable,
    /// The key provider refuses the server.
    ProviderRefused,
    /// The key provider answered with an error.
    ProviderError,
    /// The key is missing or not active on the key provider.
    KeyMissingOnKms,
    /// The request body is larger than the operation takes.
    TooLarge,
    /// The server cannot read or write its database.
    Storage,
    /// Something failed inside the server; its log says what.
    Internal,
    /// This server stands by (another one leads): the answer's `Location` is the leader, which
    /// takes the request.
    NotLeader,
    /// No server leads at the moment (one takes over within the lease's length); try again.
    NoLeader,
    /// A standby sent the request to the leader, whose answer did not come back: it may have
    /// been carried out.
    LeaderLost,
}

impl ErrorCode {
    /// Every code, for documents and tests.
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::BadRequest,
        ErrorCode::BadName,
        ErrorCode::BadShape,
        ErrorCode::Invalid,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::WrongPassword,
        ErrorCode::CurrentPasswordNeeded,
        ErrorCode::TooManyAttempts,
        ErrorCode::NotFound,
        ErrorCode::NotRegistered,
        ErrorCode::Exists,
        ErrorCode::Conflict,
        ErrorCode::RegistryConflict,
        ErrorCode::VmLocked,
        ErrorCode::DiskKeyMissing,
        ErrorCode::PlainVm,
        ErrorCode::HostUnavailable,
        ErrorCode::HostRefused,
        ErrorCode::NoProvider,
        ErrorCode::ProviderUnreachable,
        ErrorCode::ProviderRefused,
        ErrorCode::ProviderError,
        ErrorCode::KeyMissingOnKms,
        ErrorCode::TooLarge,
        ErrorCode::Storage,
        ErrorCode::Internal,
        ErrorCode::NotLeader,
        ErrorCode::NoLeader,
        ErrorCode::LeaderLost,
    ];

    /// The HTTP status of an answer with this code.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BadRequest | BadName | BadShape | Invalid | CurrentPasswordNeeded => 400,
            Unauthenticated => 401,
            Forbidden | WrongPassword => 403,
            NotFound | NotRegistered => 404,
            Exists | Conflict | RegistryConflict | VmLocked | DiskKeyMissing | PlainVm
            | NoProvider | KeyMissingOnKms => 409,
            TooLarge => 413,
            HostRefused => 422,
            TooManyAttempts => 429,
            Storage | Internal => 500,
            ProviderUnreachable | ProviderRefused | ProviderError | LeaderLost => 502,
            HostUnavailable | NoLeader => 503,
            NotLeader => 307,
        }
    }

    /// The code as it is written in an answer (`vmLocked`).
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "badRequest",
            BadName => "badName",
            BadShape => "badShape",
            Invalid => "invalid",
            Unauthenticated => "unauthenticated",
            Forbidden => "forbidden",
            WrongPassword => "wrongPassword",
            CurrentPasswordNeeded => "currentPasswordNeeded",
            TooManyAttempts => "tooManyAttempts",
            NotFound => "notFound",
            NotRegistered => "notRegistered",
            Exists => "exists",
            Conflict => "conflict",
            RegistryConflict => "registryConflict",
            VmLocked => "vmLocked",
            DiskKeyMissing => "diskKeyMissing",
            PlainVm => "plainVm",
            HostUnavailable => "hostUnavailable",
            HostRefused => "hostRefused",
            NoProvider => "noProvider",
            ProviderUnreachable => "providerUnreachable",
            ProviderRefused => "providerRefused",
            ProviderError => "providerError",
            KeyMissingOnKms => "keyMissingOnKms",
            TooLarge => "tooLarge",
            Storage => "storage",
            Internal => "internal",
            NotLeader => "notLeader",
            NoLeader => "noLeader",
            LeaderLost => "leaderLost",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The same message in each language the server has it in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Messages {
    pub en: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub de: Option<String>,
}

/// What is inside `{"error": …}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// Unknown to this client when the server is newer: `None`, and `message` still says it.
    #[serde(default, deserialize_with = "lenient_code")]
    pub code: Option<ErrorCode>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Messages>,
}

fn lenient_code<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ErrorCode>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// The whole error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorAnswer {
    pub error: ErrorBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_written_as_their_names_and_each_has_a_status() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str());
            // Every code is an error status, but a standby's: it sends the request on (307).
            match code {
                ErrorCode::NotLeader => assert_eq!(code.status(), 307),
                _ => assert!((400..600).contains(&code.status()), "{code}"),
            }
        }
    }

    #[test]
    fn an_unknown_code_still_reads() {
        let b: ErrorBody =
            serde_json::from_str(r#"{"code":"fromTheFuture","message":"Something"}"#).unwrap();
        assert_eq!(b.code, None);
        assert_eq!(b.message, "Something");
    }
}
