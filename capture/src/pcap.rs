//! A classic pcap writer (libpcap's file format) with nanosecond timestamps (magic
//! `0xa1b23c4d`): for tools that read nothing newer. It has no interfaces and no directions:
//! the frames of every captured port go in one list (prefer pcapng for more than one port).

use std::io::{self, Write};

use crate::pcapng::LINKTYPE_ETHERNET;
use crate::record::Record;

const MAGIC_NANOSECONDS: u32 = 0xa1b2_3c4d;

pub struct Writer<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Writes the file header: version 2.4, UTC, `snaplen`, Ethernet.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Writer<W>> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC_NANOSECONDS.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&snaplen.to_le_bytes());
        h.extend_from_slice(&u32::from(LINKTYPE_ETHERNET).to_le_bytes());
        out.write_all(&h)?;
        Ok(Writer { out, buf: h })
    }

    pub fn packet(&mut self, record: &Record) -> io::Result<()> {
        self.buf.clear();
        let b = &mut self.buf;
        b.extend_from_slice(&((record.ts_ns / 1_000_000_000) as u32).to_le_bytes());
        b.extend_from_slice(&((record.ts_ns % 1_000_000_000) as u32).to_le_bytes());
        b.extend_from_slice(&(record.data.len() as u32).to_le_bytes());
        b.extend_from_slice(&record.orig_len.to_le_bytes());
        b.extend_from_slice(&record.data);
        self.out.write_all(&self.buf)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Direction;

    #[test]
    fn header_and_records_are_byte_exact() {
        let mut w = Writer::new(Vec::new(), 65535).unwrap();
        let record = Record {
            ts_ns: 1_700_000_000 * 1_000_000_000 + 123_456_789,
            port: 1,
            dir: Direction::In,
            orig_len: 60,
            data: vec![1, 2, 3],
        };
        w.packet(&record).unwrap();
        let out = w.into_inner();
        #[rustfmt::skip]
        assert_eq!(out, [
            0x4d, 0x3c, 0xb2, 0xa1,  2, 0, 4, 0,           // nanosecond magic, version 2.4
            0, 0, 0, 0,  0, 0, 0, 0,                       // thiszone, sigfigs
            0xff, 0xff, 0, 0,  1, 0, 0, 0,                 // snaplen 65535, Ethernet
            0x00, 0xf1, 0x53, 0x65,                        // 1700000000 s
            0x15, 0xcd, 0x5b, 0x07,                        // 123456789 ns
            3, 0, 0, 0,  60, 0, 0, 0,                      // captured 3 of 60 bytes
            1, 2, 3,
        ]);
    }
}
