//! Driving vswitch as a CNI plugin exactly as a runtime does: the `CNI_*` variables in an
//! otherwise minimal environment, the plugin configuration on stdin, no arguments; the result
//! or the error object read from stdout. Nothing else of the test's environment leaks in (a
//! `VSWITCH_CONTROL` of the caller must not decide which daemon the plugin talks to).

use super::{wait_timeout, Sandbox, CMD_TIMEOUT, SUBNET, VSWITCH};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

/// What one plugin invocation did.
#[derive(Debug)]
pub struct CniOut {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CniOut {
    pub fn describe(&self) -> String {
        format!(
            "{}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }

    /// Asserts success; returns the result (`Value::Null` for verbs that print nothing).
    #[track_caller]
    pub fn ok(&self) -> Value {
        assert!(self.status.success(), "{}", self.describe());
        match self.stdout.trim() {
            "" => Value::Null,
            text => serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("the result is not JSON ({e}): {}", self.describe())),
        }
    }

    /// Asserts success with nothing on stdout (DEL, CHECK, STATUS, GC).
    #[track_caller]
    pub fn ok_silent(&self) {
        assert!(self.status.success(), "{}", self.describe());
        assert_eq!(self.stdout.trim(), "", "{}", self.describe());
    }

    /// Asserts failure with the specification's error object on stdout; returns its code.
    #[track_caller]
    pub fn error_code(&self) -> u64 {
        assert!(
            !self.status.success(),
            "expected an error: {}",
            self.describe()
        );
        let err: Value = serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("the error is not JSON ({e}): {}", self.describe()));
        for key in ["cniVersion", "msg", "details"] {
            assert!(err[key].is_string(), "no {key}: {}", self.describe());
        }
        err["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric code: {}", self.describe()))
    }

    /// The error object (after `error_code`).
    pub fn error(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or(Value::Null)
    }
}

/// Runs `plugin` (the vswitch binary by default) with exactly `env` and `stdin`.
pub fn invoke_with(plugin: &Path, env: &[(&str, &str)], stdin: &str) -> CniOut {
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let verb = (env.iter().find(|(k, _)| *k == "CNI_COMMAND")).map_or("?", |(_, v)| v);
    let what = format!("CNI {verb} ({})", plugin.display());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_timeout(&mut child, CMD_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not finish within {CMD_TIMEOUT:?}")
    });
    let _ = writer.join();
    CniOut {
        what,
        status,
        stdout: reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Runs the vswitch binary as the plugin.
pub fn invoke(env: &[(&str, &str)], stdin: &str) -> CniOut {
    invoke_with(Path::new(VSWITCH), env, stdin)
}

/// The plugin configuration a runtime derives from `vswitch cni install`'s conflist, for the
/// daemon of `sb`: network `vswitch`, the sandbox's subnet.
pub fn conf(sb: &Sandbox, version: &str) -> Value {
    conf_for(&sb.control, version)
}

pub fn conf_for(control: &Path, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "vswitch",
        "type": "vswitch",
        "control": control,
        "subnet": SUBNET,
    })
}

/// `conf` with `extra`'s keys added or replaced.
pub fn with(mut conf: Value, extra: Value) -> Value {
    let map = conf.as_object_mut().expect("a configuration object");
    for (k, v) in extra.as_object().expect("an object").clone() {
        map.insert(k, v);
    }
    conf
}

/// One attachment's parameters: container id, namespace path, interface.
#[derive(Debug, Clone)]
pub struct Attach {
    pub id: String,
    pub netns: String,
    pub ifname: String,
}

impl Attach {
    pub fn new(id: &str, netns: &str) -> Attach {
        Attach {
            id: id.to_string(),
            netns: netns.to_string(),
            ifname: "eth0".to_string(),
        }
    }

    /// The environment of `verb` on this attachment.
    pub fn env<'a>(&'a self, verb: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", &self.id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_PATH", "/nonexistent"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=test"),
        ]
    }

    pub fn run(&self, verb: &str, conf: &Value) -> CniOut {
        self.run_raw(verb, &conf.to_string())
    }

    /// `verb` with `stdin` as it is (which need not be JSON).
    pub fn run_raw(&self, verb: &str, stdin: &str) -> CniOut {
        invoke(&self.env(verb), stdin)
    }

    pub fn add(&self, conf: &Value) -> CniOut {
        self.run("ADD", conf)
    }

    /// DEL with the ADD's result as `prevResult`, as runtimes send it.
    pub fn del(&self, conf: &Value, prev: &Value) -> CniOut {
        self.run("DEL", &with_prev(conf, prev))
    }

    pub fn check(&self, conf: &Value, prev: &Value) -> CniOut {
        self.run("CHECK", &with_prev(conf, prev))
    }
}

/// `conf` with `prevResult` (unless `prev` is null).
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    match prev {
        Value::Null => conf.clone(),
        prev => with(conf.clone(), json!({ "prevResult": prev })),
    }
}

/// The daemon's view of its ports (`vswitch ls --json`), as JSON values.
#[track_caller]
pub fn ports(sb: &Sandbox) -> Vec<Value> {
    let out = sb.vswitch(&["ls", "--json"]).ok();
    serde_json::from_str(out.stdout.trim()).expect("ls --json is a JSON array")
}

/// `vswitch stats --json`.
#[track_caller]
pub fn stats(sb: &Sandbox) -> Value {
    let out = sb.vswitch(&["stats", "--json"]).ok();
    serde_json::from_str(out.stdout.trim()).expect("stats --json is JSON")
}

/// Asserts the daemon holds nothing but its TAP: no port, no link in its namespace, every
/// address of the /24 free again.
#[track_caller]
pub fn assert_nothing_left(sb: &Sandbox) {
    let ports = ports(sb);
    assert_eq!(ports.len(), 1, "ports left: {ports:#?}");
    sb.assert_host_links(&[]);
    let stats = stats(sb);
    assert_eq!(stats["containers"], 0);
    assert_eq!(
        stats["subnet"]["free"], 253,
        "addresses still reserved: {stats}"
    );
}
