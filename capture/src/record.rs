//! A captured frame, and the records in which the daemon streams captured frames to the command
//! line after its JSON header line:
//!
//! ```text
//! [u32 length of the rest][u8 kind][...]                       all integers little-endian
//!   kind 1, a frame:  [u16 port][u8 direction][u8 0][u64 time, ns since 1970][u32 original
//!                     length][the frame's bytes, at most the snap length]
//!   kind 2, the end:  [a JSON object: what the capture saw, why it ended]
//! ```
//!
//! The end record is the last one; the daemon closes the connection after it.

use std::io::{self, Read};

use vswitch_switch::vnet::{VnetHdr, F_NEEDS_CSUM};
use vswitch_switch::VNET_HDR_LEN;

use crate::checksum;

/// Which way a frame crossed the port, seen from the switch: `In` came from the port's side (a
/// container's frame, or the host's on the TAP), `Out` was sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In = 1,
    Out = 2,
}

impl Direction {
    fn from_u8(b: u8) -> Option<Direction> {
        match b {
            1 => Some(Direction::In),
            2 => Some(Direction::Out),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "In",
            Direction::Out => "Out",
        }
    }
}

/// One frame as a capture keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub port: u16,
    pub dir: Direction,
    /// The Ethernet frame's length (a GSO super-frame's whole length).
    pub orig_len: u32,
    /// The Ethernet frame, at most the capture's snap length of it.
    pub data: Vec<u8>,
}

/// The largest record the reader accepts (a 64 KiB super-frame is far below).
pub const MAX_RECORD: usize = 1 << 20;

const FRAME: u8 = 1;
const END: u8 = 2;
/// kind, port, direction, padding, time, original length.
const FRAME_HEADER: usize = 1 + 2 + 1 + 1 + 8 + 4;

impl Record {
    /// A capture's copy of `frame` (`[virtio_net_hdr][Ethernet]`, as the ports carry it): the
    /// virtio-net header stripped, a partial checksum finished, at most `snaplen` bytes kept.
    /// A GSO super-frame stays one frame, with its whole length: as it crossed the port.
    /// `None` for a frame shorter than its virtio-net header.
    pub fn of_frame(
        port: u16,
        dir: Direction,
        ts_ns: u64,
        frame: &[u8],
        snaplen: usize,
    ) -> Option<Record> {
        let hdr = VnetHdr::parse(frame)?;
        let eth = &frame[VNET_HDR_LEN..];
        let mut data = eth[..eth.len().min(snaplen)].to_vec();
        if hdr.flags & F_NEEDS_CSUM != 0 {
            let (start, offset) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
            if let Some(sum) = checksum::finish(eth, start, offset) {
                if let Some(field) = data.get_mut(start + offset..start + offset + 2) {
                    field.copy_from_slice(&sum.to_be_bytes());
                }
            }
        }
        Some(Record {
            ts_ns,
            port,
            dir,
            orig_len: eth.len() as u32,
            data,
        })
    }

    /// The bytes a record takes in a queue or on the wire, roughly: for the queue's byte bound.
    pub fn size(&self) -> usize {
        Record::size_for(self.data.len())
    }

    /// The size of a record of `len` bytes of frame.
    pub fn size_for(len: usize) -> usize {
        4 + FRAME_HEADER + len
    }

    /// Appends the record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&((FRAME_HEADER + self.data.len()) as u32).to_le_bytes());
        out.push(FRAME);
        out.extend_from_slice(&self.port.to_le_bytes());
        out.extend_from_slice(&[self.dir as u8, 0]);
        out.extend_from_slice(&self.ts_ns.to_le_bytes());
        out.extend_from_slice(&self.orig_len.to_le_bytes());
        out.extend_from_slice(&self.data);
    }
}

/// Appends the end record, with `json` (the capture's summary), to `out`.
pub fn encode_end(json: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((1 + json.len()) as u32).to_le_bytes());
    out.push(END);
    out.extend_from_slice(json);
}

/// One record of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Record),
    /// The end record's JSON.
    End(Vec<u8>),
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("capture stream: {what}"),
    )
}

/// Reads the next record; `Ok(None)` if the stream ends cleanly before one starts.
pub fn read_item(r: &mut impl Read) -> io::Result<Option<Item>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_RECORD {
        return Err(invalid(&format!("a record of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    match body[0] {
        FRAME if len >= FRAME_HEADER => {
            let h = &body[..FRAME_HEADER];
            let dir = Direction::from_u8(h[3]).ok_or_else(|| invalid("a bad direction"))?;
            Ok(Some(Item::Frame(Record {
                port: u16::from_le_bytes([h[1], h[2]]),
                dir,
                ts_ns: u64::from_le_bytes(h[5..13].try_into().expect("8 bytes")),
                orig_len: u32::from_le_bytes(h[13..17].try_into().expect("4 bytes")),
                data: body[FRAME_HEADER..].to_vec(),
            })))
        }
        END => Ok(Some(Item::End(body[1..].to_vec()))),
        kind => Err(invalid(&format!("a record of kind {kind} and {len} bytes"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::tcp;

    fn vnet(flags: u8, gso_type: u8, csum_start: u16, csum_offset: u16) -> Vec<u8> {
        let mut h = vec![flags, gso_type, 0, 0, 0, 0];
        h.extend_from_slice(&csum_start.to_le_bytes());
        h.extend_from_slice(&csum_offset.to_le_bytes());
        h
    }

    #[test]
    fn a_frame_is_copied_without_its_virtio_header_and_with_its_checksum_finished() {
        let eth = tcp([10, 1, 1, 2], 40000, [10, 1, 1, 3], 80, 0x18, b"hello");
        let plain = [vnet(0, 0, 0, 0), eth.clone()].concat();
        let r = Record::of_frame(3, Direction::In, 7, &plain, 65535).unwrap();
        assert_eq!((r.port, r.dir, r.ts_ns), (3, Direction::In, 7));
        assert_eq!((r.orig_len as usize, &r.data), (eth.len(), &eth));

        // A partial checksum (TCP's, 16 bytes into the header at 34) is finished in the copy,
        // and only there; the snap length keeps the original length.
        let partial = [vnet(F_NEEDS_CSUM, 0, 34, 16), eth.clone()].concat();
        let r = Record::of_frame(3, Direction::Out, 7, &partial, 65535).unwrap();
        let sum = checksum::finish(&eth, 34, 16).unwrap();
        assert_eq!(r.data[50..52], sum.to_be_bytes());
        assert_eq!(r.data[..50], eth[..50]);
        assert_eq!(partial[VNET_HDR_LEN + 50..VNET_HDR_LEN + 52], [0, 0]);
        let r = Record::of_frame(3, Direction::Out, 7, &partial, 40).unwrap();
        assert_eq!((r.data.len(), r.orig_len as usize), (40, eth.len()));
        assert_eq!(r.data[..], eth[..40]);

        // A super-frame stays whole.
        let big = tcp([10, 1, 1, 2], 1, [10, 1, 1, 3], 2, 0x10, &vec![7u8; 60000]);
        let gso = [vnet(F_NEEDS_CSUM, 1, 34, 16), big.clone()].concat();
        let r = Record::of_frame(1, Direction::In, 0, &gso, 262144).unwrap();
        assert_eq!((r.data.len(), r.orig_len as usize), (big.len(), big.len()));
        assert!(Record::of_frame(1, Direction::In, 0, &gso[..9], 100).is_none());
    }

    #[test]
    fn records_round_trip_and_the_stream_is_checked() {
        let r = Record {
            ts_ns: 1_700_000_000_123_456_789,
            port: 513,
            dir: Direction::Out,
            orig_len: 1514,
            data: vec![1, 2, 3],
        };
        let mut wire = Vec::new();
        r.encode(&mut wire);
        assert_eq!(
            wire,
            [
                &[20, 0, 0, 0, 1, 1, 2, 2, 0][..],
                &1_700_000_000_123_456_789u64.to_le_bytes(),
                &[0xea, 5, 0, 0, 1, 2, 3],
            ]
            .concat()
        );
        assert_eq!(r.size(), wire.len());
        encode_end(br#"{"frames":1}"#, &mut wire);
        let mut reader = &wire[..];
        assert_eq!(read_item(&mut reader).unwrap(), Some(Item::Frame(r)));
        assert_eq!(
            read_item(&mut reader).unwrap(),
            Some(Item::End(br#"{"frames":1}"#.to_vec()))
        );
        assert_eq!(read_item(&mut reader).unwrap(), None);
        // Cut in the middle of a record, an unknown kind, a silly length: errors.
        for bad in [
            &wire[..10],
            &[2, 0, 0, 0, 9, 9][..],
            &[0xff, 0xff, 0xff, 0x7f][..],
        ] {
            assert!(read_item(&mut &bad[..]).is_err(), "{bad:?}");
        }
    }
}
