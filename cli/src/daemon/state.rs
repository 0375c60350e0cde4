//! The daemon's state on disk: what a new process needs to take over the network a previous
//! one left (after a crash, a restart or a stop that kept the network): the switch's
//! configuration and every port, with how its container is identified.
//!
//! One JSON file next to the control socket (`vswitch.sock` -> `vswitch.state`), replaced
//! atomically on every change: written to a temporary file, flushed to disk, renamed over the
//! old one, and the directory flushed, so that a crash at any moment leaves either the old
//! state or the new one, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bump when the file changes shape.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub format: u32,
    /// The switch's configuration: a daemon started with another one must not adopt this.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub tap: String,
    pub mtu: u32,
    pub ports: Vec<PortRecord>,
}

/// One plugged container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRecord {
    pub port: u16,
    /// How it was named: a pid or a namespace path.
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Its namespace's identity (st_dev, st_ino): a pid reused by another process, or a path
    /// now naming another namespace, is not the same container.
    pub netns_id: (u64, u64),
    pub host_ifname: String,
    pub host_index: u32,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    #[serde(default)]
    pub publish: Vec<String>,
    /// The `/etc/netns/NAME/resolv.conf` the plug wrote, and whether it made the directory.
    #[serde(default)]
    pub netns_conf: Option<(PathBuf, bool)>,
    /// A runtime's attachment (a CNI plug): its container id and network. Left out for other
    /// ports, whose records stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Its port security, when not the default (anti-spoofing on, not isolated): a state
    /// written before port security existed adopts its ports with the default.
    #[serde(default, skip_serializing_if = "SecurityRecord::is_default")]
    pub security: SecurityRecord,
}

/// A port's security policy, as `plug` was asked for it (see `control::SecurityOpts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityRecord {
    #[serde(default)]
    pub trusted: bool,
    #[serde(default)]
    pub isolated: bool,
    #[serde(default)]
    pub allow_mac: Vec<String>,
    #[serde(default)]
    pub allow_ip: Vec<String>,
    #[serde(default)]
    pub allow_ethertype: Vec<String>,
    #[serde(default)]
    pub max_macs: Option<u32>,
}

impl SecurityRecord {
    pub fn is_default(&self) -> bool {
        *self == SecurityRecord::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the state file {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("the state file {path} is not one this vswitch can read ({why})")]
    Corrupt { path: PathBuf, why: String },
}

/// The state file that goes with a control socket.
pub fn path_for(control: &Path) -> PathBuf {
    control.with_extension("state")
}

/// The state a previous daemon left, `None` if there is none.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                err,
            })
        }
    };
    let corrupt = |why: String| StateError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let state: State = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if state.format != FORMAT {
        return Err(corrupt(format!(
            "format {}, this build reads {FORMAT}",
            state.format
        )));
    }
    Ok(Some(state))
}

/// Replaces the state file atomically.
pub fn save(path: &Path, state: &State) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("state.tmp");
    let mut text = serde_json::to_vec_pretty(state).expect("the state always serializes");
    text.push(b'\n');
    {
        let mut file = File::create(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is.
    File::open(dir)?.sync_all()
}

/// Puts an unreadable state file aside (`.state.bad`), so that it is kept for a human to look
/// at and a new one can be written.
pub fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let aside = path.with_extension("state.bad");
    fs::rename(path, &aside)?;
    Ok(aside)
}

pub fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            format: FORMAT,
            subnet: "10.1.1.0/24".into(),
            gateway: Ipv4Addr::new(10, 1, 1, 1),
            tap: "vsw0".into(),
            mtu: 1500,
            ports: vec![PortRecord {
                port: 1,
                pid: Some(4242),
                netns: None,
                netns_id: (4, 4026532290),
                host_ifname: "vsw-4242".into(),
                host_index: 17,
                ifname: "eth0".into(),
                ip: Ipv4Addr::new(10, 1, 1, 2),
                mac: "02:76:0a:01:01:02".into(),
                publish: vec!["8080:80/tcp".into()],
                netns_conf: None,
                container_id: Some("3f2a9b1c0d4e".into()),
                network: Some("vswitch".into()),
                security: SecurityRecord {
                    isolated: true,
                    allow_ip: vec!["10.1.1.0/28".into()],
                    ..SecurityRecord::default()
                },
            }],
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vsw-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("vswitch.state")
    }

    #[test]
    fn saved_state_loads_back_and_replaces_the_old() {
        let path = temp("roundtrip");
        assert_eq!(
            path_for(Path::new("/run/vswitch/vswitch.sock")),
            Path::new("/run/vswitch/vswitch.state")
        );
        assert!(load(&path).unwrap().is_none());
        let mut state = sample();
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state.clone()));
        state.ports.clear();
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state));
        let left: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_unreadable_state_is_an_error_that_names_the_file() {
        let path = temp("corrupt");
        for bad in [&b"{\"format\":1,"[..], b"[]", b"{\"format\":99,\"subnet\":\"x\",\"gateway\":\"10.0.0.1\",\"tap\":\"t\",\"mtu\":1,\"ports\":[]}"] {
            fs::write(&path, bad).unwrap();
            let err = load(&path).unwrap_err();
            assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("vswitch.state"), "{err}");
        }
        let aside = set_aside(&path).unwrap();
        assert!(aside.ends_with("vswitch.state.bad") && aside.exists() && !path.exists());
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
