//! The CNI error result: a code, a short message and the details, printed on stdout with a
//! non-zero exit.

use serde::Serialize;

use crate::control::{ClientError, ErrorCode};

use super::version::Version;

/// Error codes: the specification's well-known ones (0-99), then this plugin's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion,
    /// A field or value the plugin cannot honour (an IPv6 address, an SCTP port...).
    UnsupportedField,
    /// The container (its namespace, or its attachment) does not exist.
    UnknownContainer,
    InvalidEnvironment,
    Io,
    /// The configuration is not JSON.
    Decode,
    InvalidConfig,
    /// A transient condition: the daemon is not running, is shutting down or did not answer.
    TryAgainLater,
    /// STATUS: no ADD can succeed now (the subnet is full).
    NotAvailable,
    /// STATUS: the daemon is down, so the containers already attached have no network either.
    NotAvailableLimited,
    /// The daemon refused or failed the request for another reason.
    Daemon,
    /// Something the request would take is taken: the address, the MAC, a host port, the
    /// attachment itself.
    InUse,
    /// No room: the subnet is full, or the switch has no free port.
    NoRoom,
    /// The daemon speaks another version of the control protocol than this plugin binary.
    DaemonVersion,
    /// CHECK found the attachment different from its result.
    CheckFailed,
}

impl Code {
    pub fn number(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::UnknownContainer => 3,
            Code::InvalidEnvironment => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::TryAgainLater => 11,
            Code::NotAvailable => 50,
            Code::NotAvailableLimited => 51,
            Code::Daemon => 100,
            Code::InUse => 101,
            Code::NoRoom => 102,
            Code::DaemonVersion => 103,
            Code::CheckFailed => 110,
        }
    }
}

/// A failed invocation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn config(details: impl Into<String>) -> CniError {
        CniError::new(
            Code::InvalidConfig,
            "invalid network configuration",
            details,
        )
    }

    pub fn unsupported(details: impl Into<String>) -> CniError {
        CniError::new(Code::UnsupportedField, "unsupported field", details)
    }

    pub fn env(details: impl Into<String>) -> CniError {
        CniError::new(
            Code::InvalidEnvironment,
            "invalid environment variables",
            details,
        )
    }

    pub fn check(details: impl Into<String>) -> CniError {
        CniError::new(Code::CheckFailed, "CHECK failed", details)
    }

    /// The error result as JSON, in `version`'s terms.
    pub fn to_json(&self, version: Version) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        serde_json::to_string(&Wire {
            cni_version: version.as_str(),
            code: self.code.number(),
            msg: &self.msg,
            details: &self.details,
        })
        .expect("strings always serialize")
    }

    /// A failure to talk to the daemon, or the daemon's refusal, as a CNI error.
    pub fn daemon(err: ClientError) -> CniError {
        let details = err.to_string();
        let (code, msg) = match &err {
            ClientError::NotRunning { .. } => {
                (Code::TryAgainLater, "the vswitch daemon is not running")
            }
            ClientError::Io { .. } => (Code::TryAgainLater, "the vswitch daemon did not answer"),
            ClientError::Permission { .. } | ClientError::BadReply(_) => {
                (Code::Daemon, "cannot use the vswitch daemon")
            }
            ClientError::Daemon(f) => match f.code {
                ErrorCode::Invalid => (Code::InvalidConfig, "the vswitch daemon refused"),
                ErrorCode::Version => (Code::DaemonVersion, "vswitch version mismatch"),
                ErrorCode::NotFound => (Code::UnknownContainer, "no such container"),
                ErrorCode::Exists => (Code::InUse, "already in use"),
                ErrorCode::Full => (Code::NoRoom, "no room on the switch"),
                ErrorCode::Unavailable => (Code::TryAgainLater, "the vswitch daemon is stopping"),
                ErrorCode::Failed => (Code::Daemon, "the vswitch daemon failed"),
            },
        };
        CniError::new(code, msg, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Failure;

    #[test]
    fn the_error_result_is_the_specs() {
        let err = CniError::config("subnet is \"x\"");
        let json: serde_json::Value = serde_json::from_str(&err.to_json(Version::V1_0_0)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "code": 7,
                "msg": "invalid network configuration",
                "details": "subnet is \"x\""
            })
        );
    }

    #[test]
    fn daemon_failures_map_to_codes() {
        let daemon = |code| {
            let f = Failure::new(code, "plug netns /x: something");
            CniError::daemon(ClientError::Daemon(f)).code
        };
        assert_eq!(daemon(ErrorCode::NotFound), Code::UnknownContainer);
        assert_eq!(daemon(ErrorCode::Invalid), Code::InvalidConfig);
        assert_eq!(daemon(ErrorCode::Exists), Code::InUse);
        assert_eq!(daemon(ErrorCode::Full), Code::NoRoom);
        assert_eq!(daemon(ErrorCode::Unavailable), Code::TryAgainLater);
        let gone = ClientError::NotRunning {
            path: "/run/x.sock".into(),
            err: std::io::ErrorKind::NotFound.into(),
        };
        let err = CniError::daemon(gone);
        assert_eq!(err.code.number(), 11);
        assert!(err.details.contains("/run/x.sock"), "{err}");
    }
}
