//! The host end's name: `vsw-<pid>` or `vsw-<netns name>`, within the 15-byte kernel limit;
//! for a runtime's attachment, `vsw<12 hex digits>` from its key.

use crate::control::{Attachment, Target};

/// A runtime's attachment is named after its key, (container id, interface), never after its
/// namespace path: podman's `/run/netns/netns-<uuid>` would leave 6 characters of a uuid, and a
/// restarted container comes back with another path but the same key. 48 bits of FNV-1a over
/// the key make a collision (which a plug reports as a host link that exists) a one in 10^14
/// event; no `-` after `vsw`, so the name never looks like a pid's or a namespace's.
pub fn attachment_ifname(a: &Attachment) -> String {
    let key = [a.container_id.as_str(), "/", a.ifname.as_str()].concat();
    format!("vsw{:012x}", fnv1a64(key.as_bytes()) & 0xffff_ffff_ffff)
}

/// FNV-1a, 64 bits: stable across runs and builds, which a name must be.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A namespace name too long for the limit is cut and given a hash of the whole path, so that
/// `ctr-long-name-1` and `ctr-long-name-2` do not collide.
pub fn host_ifname(target: &Target) -> String {
    match target {
        Target::Pid(pid) => format!("vsw-{pid}"),
        Target::Netns(path) => {
            let name: String = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if name.len() <= 11 {
                return format!("vsw-{name}");
            }
            // FNV-1a: stable across runs, which a name should be.
            let hash = path
                .as_os_str()
                .as_encoded_bytes()
                .iter()
                .fold(0x811c9dc5u32, |h, b| {
                    (h ^ u32::from(*b)).wrapping_mul(0x01000193)
                });
            format!("vsw-{}{:05x}", &name[..6], hash & 0xfffff)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_and_do_not_collide() {
        assert_eq!(host_ifname(&Target::Pid(4242)), "vsw-4242");
        assert_eq!(
            host_ifname(&Target::Netns("/run/netns/web".into())),
            "vsw-web"
        );
        let a = host_ifname(&Target::Netns("/run/netns/vswt26245-c1".into()));
        let b = host_ifname(&Target::Netns("/run/netns/vswt26245-c2".into()));
        assert_ne!(a, b);
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert!(a.starts_with("vsw-vswt26"));
    }

    #[test]
    fn attachment_names_fit_are_stable_and_differ_per_interface() {
        let at = |id: &str, ifname: &str| Attachment {
            container_id: id.parse().unwrap(),
            ifname: ifname.parse().unwrap(),
        };
        let id = "3f2a9b1c0d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
        let name = attachment_ifname(&at(id, "eth0"));
        assert_eq!(name.len(), 15, "{name}");
        assert!(name.starts_with("vsw") && name[3..].chars().all(|c| c.is_ascii_hexdigit()));
        // The same key always gives the same name (computed independently, in Python).
        assert_eq!(attachment_ifname(&at("a", "eth0")), "vsw8cf05fd4b4b8");
        assert_ne!(name, attachment_ifname(&at(id, "eth1")));
        assert_ne!(name, attachment_ifname(&at(&id[..63], "eth0")));
    }
}
