//! vswitch as a CNI network: container runtimes (podman's CNI backend, containerd, CRI-O,
//! Kubernetes) attach containers to the switch themselves.
//!
//! The plugin is the `vswitch` binary itself: run with `CNI_COMMAND` set and no arguments, the
//! way runtimes execute a plugin, it is the plugin named `vswitch` (`"type": "vswitch"`), and
//! `vswitch cni install` puts a copy in the CNI plugin directory. One binary to build and ship,
//! and a plugin installed from the daemon's own binary speaks its control protocol.
//!
//! Every verb is a request to the daemon over its control socket (the configuration's
//! `control`); the plugin keeps no state. An attachment is the daemon's port, keyed by
//! (`CNI_CONTAINERID`, `CNI_IFNAME`).
//!
//! - `env`: the `CNI_*` variables; `config`: the configuration on stdin; `version`: which
//!   version of the specification an invocation speaks;
//! - `verbs`: ADD, DEL, STATUS, GC; `check`: CHECK; VERSION is answered here;
//! - `result`, `error`: what goes to stdout;
//! - `install`: `vswitch cni install`.

use std::io::Read;
use std::process::ExitCode;

use serde_json::{json, Value};

mod check;
mod config;
mod env;
mod error;
pub mod install;
mod result;
mod verbs;
mod version;

use env::{Env, Verb};
use error::{CniError, Code};
use version::{Version, SUPPORTED};

/// Whether this process was started as a CNI plugin: `CNI_COMMAND` in the environment and no
/// arguments (a runtime passes everything through the environment and stdin).
pub fn invoked() -> bool {
    std::env::var_os("CNI_COMMAND").is_some() && std::env::args_os().len() == 1
}

/// Runs the plugin: the result (if the verb has one) on stdout and exit 0, or the error result
/// on stdout and exit 1.
pub fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin).map(|_| stdin);
    let env = Env {
        get: |name: &str| std::env::var(name).ok(),
    };
    match run(&env, read) {
        Ok(out) => {
            if let Some(json) = out {
                println!("{json}");
            }
            ExitCode::SUCCESS
        }
        Err((err, version)) => {
            println!("{}", err.to_json(version));
            ExitCode::FAILURE
        }
    }
}

/// One invocation: the verb's output, or the error and the version to report it in.
fn run<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    stdin: std::io::Result<Vec<u8>>,
) -> Result<Option<String>, (CniError, Version)> {
    let stdin = stdin.map_err(|e| {
        let err = CniError::new(
            Code::Io,
            "cannot read the network configuration",
            e.to_string(),
        );
        (err, Version::latest())
    })?;
    // Errors are reported in the configuration's version where it has a good one.
    let version = (serde_json::from_slice::<Value>(&stdin).ok())
        .and_then(|v| config::version_of(&v).ok())
        .unwrap_or(Version::latest());
    let fail = |e: CniError| (e, version);
    let verb = env.verb().map_err(fail)?;
    if verb == Verb::Version {
        return Ok(Some(version_reply(&stdin)));
    }
    let conf = config::parse(&stdin).map_err(fail)?;
    let params = || env.params(verb).map_err(fail);
    match verb {
        Verb::Add => verbs::add(&params()?, &conf).map(Some),
        Verb::Del => verbs::del(&params()?, &conf).map(|()| None),
        Verb::Check => check::check(&params()?, &conf).map(|()| None),
        Verb::Status => verbs::status(&conf).map(|()| None),
        Verb::Gc => verbs::gc(&conf).map(|()| None),
        Verb::Version => unreachable!("answered above"),
    }
    .map_err(fail)
}

/// VERSION: the versions supported, in the terms of the request's `cniVersion` whatever it is
/// (a runtime newer than this plugin asks in its own).
fn version_reply(stdin: &[u8]) -> String {
    let asked = (serde_json::from_slice::<Value>(stdin).ok())
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .unwrap_or_else(|| Version::latest().to_string());
    json!({
        "cniVersion": asked,
        "supportedVersions": SUPPORTED.map(|v| v.as_str()),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn invoke(vars: &[(&str, &str)], stdin: &str) -> Result<Option<String>, (CniError, Version)> {
        let map: HashMap<String, String> = (vars.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = Env {
            get: move |k: &str| map.get(k).cloned(),
        };
        run(&env, Ok(stdin.as_bytes().to_vec()))
    }

    #[test]
    fn version_answers_whatever_is_asked() {
        for (stdin, want) in [
            (r#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
            (r#"{"cniVersion":"1.2.0"}"#, "1.2.0"),
            ("", "1.1.0"),
        ] {
            let out = invoke(&[("CNI_COMMAND", "VERSION")], stdin)
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["cniVersion"], want);
            assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        }
    }

    #[test]
    fn errors_come_in_the_configurations_version() {
        let conf = r#"{"cniVersion":"0.4.0","name":"n","type":"vswitch"}"#;
        let (err, version) = invoke(&[("CNI_COMMAND", "ADD")], conf).unwrap_err();
        assert_eq!(err.code, Code::InvalidEnvironment);
        assert_eq!(version, Version::V0_4_0);
        let (err, version) = invoke(&[("CNI_COMMAND", "ADD")], "{").unwrap_err();
        assert_eq!(err.code, Code::Decode);
        assert_eq!(version, Version::latest());
        let (err, _) = invoke(&[("CNI_COMMAND", "NOPE")], conf).unwrap_err();
        assert_eq!(err.code, Code::InvalidEnvironment);
    }
}
