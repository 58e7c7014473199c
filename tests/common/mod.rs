//! What several integration tests share: one way to run pak ([`pak`]),
//! one way to make packages, signed repositories and Pakfiles
//! ([`Project`], [`Package`]), where the workspace and the e2e store are,
//! and an unprivileged user to run pak as.
#![allow(dead_code)]

pub mod bounded;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// How long a QEMU boot (TCG, on a loaded machine) may take.
pub const BOOT: Duration = Duration::from_secs(240);

/// The workspace's top directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One store for every e2e test of this run: Debian packages download once.
pub fn e2e_store() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-root")
}

#[derive(Debug, Clone, Copy)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Who pak runs as in a test: `name` (created if missing) when we are
/// root, else ourselves.
pub fn test_user(name: &str) -> User {
    static USER: OnceLock<User> = OnceLock::new();
    *USER.get_or_init(|| {
        if !is_root() {
            return User {
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
            };
        }
        let id = |flag: &str| {
            Command::new("id")
                .args([flag, name])
                .stderr(Stdio::null())
                .output()
                .expect("run id")
        };
        if !id("-u").status.success() {
            let status = Command::new("useradd")
                .args(["-m", name])
                .status()
                .expect("run useradd");
            // Another test binary may have created it meanwhile.
            assert!(
                status.success() || id("-u").status.success(),
                "useradd -m {name} failed"
            );
        }
        let number = |flag: &str| -> u32 {
            String::from_utf8(id(flag).stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        User {
            uid: number("-u"),
            gid: number("-g"),
        }
    })
}

/// Runs pak with `args` (store: [`e2e_store`]), which must succeed; its stdout.
#[track_caller]
pub fn pak_e2e<S: AsRef<OsStr>>(args: &[S]) -> String {
    pak(args).root(e2e_store()).ok()
}

/// A test machine for `image`, with `drives` attached read-only.
pub fn vm(image: &Path, drives: &[&Path]) -> pak::vm::qemu::VmConfig {
    pak::vm::qemu::VmConfig {
        image: image.to_path_buf(),
        memory_mib: 1024,
        snapshot: false,
        interactive: false,
        drives: drives.iter().map(|d| d.to_path_buf()).collect(),
        forwards: Vec::new(),
        credentials: Vec::new(),
    }
}

/// Waits (up to a minute) until the guest holds `address`, as DHCP gives
/// it at boot.
pub fn wait_for_address(m: &mut pak::vm::vmtest::Machine, address: &str) {
    let has = format!("ip -4 addr show | grep -q 'inet {address}/'");
    let cmd = format!(
        "i=0; while [ $i -lt 300 ] && ! {has}; do i=$((i+1)); sleep 0.2; done; {has} || ip addr"
    );
    let (status, out) = m.execute(&cmd, Duration::from_secs(90)).unwrap();
    assert_eq!(status, 0, "the guest never got {address} by DHCP:\n{out}");
}

/// Runs `program` as `user` when we are root; setpriv execs, so the pid
/// stays the same.
pub fn as_user(program: &Path, user: User) -> Command {
    if !is_root() {
        return Command::new(program);
    }
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--init-groups", "--"])
        .arg(program);
    command
}

/// `program`, copied where any user may run it. Tests run pak as an
/// unprivileged user, and a checkout may sit under a directory others
/// cannot enter (root's home is mode 700), where the build's own binary is
/// out of their reach. The copy is named by its sha256, so runs of the same
/// build share it, and it is checked to be ours before it is trusted.
pub fn runnable_by_all(program: &Path) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let bytes = std::fs::read(program).unwrap();
    let sha = pak::util::fsutil::sha256_hex(&bytes);
    let top = Path::new("/tmp/pak-test-bin");
    let dir = top.join(&sha[..16]);
    let name = program.file_name().unwrap();
    let copy = dir.join(name);
    let me = rustix::process::geteuid().as_raw();
    for d in [top, dir.as_path()] {
        match std::fs::create_dir(d) {
            Ok(()) => chmod(d, 0o755),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("cannot create {}: {e}", d.display()),
        }
        let m = std::fs::symlink_metadata(d).unwrap();
        assert!(
            m.is_dir() && m.uid() == me && m.mode() & 0o022 == 0,
            "{} is not a directory only we can write",
            d.display()
        );
    }
    if std::fs::read(&copy).ok().as_deref() != Some(bytes.as_slice()) {
        // Written beside and renamed: several test binaries may race here.
        let tmp = tempfile::NamedTempFile::new_in(&dir).unwrap();
        std::fs::write(tmp.path(), &bytes).unwrap();
        chmod(tmp.path(), 0o755);
        tmp.persist(&copy).unwrap();
    }
    copy
}

pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// pak with `args`, to be run: the one way tests start the binary. Progress
/// bars are off, and the variables that would point pak at another
/// Pakfile, store or build date are cleared, so only what a test sets
/// counts.
pub fn pak<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Pak {
    Pak {
        program: PathBuf::from(env!("CARGO_BIN_EXE_pak")),
        root: None,
        cwd: None,
        umask: None,
        user: None,
        clear_env: false,
        args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
        env: vec![
            ("PAK_NO_PROGRESS".into(), Some("1".into())),
            ("PAKFILE".into(), None),
            ("PAK_ROOT".into(), None),
            ("SOURCE_DATE_EPOCH".into(), None),
        ],
    }
}

/// A pak command line being put together; see [`pak`].
#[derive(Debug, Clone)]
pub struct Pak {
    program: PathBuf,
    root: Option<PathBuf>,
    cwd: Option<PathBuf>,
    umask: Option<String>,
    user: Option<User>,
    /// Start from an empty environment (then `env` adds to it).
    clear_env: bool,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
}

impl Pak {
    /// `--root DIR` (the last one given counts).
    pub fn root(mut self, dir: impl AsRef<Path>) -> Pak {
        self.root = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The working directory pak runs in.
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Pak {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Pak {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Pak {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Pak {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Pak {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Runs pak under this umask (octal, e.g. "077").
    pub fn umask(mut self, octal: &str) -> Pak {
        self.umask = Some(octal.into());
        self
    }

    /// Another binary with pak's command line (a copy others may run).
    pub fn program(mut self, program: impl AsRef<Path>) -> Pak {
        self.program = program.as_ref().to_path_buf();
        self
    }

    /// Runs as `user` (through setpriv, when we are root); the program must
    /// be one the user can reach (see [`runnable_by_all`]).
    pub fn run_as(mut self, user: User) -> Pak {
        self.user = Some(user);
        self
    }

    /// Starts from an empty environment: only what `env` sets is passed.
    pub fn env_clear(mut self) -> Pak {
        self.clear_env = true;
        self
    }

    /// The process to spawn, for what the builder does not cover (a
    /// umask, another user, a pipe).
    pub fn command(&self) -> Command {
        // A umask is set through sh, which execs pak (so the pid is pak's);
        // another user through setpriv, which execs too.
        let first: &Path = match &self.umask {
            Some(_) => Path::new("sh"),
            None => &self.program,
        };
        let mut c = match self.user {
            Some(user) => as_user(first, user),
            None => Command::new(first),
        };
        if let Some(octal) = &self.umask {
            c.arg("-c")
                .arg(format!("umask {octal} && exec \"$0\" \"$@\""))
                .arg(&self.program);
        }
        if self.clear_env {
            c.env_clear();
        }
        if let Some(root) = &self.root {
            c.arg("--root").arg(root);
        }
        c.args(&self.args);
        if let Some(dir) = &self.cwd {
            c.current_dir(dir);
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    /// Runs it to the end.
    pub fn run(&self) -> Ran {
        let output = self
            .command()
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        Ran {
            what: self.to_string(),
            output,
        }
    }

    /// Runs it, which must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self) -> String {
        self.run().ok()
    }

    /// Runs it, which must fail; its stderr.
    #[track_caller]
    pub fn fails(&self) -> String {
        self.run().fails()
    }
}

impl std::fmt::Display for Pak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pak")?;
        if let Some(root) = &self.root {
            write!(f, " --root {}", root.display())?;
        }
        for a in &self.args {
            write!(f, " {}", a.to_string_lossy())?;
        }
        Ok(())
    }
}

/// A finished pak run.
#[derive(Debug)]
pub struct Ran {
    what: String,
    pub output: Output,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// stdout then stderr: what a user sees on a terminal.
    pub fn text(&self) -> String {
        self.stdout() + &self.stderr()
    }

    /// It succeeded; its stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert!(
            self.success(),
            "{} failed ({})\nstdout: {}\nstderr: {}",
            self.what,
            self.output.status,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    /// It failed, and did not crash; its stderr.
    #[track_caller]
    pub fn fails(self) -> String {
        assert!(
            !self.success(),
            "{} should have failed\nstdout: {}\nstderr: {}",
            self.what,
            self.stdout(),
            self.stderr()
        );
        // A refusal is an error message and exit 1, never a panic (101)
        // or a signal.
        assert!(
            self.output.status.code().is_some_and(|c| c != 101),
            "{} crashed ({})\nstderr: {}",
            self.what,
            self.output.status,
            self.stderr()
        );
        self.stderr()
    }
}

/// A package to build with `pak pkg create`: its `.PAKINFO` fields and
/// files. Arch `any` unless set.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: String,
    arch: String,
    requires: Vec<String>,
    provides: Vec<String>,
    /// More `.PAKINFO` lines, verbatim.
    extra: String,
    files: Vec<(String, Vec<u8>, u32)>,
}

impl Package {
    pub fn new(name: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: "any".into(),
            requires: vec![],
            provides: vec![],
            extra: String::new(),
            files: vec![],
        }
    }

    pub fn arch(mut self, arch: &str) -> Package {
        self.arch = arch.into();
        self
    }

    pub fn requires(mut self, requires: &[&str]) -> Package {
        self.requires.extend(requires.iter().map(|r| r.to_string()));
        self
    }

    pub fn provides(mut self, provides: &[&str]) -> Package {
        self.provides.extend(provides.iter().map(|p| p.to_string()));
        self
    }

    /// A line of `.PAKINFO` the builder has no method for.
    pub fn pakinfo_line(mut self, line: &str) -> Package {
        self.extra.push_str(line);
        self.extra.push('\n');
        self
    }

    /// A file (mode 0644) at `path`, relative to the root it installs into.
    pub fn file(self, path: &str, content: impl AsRef<[u8]>) -> Package {
        self.file_mode(path, content, 0o644)
    }

    pub fn file_mode(mut self, path: &str, content: impl AsRef<[u8]>, mode: u32) -> Package {
        self.files
            .push((path.into(), content.as_ref().to_vec(), mode));
        self
    }

    /// The file name `pak pkg create` gives it.
    pub fn file_name(&self) -> String {
        format!("{}-{}-{}.pak", self.name, self.version, self.arch)
    }

    pub fn pakinfo(&self) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut info = format!(
            "name = \"{}\"\nversion = \"{}\"\narch = \"{}\"\n",
            self.name, self.version, self.arch
        );
        if !self.requires.is_empty() {
            info.push_str(&format!("requires = [{}]\n", list(&self.requires)));
        }
        if !self.provides.is_empty() {
            info.push_str(&format!("provides = [{}]\n", list(&self.provides)));
        }
        info + &self.extra
    }

    /// Its files under `dir` (without `.PAKINFO`).
    pub fn write_files(&self, dir: &Path) {
        for (path, content, mode) in &self.files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
            chmod(&p, *mode);
        }
    }

    /// Its source directory (files and `.PAKINFO`), as `pak pkg create` takes it.
    pub fn write_source(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        self.write_files(dir);
        std::fs::write(dir.join(".PAKINFO"), self.pakinfo()).unwrap();
    }

    /// A stand-in kernel: `boot/vmlinuz-1.0-test` and a modules tree with
    /// one module (the filesystems the initramfs needs built in). Enough
    /// for `pak build`, which copies a kernel but never runs it.
    pub fn kernel(name: &str) -> Package {
        let modules = "usr/lib/modules/1.0-test";
        Package::new(name, "1.0-1")
            .arch("x86_64")
            .file("boot/vmlinuz-1.0-test", "a stand-in kernel")
            .file(
                &format!("{modules}/kernel/drivers/misc/dummy.ko"),
                fake_module(),
            )
            .file(
                &format!("{modules}/modules.builtin"),
                "kernel/fs/squashfs/squashfs.ko\nkernel/fs/overlayfs/overlay.ko\nkernel/fs/ext4/ext4.ko\nkernel/drivers/md/dm-verity.ko\n",
            )
    }

    /// A stand-in systemd-boot: the file pak copies onto the ESP.
    pub fn boot_loader(name: &str) -> Package {
        Package::new(name, "1.0-1").arch("x86_64").file(
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            "MZ a stand-in boot loader",
        )
    }
}

/// The smallest ELF64 with a `.modinfo` section: what pak reads of a module.
pub fn fake_module() -> Vec<u8> {
    let modinfo = b"license=GPL\0description=a stand-in module\0";
    let names = b"\0.modinfo\0.shstrtab\0";
    let data = 64;
    let names_at = data + modinfo.len();
    let shoff = (names_at + names.len()).next_multiple_of(8);
    let mut b = vec![0u8; shoff + 3 * 64];
    b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    b[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    b[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
    b[data..names_at].copy_from_slice(modinfo);
    b[names_at..names_at + names.len()].copy_from_slice(names);
    for (i, name, off, size) in [
        (1, 1u32, data, modinfo.len()),
        (2, 10u32, names_at, names.len()),
    ] {
        let h = shoff + i * 64;
        b[h..h + 4].copy_from_slice(&name.to_le_bytes());
        b[h + 0x18..h + 0x20].copy_from_slice(&(off as u64).to_le_bytes());
        b[h + 0x20..h + 0x28].copy_from_slice(&(size as u64).to_le_bytes());
    }
    b
}

/// A project directory with a signed local repository (`repo/`, key
/// `local`), its own store root (`root/`), and a Pakfile naming that
/// repository; pak runs in it as a user would.
pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        Project::with_prefix(".tmp")
    }

    /// One whose directory's name starts with `prefix`, to find it when a
    /// test keeps it.
    pub fn with_prefix(prefix: &str) -> Project {
        let p = Project {
            dir: tempfile::Builder::new().prefix(prefix).tempdir().unwrap(),
        };
        std::fs::create_dir(p.repo()).unwrap();
        p.ok(&["key", "generate", "local"]);
        p
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `rel` in the project directory.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir().join(rel)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// pak in the project directory with store root `root/` (change it
    /// with [`Pak::root`]).
    pub fn pak<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Pak {
        pak(args).cwd(self.dir()).root(self.path("root"))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.pak(args).command()
    }

    /// Runs pak, which must succeed; its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.pak(args).ok()
    }

    /// Runs pak, which must fail; its stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        self.pak(args).fails()
    }

    /// `pak pkg create` of NAME VERSION (arch any) into the repository,
    /// shipping `/usr/share/NAME/VERSION`.
    pub fn package(&self, name: &str, version: &str, requires: &[&str]) {
        self.add(&Package::new(name, version).requires(requires).file(
            &format!("usr/share/{name}/{version}"),
            format!("{name} {version}\n"),
        ));
    }

    /// `pak pkg create` of `package` into the repository; the `.pak` file.
    pub fn add(&self, package: &Package) -> PathBuf {
        self.add_to("repo", package)
    }

    /// `pak pkg create` of `package` into `dir` (relative to the project),
    /// made if missing; the `.pak` file.
    pub fn add_to(&self, dir: impl AsRef<Path>, package: &Package) -> PathBuf {
        let src = self.path(format!("src-{}-{}", package.name, package.version));
        if src.exists() {
            std::fs::remove_dir_all(&src).unwrap();
        }
        package.write_source(&src);
        let out = self.path(dir);
        std::fs::create_dir_all(&out).unwrap();
        let made = self
            .pak(["pkg", "create"])
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .ok();
        let made = self.path(made.trim());
        assert_eq!(made, out.join(package.file_name()));
        made
    }

    /// Signs the repository's index anew.
    pub fn index(&self) {
        self.index_dir("repo");
    }

    /// Signs the index of the repository `dir` (relative to the project)
    /// with the project's key.
    pub fn index_dir(&self, dir: impl AsRef<Path>) {
        self.pak(["repo", "index"])
            .arg(self.path(dir))
            .args(["--key", "local.key"])
            .ok();
    }

    /// Writes the Pakfile with these `[packages]` lines.
    pub fn pakfile(&self, packages: &str) {
        self.pakfile_with(packages, "");
    }

    /// Writes the Pakfile with these `[packages]` lines and `more` after
    /// the local repository.
    pub fn pakfile_with(&self, packages: &str, more: &str) {
        self.write(
            "Pakfile",
            &format!(
                "[system]\nname = \"test\"\narch = \"x86_64\"\n\n[packages]\n{packages}\n[[repository]]\nname = \"local\"\nurl = \"repo\"\nkey = \"local.pub\"\n{more}"
            ),
        );
    }

    /// Writes `text` to `rel` in the project directory.
    pub fn write(&self, rel: impl AsRef<Path>, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: impl AsRef<Path>) -> String {
        let p = self.path(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
    }
}

/// A port of the host's loopback nothing listens on (for `--forward`).
#[allow(dead_code)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs `/` from 127.0.0.1:`port` until the page contains `needle` (a
/// guest's server coming up behind a forwarded port); the last body.
#[allow(dead_code)]
pub fn fetch_until(port: u16, needle: &str) -> String {
    use std::io::{Read, Write};
    let mut body = String::new();
    for _ in 0..120 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
            body.clear();
            let _ = s.read_to_string(&mut body);
            if body.contains(needle) {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    body
}

/// Builds the shipped `images/IMAGE` as a disk image `out`, from a copy of
/// its Pakfile beside `out` (images carry no lock: this one locks afresh).
#[allow(dead_code)]
pub fn build_shipped(image: &str, out: &Path) {
    let dir = out.parent().unwrap().join(image);
    std::fs::create_dir_all(&dir).unwrap();
    let pakfile = dir.join("Pakfile");
    std::fs::copy(
        workspace().join("images").join(image).join("Pakfile"),
        &pakfile,
    )
    .unwrap();
    pak_e2e(&[
        "--pakfile",
        pakfile.to_str().unwrap(),
        "build",
        "-o",
        out.to_str().unwrap(),
    ]);
}

/// nginx serving `root` on 127.0.0.1:`port` (QEMU guests reach it as
/// 10.0.2.2:`port`), each connection limited to `rate` (nginx's
/// `limit_rate`, "0" for none), with its logs and temporary files in
/// `dir`; stopped when dropped. Besides nginx's usual `access.log`,
/// `bytes.log` has a line `URI STATUS BODY_BYTES` per request.
pub struct Nginx {
    child: std::process::Child,
    port: u16,
    bytes_log: PathBuf,
}

impl Nginx {
    pub fn start(dir: &Path, root: &Path, port: u16, rate: &str) -> Nginx {
        let conf = dir.join("nginx.conf");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::write(
            &conf,
            format!(
                "master_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  log_format bytes '$request_uri $status $body_bytes_sent';\n  access_log {d}/access.log;\n  access_log {d}/bytes.log bytes;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    limit_rate {rate};\n  }}\n}}\n",
                d = dir.display(),
                root = root.display(),
            ),
        )
        .unwrap();
        let nginx = ["/usr/sbin/nginx", "/sbin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is not installed (tools/packages.txt lists it)");
        let server = Nginx {
            child: Command::new(nginx)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .spawn()
                .unwrap(),
            port,
            bytes_log: dir.join("bytes.log"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(server);
        panic!(
            "nginx did not listen on port {port}; see {}/error.log",
            dir.display()
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The body bytes sent since the log was last taken, except for the
    /// channel's metadata, and the requests (`URI STATUS BYTES`).
    pub fn take(&self) -> (u64, Vec<String>) {
        let text = std::fs::read_to_string(&self.bytes_log).unwrap_or_default();
        let _ = std::fs::write(&self.bytes_log, "");
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let bytes = lines
            .iter()
            .filter(|l| !l.starts_with("/channel.toml "))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        (bytes, lines)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes that do not compress (xorshift from `seed`): stand-in kernels,
/// initrds and file contents that fill real squashfs blocks.
pub fn patterned(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The description of stand-in generation `number`: system "test", a
/// 6.1 kernel at boot/vmlinuz-6.1, pak's initrd path.
pub fn stand_in_meta(
    number: u64,
    packages: Vec<pak::image::generation::PackageRef>,
) -> pak::image::generation::GenerationMeta {
    pak::image::generation::GenerationMeta {
        number,
        build_id: format!("{number:064}"),
        system: "test".into(),
        cmdline: "console=ttyS0".into(),
        tries: 3,
        kernel: "boot/vmlinuz-6.1".into(),
        kernel_version: "6.1".into(),
        initrd: pak::image::generation::INITRD_FILE.into(),
        written: None,
        packages,
    }
}

/// A sealed stand-in generation file and what its description names.
pub struct StandInGen {
    pub meta: pak::image::generation::GenerationMeta,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub path: PathBuf,
}

/// A disk image in `dir` whose slot a holds `g`, its entry marked good,
/// as `pak build` writes it: the dm-verity root hash in the entry and the
/// ESP's description. Slot b is empty.
pub fn stand_in_disk(dir: &Path, g: &StandInGen, layout: &pak::disk::Layout) -> PathBuf {
    use pak_boot::disk::{Slot, SlotBoot};
    let file = std::fs::read(&g.path).unwrap();
    let v = pak::image::verity::root_of(&g.path).unwrap();
    let mut m = g.meta.clone();
    m.written = Some(
        pak::image::generation::Written::of(
            &pak::util::fsutil::sha256_hex(&file),
            file.len() as u64,
            &g.kernel,
            &g.initrd,
        )
        .with_verity(v.clone()),
    );
    let description = m.to_toml();
    let cmdline = pak_boot::verity::entry_cmdline("console=ttyS0", Some(&v));
    let boot = SlotBoot {
        slot: Slot::A,
        generation: g.meta.number,
        system: "test",
        cmdline: &cmdline,
        tries: None,
        priority: 1,
        kernel: &g.kernel,
        initrd: &g.initrd,
        description: description.as_bytes(),
    };
    let files = pak_boot::disk::new_esp(b"MZ loader", &boot);
    let img = dir.join("disk.raw");
    pak::disk::create(&img, layout, &files, &g.path, "test").unwrap();
    img
}
