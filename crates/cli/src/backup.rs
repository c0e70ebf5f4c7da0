//! `tresor server backup|restore` and `tresor kms backup|restore`: what the command line does
//! around the parts' own backup code (the passphrase from its file, the backup file, what to say).

use std::path::Path;

use tresor_ops::backup::Manifest;

use crate::CliError;

/// Makes a backup with the passphrase in `passphrase_file` and writes it to `file` (a new file,
/// 0600); `what` names the part ("Server", "Key server").
pub(crate) fn write<E: std::fmt::Display>(
    what: &str,
    file: &Path,
    passphrase_file: &Path,
    make: impl FnOnce(&[u8]) -> Result<(Manifest, Vec<u8>), E>,
) -> Result<(), CliError> {
    let passphrase = tresor_ops::backup::passphrase_from(passphrase_file)
        .map_err(|e| CliError::msg(e.to_string()))?;
    let (manifest, sealed) =
        make(passphrase.as_bytes()).map_err(|e| CliError::msg(e.to_string()))?;
    crate::kms::write_private(file, &sealed)?;
    println!(
        "{what} backed up to {} (schema {}, sealed; keep the passphrase apart from it).",
        file.display(),
        manifest.schema
    );
    Ok(())
}

/// Restores the backup in `file` with the passphrase in `passphrase_file` into `dir`; `start`
/// is the command that runs what was restored, followed by its configuration's path.
pub(crate) fn restore<E: std::fmt::Display>(
    what: &str,
    file: &Path,
    passphrase_file: &Path,
    dir: &Path,
    start: &str,
    restore: impl FnOnce(&[u8], &[u8], &Path) -> Result<(Manifest, std::path::PathBuf), E>,
) -> Result<(), CliError> {
    let passphrase = tresor_ops::backup::passphrase_from(passphrase_file)
        .map_err(|e| CliError::msg(e.to_string()))?;
    let sealed = std::fs::read(file)
        .map_err(|e| CliError::msg(format!("Cannot read {}: {e}", file.display())))?;
    let (manifest, config) =
        restore(&sealed, passphrase.as_bytes(), dir).map_err(|e| CliError::msg(e.to_string()))?;
    println!(
        "{what} restored into {} from a backup of {} (tresor {}).",
        dir.display(),
        crate::output::time(manifest.created),
        manifest.release
    );
    println!("Start it with: {start} {}", config.display());
    Ok(())
}
