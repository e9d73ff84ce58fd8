//! Opening things that are not a healthy flotilla database returns a typed
//! error naming the cause, never panics, and changes nothing on disk.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use flotilla_engine::{Cf, Durability, Engine, EngineOptions, Error};

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            out.insert(
                entry.file_name().to_string_lossy().into_owned(),
                fs::read(entry.path()).unwrap(),
            );
        }
    }
    out
}

fn make_db(dir: &Path) {
    let engine = Engine::open(dir, &EngineOptions::default()).unwrap();
    let mut wb = engine.write_batch();
    wb.put(Cf::Default, b"zk", b"v");
    engine.write(wb, Durability::Sync).unwrap();
}

#[test]
fn a_file_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    fs::write(&file, b"hello").unwrap();
    assert!(matches!(
        Engine::open(&file, &EngineOptions::default()),
        Err(Error::NotFlotillaDb { .. })
    ));
    assert_eq!(fs::read(&file).unwrap(), b"hello");
}

#[test]
fn a_directory_of_other_files_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let before = contents(dir.path());
    let err = Engine::open(dir.path(), &EngineOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotFlotillaDb { .. }), "{err}");
    assert_eq!(
        contents(dir.path()),
        before,
        "nothing may be created or overwritten"
    );
}

#[test]
fn missing_path_without_create_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        create_if_missing: false,
        ..Default::default()
    };
    let path = dir.path().join("absent");
    assert!(matches!(
        Engine::open(&path, &opts),
        Err(Error::NotFlotillaDb { .. })
    ));
    assert!(!path.exists());
}

#[test]
fn a_plain_rocksdb_lacks_the_raft_column_family() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, dir.path()).unwrap();
        db.put(b"k", b"v").unwrap();
    }
    let before = contents(dir.path());
    match Engine::open(dir.path(), &EngineOptions::default()) {
        Err(Error::MissingColumnFamily { cf, .. }) => assert_eq!(cf, "raft"),
        other => panic!("expected MissingColumnFamily, got {other:?}"),
    }
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn an_unexpected_column_family_is_not_ours() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        rocksdb::DB::open_cf(&opts, dir.path(), ["default", "raft", "lock"]).unwrap();
    }
    assert!(matches!(
        Engine::open(dir.path(), &EngineOptions::default()),
        Err(Error::NotFlotillaDb { .. })
    ));
}

#[test]
fn garbage_current_file_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    make_db(dir.path());
    fs::write(dir.path().join("CURRENT"), b"MANIFEST-999999\n").unwrap();
    let before = contents(dir.path());
    let err = Engine::open(dir.path(), &EngineOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::Corruption { .. } | Error::RocksDb { .. }),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);
}

fn manifest_of(dir: &Path) -> std::path::PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("MANIFEST-")
        })
        .expect("a manifest")
}

/// RocksDB reads a MANIFEST cut short as a shorter history: here the record
/// that created the `raft` column family is gone. Either way the open fails
/// with a typed error and touches nothing.
#[test]
fn truncated_manifest_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    make_db(dir.path());
    let manifest = manifest_of(dir.path());
    let bytes = fs::read(&manifest).unwrap();
    fs::write(&manifest, &bytes[..bytes.len() / 3]).unwrap();
    let before = contents(dir.path());
    let err = Engine::open(dir.path(), &EngineOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Corruption { .. } | Error::MissingColumnFamily { .. }
        ),
        "{err}"
    );
    assert_eq!(contents(dir.path()), before);
}

/// A flipped byte inside a MANIFEST record fails its checksum: Corruption.
#[test]
fn corrupt_manifest_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    make_db(dir.path());
    let manifest = manifest_of(dir.path());
    let mut bytes = fs::read(&manifest).unwrap();
    // Past the first record header (7 bytes), inside its payload.
    let at = 16.min(bytes.len() - 1);
    bytes[at] ^= 0xff;
    fs::write(&manifest, &bytes).unwrap();
    let before = contents(dir.path());
    let err = Engine::open(dir.path(), &EngineOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(contents(dir.path()), before);
}

#[test]
fn reopening_a_healthy_database_works_twice() {
    let dir = tempfile::tempdir().unwrap();
    make_db(dir.path());
    for _ in 0..2 {
        let engine = Engine::open(dir.path(), &EngineOptions::default()).unwrap();
        assert_eq!(
            engine.get(Cf::Default, b"zk").unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }
}
