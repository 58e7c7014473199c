//! The initramfs `/init`: from the kernel to the system's own init.
//!
//! mount proc, sys, dev → load the listed modules → find `root-<slot>` and
//! `data` by partition label → mount the slot's squashfs read-only →
//! mount data on /var (formatting it on first boot) → seed /var from the
//! image's factory copy → overlay /etc (upper on data) → bind /home →
//! switch_root into `/sbin/init`.
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

const SYSROOT: &str = "/sysroot";
const MODULE_LIST: &str = "/etc/pak/modules";
const FACTORY_VAR: &str = "usr/share/factory/var";
const ETC_UPPER: &str = "lib/pak/etc/upper";
const ETC_WORK: &str = "lib/pak/etc/work";
const WAIT_FOR_DISKS: Duration = Duration::from_secs(30);

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

/// Runs `/init`. Never returns: it execs the system's init, or reboots.
pub fn main() -> ! {
    let args = match early() {
        Ok(a) => a,
        Err(e) => fail(&e, false),
    };
    match boot(&args) {
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
        args.slot.as_deref().unwrap_or("?")
    ));
    Ok(args)
}

fn boot(args: &BootArgs) -> Result<std::convert::Infallible> {
    load_modules()?;
    let slot = args
        .slot
        .as_deref()
        .ok_or("the kernel command line has no pak.slot=a|b; the loader entry is broken")?;
    if slot != "a" && slot != "b" {
        return Err(format!("pak.slot={slot} is neither a nor b"));
    }
    let root_dev = wait_for_partition(&format!("root-{slot}"))?;
    let data_dev = wait_for_partition("data")?;
    say(&format!(
        "root is {} (root-{slot}), data is {}",
        root_dev.display(),
        data_dev.display()
    ));

    errno(
        "mount the root squashfs",
        mount(&root_dev, SYSROOT, "squashfs", MountFlags::RDONLY, ""),
    )
    .map_err(|e| format!("{e} (is slot {slot} empty or corrupt?)"))?;
    say(&format!("mounted {} read-only on /", root_dev.display()));

    let var = Path::new(SYSROOT).join("var");
    if !has_ext_magic(&data_dev)? {
        say(&format!(
            "{} is blank: formatting it (first boot)",
            data_dev.display()
        ));
        format_data(&data_dev)?;
    }
    errno(
        "mount data on /var",
        mount(&data_dev, &var, "ext4", MountFlags::NOATIME, ""),
    )?;
    say("mounted data on /var");
    seed_var(&Path::new(SYSROOT).join(FACTORY_VAR), &var)?;

    let upper = var.join(ETC_UPPER);
    let work = var.join(ETC_WORK);
    step(
        "create the /etc overlay directories",
        fs::create_dir_all(&upper).and_then(|_| fs::create_dir_all(&work)),
    )?;
    let etc = Path::new(SYSROOT).join("etc");
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

fn load_modules() -> Result<()> {
    let Ok(list) = fs::read_to_string(MODULE_LIST) else {
        return Ok(());
    };
    let mut n = 0;
    for path in list.lines().filter(|l| !l.is_empty()) {
        let f = step(&format!("open module {path}"), fs::File::open(path))?;
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
                return Err(format!("load module {path}: {e}"));
            }
        }
        n += 1;
    }
    say(&format!("loaded {n} kernel modules"));
    Ok(())
}

/// Waits for a partition with this GPT label to appear; its device node.
fn wait_for_partition(label: &str) -> Result<PathBuf> {
    let start = Instant::now();
    loop {
        if let Ok(rd) = fs::read_dir("/sys/class/block") {
            for e in rd.flatten() {
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
                        return Ok(node);
                    }
                }
            }
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

/// ext2/3/4 superblock magic at byte 1080.
fn has_ext_magic(dev: &Path) -> Result<bool> {
    let mut f = step(&format!("open {}", dev.display()), fs::File::open(dev))?;
    let mut buf = [0u8; 1082];
    step(&format!("read {}", dev.display()), f.read_exact(&mut buf))?;
    Ok(buf[1080..1082] == [0x53, 0xEF])
}

/// Formats the data partition with the image's own tools (e2fsprogs'
/// mkfs.ext4, or busybox's mke2fs), run inside the mounted root.
fn format_data(dev: &Path) -> Result<()> {
    let root = Path::new(SYSROOT);
    let candidates: [(&str, &[&str]); 3] = [
        ("usr/sbin/mkfs.ext4", &["-q", "-F", "-L", "data"]),
        ("usr/sbin/mke2fs", &["-L", "data"]),
        ("usr/bin/busybox", &["mke2fs", "-L", "data"]),
    ];
    for (tool, args) in candidates {
        if fs::symlink_metadata(root.join(tool)).is_err() {
            continue;
        }
        // The root's /dev is empty until the move; name the device by the
        // initramfs path, reachable from the child before it chroots.
        let status = Command::new(format!("/{tool}"))
            .args(args)
            .arg(dev)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin")
            .pre_exec_chroot(root, dev)
            .status()
            .map_err(|e| format!("run {tool}: {e}"))?;
        if status.success() {
            return Ok(());
        }
        return Err(format!(
            "{tool} failed to format {}: {status}",
            dev.display()
        ));
    }
    Err(
        "the data partition is blank and the image has no mkfs.ext4 or busybox mke2fs to format it"
            .into(),
    )
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
