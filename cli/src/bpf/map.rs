//! BPF maps with typed keys and values.
//!
//! The kernel copies keys and values in and out of the daemon's memory by address, as many
//! bytes as the map was created with. A [`Map`] is created from its types' sizes, so the only
//! way to hand it an address is a `&K` or a `V` of exactly those sizes, and [`Pod`] makes the
//! bytes the kernel writes a valid value.

use std::io;
use std::marker::PhantomData;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use std::ffi::CStr;

use super::sys::{
    bpf, create_map, map_info, obj_get, obj_pin, Attr, BPF_F_NO_PREALLOC, BPF_MAP_DELETE_ELEM,
    BPF_MAP_GET_NEXT_KEY, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM,
};

/// Plain data that the kernel may read and write as bytes.
///
/// # Safety
/// Implement only for types that are integers, arrays of `Pod`, or `#[repr(C)]` structs of
/// `Pod` fields with no padding (padding bytes would be uninitialised memory handed to the
/// kernel), and for which every bit pattern is a valid value (the kernel writes any bytes).
pub unsafe trait Pod: Copy + 'static {
    /// The all-zero value.
    fn zeroed() -> Self {
        // SAFETY: every bit pattern is a valid `Self` (the trait's contract), zeros included.
        unsafe { std::mem::zeroed() }
    }
}

// SAFETY: integers and arrays of them have no padding, and any bits are a valid value.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for u64 {}
// SAFETY: as above.
unsafe impl<const N: usize> Pod for [u8; N] {}

/// `enum bpf_map_type` (<linux/bpf.h>).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum MapType {
    Hash = 1,
    Array = 2,
    PerCpuArray = 6,
    LruHash = 9,
}

/// One map element command: `cmd` on `key` with `value` (null for a delete), flags `BPF_ANY`.
///
/// # Safety
/// `key` must point to a readable key of the map's key size; `value` to a buffer of the map's
/// value size (times the possible CPUs for a per-CPU map), readable for an update and writable
/// for a lookup.
unsafe fn elem(cmd: libc::c_long, map: RawFd, key: *const u8, value: *mut u8) -> io::Result<()> {
    // Element operations: map_fd, key, value, flags.
    let mut attr: Attr = [0; 16];
    attr[0] = map as u64;
    attr[1] = key as u64;
    attr[2] = value as u64;
    // SAFETY: the caller vouches for `key` and `value`.
    unsafe { bpf(cmd, &mut attr) }.map(drop)
}

fn is_absent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

fn size<T>() -> u32 {
    u32::try_from(size_of::<T>()).expect("BPF keys and values are small")
}

/// Opens the map pinned at `path`, if it is of `kind` with the sizes of `K` and `V` (a map a
/// daemon of another shape left is not this one's).
fn open_pinned<K, V>(path: &CStr, kind: MapType, entries: u32) -> io::Result<OwnedFd> {
    let fd = obj_get(path)?;
    let info = map_info(&fd)?;
    let want = (kind as u32, size::<K>(), size::<V>(), entries);
    let have = (info.kind, info.key_size, info.value_size, info.max_entries);
    if have != want {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the map pinned at {path:?} is (type, key, value, entries) {have:?}, not {want:?}"
            ),
        ));
    }
    Ok(fd)
}

/// A BPF map whose keys are `K` and whose values are `V`, one per key.
pub struct Map<K: Pod, V: Pod> {
    fd: OwnedFd,
    _types: PhantomData<fn(K) -> V>,
}

impl<K: Pod, V: Pod> Map<K, V> {
    fn create(kind: MapType, entries: u32, flags: u32) -> io::Result<Self> {
        Ok(Map {
            fd: create_map(kind as u32, size::<K>(), size::<V>(), entries, flags)?,
            _types: PhantomData,
        })
    }

    /// A map another process made, by a descriptor of it (a hand-over): its shape is the
    /// caller's to know.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Map {
            fd,
            _types: PhantomData,
        }
    }

    /// A hash map of up to `entries` elements (needs CAP_BPF).
    pub fn hash(entries: u32) -> io::Result<Self> {
        Self::create(MapType::Hash, entries, 0)
    }

    /// A hash map of up to `entries` elements that, full, makes room for a new one by evicting
    /// the least recently used (needs CAP_BPF).
    pub fn lru_hash(entries: u32) -> io::Result<Self> {
        Self::create(MapType::LruHash, entries, 0)
    }

    /// A hash map of up to `entries` elements whose memory is taken as they are added (needs
    /// CAP_BPF): for a bound far above what is usually in it. An update costs an allocation.
    pub fn sparse_hash(entries: u32) -> io::Result<Self> {
        Self::create(MapType::Hash, entries, BPF_F_NO_PREALLOC)
    }

    /// The hash map of `entries` elements pinned at `path` (see [`Map::pin`]).
    pub fn open_hash(path: &CStr, entries: u32) -> io::Result<Self> {
        Ok(Map {
            fd: open_pinned::<K, V>(path, MapType::Hash, entries)?,
            _types: PhantomData,
        })
    }

    /// Pins the map at `path` in a bpffs: it outlives the process.
    pub fn pin(&self, path: &CStr) -> io::Result<()> {
        obj_pin(&self.fd, path)
    }

    /// Every key in the map (a snapshot: programs may add or remove keys meanwhile).
    pub fn keys(&self) -> io::Result<Vec<K>> {
        let mut keys: Vec<K> = Vec::new();
        loop {
            let mut next = MaybeUninit::<K>::uninit();
            let key = keys
                .last()
                .map_or(std::ptr::null(), |k| k as *const K as *const u8);
            let mut attr: Attr = [0; 16];
            attr[0] = self.fd() as u64;
            attr[1] = key as u64;
            attr[2] = next.as_mut_ptr() as u64;
            // SAFETY: `key` is null (the first key) or points to a live `K`; `next` has room
            // for a `K`; both the map's key size.
            match unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
                // SAFETY: the kernel wrote a whole key, and any bytes are a `K` (Pod).
                Ok(_) => keys.push(unsafe { next.assume_init() }),
                Err(e) if is_absent(&e) => return Ok(keys),
                Err(e) => return Err(e),
            }
        }
    }

    /// The map's descriptor, for a program's `ld_map_fd`.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The value under `key`, if there is one.
    pub fn lookup(&self, key: &K) -> io::Result<Option<V>> {
        let mut value = MaybeUninit::<V>::uninit();
        let (k, v) = (key as *const K as *const u8, value.as_mut_ptr() as *mut u8);
        // SAFETY: the map was created with the sizes of `K` and `V`: `k` points to a live `K`,
        // `v` to room for a `V`.
        match unsafe { elem(BPF_MAP_LOOKUP_ELEM, self.fd(), k, v) } {
            // SAFETY: the kernel wrote all of the value's bytes, and any bytes are a `V` (Pod).
            Ok(()) => Ok(Some(unsafe { value.assume_init() })),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the value under `key`, whether or not there was one.
    pub fn update(&self, key: &K, value: &V) -> io::Result<()> {
        let (k, v) = (key as *const K as *const u8, value as *const V as *mut u8);
        // SAFETY: `k` and `v` point to a live `K` and `V`, the map's sizes; an update only reads
        // the value.
        unsafe { elem(BPF_MAP_UPDATE_ELEM, self.fd(), k, v) }
    }

    /// Deletes `key`'s element; `false` if there was none.
    pub fn delete(&self, key: &K) -> io::Result<bool> {
        let k = key as *const K as *const u8;
        // SAFETY: `k` points to a live `K`, the map's key size; a delete takes no value.
        match unsafe { elem(BPF_MAP_DELETE_ELEM, self.fd(), k, std::ptr::null_mut()) } {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl<V: Pod> Map<u32, V> {
    /// An array of `entries` values, all zeros at first (needs CAP_BPF).
    pub fn array(entries: u32) -> io::Result<Self> {
        Self::create(MapType::Array, entries, 0)
    }
}

/// A BPF map with one `V` per possible CPU under each key: programs update their own CPU's
/// copy without atomics, readers get them all.
pub struct PerCpuMap<K: Pod, V: Pod> {
    fd: OwnedFd,
    cpus: usize,
    _types: PhantomData<fn(K) -> V>,
}

impl<V: Pod> PerCpuMap<u32, V> {
    /// An array of `entries` keys, all zeros at first (needs CAP_BPF).
    pub fn array(entries: u32) -> io::Result<Self> {
        // The kernel lays out one value per CPU every 8 bytes, a `Vec<V>` every size_of::<V>().
        const {
            assert!(
                size_of::<V>() % 8 == 0,
                "per-CPU values are 8-byte multiples"
            )
        };
        Ok(PerCpuMap {
            fd: create_map(
                MapType::PerCpuArray as u32,
                size::<u32>(),
                size::<V>(),
                entries,
                0,
            )?,
            cpus: possible_cpus()?,
            _types: PhantomData,
        })
    }
}

impl<V: Pod> PerCpuMap<u32, V> {
    /// The per-CPU array of `entries` keys pinned at `path`.
    pub fn open_array(path: &CStr, entries: u32) -> io::Result<Self> {
        Ok(PerCpuMap {
            fd: open_pinned::<u32, V>(path, MapType::PerCpuArray, entries)?,
            cpus: possible_cpus()?,
            _types: PhantomData,
        })
    }
}

impl<K: Pod, V: Pod> PerCpuMap<K, V> {
    /// Pins the map at `path` in a bpffs: it outlives the process.
    pub fn pin(&self, path: &CStr) -> io::Result<()> {
        obj_pin(&self.fd, path)
    }

    /// The map's descriptor, for a program's `ld_map_fd`.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// How many values each key has: one per possible CPU.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// The values under `key`, one per possible CPU, if there are.
    pub fn lookup(&self, key: &K) -> io::Result<Option<Vec<V>>> {
        let mut values = vec![V::zeroed(); self.cpus];
        let (k, v) = (key as *const K as *const u8, values.as_mut_ptr() as *mut u8);
        // SAFETY: `k` points to a live `K`, the map's key size; `v` to `cpus` values of the
        // map's value size, an 8-byte multiple, which is the per-CPU layout the kernel writes.
        match unsafe { elem(BPF_MAP_LOOKUP_ELEM, self.fd(), k, v) } {
            Ok(()) => Ok(Some(values)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the values under `key`, one per possible CPU ([`PerCpuMap::cpus`] of them).
    pub fn update(&self, key: &K, values: &[V]) -> io::Result<()> {
        if values.len() != self.cpus {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} per-CPU values for {} CPUs", values.len(), self.cpus),
            ));
        }
        let (k, v) = (key as *const K as *const u8, values.as_ptr() as *mut u8);
        // SAFETY: as in `lookup`; the kernel only reads the values of an update.
        unsafe { elem(BPF_MAP_UPDATE_ELEM, self.fd(), k, v) }
    }
}

/// One more than the highest CPU the kernel may run: the number of values of a per-CPU map's
/// element (a sparse CPU list leaves unused zeros).
fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let last = text
        .trim()
        .rsplit([',', '-'])
        .next()
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| io::Error::other(format!("unreadable CPU list {text:?}")))?;
    Ok(last + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_maps_read_back_what_was_written() {
        crate::bpf::tests::need_root();
        let map = Map::<[u8; 8], u64>::hash(4).unwrap();
        let key = *b"station!";
        assert_eq!(map.lookup(&key).unwrap(), None);
        map.update(&key, &0x0123_4567_89ab_cdef).unwrap();
        assert_eq!(map.lookup(&key).unwrap(), Some(0x0123_4567_89ab_cdef));
        assert!(map.delete(&key).unwrap());
        assert!(!map.delete(&key).unwrap(), "a second delete finds nothing");
        assert_eq!(map.lookup(&key).unwrap(), None);

        // The same without preallocation, and bounded all the same.
        let sparse = Map::<[u8; 8], u64>::sparse_hash(1).unwrap();
        sparse.update(&key, &1).unwrap();
        assert_eq!(sparse.lookup(&key).unwrap(), Some(1));
        assert!(sparse.update(b"another!", &2).is_err(), "full");

        let array = Map::<u32, u32>::array(1).unwrap();
        assert_eq!(array.lookup(&0).unwrap(), Some(0), "arrays start zeroed");
        array.update(&0, &7).unwrap();
        assert_eq!(array.lookup(&0).unwrap(), Some(7));
        assert_eq!(array.lookup(&1).unwrap(), None, "past the end");

        let per_cpu = PerCpuMap::<u32, u64>::array(2).unwrap();
        let n = per_cpu.cpus();
        assert!(n >= 1);
        assert_eq!(per_cpu.lookup(&1).unwrap(), Some(vec![0; n]));
        let values: Vec<u64> = (1..=n as u64).collect();
        per_cpu.update(&1, &values).unwrap();
        assert_eq!(per_cpu.lookup(&1).unwrap(), Some(values));
        let err = per_cpu.update(&1, &vec![1; n + 1]).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::InvalidInput,
            "one value per CPU or none: {err}"
        );
    }
}
