//! The initramfs `/init`: from the kernel to the system's own init.
//!
//! mount proc, sys, dev → load the listed modules → find `root-<slot>` and
//! `data` by partition label → set up the slot's dm-verity device from the
//! root hash on the command line (see [`crate::verity`]; a boot on trial
//! reads it whole first) → mount the slot's squashfs read-only from it →
//! bring up data on /var (wiped when a factory reset was requested,
//! formatted as journaled ext4 on first boot, `e2fsck -p` at every other
//! boot; a tmpfs if it cannot be repaired, see [`mount_data`]) → seed /var
//! from the image's factory copy → overlay /etc (upper on data) → bind
//! /home → switch_root into `/sbin/init`.
//!
//! A boot on trial (its loader entry still counts tries) arms the watchdog
//! before leaving, so a generation that hangs in userspace is reset too;
//! the image's boot-complete step stops it once the system is marked good.
//! `/etc` files the user changed that this generation changed as well are
//! listed in `/var/lib/pak/etc/conflicts` (the user's copy stays in use).
//!
//! Each step prints one line. A failure prints what failed and why and
//! reboots after a few seconds, so that the boot loader's counting can
//! fall back to the other slot; `pak.debug=shell` gives a shell instead.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, MountPropagationFlags};

use crate::cmdline::{self, BootArgs};
use crate::data;
use crate::disk::{DATA_LABEL, Slot};
use crate::verity::{self, Verity};

const SYSROOT: &str = "/sysroot";
/// The device-mapper name of the verified root.
const VERITY_DEVICE: &str = "pak-root";
const MODULE_LIST: &str = "/etc/pak/modules";
const FACTORY_VAR: &str = "usr/share/factory/var";
const ETC_UPPER: &str = "lib/pak/etc/upper";
const ETC_WORK: &str = "lib/pak/etc/work";
const ETC_STATE: &str = "lib/pak/etc";
/// Under `/var`: the `/etc` conflicts of this boot, one path per line
/// (`pak system status` reads them from `/var/lib/pak/etc/conflicts`).
pub const ETC_CONFLICTS: &str = "lib/pak/etc/conflicts";
const WAIT_FOR_DISKS: Duration = Duration::from_secs(30);
/// Seconds a boot on trial has to be marked good, unless `pak.watchdog=`.
const TRIAL_SECONDS: u32 = 120;

/// What `/init` asks of the host side, which knows the ESP.
pub struct Hooks {
    /// Whether this boot is on trial: its loader entry still counts tries.
    pub on_trial: fn() -> bool,
}

type Result<T> = std::result::Result<T, String>;

fn say(msg: &str) {
    // /dev/console is the serial console the kernel was told about.
    eprintln!("pak-init: {msg}");
}

fn step<T>(what: &str, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// mount(2) with the data string as rustix wants it.
fn mount(
    src: impl AsRef<Path>,
    target: impl AsRef<Path>,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> rustix::io::Result<()> {
    let data = CString::new(data).map_err(|_| rustix::io::Errno::INVAL)?;
    rustix::mount::mount(
        src.as_ref(),
        target.as_ref(),
        fstype,
        flags,
        data.as_c_str(),
    )
}

fn errno<T>(what: &str, r: rustix::io::Result<T>) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Runs `/init` without knowledge of the ESP (no watchdog). Never returns.
pub fn main() -> ! {
    main_with(&Hooks { on_trial: || false })
}

/// Runs `/init`. Never returns: it execs the system's init, or reboots.
pub fn main_with(hooks: &Hooks) -> ! {
    let args = match early() {
        Ok(a) => a,
        Err(e) => fail(&e, false),
    };
    match boot(&args, hooks) {
        Ok(never) => match never {},
        Err(e) => fail(&e, args.debug_shell),
    }
}

fn early() -> Result<BootArgs> {
    let _ = fs::create_dir_all("/proc");
    errno(
        "mount /proc",
        mount(
            "proc",
            "/proc",
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        ),
    )?;
    errno(
        "mount /sys",
        mount(
            "sysfs",
            "/sys",
            "sysfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        ),
    )?;
    errno(
        "mount /dev",
        mount(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MountFlags::NOSUID,
            "mode=0755",
        ),
    )?;
    let line = step("read /proc/cmdline", fs::read_to_string("/proc/cmdline"))?;
    let args = cmdline::parse(&line);
    say(&format!(
        "starting generation {} from slot {}",
        args.generation
            .map(|g| g.to_string())
            .unwrap_or_else(|| "?".into()),
        match &args.slot {
            Some(Ok(s)) => s.as_str(),
            Some(Err(bad)) => &bad.0,
            None => "?",
        }
    ));
    Ok(args)
}

fn boot(args: &BootArgs, hooks: &Hooks) -> Result<std::convert::Infallible> {
    load_modules()?;
    let slot: Slot = match &args.slot {
        None => {
            return Err(
                "the kernel command line has no pak.slot=a|b; the loader entry is broken".into(),
            );
        }
        Some(Err(bad)) => return Err(format!("pak.slot={} is neither a nor b", bad.0)),
        Some(Ok(s)) => *s,
    };
    let root_dev = wait_for_partition(slot.label())?;
    let data_dev = wait_for_partition(DATA_LABEL)?;
    say(&format!(
        "root is {} ({}), data is {}",
        root_dev.display(),
        slot.label(),
        data_dev.display()
    ));

    let root = match &args.verity {
        None => {
            say(&format!(
                "the loader entry gives no dm-verity root hash for slot {slot} (a pak before verity roots wrote it): its root is mounted unchecked"
            ));
            root_dev.clone()
        }
        Some(Err(e)) => {
            return Err(format!(
                "the loader entry's dm-verity options are broken ({e}); refusing to mount slot {slot} unchecked"
            ));
        }
        Some(Ok(v)) => verified_root(slot, &root_dev, v, (hooks.on_trial)())?,
    };
    if let Err(e) = mount(&root, SYSROOT, "squashfs", MountFlags::RDONLY, "") {
        if let Some(Ok(v)) = &args.verity
            && corrupted()
        {
            return Err(verity_error(
                slot,
                v,
                &format!("mount the root squashfs: {e}"),
            ));
        }
        return Err(format!(
            "mount the root squashfs: {e} (is slot {slot} empty or corrupt?)"
        ));
    }
    say(&format!("mounted {} read-only on /", root.display()));

    let var = Path::new(SYSROOT).join("var");
    mount_data(&data_dev, &var)?;
    seed_var(&Path::new(SYSROOT).join(FACTORY_VAR), &var)?;

    let upper = var.join(ETC_UPPER);
    let work = var.join(ETC_WORK);
    step(
        "create the /etc overlay directories",
        fs::create_dir_all(&upper).and_then(|_| fs::create_dir_all(&work)),
    )?;
    let etc = Path::new(SYSROOT).join("etc");
    let conflicts = etc_conflicts(&etc, &upper, &var.join(ETC_STATE)).unwrap_or_else(|e| {
        say(&format!("could not compare /etc with your changes: {e}"));
        Vec::new()
    });
    if !conflicts.is_empty() {
        say(&format!(
            "{} /etc files you changed were changed by this generation too; yours stay in use: {}",
            conflicts.len(),
            conflicts.join(" ")
        ));
    }
    let listing: String = conflicts.iter().map(|c| format!("{c}\n")).collect();
    let _ = fs::write(var.join(ETC_CONFLICTS), listing);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        etc.display(),
        upper.display(),
        work.display()
    );
    errno(
        "overlay /etc",
        mount(
            "overlay",
            &etc,
            "overlay",
            MountFlags::empty(),
            opts.as_str(),
        ),
    )?;
    say("/etc is the image's, with local changes kept on data");

    let home = var.join("home");
    step("create /var/home", fs::create_dir_all(&home))?;
    errno(
        "bind /home",
        rustix::mount::mount_bind(&home, Path::new(SYSROOT).join("home")),
    )?;

    if (hooks.on_trial)() {
        let seconds = args.watchdog.unwrap_or(TRIAL_SECONDS);
        match arm_watchdog(seconds) {
            Ok(true) => say(&format!(
                "boot on trial: the watchdog resets the machine unless it is marked good within {seconds}s"
            )),
            Ok(false) => {}
            Err(e) => say(&format!("boot on trial, but no watchdog: {e}")),
        }
    }

    for m in ["/proc", "/sys", "/dev"] {
        errno(
            &format!("move {m}"),
            rustix::mount::mount_move(m, format!("{SYSROOT}{m}")),
        )?;
    }
    let init = args.init.clone().unwrap_or_else(|| "/sbin/init".into());
    say(&format!("switching to {init}"));
    switch_root(&init)
}

/// Sets up the dm-verity device over the slot's partition and returns its
/// node. On a boot on trial every block is read through it first: a
/// generation whose slot was changed anywhere fails now, while the boot
/// loader still counts its tries, not later when a file that happens to
/// sit on the damaged block is read in a system already marked good.
fn verified_root(slot: Slot, dev: &Path, v: &Verity, on_trial: bool) -> Result<PathBuf> {
    let node = verity::dm::create_verity(VERITY_DEVICE, dev, v)
        .map_err(|e| format!("set up dm-verity for slot {slot}: {e}"))?;
    say(&format!(
        "{} is checked by dm-verity against root hash {} as {}",
        dev.display(),
        v.root_hash,
        node.display()
    ));
    if on_trial {
        let start = Instant::now();
        if let Err(e) = read_all(&node) {
            return Err(verity_error(
                slot,
                v,
                &format!("read {}: {e}", node.display()),
            ));
        }
        say(&format!(
            "boot on trial: read all {} MiB of slot {slot} through dm-verity in {:.1}s, every block matches",
            (v.data_blocks * verity::BLOCK_SIZE) >> 20,
            start.elapsed().as_secs_f64()
        ));
    }
    Ok(node)
}

fn read_all(node: &Path) -> std::io::Result<()> {
    let mut f = fs::File::open(node)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

/// Whether the verity device has met a block that does not match.
fn corrupted() -> bool {
    verity::dm::status(VERITY_DEVICE).is_ok_and(|s| s.trim() == "C")
}

fn verity_error(slot: Slot, v: &Verity, what: &str) -> String {
    format!(
        "DM-VERITY ERROR: slot {slot} does not match its root hash {} ({what}): a block was changed after the generation was written, or the disk is failing; the kernel's log names the block",
        v.root_hash
    )
}

/// Starts the watchdog with a timeout and lets go of it without the magic
/// close, so it keeps running until someone writes `V` to it. Returns
/// whether it was armed.
fn arm_watchdog(seconds: u32) -> Result<bool> {
    if seconds == 0 {
        return Ok(false);
    }
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open("/dev/watchdog")
        .map_err(|e| format!("/dev/watchdog: {e}"))?;
    // WDIOC_SETTIMEOUT = _IOWR('W', 6, int)
    const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
    let mut t: libc::c_int = seconds as libc::c_int;
    // SAFETY: the ioctl reads and writes one int through a valid pointer.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut t) };
    if r != 0 {
        return Err(format!(
            "cannot set the watchdog timeout: {}",
            std::io::Error::last_os_error()
        ));
    }
    f.write_all(b"\0")
        .map_err(|e| format!("cannot pet the watchdog: {e}"))?;
    Ok(true)
}

/// The `/etc` files the user changed (in `upper`) whose image copy (in
/// `lower`) changed since the user's copy was made, as `/etc/...` paths.
///
/// `state` keeps two records. `lower` holds a digest of every image file as
/// of the last boot. `base` holds, per user-changed file, the digest of the
/// image's copy the user's copy was made against: when a user file first
/// appears, that is the one from the last boot's record (the user edited it
/// then), or the current one on the first boot. Entries whose user copy is
/// gone are dropped, so removing your copy resolves a conflict.
fn etc_conflicts(lower: &Path, upper: &Path, state: &Path) -> Result<Vec<String>> {
    let read = |name: &str| -> std::collections::BTreeMap<String, String> {
        fs::read_to_string(state.join(name))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(p, d)| (p.to_string(), d.to_string()))
            .collect()
    };
    let write = |name: &str, m: &std::collections::BTreeMap<String, String>| {
        let text: String = m.iter().map(|(p, d)| format!("{p}\t{d}\n")).collect();
        fs::write(state.join(name), text).map_err(|e| format!("write {name}: {e}"))
    };
    let mut image = Vec::new();
    walk_files(lower, lower, &mut image).map_err(|e| format!("read {}: {e}", lower.display()))?;
    let now: std::collections::BTreeMap<String, String> = image
        .into_iter()
        .map(|p| {
            let d = digest(&lower.join(&p));
            (p, d)
        })
        .collect();
    let mut changed = Vec::new();
    walk_files(upper, upper, &mut changed).map_err(|e| format!("read {}: {e}", upper.display()))?;
    let (old_base, last) = (read("base"), read("lower"));
    let first_boot = !state.join("lower").exists();
    let mut base = std::collections::BTreeMap::new();
    let mut conflicts = Vec::new();
    for rel in changed {
        let current = now.get(&rel).cloned().unwrap_or_else(|| "absent".into());
        let made_against = old_base.get(&rel).cloned().unwrap_or_else(|| {
            if first_boot {
                current.clone()
            } else {
                last.get(&rel).cloned().unwrap_or_else(|| "absent".into())
            }
        });
        if made_against != current {
            conflicts.push(format!("/etc/{rel}"));
        }
        base.insert(rel, made_against);
    }
    write("base", &base)?;
    write("lower", &now)?;
    Ok(conflicts)
}

/// Files below `dir` (relative to `root`), sorted; overlay whiteouts count.
fn walk_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let t = e.file_type()?;
        if t.is_dir() {
            walk_files(root, &e.path(), out)?;
        } else if let Ok(rel) = e.path().strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// FNV-1a over a file's bytes (or its link target); "absent" when missing.
/// Only compares two versions of one file, so a short hash does.
fn digest(p: &Path) -> String {
    let bytes = match fs::symlink_metadata(p) {
        Err(_) => return "absent".into(),
        Ok(m) if m.file_type().is_symlink() => fs::read_link(p)
            .map(|t| t.to_string_lossy().into_owned().into_bytes())
            .unwrap_or_default(),
        Ok(m) if m.is_file() => fs::read(p).unwrap_or_default(),
        Ok(_) => b"(not a file)".to_vec(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Loads one kernel module from its file; one already loaded is fine.
/// (The initramfs and a running system both load modules without kmod:
/// the image's kmod finds modules by name only through binary indexes pak
/// does not write.)
pub fn load_module_file(path: &Path) -> std::io::Result<()> {
    let f = fs::File::open(path)?;
    let params = CString::default();
    // SAFETY: finit_module reads the open descriptor and a valid C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            params.as_ptr(),
            0,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

fn load_modules() -> Result<()> {
    let Ok(list) = fs::read_to_string(MODULE_LIST) else {
        return Ok(());
    };
    let mut n = 0;
    for path in list.lines().filter(|l| !l.is_empty()) {
        load_module_file(Path::new(path)).map_err(|e| format!("load module {path}: {e}"))?;
        n += 1;
    }
    say(&format!("loaded {n} kernel modules"));
    Ok(())
}

/// The device node of the partition with this GPT label, if the kernel
/// has one (sysfs names it; `/dev` must be mounted).
pub fn partition_by_label(label: &str) -> Option<PathBuf> {
    for e in fs::read_dir("/sys/class/block").ok()?.flatten() {
        let Ok(uevent) = fs::read_to_string(e.path().join("uevent")) else {
            continue;
        };
        let field = |k: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::to_string)
        };
        if field("PARTNAME=").as_deref() == Some(label)
            && let Some(dev) = field("DEVNAME=")
        {
            let node = PathBuf::from("/dev").join(dev);
            if node.exists() {
                return Some(node);
            }
        }
    }
    None
}

/// Waits for a partition with this GPT label to appear; its device node.
fn wait_for_partition(label: &str) -> Result<PathBuf> {
    let start = Instant::now();
    loop {
        if let Some(node) = partition_by_label(label) {
            return Ok(node);
        }
        if start.elapsed() > WAIT_FOR_DISKS {
            return Err(format!(
                "no partition labelled {label} appeared within {}s; is this a pak disk, and did its disk driver load?",
                WAIT_FOR_DISKS.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Brings up the data partition on `var`: wipes it when a factory reset
/// was asked for, formats it when blank, checks it with `e2fsck -p`, gives
/// it a journal if an older pak made it without one, and mounts it. A
/// partition e2fsck cannot repair never stops the boot: `/var` becomes a
/// tmpfs, the damaged filesystem is mounted read-only beside it when it can
/// be, and the console and [`data::CHECK_RECORD`] say so, so an operator can
/// reach the machine and repair it.
fn mount_data(dev: &Path, var: &Path) -> Result<()> {
    let start = read_start(dev, 64 << 10)?;
    let mut record = data::CheckRecord {
        boot_id: fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        device: dev.display().to_string(),
        outcome: data::Outcome::Clean,
        e2fsck_exit: None,
        journal_added: false,
        damaged_mount: None,
        output: Vec::new(),
    };
    let has_ext = start[1080..1082] == [0x53, 0xEF];
    if data::reset::is_requested(&start) {
        say(&format!(
            "factory reset requested: erasing {} and provisioning this machine again",
            dev.display()
        ));
        format_data(dev)?;
        // mke2fs clears the boot sector on most platforms; this makes sure,
        // and only after the new filesystem is complete, so a cut in
        // between wipes it once more rather than leave half a reset.
        clear_reset_request(dev)?;
        record.outcome = data::Outcome::Reset;
    } else if !has_ext && start.iter().all(|&b| b == 0) {
        say(&format!(
            "{} is blank: formatting it (first boot)",
            dev.display()
        ));
        format_data(dev)?;
        record.outcome = data::Outcome::Formatted;
    } else {
        // Not blank but no ext superblock is a damaged filesystem, never
        // one to format: e2fsck may find a backup superblock, and if not,
        // the operator decides.
        check_data(dev, &mut record);
        if record.outcome != data::Outcome::Uncorrectable && !has_journal(dev)? {
            add_journal(dev, &mut record);
        }
    }
    if record.outcome != data::Outcome::Uncorrectable {
        match mount(dev, var, "ext4", MountFlags::NOATIME, "") {
            Ok(()) => say("mounted data on /var"),
            Err(e) => {
                say(&format!(
                    "cannot mount the data partition {} on /var: {e}",
                    dev.display()
                ));
                record.output.push(format!("mount: {e}"));
                record.outcome = data::Outcome::Uncorrectable;
            }
        }
    }
    if record.outcome == data::Outcome::Uncorrectable {
        mount_degraded(dev, var, &mut record)?;
    }
    let path = var.join(data::CHECK_RECORD);
    if let Err(e) = path
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|_| fs::write(&path, record.render()))
    {
        say(&format!(
            "cannot record the data partition's check in /var/{}: {e}",
            data::CHECK_RECORD
        ));
    }
    Ok(())
}

/// The first `len` bytes of `dev`.
fn read_start(dev: &Path, len: usize) -> Result<Vec<u8>> {
    let mut f = step(&format!("open {}", dev.display()), fs::File::open(dev))?;
    let mut buf = vec![0u8; len];
    step(&format!("read {}", dev.display()), f.read_exact(&mut buf))?;
    Ok(buf)
}

fn clear_reset_request(dev: &Path) -> Result<()> {
    use std::io::Write;
    let what = format!(
        "clear the factory-reset request on {} (the next boot would wipe it again)",
        dev.display()
    );
    let mut f = step(&what, fs::OpenOptions::new().write(true).open(dev))?;
    step(&what, f.write_all(&[0u8; data::reset::AREA]))?;
    step(&what, f.sync_all())
}

/// Whether the ext superblock has the `has_journal` compat feature.
fn has_journal(dev: &Path) -> Result<bool> {
    let sb = read_start(dev, 2048)?;
    // s_feature_compat is at 0x5C in the superblock, which starts at 1024.
    let compat = u32::from_le_bytes(sb[1024 + 0x5C..1024 + 0x60].try_into().unwrap());
    Ok(compat & 0x4 != 0)
}

/// Runs `e2fsck -p` on the data partition and records what it concluded.
/// Exit 2 (reboot needed) reboots here; it only arises when the checked
/// filesystem was mounted, which /var is not yet.
fn check_data(dev: &Path, record: &mut data::CheckRecord) {
    let tools = ["usr/sbin/e2fsck", "sbin/e2fsck"];
    let out = match run_image_tool(&tools, &["-p"], dev) {
        None => {
            say(
                "this image has no e2fsck (add e2fsprogs to its packages): the data partition is mounted unchecked",
            );
            record.outcome = data::Outcome::Unchecked;
            return;
        }
        Some(Err(e)) => {
            say(&format!("cannot check the data partition: {e}"));
            record.output.push(e);
            record.outcome = data::Outcome::Uncorrectable;
            return;
        }
        Some(Ok(out)) => out,
    };
    for stream in [&out.stdout, &out.stderr] {
        for line in String::from_utf8_lossy(stream).lines() {
            let line = line.trim_end();
            if !line.trim().is_empty() {
                // e2fsck names itself on some lines; say it once.
                let shown = line.strip_prefix("e2fsck: ").unwrap_or(line);
                say(&format!("e2fsck: {shown}"));
                record.output.push(line.to_string());
            }
        }
    }
    record.e2fsck_exit = out.status.code();
    match out.status.code() {
        Some(0) => record.outcome = data::Outcome::Clean,
        Some(1) => {
            say("e2fsck corrected errors on the data partition; /var is the repaired filesystem");
            record.outcome = data::Outcome::Corrected;
        }
        Some(2) => {
            say("e2fsck corrected errors on the data partition and asks for a reboot: rebooting");
            rustix::fs::sync();
            let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
            record.outcome = data::Outcome::Corrected;
        }
        _ => {
            let how = match out.status.code() {
                Some(c) => format!("exit {c}"),
                None => format!("{}", out.status),
            };
            say(&format!(
                "e2fsck could not repair the data partition {} ({how})",
                dev.display()
            ));
            record.outcome = data::Outcome::Uncorrectable;
        }
    }
}

/// Adds a journal to a data partition an older pak formatted without one
/// (busybox's mke2fs makes none), so that from now on a power cut costs at
/// most the last seconds of writes instead of a full check. It was just
/// checked and is not mounted, which is when `tune2fs -j` is safe. Without
/// tune2fs the boot goes on as before, and says why.
fn add_journal(dev: &Path, record: &mut data::CheckRecord) {
    let tools = ["usr/sbin/tune2fs", "sbin/tune2fs"];
    match run_image_tool(&tools, &["-j"], dev) {
        None => say(
            "the data partition has no journal and this image has no tune2fs to add one (add e2fsprogs): a power cut may cost more than the last writes",
        ),
        Some(Ok(out)) if out.status.success() => {
            say("added a journal to the data partition (an older pak formatted it without one)");
            record.journal_added = true;
        }
        Some(Ok(out)) => say(&format!(
            "tune2fs -j could not add a journal to the data partition ({}): {}; it stays without one",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Some(Err(e)) => say(&format!(
            "cannot add a journal to the data partition: {e}; it stays without one"
        )),
    }
}

/// /var for a boot whose data partition cannot be used: a tmpfs, with the
/// damaged filesystem read-only at [`data::DAMAGED_MOUNT`] when the kernel
/// can still read it. Nothing else holds it, so the operator can unmount it
/// and repair it with the instructions printed here.
fn mount_degraded(dev: &Path, var: &Path, record: &mut data::CheckRecord) -> Result<()> {
    errno(
        "mount a tmpfs on /var in place of the damaged data partition",
        mount(
            "tmpfs",
            var,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            "mode=0755",
        ),
    )?;
    let ro = var.join(data::DAMAGED_MOUNT);
    step(
        "create the mount point for the damaged data",
        fs::create_dir_all(&ro),
    )?;
    // noload: replaying the journal would write to the damaged device.
    let readable = match mount(dev, &ro, "ext4", MountFlags::RDONLY, "noload") {
        Ok(()) => {
            record.damaged_mount = Some(format!("/var/{}", data::DAMAGED_MOUNT));
            format!(
                "its files are mounted read-only on /var/{}",
                data::DAMAGED_MOUNT
            )
        }
        Err(e) => {
            record.output.push(format!("read-only mount: {e}"));
            let _ = fs::remove_dir(&ro);
            format!("it cannot be mounted even read-only ({e})")
        }
    };
    let d = dev.display();
    say(&format!(
        "THE DATA PARTITION {d} HAS ERRORS e2fsck could not repair; {readable}."
    ));
    say(
        "this boot runs with /var, /home and the changes to /etc on a tmpfs: nothing written there survives a reboot",
    );
    let umount = if record.damaged_mount.is_some() {
        format!("umount /var/{} && ", data::DAMAGED_MOUNT)
    } else {
        String::new()
    };
    say(&format!(
        "to repair it: {umount}e2fsck -f {d}, then reboot; to start over: pak system factory-reset, then reboot"
    ));
    Ok(())
}

/// Runs the first of `tools` (paths inside the mounted root) that the image
/// has, with `args` and then `dev`, chrooted into the root; `None` when it
/// has none of them.
fn run_image_tool(
    tools: &[&str],
    args: &[&str],
    dev: &Path,
) -> Option<Result<std::process::Output>> {
    let root = Path::new(SYSROOT);
    let tool = tools
        .iter()
        .find(|t| fs::symlink_metadata(root.join(t)).is_ok())?;
    // The root's /dev is empty until the move; the chroot binds the
    // initramfs's /dev there, so the device keeps its name.
    Some(
        Command::new(format!("/{tool}"))
            .args(args)
            .arg(dev)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .pre_exec_chroot(root, dev)
            .output()
            .map_err(|e| format!("run {tool}: {e}")),
    )
}

/// Formats the data partition with the image's e2fsprogs: ext4 with a
/// journal, labelled like its partition. The journal is written out now
/// (lazy_journal_init=0) rather than trusted to be zero: after a factory
/// reset the old filesystem's blocks are still there. An image without
/// e2fsprogs falls back to busybox's mke2fs, which makes no journal, and
/// says so.
fn format_data(dev: &Path) -> Result<()> {
    let mkfs = ["usr/sbin/mkfs.ext4", "sbin/mkfs.ext4"];
    let ext4 = ["-F", "-q", "-L", DATA_LABEL, "-E", "lazy_journal_init=0"];
    let (tool, out) = match run_image_tool(&mkfs, &ext4, dev) {
        Some(out) => ("mkfs.ext4", out?),
        None => {
            say(
                "this image has no mkfs.ext4 (add e2fsprogs): formatting with busybox's mke2fs, which makes no journal, so power cuts may cost more than the last writes",
            );
            match run_image_tool(&["usr/bin/busybox"], &["mke2fs", "-L", DATA_LABEL], dev) {
                Some(out) => ("busybox mke2fs", out?),
                None => {
                    return Err(
                        "the data partition is blank and the image has no mkfs.ext4 or busybox mke2fs to format it; add e2fsprogs to its packages"
                            .into(),
                    );
                }
            }
        }
    };
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{tool} failed to format {}: {}: {}",
        dev.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

trait ChrootExt {
    fn pre_exec_chroot(&mut self, root: &Path, dev: &Path) -> &mut Self;
}

impl ChrootExt for Command {
    fn pre_exec_chroot(&mut self, root: &Path, dev: &Path) -> &mut Self {
        let root = root.to_path_buf();
        let dev_dir = root.join("dev");
        let _ = dev;
        // SAFETY: only async-signal-safe calls (mount, chroot, chdir) run
        // between fork and exec.
        unsafe {
            self.pre_exec(move || {
                rustix::mount::mount_bind("/dev", &dev_dir).map_err(std::io::Error::from)?;
                rustix::process::chroot(&root).map_err(std::io::Error::from)?;
                rustix::process::chdir("/").map_err(std::io::Error::from)?;
                Ok(())
            })
        }
    }
}

/// Copies what the image ships under /var (kept at usr/share/factory/var)
/// into the data partition, without touching what is already there: new
/// packages get their directories, local state is never overwritten.
fn seed_var(factory: &Path, var: &Path) -> Result<()> {
    if !factory.is_dir() {
        return Ok(());
    }
    let mut added = 0;
    copy_missing(factory, var, &mut added).map_err(|e| format!("seed /var: {e}"))?;
    if added > 0 {
        say(&format!("added {added} entries to /var from the image"));
    }
    Ok(())
}

fn copy_missing(from: &Path, to: &Path, added: &mut usize) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for e in fs::read_dir(from)? {
        let e = e?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let md = fs::symlink_metadata(&src)?;
        let exists = fs::symlink_metadata(&dst).is_ok();
        if md.is_dir() {
            if !exists {
                fs::create_dir(&dst)?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
                rustix::fs::chown(
                    &dst,
                    Some(rustix::fs::Uid::from_raw(md.uid())),
                    Some(rustix::fs::Gid::from_raw(md.gid())),
                )?;
                *added += 1;
            }
            copy_missing(&src, &dst, added)?;
        } else if !exists {
            if md.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
            } else {
                fs::copy(&src, &dst)?;
            }
            rustix::fs::chownat(
                rustix::fs::CWD,
                &dst,
                Some(rustix::fs::Uid::from_raw(md.uid())),
                Some(rustix::fs::Gid::from_raw(md.gid())),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
            *added += 1;
        }
    }
    Ok(())
}

fn switch_root(init: &str) -> Result<std::convert::Infallible> {
    errno(
        "make mounts private",
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        ),
    )
    .ok();
    step("chdir /sysroot", std::env::set_current_dir(SYSROOT))?;
    errno("move /sysroot to /", rustix::mount::mount_move(".", "/"))?;
    errno("chroot", rustix::process::chroot("."))?;
    step("chdir /", std::env::set_current_dir("/"))?;
    let err = Command::new(init).arg0(init).exec();
    Err(format!("exec {init}: {err}"))
}

fn fail(msg: &str, shell: bool) -> ! {
    say(&format!("boot failed: {msg}"));
    if shell {
        for sh in ["/sysroot/usr/bin/busybox", "/bin/sh"] {
            if Path::new(sh).exists() {
                say("pak.debug=shell: starting a shell");
                let _ = Command::new(sh)
                    .arg0("sh")
                    .args(if sh.ends_with("busybox") {
                        vec!["sh"]
                    } else {
                        vec![]
                    })
                    .status();
            }
        }
    }
    say("rebooting in 5 seconds so the boot loader can try the other slot");
    std::thread::sleep(Duration::from_secs(5));
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_conflicts_follow_the_image_copy_the_user_edited() {
        let t = std::env::temp_dir().join(format!("pak-etc-{}", std::process::id()));
        let (lower, upper, state) = (t.join("lower"), t.join("upper"), t.join("state"));
        for d in [lower.join("ssh"), upper.join("ssh"), state.clone()] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(lower.join("hosts"), "image 1").unwrap();
        fs::write(lower.join("ssh/sshd_config"), "image 1").unwrap();
        // First boot: nothing changed by the user.
        assert!(etc_conflicts(&lower, &upper, &state).unwrap().is_empty());
        // The user edits hosts and adds motd while generation 1 runs; then
        // generation 2 changes hosts and sshd_config and ships a motd.
        fs::write(upper.join("hosts"), "mine").unwrap();
        fs::write(upper.join("motd"), "mine").unwrap();
        fs::write(lower.join("hosts"), "image 2").unwrap();
        fs::write(lower.join("ssh/sshd_config"), "image 2").unwrap();
        fs::write(lower.join("motd"), "image 2").unwrap();
        let both = ["/etc/hosts", "/etc/motd"];
        assert_eq!(etc_conflicts(&lower, &upper, &state).unwrap(), both);
        // Still listed on the next boot, until the user's copy goes.
        assert_eq!(etc_conflicts(&lower, &upper, &state).unwrap(), both);
        fs::remove_file(upper.join("hosts")).unwrap();
        assert_eq!(
            etc_conflicts(&lower, &upper, &state).unwrap(),
            ["/etc/motd"]
        );
        // An edit made against the current image is no conflict.
        fs::write(upper.join("ssh/sshd_config"), "mine").unwrap();
        assert_eq!(
            etc_conflicts(&lower, &upper, &state).unwrap(),
            ["/etc/motd"]
        );
        fs::remove_dir_all(&t).unwrap();
    }
}
