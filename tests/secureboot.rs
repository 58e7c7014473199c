//! Secure Boot signing and unified kernel images, checked from the
//! outside: sbsigntool's `sbverify` must accept pak's Authenticode
//! signatures, binutils must read a UKI's sections back as pak wrote
//! them, and the same inputs must give the same bytes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use pak::image::uki::pe::Pe;
use pak::image::uki::{self, UkiParts};
use pak::sign::authenticode::sign_pe;
use pak::sign::key::{self, SecureBootKey};

const EFI_DIR: &str = "/usr/lib/systemd/boot/efi";

/// A file of Debian's systemd-boot-efi on this machine (tools/packages.txt).
fn host_efi(name: &str) -> Vec<u8> {
    let p = Path::new(EFI_DIR).join(name);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; install systemd-boot-efi (tools/packages.txt)",
            p.display()
        )
    })
}

fn new_key(dir: &Path, name: &str) -> (SecureBootKey, PathBuf) {
    let f = key::generate_files(&dir.join(name)).unwrap();
    (
        SecureBootKey::read(&f.key, &f.cert_pem).unwrap(),
        f.cert_pem,
    )
}

/// `sbverify --cert CERT FILE`: (accepted, what it said).
fn sbverify(cert: &Path, file: &Path) -> (bool, String) {
    let out = Command::new("sbverify")
        .arg("--cert")
        .arg(cert)
        .arg(file)
        .output()
        .expect("run sbverify (install sbsigntool, tools/packages.txt)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn sbverify_accepts_signed_systemd_boot_and_only_for_its_key() {
    let d = tempfile::tempdir().unwrap();
    let (k, cert) = new_key(d.path(), "db");
    let (_, other_cert) = new_key(d.path(), "other");
    let boot = host_efi("systemd-bootx64.efi");
    let signed = sign_pe(&boot, &k).unwrap();
    assert_eq!(
        signed,
        sign_pe(&boot, &k).unwrap(),
        "same input, same bytes"
    );
    let file = d.path().join("BOOTX64.EFI");
    std::fs::write(&file, &signed).unwrap();

    let (ok, said) = sbverify(&cert, &file);
    assert!(ok, "sbverify refused pak's signature:\n{said}");
    assert!(said.contains("Signature verification OK"), "{said}");
    let (ok, said) = sbverify(&other_cert, &file);
    assert!(!ok, "sbverify accepted another key's certificate:\n{said}");

    // One byte of code changed after signing: the digest no longer matches.
    let mut changed = signed.clone();
    let text = Pe::parse(signed.clone()).unwrap().sections()[0].raw_offset as usize;
    changed[text + 100] ^= 0x01;
    std::fs::write(&file, &changed).unwrap();
    let (ok, said) = sbverify(&cert, &file);
    assert!(!ok, "sbverify accepted a changed image:\n{said}");

    let e = sign_pe(&signed, &k).unwrap_err().to_string();
    assert!(e.contains("already signed"), "{e}");
}

/// `objdump -h`: (name, size, vma, file offset) of each section.
fn objdump_sections(file: &Path) -> Vec<(String, u64, u64, u64)> {
    let out = Command::new("objdump")
        .arg("-h")
        .arg(file)
        .output()
        .expect("run objdump (binutils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 7 || f[0].parse::<u32>().is_err() {
                return None;
            }
            let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
            Some((f[1].to_string(), hex(f[2]), hex(f[3]), hex(f[5])))
        })
        .collect()
}

#[test]
fn uki_sections_read_back_with_binutils_and_its_signature_verifies() {
    let d = tempfile::tempdir().unwrap();
    let (k, cert) = new_key(d.path(), "db");
    let stub = host_efi("linuxx64.efi.stub");
    // Any PE image serves as the kernel for the layout: the stub is not
    // run here (tests/e2e_secureboot.rs boots a real one).
    let kernel = host_efi("systemd-bootx64.efi");
    let kernel_size = Pe::parse(kernel.clone()).unwrap().size_of_image() as u64;
    let initrd: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let cmdline = "pak.slot=a pak.generation=1 console=ttyS0";
    let os_release = "PRETTY_NAME=\"pak test\"\nID=debian\n";
    let parts = UkiParts {
        stub: &stub,
        kernel: &kernel,
        initrd: &initrd,
        cmdline,
        os_release,
        uname: Some("6.1.0-test-amd64"),
    };
    let unsigned = uki::build(&parts).unwrap();
    assert_eq!(
        unsigned,
        uki::build(&parts).unwrap(),
        "same parts, same bytes"
    );
    let file = d.path().join("uki.efi");
    std::fs::write(&file, &unsigned).unwrap();

    let sections = objdump_sections(&file);
    let names: Vec<&str> = sections.iter().map(|s| s.0.as_str()).collect();
    let tail = &names[names.len() - 5..];
    assert_eq!(
        tail,
        [".osrel", ".cmdline", ".uname", ".initrd", ".linux"],
        "{names:?}"
    );
    let pe = Pe::parse(unsigned.clone()).unwrap();
    for (name, size, vma, off) in &sections[sections.len() - 5..] {
        let s = pe.sections().into_iter().find(|s| &s.name == name).unwrap();
        assert_eq!(*vma, s.virtual_address as u64, "{name}");
        assert_eq!(*off, s.raw_offset as u64, "{name}");
        assert_eq!(off % 0x200, 0, "{name} is file-aligned");
        assert!(*size >= s.virtual_size.min(s.raw_size) as u64, "{name}");
    }
    // The contents, as objcopy extracts them, are what went in.
    for (name, want) in [
        (".cmdline", cmdline.as_bytes()),
        (".osrel", os_release.as_bytes()),
        (".initrd", &initrd[..]),
        (".linux", &kernel[..]),
    ] {
        let out = d.path().join(format!("dump{name}"));
        let st = Command::new("objcopy")
            .arg(format!("--dump-section={name}={}", out.display()))
            .arg(&file)
            .arg(d.path().join("scratch.efi"))
            .status()
            .unwrap();
        assert!(st.success(), "objcopy --dump-section {name}");
        let got = std::fs::read(&out).unwrap();
        assert_eq!(&got[..want.len()], want, "{name}");
        assert!(got[want.len()..].iter().all(|&b| b == 0), "{name} padding");
    }
    let linux = pe.sections().pop().unwrap();
    assert_eq!(
        linux.virtual_size as u64, kernel_size,
        "the kernel's SizeOfImage"
    );
    assert_eq!(
        pe.size_of_image() as u64,
        (linux.virtual_address as u64 + kernel_size).next_multiple_of(0x200)
    );

    let signed = sign_pe(&unsigned, &k).unwrap();
    assert_eq!(
        signed,
        sign_pe(&unsigned, &k).unwrap(),
        "reproducible signature"
    );
    std::fs::write(&file, &signed).unwrap();
    let (ok, said) = sbverify(&cert, &file);
    assert!(ok, "sbverify refused pak's UKI signature:\n{said}");
}

#[test]
fn key_generate_secure_boot_writes_a_key_openssl_reads() {
    let d = tempfile::tempdir().unwrap();
    let out = common::pak(["key", "generate", "--secure-boot"])
        .arg(d.path().join("db"))
        .ok();
    assert!(out.contains("db.key") && out.contains("db.crt"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join("db.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(d.path())
            .output()
            .expect("run openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = openssl(&["x509", "-in", "db.crt", "-noout", "-text"]);
    assert!(
        text.contains("CN = db Secure Boot signing key (pak)"),
        "{text}"
    );
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(
        text.contains("Not After : Dec 31 23:59:59 9999 GMT"),
        "{text}"
    );
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    let der = openssl(&[
        "x509",
        "-in",
        "db.cer",
        "-inform",
        "DER",
        "-noout",
        "-fingerprint",
    ]);
    let pem = openssl(&["x509", "-in", "db.crt", "-noout", "-fingerprint"]);
    assert_eq!(der, pem, "db.cer is db.crt in DER");
    // The certificate is for this key.
    let from_key = openssl(&["pkey", "-in", "db.key", "-pubout"]);
    let from_cert = openssl(&["x509", "-in", "db.crt", "-noout", "-pubkey"]);
    assert_eq!(from_key, from_cert);

    let err = common::pak(["key", "generate", "--secure-boot"])
        .arg(d.path().join("db"))
        .fails();
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn qemu_secure_boot_names_an_unusable_certificate() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.raw");
    std::fs::write(&img, b"").unwrap();
    let missing = d.path().join("missing.crt");
    let err = common::pak(["qemu", "--secure-boot"])
        .arg(&missing)
        .arg(&img)
        .fails();
    assert!(
        err.contains("cannot read the Secure Boot certificate") && err.contains("missing.crt"),
        "{err}"
    );
    let not_cert = d.path().join("notes.txt");
    std::fs::write(&not_cert, "hello\n").unwrap();
    let err = common::pak(["qemu", "--secure-boot"])
        .arg(&not_cert)
        .arg(&img)
        .fails();
    assert!(
        err.contains("notes.txt is not an X.509 certificate")
            && err.contains("pak key generate --secure-boot"),
        "{err}"
    );
}

/// A project of stand-in packages whose boot loader package ships this
/// machine's systemd-boot and systemd-stub (real PE images, so they can
/// be signed), booting UKIs signed with its key `db`; `boot` goes into
/// its `[boot]` table after `uki` and `secure-boot`.
fn uki_project(boot: &str) -> common::Project {
    let p = common::Project::new();
    p.add(&common::Package::kernel("kernel"));
    p.add(
        &common::Package::new("boot-loader", "1.0-1")
            .arch("x86_64")
            .file(
                "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                host_efi("systemd-bootx64.efi"),
            )
            .file(
                "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
                host_efi("linuxx64.efi.stub"),
            ),
    );
    p.index();
    p.pak(["key", "generate", "--secure-boot"])
        .arg(p.path("db"))
        .ok();
    uki_pakfile(&p, true, boot);
    p
}

fn uki_pakfile(p: &common::Project, uki: bool, boot: &str) {
    let secure = if uki {
        "uki = true\nsecure-boot = { key = \"db.key\", cert = \"db.crt\" }\n"
    } else {
        ""
    };
    p.pakfile_with(
        "pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\n",
        &format!("\n[boot]\n{secure}{boot}\n[image]\nsize = \"512MiB\"\n"),
    );
}

fn esp_file(image: &Path, path: &str) -> Vec<u8> {
    let mut f = std::fs::File::open(image).unwrap();
    let parts = pak::disk::gpt::read(&mut f).unwrap();
    let mut v = pak::disk::fat::Volume::open(f, parts[0].offset()).unwrap();
    v.read(path).unwrap()
}

/// Where what goes to a slot ends in a generation file: the end of its
/// dm-verity trailer, where its UKIs begin.
fn slot_bytes(file: &Path) -> usize {
    let v = pak::image::verity::root_of(file).unwrap();
    (v.data_blocks * 4096 + pak::image::verity::added_size(v.data_blocks)) as usize
}

#[test]
fn a_uki_disk_switches_to_a_uki_generation_and_verify_checks_the_uki() {
    use pak_boot::disk::{Slot, esp};
    let p = uki_project("");
    p.ok(&["build", "-o", "disk.raw"]);
    p.ok(&["build", "--generation", "g2.sqfs", "--number", "2"]);
    let again = p.path("again.sqfs");
    p.ok(&["build", "--generation", "again.sqfs", "--number", "2"]);
    let g2 = std::fs::read(p.path("g2.sqfs")).unwrap();
    assert_eq!(
        g2,
        std::fs::read(&again).unwrap(),
        "same inputs, same bytes"
    );
    let body = slot_bytes(&p.path("g2.sqfs"));
    assert_eq!(
        &g2[body..body + 8],
        b"PAKUKIS1",
        "the UKIs follow the trailer"
    );
    let root2 = pak::image::verity::root_hash_of(&p.path("g2.sqfs")).unwrap();

    let img = p.path("disk.raw");
    let disk = img.to_str().unwrap();
    p.ok(&["system", "mark-good", "--disk", disk]);
    let out = p.ok(&["system", "switch", "--disk", disk, "g2.sqfs"]);
    assert!(out.contains("generation 2 written to slot b"), "{out}");

    // Slot b boots its own signed UKI, sealing its slot and root.
    let uki_b = esp_file(&img, &esp::uki(Slot::B));
    let file = p.path("uki-b.efi");
    std::fs::write(&file, &uki_b).unwrap();
    let (ok, said) = sbverify(&p.path("db.crt"), &file);
    assert!(ok, "sbverify refused slot b's UKI:\n{said}");
    let cmdline = uki::cmdline_of(&uki_b).unwrap();
    assert!(
        cmdline.contains("pak.slot=b pak.generation=2")
            && cmdline.contains(&format!("pak.verity={root2}")),
        "{cmdline}"
    );
    let entries: Vec<String> = {
        let f = std::fs::File::open(&img).unwrap();
        let mut f = f;
        let parts = pak::disk::gpt::read(&mut f).unwrap();
        let mut v = pak::disk::fat::Volume::open(f, parts[0].offset()).unwrap();
        let names: Vec<String> = v
            .list(esp::ENTRIES)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        names
            .iter()
            .map(|n| String::from_utf8(v.read(&format!("{}/{n}", esp::ENTRIES)).unwrap()).unwrap())
            .collect()
    };
    assert_eq!(entries.len(), 2);
    assert!(
        entries.iter().all(|e| e.contains("efi /pak/")),
        "{entries:?}"
    );

    let out = p.ok(&["system", "verify", "--disk", disk]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        2,
        "{out}"
    );

    // One byte of slot b's UKI changed on the ESP: verify names it.
    {
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let mut f = f;
        let parts = pak::disk::gpt::read(&mut f).unwrap();
        let mut v = pak::disk::fat::Volume::open(f, parts[0].offset()).unwrap();
        let mut changed = uki_b.clone();
        let at = changed.len() / 2;
        changed[at] ^= 1;
        v.remove(&esp::uki(Slot::B)).unwrap();
        v.create(&esp::uki(Slot::B), &changed).unwrap();
    }
    let out = p.pak(["system", "verify", "--disk", disk]).run();
    let text = out.text();
    assert!(!out.success(), "{text}");
    assert!(
        text.contains("BAD  pak-b-2") && text.contains("pak/b/linux.efi does not match its sha256"),
        "{text}"
    );
    assert!(text.contains("ok   pak-a-1"), "{text}");
}

#[test]
fn a_generation_whose_uki_names_another_root_or_none_is_refused() {
    let p = uki_project("");
    p.ok(&["build", "-o", "disk.raw"]);
    let img = p.path("disk.raw");
    let disk = img.to_str().unwrap();
    p.ok(&["system", "mark-good", "--disk", disk]);
    p.ok(&["build", "--generation", "g2.sqfs", "--number", "2"]);
    // The same generation with another command line: another root.
    uki_pakfile(&p, true, "cmdline = \"quiet\"\n");
    p.ok(&["build", "--generation", "other.sqfs", "--number", "2"]);
    let g2 = std::fs::read(p.path("g2.sqfs")).unwrap();
    let other = std::fs::read(p.path("other.sqfs")).unwrap();
    let (b2, bo) = (
        slot_bytes(&p.path("g2.sqfs")),
        slot_bytes(&p.path("other.sqfs")),
    );
    let mut spliced = g2[..b2].to_vec();
    spliced.extend_from_slice(&other[bo..]);
    std::fs::write(p.path("spliced.sqfs"), &spliced).unwrap();
    // Without the Pakfile's [boot] uki: no UKIs at all.
    uki_pakfile(&p, false, "");
    p.ok(&["build", "--generation", "plain.sqfs", "--number", "2"]);
    let plain = std::fs::read(p.path("plain.sqfs")).unwrap();
    assert_eq!(
        plain.len(),
        slot_bytes(&p.path("plain.sqfs")),
        "nothing follows the trailer"
    );

    let before = std::fs::read(&img).unwrap();
    let err = p.fails(&["system", "switch", "--disk", disk, "spliced.sqfs"]);
    assert!(
        err.contains("its UKI for slot a")
            && err.contains("but the file's hash tree has root")
            && err.contains("not made for this generation"),
        "{err}"
    );
    let err = p.fails(&["system", "switch", "--disk", disk, "plain.sqfs"]);
    assert!(
        err.contains("carries none for slot b") && err.contains("[boot] uki = true"),
        "{err}"
    );
    // Signed with another key, or not signed: the firmware would refuse
    // it, so the switch does.
    p.pak(["key", "generate", "--secure-boot"])
        .arg(p.path("other"))
        .ok();
    p.pakfile_with(
        "pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\n",
        "\n[boot]\nuki = true\nsecure-boot = { key = \"other.key\", cert = \"other.crt\" }\n\n[image]\nsize = \"512MiB\"\n",
    );
    p.ok(&["build", "--generation", "foreign.sqfs", "--number", "2"]);
    let err = p.fails(&["system", "switch", "--disk", disk, "foreign.sqfs"]);
    assert!(
        err.contains("UKI for slot b is signed by CN=other")
            && err.contains("boot loader (EFI/BOOT/BOOTX64.EFI) is signed by CN=")
            && err.contains("the firmware would refuse to start it"),
        "{err}"
    );
    p.pakfile_with(
        "pak = \"*\"\nkernel = \"*\"\nboot-loader = \"*\"\n",
        "\n[boot]\nuki = true\n\n[image]\nsize = \"512MiB\"\n",
    );
    p.ok(&["build", "--generation", "unsigned.sqfs", "--number", "2"]);
    let err = p.fails(&["system", "switch", "--disk", disk, "unsigned.sqfs"]);
    assert!(err.contains("UKI for slot b is unsigned"), "{err}");
    let mut cut = g2.clone();
    cut.truncate(g2.len() - 10);
    std::fs::write(p.path("cut.sqfs"), &cut).unwrap();
    let err = p.fails(&["system", "switch", "--disk", disk, "cut.sqfs"]);
    assert!(err.contains("incomplete"), "{err}");
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the disk is unchanged"
    );
}
