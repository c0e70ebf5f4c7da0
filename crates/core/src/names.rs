//! Enums whose variants have names in JSON, the store, the CLI and the console: one list per
//! enum declares each variant with its name, and from it come the enum, `ALL` (every variant, in
//! order), `as_str`, `FromStr` and the serde names. A new variant is so in `ALL` at once, and
//! every `match` on the enum elsewhere fails to build until it handles it; what lists names from
//! `ALL` (the API's schemas, the console's test) follows by itself.

/// A state or reason name that is not one of its type's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a known state name")]
pub struct UnknownName(pub String);

/// Declares a named enum (see the module's documentation).
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every variant, in the order declared.
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            /// Its name in JSON, the store and the CLI.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::names::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::names::UnknownName(s.to_owned()))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::host::HostCryptoState;
    use crate::protocol::PowerState;
    use crate::vm::{ConnectionState, CryptoState, LockReason};

    fn check<T>(all: &[T])
    where
        T: Copy + std::fmt::Debug + PartialEq + serde::Serialize + std::str::FromStr,
        T: std::fmt::Display,
        <T as std::str::FromStr>::Err: std::fmt::Debug,
    {
        for v in all {
            let name = v.to_string();
            assert_eq!(serde_json::to_value(v).unwrap(), name.as_str(), "{v:?}");
            assert_eq!(name.parse::<T>().unwrap(), *v);
        }
        assert!("noSuchName".parse::<T>().is_err());
    }

    #[test]
    fn every_name_is_the_same_in_json_text_and_back() {
        check(&CryptoState::ALL);
        check(&ConnectionState::ALL);
        check(&LockReason::ALL);
        check(&HostCryptoState::ALL);
        check(&PowerState::ALL);
        assert_eq!(LockReason::ALL.len(), 3);
    }
}
