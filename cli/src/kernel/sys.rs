//! Raw system-call error conversion shared by the I/O edge.

use std::io;

/// Turns a -1 return into the `errno` error.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
