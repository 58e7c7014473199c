//! `[network]`: how an image's machine comes up on the network.
//!
//! Absent or empty, every Ethernet interface asks for an address by DHCP.
//! `[network.interfaces.NAME]` configures one interface, by its name or by
//! its MAC address: static addresses (IPv4 or IPv6, with their prefix), a
//! gateway, DNS servers and search domains; an interface listed without
//! addresses still uses DHCP. Everything is checked when the Pakfile is
//! read, so a typo fails the build with the key that holds it, not the
//! machine at boot.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Interfaces configured by hand; every other Ethernet one uses DHCP.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub interfaces: BTreeMap<String, Interface>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Match the interface by this MAC address instead of by its name
    /// (names can change with the hardware; a MAC follows the card).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Static addresses with their prefix (`192.0.2.10/24`,
    /// `2001:db8::10/64`); none: DHCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub address: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// DNS search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

impl Network {
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
    }

    /// Checks every field; errors name the key, the value and the form
    /// expected.
    pub fn validate(&self) -> Result<()> {
        for (name, i) in &self.interfaces {
            let at = format!("[network.interfaces.{name}]");
            if !valid_ifname(name) {
                bail!(
                    "{at}: {name:?} is not an interface name (1 to 15 letters, digits, `-`, `_` or `.`, like eth0 or enp1s0)"
                );
            }
            if let Some(mac) = &i.mac
                && !valid_mac(mac)
            {
                bail!(
                    "{at} mac = {mac:?}: not a MAC address (six hex pairs, like 52:54:00:12:34:56)"
                );
            }
            for a in &i.address {
                cidr(a).with_context(|| format!("{at} address"))?;
            }
            if let Some(g) = &i.gateway {
                let gw: IpAddr = g.parse().with_context(|| {
                    format!("{at} gateway = {g:?}: not an IP address (like 192.0.2.1)")
                })?;
                if i.address.is_empty() {
                    bail!(
                        "{at} has a gateway but no address: a gateway goes with static addresses (without them the interface uses DHCP, which gives its own)"
                    );
                }
                if !i
                    .address
                    .iter()
                    .any(|a| cidr(a).is_ok_and(|(ip, _)| ip.is_ipv4() == gw.is_ipv4()))
                {
                    bail!(
                        "{at} gateway = {g:?}: no address of the same IP version on this interface"
                    );
                }
            }
            for d in &i.dns {
                d.parse::<IpAddr>().with_context(|| {
                    format!("{at} dns = {d:?}: not an IP address (like 192.0.2.53)")
                })?;
            }
            for s in &i.search {
                if s.is_empty()
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    bail!("{at} search = {s:?}: not a domain name (like example.com)");
                }
            }
        }
        let mut macs = std::collections::BTreeSet::new();
        for (name, i) in &self.interfaces {
            if let Some(mac) = &i.mac
                && !macs.insert(mac.to_ascii_lowercase())
            {
                bail!(
                    "[network.interfaces.{name}] mac = {mac:?}: another interface has the same MAC"
                );
            }
        }
        Ok(())
    }
}

/// `ADDRESS/PREFIX`, the prefix within the address's size.
pub fn cidr(s: &str) -> Result<(IpAddr, u8)> {
    let form = || format!("{s:?} is not ADDRESS/PREFIX (like 192.0.2.10/24 or 2001:db8::10/64)");
    let (ip, prefix) = s.split_once('/').with_context(form)?;
    let ip: IpAddr = ip.parse().ok().with_context(form)?;
    let prefix: u8 = prefix.parse().ok().with_context(form)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        bail!("{s:?}: a prefix of /{prefix} is longer than the address (at most /{max})");
    }
    Ok((ip, prefix))
}

fn valid_ifname(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s != "."
        && s != ".."
}

fn valid_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(toml_text: &str) -> Result<Network> {
        let n: Network = toml::from_str(toml_text)?;
        n.validate()?;
        Ok(n)
    }

    #[test]
    fn good_configurations_pass() {
        net("").unwrap();
        net("[interfaces.eth0]\naddress = [\"192.0.2.10/24\", \"2001:db8::10/64\"]\ngateway = \"192.0.2.1\"\ndns = [\"192.0.2.53\"]\nsearch = [\"example.com\"]\n").unwrap();
        net("[interfaces.uplink]\nmac = \"52:54:00:12:34:56\"\n").unwrap();
    }

    #[test]
    fn bad_ones_name_the_key_and_the_form() {
        for (text, want) in [
            (
                "[interfaces.eth0]\naddress = [\"192.0.2.10\"]\n",
                "ADDRESS/PREFIX",
            ),
            (
                "[interfaces.eth0]\naddress = [\"192.0.2.10/33\"]\n",
                "at most /32",
            ),
            (
                "[interfaces.eth0]\naddress = [\"300.0.2.10/24\"]\n",
                "ADDRESS/PREFIX",
            ),
            (
                "[interfaces.eth0]\naddress = [\"192.0.2.10/24\"]\ngateway = \"192.0.2\"\n",
                "gateway",
            ),
            ("[interfaces.eth0]\ngateway = \"192.0.2.1\"\n", "no address"),
            (
                "[interfaces.eth0]\naddress = [\"2001:db8::1/64\"]\ngateway = \"192.0.2.1\"\n",
                "same IP version",
            ),
            ("[interfaces.eth0]\ndns = [\"resolver\"]\n", "dns"),
            ("[interfaces.eth0]\nmac = \"52:54:00\"\n", "MAC"),
            ("[interfaces.\"eth0/x\"]\n", "interface name"),
            (
                "[interfaces.a]\nmac = \"52:54:00:12:34:56\"\n[interfaces.b]\nmac = \"52:54:00:12:34:56\"\n",
                "same MAC",
            ),
            ("[interfaces.eth0]\nsearch = [\"a b\"]\n", "domain"),
        ] {
            let err = format!("{:#}", net(text).unwrap_err());
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = format!("{:#}", net("[interfaces.eth0]\nadress = []\n").unwrap_err());
        assert!(err.contains("adress"), "{err}");
    }
}
