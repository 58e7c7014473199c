//! End to end: Debian daemons' system users, created by their maintainer
//! scripts under dpkg, exist in a pak image with ids that stay across
//! generations, and what pak did not convert is listed with real lines.

mod common;
use common::pak_e2e;

use std::path::Path;

fn pakfile(extra: &str) -> String {
    format!(
        "[system]\nname = \"db\"\narch = \"x86_64\"\nprofiles = [\"base\"]\n\n[[repository]]\nname = \"debian\"\nkind = \"apt\"\n\n[packages]\npostgresql-common = \"*\"\nopenssh-server = \"*\"\n{extra}"
    )
}

fn read(generation: &Path, path: &str) -> String {
    let f = std::fs::File::open(generation).unwrap();
    let mut r = pak::image::squashfs::Reader::open(f, 0).unwrap();
    String::from_utf8(r.read(path).unwrap()).unwrap()
}

fn uid(passwd: &str, name: &str) -> u32 {
    let line = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in\n{passwd}"));
    line.split(':').nth(2).unwrap().parse().unwrap()
}

#[test]
fn debian_system_users_exist_and_keep_their_ids() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("Pakfile");
    std::fs::write(&file, pakfile("")).unwrap();
    let gen1 = d.path().join("gen1.sqfs");
    let out = pak_e2e(&[
        "--pakfile",
        file.to_str().unwrap(),
        "build",
        "--generation",
        gen1.to_str().unwrap(),
    ]);
    assert!(out.contains("+ user postgres (uid "), "{out}");
    assert!(out.contains("were not converted"), "{out}");
    let passwd = read(&gen1, "etc/passwd");
    let (postgres, sshd) = (uid(&passwd, "postgres"), uid(&passwd, "sshd"));
    assert!(
        (100..1000).contains(&postgres) && (100..1000).contains(&sshd),
        "{passwd}"
    );
    assert!(
        passwd.contains(":/var/lib/postgresql:/bin/bash\n"),
        "{passwd}"
    );
    let lock = std::fs::read_to_string(d.path().join("Pakfile.lock")).unwrap();
    assert!(lock.contains(&format!("postgres = {postgres}")), "{lock}");
    assert!(
        read(&gen1, "usr/lib/pak/Pakfile.lock").contains(&format!("postgres = {postgres}")),
        "the generation carries the pins"
    );
    let tmpfiles = read(&gen1, "usr/lib/pak/tmpfiles");
    assert!(
        tmpfiles.contains(&format!(
            "dir \"$root\"'/run/postgresql' '2775' '{postgres}'"
        )),
        "{tmpfiles}"
    );

    // The unconverted list names real lines of the real scripts.
    let list = std::fs::read_to_string(d.path().join("gen1.sqfs.unconverted.txt")).unwrap();
    let chown = list
        .lines()
        .find(|l| {
            l.starts_with("postgresql-common postinst:")
                && l.ends_with("chown postgres:postgres /etc/postgresql")
        })
        .unwrap_or_else(|| panic!("{list}"));
    let line: usize = chown.split(':').nth(1).unwrap().parse().unwrap();
    let store = common::e2e_store();
    let info = walk_find(&store.join("store"), "postgresql-common-", ".PAKINFO");
    let text = std::fs::read_to_string(info).unwrap();
    let info = pak::packages::pakinfo::PakInfo::from_toml(&text).unwrap();
    let postinst = &info.origin.unwrap().scripts["postinst"];
    assert_eq!(
        postinst.lines().nth(line - 1).unwrap().trim(),
        "chown postgres:postgres /etc/postgresql"
    );
    // The accounts became configuration, so their lines are not listed.
    assert!(
        !list
            .lines()
            .filter(|l| l.starts_with("postgresql-common ") || l.starts_with("openssh-server "))
            .any(|l| l.contains("adduser") || l.contains("addgroup")),
        "{list}"
    );

    // Another package with a system user, whose name sorts before both.
    std::fs::write(&file, pakfile("dbus = \"*\"\n")).unwrap();
    let gen2 = d.path().join("gen2.sqfs");
    pak_e2e(&[
        "--pakfile",
        file.to_str().unwrap(),
        "build",
        "--generation",
        gen2.to_str().unwrap(),
        "--number",
        "2",
    ]);
    let passwd2 = read(&gen2, "etc/passwd");
    assert_eq!(uid(&passwd2, "postgres"), postgres, "{passwd2}");
    assert_eq!(uid(&passwd2, "sshd"), sshd, "{passwd2}");
    assert!(passwd2.contains("messagebus:"), "{passwd2}");
}

/// The store entry whose name starts with `prefix`, and its file `name`.
fn walk_find(store: &Path, prefix: &str, name: &str) -> std::path::PathBuf {
    for e in std::fs::read_dir(store).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with(prefix) && e.path().join(name).is_file() {
            return e.path().join(name);
        }
    }
    panic!("no {prefix}* in {}", store.display())
}
