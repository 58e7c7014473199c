//! Kernel modules: which files the initramfs needs.
//!
//! Debian's kernel packages ship no `modules.dep` (depmod runs in a
//! maintainer script), so dependencies come from each module's own
//! `.modinfo` ELF section (`depends=a,b`). Modules listed in
//! `modules.builtin` are part of the kernel and need no file.
//!
//! Only the pieces of a module that lead to `.modinfo` are read (its ELF
//! header, section table and section names): a kernel has a thousand
//! modules and 90 MiB of them, of which depmod needs a few hundred KiB.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result, bail};

/// Module name as the kernel spells it (`-` and `_` are the same).
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Bytes of an ELF file by offset: in memory, or read from the file.
trait Elf {
    fn len(&self) -> u64;
    fn read(&self, off: u64, len: usize) -> Result<Cow<'_, [u8]>>;

    /// `len` bytes at `off`, which an offset or size from a hostile file
    /// may place anywhere: every sum is checked against the file's length.
    fn get(&self, off: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        match off.checked_add(len as u64) {
            Some(end) if end <= self.len() => self.read(off, len),
            _ => bail!("truncated ELF"),
        }
    }
}

impl Elf for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read(&self, off: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        Ok(Cow::Borrowed(&self[off as usize..off as usize + len]))
    }
}

struct ElfFile {
    file: File,
    len: u64,
}

impl Elf for ElfFile {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, off: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, off)?;
        Ok(Cow::Owned(buf))
    }
}

fn u16_at(b: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(o..o + 2).context("truncated ELF")?.try_into()?,
    ))
}

fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(o..o + 4).context("truncated ELF")?.try_into()?,
    ))
}

fn u64_at(b: &[u8], o: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(
        b.get(o..o + 8).context("truncated ELF")?.try_into()?,
    ))
}

/// Reads the `.modinfo` section of an ELF64 module: `key=value` strings.
pub fn modinfo(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    modinfo_of(bytes)
}

/// The `.modinfo` of the module file at `path`, reading only what leads to it.
pub fn modinfo_file(path: &Path) -> Result<Vec<(String, String)>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    modinfo_of(&ElfFile { file, len })
}

fn modinfo_of<E: Elf + ?Sized>(elf: &E) -> Result<Vec<(String, String)>> {
    let header = elf.get(0, 64.min(elf.len() as usize))?;
    if header.get(..5) != Some(b"\x7fELF\x02") {
        bail!("not an ELF64 module (compressed modules are not supported yet)");
    }
    let shoff = u64_at(&header, 0x28)?;
    let shentsize = u16_at(&header, 0x3a)? as usize;
    let shnum = u16_at(&header, 0x3c)? as usize;
    let shstrndx = u16_at(&header, 0x3e)? as usize;
    if shentsize < 0x28 {
        bail!("bad section table");
    }
    // At most 65535 entries of at most 65535 bytes: the product fits.
    let table = elf
        .get(shoff, shnum * shentsize)
        .context("bad section table")?;
    let sec = |i: usize| -> Result<(u32, u64, u64)> {
        let b = table
            .get(i * shentsize..(i + 1) * shentsize)
            .context("bad section table")?;
        Ok((u32_at(b, 0)?, u64_at(b, 0x18)?, u64_at(b, 0x20)?))
    };
    let size = |s: u64| usize::try_from(s).context("bad section size");
    let (_, stroff, strsize) = sec(shstrndx)?;
    let names = elf
        .get(stroff, size(strsize)?)
        .context("bad section names")?;
    for i in 0..shnum {
        let (name_off, off, len) = sec(i)?;
        let name = names.get(name_off as usize..).unwrap_or_default();
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(0)];
        if name == b".modinfo" {
            let data = elf.get(off, size(len)?).context("bad .modinfo")?;
            return Ok(data
                .split(|b| *b == 0)
                .filter_map(|s| std::str::from_utf8(s).ok())
                .filter_map(|s| s.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect());
        }
    }
    Ok(Vec::new())
}

/// What depmod and the initramfs need of one module's `.modinfo`.
struct Info {
    /// Normalised names of the modules it needs.
    depends: Vec<String>,
    /// The device ids it claims.
    aliases: Vec<String>,
}

/// The modules of a kernel tree (`.../lib/modules/<version>`).
pub struct Modules {
    /// name → path relative to the modules directory.
    files: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
    dir: PathBuf,
    /// Each module's info, read once: depmod asks for the closure of
    /// every module, and closures share most of their members.
    info: RefCell<BTreeMap<String, Rc<Info>>>,
}

impl Modules {
    pub fn open(dir: &Path) -> Result<Modules> {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(name) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    let rel = p
                        .strip_prefix(dir)
                        .expect("below dir")
                        .to_string_lossy()
                        .into_owned();
                    files.insert(norm(name), rel);
                }
            }
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .filter_map(|f| f.strip_suffix(".ko"))
            .map(norm)
            .collect();
        if files.is_empty() {
            bail!("no kernel modules under {}", dir.display());
        }
        Ok(Modules {
            files,
            builtin,
            dir: dir.to_path_buf(),
            info: RefCell::default(),
        })
    }

    /// Whether the kernel has this module, as a file or built in.
    pub fn has(&self, name: &str) -> bool {
        self.files.contains_key(&norm(name)) || self.is_builtin(name)
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&norm(name))
    }

    /// The info of module `name`, whose file is `rel`.
    fn info(&self, name: &str, rel: &str) -> Result<Rc<Info>> {
        if let Some(i) = self.info.borrow().get(name) {
            return Ok(i.clone());
        }
        let mut info = Info {
            depends: Vec::new(),
            aliases: Vec::new(),
        };
        for (k, v) in modinfo_file(&self.dir.join(rel)).with_context(|| format!("module {rel}"))? {
            match k.as_str() {
                "depends" => info
                    .depends
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(norm)),
                "alias" => info.aliases.push(v),
                _ => {}
            }
        }
        let info = Rc::new(info);
        self.info
            .borrow_mut()
            .insert(name.to_string(), info.clone());
        Ok(info)
    }

    /// The wanted modules and everything they depend on, dependencies
    /// first (the order to load them in), as paths relative to the
    /// modules directory. Built-in modules are skipped; a wanted module
    /// that is neither a file nor built in is an error.
    pub fn closure(&self, wanted: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for w in wanted {
            self.visit(&norm(w), &mut seen, &mut order)?;
        }
        Ok(order)
    }

    /// A depth-first walk from `root` with the path on the heap, not the
    /// call stack: a hostile kernel package's `depends=` chain may be as
    /// long as it has modules. Each module is appended after everything it
    /// needs; a module met again on the current path is a cycle.
    fn visit(
        &self,
        root: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        // (module, its dependencies, how many of them are done)
        let mut path: Vec<(String, Rc<Info>, usize)> = Vec::new();
        let mut next = Some(root.to_string());
        loop {
            if let Some(name) = next.take()
                && !seen.contains(&name)
                && !self.is_builtin(&name)
            {
                if path.iter().any(|(s, _, _)| *s == name) {
                    let names: Vec<&str> = path.iter().map(|(s, _, _)| s.as_str()).collect();
                    bail!("module dependency cycle: {} -> {name}", names.join(" -> "));
                }
                let rel = self.files.get(&name).with_context(|| {
                    format!(
                        "kernel module {name} is neither built in nor shipped by the kernel package"
                    )
                })?;
                let info = self.info(&name, rel)?;
                path.push((name, info, 0));
            }
            let Some((name, info, done)) = path.last_mut() else {
                return Ok(());
            };
            if let Some(d) = info.depends.get(*done) {
                *done += 1;
                next = Some(d.clone());
                continue;
            }
            let rel = self.files[name.as_str()].clone();
            seen.insert(name.clone());
            order.push(rel);
            path.pop();
        }
    }
}

/// What `depmod` would write, computed from the modules themselves:
/// `modules.dep` (each module with every module it needs, in load order)
/// and `modules.alias` (the device ids each module claims).
pub fn depmod(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mods = Modules::open(dir)?;
    let mut dep = String::new();
    let mut alias = String::from("# Aliases extracted from modules themselves.\n");
    for (name, rel) in &mods.files {
        for a in &mods.info(name, rel)?.aliases {
            alias.push_str(&format!("alias {a} {name}\n"));
        }
        // A module whose dependencies are missing is still listed, alone:
        // loading it will report what is missing, as on any system.
        let order = mods
            .closure(&[name.as_str()])
            .unwrap_or_else(|_| vec![rel.clone()]);
        let deps: Vec<&String> = order.iter().filter(|r| *r != rel).rev().collect();
        dep.push_str(rel);
        dep.push(':');
        for d in deps {
            dep.push(' ');
            dep.push_str(d);
        }
        dep.push('\n');
    }
    Ok(vec![
        ("modules.dep".into(), dep.into_bytes()),
        ("modules.alias".into(), alias.into_bytes()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 module: a header, the section names, `.modinfo`,
    /// and a large section before the table that depmod must not need.
    fn module(modinfo: &str) -> Vec<u8> {
        module_sized(modinfo, 1 << 20)
    }

    fn module_sized(modinfo: &str, text: usize) -> Vec<u8> {
        crate::fuzzing::elf_module(modinfo.as_bytes(), text)
    }

    #[test]
    fn a_chain_thousands_long_and_a_cycle_need_no_deep_stack() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel");
        std::fs::create_dir_all(&k).unwrap();
        const N: usize = 5000;
        for i in 0..N {
            let info = if i + 1 < N {
                format!("depends=m{}\0", i + 1)
            } else {
                "depends=\0".to_string()
            };
            std::fs::write(k.join(format!("m{i}.ko")), module_sized(&info, 16)).unwrap();
        }
        std::fs::write(k.join("x.ko"), module_sized("depends=y\0", 16)).unwrap();
        std::fs::write(k.join("y.ko"), module_sized("depends=x\0", 16)).unwrap();
        let root = dir.path().to_path_buf();
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let mods = Modules::open(&root).unwrap();
                let order = mods.closure(&["m0"]).unwrap();
                assert_eq!(order.len(), N);
                assert_eq!(order[0], format!("kernel/m{}.ko", N - 1));
                assert_eq!(order[N - 1], "kernel/m0.ko");
                let e = mods.closure(&["x"]).unwrap_err();
                assert_eq!(format!("{e:#}"), "module dependency cycle: x -> y -> x");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn the_file_reader_finds_what_the_whole_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = module("license=GPL\0depends=a,b\0alias=pci:v1d*\0");
        let p = dir.path().join("m.ko");
        std::fs::write(&p, &bytes).unwrap();
        let whole = modinfo(&bytes).unwrap();
        assert_eq!(whole[1], ("depends".into(), "a,b".into()));
        assert_eq!(modinfo_file(&p).unwrap(), whole);
        // Cut before its section table: refused, not read past the end.
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        assert!(modinfo_file(&p).is_err());
        assert!(modinfo(&bytes[..bytes.len() - 10]).is_err());
    }

    #[test]
    fn depmod_lists_each_module_with_its_closure() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        for (name, info) in [
            (
                "dm-verity",
                "depends=dm-bufio,dm_mod\0alias=dm-target-verity\0",
            ),
            ("dm-bufio", "depends=dm-mod\0"),
            ("dm-mod", "depends=\0alias=devname:mapper/control\0"),
            ("lonely", "depends=missing\0"),
        ] {
            std::fs::write(k.join(format!("{name}.ko")), module(info)).unwrap();
        }
        std::fs::write(dir.path().join("modules.builtin"), "kernel/fs/ext4.ko\n").unwrap();
        let out: BTreeMap<String, String> = depmod(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, b)| (n, String::from_utf8(b).unwrap()))
            .collect();
        assert_eq!(
            out["modules.dep"],
            "kernel/drivers/dm-bufio.ko: kernel/drivers/dm-mod.ko\n\
             kernel/drivers/dm-mod.ko:\n\
             kernel/drivers/dm-verity.ko: kernel/drivers/dm-bufio.ko kernel/drivers/dm-mod.ko\n\
             kernel/drivers/lonely.ko:\n"
        );
        assert_eq!(
            out["modules.alias"],
            "# Aliases extracted from modules themselves.\n\
             alias devname:mapper/control dm_mod\n\
             alias dm-target-verity dm_verity\n"
        );
        let mods = Modules::open(dir.path()).unwrap();
        assert!(mods.has("ext4") && mods.is_builtin("ext4"));
        assert_eq!(
            mods.closure(&["dm-verity", "ext4"]).unwrap(),
            [
                "kernel/drivers/dm-mod.ko",
                "kernel/drivers/dm-bufio.ko",
                "kernel/drivers/dm-verity.ko"
            ]
        );
        let e = mods.closure(&["lonely"]).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
