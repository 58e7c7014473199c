//! What a Debian package's maintainer scripts would do, read rather than run.
//!
//! pak never runs a `.deb`'s scripts: an image is assembled, not installed.
//! What the scripts of daemons do that an image needs is nearly always one
//! of a few debhelper idioms (create a system user and group), or is
//! declared in files the package ships (`sysusers.d`, `tmpfiles.d`), which
//! pak turns into configuration. This module reads the scripts loosely —
//! line by line, no shell semantics beyond continuations, quotes and plain
//! `VAR=value` assignments — and sorts every line into one of three kinds:
//! an [`Effect`] pak carries out declaratively, a line known not to matter
//! for an image (control flow, debconf, service enabling, conffile
//! migrations…), or an [`Unconverted`] step, reported with its package,
//! script and line so a user can decide whether the Pakfile must add it.
//!
//! Only `preinst` and `postinst` are read: they are what installing runs.
//! `prerm`/`postrm` run on removal or upgrade, which never happens to an
//! image, and `config` only asks debconf questions.

use std::collections::BTreeMap;

/// The scripts whose steps an image would have needed.
pub const INSTALL_SCRIPTS: &[&str] = &["preinst", "postinst"];

/// A system user a package creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysUser {
    pub name: String,
    /// A fixed id the package asks for; `None`: pak allocates one.
    pub uid: Option<u32>,
    pub group: Primary,
    pub home: String,
    pub shell: String,
    pub gecos: String,
}

/// A system user's primary group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Primary {
    /// A group of the user's own name (`adduser --group`, `useradd`'s
    /// default, `sysusers.d`'s `u`), with this fixed gid if any.
    Own(Option<u32>),
    /// An existing group (`--ingroup`, `useradd -g`).
    Named(String),
    /// A numeric gid (`--gid N`, `u name uid:gid`).
    Id(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    User(SysUser),
    Group {
        name: String,
        gid: Option<u32>,
    },
    /// `adduser USER GROUP`, sysusers.d's `m`.
    Member {
        user: String,
        group: String,
    },
}

/// A step pak did not turn into configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconverted {
    /// `postinst`, or the path of a sysusers.d file in the package.
    pub script: String,
    /// 1-based, the first line of a continued command.
    pub line: usize,
    /// The command, continuations joined, trimmed.
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub effects: Vec<Effect>,
    pub unconverted: Vec<Unconverted>,
}

/// Commands that change nothing an image keeps, or whose effect pak
/// produces another way. Each with why:
const IRRELEVANT: &[&str] = &[
    // Shell control flow and built-ins without lasting effect.
    "set",
    "exit",
    "return",
    "shift",
    "true",
    "false",
    ":",
    "echo",
    "printf",
    "[",
    "test",
    "local",
    "trap",
    "umask",
    "export",
    "unset",
    "break",
    "continue",
    "wait",
    "cat",
    "grep",
    "sed",
    "which",
    "command",
    "type",
    "readlink",
    "basename",
    "dirname",
    "sleep",
    // Checks: account and version queries only decide what to do next.
    "getent",
    "id",
    "dpkg-query",
    "dpkg-statoverride",
    "dpkg-architecture",
    // debconf: the questions and their answers (pak asks none).
    ".",
    "db_version",
    "db_get",
    "db_set",
    "db_input",
    "db_go",
    "db_stop",
    "db_purge",
    "db_fset",
    "db_fget",
    "db_reset",
    "db_register",
    "db_unregister",
    "db_subst",
    "db_title",
    "db_capb",
    "db_metaget",
    "db_beginblock",
    "db_endblock",
    "db_settitle",
    // Services: pak's init starts what [services] declares.
    "deb-systemd-helper",
    "deb-systemd-invoke",
    "invoke-rc.d",
    "update-rc.d",
    "systemctl",
    "service",
    "start-stop-daemon",
    "runit-helper",
    "/lib/runit-helper/runit-helper",
    // Triggers and caches pak builds itself (ld.so.cache, modules.dep).
    "dpkg-trigger",
    "ldconfig",
    "depmod",
    "update-initramfs",
    // Conffile migration between package versions: an image has no past.
    "dpkg-maintscript-helper",
    // What sysusers.d and tmpfiles.d declare, pak reads from the files.
    "systemd-sysusers",
    "systemd-tmpfiles",
    // The machine's identity is made at first boot, not in the image.
    "systemd-machine-id-setup",
];

/// Words that wrap the command that follows (`in_sysroot adduser ...`).
const WRAPPERS: &[&str] = &[
    "in_sysroot",
    "!",
    "then",
    "else",
    "do",
    "{",
    "(",
    "if",
    "elif",
    "while",
    "until",
    "exec",
];

/// Words that are pure syntax when they start a command.
const SYNTAX: &[&str] = &[
    "fi", "done", "esac", "}", ")", ";;", "else", "then", "do", "case",
];

/// Reads one maintainer script of `package`.
pub fn scan(script: &str, text: &str) -> Scan {
    let mut out = Scan::default();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut heredoc: Option<String> = None;
    let lines = logical_lines(text);
    // Calls of the script's own functions are judged by their bodies.
    let functions: Vec<String> = lines
        .iter()
        .filter_map(|(_, l)| {
            let (name, rest) = l.trim().split_once('(')?;
            let name = name.trim();
            let ok = rest.trim_start().starts_with(')')
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            ok.then(|| name.to_string())
        })
        .collect();
    for (line, joined) in lines {
        if let Some(end) = &heredoc {
            if joined.trim() == end {
                heredoc = None;
            }
            continue;
        }
        if let Some(pos) = joined.find("<<") {
            let tag = joined[pos + 2..]
                .trim_start_matches('-')
                .trim()
                .trim_matches(|c| c == '\'' || c == '"')
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
            if !tag.is_empty() {
                heredoc = Some(tag);
            }
        }
        let trimmed = joined.trim();
        // A case pattern: `configure)`, `abort-upgrade|abort-remove)`.
        if trimmed.ends_with(')')
            && !trimmed.contains(char::is_whitespace)
            && !trimmed.contains('(')
        {
            continue;
        }
        let mut relevant = false;
        for words in commands(&joined) {
            let words = substitute(&words, &vars);
            match classify(&words, &mut vars, &functions) {
                Kind::Irrelevant => {}
                Kind::Effect(e) => out.effects.push(e),
                Kind::Unconverted => relevant = true,
            }
        }
        if relevant {
            out.unconverted.push(Unconverted {
                script: script.to_string(),
                line,
                text: joined.split_whitespace().collect::<Vec<_>>().join(" "),
            });
        }
    }
    out
}

enum Kind {
    Irrelevant,
    Effect(Effect),
    Unconverted,
}

/// The script's lines with `\` continuations and quotes spanning lines
/// joined, numbered by their first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let (n, mut acc) = current.take().unwrap_or((i + 1, String::new()));
        let trimmed = raw.trim_end();
        if let Some(body) = trimmed.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            current = Some((n, acc));
            continue;
        }
        acc.push_str(trimmed);
        if open_quote(&acc) {
            acc.push('\n');
            current = Some((n, acc));
            continue;
        }
        out.push((n, acc));
    }
    if let Some(rest) = current {
        out.push(rest);
    }
    out
}

/// Whether a quote opened in `s` is still open at its end.
fn open_quote(s: &str) -> bool {
    let mut quote = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '#') => return false,
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None | Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    quote.is_some()
}

/// Splits a line into simple commands (at `;`, `&&`, `||`, `|`, outside
/// quotes), each as words with quotes removed. A `#` starting a word ends
/// the line.
fn commands(line: &str) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    let flush = |word: &mut String, in_word: &mut bool, words: &mut Vec<String>| {
        if *in_word {
            words.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else if c == '\\' && q == '"' {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => {
                quote = Some(c);
                in_word = true;
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    in_word = true;
                }
            }
            '#' if !in_word => break,
            ' ' | '\t' => flush(&mut word, &mut in_word, &mut words),
            // `2>&1`, `<&0`: a redirection, not a separator.
            '&' if word.ends_with('>') || word.ends_with('<') => word.push(c),
            ';' | '&' | '|' => {
                flush(&mut word, &mut in_word, &mut words);
                // `;;` ends a case branch: keep it as a word of its own.
                if c == ';' && chars.peek() == Some(&';') {
                    chars.next();
                    words.push(";;".into());
                }
                if matches!(chars.peek(), Some('&') | Some('|')) {
                    chars.next();
                }
                if !words.is_empty() {
                    cmds.push(std::mem::take(&mut words));
                }
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    flush(&mut word, &mut in_word, &mut words);
    if !words.is_empty() {
        cmds.push(words);
    }
    cmds
}

/// `$VAR` and `${VAR}` replaced by what a plain assignment earlier in the
/// script set; an unknown variable stays as written.
fn substitute(words: &[String], vars: &BTreeMap<String, String>) -> Vec<String> {
    words
        .iter()
        .map(|w| {
            let name = w
                .strip_prefix("${")
                .and_then(|r| r.strip_suffix('}'))
                .or_else(|| w.strip_prefix('$'));
            match name.and_then(|n| vars.get(n)) {
                Some(v) => v.clone(),
                None => w.clone(),
            }
        })
        // `$quiet` set to "" disappears, as in the shell.
        .filter(|w| !w.is_empty())
        .collect()
}

fn is_assignment(w: &str) -> Option<(&str, &str)> {
    let (name, value) = w.split_once('=')?;
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    ok.then_some((name, value))
}

fn classify(words: &[String], vars: &mut BTreeMap<String, String>, functions: &[String]) -> Kind {
    let mut i = 0;
    while i < words.len() && WRAPPERS.contains(&words[i].as_str()) {
        i += 1;
    }
    // `NAME='ssh' ENABLE=yes cmd`: assignments before a command.
    let mut assigned = false;
    while let Some((name, value)) = words.get(i).and_then(|w| is_assignment(w)) {
        vars.insert(name.to_string(), value.to_string());
        assigned = true;
        i += 1;
    }
    let Some(cmd) = words.get(i) else {
        // Plain assignments; a command substitution in one (`mktemp`,
        // `dpkg-query`) only computes the value.
        return Kind::Irrelevant;
    };
    let args = &words[i + 1..];
    let cmd = cmd.as_str();
    if assigned && !args.is_empty() && cmd.starts_with('$') {
        return Kind::Unconverted;
    }
    // A case pattern (`configure)`, `abort-upgrade|abort-remove)`), the
    // `*)` fallback, or a function definition (`name() {`).
    if cmd.ends_with(')') || cmd.ends_with("()") || SYNTAX.contains(&cmd) {
        return Kind::Irrelevant;
    }
    let base = cmd.rsplit('/').next().unwrap_or(cmd);
    match base {
        "adduser" => return adduser(args, false),
        "addgroup" => return adduser(args, true),
        "useradd" => return useradd(args),
        "groupadd" => return groupadd(args),
        // `chroot "$DPKG_ROOT" cmd...`: judged by the command.
        "chroot" if args.len() > 1 => return classify(&args[1..], vars, functions),
        // A wrapper function running its arguments: judged at its calls.
        "$@" | "$*" => return Kind::Irrelevant,
        // dpkg --compare-versions decides upgrade paths.
        "dpkg" if args.first().is_some_and(|a| a == "--compare-versions") => {
            return Kind::Irrelevant;
        }
        _ => {}
    }
    if writes_a_file(args) || (base == "sed" && args.iter().any(|a| a.starts_with("-i"))) {
        return Kind::Unconverted;
    }
    if IRRELEVANT.contains(&cmd)
        || IRRELEVANT.contains(&base)
        || cmd.starts_with("db_")
        || functions.iter().any(|f| f == cmd)
    {
        return Kind::Irrelevant;
    }
    Kind::Unconverted
}

/// Whether the words redirect output into a file (not /dev/null, not
/// another descriptor).
fn writes_a_file(args: &[String]) -> bool {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(pos) = a.find('>') else { continue };
        let target = a[pos + 1..].trim_start_matches('>');
        let target = if target.is_empty() {
            it.next().map(String::as_str).unwrap_or("")
        } else {
            target
        };
        if target != "/dev/null" && !target.starts_with('&') {
            return true;
        }
    }
    false
}

/// Splits `--opt=value` into two words, as adduser and useradd accept both.
fn split_long(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for a in args {
        match a.split_once('=') {
            Some((o, v)) if o.starts_with("--") => {
                out.push(o.to_string());
                out.push(v.to_string());
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

fn adduser(args: &[String], addgroup: bool) -> Kind {
    let args = split_long(args);
    let mut system = false;
    let mut group = addgroup;
    let mut user = SysUser {
        name: String::new(),
        uid: None,
        group: Primary::Named("nogroup".into()),
        home: "/nonexistent".into(),
        shell: "/usr/sbin/nologin".into(),
        gecos: String::new(),
    };
    let mut gid = None;
    let mut ingroup = None;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned();
        match a.as_str() {
            "--system" => system = true,
            "--group" => group = true,
            "--quiet"
            | "-q"
            | "--no-create-home"
            | "--disabled-password"
            | "--disabled-login"
            | "--force-badname"
            | "--allow-badname"
            | "--debug"
            | "--allow-all-names" => {}
            "--home" => match value() {
                Some(v) => user.home = v,
                None => return Kind::Unconverted,
            },
            "--shell" => match value() {
                Some(v) => user.shell = v,
                None => return Kind::Unconverted,
            },
            "--gecos" | "--comment" => match value() {
                Some(v) => user.gecos = v,
                None => return Kind::Unconverted,
            },
            "--ingroup" => ingroup = value(),
            "--uid" => match value().and_then(|v| v.parse().ok()) {
                Some(v) => user.uid = Some(v),
                None => return Kind::Unconverted,
            },
            "--gid" => match value().and_then(|v| v.parse().ok()) {
                Some(v) => gid = Some(v),
                None => return Kind::Unconverted,
            },
            o if o.starts_with('-') => return Kind::Unconverted,
            n => names.push(n.to_string()),
        }
    }
    if names.iter().any(|n| n.starts_with('$')) {
        return Kind::Unconverted;
    }
    match (names.as_slice(), system) {
        // `adduser USER GROUP`: membership, what the Pakfile's groups = [...] says.
        ([u, g], false) if !addgroup => Kind::Effect(Effect::Member {
            user: u.clone(),
            group: g.clone(),
        }),
        ([name], true) if addgroup => Kind::Effect(Effect::Group {
            name: name.clone(),
            gid,
        }),
        ([name], true) => {
            user.name = name.clone();
            user.group = match (ingroup, gid, group) {
                (Some(g), _, _) => Primary::Named(g),
                (None, Some(g), false) => Primary::Id(g),
                (None, g, true) => Primary::Own(g),
                (None, None, false) => Primary::Named("nogroup".into()),
            };
            Kind::Effect(Effect::User(user))
        }
        // A normal (non-system) account or a form pak does not know.
        _ => Kind::Unconverted,
    }
}

fn useradd(args: &[String]) -> Kind {
    let args = split_long(args);
    let mut system = false;
    let mut own_group = true;
    let mut user = SysUser {
        name: String::new(),
        uid: None,
        group: Primary::Own(None),
        home: String::new(),
        shell: "/usr/sbin/nologin".into(),
        gecos: String::new(),
    };
    let mut named_group = None;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned();
        match a.as_str() {
            "-r" | "--system" => system = true,
            "-M" | "--no-create-home" | "-m" | "--create-home" | "-l" | "--no-log-init" => {}
            "-N" | "--no-user-group" => own_group = false,
            "-U" | "--user-group" => own_group = true,
            "-d" | "--home-dir" | "--home" => match value() {
                Some(v) => user.home = v,
                None => return Kind::Unconverted,
            },
            "-s" | "--shell" => match value() {
                Some(v) => user.shell = v,
                None => return Kind::Unconverted,
            },
            "-c" | "--comment" => match value() {
                Some(v) => user.gecos = v,
                None => return Kind::Unconverted,
            },
            "-g" | "--gid" => named_group = value(),
            "-u" | "--uid" => match value().and_then(|v| v.parse().ok()) {
                Some(v) => user.uid = Some(v),
                None => return Kind::Unconverted,
            },
            o if o.starts_with('-') => return Kind::Unconverted,
            n => names.push(n.to_string()),
        }
    }
    let [name] = names.as_slice() else {
        return Kind::Unconverted;
    };
    if !system || name.starts_with('$') {
        return Kind::Unconverted;
    }
    user.name = name.clone();
    if user.home.is_empty() {
        user.home = format!("/home/{name}");
    }
    user.group = match named_group {
        Some(g) => match g.parse() {
            Ok(id) => Primary::Id(id),
            Err(_) => Primary::Named(g),
        },
        None if own_group => Primary::Own(None),
        None => Primary::Named("users".into()),
    };
    Kind::Effect(Effect::User(user))
}

fn groupadd(args: &[String]) -> Kind {
    let args = split_long(args);
    let mut system = false;
    let mut gid = None;
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-r" | "--system" => system = true,
            "-f" | "--force" => {}
            "-g" | "--gid" => match it.next().and_then(|v| v.parse().ok()) {
                Some(v) => gid = Some(v),
                None => return Kind::Unconverted,
            },
            o if o.starts_with('-') => return Kind::Unconverted,
            n => names.push(n.to_string()),
        }
    }
    match names.as_slice() {
        [name] if system && !name.starts_with('$') => Kind::Effect(Effect::Group {
            name: name.clone(),
            gid,
        }),
        _ => Kind::Unconverted,
    }
}

/// Reads a `sysusers.d(5)` file the package ships at `path`. `u`, `g` and
/// `m` lines are effects; `r` (id ranges) is pak's own business; anything
/// else is reported.
pub fn sysusers(path: &str, text: &str) -> Scan {
    let mut out = Scan::default();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words = commands(line).into_iter().next().unwrap_or_default();
        let field = |i: usize| {
            words
                .get(i)
                .map(String::as_str)
                .filter(|w| *w != "-")
                .map(str::to_string)
        };
        let effect = match (words.first().map(String::as_str), field(1)) {
            (Some("u"), Some(name)) => sysusers_user(name, field(2), field(3), field(4), field(5)),
            (Some("g"), Some(name)) => match field(2) {
                None => Some(Effect::Group { name, gid: None }),
                Some(id) => id.parse().ok().map(|gid| Effect::Group {
                    name,
                    gid: Some(gid),
                }),
            },
            (Some("m"), Some(user)) => field(2).map(|group| Effect::Member { user, group }),
            (Some("r"), _) => continue,
            _ => None,
        };
        match effect {
            Some(e) => out.effects.push(e),
            None => out.unconverted.push(Unconverted {
                script: path.to_string(),
                line: n + 1,
                text: line.to_string(),
            }),
        }
    }
    out
}

fn sysusers_user(
    name: String,
    id: Option<String>,
    gecos: Option<String>,
    home: Option<String>,
    shell: Option<String>,
) -> Option<Effect> {
    let (uid, group) = match id.as_deref() {
        None => (None, Primary::Own(None)),
        Some(id) => match id.split_once(':') {
            None => (Some(id.parse().ok()?), Primary::Own(id.parse().ok())),
            Some((u, g)) => (
                Some(u.parse().ok()?),
                match g.parse() {
                    Ok(gid) => Primary::Id(gid),
                    Err(_) => Primary::Named(g.to_string()),
                },
            ),
        },
    };
    Some(Effect::User(SysUser {
        name,
        uid,
        group,
        home: home.unwrap_or_else(|| "/".into()),
        shell: shell.unwrap_or_else(|| "/usr/sbin/nologin".into()),
        gecos: gecos.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The postinsts of bookworm's postgresql-common 248+deb12u2,
    /// openssh-server 1:9.2p1-2+deb12u10, dbus-system-bus-common
    /// 1.14.10-1~deb12u1 and nginx-common 1.22.1-9+deb12u11, whole.
    const POSTGRESQL_COMMON: &str = include_str!("maintscript/postgresql-common.postinst");
    const OPENSSH_SERVER: &str = include_str!("maintscript/openssh-server.postinst");
    const DBUS: &str = include_str!("maintscript/dbus-system-bus-common.postinst");
    const NGINX_COMMON: &str = include_str!("maintscript/nginx-common.postinst");

    fn users(s: &Scan) -> Vec<&SysUser> {
        s.effects
            .iter()
            .filter_map(|e| match e {
                Effect::User(u) => Some(u),
                _ => None,
            })
            .collect()
    }

    fn lines(s: &Scan) -> Vec<usize> {
        s.unconverted.iter().map(|u| u.line).collect()
    }

    #[test]
    fn postgresql_common_creates_postgres() {
        let s = scan("postinst", POSTGRESQL_COMMON);
        assert_eq!(
            users(&s),
            [&SysUser {
                name: "postgres".into(),
                uid: None,
                group: Primary::Own(None),
                home: "/var/lib/postgresql".into(),
                shell: "/bin/bash".into(),
                gecos: "PostgreSQL administrator".into(),
            }]
        );
        assert!(s.effects.contains(&Effect::Group {
            name: "postgres".into(),
            gid: None
        }));
        assert!(s.effects.contains(&Effect::Member {
            user: "postgres".into(),
            group: "ssl-cert".into()
        }));
        let text: Vec<&str> = s.unconverted.iter().map(|u| u.text.as_str()).collect();
        // The directories it makes and chowns, the dummy certificate, the
        // cluster configuration from debconf: steps pak does not do.
        assert!(
            text.contains(&"chown postgres:postgres /etc/postgresql"),
            "{text:#?}"
        );
        assert!(text.contains(&"mkdir -p /var/log/postgresql"), "{text:#?}");
        assert!(
            text.contains(&"ucf --debconf-ok $CCTMP $CCCONFIG"),
            "{text:#?}"
        );
        // Line numbers are the script's: `chown postgres:postgres /etc/postgresql`.
        let chown = s
            .unconverted
            .iter()
            .find(|u| u.text == "chown postgres:postgres /etc/postgresql")
            .unwrap();
        assert_eq!(
            POSTGRESQL_COMMON
                .lines()
                .nth(chown.line - 1)
                .unwrap()
                .trim(),
            chown.text
        );
        // Neither the here-document's text nor debhelper's blocks.
        assert!(!text.iter().any(|t| t.contains("dummy root certificate")));
        assert!(
            !text
                .iter()
                .any(|t| t.contains("deb-systemd") || t.contains("update-rc.d"))
        );
        assert!(
            !text
                .iter()
                .any(|t| t.contains("adduser") || t.contains("addgroup"))
        );
    }

    #[test]
    fn openssh_server_creates_sshd() {
        let s = scan("postinst", OPENSSH_SERVER);
        assert_eq!(
            users(&s),
            [&SysUser {
                name: "sshd".into(),
                uid: None,
                group: Primary::Named("nogroup".into()),
                home: "/run/sshd".into(),
                shell: "/usr/sbin/nologin".into(),
                gecos: String::new(),
            }]
        );
        let text: Vec<&str> = s.unconverted.iter().map(|u| u.text.as_str()).collect();
        assert!(
            text.iter().any(|t| t.starts_with("ssh-keygen -q -f")),
            "{text:#?}"
        );
        assert!(
            text.iter().any(|t| t.starts_with("ucf --three-way")),
            "{text:#?}"
        );
        assert!(
            !text
                .iter()
                .any(|t| t.contains("runit-helper") || t.contains("db_")),
            "{text:#?}"
        );
        let adduser = OPENSSH_SERVER
            .lines()
            .position(|l| l.contains("adduser --quiet --system"))
            .unwrap();
        assert!(!lines(&s).contains(&(adduser + 1)));
    }

    #[test]
    fn dbus_user_through_a_wrapper_and_a_variable() {
        let s = scan("postinst", DBUS);
        assert_eq!(users(&s).len(), 1);
        let u = users(&s)[0];
        assert_eq!(
            (u.name.as_str(), &u.group, u.home.as_str()),
            ("messagebus", &Primary::Own(None), "/nonexistent")
        );
        assert_eq!(s.unconverted, []);
    }

    #[test]
    fn nginx_common_steps_are_reported_with_their_lines() {
        let s = scan("postinst", NGINX_COMMON);
        assert!(users(&s).is_empty());
        let got: Vec<(usize, &str)> = s
            .unconverted
            .iter()
            .map(|u| (u.line, u.text.as_str()))
            .take(3)
            .collect();
        assert_eq!(
            got,
            [
                (12, "chown root:adm $logdir"),
                (13, "chmod 0755 $logdir"),
                (22, "touch \"$access_log\""),
            ]
        );
    }

    #[test]
    fn useradd_groupadd_and_unknown_forms() {
        let s = scan(
            "postinst",
            "#!/bin/sh\nset -e\ngroupadd -r -g 901 foo\nuseradd -r -g foo -d /var/lib/foo -s /bin/false foo\nuseradd alice\nadduser --system --uid 900 --ingroup daemon bar\naddgroup --system baz\n#DEBHELPER#\n",
        );
        assert_eq!(
            s.effects[0],
            Effect::Group {
                name: "foo".into(),
                gid: Some(901)
            }
        );
        assert_eq!(users(&s)[0].group, Primary::Named("foo".into()));
        assert_eq!(users(&s)[0].home, "/var/lib/foo");
        assert_eq!(
            (users(&s)[1].uid, &users(&s)[1].group),
            (Some(900), &Primary::Named("daemon".into()))
        );
        assert!(s.effects.contains(&Effect::Group {
            name: "baz".into(),
            gid: None
        }));
        // A normal account from a package script is not an image's business.
        assert_eq!(lines(&s), [5]);
    }

    #[test]
    fn sysusers_lines() {
        let s = sysusers(
            "usr/lib/sysusers.d/x.conf",
            "# c\nu messagebus - \"System Message Bus\"\ng adm 4 -\nu sync 4:65534 - /bin /bin/sync\nm alice adm\nr - 500-900\nu! weird\n",
        );
        assert_eq!(s.effects.len(), 4);
        let Effect::User(sync) = &s.effects[2] else {
            panic!()
        };
        assert_eq!(
            (sync.uid, &sync.group, sync.shell.as_str()),
            (Some(4), &Primary::Id(65534), "/bin/sync")
        );
        assert_eq!(lines(&s), [7]);
    }

    #[test]
    fn continuations_and_quotes() {
        assert_eq!(
            logical_lines("a \\\n  b\nc\n"),
            [(1, "a    b".to_string()), (3, "c".to_string())]
        );
        assert_eq!(
            commands("if ! getent passwd x >/dev/null; then adduser --gecos \"A b\" x; fi # c"),
            [
                vec!["if", "!", "getent", "passwd", "x", ">/dev/null"],
                vec!["then", "adduser", "--gecos", "A b", "x"],
                vec!["fi"]
            ]
        );
    }
}
