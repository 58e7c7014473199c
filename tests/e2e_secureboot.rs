//! End to end, Secure Boot: OVMF's Secure Boot firmware, trusting only a
//! key pak generated (enrolled by pak as PK, KEK and db), starts
//! systemd-boot and a unified kernel image that pak built and signed, and
//! boots the system; the same disk with one byte of the UKI changed is
//! refused by the firmware.

mod common;
use common::{BOOT, e2e_store};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pak::disk::fat::volume::Volume;
use pak::disk::gpt;
use pak::image::uki::{self, UkiParts};
use pak::sign::authenticode::sign_pe;
use pak::sign::key::{self, SecureBootKey};
use pak::vm::qemu::FirmwareMode;
use pak::vm::vmtest::Machine;
use pak_boot::disk::{ESP_LABEL, esp};

/// The ESP of a disk image, opened for editing.
fn esp_volume(image: &Path) -> Volume<File> {
    let mut f = File::options().read(true).write(true).open(image).unwrap();
    let parts = gpt::read(&mut f).unwrap();
    let esp = parts.iter().find(|p| p.label == ESP_LABEL).unwrap();
    let offset = esp.offset();
    Volume::open(f, offset).unwrap()
}

/// systemd-stub from the store the image was built from.
fn stub_from_store() -> Vec<u8> {
    let store = e2e_store().join("store");
    let dir = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("systemd-boot-efi-")
        })
        .map(|p| p.join("tree").join(uki::STUB))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no systemd-boot-efi in {}", store.display()));
    std::fs::read(dir).unwrap()
}

/// Turns the built image's slot-a Type #1 entry into a signed UKI
/// (`EFI/Linux/pak-a-1.efi`, same kernel, initrd and command line) and
/// signs systemd-boot; returns the UKI's path on the ESP.
fn seal(image: &Path, key: &SecureBootKey) -> String {
    let mut v = esp_volume(image);
    let entries: Vec<String> = v
        .list(esp::ENTRIES)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.starts_with("pak-a-1"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry_path = format!("{}/{}", esp::ENTRIES, entries[0]);
    let entry = String::from_utf8(v.read(&entry_path).unwrap()).unwrap();
    let field = |k: &str| {
        entry
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {k} in {entry}"))
    };
    let kernel = v.read(field("linux").trim_start_matches('/')).unwrap();
    let initrd = v.read(field("initrd").trim_start_matches('/')).unwrap();
    let cmdline = field("options");
    let parts = UkiParts {
        stub: &stub_from_store(),
        kernel: &kernel,
        initrd: &initrd,
        cmdline: &cmdline,
        os_release: "PRETTY_NAME=\"pak secure boot test\"\nID=debian\n",
        uname: None,
    };
    let signed = sign_pe(&uki::build(&parts).unwrap(), key).unwrap();
    let uki_path = "EFI/Linux/pak-a-1.efi".to_string();
    v.create_dir("EFI/Linux").unwrap();
    v.create(&uki_path, &signed).unwrap();
    v.remove(&entry_path).unwrap();
    let boot = v.read(esp::BOOT_LOADER).unwrap();
    v.remove(esp::BOOT_LOADER).unwrap();
    v.create(esp::BOOT_LOADER, &sign_pe(&boot, key).unwrap())
        .unwrap();
    uki_path
}

fn flip_one_byte(image: &Path, path: &str) {
    let mut v = esp_volume(image);
    let mut bytes = v.read(path).unwrap();
    let pe = pak::image::uki::pe::Pe::parse(bytes.clone()).unwrap();
    let cmdline = pe
        .sections()
        .into_iter()
        .find(|s| s.name == ".cmdline")
        .unwrap();
    // A space of the command line becomes a tab: as harmless a change as
    // there is, yet no longer what was signed.
    let at = cmdline.raw_offset as usize
        + pe.section_data(".cmdline")
            .unwrap()
            .iter()
            .position(|&c| c == b' ')
            .unwrap();
    bytes[at] = b'\t';
    v.remove(path).unwrap();
    v.create(path, &bytes).unwrap();
}

fn secure(cert: &Path) -> FirmwareMode {
    FirmwareMode::secure_boot(cert).unwrap()
}

#[test]
fn signed_uki_boots_under_secure_boot_and_a_changed_byte_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let img: PathBuf = work.path().join("minimal.raw");
    common::build_shipped("minimal", &img);
    let files = key::generate_files(&work.path().join("db")).unwrap();
    let key = SecureBootKey::read(&files.key, &files.cert_pem).unwrap();
    let uki_path = seal(&img, &key);

    let cfg = common::vm(&img, &[]);
    let mut m = Machine::start_with(
        &cfg,
        &secure(&files.cert_pem),
        &work.path().join("console.log"),
    )
    .unwrap();
    m.wait_for_shell(BOOT).unwrap();
    // The kernel read the firmware's SecureBoot variable at start.
    let sb = m.succeed("dmesg | grep secureboot:").unwrap();
    assert!(sb.contains("Secure boot enabled"), "{sb}");
    let cmdline = m.succeed("cat /proc/cmdline").unwrap();
    assert!(cmdline.contains("pak.slot=a"), "{cmdline}");
    m.kill();

    flip_one_byte(&img, &uki_path);
    let mut m = Machine::start_with(
        &cfg,
        &secure(&files.cert_pem),
        &work.path().join("console-changed.log"),
    )
    .unwrap();
    m.wait_for("Error loading", BOOT).unwrap();
    let tail = m.tail(20);
    assert!(
        tail.contains("pak-a-1.efi")
            && (tail.contains("Security") || tail.contains("Access Denied")),
        "{tail}"
    );
    // Nothing else starts: no kernel ever prints.
    let refused = m.wait_for("Linux version", Duration::from_secs(20));
    assert!(refused.is_err(), "a kernel started from a changed UKI");
    m.kill();
}
