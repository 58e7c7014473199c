//! A second build of zstd's compressor for x86-64 CPUs with LZCNT, BMI1
//! and BMI2, chosen at run time (`image::squashfs::zstd_fast`).
//!
//! Why: a squashfs pack spends 99% of its time in zstd's optimal parser,
//! whose price functions count leading zeros on every candidate match.
//! Built for baseline x86-64 that is `bsr` (4 cycles on AMD Zen), with
//! LZCNT one cycle: the same pack takes 6–8% less CPU, bytes unchanged
//! (integer code only; no flag here lets the compiler change arithmetic).
//! No crate ships zstd twice, and zstd-sys builds for the target's
//! baseline, so this compiles zstd-sys's own sources once more, every
//! global symbol renamed with a `pak_lzcnt_` prefix so the two copies link
//! side by side.
//!
//! Where anything is missing (another architecture, no `nm`, no sources)
//! the second copy is simply not built and pak uses zstd-sys's alone.

use std::path::{Path, PathBuf};
use std::process::Command;

const PREFIX: &str = "pak_lzcnt_";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pak_zstd_lzcnt)");
    println!("cargo::rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch != "x86_64" || os != "linux" {
        return;
    }
    match build() {
        Ok(()) => println!("cargo::rustc-cfg=pak_zstd_lzcnt"),
        Err(why) => println!("cargo::warning=zstd is built once, for baseline x86-64: {why}"),
    }
}

fn build() -> Result<(), String> {
    // zstd-sys (`links = "zstd"`) names its sources as `include` and its
    // built library's directory as `root`.
    let include = std::env::var("DEP_ZSTD_INCLUDE").map_err(|_| "zstd-sys names no sources")?;
    let lib = PathBuf::from(include.split(';').next().unwrap_or_default());
    let root = std::env::var("DEP_ZSTD_ROOT").map_err(|_| "zstd-sys names no library")?;
    let archive = Path::new(&root).join("libzstd.a");
    if !lib.join("compress/zstd_opt.c").exists() || !archive.exists() {
        return Err(format!(
            "no zstd sources in {} or no {}",
            lib.display(),
            archive.display()
        ));
    }

    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let header = out.join("pak_lzcnt_names.h");
    std::fs::write(&header, renames(&archive)?).map_err(|e| e.to_string())?;

    let mut files = vec![];
    for dir in ["common", "compress"] {
        let mut here: Vec<PathBuf> = std::fs::read_dir(lib.join(dir))
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "c"))
            // Defines its API after `#undef`s that no rename survives
            // (`ZSTD_isError`), and only the API: nothing pak calls here.
            .filter(|p| !p.ends_with("common/zstd_common.c"))
            .collect();
        here.sort();
        files.extend(here);
    }
    cc::Build::new()
        .files(&files)
        .include(&lib)
        .include(lib.join("common"))
        .flag("-include")
        .flag(header.to_str().ok_or("OUT_DIR is not UTF-8")?)
        // The same definitions zstd-sys builds with, so that the two
        // copies compress alike; no multithreading, no legacy formats:
        // only one-shot block compression is called here.
        .define("XXH_PRIVATE_API", None)
        .define("ZSTDLIB_VISIBILITY", Some(""))
        .define("ZSTDERRORLIB_VISIBILITY", Some(""))
        .define("ZSTD_LEGACY_SUPPORT", Some("0"))
        .flag("-fvisibility=hidden")
        .flag("-mlzcnt")
        .flag("-mbmi")
        .flag("-mbmi2")
        // pak's own profile would build this copy unoptimised in a dev
        // build, where zstd-sys, a dependency, is optimised: the copy
        // must never be the slower one.
        .opt_level(3)
        .debug(false)
        .warnings(false)
        .cargo_metadata(false)
        .try_compile("pak_zstd_lzcnt")
        .map_err(|e| e.to_string())?;
    // Linked only once no symbol escaped the renaming: one that did would
    // stand in for zstd-sys's own at link time.
    let built = out.join("libpak_zstd_lzcnt.a");
    if let Some(stray) = defined(&built)?
        .into_iter()
        .find(|n| !n.starts_with(PREFIX))
    {
        return Err(format!("{stray} escaped the renaming"));
    }
    println!("cargo::rustc-link-search=native={}", out.display());
    println!("cargo::rustc-link-lib=static=pak_zstd_lzcnt");
    Ok(())
}

/// `#define` lines renaming every global symbol zstd-sys's library defines.
fn renames(archive: &Path) -> Result<String, String> {
    let names = defined(archive)?;
    if !names.iter().any(|n| n == "ZSTD_compressCCtx") {
        return Err(format!("no ZSTD_compressCCtx in {}", archive.display()));
    }
    Ok(names
        .iter()
        .map(|n| format!("#define {n} {PREFIX}{n}\n"))
        .collect())
}

/// The global symbols an archive defines, sorted.
fn defined(archive: &Path) -> Result<Vec<String>, String> {
    let nm = std::env::var("NM").unwrap_or_else(|_| "nm".into());
    let listed = Command::new(&nm)
        .args(["-g", "--defined-only", "--format=posix"])
        .arg(archive)
        .output()
        .map_err(|e| format!("cannot run {nm}: {e}"))?;
    if !listed.status.success() {
        return Err(format!("{nm} failed on {}", archive.display()));
    }
    let mut names: Vec<String> = std::str::from_utf8(&listed.stdout)
        .map_err(|_| "nm printed non-UTF-8")?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        // posix format heads each member with `archive[member.o]:`.
        .filter(|n| !n.ends_with(':') && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_string)
        .collect();
    names.sort_unstable();
    names.dedup();
    Ok(names)
}
