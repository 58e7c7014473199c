//! `[system] init = "systemd"`: the Pakfile rendered for Debian's systemd.
//!
//! The same sections busybox images get as `inittab` lines and scripts
//! become units and systemd's own configuration files:
//!
//! - `[services.X] exec` → `/etc/systemd/system/X.service`, restarted
//!   always, enabled in `multi-user.target`;
//! - `[services.X] enable = true` → the unit a package ships, enabled by the
//!   symlinks `systemctl enable` would make from its `[Install]` section
//!   (never by running systemctl: the links are a function of the unit
//!   files, so the image stays reproducible);
//! - health checks → `pak-health.service`, which `boot-complete.target`
//!   requires, and `pak-mark-good.service` after that target marks the
//!   boot good and stops the trial watchdog `/init` armed;
//! - `[network]` → systemd-networkd `.network` files, DNS through
//!   systemd-resolved when the image has it;
//! - journald keeps its journal on `/var/log/journal` (the data partition);
//! - `/etc/machine-id` ships empty: systemd makes the machine's own id at
//!   its first boot and writes it into `/etc`, whose changes live on the
//!   data partition. Empty, not absent: an absent file is systemd's "first
//!   boot", which would run `systemd-firstboot`'s prompts on the console
//!   and `preset-all`, enabling units the Pakfile never named.
//!
//! - presets: what `systemctl preset-all` would enable, as links: the
//!   packages' units that a `.preset` file (Debian's `90-systemd.preset`,
//!   any package's, the Pakfile's [files] in /etc/systemd/system-preset)
//!   enables. pak's own presets come with it: no getty on the console
//!   (pak gives it a root shell), and `disable *` last, so a unit nobody
//!   names stays off (systemd's default is to enable it, and Debian enables
//!   every unit a package ships). The Pakfile's `[services]` are enabled
//!   whatever a preset says; a preset file in [files] named before
//!   Debian's (`10-local.preset`) turns off what Debian's enables.
//! - `var.mount` loses its default dependencies, so /var (which holds the
//!   /etc overlay's changes and the journal) is unmounted by
//!   systemd-shutdown's last pass, not by a stop that fails while /etc and
//!   journald still use it.
//!
//! Packages' `tmpfiles.d` are applied by systemd-tmpfiles at every boot,
//! and the Pakfile's home directories with them
//! (`/usr/lib/tmpfiles.d/pak-users.conf`). The accounts are in
//! `/etc/passwd` and also in `sysusers.d` (see
//! [`crate::image::accounts::Table::sysusers`]), for a machine whose /etc
//! keeps a passwd of its own.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};

use crate::image::assemble::{NodeKind, RootTree};
use crate::image::sysconfig::{ConfigFile, ConfigKind, text};
use crate::spec::network::Network;
use crate::spec::pakfile::{Pakfile, Service};

/// Where the image's own units and enablement links go (the admin's
/// directory: the Pakfile is the image's administrator).
pub const ETC_UNITS: &str = "etc/systemd/system";
/// Where packages' units are (Debian's `/lib/systemd/system`, merged).
pub const LIB_UNITS: &str = "usr/lib/systemd/system";
/// The health checks `boot-complete.target` requires.
pub const HEALTH_UNIT: &str = "pak-health.service";
pub const HEALTH_SCRIPT: &str = "/usr/lib/pak/health";
/// Marks the boot good once `boot-complete.target` is reached.
pub const MARK_GOOD_UNIT: &str = "pak-mark-good.service";
pub const MARK_GOOD_SCRIPT: &str = "/usr/lib/pak/mark-good";
/// Seconds the services get to pass their health checks after they started.
const HEALTH_SECONDS: u32 = 60;

/// The unit name a `[services]` key means: `nginx` → `nginx.service`; a
/// key with a unit suffix names that unit (`ssh.socket`).
pub fn unit_name(service: &str) -> String {
    const SUFFIXES: &[&str] = &[
        ".service", ".socket", ".timer", ".path", ".target", ".mount", ".swap",
    ];
    if SUFFIXES.iter().any(|s| service.ends_with(s)) {
        service.to_string()
    } else {
        format!("{service}.service")
    }
}

/// Checks a generation's root for what `[system] init` needs, before
/// anything is rendered: systemd must be there and be `/sbin/init`, and a
/// busybox image must not have another init in its place.
pub fn check_init(pakfile: &Pakfile, tree: &RootTree, locked: &[&str]) -> Result<()> {
    let init = tree.resolve("sbin/init").map(|(p, _)| p);
    if pakfile.system.init.is_busybox() {
        if let Some(p) = &init
            && !p.ends_with("busybox")
        {
            bail!(
                "/sbin/init is /{p}, not busybox, but [system] init is busybox: set [system] init = \"systemd\" (with the systemd profile), or remove the package that ships /sbin/init (systemd-sysv)"
            );
        }
        for (name, svc) in &pakfile.services {
            if svc.exec.is_none() {
                bail!(
                    "[services.{name}] (from a profile) enables a package's unit, but busybox init has no units: set [system] init = \"systemd\", or give the command to run as `exec` in your Pakfile's [services.{name}]"
                );
            }
        }
        return Ok(());
    }
    if !locked.contains(&"systemd") {
        bail!(
            "[system] init = \"systemd\", but the lock has no systemd package: add the systemd profile (profiles = [\"base\", \"systemd\"]) or systemd and systemd-sysv to [packages], then `pak lock`"
        );
    }
    match init.as_deref() {
        Some("usr/lib/systemd/systemd") => Ok(()),
        other => bail!(
            "[system] init = \"systemd\", but /sbin/init is {}: add systemd-sysv = \"*\" to [packages] (the systemd profile has it); it makes /sbin/init, reboot and poweroff systemd's",
            other.map_or("missing".to_string(), |p| format!("/{p}"))
        ),
    }
}

/// Everything `init = "systemd"` adds to the image (see the module's
/// documentation), sorted by path.
pub fn render(pakfile: &Pakfile, tree: &RootTree) -> Result<Vec<ConfigFile>> {
    let mut out: BTreeMap<String, ConfigFile> = BTreeMap::new();
    let mut units = Units::new(tree);

    // Units pak writes itself come first, so enabling can find them.
    for (name, svc) in &pakfile.services {
        if svc.enable.is_some() {
            continue;
        }
        let exec = svc.exec.as_deref().expect("validated: exec or enable");
        units.own(&unit_name(name), exec_unit(name, svc, exec));
    }
    // `enable = false`: off whatever a preset says, and an error if pak
    // itself would need it on.
    for (name, _) in pakfile.services.iter().filter(|(_, s)| s.disabled()) {
        let unit = unit_name(name);
        if units.find(&unit).is_none() && units.by_alias(&unit).is_none() {
            bail!(
                "[services.{name}] says `enable = false`, but no package ships the unit {unit} (looked in /usr/lib/systemd/system and /etc/systemd/system): check the name, or remove the entry"
            );
        }
        units.kept_off.insert(unit);
    }
    let running = pakfile.services.iter().filter(|(_, s)| !s.disabled());
    let console = console_tty(&pakfile.boot.cmdline);
    units.own("pak-console.service", console_unit(&console));
    units.own("pak-first-boot.service", FIRST_BOOT_UNIT.to_string());
    units.own("pak-coldplug.service", COLDPLUG_UNIT.to_string());
    let required: Vec<String> = running.clone().map(|(n, _)| unit_name(n)).collect();
    units.own(HEALTH_UNIT, health_unit(&required));
    units.own(MARK_GOOD_UNIT, MARK_GOOD_UNIT_TEXT.to_string());

    // The console gets pak's root shell, as busybox images have it; the
    // getty systemd's generator would start there too is masked, or the
    // two would fight over the line.
    units.links.insert(
        format!("{ETC_UNITS}/serial-getty@{console}.service"),
        "/dev/null".into(),
    );

    for (name, _) in running {
        let unit = unit_name(name);
        units
            .enable(&unit)
            .with_context(|| format!("[services.{name}]"))?;
    }
    for unit in [
        "pak-console.service",
        "pak-first-boot.service",
        "pak-coldplug.service",
        MARK_GOOD_UNIT,
    ] {
        units.enable(unit)?;
    }
    units.links.insert(
        format!("{ETC_UNITS}/boot-complete.target.requires/{HEALTH_UNIT}"),
        format!("/{ETC_UNITS}/{HEALTH_UNIT}"),
    );
    units.enable("systemd-networkd.service").context(
        "[network] is systemd-networkd's under init = \"systemd\" (it is in the systemd package)",
    )?;
    let resolved = units.find("systemd-resolved.service").is_some();
    if resolved {
        units.enable("systemd-resolved.service")?;
    }
    // What `systemctl preset-all` would enable, after everything the
    // Pakfile names: its services are enabled whatever a preset says.
    let presets = Presets::read(pakfile, tree)?;
    for (unit, instances) in presets.enabled(&units) {
        if units.kept_off.contains(&unit) {
            continue;
        }
        if instances.is_empty() {
            units.enable(&unit)
        } else {
            instances
                .iter()
                .try_for_each(|i| units.enable(&unit.replacen("@.", &format!("@{i}."), 1)))
        }
        .with_context(|| format!("{unit}, enabled by a preset"))?;
    }

    for (path, body) in &units.written {
        out.insert(path.clone(), text(&format!("/{path}"), body.clone(), 0o644));
    }
    for (link, target) in &units.links {
        out.insert(link.clone(), symlink(&format!("/{link}"), target));
    }
    for f in network_files(&pakfile.network, resolved) {
        out.insert(f.path.trim_start_matches('/').to_string(), f);
    }
    for f in [
        text(
            HEALTH_SCRIPT,
            crate::image::sysconfig::health_script(pakfile, HEALTH_SECONDS),
            0o755,
        ),
        text(MARK_GOOD_SCRIPT, MARK_GOOD.to_string(), 0o755),
        // Empty, not absent: see the module's documentation.
        text("/etc/machine-id", String::new(), 0o444),
        text(
            "/etc/systemd/journald.conf.d/pak.conf",
            "# Written by pak: the journal lives on the data partition and survives reboots.\n[Journal]\nStorage=persistent\n".into(),
            0o644,
        ),
        text("/etc/fstab", FSTAB.to_string(), 0o644),
        text(PRESET_PAK, PRESET_PAK_TEXT.to_string(), 0o644),
        text(PRESET_DEFAULT, PRESET_DEFAULT_TEXT.to_string(), 0o644),
        text(VAR_TO_THE_END, VAR_TO_THE_END_TEXT.to_string(), 0o644),
        text(SYSUSERS_EVERY_BOOT, SYSUSERS_EVERY_BOOT_TEXT.to_string(), 0o644),
    ] {
        out.insert(f.path.trim_start_matches('/').to_string(), f);
    }
    Ok(out.into_values().collect())
}

fn symlink(path: &str, target: &str) -> ConfigFile {
    ConfigFile {
        path: path.into(),
        kind: ConfigKind::Symlink(target.into()),
        mode: 0o777,
        uid: 0,
        gid: 0,
    }
}

/// The device of the last `console=` the kernel command line names
/// (`console=ttyS0,115200` → `ttyS0`), where the kernel and systemd print,
/// and where pak gives root a shell; `ttyS0` when there is none.
fn console_tty(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("console="))
        .map(|v| v.split(',').next().unwrap_or(v))
        .rfind(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or("ttyS0")
        .to_string()
}

/// Quoted for a unit's command line: one double-quoted word in which
/// systemd expands neither `$VARIABLES` nor `%` specifiers.
fn unit_quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            '$' => q.push_str("$$"),
            '%' => q.push_str("%%"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// A `[services]` command as a unit. It runs through `sh -c`, as busybox
/// init runs it, so the same `exec` means the same under either init.
fn exec_unit(name: &str, svc: &Service, exec: &str) -> String {
    let mut s = format!(
        "# Written by pak from the Pakfile's [services.{name}].\n[Unit]\nDescription={name} (from the Pakfile)\nAfter=network.target\n\n[Service]\nExecStart=/bin/sh -c {}\nRestart=always\nRestartSec=1\n",
        unit_quote(&format!("exec {exec}"))
    );
    if let Some(user) = &svc.user {
        s.push_str(&format!("User={user}\n"));
    }
    s.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    s
}

/// bash, not busybox sh: Debian's static busybox runs its own applets
/// before anything on PATH, and its `reboot` and `poweroff` signal PID 1 the
/// way busybox init understands (SIGTERM is "re-execute" to systemd).
fn console_unit(tty: &str) -> String {
    format!(
        r#"# Written by pak: a root shell on the console, as busybox images give one.
[Unit]
Description=Root shell on /dev/{tty}
After=systemd-user-sessions.service

[Service]
ExecStart=-/bin/bash -l
Type=idle
Restart=always
RestartSec=0
StandardInput=tty
StandardOutput=tty
StandardError=tty
TTYPath=/dev/{tty}
TTYReset=yes
TTYVHangup=yes
KillMode=process
IgnoreSIGPIPE=no
SendSIGHUP=yes
Environment=HOME=/root TERM=vt220

[Install]
WantedBy=multi-user.target
"#
    )
}

/// Per-machine provisioning and identity, before the services that need
/// them (sshd's host keys): the same steps busybox's rc.sysinit runs.
const FIRST_BOOT_UNIT: &str = r#"# Written by pak: this machine's provisioning (seed volume, credentials)
# and its first-boot steps (SSH host keys, ...), before any service.
[Unit]
Description=pak: provisioning and first-boot steps
DefaultDependencies=no
After=local-fs.target systemd-tmpfiles-setup.service systemd-machine-id-commit.service
Before=sysinit.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c "if [ -x /usr/lib/pak/provision ]; then /usr/lib/pak/provision; hostname -F /etc/hostname; fi; exec /usr/lib/pak/first-boot"
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
"#;

/// udevd's module loading (libkmod's `kmod_load_resources`) needs the
/// binary indexes (`modules.alias.bin`, ...) that pak's depmod does not
/// write, so it loads nothing and no network interface would appear. The
/// kmod command reads the text `modules.dep` and `modules.alias`; this does
/// with it what busybox images' network script does.
const COLDPLUG_UNIT: &str = r#"# Written by pak: the drivers of the devices present, as udev's coldplug
# would load them (udevd's own loading needs modules.*.bin indexes).
[Unit]
Description=pak: load the drivers of the devices present
DefaultDependencies=no
After=systemd-udevd.service systemd-udev-trigger.service
Before=sysinit.target network-pre.target systemd-networkd.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c "find /sys/devices -name modalias -exec cat {} + 2>/dev/null | sort -u | xargs modprobe -q -a 2>/dev/null; exit 0"

[Install]
WantedBy=sysinit.target
"#;

/// The checks `boot-complete.target` requires: every Pakfile service
/// started (a unit that fails to start fails this one) and healthy.
fn health_unit(required: &[String]) -> String {
    let list = required.join(" ");
    let deps = if list.is_empty() {
        String::new()
    } else {
        format!("Requires={list}\nAfter={list}\n")
    };
    format!(
        r#"# Written by pak from the Pakfile's [services]: boot-complete.target
# requires this, so a boot whose services do not come up healthy is never
# marked good, and the boot loader falls back once its tries are used up.
[Unit]
Description=pak: the Pakfile's services are up and healthy
{deps}Before=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={HEALTH_SCRIPT}
TimeoutStartSec={}
StandardOutput=journal+console
"#,
        HEALTH_SECONDS + 30
    )
}

const MARK_GOOD_UNIT_TEXT: &str = r#"# Written by pak: once boot-complete.target is reached (every check it
# requires passed), mark this boot good and stop the trial watchdog.
[Unit]
Description=pak: mark this boot good
Requires=boot-complete.target
After=boot-complete.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/pak/mark-good
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"#;

/// What busybox images' boot-complete does after its checks: the loader
/// entry loses its tries counter, the watchdog `/init` armed for the boot
/// on trial gets its magic close.
const MARK_GOOD: &str = r#"#!/bin/sh
# Written by pak. Run by pak-mark-good.service after boot-complete.target.
pak system mark-good || exit 1
if [ -c /dev/watchdog ]; then
    printf V > /dev/watchdog
fi
echo "pak: boot complete"
"#;

/// /init mounts /, /var, /etc and /home; systemd mounts /run, /dev/shm
/// and the like itself. The root is read-only, so /tmp needs its own.
const FSTAB: &str = "# Written by pak. /, /etc, /var and /home are mounted by pak's /init (see\n# /proc/mounts); systemd mounts /run and /dev/shm itself.\ntmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0\n";

/// Where networkd reads the administrator's `.network` files: the
/// image's, and a provisioned machine's own (on the /etc overlay, so they
/// stay after the one boot that provisioned it).
pub const NETWORK_DIR: &str = "/etc/systemd/network";
/// File name prefixes: networkd takes the first file in name order that
/// matches a link, so a machine's seed (40, its DHCP catch-all 49) comes
/// before the image's own (50, catch-all 90), which it replaces.
const IMAGE_NETWORK: (&str, &str) = ("50-pak-", "90-pak-dhcp");
const SEED_NETWORK: (&str, &str) = ("40-pak-seed-", "49-pak-seed-dhcp");
/// What the seed's files start with, to find them again.
pub const SEED_NETWORK_PREFIX: &str = "40-pak-seed-";
pub const SEED_NETWORK_DHCP: &str = "49-pak-seed-dhcp.network";

/// `[network]` as systemd-networkd reads it (file name, text): one
/// `.network` file per named interface, and DHCP on every other Ethernet
/// link. `from` says where it came from, in each file's first line.
fn networkd_units(n: &Network, (each, dhcp): (&str, &str), from: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, i) in &n.interfaces {
        let mut s = format!("# Written by pak from {from} [network.interfaces.{name}].\n[Match]\n");
        match &i.mac {
            Some(mac) => s.push_str(&format!("MACAddress={}\n", mac.to_ascii_lowercase())),
            None => s.push_str(&format!("Name={name}\n")),
        }
        s.push_str("\n[Network]\n");
        if i.address.is_empty() {
            s.push_str("DHCP=ipv4\n");
        }
        for a in &i.address {
            s.push_str(&format!("Address={a}\n"));
        }
        if let Some(g) = &i.gateway {
            s.push_str(&format!("Gateway={g}\n"));
        }
        for d in &i.dns {
            s.push_str(&format!("DNS={d}\n"));
        }
        if !i.search.is_empty() {
            s.push_str(&format!("Domains={}\n", i.search.join(" ")));
        }
        out.push((format!("{each}{name}.network"), s));
    }
    out.push((
        format!("{dhcp}.network"),
        format!("# Written by pak: DHCP on every Ethernet interface {from} [network] does not name.\n[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\n"),
    ));
    out
}

/// A provisioned machine's own `[network]` (its seed's), as networkd files
/// for [`NETWORK_DIR`] (file name, text): they come before the image's, so
/// they replace it.
pub fn seed_network_files(n: &Network) -> Vec<(String, String)> {
    networkd_units(n, SEED_NETWORK, "this machine's seed")
}

/// The image's `[network]` as systemd-networkd reads it, with
/// `/etc/resolv.conf`.
pub fn network_files(n: &Network, resolved: bool) -> Vec<ConfigFile> {
    let mut out: Vec<ConfigFile> = networkd_units(n, IMAGE_NETWORK, "the Pakfile's")
        .into_iter()
        .map(|(name, body)| text(&format!("{NETWORK_DIR}/{name}"), body, 0o644))
        .collect();
    // networkd hands DNS to resolved; without it, the Pakfile's DNS (or
    // none) is all there is, so resolv.conf stays where busybox images
    // keep it (nothing writes it under systemd then).
    let resolv = if resolved {
        "../run/systemd/resolve/stub-resolv.conf"
    } else {
        "../run/resolv.conf"
    };
    out.push(symlink("/etc/resolv.conf", resolv));
    out
}

/// pak's own presets, before Debian's `90-systemd.preset` (the first rule
/// that matches a unit decides): the console has pak's root shell, and
/// the gettys Debian's preset enables need util-linux's agetty, which an
/// image has only when it asks for it (and then enables a getty by name).
pub const PRESET_PAK: &str = "/usr/lib/systemd/system-preset/80-pak.preset";
const PRESET_PAK_TEXT: &str = r#"# Written by pak. The console is pak-console.service's root shell; enable
# a getty by name in the Pakfile ([services."getty@tty1"] enable = true).
disable getty@.service
disable serial-getty@.service
"#;
/// What no preset names stays disabled (systemd's own default is
/// "enable"): an image runs what its Pakfile and its presets name, not
/// every unit a dependency happened to ship.
pub const PRESET_DEFAULT: &str = "/usr/lib/systemd/system-preset/99-pak-default.preset";
const PRESET_DEFAULT_TEXT: &str =
    "# Written by pak: units no preset and no [services] entry names stay disabled.\ndisable *\n";

/// Where presets are read, most precedence first: a file of the same name
/// in /etc replaces the packages' one.
const PRESET_DIRS: [&str; 2] = [
    "etc/systemd/system-preset/",
    "usr/lib/systemd/system-preset/",
];

/// /var holds /etc's changes (the upper directory of the /etc overlay,
/// which systemd never unmounts: /etc is among the mounts it leaves to
/// the end) and the persistent journal, so systemd's own stop of var.mount
/// fails at every shutdown ("Failed unmounting /var"). Without its default
/// dependencies it is not stopped with umount.target: it stays until
/// systemd-shutdown's last pass, which unmounts it (or remounts it
/// read-only) once every process has ended, as it does /etc and /.
pub const VAR_TO_THE_END: &str = "/etc/systemd/system/var.mount.d/pak.conf";
const VAR_TO_THE_END_TEXT: &str = r#"# Written by pak: /var holds the changes of /etc (an overlay systemd leaves
# mounted to the end) and the journal; it is unmounted by systemd-shutdown's
# last pass, after every process has ended, not with umount.target.
[Unit]
DefaultDependencies=no
"#;

/// systemd-sysusers runs only when /usr is newer than /etc/.updated; a
/// generation's /usr carries the same reproducible time stamp as the one
/// before, so the accounts a new generation brings would never reach a
/// machine whose /etc keeps a passwd of its own. It runs at every boot
/// instead (adding nothing when nothing is missing). An empty condition
/// resets the unit's conditions.
pub const SYSUSERS_EVERY_BOOT: &str = "/etc/systemd/system/systemd-sysusers.service.d/pak.conf";
const SYSUSERS_EVERY_BOOT_TEXT: &str = r#"# Written by pak: at every boot, since a new generation's /usr is not newer
# than the last one's (reproducible time stamps), and its accounts must
# still reach a /etc/passwd this machine keeps.
[Unit]
ConditionNeedsUpdate=
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PresetAction {
    Enable,
    Disable,
    Ignore,
}

/// One line of a `.preset` file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PresetRule {
    action: PresetAction,
    pattern: glob::Pattern,
    /// `enable foo@.service a b`: the instances of a template to enable.
    instances: Vec<String>,
}

/// The image's presets (systemd.preset(5)): every `.preset` file in the
/// packages' and the Pakfile's files, pak's own included, in name order.
#[derive(Debug, Default)]
struct Presets {
    rules: Vec<PresetRule>,
}

impl Presets {
    fn read(pakfile: &Pakfile, tree: &RootTree) -> Result<Presets> {
        // file name -> text; the first directory to have a name wins.
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        files.insert(name_of(PRESET_PAK), PRESET_PAK_TEXT.to_string());
        files.insert(name_of(PRESET_DEFAULT), PRESET_DEFAULT_TEXT.to_string());
        for dir in PRESET_DIRS.iter().rev() {
            for (path, node) in tree
                .nodes
                .range(dir.to_string()..)
                .take_while(|(p, _)| p.starts_with(dir))
            {
                let name = &path[dir.len()..];
                if name.contains('/') || !name.ends_with(".preset") {
                    continue;
                }
                if matches!(node.kind, NodeKind::File(_)) {
                    let bytes = crate::image::read_from_tree(tree, path)?;
                    files.insert(name.to_string(), String::from_utf8_lossy(&bytes).into());
                }
            }
            for (path, spec) in &pakfile.files {
                if let Some(name) = path.strip_prefix('/').and_then(|p| p.strip_prefix(dir))
                    && !name.contains('/')
                    && name.ends_with(".preset")
                    && let ConfigKind::File(bytes) =
                        crate::image::sysconfig::user_file(pakfile, path, spec)?.kind
                {
                    files.insert(name.to_string(), String::from_utf8_lossy(&bytes).into());
                }
            }
        }
        let mut rules = Vec::new();
        for text in files.values() {
            rules.extend(text.lines().filter_map(preset_rule));
        }
        Ok(Presets { rules })
    }

    /// The first rule naming `unit` (a unit file's name), as systemd
    /// matches it: fnmatch(3) patterns, first match wins.
    fn rule(&self, unit: &str) -> Option<&PresetRule> {
        self.rules.iter().find(|r| r.pattern.matches(unit))
    }

    /// The packages' units the presets enable (unit, instances of a
    /// template; none: its DefaultInstance), in name order: those with an
    /// `[Install]` section, as `systemctl preset-all` considers them.
    fn enabled(&self, units: &Units) -> Vec<(String, Vec<String>)> {
        let prefix = format!("{LIB_UNITS}/");
        let mut out = Vec::new();
        for (path, node) in units
            .tree
            .nodes
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
        {
            let unit = &path[prefix.len()..];
            if unit.contains('/') || !matches!(node.kind, NodeKind::File(_)) {
                continue;
            }
            let Some(rule) = self.rule(unit) else {
                continue;
            };
            if rule.action != PresetAction::Enable {
                continue;
            }
            let Some((_, body)) = units.find(unit) else {
                continue;
            };
            let inst = install(&body);
            let template = unit.contains("@.");
            if inst.is_empty()
                || (template && rule.instances.is_empty() && inst.default_instance.is_none())
            {
                continue;
            }
            out.push((unit.to_string(), rule.instances.clone()));
        }
        out
    }
}

fn name_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// A preset line; `None` for comments, blank lines and lines systemd
/// would also skip (an unknown verb, a bad pattern).
fn preset_rule(line: &str) -> Option<PresetRule> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
        return None;
    }
    let mut words = line.split_whitespace();
    let action = match words.next()? {
        "enable" => PresetAction::Enable,
        "disable" => PresetAction::Disable,
        "ignore" => PresetAction::Ignore,
        _ => return None,
    };
    let pattern = glob::Pattern::new(words.next()?).ok()?;
    let instances = if action == PresetAction::Enable {
        words.map(str::to_string).collect()
    } else {
        Vec::new()
    };
    Some(PresetRule {
        action,
        pattern,
        instances,
    })
}

/// The units of the image and the links enabling makes.
struct Units<'a> {
    tree: &'a RootTree,
    /// Units pak writes: canonical path → text.
    written: BTreeMap<String, String>,
    /// Canonical link path → target.
    links: BTreeMap<String, String>,
    enabled: BTreeSet<String>,
    /// The Pakfile's `enable = false` units.
    kept_off: BTreeSet<String>,
}

impl<'a> Units<'a> {
    fn new(tree: &'a RootTree) -> Self {
        Units {
            tree,
            written: BTreeMap::new(),
            links: BTreeMap::new(),
            enabled: BTreeSet::new(),
            kept_off: BTreeSet::new(),
        }
    }

    fn own(&mut self, unit: &str, body: String) {
        self.written.insert(format!("{ETC_UNITS}/{unit}"), body);
    }

    /// The file a unit name loads from, as systemd looks: /etc before the
    /// packages' directory; an instance (`getty@tty1.service`) from its
    /// template. (canonical path, text)
    fn find(&self, unit: &str) -> Option<(String, String)> {
        let file = match unit.split_once('@') {
            Some((prefix, rest)) if !rest.starts_with('.') => {
                let suffix = rest.rsplit_once('.').map_or("", |(_, s)| s);
                format!("{prefix}@.{suffix}")
            }
            _ => unit.to_string(),
        };
        for dir in [ETC_UNITS, LIB_UNITS] {
            let path = format!("{dir}/{file}");
            if let Some(body) = self.written.get(&path) {
                return Some((path, body.clone()));
            }
            if let Some((_, node)) = self.tree.resolve(&path)
                && matches!(node.kind, NodeKind::File(_))
                && let Ok(bytes) = crate::image::read_from_tree(self.tree, &path)
            {
                return Some((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        None
    }

    /// The unit whose `[Install] Alias=` is `alias` (Debian's sshd.service
    /// is ssh.service's alias): what a name no file has may still mean.
    fn by_alias(&self, alias: &str) -> Option<String> {
        let prefix = format!("{LIB_UNITS}/");
        self.tree
            .nodes
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| !p[prefix.len()..].contains('/'))
            .filter_map(|(p, _)| {
                let unit = &p[prefix.len()..];
                let (_, body) = self.find(unit)?;
                install(&body)
                    .alias
                    .iter()
                    .any(|a| a == alias)
                    .then(|| unit.to_string())
            })
            .next()
    }

    /// The links `systemctl enable UNIT` makes, from its `[Install]`.
    fn enable(&mut self, unit: &str) -> Result<()> {
        if self.kept_off.contains(unit) {
            bail!(
                "{unit} is kept off by `[services.{}] enable = false`, but the image needs it on; remove that entry",
                unit.strip_suffix(".service").unwrap_or(unit)
            );
        }
        if !self.enabled.insert(unit.to_string()) {
            return Ok(());
        }
        let (path, body) = match self.find(unit) {
            Some(found) => found,
            None => match self.by_alias(unit) {
                Some(real) => return self.enable(&real),
                None => bail!(
                    "no package ships the unit {unit} (looked in /usr/lib/systemd/system and /etc/systemd/system, and for a unit whose Alias= it is): add the package that has it to [packages], or give the command to run as `exec`"
                ),
            },
        };
        let inst = install(&body);
        if inst.is_empty() {
            bail!(
                "{unit} cannot be enabled: /{path} has no [Install] section (WantedBy=, RequiredBy=, Alias= or Also=), so `systemctl enable` would do nothing either; it is started by whatever depends on it. Remove enable = true, or start it from a unit of your own"
            );
        }
        let template = unit.contains("@.");
        let instance = if template {
            match &inst.default_instance {
                Some(i) => Some(unit.replacen("@.", &format!("@{i}."), 1)),
                None => bail!(
                    "{unit} is a template without DefaultInstance=: name an instance, e.g. [services.\"{}\"]",
                    unit.replacen("@.", "@NAME.", 1)
                ),
            }
        } else {
            None
        };
        let linked = instance.as_deref().unwrap_or(unit);
        let target = format!("/{path}");
        for (kind, targets) in [("wants", &inst.wanted_by), ("requires", &inst.required_by)] {
            for t in targets {
                self.links
                    .insert(format!("{ETC_UNITS}/{t}.{kind}/{linked}"), target.clone());
            }
        }
        for alias in &inst.alias {
            // A link in /etc pointing at the same file in /etc is the file itself.
            if format!("{ETC_UNITS}/{alias}") != path {
                self.links
                    .insert(format!("{ETC_UNITS}/{alias}"), target.clone());
            }
        }
        for also in &inst.also {
            self.enable(also)
                .with_context(|| format!("{unit} has Also={also}"))?;
        }
        Ok(())
    }
}

/// A unit's `[Install]` section.
#[derive(Debug, Default, PartialEq, Eq)]
struct Install {
    wanted_by: Vec<String>,
    required_by: Vec<String>,
    alias: Vec<String>,
    also: Vec<String>,
    default_instance: Option<String>,
}

impl Install {
    fn is_empty(&self) -> bool {
        self.wanted_by.is_empty()
            && self.required_by.is_empty()
            && self.alias.is_empty()
            && self.also.is_empty()
    }
}

/// Reads `[Install]` as systemd does: comments, continued lines, lists
/// that accumulate, an empty assignment that resets its list.
fn install(unit: &str) -> Install {
    let mut out = Install::default();
    let mut section = String::new();
    let mut joined = String::new();
    let mut lines = Vec::new();
    for raw in unit.lines() {
        let line = raw.trim();
        if joined.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            continue;
        }
        joined.push_str(line);
        lines.push(std::mem::take(&mut joined));
    }
    for line in lines {
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].to_string();
            continue;
        }
        if section != "Install" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let words: Vec<String> = value.split_whitespace().map(str::to_string).collect();
        let list = match key.trim() {
            "WantedBy" => &mut out.wanted_by,
            "RequiredBy" => &mut out.required_by,
            "Alias" => &mut out.alias,
            "Also" => &mut out.also,
            "DefaultInstance" => {
                out.default_instance = words.into_iter().next();
                continue;
            }
            _ => continue,
        };
        if words.is_empty() {
            list.clear();
        }
        list.extend(words);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::assemble::data;

    fn tree(units: &[(&str, &str)]) -> RootTree {
        let mut t = RootTree::default();
        t.add_skeleton();
        for (name, body) in units {
            t.put(
                &format!("lib/systemd/system/{name}"),
                data(body.as_bytes().to_vec()),
                0o644,
                0,
                0,
            );
        }
        t
    }

    fn get<'a>(files: &'a [ConfigFile], path: &str) -> &'a ConfigKind {
        &files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| {
                panic!(
                    "{path} missing from {:#?}",
                    files.iter().map(|f| &f.path).collect::<Vec<_>>()
                )
            })
            .kind
    }

    fn body(files: &[ConfigFile], path: &str) -> String {
        match get(files, path) {
            ConfigKind::File(b) => String::from_utf8(b.clone()).unwrap(),
            ConfigKind::Symlink(t) => panic!("{path} is a link to {t}"),
        }
    }

    fn link(files: &[ConfigFile], path: &str) -> String {
        match get(files, path) {
            ConfigKind::Symlink(t) => t.clone(),
            ConfigKind::File(_) => panic!("{path} is a file"),
        }
    }

    const NETWORKD: (&str, &str) = (
        "systemd-networkd.service",
        "[Unit]\nDescription=Network\n[Install]\nWantedBy=multi-user.target\nAlso=systemd-networkd.socket\nAlias=dbus-org.freedesktop.network1.service\n",
    );
    const NETWORKD_SOCKET: (&str, &str) = (
        "systemd-networkd.socket",
        "[Install]\nWantedBy=sockets.target\n",
    );

    fn systemd_pakfile(more: &str) -> Pakfile {
        Pakfile::parse(&format!(
            "[system]\ninit = \"systemd\"\n[boot]\ncmdline = \"console=tty0 console=ttyS1,115200 quiet\"\n{more}"
        ))
        .unwrap()
    }

    #[test]
    fn install_sections_are_read_as_systemd_reads_them() {
        let i = install(
            "[Unit]\nWantedBy=not-here.target\n[Install]\n# WantedBy=commented.target\nWantedBy=a.target \\\n  b.target\nAlias=x.service\nAlias=\nAlias=y.service\nAlso=z.socket\nDefaultInstance=tty1\n",
        );
        assert_eq!(i.wanted_by, ["a.target", "b.target"]);
        assert_eq!(i.alias, ["y.service"], "an empty assignment resets");
        assert_eq!(i.also, ["z.socket"]);
        assert_eq!(i.default_instance.as_deref(), Some("tty1"));
        assert!(install("[Service]\nExecStart=/x\n").is_empty());
    }

    #[test]
    fn exec_services_become_units_and_package_units_are_enabled_as_systemctl_would() {
        let p = systemd_pakfile(
            "[services.web]\nexec = \"/usr/sbin/httpd -f -p 80 -h '/srv/$www'\"\nuser = \"www-data\"\nhealth = \"wget -q -O /dev/null http://127.0.0.1/\"\n[services.sshd]\nexec = \"/usr/sbin/sshd -D\"\nenable = true\n[services.\"getty@tty2\"]\nenable = true\n",
        );
        let t = tree(&[
            NETWORKD,
            NETWORKD_SOCKET,
            (
                "ssh.service",
                "[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n",
            ),
            (
                "getty@.service",
                "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
            ),
        ]);
        let files = render(&p, &t).unwrap();
        let web = body(&files, "/etc/systemd/system/web.service");
        assert!(
            web.contains(
                "ExecStart=/bin/sh -c \"exec /usr/sbin/httpd -f -p 80 -h '/srv/$$www'\"\n"
            ),
            "{web}"
        );
        assert!(
            web.contains("User=www-data\n") && web.contains("Restart=always\n"),
            "{web}"
        );
        assert_eq!(
            link(
                &files,
                "/etc/systemd/system/multi-user.target.wants/web.service"
            ),
            "/etc/systemd/system/web.service"
        );
        // sshd is ssh.service's alias: enabling it enables ssh.service.
        assert_eq!(
            link(
                &files,
                "/etc/systemd/system/multi-user.target.wants/ssh.service"
            ),
            "/usr/lib/systemd/system/ssh.service"
        );
        assert_eq!(
            link(&files, "/etc/systemd/system/sshd.service"),
            "/usr/lib/systemd/system/ssh.service"
        );
        assert!(
            files
                .iter()
                .all(|f| f.path != "/etc/systemd/system/sshd.service"
                    || matches!(f.kind, ConfigKind::Symlink(_)))
        );
        // An instance links to its template.
        assert_eq!(
            link(
                &files,
                "/etc/systemd/system/getty.target.wants/getty@tty2.service"
            ),
            "/usr/lib/systemd/system/getty@.service"
        );
        // networkd, with what its Also= names.
        assert_eq!(
            link(
                &files,
                "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
            ),
            "/usr/lib/systemd/system/systemd-networkd.socket"
        );
        assert_eq!(
            link(
                &files,
                "/etc/systemd/system/dbus-org.freedesktop.network1.service"
            ),
            "/usr/lib/systemd/system/systemd-networkd.service"
        );
        // Boot assessment: health is required by boot-complete.target and
        // waits for every service; mark-good follows the target.
        assert_eq!(
            link(
                &files,
                "/etc/systemd/system/boot-complete.target.requires/pak-health.service"
            ),
            "/etc/systemd/system/pak-health.service"
        );
        let health = body(&files, "/etc/systemd/system/pak-health.service");
        assert!(
            health.contains("Requires=getty@tty2.service sshd.service web.service\n")
                && health.contains("Before=boot-complete.target\n"),
            "{health}"
        );
        let script = body(&files, HEALTH_SCRIPT);
        assert!(
            script.contains("wget -q -O /dev/null http://127.0.0.1/")
                && !script.contains("mark-good"),
            "{script}"
        );
        let mark = body(&files, "/etc/systemd/system/pak-mark-good.service");
        assert!(mark.contains("Requires=boot-complete.target\nAfter=boot-complete.target\n"));
        assert!(body(&files, MARK_GOOD_SCRIPT).contains("pak system mark-good"));
        // The console named last on the command line gets the shell.
        assert!(
            body(&files, "/etc/systemd/system/pak-console.service")
                .contains("TTYPath=/dev/ttyS1\n")
        );
        assert_eq!(
            link(&files, "/etc/systemd/system/serial-getty@ttyS1.service"),
            "/dev/null"
        );
        assert_eq!(body(&files, "/etc/machine-id"), "");
        assert!(body(&files, "/etc/fstab").contains("tmpfs /tmp tmpfs"));
        // Without systemd-resolved, resolv.conf stays where busybox has it.
        assert_eq!(link(&files, "/etc/resolv.conf"), "../run/resolv.conf");
        // A pure function of its inputs, sorted.
        assert_eq!(render(&p, &t).unwrap(), files);
        let paths: Vec<_> = files.iter().map(|f| f.path.clone()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        for script in [HEALTH_SCRIPT, MARK_GOOD_SCRIPT] {
            let ok = std::process::Command::new("sh")
                .args(["-n", "-c", &body(&files, script)])
                .status()
                .unwrap();
            assert!(ok.success(), "{script}");
        }
    }

    #[test]
    fn missing_and_unenableable_units_name_the_service() {
        let t = tree(&[
            NETWORKD,
            NETWORKD_SOCKET,
            ("static.service", "[Service]\nExecStart=/x\n"),
            ("tmpl@.service", "[Install]\nWantedBy=multi-user.target\n"),
        ]);
        let err = |more: &str| format!("{:#}", render(&systemd_pakfile(more), &t).unwrap_err());
        let e = err("[services.nginx]\nenable = true\n");
        assert!(
            e.contains("[services.nginx]")
                && e.contains("no package ships the unit nginx.service")
                && e.contains("[packages]"),
            "{e}"
        );
        let e = err("[services.static]\nenable = true\n");
        assert!(
            e.contains("[services.static]") && e.contains("no [Install] section"),
            "{e}"
        );
        let e = err("[services.\"tmpl@\"]\nenable = true\n");
        assert!(e.contains("tmpl@NAME.service"), "{e}");
        // networkd is systemd's; without it the [network] cannot be rendered.
        let e = format!(
            "{:#}",
            render(&systemd_pakfile(""), &tree(&[])).unwrap_err()
        );
        assert!(
            e.contains("systemd-networkd.service") && e.contains("[network]"),
            "{e}"
        );
    }

    #[test]
    fn init_is_checked_against_the_root() {
        let systemd = systemd_pakfile("");
        let busybox = Pakfile::parse("").unwrap();
        let mut t = tree(&[]);
        t.put("usr/bin/busybox", data(vec![]), 0o755, 0, 0);
        t.put(
            "usr/sbin/init",
            NodeKind::Symlink("/usr/bin/busybox".into()),
            0o777,
            0,
            0,
        );
        check_init(&busybox, &t, &["busybox-static"]).unwrap();
        let e = check_init(&systemd, &t, &["busybox-static"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("systemd profile"), "{e}");
        let e = check_init(&systemd, &t, &["systemd"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("systemd-sysv"), "{e}");
        t.put("usr/lib/systemd/systemd", data(vec![]), 0o755, 0, 0);
        t.put(
            "usr/sbin/init",
            NodeKind::Symlink("../lib/systemd/systemd".into()),
            0o777,
            0,
            0,
        );
        check_init(&systemd, &t, &["systemd"]).unwrap();
        let e = check_init(&busybox, &t, &["systemd"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("init = \"systemd\""), "{e}");
        // A profile's systemd-only service cannot land in a busybox image.
        let mut p = Pakfile::parse("").unwrap();
        p.services.insert(
            "ssh".into(),
            Service {
                exec: None,
                enable: Some(true),
                health: None,
                user: None,
            },
        );
        t.put(
            "usr/sbin/init",
            NodeKind::Symlink("/usr/bin/busybox".into()),
            0o777,
            0,
            0,
        );
        assert!(
            check_init(&p, &t, &[])
                .unwrap_err()
                .to_string()
                .contains("busybox init has no units")
        );
    }

    #[test]
    fn network_is_rendered_for_networkd() {
        let n: Network = toml::from_str(
            "[interfaces.eth0]\naddress = [\"192.0.2.10/24\"]\ngateway = \"192.0.2.1\"\ndns = [\"192.0.2.53\"]\nsearch = [\"example.com\"]\n[interfaces.uplink]\nmac = \"52:54:00:AB:CD:EF\"\n",
        )
        .unwrap();
        let files = network_files(&n, true);
        assert_eq!(
            body(&files, "/etc/systemd/network/50-pak-eth0.network"),
            "# Written by pak from the Pakfile's [network.interfaces.eth0].\n[Match]\nName=eth0\n\n[Network]\nAddress=192.0.2.10/24\nGateway=192.0.2.1\nDNS=192.0.2.53\nDomains=example.com\n"
        );
        let uplink = body(&files, "/etc/systemd/network/50-pak-uplink.network");
        assert!(
            uplink.contains("MACAddress=52:54:00:ab:cd:ef\n") && uplink.contains("DHCP=ipv4\n"),
            "{uplink}"
        );
        assert!(body(&files, "/etc/systemd/network/90-pak-dhcp.network").contains("Type=ether\n"));
        assert_eq!(
            link(&files, "/etc/resolv.conf"),
            "../run/systemd/resolve/stub-resolv.conf"
        );
    }

    #[test]
    fn presets_enable_what_they_name_after_the_pakfile_and_nothing_else() {
        let mut t = tree(&[
            NETWORKD,
            NETWORKD_SOCKET,
            (
                "systemd-network-generator.service",
                "[Install]\nWantedBy=sysinit.target\n",
            ),
            (
                "getty@.service",
                "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
            ),
            ("nginx.service", "[Install]\nWantedBy=multi-user.target\n"),
            (
                "e2scrub_reap.service",
                "[Install]\nWantedBy=default.target\n",
            ),
            ("pg@.service", "[Install]\nWantedBy=multi-user.target\n"),
            ("static.service", "[Service]\nExecStart=/x\n"),
        ]);
        let debian = "# Debian\nenable systemd-network-generator.service\nenable getty@.service\nenable static.service\ndisable nginx.service\nbogus line\n";
        t.put(
            "lib/systemd/system-preset/90-systemd.preset",
            data(debian.as_bytes().to_vec()),
            0o644,
            0,
            0,
        );
        t.put(
            "usr/lib/systemd/system-preset/50-pg.preset",
            data(b"enable pg@.service 15-main 16-main\n".to_vec()),
            0o644,
            0,
            0,
        );
        // The Pakfile's nginx is enabled although Debian's preset says no.
        let p = systemd_pakfile("[services.nginx]\nenable = true\n");
        let files = render(&p, &t).unwrap();
        let wants = |target: &str, unit: &str| {
            files
                .iter()
                .any(|f| f.path == format!("/etc/systemd/system/{target}.target.wants/{unit}"))
        };
        assert!(wants("sysinit", "systemd-network-generator.service"));
        assert!(wants("multi-user", "nginx.service"));
        assert!(
            wants("multi-user", "pg@15-main.service") && wants("multi-user", "pg@16-main.service")
        );
        assert_eq!(
            link(
                &files,
                "/etc/systemd/system/multi-user.target.wants/pg@15-main.service"
            ),
            "/usr/lib/systemd/system/pg@.service"
        );
        // pak's own preset, before Debian's, keeps gettys off the console;
        // no preset names e2scrub_reap, so pak's default leaves it off;
        // a static unit has nothing to enable.
        assert!(!wants("getty", "getty@tty1.service"));
        assert!(!wants("default", "e2scrub_reap.service"));
        assert!(!files.iter().any(|f| f.path.contains("static.service")));
        assert!(body(&files, PRESET_DEFAULT).contains("disable *"));
        assert!(body(&files, PRESET_PAK).contains("disable getty@.service"));

        // A preset in the Pakfile's [files], with the name of Debian's,
        // replaces it; one named earlier comes first.
        let p = systemd_pakfile(
            "[files]\n\"/etc/systemd/system-preset/90-systemd.preset\" = \"enable e2scrub_reap.service\\n\"\n\"/etc/systemd/system-preset/10-local.preset\" = \"enable getty@.service\\ndisable pg@.service\\n\"\n",
        );
        let files = render(&p, &t).unwrap();
        let wants = |target: &str, unit: &str| {
            files
                .iter()
                .any(|f| f.path == format!("/etc/systemd/system/{target}.target.wants/{unit}"))
        };
        assert!(wants("default", "e2scrub_reap.service"));
        assert!(!wants("sysinit", "systemd-network-generator.service"));
        assert!(wants("getty", "getty@tty1.service"));
        assert!(!wants("multi-user", "pg@15-main.service"));
        assert!(!wants("multi-user", "nginx.service"));

        // `enable = false` keeps off what a preset enables; a unit no
        // package ships, or one pak needs, cannot be kept off.
        let p = systemd_pakfile("[services.systemd-network-generator]\nenable = false\n");
        let files = render(&p, &t).unwrap();
        assert!(!files.iter().any(|f| {
            f.path
                .ends_with("sysinit.target.wants/systemd-network-generator.service")
        }));
        let health = body(&files, &format!("/etc/systemd/system/{HEALTH_UNIT}"));
        assert!(!health.contains("systemd-network-generator"), "{health}");
        let e = render(&systemd_pakfile("[services.nope]\nenable = false\n"), &t).unwrap_err();
        assert!(
            format!("{e:#}").contains("no package ships the unit nope.service"),
            "{e:#}"
        );
        let e = render(
            &systemd_pakfile("[services.systemd-networkd]\nenable = false\n"),
            &t,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("kept off by `[services.systemd-networkd] enable = false`"),
            "{e:#}"
        );

        // /var stays to systemd-shutdown's last pass.
        let files = render(&systemd_pakfile(""), &t).unwrap();
        assert!(body(&files, VAR_TO_THE_END).ends_with("\n[Unit]\nDefaultDependencies=no\n"));
        assert!(body(&files, SYSUSERS_EVERY_BOOT).ends_with("\n[Unit]\nConditionNeedsUpdate=\n"));
    }

    #[test]
    fn preset_lines_are_read_as_systemd_reads_them() {
        let r = preset_rule("enable foo@.service a b").unwrap();
        assert_eq!(r.action, PresetAction::Enable);
        assert_eq!(r.instances, ["a", "b"]);
        let r = preset_rule("  disable systemd-journal-gatewayd.*").unwrap();
        assert!(r.pattern.matches("systemd-journal-gatewayd.socket"));
        assert_eq!(r.action, PresetAction::Disable);
        assert!(preset_rule("# enable x").is_none());
        assert!(preset_rule("; enable x").is_none());
        assert!(preset_rule("frobnicate x").is_none());
        assert!(preset_rule("enable").is_none());
    }

    #[test]
    fn a_seed_network_comes_before_the_images() {
        let n: Network = toml::from_str(
            "[interfaces.eth0]\naddress = [\"10.0.2.15/24\", \"10.0.2.77/24\"]\ngateway = \"10.0.2.2\"\n",
        )
        .unwrap();
        let seed = seed_network_files(&n);
        let names: Vec<&str> = seed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["40-pak-seed-eth0.network", "49-pak-seed-dhcp.network"]
        );
        assert!(names[0].starts_with(SEED_NETWORK_PREFIX) && names[1] == SEED_NETWORK_DHCP);
        assert!(
            seed[0]
                .1
                .contains("Address=10.0.2.77/24\nGateway=10.0.2.2\n"),
            "{}",
            seed[0].1
        );
        assert!(
            seed[0]
                .1
                .starts_with("# Written by pak from this machine's seed")
        );
        // In name order, every seed file is before every image file.
        let image = network_files(&n, false);
        for f in image.iter().filter(|f| f.path.ends_with(".network")) {
            let name = name_of(&f.path);
            assert!(names.iter().all(|s| *s < name.as_str()), "{name}");
        }
    }

    #[test]
    fn commands_are_quoted_for_units() {
        assert_eq!(
            unit_quote(r#"a "b" \c $X 50%"#),
            r#""a \"b\" \\c $$X 50%%""#
        );
        assert_eq!(console_tty("quiet"), "ttyS0");
        assert_eq!(console_tty("console=ttyS0 console=hvc0"), "hvc0");
    }
}
