//! A shared file's manifest: its size, its chunk layout, and the SHA-256 of
//! every chunk and of the whole file. The owner computes it once; it travels
//! through the tracker to every downloader, which checks each chunk against it.

use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read};

/// Size of every chunk but the last: 100 KiB.
pub const CHUNK_SIZE: u32 = 102_400;

/// Largest file we share: 16 GiB. It bounds the manifest (and so the largest
/// tracker frame): 16 GiB / 100 KiB = 167,773 chunks x 32 bytes = 5.1 MiB.
pub const MAX_FILE_SIZE: u64 = 16 << 30;

/// Largest chunk count a manifest may carry (follows from the two above).
pub const MAX_CHUNKS: u32 = MAX_FILE_SIZE.div_ceil(CHUNK_SIZE as u64) as u32;

/// Longest file name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;

/// Index of a chunk within its file, from 0.
pub type ChunkIndex = u32;

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_hashes: Vec<Digest32>,
    pub file_hash: Digest32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    BadName(&'static str),
    TooLarge(u64),
    BadChunkSize(u32),
    ChunkCountMismatch { expected: u64, got: u64 },
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::BadName(why) => write!(f, "bad file name: {why}"),
            ManifestError::TooLarge(n) => {
                write!(
                    f,
                    "file of {n} bytes is larger than the {MAX_FILE_SIZE}-byte limit"
                )
            }
            ManifestError::BadChunkSize(n) => write!(f, "chunk size {n} is not {CHUNK_SIZE}"),
            ManifestError::ChunkCountMismatch { expected, got } => {
                write!(
                    f,
                    "manifest lists {got} chunks where the size implies {expected}"
                )
            }
        }
    }
}

impl std::error::Error for ManifestError {}

/// Checks that `name` is a plain file name: non-empty, at most
/// [`MAX_NAME_LEN`] bytes, no `/`, `\`, NUL or control characters, and not `.` or `..`.
pub fn check_file_name(name: &str) -> Result<(), ManifestError> {
    if name.is_empty() {
        return Err(ManifestError::BadName("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ManifestError::BadName("longer than 255 bytes"));
    }
    if name == "." || name == ".." {
        return Err(ManifestError::BadName("'.' and '..' are not file names"));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(ManifestError::BadName("must not contain a path separator"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(ManifestError::BadName(
            "must not contain control characters",
        ));
    }
    Ok(())
}

impl Manifest {
    /// Reads `reader` to its end and computes the manifest of what it held.
    pub fn compute(name: &str, mut reader: impl Read) -> io::Result<Manifest> {
        check_file_name(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut whole = Sha256::new();
        let mut chunk_hashes = Vec::new();
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        let mut size = 0u64;
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            if filled == 0 {
                break;
            }
            size += filled as u64;
            if size > MAX_FILE_SIZE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    ManifestError::TooLarge(size),
                ));
            }
            whole.update(&buf[..filled]);
            chunk_hashes.push(sha256(&buf[..filled]));
            if filled < buf.len() {
                break;
            }
        }
        Ok(Manifest {
            name: name.to_string(),
            size,
            chunk_size: CHUNK_SIZE,
            chunk_hashes,
            file_hash: whole.finalize().into(),
        })
    }

    /// Manifest of an in-memory file (tests and simulations).
    pub fn of_bytes(name: &str, data: &[u8]) -> Manifest {
        Manifest::compute(name, data).expect("reading from memory cannot fail")
    }

    /// Checks the manifest's internal consistency (after decoding one from the network).
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_file_name(&self.name)?;
        if self.size > MAX_FILE_SIZE {
            return Err(ManifestError::TooLarge(self.size));
        }
        if self.chunk_size != CHUNK_SIZE {
            return Err(ManifestError::BadChunkSize(self.chunk_size));
        }
        let expected = self.size.div_ceil(self.chunk_size as u64);
        if self.chunk_hashes.len() as u64 != expected {
            return Err(ManifestError::ChunkCountMismatch {
                expected,
                got: self.chunk_hashes.len() as u64,
            });
        }
        Ok(())
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunk_hashes.len() as u32
    }

    /// Byte offset of chunk `index` in the file.
    pub fn chunk_offset(&self, index: ChunkIndex) -> u64 {
        index as u64 * self.chunk_size as u64
    }

    /// Length of chunk `index` (the last one may be shorter); 0 if out of range.
    pub fn chunk_len(&self, index: ChunkIndex) -> u32 {
        if index >= self.chunk_count() {
            return 0;
        }
        let start = self.chunk_offset(index);
        (self.size - start).min(self.chunk_size as u64) as u32
    }

    /// True when `data` is exactly chunk `index` of this file.
    pub fn verify_chunk(&self, index: ChunkIndex, data: &[u8]) -> bool {
        index < self.chunk_count()
            && data.len() == self.chunk_len(index) as usize
            && sha256(data) == self.chunk_hashes[index as usize]
    }
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("chunks", &self.chunk_hashes.len())
            .field("file_hash", &hex(&self.file_hash))
            .finish()
    }
}

pub fn sha256(data: &[u8]) -> Digest32 {
    Sha256::digest(data).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_layout() {
        let data: Vec<u8> = (0..250_000u32)
            .map(|i| (i / 7) as u8 ^ (i >> 12) as u8)
            .collect();
        let m = Manifest::of_bytes("f.bin", &data);
        assert_eq!(m.size, 250_000);
        assert_eq!(m.chunk_count(), 3);
        assert_eq!(m.chunk_len(0), CHUNK_SIZE);
        assert_eq!(m.chunk_len(2), 250_000 - 2 * CHUNK_SIZE);
        assert_eq!(m.chunk_len(3), 0);
        assert!(m.verify_chunk(1, &data[102_400..204_800]));
        assert!(!m.verify_chunk(1, &data[0..102_400]));
        assert!(!m.verify_chunk(9, &data[0..10]));
        assert_eq!(m.file_hash, sha256(&data));
        m.validate().unwrap();
    }

    #[test]
    fn exact_multiple_and_empty() {
        let data = vec![1u8; 2 * CHUNK_SIZE as usize];
        assert_eq!(Manifest::of_bytes("a", &data).chunk_count(), 2);
        let empty = Manifest::of_bytes("e", &[]);
        assert_eq!(empty.chunk_count(), 0);
        empty.validate().unwrap();
    }

    #[test]
    fn names() {
        for bad in ["", ".", "..", "a/b", "/etc", "a\\b", "x\ny"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        check_file_name("movie.mp4").unwrap();
        assert!(check_file_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn validate_rejects_inconsistent() {
        let mut m = Manifest::of_bytes("f", &[0u8; 300_000]);
        m.chunk_hashes.pop();
        assert!(m.validate().is_err());
        let mut m = Manifest::of_bytes("f", &[0u8; 10]);
        m.chunk_size = 5;
        assert!(m.validate().is_err());
    }
}
