//! Who else on the machine can read the records: the server's database (with its `-wal` and
//! `-shm` files) and a phone's store (which also holds its token) are created readable and
//! writable by their owner only, and the directories the server creates for them are the owner's
//! alone, whatever the process's umask.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use auxilio_server::ServerConfig;
use auxilio_server::directory::Role;
use auxilio_tests::{Device, EXAMPLE_ENCOUNTER, TestServer, add_team, enroll};

/// Every file and directory under `root` (itself included) with its permission bits.
fn modes_under(root: &Path) -> Vec<(String, bool, u32)> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let metadata = std::fs::metadata(&path).unwrap();
        found.push((
            path.display().to_string(),
            metadata.is_dir(),
            metadata.permissions().mode() & 0o777,
        ));
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                todo.push(entry.unwrap().path());
            }
        }
    }
    found
}

fn assert_owner_only(root: &Path, expect_files: &[&str]) {
    let found = modes_under(root);
    for name in expect_files {
        assert!(
            found.iter().any(|(path, _, _)| path.ends_with(name)),
            "{name} exists under {} (found {found:?})",
            root.display()
        );
    }
    for (path, is_dir, mode) in &found {
        let wanted = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(
            *mode, wanted,
            "{path} has mode {mode:o}, wanted {wanted:o}: only the owner may read it"
        );
    }
}

#[test]
fn the_server_database_and_a_phone_store_are_readable_by_their_owner_only() {
    let root = tempfile::tempdir().unwrap();
    // A directory the server creates itself, under a parent readable by others.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = root.path().join("data");
    add_team(&data, "sonora");
    let server = TestServer::start_with(&data, ServerConfig::default());
    let phones = tempfile::tempdir().unwrap();
    // A folder the store creates for itself.
    let phone_dir = phones.path().join("app");
    let mut phone = Device::new(
        &phone_dir,
        "phone",
        &server.url,
        &enroll(&data, "sonora", Role::Field),
    );
    phone.log(EXAMPLE_ENCOUNTER);
    phone.sync().unwrap();

    assert_owner_only(
        &data,
        &["auxilio.sqlite", "auxilio.sqlite-wal", "auxilio.sqlite-shm"],
    );
    assert_owner_only(&phone_dir, &["phone.db", "phone.db-wal", "phone.db-shm"]);
}
