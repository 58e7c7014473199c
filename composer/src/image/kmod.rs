//! Kernel modules: which files the initramfs needs.
//!
//! Debian's kernel packages ship no `modules.dep` (depmod runs in a
//! maintainer script), so dependencies come from each module's own
//! `.modinfo` ELF section (`depends=a,b`). Modules listed in
//! `modules.builtin` are part of the kernel and need no file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Module name as the kernel spells it (`-` and `_` are the same).
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Reads the `.modinfo` section of an ELF64 module: `key=value` strings.
pub fn modinfo(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let u16_at = |o: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            bytes.get(o..o + 2).context("truncated ELF")?.try_into()?,
        ))
    };
    let u32_at = |o: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            bytes.get(o..o + 4).context("truncated ELF")?.try_into()?,
        ))
    };
    let u64_at = |o: usize| -> Result<u64> {
        Ok(u64::from_le_bytes(
            bytes.get(o..o + 8).context("truncated ELF")?.try_into()?,
        ))
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        bail!("not an ELF64 module (compressed modules are not supported yet)");
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    // Offsets and sizes come from the file: a hostile one may make any
    // sum wrap, so every sum is checked.
    let sec = |i: usize| -> Result<(u32, usize, usize)> {
        let b = i
            .checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .filter(|b| b.checked_add(0x28).is_some())
            .context("bad section table")?;
        Ok((
            u32_at(b)?,
            u64_at(b + 0x18)? as usize,
            u64_at(b + 0x20)? as usize,
        ))
    };
    let range = |off: usize, size: usize| off..off.saturating_add(size);
    let (_, stroff, strsize) = sec(shstrndx)?;
    let names = bytes
        .get(range(stroff, strsize))
        .context("bad section names")?;
    for i in 0..shnum {
        let (name_off, off, size) = sec(i)?;
        let name = names.get(name_off as usize..).unwrap_or_default();
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(0)];
        if name == b".modinfo" {
            let data = bytes.get(range(off, size)).context("bad .modinfo")?;
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

/// The modules of a kernel tree (`.../lib/modules/<version>`).
pub struct Modules {
    /// name → path relative to the modules directory.
    files: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
    dir: PathBuf,
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
        })
    }

    /// Whether the kernel has this module, as a file or built in.
    pub fn has(&self, name: &str) -> bool {
        self.files.contains_key(&norm(name)) || self.is_builtin(name)
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&norm(name))
    }

    /// The wanted modules and everything they depend on, dependencies
    /// first (the order to load them in), as paths relative to the
    /// modules directory. Built-in modules are skipped; a wanted module
    /// that is neither a file nor built in is an error.
    pub fn closure(&self, wanted: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for w in wanted {
            self.visit(&norm(w), &mut seen, &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        stack: &mut Vec<String>,
    ) -> Result<()> {
        if seen.contains(name) || self.is_builtin(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            bail!("module dependency cycle: {} -> {name}", stack.join(" -> "));
        }
        let rel = self.files.get(name).with_context(|| {
            format!("kernel module {name} is neither built in nor shipped by the kernel package")
        })?;
        let bytes =
            std::fs::read(self.dir.join(rel)).with_context(|| format!("cannot read {rel}"))?;
        let deps: Vec<String> = modinfo(&bytes)
            .with_context(|| format!("module {rel}"))?
            .into_iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(norm)
                    .collect::<Vec<_>>()
            })
            .collect();
        stack.push(name.to_string());
        for d in deps {
            self.visit(&d, seen, order, stack)?;
        }
        stack.pop();
        seen.insert(name.to_string());
        order.push(rel.clone());
        Ok(())
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
        let bytes = std::fs::read(dir.join(rel)).with_context(|| format!("cannot read {rel}"))?;
        for (k, v) in modinfo(&bytes).with_context(|| format!("module {rel}"))? {
            if k == "alias" {
                alias.push_str(&format!("alias {v} {name}\n"));
            }
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
