//! The Pakfile's configuration, rendered as files of the image.
//!
//! Distributions configure a system by running scripts at install time; pak
//! writes the result instead: `/etc/hostname`, `/etc/os-release`, the
//! account databases, and busybox init's `/etc/inittab` with the declared
//! services. The files are a pure function of the Pakfile, so they are
//! reproducible, and reviewable in `pak system diff`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::image::accounts::Table;
use crate::spec::pakfile::{FileEntry, FileSpec, Pakfile, parse_mode};

/// The self-contained Pakfile every generation carries (see [`embedded`]).
pub const EMBEDDED_PAKFILE: &str = "/usr/lib/pak/Pakfile";
/// Beside it: the [files] whose content is not text, named by sha256.
pub const EMBEDDED_FILES_DIR: &str = "Pakfile.files";

/// One file (or symlink) the configuration adds to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// Absolute path in the image.
    pub path: String,
    pub kind: ConfigKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigKind {
    File(Vec<u8>),
    Symlink(String),
}

/// Renders every configuration file of the Pakfile, with the image's
/// accounts (see [`crate::image::accounts`]).
pub fn render(pakfile: &Pakfile, accounts: &Table) -> Result<Vec<ConfigFile>> {
    let mut out = BTreeMap::new();
    let mut add = |f: ConfigFile| {
        out.insert(f.path.clone(), f);
    };
    add(text(
        "/etc/hostname",
        format!("{}\n", pakfile.system.name),
        0o644,
    ));
    add(text("/usr/lib/os-release", os_release(pakfile), 0o644));
    add(ConfigFile {
        path: "/etc/os-release".into(),
        kind: ConfigKind::Symlink("../usr/lib/os-release".into()),
        mode: 0o777,
        uid: 0,
        gid: 0,
    });
    add(text("/etc/passwd", accounts.passwd(), 0o644));
    add(text("/etc/group", accounts.group(), 0o644));
    // Readable by group shadow (42), as Debian has it.
    add(ConfigFile {
        gid: 42,
        ..text("/etc/shadow", accounts.shadow(), 0o640)
    });
    if pakfile.system.init == crate::spec::pakfile::Init::Systemd {
        add(text(SYSUSERS, accounts.sysusers(), 0o644));
    }
    add(text("/etc/inittab", inittab(pakfile), 0o644));
    add(text(
        "/usr/lib/pak/rc.sysinit",
        RC_SYSINIT.to_string(),
        0o755,
    ));
    add(text(
        "/usr/lib/pak/boot-complete",
        boot_complete(pakfile),
        0o755,
    ));
    if let Some(list) = repositories(pakfile)? {
        add(text("/usr/lib/pak/repositories.toml", list, 0o644));
    }
    for f in crate::image::network::render(&pakfile.network) {
        add(f);
    }
    for f in crate::image::ssh::render(pakfile) {
        add(f);
    }
    if let Some(u) = &pakfile.update {
        add(text(
            crate::spec::update::CONFIG_FILE,
            u.config_file(&pakfile.dir)?,
            0o644,
        ));
    }
    if let Some(homes) = homes(pakfile, accounts) {
        add(text(HOMES_TMPFILES, homes, 0o644));
    }
    add(text("/usr/lib/pak/shutdown", shutdown_script(), 0o755));
    add(text(
        "/usr/lib/pak/first-boot",
        FIRST_BOOT.to_string(),
        0o755,
    ));
    add(text("/etc/profile", PROFILE.to_string(), 0o644));
    add(text(
        "/etc/fstab",
        "# Mounts are made by pak's /init; see /proc/mounts.\n".into(),
        0o644,
    ));
    for (path, spec) in &pakfile.files {
        add(user_file(pakfile, path, spec)?);
    }
    // Last, so a [files] entry cannot replace what `pak verify` reads.
    for f in embedded(pakfile)? {
        add(f);
    }
    Ok(out.into_values().collect())
}

const EMBEDDED_HEADER: &str = "# The Pakfile this generation was built from, made self-contained by pak:\n# profiles expanded into [packages], repository keys and [files] inlined.\n# With Pakfile.lock beside it, `pak verify` rebuilds the image from the two.\n\n";

/// The Pakfile as a generation carries it: everything the build reads from
/// the Pakfile and the files it names, in one text (plus, for [files] that
/// are not UTF-8, one file each beside it). Built from it with the
/// generation's lock, the same image comes out again, wherever it is.
///
/// The rendering is a fixed point: the embedded Pakfile of a generation
/// built from an embedded Pakfile is the same text, or `pak verify` could
/// never say "identical". Repository URLs stay as written (an absolute path
/// of the building host would make the image depend on where it was
/// built); a relative directory repository is therefore not reachable from
/// the embedded copy, and `pak verify` takes such packages from the store's
/// download cache instead.
pub fn embedded(pakfile: &Pakfile) -> Result<Vec<ConfigFile>> {
    let mut e = pakfile.clone();
    // Pakfile::load has merged the profiles already; a Pakfile parsed
    // without them gets the same result here.
    e.merge_profiles()?;
    e.system.profiles.clear();
    if let Some(u) = &mut e.update {
        let public = crate::sources::key::PublicKey::from_pakfile_field(&u.key, &pakfile.dir)
            .context("[update] key")?;
        u.key = public.to_text();
    }
    for r in &mut e.repository {
        // Where to fetch is the building host's business: a build from a
        // mirror or with a snapshot base is the same image.
        r.mirror = None;
        r.snapshot = None;
        if let Some(key) = &r.key {
            let public = crate::sources::key::PublicKey::from_pakfile_field(key, &pakfile.dir)
                .with_context(|| format!("repository {:?}: its key", r.name))?;
            r.key = Some(public.to_text());
        }
    }
    let mut out = Vec::new();
    for (path, spec) in e.files.iter_mut() {
        let f = user_file(pakfile, path, spec)?;
        let ConfigKind::File(bytes) = f.kind else {
            unreachable!("[files] are regular files")
        };
        let full = |content: Option<String>, source: Option<String>| {
            FileSpec::Full(FileEntry {
                content,
                source,
                mode: Some(format!("{:04o}", f.mode)),
                uid: Some(f.uid),
                gid: Some(f.gid),
            })
        };
        *spec = match String::from_utf8(bytes) {
            Ok(text) if (f.mode, f.uid, f.gid) == (0o644, 0, 0) => FileSpec::Text(text),
            Ok(text) => full(Some(text), None),
            Err(not_text) => {
                let bytes = not_text.into_bytes();
                let name = format!(
                    "{EMBEDDED_FILES_DIR}/{}",
                    crate::util::fsutil::sha256_hex(&bytes)
                );
                out.push(ConfigFile {
                    path: format!("/usr/lib/pak/{name}"),
                    kind: ConfigKind::File(bytes),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                });
                full(None, Some(name))
            }
        };
    }
    let body = toml::to_string(&e).context("cannot write the Pakfile into the generation")?;
    out.push(text(
        EMBEDDED_PAKFILE,
        format!("{EMBEDDED_HEADER}{body}"),
        0o644,
    ));
    Ok(out)
}

pub(crate) fn text(path: &str, content: String, mode: u32) -> ConfigFile {
    ConfigFile {
        path: path.into(),
        kind: ConfigKind::File(content.into_bytes()),
        mode,
        uid: 0,
        gid: 0,
    }
}

fn os_release(p: &Pakfile) -> String {
    let name = &p.system.name;
    let mut s =
        format!("NAME=\"{name}\"\nID=pak\nPRETTY_NAME=\"{name} (pak)\"\nIMAGE_ID=\"{name}\"\n");
    if let Some(v) = &p.system.version {
        s.push_str(&format!("VERSION_ID=\"{v}\"\nIMAGE_VERSION=\"{v}\"\n"));
    }
    s
}

/// busybox init's table: bring the system up, give the serial console a
/// shell, start and supervise the declared services, and mark the boot good
/// once they are healthy.
fn inittab(p: &Pakfile) -> String {
    let mut s = String::from("# Written by pak from the Pakfile. Format: busybox init(8).\n");
    s.push_str("::sysinit:/usr/lib/pak/rc.sysinit\n");
    for (name, svc) in &p.services {
        // A service for systemd only (validated: not in a busybox image).
        let Some(exec) = &svc.exec else { continue };
        let exec = match &svc.user {
            // busybox su, as root, asks for no password; -s because a
            // service account's shell is nologin.
            Some(user) => format!(
                "/bin/su -s /bin/sh -c 'exec {}' {user}",
                exec.replace('\'', "'\\''")
            ),
            None => exec.clone(),
        };
        s.push_str(&format!("# service {name}\n::respawn:{exec}\n"));
    }
    s.push_str("::once:/usr/lib/pak/boot-complete\n");
    s.push_str("ttyS0::respawn:-/bin/sh\n");
    s.push_str("::ctrlaltdel:/sbin/reboot\n");
    s.push_str("::shutdown:/usr/lib/pak/shutdown\n");
    s
}

/// Seconds services get to exit after SIGTERM at shutdown.
const STOP_SECONDS: u32 = 30;

/// busybox init runs its shutdown actions *before* it signals the other
/// processes; a filesystem remounted read-only under a running database
/// would make every shutdown a crash. So: stop everything, wait, then
/// remount.
fn shutdown_script() -> String {
    format!(
        r#"#!/bin/sh
# Written by pak. Run by init at poweroff and reboot.
# The programs still running that are not busybox (shells, udhcpc, this
# script): services, whatever started them.
others() {{
    n=0
    for p in /proc/[0-9]*; do
        [ "${{p#/proc/}}" = 1 ] && continue
        # Kernel threads have no executable.
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        case "$exe" in */busybox | "") continue ;; esac
        n=$((n + 1))
    done
    echo $n
}}
kill -TERM -1 2>/dev/null
i=0
while [ "$(others)" -gt 0 ] && [ $i -lt {STOP_SECONDS}0 ]; do
    sleep 0.1
    i=$((i + 1))
done
[ "$(others)" -gt 0 ] && echo "pak: services still running after {STOP_SECONDS}s; killing them"
kill -KILL -1 2>/dev/null
sync
umount -a -r
"#
    )
}

/// The Pakfile's repositories a running image can reach itself (signed
/// indexes over http(s)), with their keys inlined: where `pak install
/// --user` and new environments look when `/etc/pak/repositories.toml` does
/// not say otherwise. `None` when there are none.
fn repositories(p: &Pakfile) -> Result<Option<String>> {
    let mut out = String::from(
        "# Written by pak from the image's Pakfile: the repositories users'\n# environments start from. /etc/pak/repositories.toml overrides this.\n",
    );
    let mut any = false;
    for r in &p.repository {
        let Some(url) = r
            .url
            .as_deref()
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        else {
            continue;
        };
        if r.kind != crate::spec::pakfile::RepoKind::Pak {
            continue;
        }
        // `kind` is left out: these are all `pak`, the default.
        let key = match &r.key {
            Some(key) => {
                let dir = p.resolve_path(".");
                let public = crate::sources::key::PublicKey::from_pakfile_field(key, &dir)
                    .with_context(|| format!("repository {:?}: its key", r.name))?;
                Some(public.to_text())
            }
            None => None,
        };
        out.push_str(&crate::spec::edit::repository_table(
            &r.name,
            None,
            Some(url),
            key.as_deref(),
        ));
        any = true;
    }
    Ok(any.then_some(out))
}

/// Seconds the services get to pass their health checks after boot.
const HEALTH_SECONDS: u32 = 60;

/// The boot-complete step: once every declared service's health check
/// passes, mark the boot good (strip the entry's tries) and stop the
/// watchdog `/init` armed for a boot on trial (the magic close, `V`). If
/// the checks keep failing nothing is marked: the watchdog resets the
/// machine, the try is used up, and systemd-boot falls back to the other
/// slot once the tries are gone.
fn boot_complete(p: &Pakfile) -> String {
    format!(
        r#"#!/bin/sh
# Written by pak from the Pakfile's [services] health checks.
{}pak system mark-good || exit 1
if [ -c /dev/watchdog ]; then
    printf V > /dev/watchdog
fi
echo "pak: boot complete"
"#,
        health_loop(p, HEALTH_SECONDS)
    )
}

/// A script that exits 0 once every service's health check passes, 1 if
/// one still fails after `seconds` (systemd images' `pak-health.service`).
pub(crate) fn health_script(p: &Pakfile, seconds: u32) -> String {
    format!(
        "#!/bin/sh\n# Written by pak from the Pakfile's [services] health checks.\n{}exit 0\n",
        health_loop(p, seconds)
    )
}

/// Polls the checks once a second until all pass; gives up (exit 1) after
/// `seconds`, naming the service still failing.
fn health_loop(p: &Pakfile, seconds: u32) -> String {
    let mut checks = String::new();
    for (name, svc) in &p.services {
        if let Some(h) = &svc.health {
            let quoted = h.replace('\'', "'\\''");
            checks.push_str(&format!(
                "    sh -c '{quoted}' >/dev/null 2>&1 || {{ ok=0; failing={name}; }}\n"
            ));
        }
    }
    format!(
        r#"n=0
while :; do
    ok=1
{checks}    [ "$ok" = 1 ] && break
    n=$((n + 1))
    if [ "$n" -ge {seconds} ]; then
        echo "pak: service $failing is still unhealthy after {seconds}s; this boot is not marked good"
        exit 1
    fi
    sleep 1
done
"#
    )
}

const RC_SYSINIT: &str = r#"#!/bin/sh
# First thing busybox init runs. /, /etc, /var and /home were mounted by
# pak's /init; this adds the volatile mounts, then brings the machine up in
# the order each step needs: who it is, then the network, then what
# packages and per-machine secrets need. Each step reports its own errors on
# the console and the boot goes on, so an operator can always reach the
# machine.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
ip link set lo up 2>/dev/null
mkdir -p /var/log /var/lib /var/cache /var/tmp /var/www /root
chmod 1777 /var/tmp
# Per-machine provisioning (a seed volume, fw_cfg or SMBIOS credentials):
# hostname, users' keys, network, files. Once per data partition.
[ -x /usr/lib/pak/provision ] && /usr/lib/pak/provision
hostname -F /etc/hostname
# [network]: static interfaces as the Pakfile (or a seed) says, DHCP on the others.
/usr/lib/pak/network
# Directories, files and links packages declare in tmpfiles.d.
[ -x /usr/lib/pak/tmpfiles ] && /usr/lib/pak/tmpfiles
# Per-machine secrets (SSH host keys, machine-id), made on first boot.
[ -x /usr/lib/pak/first-boot ] && /usr/lib/pak/first-boot
exit 0
"#;

/// The home directories of the Pakfile's users, as tmpfiles.d entries:
/// homes live on the data partition (/home is /var/home), which the image
/// cannot fill in, so they are made at boot when missing, owned by their
/// user, private.
/// The image's accounts for systemd-sysusers (see [`Table::sysusers`]),
/// read before the packages' own files so the lock's ids win over the ones
/// systemd-sysusers would pick.
pub const SYSUSERS: &str = "/usr/lib/sysusers.d/00-pak.conf";

const HOMES_TMPFILES: &str = "/usr/lib/tmpfiles.d/pak-users.conf";

fn homes(p: &Pakfile, accounts: &Table) -> Option<String> {
    let mut out = String::from("# Written by pak from the Pakfile's [users].\n");
    let mut any = false;
    for (name, u) in p.users.iter().filter(|(_, u)| u.login) {
        let row = accounts.users.iter().find(|r| &r.name == name)?;
        let home = u.home.clone().unwrap_or_else(|| row.home.clone());
        out.push_str(&format!("d {home} 0700 {} {} -\n", row.uid, row.gid));
        any = true;
    }
    any.then_some(out)
}

/// Per-machine identity, made where the machine keeps its state: never in
/// the image, which many machines share. Each step does its work only when
/// its result is missing, so a factory reset or a lost file is made again.
const FIRST_BOOT: &str = r#"#!/bin/sh
# Written by pak. Per-machine identity, made on the first boot (and again
# whenever it is missing): /etc is an overlay whose changes live on /var.
if [ ! -s /etc/machine-id ]; then
    tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id
    echo "pak: this machine's id is $(cat /etc/machine-id)"
fi
# Steps images add (the ssh profile's host keys, ...), in name order.
for step in /usr/lib/pak/first-boot.d/*; do
    [ -x "$step" ] || continue
    "$step" || echo "pak: first-boot step $step failed; it runs again at the next boot"
done
"#;

// The `user` environment's commands come first; it lives where pak's root
// is for that user (see root.rs): /var/lib/pak for root, XDG data otherwise.
const PROFILE: &str = r#"# Written by pak. Login shells read this.
if [ "$(id -u)" = 0 ]; then pak_envs=/var/lib/pak/envs; else pak_envs="${XDG_DATA_HOME:-$HOME/.local/share}/pak/envs"; fi
export PATH="$pak_envs/user/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
unset pak_envs
export PS1='\h:\w\$ '
"#;

pub(crate) fn user_file(p: &Pakfile, path: &str, spec: &FileSpec) -> Result<ConfigFile> {
    let (content, mode, uid, gid) = match spec {
        FileSpec::Text(t) => (t.clone().into_bytes(), 0o644, 0, 0),
        FileSpec::Full(e) => {
            let content = match (&e.content, &e.source) {
                (Some(c), _) => c.clone().into_bytes(),
                (None, Some(src)) => {
                    let file = p.resolve_path(src);
                    std::fs::read(&file).with_context(|| {
                        format!(
                            "[files] {path:?}: cannot read its source {}",
                            file.display()
                        )
                    })?
                }
                (None, None) => unreachable!("validated when the Pakfile was read"),
            };
            let mode = e
                .mode
                .as_deref()
                .map(parse_mode)
                .transpose()?
                .unwrap_or(0o644);
            (content, mode, e.uid.unwrap_or(0), e.gid.unwrap_or(0))
        }
    };
    Ok(ConfigFile {
        path: path.into(),
        kind: ConfigKind::File(content),
        mode,
        uid,
        gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration of an image without packages.
    fn render(p: &Pakfile) -> Result<Vec<ConfigFile>> {
        let accounts =
            crate::image::accounts::allocate(p, &Default::default(), &Default::default())?;
        super::render(p, &accounts)
    }

    fn find<'a>(files: &'a [ConfigFile], path: &str) -> &'a ConfigFile {
        files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{path} missing"))
    }

    fn content(f: &ConfigFile) -> String {
        match &f.kind {
            ConfigKind::File(b) => String::from_utf8(b.clone()).unwrap(),
            ConfigKind::Symlink(t) => t.clone(),
        }
    }

    #[test]
    fn systemd_images_get_their_accounts_as_sysusers_d_too() {
        let systemd = render(
            &Pakfile::parse("[system]\ninit = \"systemd\"\n[users.ops]\nlogin = false\n").unwrap(),
        )
        .unwrap();
        let su = systemd
            .iter()
            .find(|f| f.path == SYSUSERS)
            .expect("sysusers.d");
        let ConfigKind::File(b) = &su.kind else {
            panic!()
        };
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(
            text.contains("\nu ops 1000:1000 ops /home/ops /bin/sh\n"),
            "{text}"
        );
        assert!(text.contains("\nu root 0:0 root /root /bin/sh\n"), "{text}");
        let busybox = render(&Pakfile::parse("").unwrap()).unwrap();
        assert!(busybox.iter().all(|f| f.path != SYSUSERS));
    }

    #[test]
    fn renders_identity_accounts_and_services() {
        let p = Pakfile::parse(
            r#"
[system]
name = "web"
[users.alice]
uid = 1000
login = false
groups = ["www-data"]
[services.nginx]
exec = "/usr/sbin/nginx -g 'daemon off;'"
[files]
"/etc/motd" = "hi\n"
"/etc/secret" = { content = "s", mode = "0600", uid = 1000 }
"#,
        )
        .unwrap();
        let files = render(&p).unwrap();
        assert_eq!(content(find(&files, "/etc/hostname")), "web\n");
        let passwd = content(find(&files, "/etc/passwd"));
        assert!(passwd.contains("alice:x:1000:1000:alice:/home/alice:/bin/sh"));
        assert!(passwd.starts_with("root:x:0:0"));
        assert!(content(find(&files, "/etc/group")).contains("www-data:x:33:alice\n"));
        assert!(
            content(find(&files, "/etc/inittab"))
                .contains("::respawn:/usr/sbin/nginx -g 'daemon off;'")
        );
        let secret = find(&files, "/etc/secret");
        assert_eq!((secret.mode, secret.uid), (0o600, 1000));
        assert_eq!(render(&p).unwrap(), files, "deterministic");
        let mut sorted = files.iter().map(|f| f.path.clone()).collect::<Vec<_>>();
        sorted.sort();
        assert_eq!(
            sorted,
            files.iter().map(|f| f.path.clone()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn services_run_as_their_user_and_the_boot_scripts_are_valid_sh() {
        let p = Pakfile::parse(
            "[services.db]\nuser = \"postgres\"\nexec = \"/bin/sh -c 'exec postgres -D /var/db'\"\n",
        )
        .unwrap();
        let files = render(&p).unwrap();
        let inittab = content(find(&files, "/etc/inittab"));
        assert!(
            inittab.contains(
                r#"::respawn:/bin/su -s /bin/sh -c 'exec /bin/sh -c '\''exec postgres -D /var/db'\''' postgres"#
            ),
            "{inittab}"
        );
        assert!(inittab.contains("::shutdown:/usr/lib/pak/shutdown\n"));
        for script in [
            "/usr/lib/pak/shutdown",
            "/usr/lib/pak/first-boot",
            "/usr/lib/pak/rc.sysinit",
            "/usr/lib/pak/boot-complete",
        ] {
            let f = find(&files, script);
            assert_eq!(f.mode, 0o755, "{script}");
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &content(f)])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let bad = Pakfile::parse("[services.db]\nuser = \"Bad User\"\nexec = \"x\"\n");
        assert!(bad.unwrap_err().to_string().contains("[services.db]"));
    }

    #[test]
    fn http_repositories_are_carried_for_user_environments() {
        let public = crate::sources::key::SecretKey::generate()
            .unwrap()
            .public()
            .to_text();
        let text = format!(
            "[[repository]]\nname = \"local\"\nurl = \"repo\"\nkey = \"\"\"\n{public}\"\"\"\n\n[[repository]]\nname = \"debian\"\nkind = \"apt\"\n\n[[repository]]\nname = \"web\"\nurl = \"https://example.org/pak\"\nkey = \"\"\"\n{public}\"\"\"\n"
        );
        let files = render(&Pakfile::parse(&text).unwrap()).unwrap();
        let list = content(find(&files, "/usr/lib/pak/repositories.toml"));
        assert!(list.contains("url = \"https://example.org/pak\""), "{list}");
        assert!(list.contains(public.lines().last().unwrap()), "{list}");
        assert!(
            !list.contains("local") && !list.contains("debian"),
            "{list}"
        );
        let files = render(&Pakfile::parse("[system]\nname = \"x\"\n").unwrap()).unwrap();
        assert!(
            files
                .iter()
                .all(|f| f.path != "/usr/lib/pak/repositories.toml")
        );
    }

    /// The exact bytes images ship: a change here changes every image.
    #[test]
    fn repository_list_bytes() {
        let public = crate::sources::key::SecretKey::generate()
            .unwrap()
            .public()
            .to_text();
        let text = format!(
            "[[repository]]\nname = \"web\"\nurl = \"https://example.org/pak\"\nkey = \"\"\"\n{public}\"\"\"\n\n[[repository]]\nname = \"plain\"\nurl = \"http://example.org/p\"\nkey = \"\"\"\n{public}\"\"\"\n"
        );
        let list = repositories(&Pakfile::parse(&text).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            list,
            format!(
                "# Written by pak from the image's Pakfile: the repositories users'\n# environments start from. /etc/pak/repositories.toml overrides this.\n\n[[repository]]\nname = \"web\"\nurl = \"https://example.org/pak\"\nkey = \"\"\"\n{public}\"\"\"\n\n[[repository]]\nname = \"plain\"\nurl = \"http://example.org/p\"\nkey = \"\"\"\n{public}\"\"\"\n"
            )
        );
    }

    #[test]
    fn clashing_ids_are_refused() {
        let p = Pakfile::parse("[users.bob]\nuid = 33\nlogin = false\n").unwrap();
        assert!(render(&p).unwrap_err().to_string().contains("www-data"));
        let p = Pakfile::parse("[users.bob]\nuid = 1000\nlogin = false\ngroups = [\"nope\"]\n")
            .unwrap();
        assert!(render(&p).is_err());
    }

    #[test]
    fn the_embedded_pakfile_is_self_contained_and_a_fixed_point() {
        let d = tempfile::tempdir().unwrap();
        let project = d.path().join("project");
        std::fs::create_dir_all(project.join("profiles")).unwrap();
        std::fs::write(
            project.join("profiles/mine.toml"),
            "include = [\"base\"]\n[packages]\nhello = \">= 2\"\n",
        )
        .unwrap();
        let public = crate::sources::key::SecretKey::generate()
            .unwrap()
            .public()
            .to_text();
        std::fs::write(project.join("local.pub"), &public).unwrap();
        std::fs::write(project.join("app.conf"), "key = value\n").unwrap();
        std::fs::write(project.join("blob"), [0u8, 0xff, 0xfe, 1]).unwrap();
        std::fs::write(
            project.join("Pakfile"),
            r#"
[system]
name = "box"
profiles = ["mine"]
version = "7"
[packages]
hello = "*"
[[repository]]
name = "local"
url = "repo"
key = "local.pub"
[[repository]]
name = "debian"
kind = "apt"
[boot]
cmdline = "console=ttyS0 quiet"
tries = 5
[image]
size = "3GiB"
slot_size = "700MiB"
[files]
"/etc/motd" = "hi\n"
"/etc/app.conf" = { source = "app.conf", mode = "0600", uid = 33 }
"/etc/blob" = { source = "blob" }
[users.alice]
uid = 1000
login = false
groups = ["www-data"]
[groups.ops]
gid = 2000
[services.web]
exec = "/usr/sbin/httpd -f"
health = "wget -q -O /dev/null http://127.0.0.1/"
"#,
        )
        .unwrap();
        let original = Pakfile::load(&project.join("Pakfile")).unwrap();
        let files = render(&original).unwrap();
        let text = content(find(&files, EMBEDDED_PAKFILE));
        assert!(
            !text.contains("local.pub") && !text.contains("source = \"app.conf\""),
            "{text}"
        );
        assert!(text.contains(public.lines().last().unwrap()), "{text}");
        assert!(
            text.contains("url = \"repo\""),
            "URLs stay as written: {text}"
        );

        // Elsewhere, from the embedded files alone.
        let elsewhere = d.path().join("elsewhere");
        for f in files
            .iter()
            .filter(|f| f.path.starts_with("/usr/lib/pak/Pakfile"))
        {
            let to = elsewhere.join(f.path.trim_start_matches("/usr/lib/pak/"));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            let ConfigKind::File(b) = &f.kind else {
                panic!()
            };
            std::fs::write(to, b).unwrap();
        }
        assert_eq!(
            files
                .iter()
                .filter(|f| f.path.starts_with("/usr/lib/pak/Pakfile.files/"))
                .count(),
            1,
            "only the binary file lies beside the Pakfile"
        );
        std::fs::remove_dir_all(&project).unwrap();
        let again = Pakfile::load(&elsewhere.join("Pakfile")).unwrap();
        assert!(again.system.profiles.is_empty());
        assert_eq!(again.packages, original.packages, "profiles expanded");
        assert_eq!(
            again.packages["hello"], "*",
            "the Pakfile's own requirement wins"
        );
        assert!(
            again.packages.contains_key("busybox-static"),
            "included profiles too"
        );
        assert_eq!(
            render(&again).unwrap(),
            files,
            "the same configuration, the embedded Pakfile included, byte for byte"
        );
    }
}
