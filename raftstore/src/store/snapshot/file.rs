//! The snapshot file: a region's key-values as of one applied index, one
//! record after another — key length (u32, little-endian), key (the user
//! key, without the data-CF prefix), value length (u32), value. The file
//! is checked as a whole by its size and CRC-32, which the raft message's
//! [`SnapshotMeta`](flotilla_proto::raft_serverpb::SnapshotMeta) carries.
//!
//! Files are written under a `.tmp` name, synced, and renamed into place,
//! so a file under its final name is always complete.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::SnapError;

/// Bytes read or written at a time.
const IO_BUFFER_BYTES: usize = 256 << 10;

/// What a finished file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Bytes in the file.
    pub size: u64,
    /// CRC-32 of the bytes.
    pub checksum: u32,
    /// Records in the file.
    pub kv_count: u64,
}

/// One record of a snapshot file: (user key, value).
pub type Kv = (Vec<u8>, Vec<u8>);

/// The name a generated file is written under until it is complete (one
/// snapshot worker per store writes them, one at a time).
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Received files being written, process-wide: each takes its own `.tmp`
/// name (two streams of one snapshot may arrive at once, after a leader
/// change).
static RECEIVING_SEQ: AtomicU64 = AtomicU64::new(0);

fn unique_tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(
        ".{}.tmp",
        RECEIVING_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    PathBuf::from(name)
}

/// Makes a rename in `path`'s directory durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Writes key-values into a new snapshot file.
pub struct SnapWriter {
    out: BufWriter<File>,
    path: PathBuf,
    hasher: crc32fast::Hasher,
    info: FileInfo,
}

impl SnapWriter {
    /// Starts the file that will be `path` once finished.
    ///
    /// # Errors
    /// The file could not be created.
    pub fn create(path: &Path) -> Result<SnapWriter, SnapError> {
        let file = File::create(tmp_path(path))?;
        Ok(SnapWriter {
            out: BufWriter::with_capacity(IO_BUFFER_BYTES, file),
            path: path.to_owned(),
            hasher: crc32fast::Hasher::new(),
            info: FileInfo {
                size: 0,
                checksum: 0,
                kv_count: 0,
            },
        })
    }

    /// Adds one key-value.
    ///
    /// # Errors
    /// A write failed, or the key or value is longer than a record holds
    /// (4 GiB).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapError> {
        for part in [key, value] {
            let len = u32::try_from(part.len())
                .map_err(|_| SnapError::Corrupt("a key or value over 4 GiB".into()))?;
            self.write(&len.to_le_bytes())?;
            self.write(part)?;
        }
        self.info.kv_count += 1;
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.info.size += bytes.len() as u64;
        Ok(())
    }

    /// Syncs the file and renames it into place.
    ///
    /// # Errors
    /// The flush, sync or rename failed (the `.tmp` file is left for GC).
    pub fn finish(mut self) -> Result<FileInfo, SnapError> {
        self.out.flush()?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(tmp_path(&self.path), &self.path)?;
        sync_parent(&self.path)?;
        self.info.checksum = self.hasher.finalize();
        Ok(self.info)
    }
}

/// Receives a snapshot file chunk by chunk, checking it against what its
/// message says before it takes its final name. Dropped unfinished (the
/// stream broke, or failed its checks), it removes its partial file.
pub struct ChunkWriter {
    /// `None` once finished (renamed into place).
    out: Option<File>,
    path: PathBuf,
    tmp: PathBuf,
    hasher: crc32fast::Hasher,
    size: u64,
}

impl ChunkWriter {
    /// Starts receiving the file that will be `path`.
    ///
    /// # Errors
    /// The file could not be created.
    pub fn create(path: &Path) -> Result<ChunkWriter, SnapError> {
        let tmp = unique_tmp_path(path);
        Ok(ChunkWriter {
            out: Some(File::create(&tmp)?),
            path: path.to_owned(),
            tmp,
            hasher: crc32fast::Hasher::new(),
            size: 0,
        })
    }

    /// Appends a chunk.
    ///
    /// # Errors
    /// A write failed, or the file grew past `limit` bytes.
    pub fn push(&mut self, chunk: &[u8], limit: u64) -> Result<(), SnapError> {
        self.size += chunk.len() as u64;
        if self.size > limit {
            return Err(SnapError::SizeMismatch {
                expected: limit,
                actual: self.size,
            });
        }
        let Some(out) = self.out.as_mut() else {
            return Err(SnapError::Corrupt("a chunk after the end".into()));
        };
        out.write_all(chunk)?;
        self.hasher.update(chunk);
        Ok(())
    }

    /// Checks size and checksum, syncs, and renames the file into place.
    ///
    /// # Errors
    /// [`SnapError::SizeMismatch`] or [`SnapError::ChecksumMismatch`]
    /// (the partial file is removed), or an I/O failure.
    pub fn finish(mut self, size: u64, checksum: u32) -> Result<(), SnapError> {
        let actual = self.hasher.clone().finalize();
        if self.size != size {
            return Err(SnapError::SizeMismatch {
                expected: size,
                actual: self.size,
            });
        }
        if actual != checksum {
            return Err(SnapError::ChecksumMismatch {
                expected: checksum,
                actual,
            });
        }
        if let Some(out) = self.out.as_ref() {
            out.sync_all()?;
        }
        std::fs::rename(&self.tmp, &self.path)?;
        self.out = None;
        sync_parent(&self.path)?;
        Ok(())
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Size and CRC-32 of the file at `path`.
///
/// # Errors
/// The file could not be read.
#[cfg(test)]
pub fn checksum_file(path: &Path) -> Result<(u64, u32), SnapError> {
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0; IO_BUFFER_BYTES];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Reads a snapshot file's records in order.
pub struct SnapReader {
    input: BufReader<File>,
}

impl SnapReader {
    /// Opens the file at `path`.
    ///
    /// # Errors
    /// The file could not be opened.
    pub fn open(path: &Path) -> Result<SnapReader, SnapError> {
        Ok(SnapReader {
            input: BufReader::with_capacity(IO_BUFFER_BYTES, File::open(path)?),
        })
    }

    /// The next key-value, or `None` at the end of the file.
    ///
    /// # Errors
    /// A read failed, or the file ends inside a record.
    pub fn next_kv(&mut self) -> Result<Option<Kv>, SnapError> {
        let Some(key) = self.part(true)? else {
            return Ok(None);
        };
        let Some(value) = self.part(false)? else {
            return Err(SnapError::Corrupt("the file ends after a key".into()));
        };
        Ok(Some((key, value)))
    }

    /// One length-prefixed part; `None` at a clean end of file (allowed
    /// only before a key).
    fn part(&mut self, may_end: bool) -> Result<Option<Vec<u8>>, SnapError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < len.len() {
            let n = self.input.read(&mut len[got..])?;
            if n == 0 {
                if got == 0 && may_end {
                    return Ok(None);
                }
                return Err(SnapError::Corrupt("the file ends inside a record".into()));
            }
            got += n;
        }
        let len = u32::from_le_bytes(len) as usize;
        let mut part = vec![0; len];
        self.input.read_exact(&mut part).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                SnapError::Corrupt("the file ends inside a record".into())
            } else {
                SnapError::Io(e)
            }
        })?;
        Ok(Some(part))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No `.tmp` file is left in `dir`.
    fn no_tmp(dir: &Path) -> bool {
        std::fs::read_dir(dir)
            .unwrap()
            .all(|e| !e.unwrap().path().to_string_lossy().ends_with(".tmp"))
    }

    fn write(path: &Path, kvs: &[(&[u8], &[u8])]) -> FileInfo {
        let mut w = SnapWriter::create(path).unwrap();
        for (k, v) in kvs {
            w.put(k, v).unwrap();
        }
        w.finish().unwrap()
    }

    /// A file reads back record by record, and its size and checksum are
    /// what the writer reported.
    #[test]
    fn records_round_trip_with_size_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.snap");
        let kvs: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"", b""), (b"key", &[7u8; 1000])];
        let info = write(&path, &kvs);
        assert_eq!(info.kv_count, 3);
        assert!(!tmp_path(&path).exists(), "the tmp file stayed");
        assert_eq!(checksum_file(&path).unwrap(), (info.size, info.checksum));
        let mut r = SnapReader::open(&path).unwrap();
        for (k, v) in kvs {
            assert_eq!(r.next_kv().unwrap(), Some((k.to_vec(), v.to_vec())));
        }
        assert_eq!(r.next_kv().unwrap(), None);
    }

    /// A file cut inside a record is corrupt, not a shorter snapshot.
    #[test]
    fn a_truncated_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.snap");
        let info = write(&path, &[(b"a", b"1"), (b"b", b"2")]);
        for cut in [info.size - 1, info.size - 2, 3] {
            let bytes = std::fs::read(&path).unwrap();
            let short = dir.path().join("short.snap");
            std::fs::write(&short, &bytes[..cut as usize]).unwrap();
            let mut r = SnapReader::open(&short).unwrap();
            let mut outcome = Ok(Some((Vec::new(), Vec::new())));
            while let Ok(Some(_)) = outcome {
                outcome = r.next_kv();
            }
            assert!(
                matches!(outcome, Err(SnapError::Corrupt(_))),
                "cut at {cut}"
            );
        }
    }

    /// A received file takes its final name only if its size and checksum
    /// are those announced; otherwise the partial file is removed.
    #[test]
    fn received_chunks_are_checked_before_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("gen.snap");
        let info = write(&src, &[(b"a", b"1"), (b"b", &[9u8; 300])]);
        let bytes = std::fs::read(&src).unwrap();
        let dst = dir.path().join("rev.snap");
        let mut w = ChunkWriter::create(&dst).unwrap();
        for c in bytes.chunks(7) {
            w.push(c, info.size).unwrap();
        }
        w.finish(info.size, info.checksum).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), bytes);

        let bad = dir.path().join("bad.snap");
        let mut w = ChunkWriter::create(&bad).unwrap();
        let mut flipped = bytes.clone();
        flipped[5] ^= 1;
        w.push(&flipped, info.size).unwrap();
        assert!(matches!(
            w.finish(info.size, info.checksum),
            Err(SnapError::ChecksumMismatch { .. })
        ));
        assert!(!bad.exists() && no_tmp(dir.path()));

        let mut w = ChunkWriter::create(&bad).unwrap();
        assert!(matches!(
            w.push(&bytes, info.size - 1),
            Err(SnapError::SizeMismatch { .. })
        ));
        drop(w);
        assert!(no_tmp(dir.path()), "a refused stream left its file");

        // A stream that breaks off leaves nothing either.
        let broken = dir.path().join("broken.snap");
        let mut w = ChunkWriter::create(&broken).unwrap();
        w.push(&bytes[..3], info.size).unwrap();
        drop(w);
        assert!(!broken.exists() && no_tmp(dir.path()));
    }
}
