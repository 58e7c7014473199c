//! The account databases of an image: `/etc/passwd`, `/etc/group`,
//! `/etc/shadow`.
//!
//! Three sources, in this order of precedence: the Pakfile's `[users]` and
//! `[groups]`; Debian's static accounts (base-passwd's numbers, which
//! Debian packages rely on: nginx runs as www-data, 33); and the system
//! users and groups packages create in their maintainer scripts or declare
//! in `sysusers.d` (read by [`crate::packages::maintscript`]).
//!
//! Ids that are not fixed by any of them are allocated: 100–999 for the
//! packages' system accounts, from 1000 for the Pakfile's users, each the
//! lowest free in name order. An id, once given, must stay: files on the
//! data partition (`/var/lib/postgresql`) keep their owner's number across
//! generations. So every allocated id is pinned in the lock's `[accounts]`
//! and taken from there next time, and a pin is never reused for another
//! account even when its own is gone (its files may still be on `/var`).
//! Allocation reads nothing but the lock, the packages and the Pakfile, in
//! sorted order, so the same inputs give the same ids on any host.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};

use crate::lock::Accounts as Pins;
use crate::packages::maintscript::{Effect, Primary, SysUser, Unconverted};
use crate::spec::pakfile::Pakfile;

/// Debian's base-passwd users: name, uid, gid, gecos, home, shell. root
/// gets /bin/sh: an image need not have bash.
const STATIC_USERS: &[(&str, u32, u32, &str, &str, &str)] = &[
    ("root", 0, 0, "root", "/root", "/bin/sh"),
    ("daemon", 1, 1, "daemon", "/usr/sbin", "/usr/sbin/nologin"),
    ("bin", 2, 2, "bin", "/bin", "/usr/sbin/nologin"),
    ("sys", 3, 3, "sys", "/dev", "/usr/sbin/nologin"),
    ("sync", 4, 65534, "sync", "/bin", "/bin/sync"),
    ("games", 5, 60, "games", "/usr/games", "/usr/sbin/nologin"),
    ("man", 6, 12, "man", "/var/cache/man", "/usr/sbin/nologin"),
    ("lp", 7, 7, "lp", "/var/spool/lpd", "/usr/sbin/nologin"),
    ("mail", 8, 8, "mail", "/var/mail", "/usr/sbin/nologin"),
    ("news", 9, 9, "news", "/var/spool/news", "/usr/sbin/nologin"),
    (
        "uucp",
        10,
        10,
        "uucp",
        "/var/spool/uucp",
        "/usr/sbin/nologin",
    ),
    ("proxy", 13, 13, "proxy", "/bin", "/usr/sbin/nologin"),
    (
        "www-data",
        33,
        33,
        "www-data",
        "/var/www",
        "/usr/sbin/nologin",
    ),
    (
        "backup",
        34,
        34,
        "backup",
        "/var/backups",
        "/usr/sbin/nologin",
    ),
    (
        "list",
        38,
        38,
        "Mailing List Manager",
        "/var/list",
        "/usr/sbin/nologin",
    ),
    ("irc", 39, 39, "ircd", "/run/ircd", "/usr/sbin/nologin"),
    ("_apt", 42, 65534, "", "/nonexistent", "/usr/sbin/nologin"),
    (
        "nobody",
        65534,
        65534,
        "nobody",
        "/nonexistent",
        "/usr/sbin/nologin",
    ),
];

/// Debian's base-passwd groups.
const STATIC_GROUPS: &[(&str, u32)] = &[
    ("root", 0),
    ("daemon", 1),
    ("bin", 2),
    ("sys", 3),
    ("adm", 4),
    ("tty", 5),
    ("disk", 6),
    ("lp", 7),
    ("mail", 8),
    ("news", 9),
    ("uucp", 10),
    ("man", 12),
    ("proxy", 13),
    ("kmem", 15),
    ("dialout", 20),
    ("fax", 21),
    ("voice", 22),
    ("cdrom", 24),
    ("floppy", 25),
    ("tape", 26),
    ("sudo", 27),
    ("audio", 29),
    ("dip", 30),
    ("www-data", 33),
    ("backup", 34),
    ("operator", 37),
    ("list", 38),
    ("irc", 39),
    ("src", 40),
    ("shadow", 42),
    ("utmp", 43),
    ("video", 44),
    ("sasl", 45),
    ("plugdev", 46),
    ("staff", 50),
    ("games", 60),
    ("users", 100),
    ("nogroup", 65534),
];

const SYSTEM_IDS: std::ops::RangeInclusive<u32> = 100..=999;
const USER_IDS: std::ops::RangeInclusive<u32> = 1000..=59999;

/// What the packages of an image declare: accounts, and the steps of their
/// scripts pak did not carry out.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// (package, effect), in package order then script order.
    pub effects: Vec<(String, Effect)>,
    pub unconverted: Vec<(String, Unconverted)>,
}

impl Declared {
    /// Reads one package's maintainer scripts (by name) and the
    /// `sysusers.d` files it ships (path, text).
    pub fn add_package(
        &mut self,
        package: &str,
        scripts: &BTreeMap<String, String>,
        sysusers: &[(String, String)],
    ) {
        use crate::packages::maintscript;
        let mut scans = Vec::new();
        for name in maintscript::INSTALL_SCRIPTS {
            if let Some(text) = scripts.get(*name) {
                scans.push(maintscript::scan(name, text));
            }
        }
        for (path, text) in sysusers {
            scans.push(maintscript::sysusers(&format!("/{path}"), text));
        }
        for s in scans {
            self.effects
                .extend(s.effects.into_iter().map(|e| (package.to_string(), e)));
            self.unconverted
                .extend(s.unconverted.into_iter().map(|u| (package.to_string(), u)));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
    /// The shadow password field.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The image's accounts, with the ids the lock must pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Sorted by uid.
    pub users: Vec<UserRow>,
    /// Sorted by gid.
    pub groups: Vec<GroupRow>,
    /// Every allocated id (old pins included): the lock's `[accounts]`.
    pub pins: Pins,
}

/// A user before its ids are known.
struct Pending {
    uid: Option<u32>,
    /// Allocate from the system range (a package's) or the users' range.
    system: bool,
    group: Primary,
    gecos: String,
    home: String,
    shell: String,
    hash: String,
    /// Who asked for it, for error messages.
    from: String,
}

impl Table {
    pub fn uid(&self, name: &str) -> Option<u32> {
        self.users.iter().find(|u| u.name == name).map(|u| u.uid)
    }

    pub fn gid(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|g| g.name == name).map(|g| g.gid)
    }

    pub fn passwd(&self) -> String {
        self.users
            .iter()
            .map(|u| {
                format!(
                    "{}:x:{}:{}:{}:{}:{}\n",
                    u.name, u.uid, u.gid, u.gecos, u.home, u.shell
                )
            })
            .collect()
    }

    pub fn shadow(&self) -> String {
        self.users
            .iter()
            .map(|u| format!("{}:{}:0:0:99999:7:::\n", u.name, u.hash))
            .collect()
    }

    /// The same accounts as `sysusers.d(5)` lines, for systemd images:
    /// systemd-sysusers adds at boot whatever `/etc/passwd` and
    /// `/etc/group` lack, with these ids. They lack accounts when the
    /// machine's /etc holds its own copy of them (the /etc overlay keeps a
    /// changed file across generations), and a later generation's package
    /// brings a new account.
    pub fn sysusers(&self) -> String {
        let field = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else if s.contains(char::is_whitespace) || s.contains('"') {
                format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
            } else {
                s.to_string()
            }
        };
        let mut out = String::from(
            "# Written by pak: the image's accounts, as /etc/passwd and /etc/group have them.\n",
        );
        for g in &self.groups {
            out.push_str(&format!("g {} {}\n", g.name, g.gid));
        }
        for u in &self.users {
            out.push_str(&format!(
                "u {} {}:{} {} {} {}\n",
                u.name,
                u.uid,
                u.gid,
                field(&u.gecos),
                field(&u.home),
                field(&u.shell)
            ));
        }
        for g in &self.groups {
            for m in &g.members {
                out.push_str(&format!("m {m} {}\n", g.name));
            }
        }
        out
    }

    pub fn group(&self) -> String {
        self.groups
            .iter()
            .map(|g| format!("{}:x:{}:{}\n", g.name, g.gid, g.members.join(",")))
            .collect()
    }
}

/// The accounts of an image of `pakfile` whose packages declare
/// `declared`, with the ids `pins` (the lock's `[accounts]`) keep.
pub fn allocate(pakfile: &Pakfile, pins: &Pins, declared: &Declared) -> Result<Table> {
    let mut users: BTreeMap<String, Pending> = BTreeMap::new();
    // name -> (fixed gid, who asked)
    let mut groups: BTreeMap<String, (Option<u32>, String)> = BTreeMap::new();
    for (name, gid) in STATIC_GROUPS {
        groups.insert(
            name.to_string(),
            (Some(*gid), "Debian's base-passwd".into()),
        );
    }
    for (name, g) in &pakfile.groups {
        groups.insert(name.clone(), (Some(g.gid), format!("[groups.{name}]")));
    }
    for (name, uid, gid, gecos, home, shell) in STATIC_USERS {
        users.insert(
            name.to_string(),
            Pending {
                uid: Some(*uid),
                system: true,
                group: Primary::Id(*gid),
                gecos: gecos.to_string(),
                home: home.to_string(),
                shell: shell.to_string(),
                // Debian's own: no password matches, keys may log in.
                hash: "*".into(),
                from: "Debian's base-passwd".into(),
            },
        );
    }
    for (name, u) in &pakfile.users {
        let group = match u.gid {
            Some(gid) => Primary::Id(gid),
            None => Primary::Own(u.uid),
        };
        users.insert(
            name.clone(),
            Pending {
                uid: u.uid,
                system: false,
                group,
                gecos: name.clone(),
                home: u.home.clone().unwrap_or_else(|| format!("/home/{name}")),
                shell: u.shell.clone().unwrap_or_else(|| "/bin/sh".into()),
                // `!` locks the account: sshd refuses even a key for it.
                // `*` only says no password matches, so key logins work.
                hash: match (&u.password_hash, u.login) {
                    (_, false) => "!".into(),
                    (Some(h), true) => h.clone(),
                    (None, true) => "*".into(),
                },
                from: format!("[users.{name}]"),
            },
        );
    }
    // What packages declare comes after, and never replaces an account
    // the Pakfile or base-passwd defines: those are the declared truth.
    let mut members: BTreeSet<(String, String)> = BTreeSet::new();
    for (package, effect) in &declared.effects {
        match effect {
            Effect::Group { name, gid } => {
                groups
                    .entry(name.clone())
                    .or_insert_with(|| (*gid, format!("package {package}")));
            }
            Effect::User(SysUser {
                name,
                uid,
                group,
                home,
                shell,
                gecos,
            }) => {
                if let Primary::Own(gid) = group {
                    groups
                        .entry(name.clone())
                        .or_insert_with(|| (*gid, format!("package {package}")));
                }
                users.entry(name.clone()).or_insert_with(|| Pending {
                    uid: *uid,
                    system: true,
                    group: group.clone(),
                    gecos: gecos.clone(),
                    home: home.clone(),
                    shell: shell.clone(),
                    // A daemon's account: nothing logs in to it.
                    hash: "!".into(),
                    from: format!("package {package}"),
                });
            }
            Effect::Member { user, group } => {
                members.insert((group.clone(), user.clone()));
            }
        }
    }
    for (name, p) in &users {
        if let Primary::Own(_) = p.group
            && !groups.contains_key(name)
        {
            groups.insert(name.clone(), (None, p.from.clone()));
        }
    }

    // Fixed ids first, each claimed once.
    let mut uid_of: BTreeMap<String, u32> = BTreeMap::new();
    let mut uid_owner: BTreeMap<u32, String> = BTreeMap::new();
    for (name, p) in &users {
        if let Some(uid) = p.uid {
            claim(
                &mut uid_owner,
                uid,
                name,
                "uid",
                &p.from,
                &users_from(&users),
            )?;
            uid_of.insert(name.clone(), uid);
        }
    }
    let mut gid_of: BTreeMap<String, u32> = BTreeMap::new();
    let mut gid_owner: BTreeMap<u32, String> = BTreeMap::new();
    for (name, (gid, from)) in &groups {
        if let Some(gid) = gid {
            claim(
                &mut gid_owner,
                *gid,
                name,
                "gid",
                from,
                &groups_from(&groups),
            )?;
            gid_of.insert(name.clone(), *gid);
        }
    }
    // Every pin is reserved, whether or not its account is still here.
    let mut out_pins = pins.clone();
    let reserved_uids: BTreeSet<u32> = pins.users.values().copied().collect();
    let reserved_gids: BTreeSet<u32> = pins.groups.values().copied().collect();
    for (name, p) in &users {
        if uid_of.contains_key(name) {
            continue;
        }
        let uid = match pins.users.get(name) {
            Some(&uid) => uid,
            None => {
                let range = if p.system { SYSTEM_IDS } else { USER_IDS };
                let Some(uid) = range
                    .clone()
                    .find(|id| !uid_owner.contains_key(id) && !reserved_uids.contains(id))
                else {
                    bail!("no free uid left in {range:?} for {name} ({})", p.from);
                };
                out_pins.users.insert(name.clone(), uid);
                uid
            }
        };
        if let Some(other) = uid_owner.get(&uid) {
            bail!(
                "the lock pins uid {uid} for {name}, but {other} has it now; give one of them another id in the Pakfile, or remove the pin from the lock's [accounts] (files {name} owns on /var then change owner)"
            );
        }
        uid_owner.insert(uid, name.clone());
        uid_of.insert(name.clone(), uid);
    }
    let dynamic: Vec<&String> = groups.keys().filter(|n| !gid_of.contains_key(*n)).collect();
    for name in dynamic {
        let gid = match pins.groups.get(name) {
            Some(&gid) => gid,
            None => {
                // A user's own group takes the user's number when free.
                let same = uid_of
                    .get(name)
                    .copied()
                    .filter(|id| !gid_owner.contains_key(id) && !reserved_gids.contains(id));
                let system = users.get(name).is_none_or(|p| p.system);
                let range = if system { SYSTEM_IDS } else { USER_IDS };
                let Some(gid) = same.or_else(|| {
                    range
                        .clone()
                        .find(|id| !gid_owner.contains_key(id) && !reserved_gids.contains(id))
                }) else {
                    bail!("no free gid left in {range:?} for group {name}");
                };
                out_pins.groups.insert(name.clone(), gid);
                gid
            }
        };
        if let Some(other) = gid_owner.get(&gid) {
            bail!(
                "the lock pins gid {gid} for group {name}, but group {other} has it now; give one of them another gid in the Pakfile, or remove the pin from the lock's [accounts]"
            );
        }
        gid_owner.insert(gid, name.clone());
        gid_of.insert(name.clone(), gid);
    }

    let mut rows = Vec::new();
    for (name, p) in users {
        let gid = match &p.group {
            Primary::Id(gid) => *gid,
            Primary::Own(_) => gid_of[&name],
            Primary::Named(g) => match gid_of.get(g) {
                Some(gid) => *gid,
                None => bail!(
                    "{} wants {name}'s primary group to be {g:?}, which nothing defines; add it to the Pakfile: [groups.{g}] gid = ...",
                    p.from
                ),
            },
        };
        rows.push(UserRow {
            uid: uid_of[&name],
            name,
            gid,
            gecos: p.gecos,
            home: p.home,
            shell: p.shell,
            hash: p.hash,
        });
    }
    rows.sort_by_key(|u| u.uid);
    for (name, u) in &pakfile.users {
        for g in &u.groups {
            if !gid_of.contains_key(g) {
                bail!(
                    "[users.{name}] is in group {g:?}, which no [groups] entry, base-passwd group or package defines"
                );
            }
            members.insert((g.clone(), name.clone()));
        }
    }
    let mut group_rows: Vec<GroupRow> = gid_of
        .iter()
        .map(|(name, gid)| GroupRow {
            name: name.clone(),
            gid: *gid,
            // A package adding its user to a group that is not there (the
            // script checks `getent group` first) adds nothing.
            members: members
                .iter()
                .filter(|(g, u)| g == name && uid_of.contains_key(u))
                .map(|(_, u)| u.clone())
                .collect(),
        })
        .collect();
    group_rows.sort_by_key(|g| g.gid);
    Ok(Table {
        users: rows,
        groups: group_rows,
        pins: out_pins,
    })
}

fn users_from(users: &BTreeMap<String, Pending>) -> BTreeMap<String, String> {
    users
        .iter()
        .map(|(n, p)| (n.clone(), p.from.clone()))
        .collect()
}

fn groups_from(groups: &BTreeMap<String, (Option<u32>, String)>) -> BTreeMap<String, String> {
    groups
        .iter()
        .map(|(n, (_, f))| (n.clone(), f.clone()))
        .collect()
}

fn claim(
    owner: &mut BTreeMap<u32, String>,
    id: u32,
    name: &str,
    what: &str,
    from: &str,
    sources: &BTreeMap<String, String>,
) -> Result<()> {
    if let Some(other) = owner.get(&id) {
        bail!(
            "{from} wants {what} {id} for {name}, which {other} already has ({}); give one of them another {what}",
            sources.get(other).map(String::as_str).unwrap_or("")
        );
    }
    owner.insert(id, name.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::maintscript::Effect;

    fn declared(effects: &[(&str, Effect)]) -> Declared {
        Declared {
            effects: effects
                .iter()
                .map(|(p, e)| (p.to_string(), e.clone()))
                .collect(),
            unconverted: vec![],
        }
    }

    fn sys(name: &str, group: Primary) -> Effect {
        Effect::User(SysUser {
            name: name.into(),
            uid: None,
            group,
            home: format!("/var/lib/{name}"),
            shell: "/usr/sbin/nologin".into(),
            gecos: String::new(),
        })
    }

    #[test]
    fn base_passwd_is_complete() {
        let t = allocate(
            &Pakfile::parse("").unwrap(),
            &Pins::default(),
            &Declared::default(),
        )
        .unwrap();
        assert_eq!(t.users.len(), 18);
        assert_eq!(t.gid("plugdev"), Some(46));
        assert_eq!(t.gid("nogroup"), Some(65534));
        assert!(
            t.passwd()
                .contains("_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n")
        );
        assert!(t.passwd().starts_with("root:x:0:0:root:/root:/bin/sh\n"));
        assert!(t.pins.users.is_empty() && t.pins.groups.is_empty());
    }

    #[test]
    fn package_users_get_system_ids_in_name_order_and_keep_them() {
        let p = Pakfile::parse("").unwrap();
        let d = declared(&[
            ("postgresql-common", sys("postgres", Primary::Own(None))),
            (
                "openssh-server",
                sys("sshd", Primary::Named("nogroup".into())),
            ),
        ]);
        let t = allocate(&p, &Pins::default(), &d).unwrap();
        assert_eq!(
            (t.uid("postgres"), t.gid("postgres")),
            (Some(100), Some(101)),
            "gid 100 is base-passwd's users"
        );
        assert_eq!(t.uid("sshd"), Some(101));
        assert!(
            t.passwd()
                .contains("sshd:x:101:65534::/var/lib/sshd:/usr/sbin/nologin\n")
        );
        assert!(t.shadow().contains("postgres:!:"));
        assert_eq!(
            t.pins.users,
            BTreeMap::from([("postgres".into(), 100), ("sshd".into(), 101)])
        );
        assert_eq!(t.pins.groups, BTreeMap::from([("postgres".into(), 101)]));

        // A new package whose user sorts first does not move them.
        let d2 = declared(&[
            ("a", sys("aardvark", Primary::Own(None))),
            ("postgresql-common", sys("postgres", Primary::Own(None))),
            (
                "openssh-server",
                sys("sshd", Primary::Named("nogroup".into())),
            ),
        ]);
        let t2 = allocate(&p, &t.pins, &d2).unwrap();
        assert_eq!(t2.uid("postgres"), Some(100));
        assert_eq!(t2.uid("sshd"), Some(101));
        assert_eq!(t2.uid("aardvark"), Some(102));
        // Without the pins, it would have.
        assert_eq!(
            allocate(&p, &Pins::default(), &d2).unwrap().uid("postgres"),
            Some(101)
        );

        // A package gone: its pin stays reserved, never given to another.
        let d3 = declared(&[("z", sys("zebra", Primary::Own(None)))]);
        let t3 = allocate(&p, &t2.pins, &d3).unwrap();
        assert_eq!(t3.uid("zebra"), Some(103));
        assert_eq!(t3.pins.users["postgres"], 100);
    }

    #[test]
    fn pakfile_users_and_shadow_semantics() {
        let p = Pakfile::parse(
            "[users.alice]\nssh-authorized-keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ1 a\"]\ngroups = [\"sudo\", \"postgres\"]\n[users.svc]\nlogin = false\n[users.bob]\nuid = 1500\nlogin = false\n[groups.ops]\ngid = 2000\n",
        )
        .unwrap();
        let d = declared(&[("pg", sys("postgres", Primary::Own(None)))]);
        let t = allocate(&p, &Pins::default(), &d).unwrap();
        assert_eq!((t.uid("alice"), t.gid("alice")), (Some(1000), Some(1000)));
        assert_eq!(t.uid("svc"), Some(1001));
        assert_eq!(t.uid("bob"), Some(1500));
        assert!(t.shadow().contains("alice:*:"), "key logins need `*`");
        assert!(t.shadow().contains("svc:!:"));
        assert!(t.group().contains("sudo:x:27:alice\n"));
        assert!(t.group().contains("postgres:x:101:alice\n"));
        assert!(t.group().contains("ops:x:2000:\n"));
        // The same accounts for systemd-sysusers: groups first, members last.
        let su = t.sysusers();
        assert!(
            su.contains("\ng ops 2000\n") && su.contains("\ng postgres 101\n"),
            "{su}"
        );
        assert!(
            su.contains("\nu alice 1000:1000 alice /home/alice /bin/sh\n"),
            "{su}"
        );
        assert!(
            su.contains("\nu list 38:38 \"Mailing List Manager\" /var/list /usr/sbin/nologin\n"),
            "{su}"
        );
        assert!(
            su.contains("\nu _apt 42:65534 - /nonexistent /usr/sbin/nologin\n"),
            "{su}"
        );
        assert!(su.contains("\nm alice sudo\n"), "{su}");
        assert!(su.find("\ng ").unwrap() < su.find("\nu ").unwrap());
        assert!(su.rfind("\nu ").unwrap() < su.find("\nm ").unwrap());
        assert_eq!(
            t.pins.users.get("bob"),
            None,
            "a fixed uid is the Pakfile's, not the lock's"
        );
    }

    #[test]
    fn the_pakfile_wins_over_a_package_and_clashes_are_named() {
        let p = Pakfile::parse("[users.postgres]\nuid = 5432\nlogin = false\n").unwrap();
        let d = declared(&[("pg", sys("postgres", Primary::Own(None)))]);
        let t = allocate(&p, &Pins::default(), &d).unwrap();
        assert_eq!(t.uid("postgres"), Some(5432));

        let p = Pakfile::parse("[users.bob]\nuid = 33\nlogin = false\n").unwrap();
        let err = allocate(&p, &Pins::default(), &Declared::default()).unwrap_err();
        assert!(err.to_string().contains("www-data"), "{err}");

        let pins = Pins {
            users: BTreeMap::from([("postgres".into(), 1000)]),
            groups: BTreeMap::new(),
        };
        let p = Pakfile::parse("[users.carol]\nuid = 1000\nlogin = false\n").unwrap();
        let err = allocate(&p, &pins, &d).unwrap_err().to_string();
        assert!(
            err.contains("pins uid 1000 for postgres") && err.contains("carol"),
            "{err}"
        );

        let d = declared(&[("x", sys("x", Primary::Named("nope".into())))]);
        let err = allocate(&Pakfile::parse("").unwrap(), &Pins::default(), &d).unwrap_err();
        assert!(err.to_string().contains("package x") && err.to_string().contains("[groups.nope]"));
    }
}
