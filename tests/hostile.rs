//! Hostile packages: every one must be refused, leaving the store as it
//! was and nothing written outside it. Archives are built byte by byte
//! (raw ustar headers), so nothing in pak's writer can tidy them up.

use std::path::Path;

use pak::state::StateDir;
use pak::store::Store;
use sha2::{Digest, Sha256};

struct Raw {
    name: String,
    kind: u8,
    mode: u32,
    data: Vec<u8>,
    /// Size field when it differs from data (lies).
    size: Option<u64>,
    link: String,
    dev: (u32, u32),
}

fn raw(name: &str, kind: u8, mode: u32, data: &[u8]) -> Raw {
    Raw {
        name: name.into(),
        kind,
        mode,
        data: data.to_vec(),
        size: None,
        link: String::new(),
        dev: (0, 0),
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

fn header(e: &Raw) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..e.name.len()].copy_from_slice(e.name.as_bytes());
    octal(&mut h[100..108], e.mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], e.size.unwrap_or(e.data.len() as u64));
    octal(&mut h[136..148], 0);
    h[156] = e.kind;
    h[157..157 + e.link.len()].copy_from_slice(e.link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], e.dev.0 as u64);
    octal(&mut h[337..345], e.dev.1 as u64);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn archive(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend(header(e));
        out.extend(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    zstd::encode_all(&out[..], 3).unwrap()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

const INFO: &str = "name = \"evil\"\nversion = \"1\"\narch = \"any\"\n";

/// A package: .PAKINFO, the given BOM lines, then the payload entries.
fn pak(info: &str, bom_lines: &[String], payload: Vec<Raw>) -> Vec<u8> {
    let mut bom = String::from("pak-bom 1\n");
    for l in bom_lines {
        bom.push_str(l);
        bom.push('\n');
    }
    let mut all = vec![
        raw(".PAKINFO", b'0', 0o644, info.as_bytes()),
        raw(".BOM", b'0', 0o644, bom.as_bytes()),
    ];
    all.extend(payload);
    archive(&all)
}

fn refused(name: &str, bytes: Vec<u8>, expect: &str) {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("evil.pak");
    std::fs::write(&file, bytes).unwrap();
    let root = StateDir::new(work.path().join("root"));
    let store = Store::open(&root).unwrap();
    let err = store.install(&file, "evil-1-x").expect_err(name);
    let msg = format!("{err:#}");
    assert!(msg.contains(expect), "{name}: {msg}");
    assert!(
        store.get("evil-1-x").is_none(),
        "{name}: entry left in the store"
    );
    let left: Vec<_> = std::fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        // Locks are the store's own, not leftovers of the package.
        .filter(|n| ![".lock", ".locks", ".pending"].contains(&n.to_str().unwrap()))
        .collect();
    assert!(left.is_empty(), "{name}: leftovers {left:?}");
    let outside: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside.len(),
        2,
        "{name}: wrote outside the store: {outside:?}"
    );
    assert!(
        pak::packages::package::verify(&file).is_err(),
        "{name}: verify accepted it"
    );
    assert!(!Path::new("/tmp/pak-hostile-canary").exists());
}

#[test]
fn traversal() {
    refused(
        "dotdot",
        pak(
            INFO,
            &[],
            vec![raw("../pak-hostile-canary", b'0', 0o644, b"x")],
        ),
        "climbs out",
    );
}

#[test]
fn absolute_path() {
    refused(
        "absolute",
        pak(
            INFO,
            &[],
            vec![raw("/tmp/pak-hostile-canary", b'0', 0o644, b"x")],
        ),
        "absolute",
    );
}

#[test]
fn escaping_symlink() {
    let mut l = raw("a", b'2', 0o777, b"");
    l.link = "../../../../tmp".into();
    refused(
        "symlink",
        pak(INFO, &["l 0777 0 0 - - a ../../../../tmp".into()], vec![l]),
        "escapes",
    );
}

#[test]
fn write_through_a_symlink() {
    let mut l = raw("a", b'2', 0o777, b"");
    l.link = "b".into();
    let lines = vec![
        format!("l 0777 0 0 - - a b"),
        format!("f 0644 0 0 1 {} a/x", sha(b"x")),
    ];
    refused(
        "through-link",
        pak(INFO, &lines, vec![l, raw("a/x", b'0', 0o644, b"x")]),
        "not a directory",
    );
}

#[test]
fn hard_link_out() {
    let mut l = raw("h", b'1', 0o644, b"");
    l.link = "../../etc/passwd".into();
    refused(
        "hardlink",
        pak(INFO, &["h 0644 0 0 - - h ../../etc/passwd".into()], vec![l]),
        "escapes the package root",
    );
}

#[test]
fn device_node_undeclared() {
    let mut d = raw("null", b'3', 0o666, b"");
    d.dev = (1, 3);
    refused(
        "device",
        pak(INFO, &["c 0666 0 0 1,3 - null".into()], vec![d]),
        "special_files",
    );
}

#[test]
fn setuid_undeclared() {
    let lines = vec![format!("f 4755 0 0 1 {} su", sha(b"x"))];
    refused(
        "setuid",
        pak(INFO, &lines, vec![raw("su", b'0', 0o4755, b"x")]),
        "special_files",
    );
}

#[test]
fn bom_mismatch() {
    let lines = vec![format!("f 0644 0 0 1 {} f", sha(b"x"))];
    refused(
        "content",
        pak(INFO, &lines, vec![raw("f", b'0', 0o644, b"y")]),
        "disagrees",
    );
    refused(
        "unlisted",
        pak(INFO, &[], vec![raw("f", b'0', 0o644, b"y")]),
        "not in the bill of materials",
    );
    let lines = vec![
        format!("f 0644 0 0 1 {} f", sha(b"x")),
        format!("f 0644 0 0 1 {} g", sha(b"x")),
    ];
    refused(
        "missing",
        pak(INFO, &lines, vec![raw("f", b'0', 0o644, b"x")]),
        "missing from the archive",
    );
}

#[test]
fn decompression_bomb() {
    // A GNU long-name record claiming 256 MiB of zeros (a few KiB once
    // compressed) in front of a one-byte file: the reader must stop at what
    // the bill of materials allows instead of inflating it.
    let lines = vec![format!("f 0644 0 0 1 {} f", sha(b"x"))];
    let mut bomb = raw("././@LongLink", b'L', 0o644, &[]);
    bomb.data = vec![b'a'; 256 << 20];
    let bytes = pak(INFO, &lines, vec![bomb, raw("f", b'0', 0o644, b"x")]);
    assert!(bytes.len() < 1 << 20, "the bomb is small on disk");
    refused("bomb", bytes, "decompression bomb");
}
