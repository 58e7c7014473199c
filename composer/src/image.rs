//! `pak build`: from a Pakfile to a generation (squashfs) and a bootable
//! disk image. The steps follow the data flow: lock and fetch, assemble the
//! root, make the initramfs from its kernel modules, write the squashfs,
//! then the ESP (systemd-boot, kernel, initrd, loader entry) and the disk.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::assemble::{NodeKind, PkgEntry, RootTree};
use crate::bom;
use crate::disk::{self, Layout};
use crate::generation::{self, GenerationMeta, PackageInput};
use crate::project::Project;
use crate::squashfs;
use crate::store::StoreEntry;

pub const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// An assembled generation, written as squashfs.
pub struct Built {
    pub meta: GenerationMeta,
    pub tree: RootTree,
    pub squashfs: PathBuf,
    pub stats: squashfs::Stats,
}

/// The entries of a store package as the assembler sees them.
fn package_entries(e: &StoreEntry) -> Result<Vec<PkgEntry>> {
    let tree = e.tree();
    Ok(e.bom()?
        .entries
        .into_iter()
        .map(|b| {
            let kind = match b.kind {
                bom::Kind::Dir => NodeKind::Dir,
                bom::Kind::File { size, sha256 } => NodeKind::File {
                    source: tree.join(&b.path),
                    size,
                    sha256,
                },
                bom::Kind::Symlink { target } => NodeKind::Symlink(target),
                bom::Kind::HardLink { target } => NodeKind::HardLink(target),
                bom::Kind::CharDev { major, minor } => NodeKind::CharDev { major, minor },
                bom::Kind::BlockDev { major, minor } => NodeKind::BlockDev { major, minor },
                bom::Kind::Fifo => NodeKind::Fifo,
            };
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
fn mtime() -> u32 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
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
        let kind = match &n.kind {
            NodeKind::Dir => squashfs::Kind::Dir,
            NodeKind::File { source, .. } => {
                squashfs::Kind::File(squashfs::Source::Path(source.clone()))
            }
            NodeKind::Data(b) => squashfs::Kind::File(squashfs::Source::Bytes(b.clone())),
            NodeKind::Symlink(t) => squashfs::Kind::Symlink(t.clone()),
            NodeKind::HardLink(t) => squashfs::Kind::HardLink(t.clone()),
            NodeKind::CharDev { major, minor } => squashfs::Kind::CharDev {
                major: *major,
                minor: *minor,
            },
            NodeKind::BlockDev { major, minor } => squashfs::Kind::BlockDev {
                major: *major,
                minor: *minor,
            },
            NodeKind::Fifo => squashfs::Kind::Fifo,
        };
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
        NodeKind::File { source, .. } => {
            std::fs::read(source).with_context(|| format!("cannot read {}", source.display()))
        }
        NodeKind::Data(b) => Ok(b.clone()),
        _ => bail!("/{path} in the image is not a file"),
    }
}

/// Builds generation `number` of the project into `out`.
pub fn build_generation(project: &Project, number: u64, out: &Path) -> Result<Built> {
    let (lock, fetched) = project.fetch()?;
    let entries: Vec<(usize, Vec<PkgEntry>)> = fetched
        .iter()
        .enumerate()
        .map(|(i, (_, e))| package_entries(e).map(|v| (i, v)))
        .collect::<Result<_>>()?;
    let inputs: Vec<PackageInput> = entries
        .into_iter()
        .map(|(i, entries)| PackageInput {
            locked: &fetched[i].0,
            entries,
        })
        .collect();
    let (mut tree, meta) = generation::assemble(&project.pakfile, &lock, &inputs, number)?;

    // The initramfs: pak itself as /init, the modules from the kernel's
    // store tree (the files, not the assembled description).
    let modules_dir = fetched
        .iter()
        .map(|(_, e)| e.tree())
        .flat_map(|t| {
            [
                t.join("lib/modules").join(&meta.kernel_version),
                t.join("usr/lib/modules").join(&meta.kernel_version),
            ]
        })
        .find(|p| p.join("kernel").is_dir())
        .with_context(|| {
            format!(
                "no package holds the modules of kernel {}",
                meta.kernel_version
            )
        })?;
    let init = read_from_tree(&tree, "usr/bin/pak").context(
        "the image has no /usr/bin/pak to serve as its /init; add `pak = \"*\"` to [packages] (the base profile has it)",
    )?;
    let initrd = crate::initramfs::build(&init, &modules_dir)?;
    // What the kernel package's maintainer script would have run depmod for.
    for (name, bytes) in crate::kmod::depmod(&modules_dir)? {
        tree.put(
            &format!("usr/lib/modules/{}/{name}", meta.kernel_version),
            NodeKind::Data(bytes),
            0o644,
            0,
            0,
        );
    }
    generation::add_initrd(&mut tree, initrd);

    let opts = squashfs::Options {
        mtime: mtime(),
        cache: Some(project.root.cache_dir().join("squashfs")),
        ..squashfs::Options::default()
    };
    let stats = squashfs::write(&to_squashfs(&tree), out, &opts)?;
    generation::seal(out)?;
    Ok(Built {
        meta,
        tree,
        squashfs: out.to_path_buf(),
        stats,
    })
}

/// The ESP's files for a new disk whose slot a holds `built`.
pub fn esp_files(built: &Built) -> Result<Vec<(String, Vec<u8>)>> {
    let kernel = read_from_tree(&built.tree, &built.meta.kernel)?;
    let initrd = read_from_tree(&built.tree, &built.meta.initrd)?;
    let image = std::fs::read(&built.squashfs)
        .with_context(|| format!("cannot read {}", built.squashfs.display()))?;
    let mut m = built.meta.clone();
    m.written = Some(generation::Written::of(
        &crate::fsutil::sha256_hex(&image),
        image.len() as u64,
        &kernel,
        &initrd,
    ));
    let sdboot = read_from_tree(&built.tree, SYSTEMD_BOOT).context(
        "the image has no systemd-boot (/usr/lib/systemd/boot/efi/systemd-bootx64.efi); add systemd-boot-efi to [packages] (the base profile has it)",
    )?;
    let entry = pak_boot::bls::EntryName {
        slot: 'a',
        generation: m.number,
        tries: Some((m.tries, 0)),
    };
    Ok(vec![
        ("EFI/BOOT/BOOTX64.EFI".into(), sdboot),
        (
            "loader/loader.conf".into(),
            pak_boot::bls::LOADER_CONF.as_bytes().to_vec(),
        ),
        (
            format!("loader/entries/{entry}"),
            pak_boot::bls::render_entry(&m.system, 'a', m.number, 1, &m.cmdline).into_bytes(),
        ),
        ("pak/a/vmlinuz".into(), kernel),
        ("pak/a/initrd".into(), initrd),
        // The slot's description beside its kernel, so the host side can
        // report slots without reading their squashfs.
        ("pak/a/generation.toml".into(), m.to_toml().into_bytes()),
    ])
}

/// `pak build -o IMAGE`.
pub fn build_image(project: &Project, out: &Path) -> Result<Built> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let gen_tmp = tempfile::Builder::new()
        .prefix(".gen-")
        .suffix(".sqfs")
        .tempfile_in(dir)?;
    let built = build_generation(project, 1, gen_tmp.path())?;
    let img = &project.pakfile.image;
    let size = |s: &Option<String>| s.as_deref().map(disk::parse_size).transpose();
    let layout = Layout::new(
        size(&img.size)?,
        size(&img.esp_size)?,
        size(&img.slot_size)?,
    )?;
    let files = esp_files(&built)?;
    disk::create(out, &layout, &files, gen_tmp.path(), &built.meta.build_id)?;
    Ok(built)
}

/// Where two images first differ: the partition (or the partition table)
/// and the byte offset, or `None` when they are identical.
pub fn first_difference(a: &Path, b: &Path) -> Result<Option<String>> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let parts = crate::gpt::read(&mut std::fs::File::open(a)?).unwrap_or_default();
    let mut off = 0u64;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if let Some(i) = ba[..na.min(nb)]
            .iter()
            .zip(&bb[..na.min(nb)])
            .position(|(x, y)| x != y)
        {
            let at = off + i as u64;
            let place = parts
                .iter()
                .find(|p| at >= p.offset() && at < p.offset() + p.size())
                .map(|p| format!("partition {} at byte {}", p.label, at - p.offset()))
                .unwrap_or_else(|| "the partition table".into());
            return Ok(Some(format!("{place} (image byte {at})")));
        }
        if na != nb {
            return Ok(Some(format!(
                "the sizes (one ends at byte {})",
                off + na.min(nb) as u64
            )));
        }
        if na == 0 {
            return Ok(None);
        }
        off += na as u64;
    }

    fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }
}
