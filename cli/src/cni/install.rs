//! `vswitch cni install`: the plugin binary into the CNI plugin directory, and a network
//! configuration list for the running daemon's subnet into the configuration directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::control::{Client, NetworkName, Stats};

use super::version::SUPPORTED;

/// What `install` wrote.
pub struct Installed {
    pub plugin: PathBuf,
    pub conflist: PathBuf,
    pub subnet: String,
}

/// The name runtimes run the plugin by: the configuration's `"type"`.
pub const PLUGIN: &str = "vswitch";

/// Installs the plugin and a network `name` for the daemon at `control`.
pub fn install(control: &Path, name: &str, bin_dir: &Path, conf_dir: &Path) -> Result<Installed> {
    let name: NetworkName = name.parse()?;
    let control =
        std::path::absolute(control).with_context(|| format!("resolving {}", control.display()))?;
    let stats = Client::new(&control)
        .stats()
        .context("asking the daemon for its subnet")?;
    let conflist = conflist(&name, &control, &stats);
    let plugin = bin_dir.join(PLUGIN);
    let exe = std::env::current_exe().context("finding this binary")?;
    copy_binary(&exe, &plugin)?;
    let file = conf_dir.join(format!("10-{name}.conflist"));
    let text = serde_json::to_string_pretty(&conflist)? + "\n";
    write_atomically(&file, text.as_bytes(), 0o644)?;
    Ok(Installed {
        plugin,
        conflist: file,
        subnet: stats.subnet.cidr,
    })
}

/// The network configuration list: vswitch alone, every capability it serves on.
/// `cniVersion` 1.0.0 is what runtimes with an older libcni (podman 4, containerd 1.6) take;
/// newer ones pick the highest of `cniVersions` they support.
pub fn conflist(name: &NetworkName, control: &Path, stats: &Stats) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "cniVersions": SUPPORTED.map(|v| v.as_str()),
        "name": name.to_string(),
        "plugins": [{
            "type": PLUGIN,
            "control": control,
            "subnet": stats.subnet.cidr,
            "capabilities": {"portMappings": true, "ips": true, "mac": true, "dns": true}
        }]
    })
}

/// Copies the binary unless `to` is it already (a second install, or a symlink to it).
fn copy_binary(from: &Path, to: &Path) -> Result<()> {
    let same = |a: &fs::Metadata, b: &fs::Metadata| (a.dev(), a.ino()) == (b.dev(), b.ino());
    if let (Ok(a), Ok(b)) = (fs::metadata(from), fs::metadata(to)) {
        if same(&a, &b) {
            return Ok(());
        }
    }
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_atomically(to, &bytes, 0o755)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`: a runtime
/// never runs half a binary or reads half a configuration, and a running plugin keeps its
/// file. Creates the directory if needed.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a file in a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // The mode asked for, whatever the umask.
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_conflist_names_the_daemon_and_its_subnet() {
        let mut stats = Stats::default();
        stats.subnet.cidr = "10.1.1.0/24".into();
        let list = conflist(
            &"vswitch".parse().unwrap(),
            Path::new("/run/x.sock"),
            &stats,
        );
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["cniVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        let plugin = &list["plugins"][0];
        assert_eq!(plugin["type"], "vswitch");
        assert_eq!(plugin["control"], "/run/x.sock");
        assert_eq!(plugin["subnet"], "10.1.1.0/24");
        assert_eq!(plugin["capabilities"]["portMappings"], true);
        // What the plugin reads back from it.
        let mut conf = plugin.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        let parsed = crate::cni::config::parse(conf.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.control, Path::new("/run/x.sock"));
    }

    #[test]
    fn files_are_replaced_whole_with_their_mode() {
        let dir = std::env::temp_dir().join(format!("vswitch-install-{}", std::process::id()));
        let file = dir.join("sub").join("plugin");
        write_atomically(&file, b"one", 0o755).unwrap();
        write_atomically(&file, b"two", 0o755).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        let mode = fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // No temporary file left beside it.
        assert_eq!(fs::read_dir(file.parent().unwrap()).unwrap().count(), 1);
        // A binary already in place (the same file) is left alone.
        copy_binary(&file, &file).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
