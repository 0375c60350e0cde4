//! `vswitch cleanup`: removes what a daemon that is no longer running left (its ports, its
//! TAP, its state file), for a network that no daemon will take over.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::bpf::pins;
use crate::kernel::netlink::Netlink;
use crate::natd::resolv;

use super::plumbing::marker;
use super::state;

pub fn cleanup(control: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(control).is_ok() {
        bail!(
            "a daemon is serving {}: stop it with `vswitch stop` instead",
            control.display()
        );
    }
    let path = state::path_for(control);
    let left = state::load(&path)?;
    let marker = marker(control);
    let mut nl = Netlink::open().context("opening netlink")?;
    let mut removed = Vec::new();
    // Only links that carry this switch's mark: that covers the state's ports and TAP, and
    // what a crash left that the state never recorded.
    for link in nl.links()? {
        if link.alias.as_deref() == Some(marker.as_str()) {
            nl.delete_link(link.index)
                .with_context(|| format!("deleting {}", link.name))?;
            removed.push(link.name);
        }
    }
    for port in left.iter().flat_map(|s| &s.ports) {
        if let Some((file, created_dir)) = &port.netns_conf {
            resolv::remove_netns_conf(file, *created_dir);
        }
    }
    state::remove(&path);
    pins::remove(&pins::dir_for(control));
    let _ = std::fs::remove_file(control);
    match removed.is_empty() && left.is_none() {
        true => println!("nothing of {} left to remove", control.display()),
        false => println!("removed {}", removed.join(", ")),
    }
    Ok(())
}
