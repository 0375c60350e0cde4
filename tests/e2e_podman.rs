//! A real container runtime end to end (issue 14): Debian's podman with its CNI backend runs a
//! busybox httpd on the `vswitch` network, with `-p` published through the daemon (podman's own
//! port reservation off, as README.md configures it: the daemon holds the port).
//!
//! The daemon, its TAP, the published ports and every host-side link live in the sandbox
//! namespace that plays the host (linked to a simulated outside world, `common::wan`); podman
//! runs in the root network namespace and adds only its containers' namespaces. Everything of
//! podman's is in a temporary directory (see [`Podman`]): storage, run and temporary
//! directories, the events log, locks, runc's state (through a wrapper that podman runs as
//! runc), the containers' cgroups (under a parent of the test's), and the CNI
//! configuration with the plugin installed by `vswitch cni install`. No file of the host's is
//! written: podman runs in a mount namespace of the test where `/var/lib` is a tmpfs, which
//! takes libcni's result cache and the image-copy cache that podman 4.3 keeps there whatever it
//! is told. Everything is removed at the end, also when the test fails.

mod common;

use common::cni::{ports, stats};
use common::wan::{nat_sandbox, DNS_SERVER, HOST_WAN_IP, HTTP_SERVER, WAN_IP};
use common::{
    command, exists, poll, require_program, run, run_timeout, unique_name, Out, Proc, Sandbox,
    TempDir, GATEWAY,
};
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// podman can take a while on a loaded 2-core machine (image import, container start).
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// The image the test builds from busybox-static.
const IMAGE: &str = "localhost/vswitch-busybox";

/// Which network namespace podman runs in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Netns {
    /// The root namespace, the daemon in the sandbox's: as the issue asks, so that the host's
    /// namespace gets nothing but the containers' namespaces.
    Root,
    /// The sandbox's, with the daemon: a host where both run, as README.md sets it up.
    Sandbox,
}

/// podman, configured to keep everything in a temporary directory, and a process holding the
/// namespaces it runs in.
struct Podman {
    dir: TempDir,
    /// `unshare --mount` holding the namespace with `/var/lib` as a tmpfs (see `new`).
    holder: Option<Child>,
    /// The containers' cgroup parent, removed from every hierarchy at the end.
    cgroup_parent: String,
}

impl Podman {
    /// Writes podman's configuration and installs the plugin and the `vswitch` network for the
    /// daemon of `sb`; podman will run in `netns`.
    fn new(sb: &Sandbox, netns: Netns) -> Podman {
        let name = unique_name();
        let dir = TempDir::new(&format!("{name}-podman"));
        let p = |sub: &str| dir.path.join(sub);
        for sub in ["tmp", "libpod", "runc"] {
            fs::create_dir_all(p(sub)).unwrap();
        }
        // runc keeps its state in its --root. podman passes `--runtime-flag`s to its own runc
        // calls but not to the cleanup it has conmon run when a container exits, so the flag
        // goes in a wrapper that podman knows as runc.
        let runc = which("runc");
        let wrapper = format!(
            "#!/bin/sh\nexec {} --root {} \"$@\"\n",
            runc.display(),
            p("runc").display()
        );
        fs::write(p("runc.sh"), wrapper).unwrap();
        fs::set_permissions(p("runc.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        let mut install = sb.vswitch_cmd("cni", &["install", "--name", "vswitch"]);
        install
            .arg("--bin-dir")
            .arg(p("bin"))
            .arg("--conf-dir")
            .arg(p("net.d"));
        run(install).ok();
        fs::write(
            p("containers.conf"),
            format!(
                r#"[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}"]
network_config_dir = "{net}"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{events}"
runtime = "runc"
tmp_dir = "{libpod}"
image_copy_tmp_dir = "{tmp}"
lock_type = "file"
# The daemon holds published ports itself (as README.md says to configure podman).
enable_port_reservation = false

[engine.runtimes]
runc = ["{runc}"]
"#,
                bin = p("bin").display(),
                net = p("net.d").display(),
                events = p("events.log").display(),
                libpod = p("libpod").display(),
                tmp = p("tmp").display(),
                runc = p("runc.sh").display(),
            ),
        )
        .unwrap();
        fs::write(
            p("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                p("root").display(),
                p("runroot").display()
            ),
        )
        .unwrap();
        let mut podman = Podman {
            dir,
            holder: None,
            cgroup_parent: format!("/{name}"),
        };
        let net = match netns {
            Netns::Root => None,
            Netns::Sandbox => Some(sb.host.path()),
        };
        podman.hold_namespaces(net.as_deref());
        podman
    }

    /// Starts the process whose namespaces podman runs in: the network namespace `netns` (the
    /// root one if `None`), and a copy of the host's mount namespace where `/var/lib` is a
    /// tmpfs. `/run/netns` stays shared with the host's (the sandbox made it a shared mount),
    /// so the namespaces podman creates there are visible to the daemon. The mount holding
    /// `/var/lib` is made private first, so that the tmpfs cannot propagate to the host even
    /// where `/` is shared (systemd).
    fn hold_namespaces(&mut self, netns: Option<&str>) {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mountinfo
                .lines()
                .any(|l| l.split(' ').nth(4) == Some("/run/netns") && l.contains(" shared:")),
            "/run/netns is not a shared mount: podman's namespaces would not reach the daemon"
        );
        let script = r#"
set -e
mount --make-private "$(findmnt -n -o TARGET -T /var/lib)"
mount -t tmpfs -o mode=0755,size=64m vswitch-test /var/lib
echo ready
exec sleep 3600
"#;
        let unshare = [
            "unshare",
            "--mount",
            "--propagation",
            "unchanged",
            "sh",
            "-c",
            script,
        ];
        let mut cmd = match netns {
            None => command(unshare[0], &unshare[1..]),
            Some(path) => {
                let mut c = command("nsenter", &[&format!("--net={path}")]);
                c.args(unshare);
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start unshare");
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let ok = read.is_ok() && line.trim() == "ready";
        self.holder = Some(child);
        assert!(
            ok,
            "the mount namespace for podman did not come up: {line:?}"
        );
    }

    /// `podman ARGS` in the holder's namespaces, configured by this test's files only.
    fn cmd(&self, args: &[&str]) -> Command {
        let holder = self.holder.as_ref().expect("holder").id().to_string();
        let mut c = command(
            "nsenter",
            &["--target", &holder, "--net", "--mount", "podman"],
        );
        c.args(args)
            .env("CONTAINERS_CONF", self.dir.path.join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path.join("storage.conf"),
            )
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.path.join("registries.conf"),
            )
            .env("TMPDIR", self.dir.path.join("tmp"));
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        run_timeout(self.cmd(args), PODMAN_TIMEOUT)
    }

    /// Builds the image from busybox-static with `podman import` (no registry needed): the
    /// applets as links, a web root with `index.html` saying `page`.
    fn import_image(&self, page: &str) {
        let root = self.dir.path.join("rootfs");
        for sub in [
            "bin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "www",
        ] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        let applets = run(command("/bin/busybox", &["--list"])).ok().stdout;
        for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let etc = |f: &str, text: &str| fs::write(root.join("etc").join(f), text).unwrap();
        etc("passwd", "root:x:0:0:root:/root:/bin/sh\n");
        etc("group", "root:x:0:\n");
        etc("hosts", "127.0.0.1 localhost\n");
        // A regular file that podman replaces with the network's resolvers.
        etc("resolv.conf", "nameserver 127.0.0.1\n");
        fs::write(root.join("www/index.html"), page).unwrap();
        let tar = self.dir.path.join("rootfs.tar");
        let mut pack = command("tar", &["-C"]);
        pack.arg(&root).arg("-cf").arg(&tar).arg(".");
        run(pack).ok();
        self.run(&["import", tar.to_str().unwrap(), IMAGE]).ok();
    }

    /// `podman run -d` of a busybox httpd on the vswitch network, publishing `host_port:80`.
    fn run_httpd(&self, name: &str, host_port: u16) -> String {
        let publish = format!("{host_port}:80");
        let out = self
            .run(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "vswitch",
                "-p",
                &publish,
                "--cgroup-parent",
                &self.cgroup_parent,
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=32768:32768",
                "--cap-add",
                "NET_RAW",
                IMAGE,
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
                "/www",
            ])
            .ok();
        out.stdout.trim().to_string()
    }

    /// `podman exec NAME ARGS`.
    fn exec(&self, name: &str, args: &[&str]) -> Out {
        let mut full = vec!["exec", name];
        full.extend_from_slice(args);
        self.run(&full)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if self.holder.is_some() {
            let _ = try_quiet(self.cmd(&["rm", "--all", "--force", "--time", "0"]));
            let _ = try_quiet(self.cmd(&["rmi", "--all", "--force"]));
        }
        if let Some(mut holder) = self.holder.take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        // Whatever podman still had mounted under the directory (a container's shm), then its
        // cgroups (children first), then the directory itself (TempDir).
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = (mounts.lines())
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir.path))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = try_quiet(command("umount", &["-l", m]));
        }
        for hierarchy in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let top = hierarchy
                .path()
                .join(self.cgroup_parent.trim_start_matches('/'));
            remove_cgroup(&top);
        }
    }
}

/// Removes a cgroup directory and its children (rmdir, deepest first).
fn remove_cgroup(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

fn try_quiet(mut cmd: Command) -> Option<Out> {
    common::try_run(&mut cmd, PODMAN_TIMEOUT)
}

/// Whether an x86-64/aarch64 ELF binary has no program interpreter (PT_INTERP): it runs in an
/// image that has no libraries.
fn is_static_elf64(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let word = |at: usize, n: usize| -> usize {
        (elf.get(at..at + n).unwrap_or_default().iter().rev()).fold(0, |v, b| v << 8 | *b as usize)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (phoff, phentsize, phnum) = (word(0x20, 8), word(0x36, 2), word(0x38, 2));
    (0..phnum).all(|i| word(phoff + i * phentsize, 4) as u32 != PT_INTERP)
}

/// Where `program` is on the PATH.
fn which(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    (std::env::split_paths(&path).map(|d| d.join(program)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on the PATH"))
}

/// Fetches `url` from the sandbox's host namespace.
fn host_fetch(sb: &Sandbox, url: &str) -> Out {
    let script = "import sys, urllib.request; \
                  print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), end='')";
    run(sb.host_cmd("python3", &["-c", script, url]))
}

/// The sandbox's links other than its loopback, TAP and uplink: the containers' host ends.
fn host_ports(sb: &Sandbox) -> Vec<String> {
    (sb.host_links().into_iter())
        .filter(|l| !["lo", "vsw0", "wan0"].contains(&l.as_str()))
        .collect()
}

/// The root namespace's links named like vswitch's: there must never be any.
fn root_vswitch_links() -> Vec<String> {
    let out = run(command("ip", &["-o", "link", "show"])).ok().stdout;
    (out.lines())
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("vsw"))
        .collect()
}

/// The attachment's port, by container id.
fn attachment(sb: &Sandbox, id: &str) -> Option<Value> {
    ports(sb)
        .into_iter()
        .find(|p| p["container_id"].as_str() == Some(id))
}

/// Checks the container's network end to end: its resolv.conf names the gateway first; a name
/// resolves through the gateway's DNS (the outside's server sees the query come from the
/// host's uplink: the daemon forwarded it); the outside's web server answers by that name; the
/// host fetches the container's page through the published port.
#[track_caller]
fn assert_works(podman: &Podman, sb: &Sandbox, dns: &Proc, name: &str, port: u16, page: &str) {
    let resolv = podman.exec(name, &["cat", "/etc/resolv.conf"]).ok().stdout;
    let first = resolv.lines().find(|l| l.starts_with("nameserver"));
    assert_eq!(
        first,
        Some(format!("nameserver {GATEWAY}").as_str()),
        "{resolv}"
    );

    let looked_up = podman.exec(name, &["nslookup", "outside.test"]).ok().stdout;
    assert!(looked_up.contains(WAN_IP), "{looked_up}");
    let seen = poll(Duration::from_secs(5), || {
        let lines = dns.lines_so_far();
        lines
            .iter()
            .any(|l| l.ends_with(" outside.test") && l.contains(HOST_WAN_IP))
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "the outside's DNS server never saw the query from the host"
    );
    let got = podman.exec(
        name,
        &["wget", "-q", "-O", "-", "http://outside.test/outside.txt"],
    );
    assert_eq!(got.ok().stdout, "from the outside\n");

    for host in ["127.0.0.1", GATEWAY] {
        let fetched = host_fetch(sb, &format!("http://{host}:{port}/")).ok();
        assert_eq!(fetched.stdout, page, "through {host}:{port}");
    }
}

/// What the podman tests need: root, podman, runc, a static busybox.
fn require_podman() {
    common::require_root();
    require_program("podman", "podman");
    require_program("runc", "runc");
    require_program("findmnt", "util-linux");
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox: apt-get install busybox-static");
    assert!(
        is_static_elf64(&busybox),
        "/bin/busybox is not static: apt-get install busybox-static"
    );
}

#[test]
fn podman_runs_a_container_on_the_vswitch_network() {
    require_podman();
    let (sb, wan) = nat_sandbox(&[], &[]);
    let dns = wan.python(DNS_SERVER, &[WAN_IP]);
    let www = TempDir::new(&unique_name());
    fs::write(www.path.join("outside.txt"), "from the outside\n").unwrap();
    let _http = wan.python(HTTP_SERVER, &["80", www.path.to_str().unwrap()]);

    let podman = Podman::new(&sb, Netns::Root);
    let page = "hello from podman on vswitch\n";
    podman.import_image(page);
    let name = format!("web-{}", unique_name());
    // The daemon's namespace is the sandbox's: the port is free there whatever the machine runs.
    let port = 8080;
    let id = podman.run_httpd(&name, port);
    assert_eq!(id.len(), 64, "podman run printed no container id");

    // The attachment: in the daemon, keyed by podman's container id; its host end in the
    // sandbox; nothing in the root namespace.
    let first = attachment(&sb, &id).expect("no port for the container");
    assert_eq!(first["network"], "vswitch");
    assert_eq!(first["ifname"], "eth0");
    assert_eq!(first["ip"], "10.1.1.2");
    assert_eq!(
        first["publish"],
        serde_json::json!([format!("{port}:80/tcp")])
    );
    let netns = first["netns"].as_str().unwrap().to_string();
    assert!(netns.starts_with("/run/netns/netns-"), "{netns}");
    assert_eq!(host_ports(&sb), [first["host_ifname"].as_str().unwrap()]);
    assert_eq!(root_vswitch_links(), Vec::<String>::new());
    assert_works(&podman, &sb, &dns, &name, port, page);

    // A restart: DEL, then ADD into a new namespace; the same attachment works again.
    podman.run(&["restart", "--time", "0", &name]).ok();
    let again = attachment(&sb, &id).expect("no port after the restart");
    assert_ne!(
        again["netns"], first["netns"],
        "podman gave the restart a new namespace"
    );
    assert_eq!(ports(&sb).len(), 2, "the old port outlived the restart");
    assert_eq!(host_ports(&sb).len(), 1);
    assert!(!exists(Path::new(&netns)));
    assert_works(&podman, &sb, &dns, &name, port, page);

    // rm -f: DEL releases the address and leaves nothing.
    let netns = again["netns"].as_str().unwrap().to_string();
    podman.run(&["rm", "--force", "--time", "0", &name]).ok();
    assert!(attachment(&sb, &id).is_none());
    assert_eq!(ports(&sb).len(), 1);
    assert_eq!(
        stats(&sb)["subnet"]["free"],
        253,
        "the address was not released"
    );
    assert_eq!(host_ports(&sb), Vec::<String>::new());
    assert!(!exists(Path::new(&netns)), "{netns} left behind");
    let published = host_fetch(&sb, &format!("http://127.0.0.1:{port}/"));
    assert!(
        !published.success(),
        "the published port outlived the container"
    );
    assert_eq!(
        podman.run(&["ps", "--all", "--quiet"]).ok().stdout.trim(),
        ""
    );
    let cache = PathBuf::from("/var/lib/cni/results");
    assert!(
        !fs::read_dir(&cache)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(&id)),
        "libcni's cache of the container reached the host's /var/lib"
    );
}

/// podman and the daemon on one host (one network namespace), configured as README.md says:
/// with podman's own port reservation off, the daemon holds the published port itself and
/// `-p` works; with it on, podman's reservation would find the port taken by the daemon.
#[test]
fn podman_beside_the_daemon_publishes_through_the_daemon() {
    require_podman();
    let sb = Sandbox::start();
    let podman = Podman::new(&sb, Netns::Sandbox);
    let page = "published beside the daemon\n";
    podman.import_image(page);
    let name = format!("web-{}", unique_name());
    let id = podman.run_httpd(&name, 8080);
    let port = attachment(&sb, &id).expect("no port for the container");
    assert_eq!(port["publish"], serde_json::json!(["8080:80/tcp"]));
    for host in ["127.0.0.1", GATEWAY] {
        let fetched = host_fetch(&sb, &format!("http://{host}:8080/")).ok();
        assert_eq!(fetched.stdout, page, "through {host}:8080");
    }
    podman.run(&["rm", "--force", "--time", "0", &name]).ok();
    assert_eq!(ports(&sb).len(), 1);
    assert_eq!(host_ports(&sb), Vec::<String>::new());
    assert!(!host_fetch(&sb, "http://127.0.0.1:8080/").success());
}
