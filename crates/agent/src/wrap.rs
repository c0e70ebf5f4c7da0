//! Wrapping data keys under key-encryption keys: AES-256-GCM with the VM's id and the key's
//! purpose as associated data, so that a wrapped key copied to another VM or disk, or opened with
//! another KEK, fails to open.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Version prefix of a wrapped key's text form.
const PREFIX: &str = "tresor-wrap-v1:";

/// What a data key protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose<'a> {
    /// The VM's home data key (its encrypted configuration).
    Home,
    /// The secret of the disk with this id.
    Disk(&'a str),
}

/// Why a key cannot be wrapped or unwrapped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WrapError {
    #[error("A key-encryption key must be 32 bytes (AES-256), not {0}")]
    KekLength(usize),
    #[error("Wrapped key is not in Tresor's format")]
    Format,
    #[error(
        "Wrapped key does not open: wrong key-encryption key, or it belongs to another VM or disk"
    )]
    Open,
    #[error("The system random number generator failed")]
    Random,
}

fn aad(vm_id: &str, purpose: Purpose<'_>) -> Vec<u8> {
    let p = match purpose {
        Purpose::Home => "home".to_owned(),
        Purpose::Disk(id) => format!("disk/{id}"),
    };
    format!("tresor/dek/v1\0{vm_id}\0{p}").into_bytes()
}

fn key(kek: &[u8]) -> Result<LessSafeKey, WrapError> {
    if kek.len() != 32 {
        return Err(WrapError::KekLength(kek.len()));
    }
    let unbound =
        UnboundKey::new(&AES_256_GCM, kek).map_err(|_| WrapError::KekLength(kek.len()))?;
    Ok(LessSafeKey::new(unbound))
}

/// Wraps `dek` under `kek` for this VM and purpose; returns text for a config file.
pub fn wrap(
    kek: &[u8],
    dek: &[u8],
    vm_id: &str,
    purpose: Purpose<'_>,
) -> Result<String, WrapError> {
    let key = key(kek)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| WrapError::Random)?;
    let mut buf = dek.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad(vm_id, purpose)),
        &mut buf,
    )
    .map_err(|_| WrapError::Random)?;
    let mut out = String::from(PREFIX);
    for b in nonce.iter().chain(buf.iter()) {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

/// Opens what [`wrap`] made, with the same KEK, VM and purpose.
pub fn unwrap(
    kek: &[u8],
    wrapped: &str,
    vm_id: &str,
    purpose: Purpose<'_>,
) -> Result<Zeroizing<Vec<u8>>, WrapError> {
    let key = key(kek)?;
    let hex = wrapped.strip_prefix(PREFIX).ok_or(WrapError::Format)?;
    if !hex.is_ascii() || !hex.len().is_multiple_of(2) || hex.len() < 2 * (NONCE_LEN + 16) {
        return Err(WrapError::Format);
    }
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| WrapError::Format)?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[..NONCE_LEN]);
    let mut buf = Zeroizing::new(bytes[NONCE_LEN..].to_vec());
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(vm_id, purpose)),
            &mut buf,
        )
        .map_err(|_| WrapError::Open)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_key_opens_only_with_its_kek_vm_and_purpose() {
        let kek = [3u8; 32];
        let dek = [9u8; 32];
        let w = wrap(&kek, &dek, "vm-1", Purpose::Disk("d0")).unwrap();
        assert_eq!(
            &unwrap(&kek, &w, "vm-1", Purpose::Disk("d0")).unwrap()[..],
            &dek
        );
        assert_eq!(
            unwrap(&[4u8; 32], &w, "vm-1", Purpose::Disk("d0")),
            Err(WrapError::Open)
        );
        assert_eq!(
            unwrap(&kek, &w, "vm-2", Purpose::Disk("d0")),
            Err(WrapError::Open)
        );
        assert_eq!(
            unwrap(&kek, &w, "vm-1", Purpose::Disk("d1")),
            Err(WrapError::Open)
        );
        assert_eq!(
            unwrap(&kek, &w, "vm-1", Purpose::Home),
            Err(WrapError::Open)
        );
        assert_eq!(
            unwrap(&kek, "garbage", "vm-1", Purpose::Home),
            Err(WrapError::Format)
        );
        assert!(
            !w.contains("0909090909"),
            "the data key is not visible in the wrapped text"
        );
        assert_eq!(
            wrap(&[1u8; 16], &dek, "v", Purpose::Home),
            Err(WrapError::KekLength(16))
        );
    }
}
