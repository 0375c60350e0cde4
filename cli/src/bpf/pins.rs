//! Where the fast path's maps and links outlive the daemon: a bpffs of the switch's own,
//! mounted next to its control socket (`vswitch.sock` -> `vswitch.bpf/`).
//!
//! A BPF object lives as long as a descriptor or a pin holds it. Pinned, the forwarding between
//! containers keeps running while no daemon does (after a crash, during a restart), and the
//! next daemon opens the same maps. The bpffs is a private instance in a directory of the
//! switch's own rather than the host's `/sys/fs/bpf`, which may not be mounted, and whose other
//! users are none of the switch's business; removing the network unmounts it, and every pin
//! goes with it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs::statfs;

/// `BPF_FS_MAGIC` (<linux/magic.h>).
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// The pin directory of the switch whose control socket is `control`.
pub fn dir_for(control: &Path) -> PathBuf {
    control.with_extension("bpf")
}

#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// The bpffs at `dir`, mounted there first if it is not one yet.
    pub fn open(dir: &Path) -> io::Result<Pins> {
        if !is_bpffs(dir) {
            std::fs::create_dir_all(dir)?;
            mount(
                Some("bpf"),
                dir,
                Some("bpf"),
                MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| io::Error::other(format!("mounting a bpffs on {}: {e}", dir.display())))?;
        }
        Ok(Pins {
            dir: dir.to_path_buf(),
        })
    }

    /// The path of pin `name`, for the `bpf(2)` calls.
    pub fn path(&self, name: &str) -> CString {
        let path = self.dir.join(name);
        CString::new(path.as_os_str().as_bytes()).expect("pin paths have no NUL")
    }

    /// Whether pin `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    /// The names of the pins that start with `prefix`.
    pub fn names(&self, prefix: &str) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    /// Removes pin `name` (the object goes when nothing else holds it).
    pub fn unpin(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
    }
}

/// Unmounts the pin directory at `dir` and removes it: every pinned object is released.
pub fn remove(dir: &Path) {
    if is_bpffs(dir) {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir(dir);
}

fn is_bpffs(dir: &Path) -> bool {
    // The field's type differs between architectures; the magic fits 32 bits.
    #[allow(clippy::unnecessary_cast)]
    statfs(dir).is_ok_and(|s| s.filesystem_type().0 as u32 == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::map::Map;
    use crate::bpf::tests::need_root;

    #[test]
    fn a_pinned_map_outlives_its_descriptor_until_the_directory_goes() {
        need_root();
        let dir = std::env::temp_dir().join(format!("vsw-pins-{}.bpf", std::process::id()));
        let pins = Pins::open(&dir).unwrap();
        assert!(is_bpffs(&dir));
        // Opening it again finds the same bpffs, not a new one on top.
        let again = Pins::open(&dir).unwrap();
        {
            let map: Map<u32, u64> = Map::hash(4).unwrap();
            map.update(&7, &42).unwrap();
            map.pin(&pins.path("m")).unwrap();
        }
        assert!(again.exists("m"));
        let map: Map<u32, u64> = Map::open_hash(&pins.path("m"), 4).unwrap();
        assert_eq!(map.lookup(&7).unwrap(), Some(42));
        assert_eq!(map.keys().unwrap(), vec![7]);
        // A map of another shape under that name is refused.
        let other = Map::<u32, u32>::open_hash(&pins.path("m"), 4);
        assert_eq!(
            other.err().map(|e| e.kind()),
            Some(io::ErrorKind::InvalidData)
        );
        pins.unpin("m");
        assert!(!pins.exists("m"));
        remove(&dir);
        assert!(!dir.exists());
    }
}
