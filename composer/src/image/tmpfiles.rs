//! `tmpfiles.d(5)`, applied under busybox init.
//!
//! Packages declare the directories, files and links they need on the
//! writable parts of a system (`d /run/postgresql 2775 postgres postgres`)
//! in `/usr/lib/tmpfiles.d/*.conf`; under systemd, systemd-tmpfiles applies
//! them at every boot. pak renders them at build time into one POSIX sh
//! script, `/usr/lib/pak/tmpfiles`, which `rc.sysinit` runs at every boot.
//! User and group names are resolved to the ids the build allocated, so
//! the script needs no account database and its bytes follow from the
//! lock. Entries for paths in the read-only image, and the kinds this
//! renders no step for, are kept in the script as comments saying why.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use crate::image::accounts::Table;
use crate::image::assemble::{Content, NodeKind, RootTree};
use crate::image::sysconfig::{ConfigFile, ConfigKind};

pub const SCRIPT: &str = "/usr/lib/pak/tmpfiles";

/// Where tmpfiles.d files are read, least precedence first: a file of the
/// same name in a later directory replaces the earlier one.
const DIRS: &[&str] = &["usr/lib/tmpfiles.d/", "etc/tmpfiles.d/"];

/// Paths a running image can write: everything else is the squashfs.
const WRITABLE: &[&str] = &[
    "/run/", "/tmp/", "/var/", "/etc/", "/home/", "/root/", "/dev/", "/srv/",
];

const HEADER: &str = r#"#!/bin/sh
# Written by pak from the image's tmpfiles.d(5) files, at build time: user
# and group names are already the image's ids. Run at every boot by
# rc.sysinit; each step reports its own error and the next one runs.
# $PAK_TMPFILES_ROOT, when set, is prepended to every path (for tests).
root="${PAK_TMPFILES_ROOT:-}"
attr() { # PATH MODE UID GID [-R]
    [ -z "$3" ] || chown $5 "$3" "$1"
    [ -z "$4" ] || chgrp $5 "$4" "$1"
    [ -z "$2" ] || chmod $5 "$2" "$1"
}
dir() { [ -d "$1" ] || mkdir -p "$1" && attr "$@"; }
file() { # PATH MODE UID GID TRUNCATE [CONTENT]
    if [ ! -e "$1" ] || [ "$5" = 1 ]; then
        if [ $# -ge 6 ]; then printf '%b' "$6" > "$1"; else : > "$1"; fi
    fi && attr "$1" "$2" "$3" "$4"
}
"#;

/// The script, from the tmpfiles.d files of `tree` and of `config` (the
/// Pakfile's [files] may add some, and win over a package's).
pub fn render(tree: &RootTree, config: &[ConfigFile], accounts: &Table) -> Result<ConfigFile> {
    // name -> (path, text); later directories replace earlier ones.
    let mut files: BTreeMap<String, (String, String)> = BTreeMap::new();
    for dir in DIRS {
        for (path, node) in tree
            .nodes
            .range(dir.to_string()..)
            .take_while(|(p, _)| p.starts_with(dir))
        {
            let bytes = match &node.kind {
                NodeKind::File(Content::Stored { source, .. }) => std::fs::read(source)?,
                NodeKind::File(Content::Data(b)) => b.clone(),
                _ => continue,
            };
            add(&mut files, path, &bytes);
        }
        for f in config {
            if let (Some(rel), ConfigKind::File(b)) = (f.path.strip_prefix('/'), &f.kind)
                && rel.starts_with(dir)
            {
                add(&mut files, rel, b);
            }
        }
    }
    let mut out = String::from(HEADER);
    let mut seen = BTreeSet::new();
    for (path, text) in files.values() {
        out.push_str(&format!("\n# /{path}\n"));
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match step(line, accounts, &mut seen) {
                Ok(s) => out.push_str(&s),
                Err(why) => out.push_str(&format!(
                    "# line {}: {why}: {}\n",
                    n + 1,
                    line.replace('\n', " ")
                )),
            }
        }
    }
    Ok(ConfigFile {
        path: SCRIPT.into(),
        kind: ConfigKind::File(out.into_bytes()),
        mode: 0o755,
        uid: 0,
        gid: 0,
    })
}

fn add(files: &mut BTreeMap<String, (String, String)>, path: &str, bytes: &[u8]) {
    let Some(name) = path.rsplit('/').next().filter(|n| n.ends_with(".conf")) else {
        return;
    };
    files.insert(
        name.to_string(),
        (
            path.to_string(),
            String::from_utf8_lossy(bytes).into_owned(),
        ),
    );
}

/// Single-quoted for sh.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A path as a sh word under `$root`; glob characters stay live when
/// `glob`.
fn word(path: &str, glob: bool) -> String {
    if !glob {
        return format!("\"$root\"{}", sq(path));
    }
    let mut out = String::from("\"$root\"");
    let mut run = String::new();
    for c in path.chars() {
        if matches!(c, '*' | '?') {
            if !run.is_empty() {
                out.push_str(&sq(&run));
                run.clear();
            }
            out.push(c);
        } else {
            run.push(c);
        }
    }
    if !run.is_empty() {
        out.push_str(&sq(&run));
    }
    out
}

/// One line as sh, or why it has none.
fn step(line: &str, accounts: &Table, seen: &mut BTreeSet<String>) -> Result<String, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let field = |i: usize| fields.get(i).copied().filter(|f| *f != "-");
    let (Some(kind), Some(path)) = (fields.first(), field(1)) else {
        return Err("malformed".into());
    };
    let modifiers: String = kind.chars().skip(1).collect();
    let Some(t) = kind.chars().next() else {
        return Err("malformed".into());
    };
    let plus = modifiers.contains('+');
    if path.contains('%') {
        return Err("specifiers (%) are only known on the machine, not applied".into());
    }
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err("not an absolute path".into());
    }
    let glob = path.contains(['*', '?']);
    if glob && !matches!(t, 'z' | 'Z' | 'e') {
        return Err("a glob where tmpfiles.d takes one path, not applied".into());
    }
    if path.contains('[') {
        return Err("[ ] globs are not applied".into());
    }
    let under = format!("{}/", path.trim_end_matches('/'));
    // `w` writes kernel settings, which are not files of the image.
    let kernel = t == 'w' && (under.starts_with("/proc/sys/") || under.starts_with("/sys/"));
    let writable = kernel || WRITABLE.iter().any(|w| under.starts_with(w));
    if !writable {
        return Err(format!(
            "{} is in the read-only image, which has what the packages ship there",
            path
        ));
    }
    // The first line for a path wins, as with systemd-tmpfiles.
    if matches!(
        t,
        'd' | 'D' | 'f' | 'F' | 'L' | 'p' | 'c' | 'b' | 'C' | 'v' | 'q' | 'Q' | 'w'
    ) && !seen.insert(path.to_string())
    {
        return Err("an earlier line already handles this path".into());
    }
    let mode = match field(2) {
        None => None,
        Some(m) => {
            let m = m.trim_start_matches(['~', ':']);
            if m.len() > 4 || !m.chars().all(|c| c.is_digit(8)) {
                return Err(format!("mode {m:?} is not octal"));
            }
            Some(m.to_string())
        }
    };
    let uid = match field(3) {
        None => None,
        Some(u) => Some(match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => accounts
                .uid(u)
                .ok_or_else(|| format!("user {u} is not an account of the image"))?,
        }),
    };
    let gid = match field(4) {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => accounts
                .gid(g)
                .ok_or_else(|| format!("group {g} is not a group of the image"))?,
        }),
    };
    let arg = fields.get(6).map(|_| {
        // The argument is the rest of the line, spaces included.
        let mut rest = line;
        for _ in 0..6 {
            rest = rest.trim_start();
            rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
        }
        rest.trim().to_string()
    });
    let p = word(path, glob);
    let opt = |o: Option<String>| sq(&o.unwrap_or_default());
    let id = |o: Option<u32>| sq(&o.map(|n| n.to_string()).unwrap_or_default());
    // Created things are root's unless the line says otherwise.
    let owner = |o: Option<u32>| id(Some(o.unwrap_or(0)));
    Ok(match t {
        'd' | 'D' | 'v' | 'q' | 'Q' => format!(
            "dir {p} {} {} {}\n",
            opt(Some(mode.unwrap_or_else(|| "0755".into()))),
            owner(uid),
            owner(gid)
        ),
        'f' | 'F' => {
            let truncate = if t == 'F' || plus { "1" } else { "0" };
            let content = arg.map(|a| format!(" {}", sq(&a))).unwrap_or_default();
            format!(
                "file {p} {} {} {} {truncate}{content}\n",
                opt(Some(mode.unwrap_or_else(|| "0644".into()))),
                owner(uid),
                owner(gid)
            )
        }
        'w' => {
            let Some(a) = arg else {
                return Err("w without an argument".into());
            };
            let op = if plus { ">>" } else { ">" };
            format!("[ ! -e {p} ] || printf '%b' {} {op} {p}\n", sq(&a))
        }
        'L' => {
            let target = arg.unwrap_or_else(|| format!("/usr/share/factory{path}"));
            let replace = if plus {
                format!("rm -rf {p}; ")
            } else {
                String::new()
            };
            format!(
                "{replace}[ -e {p} ] || [ -L {p} ] || ln -s {} {p}\n",
                sq(&target)
            )
        }
        'C' => {
            let source = arg.unwrap_or_else(|| format!("/usr/share/factory{path}"));
            format!("[ -e {p} ] || cp -a \"$root\"{} {p}\n", sq(&source))
        }
        'p' => format!(
            "[ -e {p} ] || mkfifo -m {} {p} && attr {p} '' {} {}\n",
            opt(Some(mode.unwrap_or_else(|| "0644".into()))),
            id(uid),
            id(gid)
        ),
        'c' | 'b' => {
            let Some((major, minor)) = arg.as_deref().and_then(|a| a.split_once(':')) else {
                return Err("a device node without MAJOR:MINOR".into());
            };
            format!(
                "[ -e {p} ] || mknod {p} {t} {} {} && attr {p} {} {} {}\n",
                sq(major),
                sq(minor),
                opt(Some(mode.unwrap_or_else(|| "0644".into()))),
                owner(uid),
                owner(gid)
            )
        }
        'z' | 'e' | 'Z' => {
            let recursive = if t == 'Z' { " -R" } else { "" };
            format!(
                "for p in {p}; do [ ! -e \"$p\" ] || attr \"$p\" {} {} {}{recursive}; done\n",
                opt(mode),
                id(uid),
                id(gid)
            )
        }
        'x' | 'X' | 'r' | 'R' => {
            return Err("cleaning and removal are not needed: /run and /tmp start empty".into());
        }
        'a' | 'A' | 'h' | 'H' => {
            return Err("ACLs and file attributes are not applied".into());
        }
        other => return Err(format!("type {other} is not known")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::accounts::{Declared, allocate};
    use crate::packages::maintscript::{Effect, Primary, SysUser};
    use crate::spec::pakfile::Pakfile;

    fn table() -> Table {
        let d = Declared {
            effects: vec![(
                "postgresql-common".into(),
                Effect::User(SysUser {
                    name: "postgres".into(),
                    uid: None,
                    group: Primary::Own(None),
                    home: "/var/lib/postgresql".into(),
                    shell: "/bin/bash".into(),
                    gecos: String::new(),
                }),
            )],
            unconverted: vec![],
        };
        allocate(&Pakfile::parse("").unwrap(), &Default::default(), &d).unwrap()
    }

    fn script(files: &[(&str, &str)]) -> String {
        let mut tree = RootTree::default();
        let mut config = Vec::new();
        for (path, text) in files {
            if path.starts_with("etc/") {
                config.push(crate::image::sysconfig::text(
                    &format!("/{path}"),
                    text.to_string(),
                    0o644,
                ));
            } else {
                tree.put(
                    path,
                    crate::image::assemble::data(text.as_bytes().to_vec()),
                    0o644,
                    0,
                    0,
                );
            }
        }
        let f = render(&tree, &config, &table()).unwrap();
        let ConfigKind::File(b) = f.kind else {
            panic!()
        };
        assert_eq!((f.path.as_str(), f.mode), (SCRIPT, 0o755));
        String::from_utf8(b).unwrap()
    }

    const POSTGRESQL: &str = "# Directory for PostgreSQL sockets, lockfiles and stats tempfiles\nd /run/postgresql 2775 postgres postgres - -\n# Log directory\nd /var/log/postgresql 1775 root postgres - -\n";

    #[test]
    fn postgresql_common_and_systemd_lines() {
        let s = script(&[
            ("usr/lib/tmpfiles.d/postgresql-common.conf", POSTGRESQL),
            (
                "usr/lib/tmpfiles.d/var.conf",
                "q /var 0755 - - -\nL /var/run - - - - ../run\nf /var/log/wtmp 0664 root utmp -\nz /var/log/journal 2755 root systemd-journal - -\nd /usr/lib/x 0755 - - -\nZ /run/log/journal/%m ~2750 root root - -\nr /tmp/x\nw /proc/sys/x - - - - 1\n",
            ),
        ]);
        assert!(
            s.contains("dir \"$root\"'/run/postgresql' '2775' '100' '101'\n"),
            "{s}"
        );
        assert!(
            s.contains("dir \"$root\"'/var/log/postgresql' '1775' '0' '101'\n"),
            "{s}"
        );
        assert!(s.contains("ln -s '../run' \"$root\"'/var/run'"), "{s}");
        assert!(
            s.contains("file \"$root\"'/var/log/wtmp' '0664' '0' '43' 0\n"),
            "{s}"
        );
        assert!(
            s.contains("group systemd-journal is not a group of the image"),
            "{s}"
        );
        assert!(s.contains("/usr/lib/x is in the read-only image"), "{s}");
        assert!(s.contains("specifiers"), "{s}");
        assert!(s.contains("# line 7: cleaning"), "{s}");
        assert!(s.contains("dir \"$root\"'/var' '0755' '0' '0'\n"), "{s}");
        assert!(
            s.contains("printf '%b' '1' > \"$root\"'/proc/sys/x'"),
            "{s}"
        );
        check_sh(&s);
    }

    #[test]
    fn etc_replaces_a_package_file_of_the_same_name() {
        let s = script(&[
            ("usr/lib/tmpfiles.d/x.conf", "d /run/a 0700 root root -\n"),
            ("etc/tmpfiles.d/x.conf", "d /run/b 0700 root root -\n"),
        ]);
        assert!(!s.contains("/run/a") && s.contains("/run/b"), "{s}");
    }

    fn check_sh(s: &str) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("tmpfiles");
        std::fs::write(&path, s).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The script does what it says, under a scratch root (ownership
    /// only as root).
    #[test]
    fn runs_under_a_root() {
        let s = script(&[(
            "usr/lib/tmpfiles.d/t.conf",
            "d /run/p 2775 - - -\nf /var/f 0600 - - - hello\\n\nL /var/l - - - - /run/p\nz /var/f 0640 - - -\nd /usr/no 0755 - - -\nf /etc/it's 0644 - - -\n",
        )]);
        check_sh(&s);
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("var")).unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        let path = d.path().join("tmpfiles");
        std::fs::write(&path, &s).unwrap();
        let as_root = rustix::process::geteuid().is_root();
        let out = std::process::Command::new("sh")
            .arg(&path)
            .env("PAK_TMPFILES_ROOT", d.path())
            .output()
            .unwrap();
        if as_root {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(d.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("run/p"), 0o2775);
        assert_eq!(mode("var/f"), 0o640);
        assert_eq!(std::fs::read(d.path().join("var/f")).unwrap(), b"hello\n");
        assert_eq!(
            std::fs::read_link(d.path().join("var/l")).unwrap(),
            std::path::Path::new("/run/p")
        );
        assert!(d.path().join("etc/it's").is_file());
        assert!(!d.path().join("usr").exists());
    }
}
