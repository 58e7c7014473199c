//! A generation: the assembled root of one system version, with its own
//! description under `/usr/lib/pak/`.
//!
//! This module decides *what* goes into the root (packages, configuration,
//! the steps maintainer scripts would have performed, pak's metadata); the
//! squashfs writer decides how it is laid out on disk.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::accounts::{self, Declared};
use crate::image::assemble::{Content, NodeKind, PkgEntry, RootTree};
use crate::image::sysconfig::{self, ConfigKind};
use crate::image::tmpfiles;
use crate::lock::{Lock, LockedPackage};
use crate::packages::maintscript::Unconverted;
use crate::spec::pakfile::{Init, Pakfile};

/// Where pak keeps a generation's own description inside it.
pub const META_DIR: &str = "usr/lib/pak";
pub const META_FILE: &str = "usr/lib/pak/generation.toml";
pub const LOCK_FILE: &str = "usr/lib/pak/Pakfile.lock";
pub const INITRD_FILE: &str = "usr/lib/pak/initrd.img";
/// The self-contained Pakfile that, with the lock, rebuilds the generation.
pub const PAKFILE_FILE: &str = "usr/lib/pak/Pakfile";
/// Beside it, the [files] content that is not text (see `sysconfig::embedded`).
pub const PAKFILE_FILES_DIR: &str = "usr/lib/pak/Pakfile.files";

/// `/usr/lib/pak/generation.toml`.
///
/// Fields a later pak adds are ignored, not refused (here and in
/// [`Written`] and [`PackageRef`]): after a rollback, an older generation's
/// pak reads the descriptions a newer one wrote on the ESP, and must still
/// list, switch and verify what it knows. pak writes these files itself;
/// what they vouch for is checked by sha256 and dm-verity, not by their
/// shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationMeta {
    pub number: u64,
    /// sha256 over the lock and the rendered configuration: two builds
    /// with the same build id hold the same bytes.
    pub build_id: String,
    pub system: String,
    /// Kernel command line the loader entry passes (before pak's own options).
    pub cmdline: String,
    pub tries: u32,
    /// Paths inside the root.
    pub kernel: String,
    pub kernel_version: String,
    pub initrd: String,
    /// Only in the copy beside the slot's kernel on the ESP: what was
    /// written, so the host side can check a slot and its boot files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<Written>,
    #[serde(default, rename = "package")]
    pub packages: Vec<PackageRef>,
}

/// The sha256 of what a switch (or `pak build`) wrote for a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The generation file in the slot's partition (squashfs, seal, hash
    /// tree, trailer): its first `image_size` bytes.
    pub image_sha256: String,
    pub image_size: u64,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    /// The slot's dm-verity root, which its loader entry passes to `/init`;
    /// `None` for a slot written before pak had verity roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<pak_boot::verity::Verity>,
    /// The slot's unified kernel image (`[boot] uki`), which boots it in
    /// place of the kernel and initrd above (which it contains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl Written {
    /// The record for a slot holding an image with this sha256 and size,
    /// booted by these kernel and initrd bytes.
    pub fn of(image_sha256: &str, image_size: u64, kernel: &[u8], initrd: &[u8]) -> Written {
        Written {
            image_sha256: image_sha256.to_string(),
            image_size,
            kernel_sha256: crate::util::fsutil::sha256_hex(kernel),
            initrd_sha256: crate::util::fsutil::sha256_hex(initrd),
            verity: None,
            uki_sha256: None,
        }
    }

    /// The same record for a slot booted by the unified kernel image `uki`.
    pub fn with_uki(self, uki: &[u8]) -> Written {
        Written {
            uki_sha256: Some(crate::util::fsutil::sha256_hex(uki)),
            ..self
        }
    }

    /// The same record for a slot whose root is checked by dm-verity.
    pub fn with_verity(self, verity: pak_boot::verity::Verity) -> Written {
        Written {
            verity: Some(verity),
            ..self
        }
    }
}

impl GenerationMeta {
    pub fn parse(text: &str) -> Result<Self> {
        Ok(toml::from_str(text)?)
    }
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("GenerationMeta always serialises")
    }
}

/// One locked package with the entries of its store tree.
pub struct PackageInput<'a> {
    pub locked: &'a LockedPackage,
    pub entries: Vec<PkgEntry>,
    /// Its maintainer scripts by name (a converted `.deb`'s), not run but read.
    pub scripts: BTreeMap<String, String>,
}

/// An assembled generation.
pub struct Assembled {
    pub tree: RootTree,
    pub meta: GenerationMeta,
    /// The lock the generation carries: the one given, with every account
    /// id the build allocated pinned in `[accounts]`.
    pub lock: Lock,
    /// The steps of the packages' scripts that did not become configuration.
    pub unconverted: Vec<(String, Unconverted)>,
}

/// The text of a package's files under `dir` (canonical, e.g.
/// `usr/lib/sysusers.d/`) named `*.conf`, by path.
pub fn conf_files(entries: &[PkgEntry], dir: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in entries {
        let path = crate::packages::paths::canonical(&e.path);
        let Some(name) = path.strip_prefix(dir) else {
            continue;
        };
        if name.contains('/') || !name.ends_with(".conf") {
            continue;
        }
        let bytes = match &e.kind {
            NodeKind::File(Content::Stored { source, .. }) => std::fs::read(source)
                .with_context(|| format!("cannot read {} from the store", source.display()))?,
            NodeKind::File(Content::Data(b)) => b.clone(),
            _ => continue,
        };
        out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
    }
    out.sort();
    Ok(out)
}

/// Builds the root tree of generation `number`, minus the initrd (which is
/// made from this tree's kernel modules; add it with [`add_initrd`]).
pub fn assemble(
    pakfile: &Pakfile,
    lock: &Lock,
    packages: &[PackageInput<'_>],
    number: u64,
) -> Result<Assembled> {
    let mut tree = RootTree::default();
    let mut declared = Declared::default();
    for p in packages {
        tree.add_package(&p.locked.name, &p.entries)?;
        let sysusers = conf_files(&p.entries, "usr/lib/sysusers.d/")?;
        declared.add_package(&p.locked.name, &p.scripts, &sysusers);
    }
    tree.add_skeleton();
    busybox_applets(&mut tree)?;
    let locked: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    crate::image::systemd::check_init(pakfile, &tree, &locked)?;
    let (kernel, kernel_version) = find_kernel(&tree)?;

    let table = accounts::allocate(pakfile, &lock.accounts, &declared)?;
    let mut lock = lock.clone();
    lock.accounts = table.pins.clone();
    let lock = &lock;
    let mut config = sysconfig::render(pakfile, &table)?;
    match pakfile.system.init {
        Init::Busybox => config.push(tmpfiles::render(&tree, &config, &table)?),
        // systemd-tmpfiles reads tmpfiles.d itself.
        Init::Systemd => config = for_systemd(pakfile, config, &tree)?,
    }
    let mut id = Sha256::new();
    id.update(lock.to_toml());
    for f in &config {
        id.update(f.path.as_bytes());
        match &f.kind {
            ConfigKind::File(b) => id.update(b),
            ConfigKind::Symlink(t) => id.update(t.as_bytes()),
        }
        id.update(format!("{:o}:{}:{}", f.mode, f.uid, f.gid));
    }
    id.update(pakfile.boot.cmdline.as_bytes());
    for f in config {
        let kind = match f.kind {
            ConfigKind::File(b) => crate::image::assemble::data(b),
            ConfigKind::Symlink(t) => NodeKind::Symlink(t),
        };
        tree.put(&f.path, kind, f.mode, f.uid, f.gid);
    }
    // What ldconfig would have written after the libraries were installed.
    if let Some(cache) = crate::image::ldcache::build(&tree) {
        tree.put(
            "etc/ld.so.cache",
            crate::image::assemble::data(cache),
            0o644,
            0,
            0,
        );
    }
    tree.move_var_to_factory();

    let meta = GenerationMeta {
        number,
        build_id: hex::encode(id.finalize()),
        system: pakfile.system.name.clone(),
        cmdline: pakfile.boot.cmdline.clone(),
        tries: pakfile.boot.tries,
        kernel,
        kernel_version,
        initrd: INITRD_FILE.into(),
        written: None,
        packages: lock
            .packages
            .iter()
            .map(|p| PackageRef {
                name: p.name.clone(),
                version: p.version.clone(),
                sha256: p.sha256.clone(),
            })
            .collect(),
    };
    tree.put(
        LOCK_FILE,
        crate::image::assemble::data(lock.to_toml().into_bytes()),
        0o644,
        0,
        0,
    );
    tree.put(
        META_FILE,
        crate::image::assemble::data(meta.to_toml().into_bytes()),
        0o644,
        0,
        0,
    );
    Ok(Assembled {
        tree,
        meta,
        lock: lock.clone(),
        unconverted: declared.unconverted,
    })
}

/// The files busybox init runs, which mean nothing under systemd.
const BUSYBOX_ONLY: &[&str] = &[
    "/etc/inittab",
    "/usr/lib/pak/rc.sysinit",
    "/usr/lib/pak/boot-complete",
    "/usr/lib/pak/shutdown",
    crate::image::network::SCRIPT,
    crate::image::network::DHCP_HOOK,
];

/// The configuration of a systemd image: busybox's boot scripts out,
/// systemd's units and files in, except where the Pakfile's own [files]
/// (or the embedded Pakfile) say otherwise. Sorted by path, as rendered.
fn for_systemd(
    pakfile: &Pakfile,
    config: Vec<sysconfig::ConfigFile>,
    tree: &RootTree,
) -> Result<Vec<sysconfig::ConfigFile>> {
    let mut out: BTreeMap<String, sysconfig::ConfigFile> = config
        .into_iter()
        .filter(|f| !BUSYBOX_ONLY.contains(&f.path.as_str()))
        .map(|f| (f.path.clone(), f))
        .collect();
    for f in crate::image::systemd::render(pakfile, tree)? {
        if pakfile.files.contains_key(&f.path) || f.path.starts_with("/usr/lib/pak/Pakfile") {
            continue;
        }
        out.insert(f.path.clone(), f);
    }
    Ok(out.into_values().collect())
}

pub fn add_initrd(tree: &mut RootTree, initrd: Vec<u8>) {
    tree.put(
        INITRD_FILE,
        crate::image::assemble::data(initrd),
        0o644,
        0,
        0,
    );
}

/// The kernel the image boots: exactly one `boot/vmlinuz-<version>` with
/// its `usr/lib/modules/<version>`.
fn find_kernel(tree: &RootTree) -> Result<(String, String)> {
    let kernels: Vec<&String> = tree
        .nodes
        .keys()
        .filter(|p| {
            p.strip_prefix("boot/vmlinuz-")
                .is_some_and(|v| !v.contains('/'))
        })
        .collect();
    match kernels.as_slice() {
        [one] => {
            let version = one.trim_start_matches("boot/vmlinuz-").to_string();
            if tree.get(&format!("usr/lib/modules/{version}")).is_none() {
                bail!(
                    "the kernel /{one} has no modules directory /usr/lib/modules/{version}; is the kernel package complete?"
                );
            }
            Ok(((*one).clone(), version))
        }
        [] => bail!(
            "no kernel in the image: no package ships /boot/vmlinuz-*. Add a kernel package to the Pakfile, e.g. linux-image-cloud-amd64 = \"*\" (the `base` profile has it)"
        ),
        many => bail!(
            "the image has {} kernels ({}); keep exactly one kernel package in the Pakfile",
            many.len(),
            many.iter()
                .map(|k| format!("/{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Debian's busybox-static ships the binary alone; the applet links that
/// `busybox --install` would make are added here. The applet list is read
/// from the binary itself (`busybox --list-full`), which is deterministic for
/// a given binary. Paths other packages already provide are left to them.
fn busybox_applets(tree: &mut RootTree) -> Result<()> {
    let Some((path, node)) = tree.resolve("usr/bin/busybox") else {
        return Ok(());
    };
    let NodeKind::File(Content::Stored { source, .. }) = &node.kind else {
        return Ok(());
    };
    let applets = list_applets(source)?;
    let target = format!("/{path}");
    for applet in applets {
        let applet = crate::packages::paths::canonical(&applet);
        if applet.is_empty() || tree.get(&applet).is_some() {
            continue;
        }
        tree.put(&applet, NodeKind::Symlink(target.clone()), 0o777, 0, 0);
    }
    Ok(())
}

fn list_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .env_clear()
        .output()
        .with_context(|| {
            format!(
                "cannot run {} --list-full to learn its applets (pak runs the image's busybox for this, so the image must match this machine's architecture)",
                busybox.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "{} --list-full failed: {}",
            busybox.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    list.sort();
    Ok(list)
}

/// Reads a generation's description from an assembled or mounted root.
pub fn read_meta(root: &Path) -> Result<GenerationMeta> {
    let path = root.join(META_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is missing: this is not a pak generation",
            path.display()
        )
    })?;
    GenerationMeta::parse(&text).with_context(|| format!("{} is malformed", path.display()))
}

/// What follows the squashfs in a generation file, in its padding: this
/// magic and the sha256 of the squashfs bytes. A generation file checks
/// itself, wherever it was copied from; the kernel ignores the padding.
/// Behind the padding come the dm-verity hash tree of everything before
/// it and pak's trailer ([`crate::image::verity`] has the layout).
const SEAL_MAGIC: &[u8; 8] = b"PAKSEAL1";
const SEAL_LEN: u64 = SEAL_MAGIC.len() as u64 + 32;

/// Where the seal's block ends: the data dm-verity covers.
pub fn sealed_size(used: u64) -> u64 {
    (used + SEAL_LEN).div_ceil(4096) * 4096
}

/// Seals the generation file at `path` (a squashfs as [`crate::image::squashfs::write`]
/// left it) and appends its dm-verity hash tree and trailer. Returns the
/// root the loader entry passes to `/init`.
pub fn seal(path: &Path) -> Result<pak_boot::verity::Verity> {
    Ok(seal_hashed(path, true)?.0)
}

/// [`seal`], also giving the sha256 and size of the whole generation file
/// (taken while it is written), and syncing it only when `durable` (a
/// temporary that goes into a disk image need not be).
pub fn seal_hashed(path: &Path, durable: bool) -> Result<(pak_boot::verity::Verity, String, u64)> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let used = crate::image::squashfs::Reader::open(&mut f, 0)?.bytes_used();
    f.seek(SeekFrom::Start(0))?;
    let mut hash = Sha256::new();
    std::io::copy(&mut (&mut f).take(used), &mut hash)?;
    let sha = hash.finalize();
    // Whatever followed the squashfs (an earlier seal and tree) goes first.
    f.set_len(used)?;
    f.set_len(sealed_size(used))?;
    f.seek(SeekFrom::Start(used))?;
    f.write_all(SEAL_MAGIC)?;
    f.write_all(&sha)?;
    drop(f);
    let data = sealed_size(used);
    let (verity, whole) = crate::image::verity::append_hashed(path, data, &sha, durable)?;
    let size = data + crate::image::verity::added_size(verity.data_blocks);
    Ok((verity, hex::encode(whole), size))
}

/// Whether the generation at byte `base` of `f` (a generation file, or a
/// slot of a disk) still matches the sha256 sealed behind it: `false` for
/// one changed since it was written, or never sealed.
pub fn seal_intact<R: std::io::Read + std::io::Seek>(f: &mut R, base: u64) -> Result<bool> {
    use std::io::{Read, SeekFrom};
    let used = crate::image::squashfs::Reader::open(&mut *f, base)?.bytes_used();
    f.seek(SeekFrom::Start(base))?;
    let mut hash = Sha256::new();
    std::io::copy(&mut (&mut *f).take(used), &mut hash)?;
    let mut seal = [0u8; 40];
    if f.read_exact(&mut seal).is_err() {
        return Ok(false);
    }
    Ok(&seal[..8] == SEAL_MAGIC && seal[8..] == hash.finalize()[..])
}

/// A generation file that passed [`check`].
#[derive(Debug, Clone)]
pub struct Checked {
    /// What goes to a slot: the squashfs, its seal, the tree and trailer.
    pub size: u64,
    pub sha256: String,
    pub verity: pak_boot::verity::Verity,
}

/// Checks a generation file whose squashfs occupies `used` bytes, in one
/// pass: its seal (the squashfs's sha256), and its dm-verity tree and
/// trailer, recomputed from the data. A file that fails is never written
/// to a slot.
pub fn check<R: std::io::Read + std::io::Seek>(r: &mut R, used: u64) -> Result<Checked> {
    use crate::image::verity::{self, Trailer, TreeBuilder};
    use std::io::SeekFrom;
    let data = sealed_size(used);
    let data_blocks = data / 4096;
    let size = data + verity::added_size(data_blocks);
    let len = r.seek(SeekFrom::End(0))?;
    if len < data {
        bail!("it ends at byte {len}, before its seal at {used}");
    }
    r.seek(SeekFrom::Start(0))?;
    let mut inner = Sha256::new();
    let mut whole = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    let mut seal = Vec::new();
    // The salt, which every hash starts with, is in the trailer at the
    // end: read it before the data. The tree is then compared with the
    // one its data gives.
    let mut trailer_bytes = vec![0u8; 4096];
    if len >= size {
        r.seek(SeekFrom::Start(size - 4096))?;
        r.read_exact(&mut trailer_bytes)?;
        r.seek(SeekFrom::Start(0))?;
    }
    let trailer = Trailer::decode(&trailer_bytes, data_blocks);
    let mut tree = trailer.as_ref().ok().map(|t| TreeBuilder::new(&t.salt));
    let mut rest = Vec::new();
    let end = if trailer.is_ok() { size } else { data };
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..n])?;
        let chunk = &buf[..n];
        whole.update(chunk);
        let inner_end = used.saturating_sub(at).min(n as u64) as usize;
        inner.update(&chunk[..inner_end]);
        let seal_to = (used + SEAL_LEN).saturating_sub(at).min(n as u64) as usize;
        if seal_to > inner_end {
            seal.extend_from_slice(&chunk[inner_end..seal_to]);
        }
        let data_end = data.saturating_sub(at).min(n as u64) as usize;
        if let Some(t) = &mut tree {
            t.update(&chunk[..data_end]);
        }
        rest.extend_from_slice(&chunk[data_end..]);
        at += n as u64;
    }
    if &seal[..8] != SEAL_MAGIC {
        bail!(
            "it carries no pak seal behind its squashfs; was it written by `pak build --generation`?"
        );
    }
    if seal[8..40] != inner.finalize()[..] {
        bail!("its content does not match the sha256 sealed into it");
    }
    if trailer.is_err() && len > data && len < size {
        bail!(
            "it ends at byte {len}, inside its dm-verity hash tree (which ends at {size}): the file is incomplete"
        );
    }
    let trailer = trailer?;
    let built = tree.expect("a trailer gives a tree").finish()?;
    let stored = &rest[..rest.len() - 4096];
    if built.root != trailer.root {
        bail!(
            "its dm-verity hash tree does not match its content: its trailer records root hash {}, its content hashes to {}; it was changed after `pak build`",
            hex::encode(trailer.root),
            hex::encode(built.root)
        );
    }
    if let Some(block) = built
        .bytes
        .chunks(4096)
        .zip(stored.chunks(4096))
        .position(|(a, b)| a != b)
    {
        bail!(
            "its dm-verity hash tree does not match its content at hash block {block}: the tree was changed or damaged after `pak build`"
        );
    }
    Ok(Checked {
        size,
        sha256: hex::encode(whole.finalize()),
        verity: trailer.verity(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn entry(path: &str) -> PkgEntry {
        PkgEntry {
            path: path.into(),
            kind: NodeKind::File(Content::Stored {
                source: PathBuf::from("/dev/null"),
                size: 0,
                sha256: "00".into(),
            }),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }

    fn locked(name: &str) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: "1".into(),
            arch: "x86_64".into(),
            sha256: "cd".repeat(32),
            size: 1,
            source: "r".into(),
            location: "x".into(),
            requires: vec![],
            provides: vec![],
            conflicts: vec![],
            archive_date: None,
        }
    }

    #[test]
    fn assembles_config_meta_and_kernel() {
        let pakfile = Pakfile::parse("[system]\nname = \"t\"\n").unwrap();
        let k = locked("kernel");
        let lock = Lock::new(vec![k.clone()]);
        let inputs = [PackageInput {
            locked: &k,
            entries: vec![
                entry("boot/vmlinuz-6.1.0-1-cloud-amd64"),
                entry("lib/modules/6.1.0-1-cloud-amd64/kernel/x.ko"),
            ],
            scripts: BTreeMap::new(),
        }];
        let Assembled { tree, meta, .. } = assemble(&pakfile, &lock, &inputs, 7).unwrap();
        assert_eq!(meta.kernel_version, "6.1.0-1-cloud-amd64");
        assert_eq!(meta.number, 7);
        assert!(
            tree.get("usr/lib/modules/6.1.0-1-cloud-amd64/kernel/x.ko")
                .is_some()
        );
        let NodeKind::File(Content::Data(bytes)) = &tree.get(META_FILE).unwrap().kind else {
            panic!()
        };
        assert_eq!(
            GenerationMeta::parse(std::str::from_utf8(bytes).unwrap()).unwrap(),
            meta
        );
        assert!(tree.get("etc/hostname").is_some());
        let again = assemble(&pakfile, &lock, &inputs, 7).unwrap().meta;
        assert_eq!(again.build_id, meta.build_id);
        let other = Pakfile::parse("[system]\nname = \"u\"\n").unwrap();
        assert_ne!(
            assemble(&other, &lock, &inputs, 7).unwrap().meta.build_id,
            meta.build_id
        );
    }

    #[test]
    fn a_later_paks_fields_are_read_past() {
        let text = "number = 3\nbuild_id = \"b\"\nsystem = \"s\"\ncmdline = \"\"\ntries = 3\n\
            kernel = \"boot/vmlinuz\"\nkernel_version = \"6.1\"\ninitrd = \"i\"\n\
            future = \"x\"\n\n[written]\nimage_sha256 = \"a\"\nimage_size = 1\n\
            kernel_sha256 = \"k\"\ninitrd_sha256 = \"i\"\n\n[written.measured]\npcr = 11\n\n\
            [[package]]\nname = \"p\"\nversion = \"1\"\nsha256 = \"s\"\norigin = \"y\"\n";
        let m = GenerationMeta::parse(text).unwrap();
        assert_eq!(m.number, 3);
        assert_eq!(m.written.unwrap().image_size, 1);
        assert_eq!(m.packages[0].name, "p");
        // A wrong type is still an error.
        assert!(GenerationMeta::parse(&text.replace("number = 3", "number = \"3\"")).is_err());
    }

    #[test]
    fn no_kernel_is_a_clear_error() {
        let pakfile = Pakfile::default();
        let err = assemble(&pakfile, &Lock::new(vec![]), &[], 1)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("linux-image-cloud-amd64"), "{err}");
    }
}
