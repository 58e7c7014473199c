//! `pak build --check`: build again as a second machine would — another
//! user, store, directories, umask, time zone, locale and CPU count, later
//! on the clock — from the Pakfile and lock the first image carries, and
//! compare. Returns what was varied and where the images differ, for the
//! command line to render.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::image::compare::{self, Difference};
use crate::image::verify::*;
use crate::spec::pakfile::Pakfile;
use crate::state::StateDir;

/// One thing the second build of `--check` ran with differently.
#[derive(Debug, Clone, Serialize)]
pub struct Variation {
    pub what: String,
    pub first: String,
    pub second: String,
}

/// What `pak build --check` did and found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub varied: Vec<Variation>,
    /// What the second build shares with the first, and why.
    pub kept: Vec<String>,
    /// Empty when the two images are identical.
    pub differences: Vec<Difference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_pak: Option<OtherPak>,
}

/// The unprivileged identity the second build runs as when the first ran
/// as root: Debian's `nobody`/`nogroup`, which every system has, and which
/// owns nothing the build reads.
const NOBODY: (u32, u32) = (65534, 65534);

/// Time zones and locales far from the usual ones: a build that renders a
/// date or sorts by locale differs under them.
const OTHER_TZ: [&str; 2] = ["Pacific/Chatham", "America/St_Johns"];
const OTHER_LOCALE: [&str; 2] = ["tr_TR.UTF-8", "de_DE.ISO-8859-1"];

fn other_than<'a>(current: &Option<String>, choices: [&'a str; 2]) -> &'a str {
    if current.as_deref() == Some(choices[0]) {
        choices[1]
    } else {
        choices[0]
    }
}

fn shown(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "unset".into())
}

fn user_name(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|t| {
        t.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == uid.to_string())
            .map(|f| f[0].to_string())
    });
    match name {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// Every ancestor of `dir` must let others through, or the unprivileged
/// second build cannot reach its own directory.
fn reachable_by_others(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for a in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(a)
            .with_context(|| format!("cannot inspect {}", a.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            bail!(
                "the second build runs as an unprivileged user, who cannot enter {} (mode {:o}); set TMPDIR to a directory others can enter, such as /tmp",
                a.display(),
                mode & 0o7777
            );
        }
    }
    Ok(())
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .with_context(|| format!("cannot hand {} to uid {uid}", dir.display()))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for e in std::fs::read_dir(dir)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// `pak build --check`: `image` was just built from `pakfile` with the
/// store `first_root`, starting at `first_started`. Builds it again from
/// the Pakfile and lock the image carries, as a separate `pak` process
/// that differs from the first build in everything a second machine
/// would, and compares. See [`CheckReport::varied`] and
/// [`CheckReport::kept`] for exactly what.
pub fn check(
    image: &Path,
    pakfile: &Path,
    first_root: &StateDir,
    first_started: SystemTime,
) -> Result<CheckReport> {
    use std::os::unix::fs::PermissionsExt;
    let (kind, e) = read_embedded(image)?;
    if kind != ImageKind::Disk {
        bail!(
            "--check compares disk images; {} is a generation file",
            image.display()
        );
    }
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let child = if me.0 == 0 { NOBODY } else { me };

    let scratch = tempfile::Builder::new()
        .prefix("pak-check-")
        .tempdir()
        .context("cannot make a scratch directory for the second build")?;
    let top = scratch.path();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755))?;
    if child != me {
        reachable_by_others(top)?;
    }
    // The same binary, where the other user can run it (the original may
    // sit in a directory only its owner enters, such as /root).
    let exe = crate::sources::selfpkg::exe()?;
    let pak = top.join("bin/pak");
    std::fs::create_dir_all(top.join("bin"))?;
    std::fs::copy(&exe, &pak)
        .with_context(|| format!("cannot copy {} to {}", exe.display(), pak.display()))?;
    std::fs::set_permissions(&pak, std::fs::Permissions::from_mode(0o755))?;
    let project_dir = top.join("project");
    let second_pakfile = write_project(&e, &project_dir)?;
    let own = top.join("own");
    for d in ["root", "home", "tmp", "cwd"] {
        std::fs::create_dir_all(own.join(d))?;
    }
    let second_root = StateDir::new(own.join("root"));
    let first = Pakfile::load(pakfile)?;
    seed_downloads(
        &first,
        &e.lock,
        &second_root,
        &Seeds {
            roots: vec![first_root.clone()],
            project_dir: Some(&first.dir),
        },
    )?;
    if child != me {
        chown_tree(&own, child.0, child.1)?;
    }
    let again = own.join("again.raw");

    let env = |k: &str| std::env::var(k).ok();
    let (tz, lang, lc_all) = (env("TZ"), env("LANG"), env("LC_ALL"));
    let second_tz = other_than(&tz, OTHER_TZ);
    let second_locale = other_than(&lang, OTHER_LOCALE);
    let first_umask = current_umask();
    let second_umask = if first_umask == 0o077 { 0o002 } else { 0o077 };
    let cpus = rustix::thread::sched_getaffinity(None).ok();
    let first_cpus = cpus.as_ref().map_or(1, |c| c.count());

    // A clock read to the second differs as long as the second build
    // starts in another second than the first did.
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    while secs(SystemTime::now()) == secs(first_started) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let second_started = SystemTime::now();

    let mut cmd = std::process::Command::new(&pak);
    cmd.arg("--root")
        .arg(second_root.dir())
        .arg("--pakfile")
        .arg(&second_pakfile)
        // Exactly the lock the image carries: never re-resolved.
        .args(["--quiet", "--locked", "build", "-o"])
        .arg(&again)
        .current_dir(own.join("cwd"))
        .env_clear()
        .env(
            "PATH",
            env("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", own.join("home"))
        .env("TMPDIR", own.join("tmp"))
        .env("TZ", second_tz)
        .env("LANG", second_locale)
        .env("LC_ALL", second_locale)
        .env("PAK_NO_PROGRESS", "1");
    if crate::sources::fetch::network() == crate::sources::fetch::Network::Offline {
        cmd.arg("--offline");
    }
    if let Some(epoch) = env("SOURCE_DATE_EPOCH") {
        // An input of the build, not its environment.
        cmd.env("SOURCE_DATE_EPOCH", epoch);
    }
    if child != me {
        // std drops the supplementary groups too when it changes the uid.
        std::os::unix::process::CommandExt::uid(&mut cmd, child.0);
        std::os::unix::process::CommandExt::gid(&mut cmd, child.1);
    }
    // The child inherits umask and CPU affinity from this thread; both are
    // restored right after it starts.
    let old_umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(second_umask));
    let mut second_cpus = first_cpus;
    if let Some(set) = &cpus
        && first_cpus > 1
        && let Some(one) = (0..rustix::thread::CpuSet::MAX_CPU).find(|c| set.is_set(*c))
    {
        let mut single = rustix::thread::CpuSet::new();
        single.set(one);
        if rustix::thread::sched_setaffinity(None, &single).is_ok() {
            second_cpus = 1;
        }
    }
    let spawned = cmd.stdout(std::process::Stdio::null()).output();
    rustix::process::umask(old_umask);
    if let Some(set) = &cpus {
        let _ = rustix::thread::sched_setaffinity(None, set);
    }
    let out = spawned.with_context(|| format!("cannot run {}", pak.display()))?;
    let other_pak = OtherPak::of(&e)?;
    if !out.status.success() {
        bail!(
            "the second build (as {}, in {}) failed: {}",
            user_name(child.0),
            own.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let differences = compare::differences(image, &again)?;

    let here = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut varied = vec![
        Variation {
            what: "store root (packages extracted and converted afresh, no compressed-block cache)"
                .into(),
            first: first_root.dir().display().to_string(),
            second: second_root.dir().display().to_string(),
        },
        Variation {
            what: "project directory (the second builds from the Pakfile and lock the image carries)"
                .into(),
            first: first.dir.display().to_string(),
            second: project_dir.display().to_string(),
        },
        Variation {
            what: "working directory".into(),
            first: here,
            second: own.join("cwd").display().to_string(),
        },
        Variation {
            what: "umask".into(),
            first: format!("{first_umask:03o}"),
            second: format!("{second_umask:03o}"),
        },
        Variation {
            what: "TZ".into(),
            first: shown(&tz),
            second: second_tz.into(),
        },
        Variation {
            what: "LANG".into(),
            first: shown(&lang),
            second: second_locale.into(),
        },
        Variation {
            what: "LC_ALL".into(),
            first: shown(&lc_all),
            second: second_locale.into(),
        },
        Variation {
            what: "HOME and TMPDIR; every other variable unset".into(),
            first: format!("{}, {}", shown(&env("HOME")), shown(&env("TMPDIR"))),
            second: format!("{}, {}", own.join("home").display(), own.join("tmp").display()),
        },
        Variation {
            what: "wall clock at the start (not faked: the second build simply starts in a later second)"
                .into(),
            first: crate::util::timefmt::utc(secs(first_started)),
            second: crate::util::timefmt::utc(secs(second_started)),
        },
    ];
    if child != me {
        varied.insert(
            0,
            Variation {
                what: "user".into(),
                first: user_name(me.0),
                second: user_name(child.0),
            },
        );
    }
    if second_cpus != first_cpus {
        varied.push(Variation {
            what: "CPUs it may use (threads compressing in parallel)".into(),
            first: first_cpus.to_string(),
            second: second_cpus.to_string(),
        });
    }
    let mut kept = vec![
        "the pak binary (the same bytes, copied: pak puts itself into the image)".to_string(),
        "SOURCE_DATE_EPOCH (an input: the timestamp of every file)".into(),
        "the downloaded packages (copied in; the lock pins each one's sha256)".into(),
        "the host: kernel, file system, apt configuration and package lists".into(),
        "the clock's date and minute, unless the builds straddle one: a static binary cannot be given a fake clock, so a build that reads only the date or the minute is not caught".into(),
    ];
    if child == me {
        kept.push(
            "the user: only root can run the second build as another one (as root, it runs as nobody)"
                .into(),
        );
    }
    if second_cpus == first_cpus {
        kept.push("the CPU count: this process may use only one CPU".into());
    }
    Ok(CheckReport {
        varied,
        kept,
        differences,
        other_pak,
    })
}

fn current_umask() -> u32 {
    // umask can only be read by setting it; put it straight back.
    let m = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(m);
    m.as_raw_mode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_values_are_other() {
        assert_eq!(other_than(&None, OTHER_TZ), OTHER_TZ[0]);
        assert_eq!(other_than(&Some(OTHER_TZ[0].into()), OTHER_TZ), OTHER_TZ[1]);
        assert_eq!(
            other_than(&Some("C.UTF-8".into()), OTHER_LOCALE),
            OTHER_LOCALE[0]
        );
    }
}
