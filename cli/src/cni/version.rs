//! The CNI specification versions this plugin speaks, and which one an invocation uses.

use std::fmt;

use super::error::{CniError, Code};

/// A version of the CNI specification, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// CHECK, and prevResult on DEL; `ips` carry a `version`.
    V0_4_0,
    /// `ips` lose their `version`.
    V1_0_0,
    /// STATUS and GC; interfaces may carry an `mtu`.
    V1_1_0,
}

/// Every version supported, oldest first, as VERSION reports them.
pub const SUPPORTED: [Version; 3] = [Version::V0_4_0, Version::V1_0_0, Version::V1_1_0];

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(text: &str) -> Option<Version> {
        SUPPORTED.into_iter().find(|v| v.as_str() == text)
    }

    /// The newest version: what a reply says when the request's is not known.
    pub fn latest() -> Version {
        Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn supported_list() -> String {
    SUPPORTED.map(Version::as_str).join(", ")
}

/// The version of an invocation: the request's `cniVersion`, which the runtime chose and must
/// be one of ours; without it, the newest of `cniVersions` (a configuration's list, for callers
/// that pass the list itself) that this plugin supports.
pub fn negotiate(cni_version: Option<&str>, cni_versions: &[String]) -> Result<Version, CniError> {
    let incompatible = |what: String| {
        CniError::new(
            Code::IncompatibleVersion,
            "incompatible CNI version",
            format!("{what}; this plugin supports {}", supported_list()),
        )
    };
    match cni_version {
        Some(v) => Version::parse(v).ok_or_else(|| incompatible(format!("cniVersion is {v:?}"))),
        None if cni_versions.is_empty() => Err(incompatible(
            "the configuration has no cniVersion (so it is 0.1.0)".to_string(),
        )),
        None => (cni_versions.iter().filter_map(|v| Version::parse(v)))
            .max()
            .ok_or_else(|| incompatible(format!("cniVersions is {cni_versions:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_negotiated() {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(negotiate(Some("0.4.0"), &[]).unwrap(), Version::V0_4_0);
        assert_eq!(negotiate(Some("1.1.0"), &[]).unwrap(), Version::V1_1_0);
        // cniVersion is the runtime's choice: it wins over the list.
        let both = list(&["0.4.0", "1.1.0"]);
        assert_eq!(negotiate(Some("1.0.0"), &both).unwrap(), Version::V1_0_0);
        let newer = list(&["0.3.1", "1.0.0", "1.1.0", "2.0.0"]);
        assert_eq!(negotiate(None, &newer).unwrap(), Version::V1_1_0);
        for (version, versions) in [
            (Some("0.3.1"), list(&[])),
            (Some("1.2.0"), list(&["1.0.0"])),
            (Some(""), list(&[])),
            (None, list(&[])),
            (None, list(&["0.3.1", "2.0.0"])),
        ] {
            let err = negotiate(version, &versions).unwrap_err();
            assert_eq!(
                err.code,
                Code::IncompatibleVersion,
                "{version:?} {versions:?}"
            );
            assert!(err.details.contains("0.4.0, 1.0.0, 1.1.0"), "{err}");
        }
    }

    #[test]
    fn versions_are_ordered() {
        assert!(Version::V0_4_0 < Version::V1_0_0 && Version::V1_0_0 < Version::V1_1_0);
        assert_eq!(SUPPORTED.iter().max(), Some(&Version::latest()));
    }
}
