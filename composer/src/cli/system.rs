//! `pak system ...`: argument handling over [`crate::system`], and the
//! words for what it returns (`--json` prints the same data).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Global, SystemCommand};
use crate::system::update::{Outcome, PendingUpdate, StateAt, UpdateStatus};
use crate::system::{Diff, Incoming, MarkGood, PakDisk, Rollback, Status};

/// Fault injection for tests: `PAK_CUT_AFTER_OPS=N` lets a `--disk` run
/// make N writes and flushes, then fails the rest as a power cut would.
/// Read here and nowhere else; the running system's disk is never cut.
const CUT_AFTER_OPS: &str = "PAK_CUT_AFTER_OPS";

fn open(disk: Option<&Path>) -> Result<PakDisk> {
    match disk {
        Some(d) => {
            let cut =
                match std::env::var(CUT_AFTER_OPS) {
                    Ok(n) => Some(n.parse().with_context(|| {
                        format!("{CUT_AFTER_OPS} must be a number of operations")
                    })?),
                    Err(_) => None,
                };
            PakDisk::open_image(d, cut)
        }
        None => PakDisk::open_live(),
    }
}

pub fn run(g: &Global, cmd: SystemCommand) -> Result<()> {
    match cmd {
        SystemCommand::Status { disk } => {
            let mut d = open(disk.as_deref())?;
            let mut status = d.status()?;
            let (at, cache) = update_paths(g, disk.as_deref());
            status.update = Some(d.update_status(&status, &at, &cache));
            if g.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render_status(&status));
            }
        }
        SystemCommand::Generations { disk } => {
            let status = open(disk.as_deref())?.status()?;
            let mut slots: Vec<_> = status
                .slots
                .iter()
                .filter(|s| s.generation.is_some())
                .collect();
            slots.sort_by_key(|s| std::cmp::Reverse(s.generation));
            if g.json {
                println!("{}", serde_json::to_string_pretty(&slots)?);
            } else {
                for s in slots {
                    let mark = if status.booted_slot == Some(s.slot) {
                        "*"
                    } else {
                        " "
                    };
                    println!(
                        "{mark} {:>4}  slot {}  {}",
                        s.generation.unwrap_or(0),
                        s.slot,
                        s.state
                    );
                }
            }
        }
        SystemCommand::Switch {
            disk,
            generation,
            force,
            reboot,
        } => {
            if reboot && disk.is_some() {
                bail!("--reboot is for the running system; a --disk image boots when you boot it");
            }
            let mut d = open(disk.as_deref())?;
            let done = match generation {
                Some(file) => {
                    let f = std::fs::File::open(&file)
                        .with_context(|| format!("cannot open {}", file.display()))?;
                    let mut incoming = Incoming::read(f, &file.display().to_string())?;
                    d.switch(&mut incoming, force)?
                }
                None => {
                    let p = super::project::project(g)?;
                    super::project::lock_if_needed(g, &p)?;
                    let next = d.build_next(&p)?;
                    if !g.quiet {
                        println!(
                            "built generation {} of {} ({} packages)",
                            next.meta.number,
                            next.meta.system,
                            next.meta.packages.len()
                        );
                    }
                    d.switch(&mut next.incoming()?, force)?
                }
            };
            if std::env::var_os(CUT_AFTER_OPS).is_some() {
                eprintln!("pak: device operations: {}", d.device().ops);
            }
            println!("{}", switched(&done));
            if reboot {
                reboot_now()?;
            } else if disk.is_none() {
                println!(
                    "reboot to use it; run `pak system mark-good` once it works (the image does this itself when its services are healthy)"
                );
            }
        }
        SystemCommand::Rollback { disk, reboot } => {
            if reboot && disk.is_some() {
                bail!("--reboot is for the running system");
            }
            println!("{}", render_rollback(open(disk.as_deref())?.rollback()?));
            if reboot {
                reboot_now()?;
            }
        }
        SystemCommand::MarkGood { disk } => {
            println!("{}", render_mark_good(&open(disk.as_deref())?.mark_good()?))
        }
        SystemCommand::Diff { disk, from, to } => {
            let d = open(disk.as_deref())?.diff(from, to)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", render_diff(&d));
            }
        }
        SystemCommand::Provision { again } => {
            use crate::system::provision::{Outcome, provision_here};
            match provision_here(again)? {
                Outcome::Applied(r) => print!("{}", render_provisioned("provisioned", &r)),
                Outcome::AlreadyDone(r) => {
                    print!("{}", render_provisioned("already provisioned", &r));
                    println!(
                        "(once per data partition; `pak system provision --again` applies the sources again)"
                    );
                }
                Outcome::NoSource => println!(
                    "no provisioning source: no seed volume labelled cidata or pak-seed, no pak.seed, system.hostname or ssh.authorized_keys.* credential in fw_cfg or SMBIOS; the image's own settings stay"
                ),
            }
        }
        SystemCommand::Update {
            disk,
            channel,
            key,
            check,
            reboot,
            watch,
        } => update(
            g,
            disk.as_deref(),
            channel,
            key.as_deref(),
            check,
            reboot,
            watch,
        )?,
        SystemCommand::Verify { disk } => {
            let mut bad = 0;
            for (entry, problem) in open(disk.as_deref())?.verify()? {
                match problem {
                    None => println!("ok   {entry}"),
                    Some(p) => {
                        bad += 1;
                        println!("BAD  {entry}: {p}");
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} loader entries would not boot what they name");
            }
        }
        SystemCommand::FactoryReset {
            disk,
            yes,
            cancel,
            reboot,
        } => factory_reset(disk.as_deref(), yes, cancel, reboot)?,
    }
    Ok(())
}

fn update(
    g: &Global,
    disk: Option<&Path>,
    channel: Option<String>,
    key: Option<&Path>,
    check: bool,
    reboot: bool,
    watch: bool,
) -> Result<()> {
    if (reboot || watch) && disk.is_some() {
        bail!(
            "--reboot and --watch are for the running system; a --disk image boots when you boot it"
        );
    }
    if !watch {
        let switched = update_once(g, disk, channel, key.map(Path::to_path_buf), check)?;
        if reboot && switched {
            reboot_now()?;
        }
        return Ok(());
    }
    // The updater service: a failed check is reported and tried again at
    // the next interval; it never stops the service.
    let schedule = crate::system::update::UpdateConfig::schedule_live()?;
    println!(
        "pak update: checking every {}s{}",
        schedule.interval,
        schedule
            .window
            .map(|w| format!(", rebooting into updates within {w}"))
            .unwrap_or_default()
    );
    loop {
        match update_once(g, None, channel.clone(), key.map(Path::to_path_buf), false) {
            Ok(true) => {
                if let Some(w) = schedule.window {
                    let wait = w.wait(crate::channel::now());
                    if wait > 0 {
                        println!("pak update: rebooting in the window {w}, in {wait}s");
                        std::thread::sleep(std::time::Duration::from_secs(wait));
                    }
                }
                println!("pak update: rebooting into the update");
                return reboot_now();
            }
            Ok(false) => {}
            Err(e) => println!("pak update: {e:#}; trying again in {}s", schedule.interval),
        }
        std::thread::sleep(std::time::Duration::from_secs(schedule.interval));
    }
}

/// One run of `pak system update`; whether a generation now boots next.
fn update_once(
    g: &Global,
    disk: Option<&Path>,
    channel: Option<String>,
    key: Option<PathBuf>,
    check: bool,
) -> Result<bool> {
    use crate::system::update::{Action, UpdateConfig, UpdateOptions, UpdateSource};
    let mut d = open(disk)?;
    let source = match (channel, key) {
        (Some(url), Some(k)) => UpdateSource {
            url,
            key: crate::sources::key::PublicKey::from_pakfile_field(
                &k.display().to_string(),
                Path::new("."),
            )?,
        },
        _ if disk.is_some() => d.configured_source()?,
        _ => UpdateConfig::read_live()?,
    };
    let mut opts = match disk {
        Some(_) => UpdateOptions::disk(source, update_paths(g, disk).1),
        None => UpdateOptions::live(source),
    };
    opts.check_only = check;
    let r = d.update(&opts)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("channel {} (metadata version {})", r.channel, r.version);
        if !r.skipped_failed.is_empty() {
            println!(
                "not trying again (this machine fell back from them): generation {}",
                join(&r.skipped_failed)
            );
        }
        if !r.not_in_rollout.is_empty() {
            println!(
                "not in the rollout of generation {} yet",
                join(&r.not_in_rollout)
            );
        }
        let booted = r
            .booted_generation
            .map_or("no generation".into(), |n| format!("generation {n}"));
        match &r.action {
            Action::UpToDate => {
                println!("up to date: {booted} is the newest offered to this machine")
            }
            Action::Halted => {
                println!("the channel is halted: no update is offered ({booted} stays)")
            }
            Action::Available { generation, size } => println!(
                "generation {generation} is available ({} MiB); run without --check to install it",
                size.div_ceil(1 << 20)
            ),
            Action::Pending { generation } => {
                println!(
                    "generation {generation} is already written and boots next; reboot to use it"
                )
            }
            Action::Switched(done) => println!("{}", switched(done)),
        }
    }
    Ok(matches!(
        r.action,
        Action::Switched(_) | Action::Pending { .. }
    ))
}

/// Where the update state and the downloads of the running system, or of
/// a `--disk` image, are.
fn update_paths(g: &Global, disk: Option<&Path>) -> (StateAt, PathBuf) {
    use crate::system::update::{LIVE_CACHE, LIVE_STATE};
    match disk {
        Some(_) => (StateAt::Esp, g.root().cache_dir().join("update")),
        None => (
            StateAt::File(PathBuf::from(LIVE_STATE)),
            PathBuf::from(LIVE_CACHE),
        ),
    }
}

/// What `switch` and `update` say once a generation is written.
fn switched(done: &crate::system::Switched) -> String {
    format!(
        "generation {} written to slot {} ({} MiB, sha256 {}); it boots next, with {}",
        done.generation,
        done.slot,
        done.image_size.div_ceil(1 << 20),
        &done.image_sha256[..16],
        done.entry
    )
}

fn join(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

fn factory_reset(disk: Option<&Path>, yes: bool, cancel: bool, reboot: bool) -> Result<()> {
    if reboot && (disk.is_some() || cancel) {
        bail!("--reboot is for a factory reset of the running system");
    }
    let mut d = open(disk)?;
    if cancel {
        let r = d.cancel_factory_reset()?;
        println!(
            "{}",
            if r.changed {
                "factory reset withdrawn: the next boot keeps the data partition"
            } else {
                "no factory reset was requested"
            }
        );
        return Ok(());
    }
    let what = match disk {
        Some(img) => format!("the data partition of {}", img.display()),
        None => "this machine's data partition".to_string(),
    };
    if !yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            bail!(
                "a factory reset erases {what} (/var, /home, your changes to /etc) on the next boot, and there is no terminal to confirm it on; pass --yes to do it anyway"
            );
        }
        eprint!(
            "The next boot erases {what}: /var, /home and your changes to /etc. The generations stay.\nType yes to go on: "
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            bail!("factory reset not requested: nothing was changed");
        }
    }
    let r = d.request_factory_reset()?;
    println!(
        "factory reset {}: the next boot erases {} and provisions the machine again (undo before then with `pak system factory-reset --cancel`)",
        if r.changed {
            "requested"
        } else {
            "already requested"
        },
        r.data
    );
    if reboot {
        reboot_now()?;
    } else if disk.is_none() {
        println!("reboot to carry it out");
    }
    Ok(())
}

fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let verb = if s.live { "booted" } else { "boots next" };
    match (s.booted_slot, s.booted_generation) {
        (Some(slot), Some(g)) => {
            let good = match s.booted_good {
                Some(true) => "marked good",
                Some(false) => "not marked good yet",
                None => "no entry",
            };
            out.push_str(&format!(
                "{verb}: generation {g} from slot {slot} ({good})\n"
            ))
        }
        _ => out.push_str("no generation boots from this disk\n"),
    }
    out.push_str(&format!(
        "default entry: {}\n",
        s.default_entry.as_deref().unwrap_or("none")
    ));
    if let Some(r) = &s.rolled_back {
        out.push_str(&format!("rolled back: {r}\n"));
    }
    for slot in &s.slots {
        let mut line = format!("slot {}: {}", slot.slot, slot.state);
        if let Some(g) = slot.generation {
            line.push_str(&format!(", generation {g}"));
        }
        if let (Some(l), Some(d)) = (slot.tries_left, slot.tries_done) {
            line.push_str(&format!(", {l} tries left, {d} done"));
        }
        if let (Some(sys), Some(n)) = (&slot.system, slot.packages) {
            line.push_str(&format!(" ({sys}, {n} packages)"));
        }
        if let Some(e) = &slot.description_error {
            line.push_str(&format!(" (its description is unreadable: {e})"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(r) = &s.provisioned {
        out.push_str(&render_provisioned("provisioned", r));
    }
    if let Some(e) = &s.provision_error {
        out.push_str(&format!("provisioning record unreadable: {e}\n"));
    }
    if let Some(c) = &s.data_check {
        out.push_str(&format!("data: {c}\n"));
    }
    if s.factory_reset_pending == Some(true) {
        out.push_str(
            "factory reset requested: the next boot wipes the data partition (`pak system factory-reset --cancel` withdraws it)\n",
        );
    }
    if let Some(u) = &s.update {
        out.push_str(&render_update_status(u));
    }
    if !s.etc_conflicts.is_empty() {
        out.push_str(
            "/etc files you changed that this generation also changed (yours are in use):\n",
        );
        for c in &s.etc_conflicts {
            out.push_str(&format!("  {c}\n"));
        }
    }
    out
}

fn render_update_status(u: &UpdateStatus) -> String {
    let mut out = match &u.channel {
        Some(c) => format!("updates: channel {c} (from {})\n", u.config),
        None => format!("updates: no channel ({} does not exist)\n", u.config),
    };
    if let Some(e) = &u.config_error {
        out = format!("updates: {e}\n");
    }
    match (u.last_check, &u.last_found) {
        (Some(at), Some(f)) => {
            let what = match &f.outcome {
                Outcome::UpToDate => "up to date".to_string(),
                Outcome::Halted => "the channel is halted".to_string(),
                Outcome::Installed { generation } => format!("installed generation {generation}"),
                Outcome::Failed {
                    generation, error, ..
                } => format!("generation {generation} did not install: {error}"),
            };
            out.push_str(&format!(
                "  last check: {} (metadata version {}{}): {what}\n",
                crate::util::timefmt::utc(at),
                f.version,
                f.newest
                    .map(|n| format!(", newest generation {n}"))
                    .unwrap_or_default()
            ));
            if !f.not_in_rollout.is_empty() {
                out.push_str(&format!(
                    "  not in the rollout of generation {} yet\n",
                    join(&f.not_in_rollout)
                ));
            }
        }
        (Some(at), None) => out.push_str(&format!(
            "  last check: {}\n",
            crate::util::timefmt::utc(at)
        )),
        // Without a channel "never" says nothing the line above did not.
        _ if u.channel.is_none() => {}
        _ => out.push_str("  last check: never\n"),
    }
    if !u.failed.is_empty() {
        out.push_str(&format!(
            "  failed here, not tried again: generation {}\n",
            join(&u.failed)
        ));
    }
    match &u.pending {
        Some(PendingUpdate::Installed { generation, slot }) => out.push_str(&format!(
            "  pending: generation {generation} in slot {slot} boots next, on trial; reboot to use it\n"
        )),
        Some(PendingUpdate::Download {
            generation,
            bytes,
            size,
        }) => out.push_str(&format!(
            "  pending: generation {generation} downloaded {} of {} MiB; `pak system update` resumes it\n",
            bytes >> 20,
            size.div_ceil(1 << 20)
        )),
        None => {}
    }
    if let Some(e) = &u.state_error {
        out.push_str(&format!("  update state unreadable: {e}\n"));
    }
    out
}

/// What provisioning applied, one line each, the sources first.
fn render_provisioned(verb: &str, r: &crate::system::provision::Record) -> String {
    let mut out = String::new();
    for src in &r.sources {
        out.push_str(&format!("{verb} from {src}\n"));
    }
    if let Some(id) = &r.instance_id {
        out.push_str(&format!("  instance-id: {id}\n"));
    }
    if let Some(h) = &r.hostname {
        out.push_str(&format!("  hostname: {h}\n"));
    }
    for (user, n) in &r.ssh_keys {
        let keys = if *n == 1 { "key" } else { "keys" };
        out.push_str(&format!("  ssh: {n} {keys} for {user}\n"));
    }
    if r.network {
        // Where it was written differs by init (a script or networkd files).
        out.push_str("  network: the seed's [network]\n");
    }
    for f in &r.files {
        out.push_str(&format!("  file: {f}\n"));
    }
    out
}

fn render_diff(d: &Diff) -> String {
    let mut out = format!("generation {} -> {}\n", d.from, d.to);
    for (n, v) in &d.added {
        out.push_str(&format!("+ {n} {v}\n"));
    }
    for (n, v) in &d.removed {
        out.push_str(&format!("- {n} {v}\n"));
    }
    for (n, a, b) in &d.changed {
        out.push_str(&format!("~ {n} {a} -> {b}\n"));
    }
    if d.is_empty() {
        out.push_str("same packages\n");
    }
    out
}

fn render_rollback(r: Rollback) -> String {
    match r {
        Rollback::Done { slot, generation } => {
            format!("generation {generation} (slot {slot}) boots next; reboot to use it")
        }
        Rollback::AlreadyNext { slot, generation } => {
            format!("generation {generation} (slot {slot}) already boots next")
        }
    }
}

fn render_mark_good(m: &MarkGood) -> String {
    match m {
        MarkGood::Marked {
            slot,
            generation,
            from,
            to,
        } => format!("marked generation {generation} (slot {slot}) good: {from} -> {to}"),
        MarkGood::AlreadyGood { slot, generation } => {
            format!("generation {generation} (slot {slot}) is already marked good")
        }
    }
}

fn reboot_now() -> Result<()> {
    let path: PathBuf = ["/sbin/reboot", "/bin/reboot", "/usr/sbin/reboot"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("no reboot command on this system; reboot it yourself")?;
    let st = std::process::Command::new(path).status()?;
    if !st.success() {
        bail!("reboot failed ({st}); reboot yourself to use the new generation");
    }
    Ok(())
}
