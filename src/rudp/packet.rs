//! The rudp datagram format, in one place.
//!
//! ```text
//!  0        1        2                 10                18          len-4    len
//! +--------+--------+-----------------+-----------------+-----------+--------+
//! |version |  type  | destination CID | packet number   | payload   | CRC32  |
//! +--------+--------+-----------------+-----------------+-----------+--------+
//! ```
//! All integers are big-endian. The CRC32 (IEEE, `crc32fast`) covers every
//! byte before it. Payload by type:
//! - `INITIAL` (initiator → responder, packet number 0, destination CID 0):
//!   initiator CID `u64`, cookie length `u8`, cookie, zero padding up to at
//!   least [`MIN_INITIAL_SIZE`] bytes so a responder never answers with more
//!   bytes than it received (anti-amplification, as in RFC 9000 §8.1).
//! - `RETRY` (responder → initiator, stateless): cookie length `u8`, cookie.
//! - `DATA`: a sequence of frames (below).
//!
//! Frames (type byte, then fields; `v` is a QUIC variable-length integer, RFC 9000 §16):
//! - `0x00 PADDING`
//! - `0x01 PING` (ack-eliciting, no fields)
//! - `0x02 ACK` largest `v`, ack delay µs `v`, extra range count `v`, first
//!   range length `v`, then per extra range: gap `v`, length `v` (RFC 9000 §19.3 layout)
//! - `0x03 STREAM` flags `u8` (bit 0: ordered), message id `v`, message's
//!   connection offset `v`, message length `v`, fragment offset `v`, data length `u16`, data
//! - `0x04 MAX_DATA` connection-offset limit `v`
//! - `0x05 CLOSE` reason `u8`
//! - `0x06 ACCEPT` responder CID `u64` (the handshake's answer)
//!
//! [`Packet`] is a checked view in the smoltcp style: `new_checked` validates
//! the length once, field offsets are named, and afterwards no accessor can
//! panic. [`Frames`] decodes the payload; a malformed frame is an `Err`.

use crate::wire::{Error, Reader};
use byteorder::{ByteOrder, NetworkEndian};
use std::ops::Range;

pub const PROTOCOL_VERSION: u8 = 1;

mod field {
    use std::ops::Range;
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const DCID: Range<usize> = 2..10;
    pub const PN: Range<usize> = 10..18;
    pub const PAYLOAD: usize = 18;
}

pub const HEADER_LEN: usize = field::PAYLOAD;
pub const CRC_LEN: usize = 4;
/// Header plus CRC: the fixed cost of every datagram.
pub const OVERHEAD: usize = HEADER_LEN + CRC_LEN;
/// An INITIAL is padded to at least this many bytes (RFC 9000 §14.1 uses 1200).
pub const MIN_INITIAL_SIZE: usize = 1200;
pub const MAX_COOKIE_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketType {
    Initial = 1,
    Retry = 2,
    Data = 3,
}

impl PacketType {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(PacketType::Initial),
            2 => Some(PacketType::Retry),
            3 => Some(PacketType::Data),
            _ => None,
        }
    }
}

/// A checked view of one datagram.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` after checking it can hold a header and a CRC.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < OVERHEAD {
            return Err(Error::Truncated);
        }
        Ok(Packet { buffer })
    }

    fn data(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn version(&self) -> u8 {
        self.data()[field::VERSION]
    }

    pub fn raw_type(&self) -> u8 {
        self.data()[field::TYPE]
    }

    pub fn packet_type(&self) -> Option<PacketType> {
        PacketType::from_u8(self.raw_type())
    }

    pub fn dcid(&self) -> u64 {
        NetworkEndian::read_u64(&self.data()[field::DCID])
    }

    pub fn packet_number(&self) -> u64 {
        NetworkEndian::read_u64(&self.data()[field::PN])
    }

    pub fn payload(&self) -> &[u8] {
        let d = self.data();
        &d[field::PAYLOAD..d.len() - CRC_LEN]
    }

    pub fn crc_ok(&self) -> bool {
        let d = self.data();
        let (body, crc) = d.split_at(d.len() - CRC_LEN);
        crc32fast::hash(body) == NetworkEndian::read_u32(crc)
    }
}

/// QUIC variable-length integers (RFC 9000 §16): 1, 2, 4 or 8 bytes.
pub mod varint {
    use super::*;

    pub const MAX: u64 = (1 << 62) - 1;

    pub fn size(v: u64) -> usize {
        if v < 1 << 6 {
            1
        } else if v < 1 << 14 {
            2
        } else if v < 1 << 30 {
            4
        } else {
            8
        }
    }

    /// Appends `v` (values above [`MAX`] are clamped; callers never produce them).
    pub fn write(buf: &mut Vec<u8>, v: u64) {
        let v = v.min(MAX);
        match size(v) {
            1 => buf.push(v as u8),
            2 => buf.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
            4 => buf.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
            _ => buf.extend_from_slice(&(v | 0xC000_0000_0000_0000).to_be_bytes()),
        }
    }

    pub fn read(r: &mut Reader<'_>) -> Result<u64, Error> {
        let first = r.u8()?;
        let len = 1usize << (first >> 6);
        let mut v = (first & 0x3f) as u64;
        for b in r.bytes(len - 1)? {
            v = (v << 8) | *b as u64;
        }
        Ok(v)
    }
}

pub mod frame_type {
    pub const PADDING: u8 = 0x00;
    pub const PING: u8 = 0x01;
    pub const ACK: u8 = 0x02;
    pub const STREAM: u8 = 0x03;
    pub const MAX_DATA: u8 = 0x04;
    pub const CLOSE: u8 = 0x05;
    pub const ACCEPT: u8 = 0x06;
}

pub const STREAM_FLAG_ORDERED: u8 = 0x01;

/// Why a connection was closed, as carried by a CLOSE frame.
pub mod close_reason {
    pub const NORMAL: u8 = 0;
    pub const PROTOCOL_VIOLATION: u8 = 1;
}

/// A fragment of one message, as carried by a STREAM frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFrame<'a> {
    pub ordered: bool,
    pub msg_id: u64,
    /// Where the message starts in the connection's byte sequence (flow control).
    pub conn_offset: u64,
    pub msg_len: u64,
    pub offset: u64,
    pub data: &'a [u8],
}

impl StreamFrame<'_> {
    /// Encoded size of a STREAM frame with these header values and `data_len` bytes.
    pub fn encoded_len(
        msg_id: u64,
        conn_offset: u64,
        msg_len: u64,
        offset: u64,
        data_len: usize,
    ) -> usize {
        1 + 1
            + varint::size(msg_id)
            + varint::size(conn_offset)
            + varint::size(msg_len)
            + varint::size(offset)
            + 2
            + data_len
    }
}

/// An ACK frame, decoded lazily: `ranges()` yields acknowledged packet-number
/// ranges from the highest down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFrame<'a> {
    pub largest: u64,
    pub ack_delay_us: u64,
    pub first_range: u64,
    extra_count: u64,
    /// Encoded (gap, length) pairs, already validated.
    extra: &'a [u8],
}

impl<'a> AckFrame<'a> {
    /// Acknowledged ranges, highest first. Validated at decode time, so this
    /// iterator cannot fail or underflow.
    pub fn ranges(&self) -> AckRanges<'a> {
        AckRanges {
            next: Some(self.largest - self.first_range..self.largest + 1),
            reader: Reader::new(self.extra),
            left: self.extra_count,
        }
    }
}

pub struct AckRanges<'a> {
    next: Option<Range<u64>>,
    reader: Reader<'a>,
    left: u64,
}

impl Iterator for AckRanges<'_> {
    type Item = Range<u64>;
    fn next(&mut self) -> Option<Range<u64>> {
        let cur = self.next.take()?;
        if self.left > 0 {
            self.left -= 1;
            if let Ok(r) = next_ack_range(&mut self.reader, cur.start) {
                self.next = Some(r);
            }
        }
        Some(cur)
    }
}

/// Decodes the range below one whose smallest value is `prev_smallest`.
fn next_ack_range(r: &mut Reader<'_>, prev_smallest: u64) -> Result<Range<u64>, Error> {
    let gap = varint::read(r)?;
    let len = varint::read(r)?;
    let largest = prev_smallest
        .checked_sub(gap)
        .and_then(|v| v.checked_sub(2))
        .ok_or(Error::Invalid("ack gap"))?;
    let smallest = largest
        .checked_sub(len)
        .ok_or(Error::Invalid("ack range"))?;
    Ok(smallest..largest + 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Ping,
    Ack(AckFrame<'a>),
    Stream(StreamFrame<'a>),
    MaxData(u64),
    Close(u8),
    Accept(u64),
}

impl Frame<'_> {
    /// Frames that oblige the receiver to acknowledge (RFC 9002 §2).
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(self, Frame::Ack(_))
    }
}

/// Decodes the frames of a DATA payload one by one.
pub struct Frames<'a> {
    reader: Reader<'a>,
}

impl<'a> Frames<'a> {
    pub fn new(payload: &'a [u8]) -> Self {
        Frames {
            reader: Reader::new(payload),
        }
    }

    fn decode(&mut self, ty: u8) -> Result<Frame<'a>, Error> {
        let r = &mut self.reader;
        Ok(match ty {
            frame_type::PING => Frame::Ping,
            frame_type::ACK => {
                let largest = varint::read(r)?;
                let ack_delay_us = varint::read(r)?;
                let extra_count = varint::read(r)?;
                let first_range = varint::read(r)?;
                let mut smallest = largest
                    .checked_sub(first_range)
                    .ok_or(Error::Invalid("ack range"))?;
                let start = r.remaining();
                let rest = r.rest();
                let mut check = Reader::new(rest);
                for _ in 0..extra_count {
                    smallest = next_ack_range(&mut check, smallest)?.start;
                }
                let used = start - check.remaining();
                let extra = &rest[..used];
                // Put back what the ranges did not use.
                *r = Reader::new(&rest[used..]);
                Frame::Ack(AckFrame {
                    largest,
                    ack_delay_us,
                    first_range,
                    extra_count,
                    extra,
                })
            }
            frame_type::STREAM => {
                let flags = r.u8()?;
                let msg_id = varint::read(r)?;
                let conn_offset = varint::read(r)?;
                let msg_len = varint::read(r)?;
                let offset = varint::read(r)?;
                let len = r.u16()? as usize;
                let data = r.bytes(len)?;
                if offset
                    .checked_add(len as u64)
                    .is_none_or(|end| end > msg_len)
                {
                    return Err(Error::Invalid("fragment beyond message end"));
                }
                if conn_offset.checked_add(msg_len).is_none() {
                    return Err(Error::Invalid("connection offset"));
                }
                Frame::Stream(StreamFrame {
                    ordered: flags & STREAM_FLAG_ORDERED != 0,
                    msg_id,
                    conn_offset,
                    msg_len,
                    offset,
                    data,
                })
            }
            frame_type::MAX_DATA => Frame::MaxData(varint::read(r)?),
            frame_type::CLOSE => Frame::Close(r.u8()?),
            frame_type::ACCEPT => Frame::Accept(r.u64()?),
            other => return Err(Error::UnknownType(other)),
        })
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let ty = match self.reader.u8() {
                Ok(t) => t,
                Err(_) => return None,
            };
            if ty == frame_type::PADDING {
                continue;
            }
            let f = self.decode(ty);
            if f.is_err() {
                self.reader.rest(); // stop after the first error
            }
            return Some(f);
        }
    }
}

/// Appends a header to `buf` (cleared first); finish with [`finish_packet`].
pub fn start_packet(buf: &mut Vec<u8>, ty: PacketType, dcid: u64, pn: u64) {
    buf.clear();
    buf.push(PROTOCOL_VERSION);
    buf.push(ty as u8);
    buf.extend_from_slice(&dcid.to_be_bytes());
    buf.extend_from_slice(&pn.to_be_bytes());
}

/// Appends the CRC32 over everything in `buf`.
pub fn finish_packet(buf: &mut Vec<u8>) {
    let crc = crc32fast::hash(buf);
    buf.extend_from_slice(&crc.to_be_bytes());
}

pub fn write_ping(buf: &mut Vec<u8>) {
    buf.push(frame_type::PING);
}

pub fn write_max_data(buf: &mut Vec<u8>, limit: u64) {
    buf.push(frame_type::MAX_DATA);
    varint::write(buf, limit);
}

pub fn write_close(buf: &mut Vec<u8>, reason: u8) {
    buf.push(frame_type::CLOSE);
    buf.push(reason);
}

pub fn write_accept(buf: &mut Vec<u8>, cid: u64) {
    buf.push(frame_type::ACCEPT);
    buf.extend_from_slice(&cid.to_be_bytes());
}

pub const ACCEPT_LEN: usize = 9;
pub const CLOSE_LEN: usize = 2;
pub const MAX_DATA_LEN: usize = 9;

pub fn write_stream(buf: &mut Vec<u8>, f: &StreamFrame<'_>) {
    buf.push(frame_type::STREAM);
    buf.push(if f.ordered { STREAM_FLAG_ORDERED } else { 0 });
    varint::write(buf, f.msg_id);
    varint::write(buf, f.conn_offset);
    varint::write(buf, f.msg_len);
    varint::write(buf, f.offset);
    buf.extend_from_slice(&(f.data.len() as u16).to_be_bytes());
    buf.extend_from_slice(f.data);
}

/// Writes an ACK frame for `ranges` (highest first) using at most `space`
/// bytes; ranges that do not fit are left out (the lowest ones). Returns
/// false if not even the first range fits.
pub fn write_ack<I>(buf: &mut Vec<u8>, ack_delay_us: u64, mut ranges: I, space: usize) -> bool
where
    I: Iterator<Item = Range<u64>>,
{
    let Some(first) = ranges.next() else {
        return false;
    };
    let largest = first.end - 1;
    let first_len = largest - first.start;
    let head = 1 + varint::size(largest) + varint::size(ack_delay_us) + 2 + varint::size(first_len);
    if head > space {
        return false;
    }
    // The count is written as a 2-byte varint placeholder and patched at the end.
    let start = buf.len();
    buf.push(frame_type::ACK);
    varint::write(buf, largest);
    varint::write(buf, ack_delay_us);
    let count_pos = buf.len();
    buf.extend_from_slice(&[0x40, 0]); // 2-byte varint placeholder for the count
    varint::write(buf, first_len);
    let mut count: u64 = 0;
    let mut prev_smallest = first.start;
    for r in ranges {
        if r.end >= prev_smallest || count >= (1 << 14) - 1 {
            break;
        }
        let gap = prev_smallest - r.end - 1;
        let len = r.end - 1 - r.start;
        if buf.len() - start + varint::size(gap) + varint::size(len) > space {
            break;
        }
        varint::write(buf, gap);
        varint::write(buf, len);
        count += 1;
        prev_smallest = r.start;
    }
    let c = (count as u16 | 0x4000).to_be_bytes();
    buf[count_pos] = c[0];
    buf[count_pos + 1] = c[1];
    true
}

/// An INITIAL's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initial<'a> {
    pub src_cid: u64,
    pub cookie: &'a [u8],
}

impl<'a> Initial<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(payload);
        let src_cid = r.u64()?;
        let cookie = read_cookie(&mut r)?;
        if r.rest().iter().any(|&b| b != 0) {
            return Err(Error::Invalid("initial padding"));
        }
        Ok(Initial { src_cid, cookie })
    }
}

/// Writes a whole INITIAL datagram, padded to `size` (at least [`MIN_INITIAL_SIZE`]).
pub fn write_initial(buf: &mut Vec<u8>, src_cid: u64, cookie: &[u8], size: usize) {
    start_packet(buf, PacketType::Initial, 0, 0);
    buf.extend_from_slice(&src_cid.to_be_bytes());
    let cookie = &cookie[..cookie.len().min(MAX_COOKIE_LEN)];
    buf.push(cookie.len() as u8);
    buf.extend_from_slice(cookie);
    let target = size.max(MIN_INITIAL_SIZE) - CRC_LEN;
    if buf.len() < target {
        buf.resize(target, 0);
    }
    finish_packet(buf);
}

/// Parses a RETRY's payload: the cookie.
pub fn parse_retry(payload: &[u8]) -> Result<&[u8], Error> {
    let mut r = Reader::new(payload);
    let cookie = read_cookie(&mut r)?;
    r.finish()?;
    Ok(cookie)
}

/// A length-prefixed cookie of at most [`MAX_COOKIE_LEN`] bytes.
fn read_cookie<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], Error> {
    let len = r.u8()? as usize;
    if len > MAX_COOKIE_LEN {
        return Err(Error::TooLong {
            len: len as u64,
            max: MAX_COOKIE_LEN as u64,
        });
    }
    r.bytes(len)
}

pub fn write_retry(buf: &mut Vec<u8>, dcid: u64, cookie: &[u8]) {
    start_packet(buf, PacketType::Retry, dcid, 0);
    let cookie = &cookie[..cookie.len().min(MAX_COOKIE_LEN)];
    buf.push(cookie.len() as u8);
    buf.extend_from_slice(cookie);
    finish_packet(buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_round_trips() {
        for v in [
            0,
            1,
            63,
            64,
            16383,
            16384,
            (1 << 30) - 1,
            1 << 30,
            varint::MAX,
        ] {
            let mut b = Vec::new();
            varint::write(&mut b, v);
            assert_eq!(b.len(), varint::size(v));
            let mut r = Reader::new(&b);
            assert_eq!(varint::read(&mut r).unwrap(), v);
            r.finish().unwrap();
        }
    }

    #[test]
    fn data_packet_round_trips() {
        let mut b = Vec::new();
        start_packet(&mut b, PacketType::Data, 0xdead_beef, 77);
        write_ping(&mut b);
        let s = StreamFrame {
            ordered: true,
            msg_id: 5,
            conn_offset: 1 << 20,
            msg_len: 100,
            offset: 10,
            data: b"hello",
        };
        write_stream(&mut b, &s);
        let ranges = vec![90..101, 50..60, 10..11, 0..5];
        assert!(write_ack(&mut b, 250, ranges.clone().into_iter(), 100));
        write_max_data(&mut b, 1 << 40);
        write_close(&mut b, close_reason::NORMAL);
        write_accept(&mut b, 42);
        finish_packet(&mut b);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.crc_ok());
        assert_eq!(p.version(), PROTOCOL_VERSION);
        assert_eq!(p.packet_type(), Some(PacketType::Data));
        assert_eq!(p.dcid(), 0xdead_beef);
        assert_eq!(p.packet_number(), 77);
        let frames: Vec<_> = Frames::new(p.payload()).collect::<Result<_, _>>().unwrap();
        assert_eq!(frames[0], Frame::Ping);
        assert_eq!(frames[1], Frame::Stream(s));
        match frames[2] {
            Frame::Ack(a) => {
                assert_eq!(a.ack_delay_us, 250);
                assert_eq!(a.ranges().collect::<Vec<_>>(), ranges);
            }
            _ => panic!("expected ack"),
        }
        assert_eq!(frames[3], Frame::MaxData(1 << 40));
        assert_eq!(frames[4], Frame::Close(0));
        assert_eq!(frames[5], Frame::Accept(42));
    }

    #[test]
    fn ack_respects_space() {
        let ranges: Vec<_> = (0..1000u64).rev().map(|i| i * 10..i * 10 + 5).collect();
        let mut b = Vec::new();
        assert!(write_ack(&mut b, 0, ranges.into_iter(), 200));
        assert!(b.len() <= 200);
        let f = Frames::new(&b).next().unwrap().unwrap();
        let Frame::Ack(a) = f else { panic!() };
        assert!(a.ranges().count() > 50);
    }

    #[test]
    fn initial_and_retry_round_trip() {
        let mut b = Vec::new();
        write_initial(&mut b, 9, &[1, 2, 3], 1472);
        assert_eq!(b.len(), 1472);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.crc_ok());
        let i = Initial::parse(p.payload()).unwrap();
        assert_eq!((i.src_cid, i.cookie), (9, &[1u8, 2, 3][..]));
        write_retry(&mut b, 9, &[7; 16]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(parse_retry(p.payload()).unwrap(), &[7; 16]);
    }

    proptest! {
        #[test]
        fn frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for f in Frames::new(&bytes) {
                if let Ok(Frame::Ack(a)) = f {
                    for r in a.ranges().take(10_000) {
                        prop_assert!(r.start < r.end);
                    }
                }
            }
            let _ = Initial::parse(&bytes);
            let _ = parse_retry(&bytes);
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = (p.version(), p.packet_type(), p.dcid(), p.packet_number(), p.payload(), p.crc_ok());
            }
        }
    }
}
