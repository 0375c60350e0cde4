//! Port security in the control protocol: `plug`'s options (parsed at the boundary, like every
//! other field) and what `ls` shows of a port's policy and counters.

use serde::{Deserialize, Serialize};
use vswitch_switch::{ethertype, Ipv4Prefix, MacAddr, PortPolicy};

use super::protocol::{unicast_mac, ParseError};

/// Most entries in each of a plug's `allow_*` lists.
pub const MAX_ALLOWED: usize = 64;

/// What a port may send and reach, as `plug` asks for it (see `vswitch_switch::PortPolicy`).
/// The default is what every container gets: anti-spoofing on, not isolated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityOpts {
    /// No source checks (`--trusted`).
    pub trusted: bool,
    /// Reaches the gateway, the host and the outside only (`--isolated`).
    pub isolated: bool,
    pub allow_macs: Vec<MacAddr>,
    pub allow_ips: Vec<Ipv4Prefix>,
    pub allow_ethertypes: Vec<u16>,
    /// Most MACs the switch learns on the port besides its own (`--max-macs`).
    pub max_macs: Option<u32>,
}

impl SecurityOpts {
    /// Checks the combination; the fields are typed already.
    pub fn validate(self) -> Result<SecurityOpts, ParseError> {
        let widened = !(self.allow_macs.is_empty()
            && self.allow_ips.is_empty()
            && self.allow_ethertypes.is_empty());
        if self.trusted && widened {
            return Err(ParseError::Security(
                "--trusted allows every MAC, address and EtherType already: drop the --allow-* \
                 options, or --trusted"
                    .into(),
            ));
        }
        for (n, what) in [
            (self.allow_macs.len(), "--allow-mac"),
            (self.allow_ips.len(), "--allow-ip"),
            (self.allow_ethertypes.len(), "--allow-ethertype"),
        ] {
            if n > MAX_ALLOWED {
                return Err(ParseError::Security(format!(
                    "{n} times {what}: at most {MAX_ALLOWED}"
                )));
            }
        }
        Ok(self)
    }

    /// The switch's policy for a container port (`isolate`: the daemon isolates every port).
    pub fn policy(&self, isolate: bool) -> PortPolicy {
        PortPolicy {
            trusted: self.trusted,
            isolated: self.isolated || isolate,
            uplink: false,
            allow_macs: self.allow_macs.clone(),
            allow_ips: self.allow_ips.clone(),
            allow_ethertypes: self.allow_ethertypes.clone(),
            max_macs: self.max_macs,
        }
    }

    /// The options that give `policy` (the state file keeps a port's policy this way).
    pub fn of(policy: &PortPolicy) -> SecurityOpts {
        SecurityOpts {
            trusted: policy.trusted,
            isolated: policy.isolated,
            allow_macs: policy.allow_macs.clone(),
            allow_ips: policy.allow_ips.clone(),
            allow_ethertypes: policy.allow_ethertypes.clone(),
            max_macs: policy.max_macs,
        }
    }

    /// The wire's strings: (MACs, prefixes, EtherTypes).
    pub fn to_wire(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        (
            self.allow_macs.iter().map(|m| m.to_string()).collect(),
            self.allow_ips.iter().map(|p| p.to_string()).collect(),
            self.allow_ethertypes
                .iter()
                .map(|&t| ethertype_str(t))
                .collect(),
        )
    }

    /// From the wire's fields, each parsed as on the command line.
    pub fn from_wire(
        trusted: bool,
        isolated: bool,
        macs: &[String],
        ips: &[String],
        ethertypes: &[String],
        max_macs: Option<u32>,
    ) -> Result<SecurityOpts, ParseError> {
        SecurityOpts {
            trusted,
            isolated,
            allow_macs: macs
                .iter()
                .map(|m| unicast_mac(m))
                .collect::<Result<_, _>>()?,
            allow_ips: (ips.iter())
                .map(|p| {
                    p.parse()
                        .map_err(|e| ParseError::Security(format!("--allow-ip: {e}")))
                })
                .collect::<Result<_, _>>()?,
            allow_ethertypes: (ethertypes.iter())
                .map(|t| parse_ethertype(t))
                .collect::<Result<_, _>>()?,
            max_macs,
        }
        .validate()
    }
}

/// An EtherType as `--allow-ethertype` takes it: hex, with or without `0x` (`86dd`,
/// `0x86DD`), at least 0x0600 (below, the field is an 802.3 length). IPv4 and ARP are always
/// allowed and need no option.
pub fn parse_ethertype(text: &str) -> Result<u16, ParseError> {
    let bad = || ParseError::EtherType(text.chars().take(16).collect());
    let digits = (text.strip_prefix("0x"))
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let value = u16::from_str_radix(digits, 16).map_err(|_| bad())?;
    if value < 0x0600 || value == ethertype::IPV4 || value == ethertype::ARP {
        return Err(bad());
    }
    Ok(value)
}

/// `0x86dd`.
pub fn ethertype_str(value: u16) -> String {
    format!("{value:#06x}")
}

/// A port's policy, as `ls --json` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityView {
    /// No source checks: a `--trusted` container, or the TAP (the host routes anything).
    pub trusted: bool,
    pub isolated: bool,
    pub allow_mac: Vec<String>,
    pub allow_ip: Vec<String>,
    pub allow_ethertype: Vec<String>,
    /// Most MACs the switch learns on the port besides its station's own.
    pub max_macs: u32,
}

impl SecurityView {
    pub fn new(policy: &PortPolicy, max_macs: u32) -> SecurityView {
        let (allow_mac, allow_ip, allow_ethertype) = SecurityOpts::of(policy).to_wire();
        SecurityView {
            trusted: policy.trusted,
            isolated: policy.isolated,
            allow_mac,
            allow_ip,
            allow_ethertype,
            max_macs,
        }
    }

    /// The `SEC` column of `ls`: `on`, `on+allow`, `trusted`, with `,isolated`.
    pub fn short(&self) -> String {
        let mut s = match (self.trusted, self.allow_mac.len() + self.allow_ip.len()) {
            (true, _) => "trusted".to_string(),
            (false, 0) if self.allow_ethertype.is_empty() => "on".to_string(),
            (false, _) => "on+allow".to_string(),
        };
        if self.isolated {
            s.push_str(",isolated");
        }
        s
    }
}

/// Spoofed frames a port sent, dropped, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoofCounts {
    /// A source MAC the port may not use.
    pub mac: u64,
    /// IPv4 from an address the port may not use.
    pub ip: u64,
    /// ARP claiming a MAC or address the port may not use.
    pub arp: u64,
    /// An EtherType the port may not send (IPv6 among them).
    pub ethertype: u64,
}

impl SpoofCounts {
    pub fn total(&self) -> u64 {
        self.mac + self.ip + self.arp + self.ethertype
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethertypes() {
        assert_eq!(parse_ethertype("86dd"), Ok(0x86dd));
        assert_eq!(parse_ethertype("0x88CC"), Ok(0x88cc));
        assert_eq!(ethertype_str(0x86dd), "0x86dd");
        assert_eq!(ethertype_str(0x0800), "0x0800");
        for bad in [
            "", "0x", "zz", "0x10000", "0x05dc", "0800", "0x0806", "-1", "0x 86dd",
        ] {
            assert!(parse_ethertype(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_become_the_policy_and_back() {
        let opts = SecurityOpts::from_wire(
            false,
            true,
            &["02:00:00:00:00:09".into()],
            &["10.1.1.0/28".into()],
            &["0x86dd".into()],
            Some(4),
        )
        .unwrap();
        let policy = opts.policy(false);
        assert!(policy.isolated && !policy.trusted && !policy.uplink);
        assert_eq!(SecurityOpts::of(&policy), opts);
        assert!(
            SecurityOpts::default().policy(true).isolated,
            "run --isolate"
        );
        let view = SecurityView::new(&policy, 4);
        assert_eq!(view.allow_ethertype, ["0x86dd"]);
        assert_eq!(view.short(), "on+allow,isolated");
        assert_eq!(
            SecurityView::new(&PortPolicy::trusted(), 256).short(),
            "trusted"
        );
        assert_eq!(SecurityView::new(&PortPolicy::default(), 0).short(), "on");
    }

    #[test]
    fn contradictions_and_garbage_are_refused() {
        let some = |s: &str| vec![s.to_string()];
        let none = Vec::new();
        for (macs, ips, types, trusted) in [
            (some("02:00:00:00:00:09"), none.clone(), none.clone(), true),
            (some("01:00:5e:00:00:01"), none.clone(), none.clone(), false),
            (none.clone(), some("10.1.1.5/24"), none.clone(), false),
            (none.clone(), some("nonsense"), none.clone(), false),
            (none.clone(), none.clone(), some("0x0800"), false),
        ] {
            let got = SecurityOpts::from_wire(trusted, false, &macs, &ips, &types, None);
            assert!(got.is_err(), "{macs:?} {ips:?} {types:?} {trusted}");
        }
        let many: Vec<String> = (0..=MAX_ALLOWED)
            .map(|i| format!("10.9.{i}.0/24"))
            .collect();
        let err = SecurityOpts::from_wire(false, false, &[], &many, &[], None).unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
    }
}
