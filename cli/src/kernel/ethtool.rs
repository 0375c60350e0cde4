//! Netdev features by name (what `ethtool -K DEV NAME on` does), through the `SIOCETHTOOL`
//! ioctl: the kernel numbers its feature bits differently from release to release, so the bit
//! of a name is looked up in the device's feature strings first.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::sys::cvt;

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
/// `ETHTOOL_SFEATURES` answers with this bit set when a feature could not be set as asked.
const ETHTOOL_F_WISH: libc::c_int = 1 << 1;

/// Turns each named feature of `ifname` (in the calling thread's namespace) on or off. Fails
/// with `ErrorKind::Unsupported` if the kernel does not know a name, or would not set one.
pub fn set_features(ifname: &str, wanted: &[(&str, bool)]) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked and owned at once.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and belongs to nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let names = feature_names(&sock, ifname)?;
    let mut blocks = vec![0u32; 2 + 2 * names.len().div_ceil(32)];
    blocks[0] = ETHTOOL_SFEATURES;
    blocks[1] = names.len().div_ceil(32) as u32;
    for &(name, on) in wanted {
        let bit = (names.iter().position(|n| n == name)).ok_or_else(|| {
            io::Error::new(io::ErrorKind::Unsupported, format!("no feature {name}"))
        })?;
        // Each block: the bits to change (valid), then their new values (requested).
        let block = 2 + 2 * (bit / 32);
        blocks[block] |= 1 << (bit % 32);
        if on {
            blocks[block + 1] |= 1 << (bit % 32);
        }
    }
    let answer = ioctl(&sock, ifname, blocks.as_mut_ptr().cast())?;
    if answer & ETHTOOL_F_WISH != 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{ifname} would not take {wanted:?}"),
        ));
    }
    Ok(())
}

/// The device's feature names, indexed by bit.
fn feature_names(sock: &OwnedFd, ifname: &str) -> io::Result<Vec<String>> {
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), then one u32 per set asked.
    let mut info = [0u32; 5];
    info[0] = ETHTOOL_GSSET_INFO;
    let mask = (1u64 << ETH_SS_FEATURES).to_ne_bytes();
    info[2] = u32::from_ne_bytes([mask[0], mask[1], mask[2], mask[3]]);
    info[3] = u32::from_ne_bytes([mask[4], mask[5], mask[6], mask[7]]);
    ioctl(sock, ifname, info.as_mut_ptr().cast())?;
    // The kernel clears the bits of the sets it does not have.
    if info[2] == 0 && info[3] == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no feature strings",
        ));
    }
    let count = info[4] as usize;
    // struct ethtool_gstrings: cmd, string_set, len, then `len` strings of 32 bytes.
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[0] = ETHTOOL_GSTRINGS;
    strings[1] = ETH_SS_FEATURES;
    strings[2] = count as u32;
    ioctl(sock, ifname, strings.as_mut_ptr().cast())?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|s| {
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        })
        .collect())
}

/// `SIOCETHTOOL` on `ifname` with the command buffer `data`; returns the ioctl's answer.
fn ioctl(sock: &OwnedFd, ifname: &str, data: *mut libc::c_void) -> io::Result<libc::c_int> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {ifname:?}"),
        ));
    }
    // SAFETY: an all-zero ifreq is valid (a null-terminated empty name, a null union).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = data.cast();
    // SAFETY: `ifr` names the device and points at a command buffer the caller sized for the
    // command it holds (the kernel reads and writes only within the sizes written in it); both
    // outlive the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_name_is_refused_before_any_ioctl() {
        let err = set_features("", &[("rx-gro", true)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = set_features("a-name-far-too-long-for-ifnamsiz", &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
