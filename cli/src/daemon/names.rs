//! The host end's name: `vsw-<pid>` or `vsw-<netns name>`, within the 15-byte kernel limit.

use crate::control::Target;

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
}
