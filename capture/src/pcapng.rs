//! A pcapng writer (draft-ietf-opsawg-pcapng): a section header, one interface description per
//! switch port (named after the port, described by what it connects to, nanosecond
//! timestamps), then an enhanced packet block per frame with its direction. `tcpdump -r` (libpcap
//! 1.1 and later) and `tshark` read it; tshark shows the port of every frame
//! (`frame.interface_name`) and its direction (`frame.packet_flags_direction`). Little-endian:
//! readers take either byte order, told by the section header's magic.

use std::io::{self, Write};

use crate::record::Record;

/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u16 = 1;

const SHB: u32 = 0x0a0d_0d0a;
const IDB: u32 = 1;
const EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;

const OPT_END: u16 = 0;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;

fn pad4(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// An option: code, length, value padded to 32 bits.
fn option(buf: &mut Vec<u8>, code: u16, value: &[u8]) {
    buf.extend_from_slice(&code.to_le_bytes());
    buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
    buf.extend_from_slice(value);
    pad4(buf);
}

/// A block of `kind` around what `body` writes: type, total length, body (padded), total
/// length again.
fn block(buf: &mut Vec<u8>, kind: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&kind.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    body(buf);
    pad4(buf);
    let len = (buf.len() - start + 4) as u32;
    buf[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
}

pub struct Writer<W: Write> {
    out: W,
    interfaces: u32,
    buf: Vec<u8>,
}

impl<W: Write> Writer<W> {
    /// Starts a section; `application` names the writer (`shb_userappl`).
    pub fn new(mut out: W, application: &str) -> io::Result<Writer<W>> {
        let mut buf = Vec::new();
        block(&mut buf, SHB, |b| {
            b.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes()); // version 1.0
            b.extend_from_slice(&0u16.to_le_bytes());
            b.extend_from_slice(&(-1i64).to_le_bytes()); // section length: not given
            option(b, SHB_USERAPPL, application.as_bytes());
            option(b, OPT_END, &[]);
        });
        out.write_all(&buf)?;
        Ok(Writer {
            out,
            interfaces: 0,
            buf,
        })
    }

    /// Describes the next interface (an Ethernet port); returns its id for [`Writer::packet`].
    pub fn interface(&mut self, name: &str, description: &str, snaplen: u32) -> io::Result<u32> {
        self.buf.clear();
        block(&mut self.buf, IDB, |b| {
            b.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
            b.extend_from_slice(&[0; 2]);
            b.extend_from_slice(&snaplen.to_le_bytes());
            option(b, IF_NAME, name.as_bytes());
            if !description.is_empty() {
                option(b, IF_DESCRIPTION, description.as_bytes());
            }
            option(b, IF_TSRESOL, &[9]); // nanoseconds
            option(b, OPT_END, &[]);
        });
        self.out.write_all(&self.buf)?;
        self.interfaces += 1;
        Ok(self.interfaces - 1)
    }

    /// Writes a frame seen on `interface`, with its direction.
    pub fn packet(&mut self, interface: u32, record: &Record) -> io::Result<()> {
        if interface >= self.interfaces {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pcapng: no interface {interface}"),
            ));
        }
        self.buf.clear();
        block(&mut self.buf, EPB, |b| {
            b.extend_from_slice(&interface.to_le_bytes());
            b.extend_from_slice(&((record.ts_ns >> 32) as u32).to_le_bytes());
            b.extend_from_slice(&(record.ts_ns as u32).to_le_bytes());
            b.extend_from_slice(&(record.data.len() as u32).to_le_bytes());
            b.extend_from_slice(&record.orig_len.to_le_bytes());
            b.extend_from_slice(&record.data);
            pad4(b);
            // Bits 0-1: 01 inbound, 10 outbound, as `Direction`'s values.
            option(b, EPB_FLAGS, &(record.dir as u32).to_le_bytes());
            option(b, OPT_END, &[]);
        });
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
    fn blocks_are_byte_exact() {
        let mut w = Writer::new(Vec::new(), "vswitch").unwrap();
        let shb = w.out.clone();
        #[rustfmt::skip]
        assert_eq!(shb, [
            0x0a, 0x0d, 0x0d, 0x0a,  44, 0, 0, 0,          // SHB, 44 bytes
            0x4d, 0x3c, 0x2b, 0x1a,  1, 0, 0, 0,           // byte-order magic, version 1.0
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // section length unknown
            4, 0, 7, 0,  b'v', b's', b'w', b'i', b't', b'c', b'h', 0, // shb_userappl + pad
            0, 0, 0, 0,                                    // opt_endofopt
            44, 0, 0, 0,
        ]);
        assert_eq!(w.interface("vsw-42", "pid 42", 262144).unwrap(), 0);
        let idb = w.out[shb.len()..].to_vec();
        #[rustfmt::skip]
        assert_eq!(idb, [
            1, 0, 0, 0,  56, 0, 0, 0,                      // IDB, 56 bytes
            1, 0,  0, 0,  0, 0, 4, 0,                      // Ethernet, reserved, snaplen 262144
            2, 0, 6, 0,  b'v', b's', b'w', b'-', b'4', b'2', 0, 0, // if_name
            3, 0, 6, 0,  b'p', b'i', b'd', b' ', b'4', b'2', 0, 0, // if_description
            9, 0, 1, 0,  9, 0, 0, 0,                       // if_tsresol: 10^-9
            0, 0, 0, 0,
            56, 0, 0, 0,
        ]);
        assert_eq!(w.interface("vsw0", "", 100).unwrap(), 1);
        let at = w.out.len();
        let record = Record {
            ts_ns: 0x0000_0001_0000_0002,
            port: 7,
            dir: Direction::Out,
            orig_len: 1000,
            data: vec![0xaa, 0xbb, 0xcc, 0xdd, 0xee],
        };
        w.packet(1, &record).unwrap();
        let epb = w.out[at..].to_vec();
        #[rustfmt::skip]
        assert_eq!(epb, [
            6, 0, 0, 0,  52, 0, 0, 0,                      // EPB, 52 bytes
            1, 0, 0, 0,                                    // interface 1
            1, 0, 0, 0,  2, 0, 0, 0,                       // time, high then low word
            5, 0, 0, 0,  0xe8, 3, 0, 0,                    // captured 5 of 1000 bytes
            0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0, 0, 0,         // the frame, padded
            2, 0, 4, 0,  2, 0, 0, 0,                       // epb_flags: outbound
            0, 0, 0, 0,
            52, 0, 0, 0,
        ]);
        assert!(w.packet(2, &record).is_err(), "no such interface");
    }
}
