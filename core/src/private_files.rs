//! Files only their owner may read: the phone's store (records and the device's token) and the
//! server's database hold people's data, so they are created `0600` in directories `0700`,
//! whatever the process's umask. SQLite creates a database's `-wal` and `-shm` files with the
//! main file's mode, so preparing the main file before SQLite opens it covers them; files left
//! readable by an earlier version are narrowed when opened.
//!
//! On platforms other than unix these functions only create what is missing.

use std::path::Path;

/// The mode of a database file and its companions.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;
/// The mode of a directory this code creates for them.
#[cfg(unix)]
const DIRECTORY_MODE: u32 = 0o700;

/// The companions SQLite keeps next to a database in WAL mode.
const COMPANION_SUFFIXES: [&str; 2] = ["-wal", "-shm"];

/// Creates `dir` (and its missing parents) readable by its owner only; a directory that
/// already exists keeps its mode (it may be one the owner chose, such as the app's own).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIRECTORY_MODE);
    builder.create(dir)?;
    #[cfg(unix)]
    set_mode(dir, DIRECTORY_MODE)?;
    Ok(())
}

/// Makes sure the database at `path` exists and is readable by its owner only, with its `-wal`
/// and `-shm` files if they exist, before SQLite opens it. Its directory is created (owner
/// only) if missing.
pub fn prepare_private_database(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options.open(path)?;
    #[cfg(unix)]
    {
        set_mode(path, FILE_MODE)?;
        for suffix in COMPANION_SUFFIXES {
            let mut companion = path.as_os_str().to_owned();
            companion.push(suffix);
            let companion = Path::new(&companion);
            if companion.exists() {
                set_mode(companion, FILE_MODE)?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = COMPANION_SUFFIXES;
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_readable_database_left_by_an_earlier_version_is_narrowed_with_its_companions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new").join("x.db");
        prepare_private_database(&path).unwrap();
        assert_eq!((mode(path.parent().unwrap()), mode(&path)), (0o700, 0o600));
        let wal = dir.path().join("new").join("x.db-wal");
        std::fs::write(&wal, b"").unwrap();
        for file in [&path, &wal] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        prepare_private_database(&path).unwrap();
        assert_eq!((mode(&path), mode(&wal)), (0o600, 0o600));
    }
}
