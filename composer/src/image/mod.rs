//! `pak build`: from a Pakfile to a generation (squashfs) and a bootable
//! disk image. The steps follow the data flow: lock and fetch, assemble the
//! root, make the initramfs from its kernel modules, write the squashfs,
//! then the ESP (systemd-boot, kernel, initrd, loader entry) and the disk.

pub mod accounts;
pub mod assemble;
pub mod check;
pub mod compare;
pub mod cpio;
pub mod generation;
pub mod initramfs;
pub mod kmod;
pub mod ldcache;
pub mod memo;
pub mod network;
pub mod squashfs;
pub mod ssh;
pub mod sysconfig;
pub mod systemd;
pub mod tmpfiles;
pub mod uki;
pub mod verify;
pub mod verity;

use crate::util::timings::{Step, time};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::disk::{self, Layout};
use crate::lock::{Lock, LockedPackage};
use crate::project::Project;
use crate::sources::Sources;
use crate::store::{Store, StoreEntry};
use assemble::{Content, NodeKind, PkgEntry, RootTree};
use generation::{GenerationMeta, PackageInput};

pub const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// An assembled generation, written as squashfs.
pub struct Built {
    pub meta: GenerationMeta,
    pub tree: RootTree,
    /// The generation file: squashfs, seal, dm-verity tree and trailer
    /// (for a disk image, maybe the one remembered in the cache).
    pub squashfs: PathBuf,
    /// That file, open: what a disk image's slot is copied from.
    pub file: std::fs::File,
    /// The sha256 and size of that file as written (before any UKIs are
    /// appended), so it need not be read again for them.
    pub sha256: String,
    pub size: u64,
    pub stats: squashfs::Stats,
    /// Its dm-verity root, which its loader entry carries.
    pub verity: pak_boot::verity::Verity,
    /// The lock the generation carries: the inputs' with every account id
    /// allocated pinned (see [`Project::pin_accounts`]).
    pub lock: Lock,
    /// (package, step) of the maintainer scripts that pak did not turn
    /// into configuration.
    pub unconverted: Vec<(String, crate::packages::maintscript::Unconverted)>,
    /// The account ids this build pinned anew, and whether the lock file
    /// now has them (not with `--locked`, nor when rebuilding an image).
    pub pinned: Vec<crate::lock::Change>,
    pub pins_written: bool,
}

/// The entries of a store package as the assembler sees them.
fn package_entries(e: &StoreEntry) -> Result<Vec<PkgEntry>> {
    let tree = e.tree();
    Ok(e.bom()?
        .entries
        .into_iter()
        .map(|b| {
            let kind = b.kind.map(|d| Content::Stored {
                source: tree.join(&b.path),
                size: d.size,
                sha256: d.sha256,
            });
            PkgEntry {
                path: b.path,
                kind,
                mode: b.mode,
                uid: b.uid,
                gid: b.gid,
            }
        })
        .collect())
}

/// Every inode of the image gets this time: `SOURCE_DATE_EPOCH` when set,
/// else the epoch. Never the clock.
pub fn mtime() -> u32 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// What a build takes besides the Pakfile: the locked packages, in the
/// store, and the one timestamp every inode gets.
pub struct Inputs {
    pub lock: Lock,
    pub fetched: Vec<(LockedPackage, StoreEntry)>,
    pub mtime: u32,
    /// Whether products remembered in the cache may serve ([`memo`]).
    pub memo: bool,
}

impl Inputs {
    /// As `pak build` has them: the project locked if needed, fetched, and
    /// `SOURCE_DATE_EPOCH`.
    pub fn of_project(project: &Project) -> Result<Inputs> {
        let (lock, fetched) = project.fetch()?;
        Ok(Inputs {
            lock,
            fetched,
            mtime: mtime(),
            memo: true,
        })
    }

    /// Exactly `lock`, never re-resolved whatever the Pakfile says (what a
    /// rebuild of an existing image needs), fetched through the project's
    /// repositories into its root.
    pub fn exactly(project: &Project, lock: Lock, mtime: u32) -> Result<Inputs> {
        project.check_builder(&lock)?;
        let store = Store::open(&project.root)?;
        let sources = Sources::from_pakfile(&project.pakfile)?;
        let bar = crate::util::progress::items(lock.packages.len() as u64, "fetch and extract");
        let entries = sources.fetch_all(&lock.packages, &project.root, &store, &|| bar.inc(1));
        bar.finish_and_clear();
        let fetched = lock.packages.iter().cloned().zip(entries?).collect();
        Ok(Inputs {
            lock,
            fetched,
            mtime,
            // A rebuild that checks an image makes everything afresh: a
            // remembered product would prove nothing.
            memo: false,
        })
    }
}

fn to_squashfs(tree: &RootTree) -> squashfs::Tree {
    let mut t = squashfs::Tree::default();
    t.entries.insert(
        String::new(),
        squashfs::Entry {
            kind: squashfs::Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        },
    );
    for (path, n) in &tree.nodes {
        let kind = n.kind.map_ref(|c| match c {
            Content::Stored { source, .. } => squashfs::Source::Path(source.clone()),
            Content::Data(b) => squashfs::Source::Bytes(b.clone()),
        });
        t.entries.insert(
            path.clone(),
            squashfs::Entry {
                kind,
                mode: n.mode,
                uid: n.uid,
                gid: n.gid,
                xattrs: vec![],
            },
        );
    }
    t
}

/// Reads a file of the assembled root (following links within it).
pub fn read_from_tree(tree: &RootTree, path: &str) -> Result<Vec<u8>> {
    let (_, node) = tree
        .resolve(path)
        .with_context(|| format!("the image has no /{path}"))?;
    match &node.kind {
        NodeKind::File(Content::Stored { source, .. }) => {
            std::fs::read(source).with_context(|| format!("cannot read {}", source.display()))
        }
        NodeKind::File(Content::Data(b)) => Ok(b.clone()),
        _ => bail!("/{path} in the image is not a file"),
    }
}

/// Builds generation `number` of the project into `out`, and pins the
/// accounts it allocated in the project's lock.
pub fn build_generation(project: &Project, number: u64, out: &Path) -> Result<Built> {
    let built = generation_from(project, &Inputs::of_project(project)?, number, out)?;
    pin(project, built)
}

fn pin(project: &Project, mut built: Built) -> Result<Built> {
    (built.pinned, built.pins_written) = project.pin_accounts(&built.lock)?;
    Ok(built)
}

/// Builds generation `number` of the project from `inputs` into `out`:
/// with `[boot] uki`, followed by its signed UKI for each slot
/// ([`uki::appendix`]), which a switch to it installs.
pub fn generation_from(
    project: &Project,
    inputs: &Inputs,
    number: u64,
    out: &Path,
) -> Result<Built> {
    // A bad signing key stops the build before it writes anything.
    let uki = uki::UkiBuild::from_pakfile(&project.pakfile)?;
    let built = sealed_generation(project, inputs, number, out, true)?;
    if let Some(u) = &uki {
        let kernel = read_from_tree(&built.tree, &built.meta.kernel)?;
        let initrd = read_from_tree(&built.tree, &built.meta.initrd)?;
        let [a, b] = pak_boot::disk::Slot::ALL;
        let ukis = uki::appendix::SlotUkis {
            a: slot_uki(u, &built, &kernel, &initrd, a)?,
            b: slot_uki(u, &built, &kernel, &initrd, b)?,
        };
        uki::appendix::append(out, &ukis)?;
    }
    Ok(built)
}

/// The UKI that boots `built` from `slot`: its kernel and initrd with the
/// slot's whole command line, root hash included, signed if a key is set.
fn slot_uki(
    u: &uki::UkiBuild,
    built: &Built,
    kernel: &[u8],
    initrd: &[u8],
    slot: pak_boot::disk::Slot,
) -> Result<Vec<u8>> {
    let cmdline = pak_boot::verity::entry_cmdline(&built.meta.cmdline, Some(&built.verity));
    u.image(
        &built.tree,
        kernel,
        initrd,
        &pak_boot::bls::boot_options(slot, built.meta.number, &cmdline),
        &built.meta.kernel_version,
    )
}

/// The generation as a slot holds it: squashfs, seal, dm-verity tree and
/// trailer. With `keep`, written to `out` and synced; else maybe only
/// found in the cache (and `out` a temporary for when it is not).
fn sealed_generation(
    project: &Project,
    inputs: &Inputs,
    number: u64,
    out: &Path,
    keep: bool,
) -> Result<Built> {
    let (lock, fetched, mtime) = (&inputs.lock, &inputs.fetched, inputs.mtime);
    let memo = inputs
        .memo
        .then(|| memo::Memo::new(&project.root.cache_dir()));
    let mut packages = Vec::new();
    for (locked, e) in fetched {
        let scripts = e.info()?.origin.map(|o| o.scripts).unwrap_or_default();
        packages.push(PackageInput {
            locked,
            entries: package_entries(e)?,
            scripts,
        });
    }
    let generation::Assembled {
        mut tree,
        meta,
        lock: pinned,
        unconverted,
    } = time(Step::Assemble, || {
        generation::assemble(&project.pakfile, lock, &packages, number)
    })?;
    drop(packages);

    let _initramfs = crate::util::timings::enter(Step::Initramfs);
    let boot = boot_files(&tree, fetched, &meta, memo.as_ref())?;
    // What the kernel package's maintainer script would have run depmod for.
    for (name, bytes) in boot.depmod {
        tree.put(
            &format!("usr/lib/modules/{}/{name}", meta.kernel_version),
            crate::image::assemble::data(bytes),
            0o644,
            0,
            0,
        );
    }
    generation::add_initrd(&mut tree, boot.initrd);
    drop(_initramfs);

    let opts = squashfs::Options {
        mtime,
        cache: Some(project.root.cache_dir().join("squashfs")),
        ..squashfs::Options::default()
    };
    let sq = to_squashfs(&tree);
    let digests: std::collections::HashMap<&Path, &str> = tree
        .nodes
        .values()
        .filter_map(|n| match &n.kind {
            NodeKind::File(Content::Stored { source, sha256, .. }) => {
                Some((source.as_path(), sha256.as_str()))
            }
            _ => None,
        })
        .collect();
    let key = memo
        .as_ref()
        .and_then(|_| memo::generation_key(&sq, &opts, |p| digests.get(p).map(|s| s.to_string())));
    let found = match (&memo, &key) {
        (Some(m), Some(k)) => time(Step::Squashfs, || m.generation(k)),
        _ => None,
    };
    let (mut file, path, stats, g) = match found {
        Some((mut file, path, g)) => {
            // Every block was served remembered.
            let stats = squashfs::Stats {
                bytes: g.bytes,
                inodes: g.inodes,
                data_blocks: g.data_blocks,
                cached_blocks: g.data_blocks,
                fragments: g.fragments,
            };
            if !keep {
                (file, path, stats, g)
            } else {
                time(Step::Squashfs, || -> Result<_> {
                    let mut to = std::fs::File::create(out)
                        .with_context(|| format!("cannot write {}", out.display()))?;
                    std::io::copy(&mut file, &mut to)
                        .with_context(|| format!("cannot write {} (disk full?)", out.display()))?;
                    to.sync_all()?;
                    Ok((std::fs::File::open(out)?, out.to_path_buf(), stats, g))
                })?
            }
        }
        None => {
            let stats = squashfs::write(&sq, out, &opts)?;
            let (verity, sha256, size) =
                time(Step::Squashfs, || generation::seal_hashed(out, keep))?;
            let g = memo::GenerationFile {
                sha256,
                size,
                verity,
                bytes: stats.bytes,
                inodes: stats.inodes,
                data_blocks: stats.data_blocks,
                fragments: stats.fragments,
            };
            if let (Some(m), Some(k)) = (&memo, &key) {
                time(Step::Squashfs, || m.keep_generation(k, out, &g));
            }
            let file = std::fs::File::open(out)
                .with_context(|| format!("cannot read {}", out.display()))?;
            (file, out.to_path_buf(), stats, g)
        }
    };
    std::io::Seek::rewind(&mut file)?;
    Ok(Built {
        meta,
        tree,
        squashfs: path,
        file,
        sha256: g.sha256,
        size: g.size,
        stats,
        verity: g.verity,
        lock: pinned,
        unconverted,
        pinned: Vec::new(),
        pins_written: false,
    })
}

/// The initramfs (pak itself as /init, the modules from the kernel's store
/// tree: the files, not the assembled description) and depmod's files,
/// remembered by the kernel package and the /init program.
fn boot_files(
    tree: &RootTree,
    fetched: &[(LockedPackage, StoreEntry)],
    meta: &GenerationMeta,
    memo: Option<&memo::Memo>,
) -> Result<memo::BootFiles> {
    let (kernel_pkg, kernel_entry, modules_dir) = fetched
        .iter()
        .flat_map(|(p, e)| {
            let t = e.tree();
            [
                t.join("lib/modules").join(&meta.kernel_version),
                t.join("usr/lib/modules").join(&meta.kernel_version),
            ]
            .map(|d| (p, e, d))
        })
        .find(|(_, _, d)| d.join("kernel").is_dir())
        .with_context(|| {
            format!(
                "no package holds the modules of kernel {}",
                meta.kernel_version
            )
        })?;
    let init_missing = "pak itself is an image's initramfs /init: add `pak = \"*\"` to [packages] (the base profile has it)";
    let init_digest = content_digest(tree, INIT).context(init_missing)?;
    let key = memo.and_then(|_| {
        let mut k = memo::KeyBuilder::new("boot files")?;
        k.field(kernel_entry.key.as_bytes())
            .field(modules_dir.as_os_str().as_encoded_bytes())
            .field(init_digest.as_bytes());
        Some(k.finish())
    });
    if let (Some(m), Some(k)) = (memo, &key)
        && let Some(found) = m.boot_files(k)
    {
        return Ok(found);
    }
    let init = read_from_tree(tree, INIT).context(init_missing)?;
    let initrd = crate::image::initramfs::build(&init, &modules_dir).with_context(|| {
        format!(
            "cannot make the initramfs from kernel package {} {}",
            kernel_pkg.name, kernel_pkg.version
        )
    })?;
    let files = memo::BootFiles {
        initrd,
        depmod: crate::image::kmod::depmod(&modules_dir)?,
    };
    if let (Some(m), Some(k)) = (memo, &key) {
        m.keep_boot_files(k, &files);
    }
    Ok(files)
}

/// The initramfs `/init`: pak itself.
const INIT: &str = "usr/bin/pak";

/// The sha256 of a file of the assembled root (following links within
/// it): its package's record for a store file, else of its bytes.
fn content_digest(tree: &RootTree, path: &str) -> Result<String> {
    let (_, node) = tree
        .resolve(path)
        .with_context(|| format!("the image has no /{path}"))?;
    match &node.kind {
        NodeKind::File(Content::Stored { sha256, .. }) => Ok(sha256.clone()),
        NodeKind::File(Content::Data(b)) => Ok(crate::util::fsutil::sha256_hex(b)),
        _ => bail!("/{path} in the image is not a file"),
    }
}

/// The ESP's files for a new disk whose slot a holds `built`: the same
/// files a switch writes for a slot ([`pak_boot::disk::SlotBoot`]), with
/// the boot loader and its configuration.
pub fn esp_files(built: &Built, uki: Option<&uki::UkiBuild>) -> Result<Vec<(String, Vec<u8>)>> {
    let kernel = read_from_tree(&built.tree, &built.meta.kernel)?;
    let initrd = read_from_tree(&built.tree, &built.meta.initrd)?;
    let mut m = built.meta.clone();
    m.written = Some(
        generation::Written::of(&built.sha256, built.size, &kernel, &initrd)
            .with_verity(built.verity.clone()),
    );
    let cmdline = pak_boot::verity::entry_cmdline(&m.cmdline, Some(&built.verity));
    let slot = pak_boot::disk::Slot::A;
    let uki_image = match uki {
        Some(u) => Some(slot_uki(u, built, &kernel, &initrd, slot)?),
        None => None,
    };
    if let Some(image) = &uki_image {
        m.written = m.written.map(|w| w.with_uki(image));
    }
    let sdboot = read_from_tree(&built.tree, SYSTEMD_BOOT).context(
        "the image has no systemd-boot (/usr/lib/systemd/boot/efi/systemd-bootx64.efi); add systemd-boot-efi to [packages] (the base profile has it)",
    )?;
    let description = m.to_toml();
    let boot = pak_boot::disk::SlotBoot {
        slot,
        generation: m.number,
        system: &m.system,
        cmdline: &cmdline,
        tries: Some(m.tries),
        // The only entry: any priority boots; later switches count up from it.
        priority: 1,
        kernel: &kernel,
        initrd: &initrd,
        description: description.as_bytes(),
    };
    Ok(match (uki, &uki_image) {
        (Some(u), Some(image)) => {
            pak_boot::disk::new_esp_booting(&u.boot_loader(sdboot)?, &boot, Some(image))
        }
        _ => pak_boot::disk::new_esp(&sdboot, &boot),
    })
}

/// Refuses a generation that, with its hash tree, does not fit a slot,
/// naming the sizes and the setting to raise.
fn check_fits(built: &Built, layout: &Layout) -> Result<()> {
    let size = built.size;
    if size <= layout.slot {
        return Ok(());
    }
    let tree = verity::added_size(built.verity.data_blocks);
    let mib = |b: u64| b.div_ceil(1 << 20);
    bail!(
        "generation {} is {} MiB ({} MiB squashfs and seal, {} MiB dm-verity hash tree) but a slot holds {} MiB; raise [image] slot_size (or [image] size, which the slots share)",
        built.meta.number,
        mib(size),
        mib(size - tree),
        mib(tree),
        layout.slot >> 20
    )
}

/// `pak build -o IMAGE`, pinning the accounts it allocated in the lock.
pub fn build_image(project: &Project, out: &Path) -> Result<Built> {
    let built = image_from(project, &Inputs::of_project(project)?, out)?;
    pin(project, built)
}

/// The disk image of the project from `inputs`, into `out`.
pub fn image_from(project: &Project, inputs: &Inputs, out: &Path) -> Result<Built> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Read the signing key first: a bad one stops the build before it
    // writes anything.
    let uki = uki::UkiBuild::from_pakfile(&project.pakfile)?;
    let gen_tmp = tempfile::Builder::new()
        .prefix(".gen-")
        .suffix(".sqfs")
        .tempfile_in(dir)?;
    // Slot a gets the generation; the ESP its UKI.
    let built = sealed_generation(project, inputs, 1, gen_tmp.path(), false)?;
    let img = &project.pakfile.image;
    let size = |s: &Option<String>| s.as_deref().map(disk::parse_size).transpose();
    let layout = Layout::new(
        size(&img.size)?,
        size(&img.esp_size)?,
        size(&img.slot_size)?,
    )?;
    check_fits(&built, &layout)?;
    let _disk = crate::util::timings::enter(Step::Disk);
    let files = esp_files(&built, uki.as_ref())?;
    disk::create_from(out, &layout, &files, &built.file, &built.meta.build_id)?;
    Ok(built)
}
