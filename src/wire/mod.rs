//! Byte formats: the tracker protocol ([`tracker`]) and the peer-to-peer swarm
//! messages carried over rudp ([`swarm`]). Pure code: bytes in, values out.
//! Decoding never panics; a malformed input is an [`Error`].
//! (rudp's own datagram format lives in `rudp::packet`.)

pub mod swarm;
pub mod tracker;

use byteorder::{ByteOrder, NetworkEndian};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input ended before the field at this offset.
    Truncated,
    /// Bytes were left over after a complete message.
    TrailingBytes(usize),
    BadMagic(u8),
    BadVersion(u8),
    UnknownType(u8),
    /// A length field announces more than the format allows.
    TooLong {
        len: u64,
        max: u64,
    },
    /// A field holds a value the format does not allow.
    Invalid(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "message cut short"),
            Error::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
            Error::BadMagic(b) => write!(f, "bad magic byte 0x{b:02x}"),
            Error::BadVersion(v) => write!(f, "unsupported protocol version {v}"),
            Error::UnknownType(t) => write!(f, "unknown message type {t}"),
            Error::TooLong { len, max } => write!(f, "length {len} exceeds the maximum {max}"),
            Error::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

impl std::error::Error for Error {}

/// A bounds-checked cursor over received bytes: every read either yields a
/// value or [`Error::Truncated`]; none can panic.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.remaining() < n {
            return Err(Error::Truncated);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Error> {
        Ok(NetworkEndian::read_u16(self.bytes(2)?))
    }

    pub fn u32(&mut self) -> Result<u32, Error> {
        Ok(NetworkEndian::read_u32(self.bytes(4)?))
    }

    pub fn u64(&mut self) -> Result<u64, Error> {
        Ok(NetworkEndian::read_u64(self.bytes(8)?))
    }

    /// The rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<(), Error> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(Error::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_never_overreads() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16().unwrap(), 0x0102);
        assert_eq!(r.u16(), Err(Error::Truncated));
        assert_eq!(r.u8().unwrap(), 3);
        assert_eq!(r.u8(), Err(Error::Truncated));
        r.finish().unwrap();
        assert_eq!(Reader::new(&[0; 3]).finish(), Err(Error::TrailingBytes(3)));
    }
}
