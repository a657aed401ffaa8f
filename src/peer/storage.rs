//! Where a swarm keeps its chunks: a trait, so simulations can use memory,
//! and the disk implementation the peer uses.
//!
//! On disk a download lives in `DIR/<name>.part`, each chunk written at its
//! offset (memory does not grow with the file), with a small sidecar
//! `DIR/<name>.part.bitmap` recording which chunks were written:
//! `b"CSPART01"`, the file's SHA-256, then the chunk bitmap (MSB first).
//! On restart every chunk the sidecar lists is read back and checked against
//! the manifest, so a torn write costs one chunk, not the file. When every
//! chunk is in, the whole file's SHA-256 is checked and only then is the file
//! renamed to `DIR/<name>`: a corrupt file never appears under that name.

use super::bitmap::ChunkBitmap;
use crate::manifest::{sha256, ChunkIndex, Manifest};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Chunk storage for one file. The swarm writes a chunk only after it has
/// verified it against the manifest.
pub trait ChunkStore {
    /// Reads chunk `index` (of the manifest's length for it).
    fn read_chunk(&mut self, index: ChunkIndex) -> Result<Vec<u8>, StorageError>;
    fn write_chunk(&mut self, index: ChunkIndex, data: &[u8]) -> Result<(), StorageError>;
    /// Every chunk is written: check the whole file against the manifest and
    /// make it appear under its final name. Returns where it is.
    fn finish(&mut self) -> Result<PathBuf, StorageError>;
}

#[derive(Debug)]
pub enum StorageError {
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    /// Every chunk matched its hash but the whole file does not match.
    FileHashMismatch,
    OutOfRange(ChunkIndex),
    /// A different file already has the final name.
    NameTaken(PathBuf),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io {
                action,
                path,
                error,
            } => write!(f, "cannot {action} {}: {error}", path.display()),
            StorageError::FileHashMismatch => {
                write!(
                    f,
                    "the assembled file does not match the manifest's SHA-256"
                )
            }
            StorageError::OutOfRange(i) => write!(f, "chunk {i} is out of range"),
            StorageError::NameTaken(p) => {
                write!(f, "{} exists and is not the file being shared", p.display())
            }
        }
    }
}

impl std::error::Error for StorageError {}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |error| StorageError::Io {
        action,
        path,
        error,
    }
}

/// Chunks in memory (simulations and tests).
#[derive(Debug, Clone)]
pub struct MemoryStore {
    manifest: Manifest,
    chunks: Vec<Option<Vec<u8>>>,
}

impl MemoryStore {
    pub fn empty(manifest: &Manifest) -> Self {
        MemoryStore {
            manifest: manifest.clone(),
            chunks: vec![None; manifest.chunk_count() as usize],
        }
    }

    /// The owner's store: the whole file.
    pub fn with_file(manifest: &Manifest, data: &[u8]) -> Self {
        let mut s = MemoryStore::empty(manifest);
        for i in 0..manifest.chunk_count() {
            let start = manifest.chunk_offset(i) as usize;
            let end = start + manifest.chunk_len(i) as usize;
            s.chunks[i as usize] = data.get(start..end).map(|d| d.to_vec());
        }
        s
    }

    /// Chunks present.
    pub fn bitmap(&self) -> ChunkBitmap {
        let mut b = ChunkBitmap::empty(self.manifest.chunk_count());
        for (i, c) in self.chunks.iter().enumerate() {
            if c.is_some() {
                b.set(i as u32);
            }
        }
        b
    }

    /// The whole file, if every chunk is present.
    pub fn assembled(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.manifest.size as usize);
        for c in &self.chunks {
            out.extend_from_slice(c.as_ref()?);
        }
        Some(out)
    }
}

impl ChunkStore for MemoryStore {
    fn read_chunk(&mut self, index: ChunkIndex) -> Result<Vec<u8>, StorageError> {
        self.chunks
            .get(index as usize)
            .and_then(|c| c.clone())
            .ok_or(StorageError::OutOfRange(index))
    }

    fn write_chunk(&mut self, index: ChunkIndex, data: &[u8]) -> Result<(), StorageError> {
        let slot = self
            .chunks
            .get_mut(index as usize)
            .ok_or(StorageError::OutOfRange(index))?;
        *slot = Some(data.to_vec());
        Ok(())
    }

    fn finish(&mut self) -> Result<PathBuf, StorageError> {
        match self.assembled() {
            Some(d) if sha256(&d) == self.manifest.file_hash => {
                Ok(PathBuf::from(&self.manifest.name))
            }
            _ => Err(StorageError::FileHashMismatch),
        }
    }
}

/// A memory store shared with whoever created it (simulations inspect what
/// a swarm assembled while the swarm owns the store).
impl ChunkStore for std::sync::Arc<std::sync::Mutex<MemoryStore>> {
    fn read_chunk(&mut self, index: ChunkIndex) -> Result<Vec<u8>, StorageError> {
        self.lock()
            .map_err(|_| StorageError::OutOfRange(index))?
            .read_chunk(index)
    }

    fn write_chunk(&mut self, index: ChunkIndex, data: &[u8]) -> Result<(), StorageError> {
        self.lock()
            .map_err(|_| StorageError::OutOfRange(index))?
            .write_chunk(index, data)
    }

    fn finish(&mut self) -> Result<PathBuf, StorageError> {
        self.lock()
            .map_err(|_| StorageError::FileHashMismatch)?
            .finish()
    }
}

const SIDECAR_MAGIC: &[u8; 8] = b"CSPART01";
const SIDECAR_HEADER: u64 = 8 + 32;

/// A file on disk: either complete under `DIR/<name>`, or being assembled
/// in `DIR/<name>.part`.
#[derive(Debug)]
pub struct DiskStore {
    manifest: Manifest,
    final_path: PathBuf,
    part_path: PathBuf,
    sidecar_path: PathBuf,
    file: File,
    /// Open while downloading; None once complete.
    sidecar: Option<File>,
    written: ChunkBitmap,
    /// The whole file's SHA-256 over chunks 0..n so far, advanced as the
    /// chunks that continue it are written, so that `finish` only hashes
    /// what follows the last gap (the whole 10 MB took ~40 ms at the end
    /// of every download, after its last chunk).
    prefix: (Sha256, ChunkIndex),
}

impl DiskStore {
    /// The owner's complete file `DIR/<name>` (already checked when its
    /// manifest was computed).
    pub fn open_complete(dir: &Path, manifest: &Manifest) -> Result<DiskStore, StorageError> {
        let final_path = dir.join(&manifest.name);
        let file = File::open(&final_path).map_err(io_err("open", &final_path))?;
        Ok(DiskStore {
            manifest: manifest.clone(),
            part_path: part_path(&final_path),
            sidecar_path: sidecar_path(&final_path),
            final_path,
            file,
            sidecar: None,
            written: ChunkBitmap::full(manifest.chunk_count()),
            prefix: (Sha256::new(), 0),
        })
    }

    /// A download into `dir`: resumes `DIR/<name>.part` if its sidecar belongs
    /// to this file (keeping only chunks that still verify), otherwise starts
    /// one. A complete `DIR/<name>` with the right SHA-256 is taken as done.
    /// Returns the store and the chunks it holds.
    pub fn open_download(
        dir: &Path,
        manifest: &Manifest,
    ) -> Result<(DiskStore, ChunkBitmap), StorageError> {
        let final_path = dir.join(&manifest.name);
        if final_path.exists() {
            if file_sha256(&final_path)? == manifest.file_hash {
                let s = DiskStore::open_complete(dir, manifest)?;
                let have = s.written.clone();
                return Ok((s, have));
            }
            return Err(StorageError::NameTaken(final_path));
        }
        let part_path = part_path(&final_path);
        let sidecar_path = sidecar_path(&final_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(io_err("open", &part_path))?;
        let count = manifest.chunk_count();
        let mut listed = read_sidecar(&sidecar_path, manifest).unwrap_or(None);
        if listed.is_none() {
            file.set_len(0).map_err(io_err("truncate", &part_path))?;
        }
        file.set_len(manifest.size)
            .map_err(io_err("resize", &part_path))?;
        let mut have = ChunkBitmap::empty(count);
        if let Some(listed) = listed.take() {
            let mut buf = Vec::new();
            for i in listed.ones() {
                buf.resize(manifest.chunk_len(i) as usize, 0);
                if file
                    .read_exact_at(&mut buf, manifest.chunk_offset(i))
                    .is_ok()
                    && manifest.verify_chunk(i, &buf)
                {
                    have.set(i);
                }
            }
        }
        let mut sidecar_bytes = Vec::with_capacity(SIDECAR_HEADER as usize);
        sidecar_bytes.extend_from_slice(SIDECAR_MAGIC);
        sidecar_bytes.extend_from_slice(&manifest.file_hash);
        sidecar_bytes.extend_from_slice(&have.to_bytes());
        fs::write(&sidecar_path, &sidecar_bytes).map_err(io_err("write", &sidecar_path))?;
        let sidecar = OpenOptions::new()
            .write(true)
            .open(&sidecar_path)
            .map_err(io_err("open", &sidecar_path))?;
        let s = DiskStore {
            manifest: manifest.clone(),
            final_path,
            part_path,
            sidecar_path,
            file,
            sidecar: Some(sidecar),
            written: have.clone(),
            prefix: (Sha256::new(), 0),
        };
        Ok((s, have))
    }

    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Extends the prefix hash over the written chunks that continue it
    /// (`data` is chunk `index`, just written, if given).
    fn advance_prefix(
        &mut self,
        mut just_written: Option<(ChunkIndex, &[u8])>,
    ) -> Result<(), StorageError> {
        let count = self.manifest.chunk_count();
        let mut buf = Vec::new();
        while self.prefix.1 < count && self.written.get(self.prefix.1) {
            let i = self.prefix.1;
            match just_written.take() {
                Some((j, data)) if j == i => self.prefix.0.update(data),
                _ => {
                    buf.resize(self.manifest.chunk_len(i) as usize, 0);
                    self.file
                        .read_exact_at(&mut buf, self.manifest.chunk_offset(i))
                        .map_err(io_err("read", &self.part_path))?;
                    self.prefix.0.update(&buf);
                }
            }
            self.prefix.1 += 1;
        }
        Ok(())
    }
}

fn part_path(final_path: &Path) -> PathBuf {
    let mut s = final_path.as_os_str().to_os_string();
    s.push(".part");
    PathBuf::from(s)
}

fn sidecar_path(final_path: &Path) -> PathBuf {
    let mut s = final_path.as_os_str().to_os_string();
    s.push(".part.bitmap");
    PathBuf::from(s)
}

/// The chunks a sidecar lists, if it exists and belongs to this file.
fn read_sidecar(path: &Path, manifest: &Manifest) -> io::Result<Option<ChunkBitmap>> {
    let bytes = fs::read(path)?;
    let header = SIDECAR_HEADER as usize;
    if bytes.len() < header
        || &bytes[..8] != SIDECAR_MAGIC
        || bytes[8..header] != manifest.file_hash
    {
        return Ok(None);
    }
    Ok(ChunkBitmap::from_bytes(manifest.chunk_count(), &bytes[header..]).ok())
}

/// SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> Result<[u8; 32], StorageError> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        }
    }
    Ok(h.finalize().into())
}

impl ChunkStore for DiskStore {
    fn read_chunk(&mut self, index: ChunkIndex) -> Result<Vec<u8>, StorageError> {
        if !self.written.get(index) {
            return Err(StorageError::OutOfRange(index));
        }
        let mut buf = vec![0u8; self.manifest.chunk_len(index) as usize];
        let path = if self.sidecar.is_some() {
            &self.part_path
        } else {
            &self.final_path
        };
        self.file
            .read_exact_at(&mut buf, self.manifest.chunk_offset(index))
            .map_err(io_err("read", path))?;
        Ok(buf)
    }

    fn write_chunk(&mut self, index: ChunkIndex, data: &[u8]) -> Result<(), StorageError> {
        if index >= self.manifest.chunk_count() {
            return Err(StorageError::OutOfRange(index));
        }
        let Some(sidecar) = &self.sidecar else {
            return Ok(()); // complete already: nothing to write
        };
        self.file
            .write_all_at(data, self.manifest.chunk_offset(index))
            .map_err(io_err("write", &self.part_path))?;
        self.written.set(index);
        // Data first, then the sidecar byte that lists it.
        let byte_at = (index / 8) as usize;
        let byte = self.written.wire_byte(byte_at);
        sidecar
            .write_all_at(&[byte], SIDECAR_HEADER + byte_at as u64)
            .map_err(io_err("write", &self.sidecar_path))?;
        if index < self.prefix.1 {
            // Rewritten after it was hashed: start the prefix again.
            self.prefix = (Sha256::new(), 0);
        }
        if index == self.prefix.1 {
            self.advance_prefix(Some((index, data)))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<PathBuf, StorageError> {
        if self.sidecar.is_none() {
            return Ok(self.final_path.clone());
        }
        self.file
            .sync_all()
            .map_err(io_err("sync", &self.part_path))?;
        self.advance_prefix(None)?;
        let whole = self.prefix.1 == self.manifest.chunk_count();
        let prefix = std::mem::replace(&mut self.prefix, (Sha256::new(), 0));
        if !whole || <[u8; 32]>::from(prefix.0.finalize()) != self.manifest.file_hash {
            return Err(StorageError::FileHashMismatch);
        }
        if self.final_path.exists() {
            return Err(StorageError::NameTaken(self.final_path.clone()));
        }
        fs::rename(&self.part_path, &self.final_path).map_err(io_err("rename", &self.part_path))?;
        self.sidecar = None;
        let _ = fs::remove_file(&self.sidecar_path);
        Ok(self.final_path.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cs-storage-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    /// The whole file's SHA-256 is taken as chunks arrive, in any order,
    /// and a chunk rewritten after it was hashed counts with its new bytes.
    #[test]
    fn the_file_hash_follows_chunks_written_in_any_order() {
        let dir = temp_dir("prefix");
        let mut data = vec![0u8; 450_000];
        Rng::new(3).fill(&mut data);
        let m = Manifest::of_bytes("f.bin", &data);
        let chunk = |i: u32| {
            let start = m.chunk_offset(i) as usize;
            data[start..start + m.chunk_len(i) as usize].to_vec()
        };
        let (mut s, _) = DiskStore::open_download(&dir, &m).expect("open");
        for i in [2, 0, 4, 1] {
            s.write_chunk(i, &chunk(i)).expect("write");
        }
        // 0, 1 and 2 are hashed; 3 is the gap.
        assert_eq!(s.prefix.1, 3);
        // Chunk 1 rewritten with wrong bytes after it was hashed, then 3.
        s.write_chunk(1, &vec![9u8; m.chunk_len(1) as usize])
            .expect("write");
        s.write_chunk(3, &chunk(3)).expect("write");
        assert!(matches!(s.finish(), Err(StorageError::FileHashMismatch)));
        s.write_chunk(1, &chunk(1)).expect("write");
        assert_eq!(s.finish().expect("finish"), dir.join("f.bin"));
        assert!(fs::read(dir.join("f.bin")).expect("read") == data);
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
