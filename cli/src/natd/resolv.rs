//! DNS configuration: which upstream resolvers the daemon forwards to, and the container's
//! `resolv.conf`.
//!
//! A container's resolver is the gateway; the daemon forwards its queries (see `dns`). The
//! container's `resolv.conf` is written only where the container has a file of its own: inside
//! its own root filesystem (never following a symlink out of it), or `/etc/netns/NAME/` for a
//! named namespace. A container that shares the host's `/` gets nothing: the host's files are
//! never touched.

use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where, if anywhere, the container's resolv.conf went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Inside the container's own root filesystem (path as seen from the container).
    ContainerRoot,
    /// `/etc/netns/NAME/resolv.conf`, which `ip netns exec NAME` shows as `/etc/resolv.conf`;
    /// the directory is removed with the file on unplug if `plug` created it.
    NetnsEtc { file: PathBuf, created_dir: bool },
    /// Nothing written, and why.
    Skipped(String),
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Written::ContainerRoot => write!(f, "wrote /etc/resolv.conf in the container's root"),
            Written::NetnsEtc { file, .. } => write!(f, "wrote {}", file.display()),
            Written::Skipped(why) => write!(f, "resolv.conf not written: {why}"),
        }
    }
}

/// The `nameserver` addresses of a resolv.conf.
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|word| word.parse().ok())
        .collect()
}

/// Chooses the resolvers to forward to: `--dns` if given; else the host's, skipping loopback
/// stubs (such as systemd-resolved's 127.0.0.53) when a real upstream is known, either in the
/// host's resolv.conf or in `fallback` (systemd-resolved's list of real upstreams).
pub fn upstreams(explicit: &[IpAddr], host: &str, fallback: Option<&str>) -> Vec<SocketAddr> {
    let to_addrs = |ips: Vec<IpAddr>| ips.into_iter().map(|ip| SocketAddr::new(ip, 53)).collect();
    if !explicit.is_empty() {
        return to_addrs(explicit.to_vec());
    }
    let all = nameservers(host);
    let real: Vec<IpAddr> = all.iter().copied().filter(|ip| !ip.is_loopback()).collect();
    if !real.is_empty() {
        return to_addrs(real);
    }
    let from_fallback: Vec<IpAddr> = fallback
        .map(nameservers)
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .collect();
    if !from_fallback.is_empty() {
        return to_addrs(from_fallback);
    }
    // Only a stub is known: the daemon runs in the host's namespace, so it can still reach it.
    to_addrs(all)
}

/// The container's resolv.conf: the gateway as its only resolver, the host's search domains.
pub fn container_conf(gateway: Ipv4Addr, host: &str) -> String {
    let mut out = String::from("# written by vswitch: the gateway forwards queries\n");
    for line in host.lines() {
        let first = line.split_whitespace().next();
        if matches!(first, Some("search" | "domain")) {
            out.push_str(line.trim());
            out.push('\n');
        }
    }
    out.push_str(&format!("nameserver {gateway}\n"));
    out
}

/// Writes `content` as the resolv.conf of process `pid`'s container, if it has a root
/// filesystem of its own.
pub fn write_for_pid(pid: u32, content: &str) -> io::Result<Written> {
    let root_path = PathBuf::from(format!("/proc/{pid}/root"));
    let theirs = std::fs::metadata(&root_path)?;
    let ours = std::fs::metadata("/")?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Ok(Written::Skipped(
            "the container shares the host's root filesystem".to_string(),
        ));
    }
    let root = File::open(&root_path)?;
    match write_in_root(root.as_fd(), Path::new("etc/resolv.conf"), content) {
        Ok(()) => Ok(Written::ContainerRoot),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Written::Skipped(
            "the container's root has no /etc".to_string(),
        )),
        Err(e) => Err(e),
    }
}

/// Writes `/etc/netns/NAME/resolv.conf` for a namespace named by `ip netns` (`/run/netns/NAME`).
pub fn write_for_netns(netns: &Path, content: &str) -> io::Result<Written> {
    let (Some(parent), Some(name)) = (netns.parent(), netns.file_name()) else {
        return Ok(Written::Skipped("not a named namespace".to_string()));
    };
    if parent != Path::new("/run/netns") && parent != Path::new("/var/run/netns") {
        return Ok(Written::Skipped(format!(
            "{} is not a namespace named by `ip netns` (/run/netns/NAME)",
            netns.display()
        )));
    }
    let dir = Path::new("/etc/netns").join(name);
    let created_dir = !dir.exists();
    std::fs::create_dir_all(&dir)?;
    let etc = File::open(&dir)?;
    write_in_root(etc.as_fd(), Path::new("resolv.conf"), content)?;
    Ok(Written::NetnsEtc {
        file: dir.join("resolv.conf"),
        created_dir,
    })
}

/// Undoes `write_for_netns` when the container goes: the file, and the directory if `plug`
/// made it and nothing else lives there.
pub fn remove_netns_conf(file: &Path, created_dir: bool) {
    let _ = std::fs::remove_file(file);
    if created_dir {
        if let Some(dir) = file.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Creates or replaces `path` below directory `root`, resolving every component (symlinks
/// included) as if `root` were `/`: a link to `/etc/x` inside a container stays inside it.
fn write_in_root(root: impl AsFd, path: &Path, content: &str) -> io::Result<()> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;
    let how = OpenHow::new()
        .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(0o644))
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root, path, how).map_err(io::Error::from)?;
    let mut file = File::from(fd);
    file.write_all(content.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEMD_STUB: &str =
        "# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";

    #[test]
    fn parses_nameservers() {
        let text = "nameserver 192.0.2.1\n# nameserver 192.0.2.9\nnameserver  2001:db8::1\nnameserver bogus\n";
        assert_eq!(
            nameservers(text),
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn skips_loopback_stubs_when_a_real_upstream_is_known() {
        let host = "nameserver 127.0.0.53\nnameserver 192.0.2.1\n";
        assert_eq!(
            upstreams(&[], host, None),
            vec!["192.0.2.1:53".parse().unwrap()]
        );
        let real = "nameserver 198.51.100.53\n";
        assert_eq!(
            upstreams(&[], SYSTEMD_STUB, Some(real)),
            vec!["198.51.100.53:53".parse().unwrap()]
        );
        assert_eq!(
            upstreams(&[], SYSTEMD_STUB, None),
            vec!["127.0.0.53:53".parse().unwrap()]
        );
        let explicit = ["203.0.113.7".parse().unwrap()];
        assert_eq!(
            upstreams(&explicit, host, None),
            vec!["203.0.113.7:53".parse().unwrap()]
        );
    }

    #[test]
    fn container_conf_points_at_the_gateway_and_keeps_search_domains() {
        let conf = container_conf(Ipv4Addr::new(10, 1, 1, 1), SYSTEMD_STUB);
        assert!(conf.contains("nameserver 10.1.1.1\n"));
        assert!(conf.contains("search lan\n"));
        assert!(!conf.contains("127.0.0.53"));
    }

    #[test]
    fn writes_inside_a_root_without_following_links_out_of_it() {
        let dir = std::env::temp_dir().join(format!("vsw-resolv-{}", std::process::id()));
        let root = dir.join("root");
        let outside = dir.join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // An absolute link, as containers have: it must resolve inside `root`, not the host's /.
        let target = outside.join("resolv.conf");
        std::os::unix::fs::symlink(
            format!("/{}", "run/resolv.conf"),
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        let root_fd = File::open(&root).unwrap();
        write_in_root(
            root_fd.as_fd(),
            Path::new("etc/resolv.conf"),
            "nameserver 10.1.1.1\n",
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("run/resolv.conf")).unwrap(),
            "nameserver 10.1.1.1\n"
        );
        assert!(!target.exists());
        // A link climbing out with .. is clamped to the root as well.
        std::fs::remove_file(root.join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../outside/resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        let clamped = write_in_root(root_fd.as_fd(), Path::new("etc/resolv.conf"), "x\n");
        assert!(clamped.is_err() || !target.exists());
        assert!(!target.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
