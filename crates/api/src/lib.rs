//! Tresor's REST API as a contract shared by the server and its clients: the error codes and the
//! one shape of an error answer ([`error`]), and the client every Rust caller uses ([`client`]):
//! the CLI, the benchmarks and the tests.

#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod requests;
pub mod views;

pub use client::{Answer, Client, ClientError, Trust};
pub use error::{ErrorBody, ErrorCode};

/// The JSON Schemas of the API's types, for the OpenAPI document's `components/schemas`: every
/// view and answer, every request body and query, `ErrorAnswer`, and what they refer to,
/// generated from the types themselves.
pub fn schemas() -> serde_json::Map<String, serde_json::Value> {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    generator.subschema_for::<views::Vm>();
    generator.subschema_for::<views::Host>();
    generator.subschema_for::<views::HostWithVms>();
    generator.subschema_for::<views::Event>();
    generator.subschema_for::<views::Alarm>();
    generator.subschema_for::<error::ErrorAnswer>();
    generator.subschema_for::<requests::CreateVm>();
    generator.subschema_for::<requests::UnlockMany>();
    generator.subschema_for::<requests::TokenRequest>();
    generator.subschema_for::<requests::RegisterRequest>();
    generator.subschema_for::<requests::CryptoRequest>();
    generator.subschema_for::<requests::AddDisk>();
    generator.subschema_for::<requests::VmQuery>();
    generator.subschema_for::<requests::EventQuery>();
    generator.subschema_for::<requests::LangQuery>();
    generator.subschema_for::<requests::FileQuery>();
    generator.subschema_for::<requests::ConsoleQuery>();
    generator.subschema_for::<requests::ConsoleInput>();
    generator.subschema_for::<requests::AdoptVm>();
    generator.subschema_for::<views::ConsoleOutput>();
    generator.subschema_for::<views::DiscoveredVm>();
    generator.subschema_for::<views::VmDone>();
    generator.subschema_for::<views::VmPower>();
    generator.subschema_for::<views::VmUnlock>();
    generator.subschema_for::<views::UnlockStarted>();
    generator.subschema_for::<views::Registered>();
    generator.subschema_for::<views::Task>();
    generator.subschema_for::<requests::TaskQuery>();
    generator.subschema_for::<views::JoinToken>();
    generator.subschema_for::<views::HostMode>();
    generator.subschema_for::<views::HostRemoved>();
    generator.subschema_for::<views::HostRebooted>();
    generator.subschema_for::<views::AlarmAcknowledged>();
    generator.subschema_for::<views::Provider>();
    generator.subschema_for::<views::ProviderAdded>();
    generator.subschema_for::<views::ProviderStatus>();
    generator.subschema_for::<views::ProviderDefault>();
    generator.subschema_for::<views::ProviderRemoved>();
    generator.subschema_for::<views::LoginToken>();
    generator.subschema_for::<views::LoggedOut>();
    generator.subschema_for::<views::Me>();
    generator.subschema_for::<views::UserLang>();
    generator.subschema_for::<views::User>();
    generator.subschema_for::<views::UserRoles>();
    generator.subschema_for::<views::Removed>();
    generator.subschema_for::<views::Role>();
    generator.subschema_for::<views::PasswordSet>();
    generator.subschema_for::<views::Setting>();
    generator.subschema_for::<views::Settings>();
    generator.subschema_for::<views::Diagnosis>();
    generator.subschema_for::<requests::Login>();
    generator.subschema_for::<requests::NewUser>();
    generator.subschema_for::<requests::NewPassword>();
    generator.subschema_for::<requests::RoleGrant>();
    generator.subschema_for::<requests::NewRole>();
    generator.subschema_for::<requests::SetValue>();
    generator.subschema_for::<requests::AddProvider>();
    generator.subschema_for::<requests::SignedCertificate>();
    generator.take_definitions(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_schemas_name_every_state_and_code() {
        let s = super::schemas();
        let vm = serde_json::Value::Object(s.clone())["Vm"].to_string();
        for name in [
            "kmsClusterError",
            "keyMissingOnHost",
            "unencrypted",
            "disconnected",
            "poweredOn",
        ] {
            assert!(vm.contains(name), "{name} in {vm}");
        }
        let all = serde_json::Value::Object(s).to_string();
        for code in crate::ErrorCode::ALL {
            assert!(all.contains(code.as_str()), "{code}");
        }
        // References point into components/schemas.
        assert!(all.contains("#/components/schemas/KeyId"), "{all}");
    }
}
