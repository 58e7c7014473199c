//! End to end: one built image, copied to three machines, each provisioned
//! differently at first boot: a seed volume, fw_cfg and SMBIOS
//! credentials, and a malformed seed (attached by `pak test --seed`) that
//! must not stop the boot.

mod common;
use common::{BOOT, pak, vm, wait_for_address};

use std::path::Path;

use pak::vm::qemu::Credential;
use pak::vm::vmtest::Machine;

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAlphaAlphaAlpha alpha@example";
const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBetaBetaBetaBeta beta@example";

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

/// Boots a machine to its shell; the console log is kept beside it.
fn boot(cfg: &pak::vm::qemu::VmConfig, name: &str) -> Machine {
    let log = cfg.image.with_file_name(format!("{name}.console.log"));
    let mut m = Machine::start(cfg, &log).unwrap();
    m.wait_for("pak-init: switching to /sbin/init", BOOT)
        .unwrap();
    m
}

#[test]
fn one_image_many_machines_each_provisioned_at_first_boot() {
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("minimal.raw");
    common::build_shipped("minimal", &image);
    let copy = |name: &str| {
        let p = work.path().join(format!("{name}.raw"));
        std::fs::copy(&image, &p).unwrap();
        p
    };

    // alpha: a NoCloud-style seed volume made by `pak::vm::seed`, as
    // `pak qemu --seed` makes it.
    let seed_a = work.path().join("seed-alpha");
    write(
        &seed_a,
        "meta-data",
        "instance-id: iid-alpha-1\nlocal-hostname: alpha\n",
    );
    write(
        &seed_a,
        "pak-seed.toml",
        &format!(
            "[users.root]\nssh-authorized-keys = [\"{KEY_A}\"]\n\n[files]\n\"/etc/motd\" = \"welcome to alpha\\n\"\n"
        ),
    );
    let a = copy("alpha");
    let a_seed = work.path().join("alpha.seed.img");
    pak::vm::seed::write(&seed_a, &a_seed).unwrap();
    let cfg_a = vm(&a, &[&a_seed]);

    // beta: no volume; a whole seed through fw_cfg (with a static address
    // DHCP would never give), root's key as an SMBIOS string.
    let b = copy("beta");
    let seed_b = work.path().join("beta-seed.toml");
    std::fs::write(
        &seed_b,
        "hostname = \"beta\"\n[network.interfaces.eth0]\naddress = [\"10.0.2.50/24\"]\ngateway = \"10.0.2.2\"\n",
    )
    .unwrap();
    let mut cfg_b = vm(&b, &[]);
    cfg_b.credentials = vec![
        Credential::fw_cfg(&format!("pak.seed={}", seed_b.display())).unwrap(),
        Credential::smbios(&format!("ssh.authorized_keys.root={KEY_B}")).unwrap(),
    ];

    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        let alpha = s.spawn(|| {
            let mut m = boot(&cfg_a, "alpha");
            m.wait_for_shell(BOOT).unwrap();
            assert_eq!(m.succeed("hostname").unwrap().trim(), "alpha");
            assert_eq!(m.succeed("cat /etc/motd").unwrap(), "welcome to alpha\n");
            assert_eq!(
                m.succeed("grep -v '^#' /var/lib/pak/provision/authorized_keys/root")
                    .unwrap()
                    .trim(),
                KEY_A
            );
            let status = m.succeed("pak system status").unwrap();
            assert!(
                status.contains(
                    "provisioned from seed volume /dev/vdb (PAK-SEED): meta-data, pak-seed.toml"
                ) && status.contains("  hostname: alpha")
                    && status.contains("  instance-id: iid-alpha-1")
                    && status.contains("  file: /etc/motd"),
                "{status}"
            );
            let json = m.succeed("pak --json system status").unwrap();
            assert!(json.contains("\"hostname\": \"alpha\""), "{json}");
            // Once per data partition: a second run changes nothing.
            let again = m.succeed("pak system provision").unwrap();
            assert!(again.contains("already provisioned"), "{again}");
        });
        let beta = s.spawn(|| {
            let mut m = boot(&cfg_b, "beta");
            m.wait_for_shell(BOOT).unwrap();
            assert_eq!(m.succeed("hostname").unwrap().trim(), "beta");
            assert_eq!(
                m.succeed("grep -v '^#' /var/lib/pak/provision/authorized_keys/root")
                    .unwrap()
                    .trim(),
                KEY_B
            );
            // The image's network script ran the provisioned one.
            wait_for_address(&mut m, "10.0.2.50");
            let status = m.succeed("pak system status").unwrap();
            assert!(
                status.contains("provisioned from fw_cfg credentials: pak.seed")
                    && status
                        .contains("provisioned from SMBIOS credentials: ssh.authorized_keys.root")
                    && status.contains("  hostname: beta")
                    && status.contains("  network: "),
                "{status}"
            );
        });
        for (name, t) in [("alpha", alpha), ("beta", beta)] {
            if let Err(e) = t.join() {
                let log = work.path().join(format!("{name}.console.log"));
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(40).collect();
                eprintln!(
                    "{name}'s console, last lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
                std::panic::resume_unwind(e);
            }
        }
    });
    eprintln!(
        "two machines provisioned in {:.0}s",
        started.elapsed().as_secs_f64()
    );

    // gamma: a seed with a mistake, through `pak test --seed` as a user
    // would attach it. The host warns; the machine says what is wrong on
    // its console, applies nothing, and boots to a shell.
    let started = std::time::Instant::now();
    let seed_c = work.path().join("seed-gamma");
    write(&seed_c, "pak-seed.toml", "hostname = \"gamma_1\"\n");
    let c = copy("gamma");
    let script = work.path().join("gamma.pakt");
    std::fs::write(
        &script,
        "wait pak-seed.toml on seed volume /dev/vdb (PAK-SEED): hostname: \"gamma_1\" is not a host name\n\
         wait pak: provisioning failed\n\
         shell\n\
         expect minimal :: hostname\n\
         fail test -e /var/lib/pak/provision/record.toml\n\
         expect no provisioning record :: pak system status | grep -q provisioned || echo no provisioning record\n",
    )
    .unwrap();
    let ran = pak(["test"])
        .arg(&c)
        .arg(&script)
        .arg("--seed")
        .arg(&seed_c)
        .run();
    let log = std::fs::read_to_string(c.with_extension("console.log")).unwrap_or_default();
    assert!(ran.success(), "{}\n{log}", ran.text());
    assert!(
        ran.stderr()
            .contains("warning: the machine will refuse this seed and boot without it"),
        "{}",
        ran.stderr()
    );
    assert!(c.with_extension("seed.img").is_file());
    eprintln!(
        "a malformed seed reported, and the machine booted, in {:.0}s",
        started.elapsed().as_secs_f64()
    );
}
