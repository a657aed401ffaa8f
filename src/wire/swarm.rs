//! Swarm messages exchanged between peers, each carried as one rudp message.
//!
//! Layout (network byte order):
//! ```text
//! 0      1        2      3 .. 35      35 ..
//! magic  version  type   file hash    body
//! ```
//! Every message names its file by the SHA-256 of the whole file (from the
//! manifest), so one rudp connection can carry the swarms of several files.
//!
//! | type | message | body |
//! |---|---|---|
//! | 1 | Hello   | chunk count u32, bitmap (chunk count / 8 bytes, rounded up, MSB first) |
//! | 2 | Have    | index u32 |
//! | 3 | Request | index u32 |
//! | 4 | Chunk   | index u32, data (1..=CHUNK_SIZE bytes, the rest of the message) |
//! | 5 | Cancel  | index u32 |
//! | 6 | Reject  | index u32, reason u8 |
//!
//! Decoding never panics: a malformed message is an [`Error`].

use super::{Error, Reader};
use crate::manifest::{ChunkIndex, Digest32, CHUNK_SIZE, MAX_CHUNKS};
use byteorder::{ByteOrder, NetworkEndian};

pub const MAGIC: u8 = 0xC5;
pub const VERSION: u8 = 1;
/// Bytes before the body: magic, version, type, file hash.
pub const HEADER_LEN: usize = 3 + 32;
/// Largest encoded message: a Hello of the largest file (its bitmap is 20 KiB)
/// is smaller than a full Chunk.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + 4 + CHUNK_SIZE as usize;

const TYPE_HELLO: u8 = 1;
const TYPE_HAVE: u8 = 2;
const TYPE_REQUEST: u8 = 3;
const TYPE_CHUNK: u8 = 4;
const TYPE_CANCEL: u8 = 5;
const TYPE_REJECT: u8 = 6;

/// Why a peer will not send a requested chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// It does not hold the chunk (yet).
    NotHave = 1,
    /// Too many of our requests are queued there already.
    Busy = 2,
}

impl RejectReason {
    fn from_u8(v: u8) -> Result<Self, Error> {
        match v {
            1 => Ok(RejectReason::NotHave),
            2 => Ok(RejectReason::Busy),
            _ => Err(Error::Invalid("reject reason")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Sent once when a connection opens: which chunks the sender holds.
    Hello {
        chunk_count: u32,
        bitmap: Vec<u8>,
    },
    /// The sender has verified a new chunk.
    Have {
        index: ChunkIndex,
    },
    Request {
        index: ChunkIndex,
    },
    Chunk {
        index: ChunkIndex,
        data: Vec<u8>,
    },
    /// The sender no longer wants a chunk it requested.
    Cancel {
        index: ChunkIndex,
    },
    Reject {
        index: ChunkIndex,
        reason: RejectReason,
    },
}

/// One swarm message: which file it concerns, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub file: Digest32,
    pub body: Body,
}

impl Body {
    pub fn name(&self) -> &'static str {
        match self {
            Body::Hello { .. } => "hello",
            Body::Have { .. } => "have",
            Body::Request { .. } => "request",
            Body::Chunk { .. } => "chunk",
            Body::Cancel { .. } => "cancel",
            Body::Reject { .. } => "reject",
        }
    }
}

impl Message {
    pub fn new(file: Digest32, body: Body) -> Self {
        Message { file, body }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(match &self.body {
            Body::Chunk { data, .. } => HEADER_LEN + 4 + data.len(),
            Body::Hello { bitmap, .. } => HEADER_LEN + 4 + bitmap.len(),
            _ => HEADER_LEN + 5,
        });
        let ty = match self.body {
            Body::Hello { .. } => TYPE_HELLO,
            Body::Have { .. } => TYPE_HAVE,
            Body::Request { .. } => TYPE_REQUEST,
            Body::Chunk { .. } => TYPE_CHUNK,
            Body::Cancel { .. } => TYPE_CANCEL,
            Body::Reject { .. } => TYPE_REJECT,
        };
        out.extend_from_slice(&[MAGIC, VERSION, ty]);
        out.extend_from_slice(&self.file);
        let u32_field = |v: u32, out: &mut Vec<u8>| {
            let mut b = [0u8; 4];
            NetworkEndian::write_u32(&mut b, v);
            out.extend_from_slice(&b);
        };
        match &self.body {
            Body::Hello {
                chunk_count,
                bitmap,
            } => {
                u32_field(*chunk_count, &mut out);
                out.extend_from_slice(bitmap);
            }
            Body::Have { index } | Body::Request { index } | Body::Cancel { index } => {
                u32_field(*index, &mut out)
            }
            Body::Chunk { index, data } => {
                u32_field(*index, &mut out);
                out.extend_from_slice(data);
            }
            Body::Reject { index, reason } => {
                u32_field(*index, &mut out);
                out.push(*reason as u8);
            }
        }
        out
    }

    /// Decodes one whole message; every malformed input is an error.
    pub fn decode(buf: &[u8]) -> Result<Message, Error> {
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(Error::TooLong {
                len: buf.len() as u64,
                max: MAX_MESSAGE_LEN as u64,
            });
        }
        let mut r = Reader::new(buf);
        let magic = r.u8()?;
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::BadVersion(version));
        }
        let ty = r.u8()?;
        let file = r.array::<32>()?;
        let body = match ty {
            TYPE_HELLO => {
                let chunk_count = r.u32()?;
                if chunk_count > MAX_CHUNKS {
                    return Err(Error::TooLong {
                        len: chunk_count as u64,
                        max: MAX_CHUNKS as u64,
                    });
                }
                let bitmap = r.bytes((chunk_count as usize).div_ceil(8))?.to_vec();
                if chunk_count % 8 != 0 {
                    let spare = 0xFFu8 >> (chunk_count % 8);
                    if bitmap.last().is_some_and(|&b| b & spare != 0) {
                        return Err(Error::Invalid("bitmap bits past the last chunk"));
                    }
                }
                Body::Hello {
                    chunk_count,
                    bitmap,
                }
            }
            TYPE_HAVE => Body::Have { index: r.u32()? },
            TYPE_REQUEST => Body::Request { index: r.u32()? },
            TYPE_CANCEL => Body::Cancel { index: r.u32()? },
            TYPE_CHUNK => {
                let index = r.u32()?;
                let data = r.rest();
                if data.is_empty() {
                    return Err(Error::Invalid("empty chunk"));
                }
                Body::Chunk {
                    index,
                    data: data.to_vec(),
                }
            }
            TYPE_REJECT => {
                let index = r.u32()?;
                let reason = RejectReason::from_u8(r.u8()?)?;
                Body::Reject { index, reason }
            }
            other => return Err(Error::UnknownType(other)),
        };
        r.finish()?;
        Ok(Message { file, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn body_strategy() -> impl Strategy<Value = Body> {
        prop_oneof![
            (0u32..200).prop_flat_map(|n| {
                proptest::collection::vec(any::<bool>(), n as usize).prop_map(move |bits| {
                    let mut bitmap = vec![0u8; (n as usize).div_ceil(8)];
                    for (i, b) in bits.iter().enumerate() {
                        if *b {
                            bitmap[i / 8] |= 0x80 >> (i % 8);
                        }
                    }
                    Body::Hello {
                        chunk_count: n,
                        bitmap,
                    }
                })
            }),
            any::<u32>().prop_map(|index| Body::Have { index }),
            any::<u32>().prop_map(|index| Body::Request { index }),
            any::<u32>().prop_map(|index| Body::Cancel { index }),
            (
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 1..3000)
            )
                .prop_map(|(index, data)| Body::Chunk { index, data }),
            (
                any::<u32>(),
                prop_oneof![Just(RejectReason::NotHave), Just(RejectReason::Busy)]
            )
                .prop_map(|(index, reason)| Body::Reject { index, reason }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(file in any::<[u8; 32]>(), body in body_strategy()) {
            let m = Message::new(file, body);
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    fn samples() -> Vec<Message> {
        let f = [7u8; 32];
        vec![
            Message::new(
                f,
                Body::Hello {
                    chunk_count: 13,
                    bitmap: vec![0xA5, 0xF8],
                },
            ),
            Message::new(f, Body::Have { index: 3 }),
            Message::new(f, Body::Request { index: 4 }),
            Message::new(
                f,
                Body::Chunk {
                    index: 5,
                    data: vec![1, 2, 3],
                },
            ),
            Message::new(f, Body::Cancel { index: 6 }),
            Message::new(
                f,
                Body::Reject {
                    index: 7,
                    reason: RejectReason::Busy,
                },
            ),
        ]
    }

    /// Every truncation of every message kind is an error (a Chunk cut inside
    /// its data is a shorter valid Chunk, which the manifest check rejects).
    #[test]
    fn truncations_are_errors() {
        for m in samples() {
            let bytes = m.encode();
            let min_valid = match m.body {
                Body::Chunk { .. } => HEADER_LEN + 5,
                _ => bytes.len(),
            };
            for cut in 0..bytes.len() {
                let r = Message::decode(&bytes[..cut]);
                if cut < min_valid {
                    assert!(r.is_err(), "{} cut at {cut} decoded", m.body.name());
                }
            }
            let mut longer = bytes.clone();
            longer.push(0);
            if !matches!(m.body, Body::Chunk { .. }) {
                assert!(Message::decode(&longer).is_err());
            }
        }
    }

    /// Bit flips and random bytes never panic; a decoded result re-encodes to
    /// exactly the input (no two byte strings decode to the same message).
    #[test]
    fn corruption_sweep() {
        let mut rng = Rng::new(4);
        for m in samples() {
            let bytes = m.encode();
            for bit in 0..bytes.len() * 8 {
                let mut c = bytes.clone();
                c[bit / 8] ^= 1 << (bit % 8);
                if let Ok(d) = Message::decode(&c) {
                    assert_eq!(d.encode(), c);
                }
            }
        }
        for _ in 0..20_000 {
            let len = rng.below(80) as usize;
            let mut buf = vec![0u8; len];
            rng.fill(&mut buf);
            if len > 2 && rng.chance(0.5) {
                buf[0] = MAGIC;
                buf[1] = VERSION;
                buf[2] = 1 + rng.below(7) as u8;
            }
            if let Ok(d) = Message::decode(&buf) {
                assert_eq!(d.encode(), buf);
            }
        }
    }

    #[test]
    fn specific_errors() {
        let f = [0u8; 32];
        let mut hello = Message::new(
            f,
            Body::Hello {
                chunk_count: 9,
                bitmap: vec![0, 0x80],
            },
        )
        .encode();
        assert!(Message::decode(&hello).is_ok());
        *hello.last_mut().unwrap() = 0x40;
        assert_eq!(
            Message::decode(&hello),
            Err(Error::Invalid("bitmap bits past the last chunk"))
        );
        let mut huge = vec![MAGIC, VERSION, TYPE_HELLO];
        huge.extend_from_slice(&f);
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Message::decode(&huge), Err(Error::TooLong { .. })));
        let big_chunk = Message::new(
            f,
            Body::Chunk {
                index: 0,
                data: vec![0; CHUNK_SIZE as usize + 1],
            },
        )
        .encode();
        assert!(matches!(
            Message::decode(&big_chunk),
            Err(Error::TooLong { .. })
        ));
        let mut bad_reason = Message::new(
            f,
            Body::Reject {
                index: 1,
                reason: RejectReason::NotHave,
            },
        )
        .encode();
        *bad_reason.last_mut().unwrap() = 9;
        assert_eq!(
            Message::decode(&bad_reason),
            Err(Error::Invalid("reject reason"))
        );
        assert_eq!(Message::decode(&[0x00]), Err(Error::BadMagic(0)));
        assert_eq!(Message::decode(&[MAGIC, 9]), Err(Error::BadVersion(9)));
    }
}
