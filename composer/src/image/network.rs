//! `[network]` as busybox init runs it: `/usr/lib/pak/network`, a script
//! rendered from the Pakfile that `rc.sysinit` runs at every boot, and the
//! hook busybox's `udhcpc` calls with a lease.
//!
//! The script first loads the drivers of the devices present (what udev's
//! coldplug does on a full system), then configures the interfaces the
//! Pakfile names, by name or MAC, and starts DHCP on every other Ethernet
//! interface that belongs to a device. `udhcpc -b` waits a few seconds for
//! a lease and then goes on renewing in the background, so a network
//! without DHCP delays the boot by at most about ten seconds.
//!
//! DNS goes to `/run/resolv.conf`, which `/etc/resolv.conf` points to:
//! written at every boot, it is never a change to `/etc` that the next
//! generation would have to weigh against its own (see `boot`'s /etc
//! overlay rule: your copy wins).

use crate::image::sysconfig::{ConfigFile, ConfigKind, text};
use crate::spec::network::Network;

pub const SCRIPT: &str = "/usr/lib/pak/network";
pub const DHCP_HOOK: &str = "/usr/lib/pak/udhcpc.hook";
/// A machine's own `[network]`, from its provisioning seed
/// (`crate::system::provision`); the image's script runs it instead of
/// itself when it is there.
pub const PROVISIONED: &str = "/var/lib/pak/provision/network";

/// The files `[network]` puts into an image.
pub fn render(network: &Network) -> Vec<ConfigFile> {
    vec![
        text(SCRIPT, script(network), 0o755),
        text(DHCP_HOOK, DHCP_HOOK_TEXT.to_string(), 0o755),
        ConfigFile {
            path: "/etc/resolv.conf".into(),
            kind: ConfigKind::Symlink("../run/resolv.conf".into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
        },
    ]
}

/// Single-quoted for sh (the values were checked, but quoting costs
/// nothing and keeps the script safe whatever a later check allows).
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn script(n: &Network) -> String {
    let head = format!(
        "#!/bin/sh\n# Written by pak from the Pakfile's [network]; rc.sysinit runs it at boot.\n\n# A machine provisioned with its own [network] uses that instead.\n[ -x {PROVISIONED} ] && exec {PROVISIONED}\n"
    );
    body(n, &head)
}

/// The script for a machine's provisioned `[network]`: the same as the
/// image's, written at first boot to [`PROVISIONED`].
pub fn provisioned_script(n: &Network) -> String {
    body(
        n,
        "#!/bin/sh\n# Written by `pak system provision` from this machine's seed [network];\n# /usr/lib/pak/network runs it instead of the image's own.\n",
    )
}

fn body(n: &Network, head: &str) -> String {
    let mut s = String::from(head);
    s.push_str(SCRIPT_HEAD);
    let mut dns = Vec::new();
    let mut search = Vec::new();
    for (name, i) in &n.interfaces {
        s.push_str(&format!("\n# [network.interfaces.{name}]\n"));
        match &i.mac {
            Some(mac) => s.push_str(&format!(
                "i=$(by_mac {})\n[ -n \"$i\" ] || echo \"pak: network: no interface has MAC {mac} ([network.interfaces.{name}])\" >&2\n",
                q(&mac.to_ascii_lowercase())
            )),
            None => s.push_str(&format!("i={}\n", q(name))),
        }
        s.push_str("if [ -n \"$i\" ] && [ -e \"/sys/class/net/$i\" ]; then\n  configured=\"$configured $i\"\n  ip link set \"$i\" up\n");
        if i.address.is_empty() {
            s.push_str("  dhcp \"$i\"\n");
        }
        for a in &i.address {
            s.push_str(&format!("  ip addr add {} dev \"$i\"\n", q(a)));
        }
        if let Some(g) = &i.gateway {
            s.push_str(&format!("  ip route add default via {} dev \"$i\"\n", q(g)));
        }
        s.push_str(&format!(
            "elif [ -n \"$i\" ]; then\n  echo \"pak: network: there is no interface $i ([network.interfaces.{name}])\" >&2\nfi\n"
        ));
        dns.extend(i.dns.iter().cloned());
        search.extend(i.search.iter().cloned());
    }
    if !dns.is_empty() || !search.is_empty() {
        s.push_str("\n# DNS from the Pakfile; a DHCP lease does not replace it.\n{\n");
        if !search.is_empty() {
            s.push_str(&format!(
                "  echo {}\n",
                q(&format!("search {}", search.join(" ")))
            ));
        }
        for d in &dns {
            s.push_str(&format!("  echo {}\n", q(&format!("nameserver {d}"))));
        }
        s.push_str("} > /run/resolv.conf\ntouch /run/pak-static-dns\n");
    }
    s.push_str(SCRIPT_TAIL);
    s
}

const SCRIPT_HEAD: &str = r#"
# Interfaces the Pakfile names are configured as it says; every other
# Ethernet interface of a device asks for an address by DHCP.

# The drivers of the devices present, as udev's coldplug would load them.
find /sys/devices -name modalias 2>/dev/null | xargs cat 2>/dev/null | sort -u | xargs modprobe -q -a 2>/dev/null
# Let the new interfaces appear.
sleep 0.2 2>/dev/null || sleep 1
: > /run/resolv.conf

by_mac() {
    for d in /sys/class/net/*; do
        [ "$(cat "$d/address" 2>/dev/null)" = "$1" ] && { echo "${d##*/}"; return; }
    done
}

dhcp() {
    udhcpc -i "$1" -s /usr/lib/pak/udhcpc.hook -b -t 5 -T 2 -p "/run/udhcpc.$1.pid" >/dev/null 2>&1
}

configured=""
"#;

const SCRIPT_TAIL: &str = r#"
# DHCP on every other Ethernet interface that belongs to a device.
for d in /sys/class/net/*; do
    i=${d##*/}
    [ -e "$d/device" ] || continue
    [ "$(cat "$d/type" 2>/dev/null)" = 1 ] || continue
    case " $configured " in *" $i "*) continue ;; esac
    ip link set "$i" up
    dhcp "$i"
done
"#;

/// busybox udhcpc runs this with `deconfig`, `bound`, `renew`, `leasefail`
/// or `nak`, and the lease in its environment (`ip`, `mask` as a prefix
/// length, `router`, `dns`, `domain`).
const DHCP_HOOK_TEXT: &str = r#"#!/bin/sh
# Written by pak: what busybox's udhcpc does with a lease.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
        ip route del default dev "$interface" 2>/dev/null
        for r in $router; do
            ip route add default via "$r" dev "$interface" && break
        done
    fi
    if [ ! -e /run/pak-static-dns ] && [ -n "$dns" ]; then
        {
            [ -n "$domain" ] && echo "search $domain"
            for s in $dns; do echo "nameserver $s"; done
        } > /run/resolv.conf
    fi
    ;;
esac
exit 0
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn text(files: &[ConfigFile], path: &str) -> String {
        match &files.iter().find(|f| f.path == path).unwrap().kind {
            ConfigKind::File(b) => String::from_utf8(b.clone()).unwrap(),
            ConfigKind::Symlink(t) => t.clone(),
        }
    }

    #[test]
    fn dhcp_everywhere_by_default() {
        let files = render(&Network::default());
        let s = text(&files, SCRIPT);
        assert!(
            s.contains("dhcp \"$i\"") && !s.contains("ip addr add '"),
            "{s}"
        );
        assert_eq!(text(&files, "/etc/resolv.conf"), "../run/resolv.conf");
    }

    #[test]
    fn static_interfaces_and_dns_as_written() {
        let n: Network = toml::from_str(
            "[interfaces.eth0]\naddress = [\"192.0.2.10/24\"]\ngateway = \"192.0.2.1\"\ndns = [\"192.0.2.53\"]\nsearch = [\"example.com\"]\n[interfaces.uplink]\nmac = \"52:54:00:AB:CD:EF\"\n",
        )
        .unwrap();
        let s = script(&n);
        for want in [
            "i='eth0'",
            "ip addr add '192.0.2.10/24' dev \"$i\"",
            "ip route add default via '192.0.2.1' dev \"$i\"",
            "i=$(by_mac '52:54:00:ab:cd:ef')",
            "echo 'search example.com'",
            "echo 'nameserver 192.0.2.53'",
            "touch /run/pak-static-dns",
        ] {
            assert!(s.contains(want), "{want} in:\n{s}");
        }
        // The interface matched by MAC, without addresses, uses DHCP.
        let uplink = &s[s.find("[network.interfaces.uplink]").unwrap()..];
        assert!(uplink.contains("dhcp \"$i\""), "{uplink}");
    }

    #[test]
    fn the_image_runs_a_provisioned_network_instead_and_that_one_does_not_loop() {
        let n = Network::default();
        let image = script(&n);
        assert!(
            image.contains(
                "[ -x /var/lib/pak/provision/network ] && exec /var/lib/pak/provision/network"
            ),
            "{image}"
        );
        let own = provisioned_script(&n);
        assert!(!own.contains("exec "), "{own}");
        assert!(
            own.starts_with("#!/bin/sh\n") && own.contains("dhcp \"$i\""),
            "{own}"
        );
    }

    #[test]
    fn the_scripts_are_valid_sh() {
        let n: Network = toml::from_str(
            "[interfaces.eth0]\naddress = [\"192.0.2.10/24\"]\ngateway = \"192.0.2.1\"\ndns = [\"192.0.2.53\"]\n",
        )
        .unwrap();
        for (name, body) in [
            ("network", script(&n)),
            ("provisioned", provisioned_script(&n)),
            ("hook", DHCP_HOOK_TEXT.to_string()),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &body])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
