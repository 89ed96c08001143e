//! The audit log's secret key: HMAC-SHA256 over each row, so someone holding only the database
//! file (a copied disk, a backup) cannot append or rewrite a row that still verifies.
//!
//! The key lives outside the data directory: by default in `<data-dir>.audit-key` beside it
//! (`--audit-key FILE` or `AUXILIO_AUDIT_KEY_FILE` elsewhere), 32 random bytes as hex, created
//! with mode 0600 the first time a server or `auxilio admin` opens the data directory. Every
//! process that writes or verifies the log must be given the same file.
//!
//! The key reaches [`crate::audit`] through the connection itself: [`install`] registers the
//! SQL function `auxilio_audit_mac(message)` on each connection the [`crate::Database`] opens,
//! with the key captured in it. A connection opened any other way has no such function, so an
//! audit row cannot be written (or a keyed row checked) without the key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use sha2::Sha256;

/// Name of the SQL function that computes a row's MAC on a keyed connection.
pub const MAC_FUNCTION: &str = "auxilio_audit_mac";

/// Suffix added to the data directory's name for the default key file.
pub const DEFAULT_SUFFIX: &str = ".audit-key";

#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error(
        "cannot read or create the audit key at {path}: {source}; give a writable place with --audit-key FILE (or AUXILIO_AUDIT_KEY_FILE), outside the data directory"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the audit key at {path} is not 64 hexadecimal characters: restore the original file (rows signed with another key no longer verify)"
    )]
    Malformed { path: PathBuf },
    #[error("the audit key must live outside the data directory, not at {path}")]
    InsideDataDirectory { path: PathBuf },
}

/// A loaded key. Debug output never shows it.
#[derive(Clone)]
pub struct AuditKey {
    key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

/// Where the key of `data_dir` lives unless told otherwise: `<data-dir>.audit-key`, beside it.
pub fn default_path(data_dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let absolute = if absolute.file_name().is_some() {
        absolute
    } else {
        // `..` and the like: the directory's real name.
        std::fs::canonicalize(&absolute).unwrap_or(absolute)
    };
    let mut name = absolute
        .file_name()
        .map(|name| name.to_os_string())
        .unwrap_or_else(|| "auxilio-data".into());
    name.push(DEFAULT_SUFFIX);
    absolute.with_file_name(name)
}

impl AuditKey {
    /// Reads the key at `path`, or makes a new one there (mode 0600) if there is none.
    pub fn load_or_create(path: &Path, data_dir: &Path) -> Result<Self, AuditKeyError> {
        let io = |source| AuditKeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let (Ok(key_dir), Ok(data)) = (std::path::absolute(path), std::path::absolute(data_dir))
            && key_dir.starts_with(&data)
        {
            return Err(AuditKeyError::InsideDataDirectory {
                path: path.to_path_buf(),
            });
        }
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::parse(path, &text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(err)),
        }
        // Written whole to a private temporary file, then linked into place: a server and an
        // `auxilio admin` starting at once both end up reading the one key that won.
        let key: [u8; 32] = auxilio_core::id::random_bytes();
        let temporary = path.with_extension(format!("new-{}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options.open(&temporary).and_then(|mut file| {
            writeln!(file, "{}", hex(&key))?;
            file.sync_all()
        });
        if let Err(err) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(io(err));
        }
        let linked = std::fs::hard_link(&temporary, path);
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created the audit key; keep it with the backups, apart from the database");
                Ok(Self { key: Arc::new(key) })
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(io)?;
                Self::parse(path, &text)
            }
            Err(err) => Err(io(err)),
        }
    }

    fn parse(path: &Path, text: &str) -> Result<Self, AuditKeyError> {
        let text = text.trim();
        let malformed = || AuditKeyError::Malformed {
            path: path.to_path_buf(),
        };
        if text.len() != 64 || !text.is_ascii() {
            return Err(malformed());
        }
        let mut key = [0u8; 32];
        for (index, byte) in key.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).map_err(|_| malformed())?;
        }
        Ok(Self { key: Arc::new(key) })
    }

    /// HMAC-SHA256 of `message` under this key.
    pub fn mac(&self, message: &[u8]) -> Vec<u8> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.key.as_slice()).expect("HMAC takes any key length");
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }

    /// Registers [`MAC_FUNCTION`] on `conn`, holding this key. Only SQL the server runs itself
    /// can call it (not a trigger or view stored in the file).
    pub fn install(&self, conn: &Connection) -> Result<(), rusqlite::Error> {
        let key = self.clone();
        conn.create_scalar_function(
            MAC_FUNCTION,
            1,
            FunctionFlags::SQLITE_UTF8
                | FunctionFlags::SQLITE_DETERMINISTIC
                | FunctionFlags::SQLITE_DIRECTONLY,
            move |context| {
                let message: Vec<u8> = context.get(0)?;
                Ok(key.mac(&message))
            },
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_key_lives_beside_the_data_directory_not_in_it() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        assert_eq!(default_path(&data), tmp.path().join("data.audit-key"));
        assert_eq!(
            default_path(&tmp.path().join("data/")),
            tmp.path().join("data.audit-key")
        );
        let inside = AuditKey::load_or_create(&data.join("key"), &data).unwrap_err();
        assert!(matches!(inside, AuditKeyError::InsideDataDirectory { .. }));
    }

    #[test]
    fn a_new_key_is_private_and_read_back_the_same() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let path = default_path(&data);
        let made = AuditKey::load_or_create(&path, &data).unwrap();
        let read = AuditKey::load_or_create(&path, &data).unwrap();
        assert_eq!(made.mac(b"row"), read.mac(b"row"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            AuditKey::load_or_create(&path, &data).unwrap_err(),
            AuditKeyError::Malformed { .. }
        ));
        assert!(!format!("{made:?}").contains(&hex(&made.key[..])));
    }
}
