//! Which chunks of a file a peer holds: one bit per chunk, with its count of
//! ones kept up to date so `is_full` and `count` are O(1).

use crate::manifest::ChunkIndex;
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct ChunkBitmap {
    words: Vec<u64>,
    len: u32,
    ones: u32,
}

/// Why bytes from the network are not a bitmap of the expected length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitmapError {
    WrongLength {
        expected: usize,
        got: usize,
    },
    /// Bits are set past the last chunk.
    StrayBits,
}

impl fmt::Display for BitmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BitmapError::WrongLength { expected, got } => {
                write!(f, "bitmap of {got} bytes where {expected} were expected")
            }
            BitmapError::StrayBits => write!(f, "bitmap has bits set past the last chunk"),
        }
    }
}

impl std::error::Error for BitmapError {}

/// Bytes needed for a bitmap of `len` chunks.
pub fn byte_len(len: u32) -> usize {
    (len as usize).div_ceil(8)
}

impl ChunkBitmap {
    /// A bitmap of `len` chunks, none held.
    pub fn empty(len: u32) -> Self {
        ChunkBitmap {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            ones: 0,
        }
    }

    /// A bitmap of `len` chunks, all held.
    pub fn full(len: u32) -> Self {
        let mut b = ChunkBitmap::empty(len);
        for w in b.words.iter_mut() {
            *w = u64::MAX;
        }
        if len % 64 != 0 {
            if let Some(last) = b.words.last_mut() {
                *last = (1u64 << (len % 64)) - 1;
            }
        }
        b.ones = len;
        b
    }

    /// Number of chunks the bitmap describes.
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunks held.
    pub fn count(&self) -> u32 {
        self.ones
    }

    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// False for an index out of range.
    pub fn get(&self, index: ChunkIndex) -> bool {
        index < self.len && self.words[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Marks `index` held; returns true if it was not. Out of range: no change, false.
    pub fn set(&mut self, index: ChunkIndex) -> bool {
        if index >= self.len || self.get(index) {
            return false;
        }
        self.words[(index / 64) as usize] |= 1 << (index % 64);
        self.ones += 1;
        true
    }

    /// Marks `index` missing; returns true if it was held.
    pub fn clear(&mut self, index: ChunkIndex) -> bool {
        if !self.get(index) {
            return false;
        }
        self.words[(index / 64) as usize] &= !(1 << (index % 64));
        self.ones -= 1;
        true
    }

    /// Indices held, ascending.
    pub fn ones(&self) -> impl Iterator<Item = ChunkIndex> + '_ {
        (0..self.len).filter(move |&i| self.get(i))
    }

    /// Indices missing, ascending.
    pub fn zeros(&self) -> impl Iterator<Item = ChunkIndex> + '_ {
        (0..self.len).filter(move |&i| !self.get(i))
    }

    /// Wire form: chunk `i` is bit `7 - i % 8` of byte `i / 8` (most significant first).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; byte_len(self.len)];
        for i in self.ones() {
            out[(i / 8) as usize] |= 0x80 >> (i % 8);
        }
        out
    }

    /// Byte `byte_index` of the wire form (0 past the end).
    pub fn wire_byte(&self, byte_index: usize) -> u8 {
        let mut out = 0u8;
        for bit in 0..8u32 {
            if self.get(byte_index as u32 * 8 + bit) {
                out |= 0x80 >> bit;
            }
        }
        out
    }

    /// Parses the wire form of a bitmap of `len` chunks.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, BitmapError> {
        let expected = byte_len(len);
        if bytes.len() != expected {
            return Err(BitmapError::WrongLength {
                expected,
                got: bytes.len(),
            });
        }
        let mut b = ChunkBitmap::empty(len);
        for (byte_index, &byte) in bytes.iter().enumerate() {
            for bit in 0..8u32 {
                if byte & (0x80 >> bit) != 0 {
                    let i = byte_index as u32 * 8 + bit;
                    if i >= len {
                        return Err(BitmapError::StrayBits);
                    }
                    b.set(i);
                }
            }
        }
        Ok(b)
    }
}

impl fmt::Debug for ChunkBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkBitmap({}/{})", self.ones, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn full_and_empty() {
        for len in [0, 1, 7, 8, 63, 64, 65, 130] {
            let f = ChunkBitmap::full(len);
            assert_eq!(f.count(), len);
            assert!(f.is_full());
            assert_eq!(f.ones().count() as u32, len);
            assert!(!f.get(len));
            let e = ChunkBitmap::empty(len);
            assert_eq!(e.count(), 0);
            assert_eq!(e.is_full(), len == 0);
        }
    }

    #[test]
    fn set_clear_count() {
        let mut b = ChunkBitmap::empty(70);
        assert!(b.set(69));
        assert!(!b.set(69));
        assert!(!b.set(70));
        assert!(b.set(0));
        assert_eq!(b.count(), 2);
        assert!(b.clear(69));
        assert!(!b.clear(69));
        assert_eq!(b.ones().collect::<Vec<_>>(), vec![0]);
        assert_eq!(b.zeros().count(), 69);
    }

    #[test]
    fn rejects_bad_wire_forms() {
        assert_eq!(
            ChunkBitmap::from_bytes(9, &[0]),
            Err(BitmapError::WrongLength {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            ChunkBitmap::from_bytes(9, &[0, 0x40]),
            Err(BitmapError::StrayBits)
        );
        assert_eq!(ChunkBitmap::from_bytes(9, &[0, 0x80]).unwrap().count(), 1);
    }

    proptest! {
        /// The bitmap against a plain Vec<bool> model, and its wire round trip.
        #[test]
        fn matches_model(len in 0u32..300, ops in proptest::collection::vec((any::<bool>(), 0u32..310), 0..200)) {
            let mut b = ChunkBitmap::empty(len);
            let mut model = vec![false; len as usize];
            for (set, i) in ops {
                let changed = if set { b.set(i) } else { b.clear(i) };
                let before = model.get(i as usize).copied();
                if let Some(m) = model.get_mut(i as usize) {
                    *m = set;
                }
                prop_assert_eq!(changed, before.is_some_and(|v| v != set));
            }
            prop_assert_eq!(b.count() as usize, model.iter().filter(|&&v| v).count());
            for (i, &v) in model.iter().enumerate() {
                prop_assert_eq!(b.get(i as u32), v);
            }
            prop_assert_eq!(ChunkBitmap::from_bytes(len, &b.to_bytes()).unwrap(), b);
        }
    }
}
