//! The command line: a thin layer that parses arguments and calls the library.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::project::Update;
use crate::state::StateDir;

mod channel;
mod env;
mod pkg;
mod project;
mod shell;
mod store;
mod system;
mod vendor;
mod verify;

#[derive(Debug, Parser)]
#[command(
    name = "pak",
    version,
    about = "Compose immutable, bootable system images from a Pakfile"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct Global {
    /// Store and state root (default: /var/lib/pak for root, the XDG data dir otherwise)
    #[arg(long, global = true, env = "PAK_ROOT")]
    pub root: Option<PathBuf>,
    /// The Pakfile to use
    #[arg(long, global = true, env = "PAKFILE", default_value = "Pakfile")]
    pub pakfile: PathBuf,
    /// More output
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Less output
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Machine-readable output where a command lists or reports
    #[arg(long, global = true)]
    pub json: bool,
    /// Refuse any change to the lock (for CI): fail, naming what would
    /// change, and write nothing
    #[arg(long, global = true)]
    pub locked: bool,
    /// Use no network: only the store, the download cache and local repositories
    #[arg(long, global = true)]
    pub offline: bool,
}

impl Global {
    pub fn root(&self) -> StateDir {
        match &self.root {
            Some(dir) => StateDir::new(dir),
            None => StateDir::default_for_user(),
        }
    }

    pub fn lock_policy(&self) -> crate::project::LockPolicy {
        if self.locked {
            crate::project::LockPolicy::Frozen
        } else {
            crate::project::LockPolicy::Update
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter Pakfile
    Init {
        /// Directory to create it in (default: the current one)
        dir: Option<PathBuf>,
    },
    /// Resolve the Pakfile and write Pakfile.lock (kept as is while it still fits)
    Lock,
    /// Re-resolve everything, or only PKG and what it needs, and rewrite the lock
    Update {
        /// Only this package (the rest keep their locked versions)
        pkg: Option<String>,
    },
    /// Download and verify the locked packages into the store
    Fetch,
    /// Lock if needed, fetch, assemble, and write a bootable disk image
    Build {
        /// The disk image to write
        #[arg(short, long, default_value = "image.raw")]
        output: PathBuf,
        /// Write only the generation (a sealed squashfs, what `pak system
        /// switch` takes) to this file
        #[arg(long, value_name = "FILE.sqfs")]
        generation: Option<PathBuf>,
        /// The generation's number (with --generation; default: the next
        /// after --after, else after the newest pak built from this Pakfile)
        #[arg(long, value_name = "N", requires = "generation")]
        number: Option<u64>,
        /// Number the generation after the newest of where it will go: a
        /// channel (directory or URL) or a disk image
        #[arg(
            long,
            value_name = "CHANNEL_OR_DISK",
            requires = "generation",
            conflicts_with = "number"
        )]
        after: Option<String>,
        /// Build a second time (another store root, umask and working
        /// directory) and check both images are identical
        #[arg(long)]
        check: bool,
        /// Print the wall time of each step (resolve, fetch, convert,
        /// extract, assemble, initramfs, squashfs, disk)
        #[arg(long)]
        timings: bool,
    },
    /// List the packages of the lock
    List,
    /// Rebuild an image from its own lock and Pakfile and compare: identical,
    /// or the first differing partition and file (exit 1)
    Verify {
        /// A disk image (`pak build -o`) or a generation file (`--generation`)
        image: PathBuf,
    },
    /// Boot an image interactively on the serial console (Ctrl-a x quits)
    Qemu {
        image: PathBuf,
        /// Discard the guest's writes to the image
        #[arg(long)]
        snapshot: bool,
        /// Guest memory in MiB
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// Attach FILE as another read-only disk (/dev/vdb, ...), e.g. a
        /// generation to `pak system switch /dev/vdb` to
        #[arg(long, value_name = "FILE")]
        drive: Vec<PathBuf>,
        /// Forward the host's port HOST (on 127.0.0.1) to the guest's port
        /// GUEST, e.g. 8080:80; the guest's network must be up
        #[arg(long, value_name = "HOST:GUEST")]
        forward: Vec<crate::vm::qemu::Forward>,
        /// Boot with Secure Boot on, the firmware trusting only CERT
        /// (enrolled as PK, KEK and db), e.g. db.crt from `pak key
        /// generate --secure-boot db`
        #[arg(long, value_name = "CERT")]
        secure_boot: Option<PathBuf>,
        #[command(flatten)]
        provision: ProvisionArgs,
    },
    /// Boot an image and run a test script against it; exit 0 on pass
    #[command(
        after_help = "Script steps (one per line, # comments):\n  wait [--timeout S] TEXT    wait for TEXT on the console\n  shell [--timeout S]        wait until the guest shell answers\n  succeed CMD                CMD must exit 0\n  fail CMD                   CMD must exit non-zero\n  expect TEXT :: CMD         CMD must exit 0 and print TEXT\n  reboot                     clean reboot, then wait for the shell\n  wait-shutdown [S]          wait for power-off\n  copy-out GUEST HOST        copy a file out (sha256 checked)"
    )]
    Test {
        image: PathBuf,
        script: PathBuf,
        /// Where to keep the full console log
        #[arg(long)]
        log: Option<PathBuf>,
        /// Discard the guest's writes to the image
        #[arg(long)]
        snapshot: bool,
        /// Attach FILE as another read-only disk (/dev/vdb, ...)
        #[arg(long, value_name = "FILE")]
        drive: Vec<PathBuf>,
        /// Forward the host's port HOST (on 127.0.0.1) to the guest's port GUEST
        #[arg(long, value_name = "HOST:GUEST")]
        forward: Vec<crate::vm::qemu::Forward>,
        #[command(flatten)]
        provision: ProvisionArgs,
    },
    /// Search the Pakfile's repositories
    Search { term: String },
    /// Which package in the store ships PATH
    Owns { path: String },
    /// Remove store entries that no lock, generation or environment needs,
    /// and temporaries left by a pak that was killed
    Gc,
    /// Check the store's entries against their BOMs, or repair them
    #[command(subcommand)]
    Store(StoreCommand),
    /// Copy every locked package into signed repositories under DIR and print
    /// the [[repository]] entries that build the same lock from them
    Vendor {
        dir: PathBuf,
        /// Sign with this secret key (default: DIR/vendor.key, made if missing)
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// The A/B lifecycle of a pak disk: what boots, what each slot holds
    #[command(subcommand)]
    System(SystemCommand),
    /// Add a generation to an update channel (a static directory), or
    /// change its rollout; signs the channel's metadata
    #[command(
        after_help = "The channel directory holds channel.toml (signed metadata) and the generation files; serve it with any static web server, or copy it with rsync or an S3 sync tool (channel.toml last). Hosts update with `pak system update`."
    )]
    Publish {
        /// A generation file from `pak build --generation` (numbered above
        /// every generation the channel has had)
        #[arg(value_name = "GENERATION.sqfs")]
        generation: Option<PathBuf>,
        /// The channel directory (created with the first generation)
        #[arg(long, value_name = "DIR")]
        channel: PathBuf,
        /// The secret key to sign with (`pak key generate`)
        #[arg(long)]
        key: PathBuf,
        /// Percentage of hosts the newest generation goes to (default: 100
        /// for a new generation, else unchanged)
        #[arg(long, value_name = "PERCENT")]
        rollout: Option<u32>,
        /// Keep only the newest N generations; the files of the others are removed
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// How long hosts accept this metadata (30m, 12h, 7d, ...); publish
        /// again before then
        #[arg(long, value_name = "DURATION", default_value = crate::channel::DEFAULT_EXPIRY)]
        expires: String,
        /// Stop the rollout: hosts update to nothing until --resume
        #[arg(long, conflicts_with = "resume")]
        halt: bool,
        /// Resume a halted rollout
        #[arg(long)]
        resume: bool,
    },
    /// Update channels
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Build, inspect and convert packages
    #[command(subcommand)]
    Pkg(PkgCommand),
    /// Signing keys for repositories
    #[command(subcommand)]
    Key(KeyCommand),
    /// Maintain a repository
    #[command(subcommand)]
    Repo(RepoCommand),
    /// User environments: packages shown over the read-only system, unprivileged
    #[command(subcommand)]
    Env(env::EnvCommand),
    /// Run a command inside an environment (default: the current directory's Pakfile)
    Run {
        /// The environment (default: the Pakfile of the current directory, locked on first use)
        #[arg(short = 'e', long = "env", value_name = "NAME")]
        env: Option<String>,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// A throwaway environment with PKG: a shell, or `-- CMD`; nothing is kept
    Taste {
        /// NAME or NAME==VERSION
        pkg: String,
        /// Run this command instead of $SHELL
        #[arg(last = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Add a package (NAME or NAME==VERSION) to an environment and fetch it
    Install {
        #[command(flatten)]
        target: env::Target,
        pkg: String,
    },
    /// Remove a package from an environment
    Uninstall {
        #[command(flatten)]
        target: env::Target,
        pkg: String,
    },
    /// Print the completion script for SHELL, e.g. `pak completions bash >
    /// /usr/share/bash-completion/completions/pak`
    Completions { shell: clap_complete::Shell },
    /// Print the manual page pak(1), or write one page per command into DIR
    Man {
        /// Write pak.1, pak-system.1, pak-system-status.1, ... into this directory
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// What the machine is provisioned with at first boot (`pak qemu`, `pak test`).
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// Attach DIR as a provisioning seed volume (FAT32 labelled pak-seed):
    /// meta-data (NoCloud), user-data (#cloud-config: hostname,
    /// ssh_authorized_keys) and pak-seed.toml
    #[arg(long, value_name = "DIR")]
    seed: Option<PathBuf>,
    /// Give the guest a credential as an SMBIOS type 11 string
    /// (io.systemd.credential:NAME=VALUE), e.g. system.hostname=web-1
    #[arg(long, value_name = "NAME=VALUE", value_parser = smbios_credential)]
    credential: Vec<crate::vm::qemu::Credential>,
    /// Give the guest a credential from a file, through fw_cfg
    /// (opt/io.systemd.credentials/NAME), e.g. pak.seed=pak-seed.toml
    #[arg(long, value_name = "NAME=PATH", value_parser = fw_cfg_credential)]
    credential_file: Vec<crate::vm::qemu::Credential>,
}

fn smbios_credential(s: &str) -> anyhow::Result<crate::vm::qemu::Credential> {
    crate::vm::qemu::Credential::smbios(s)
}

fn fw_cfg_credential(s: &str) -> anyhow::Result<crate::vm::qemu::Credential> {
    crate::vm::qemu::Credential::fw_cfg(s)
}

impl ProvisionArgs {
    /// The seed drive (added to `drives`) and the credentials.
    fn apply(
        self,
        image: &std::path::Path,
        drives: &mut Vec<PathBuf>,
    ) -> anyhow::Result<Vec<crate::vm::qemu::Credential>> {
        if let Some(dir) = &self.seed {
            drives.push(crate::vm::seed::attach(image, dir)?);
        }
        Ok(self
            .credential
            .into_iter()
            .chain(self.credential_file)
            .collect())
    }
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// What boots, each slot's generation and state, tries left, /etc conflicts
    Status {
        /// A disk image instead of the running system
        #[arg(long)]
        disk: Option<PathBuf>,
    },
    /// The generations on the disk, newest first
    Generations {
        #[arg(long)]
        disk: Option<PathBuf>,
    },
    /// Write a generation to the other slot and boot it next, with tries
    #[command(
        after_help = "Without GENERATION.sqfs, builds the generation from the Pakfile (--pakfile, default ./Pakfile) first.\nThe running generation stays the fallback: if the new one is never marked good, the machine returns to it by itself."
    )]
    Switch {
        #[arg(long)]
        disk: Option<PathBuf>,
        /// A generation file from `pak build --generation` (or a block device holding one)
        #[arg(value_name = "GENERATION.sqfs")]
        generation: Option<PathBuf>,
        /// Overwrite the other slot even though the running generation is
        /// not marked good yet
        #[arg(long)]
        force: bool,
        /// Reboot into the new generation once it is written
        #[arg(long)]
        reboot: bool,
    },
    /// Boot the other slot's generation next, if it is good
    Rollback {
        #[arg(long)]
        disk: Option<PathBuf>,
        /// Reboot into it right away
        #[arg(long)]
        reboot: bool,
    },
    /// Mark the booted generation good: strip its boot-tries counter
    MarkGood {
        #[arg(long)]
        disk: Option<PathBuf>,
    },
    /// Packages added, removed and changed between two generations
    /// (default: the booted one and the other slot's)
    Diff {
        #[arg(long)]
        disk: Option<PathBuf>,
        from: Option<u64>,
        to: Option<u64>,
    },
    /// Fetch, verify and switch to the newest generation of the update
    /// channel this host is in the rollout for
    #[command(
        after_help = "The channel and its key come from --channel and --key, else from /etc/pak/update.toml (channel = \"URL\", key = \"FILE.pub\" relative to /etc/pak, or the key text) of the running system, or of the generation a --disk image boots.\nRefused, writing nothing: metadata with a bad signature or another key's, expired metadata, and a version older than the last one accepted (kept in /var/lib/pak/update/state.toml; on a --disk image in pak/update.toml on its ESP).\nA generation the machine fell back from is not tried again; a download cut midway resumes on the next run."
    )]
    Update {
        #[arg(long)]
        disk: Option<PathBuf>,
        /// The channel: a directory, file:// or http(s):// URL
        #[arg(long, value_name = "URL", requires = "key")]
        channel: Option<String>,
        /// The channel's public key
        #[arg(long, value_name = "FILE.pub", requires = "channel")]
        key: Option<PathBuf>,
        /// Only say what would be installed; write nothing
        #[arg(long)]
        check: bool,
        /// Reboot into the new generation once it is written
        #[arg(long, conflicts_with = "check")]
        reboot: bool,
        /// Keep running: check every `interval` of /etc/pak/update.toml
        /// and reboot into what was installed within its `reboot-window`
        /// (the service an image with [update] runs)
        #[arg(long, conflicts_with_all = ["check", "reboot"])]
        watch: bool,
    },
    /// Check every bootable entry's kernel, initrd and slot against their sha256
    Verify {
        #[arg(long)]
        disk: Option<PathBuf>,
    },
    /// Apply this machine's provisioning (seed volume, fw_cfg or SMBIOS
    /// credentials): hostname, SSH keys, network, files; once per data partition
    #[command(
        after_help = "Sources, applied in this order, a later one replacing what an earlier one set:\n  a block device whose FAT32 label is cidata or pak-seed: meta-data (instance-id, local-hostname),\n    user-data (#cloud-config: hostname, ssh_authorized_keys) and pak-seed.toml\n  fw_cfg files opt/io.systemd.credentials/NAME, then SMBIOS type 11 strings io.systemd.credential:NAME=VALUE,\n    with NAME pak.seed (a whole pak-seed.toml), system.hostname or ssh.authorized_keys.USER\nThe image runs this at every boot (/usr/lib/pak/provision); what was applied is in\n/var/lib/pak/provision/record.toml and `pak system status`."
    )]
    Provision {
        /// Apply the sources again, although this machine was provisioned
        #[arg(long)]
        again: bool,
    },
    /// Wipe the data partition on the next boot and provision the machine again
    #[command(
        after_help = "The next boot formats the data partition (/var, /home, your changes to /etc) and runs the first-boot provisioning again. The generations and boot entries stay. Nothing is erased until that boot: --cancel withdraws the request."
    )]
    FactoryReset {
        #[arg(long)]
        disk: Option<PathBuf>,
        /// Do not ask for confirmation (for scripts)
        #[arg(long)]
        yes: bool,
        /// Withdraw a request the next boot has not carried out yet
        #[arg(long, conflicts_with = "yes")]
        cancel: bool,
        /// Reboot right away, to carry it out
        #[arg(long)]
        reboot: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// The generations, rollout, version and expiry of a channel
    Show {
        /// A channel directory, file:// or http(s):// URL
        url: String,
        /// Check the signature against this public key (without it, what
        /// the channel says is shown unverified)
        #[arg(long, value_name = "FILE.pub")]
        key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Check every entry against its BOM: extra, missing and modified
    /// files (exit 1 when any entry is damaged)
    Verify,
    /// Remove damaged entries and leftovers of interrupted commands, and
    /// extract the removed entries again from the download cache
    Repair,
}

#[derive(Debug, Subcommand)]
pub enum PkgCommand {
    /// DIR/.PAKINFO plus the files under DIR -> NAME-VERSION-ARCH.pak
    Create {
        dir: PathBuf,
        /// Directory to write the package to
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print a package's metadata
    Info { file: PathBuf },
    /// Check every file of a package against its bill of materials
    Verify { file: PathBuf },
    /// Convert a Debian .deb into a .pak (maintainer scripts are not run)
    ImportDeb {
        file: PathBuf,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write NAME.key (secret) and NAME.pub; with --secure-boot, NAME.key
    /// (RSA-2048) and its certificate NAME.crt (PEM) and NAME.cer (DER)
    Generate {
        name: PathBuf,
        /// A Secure Boot signing key and self-signed certificate, for
        /// `[boot] secure-boot` and `pak qemu --secure-boot`
        #[arg(long)]
        secure_boot: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Index the .pak files of DIR and sign the index
    Index {
        dir: PathBuf,
        /// The secret key to sign with
        #[arg(long)]
        key: PathBuf,
        /// Days until the index expires and hosts refuse it
        #[arg(long, default_value_t = crate::sources::repo::DEFAULT_EXPIRY_DAYS)]
        expires_in: u64,
        /// Index version (default: one more than the current index)
        #[arg(long)]
        version: Option<u64>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    if g.offline {
        crate::sources::fetch::set_network(crate::sources::fetch::Network::Offline);
    }
    match cli.command {
        Command::Init { dir } => project::init(dir)?,
        Command::Lock => project::lock(g, Update::IfNeeded)?,
        Command::Update { pkg: None } => project::lock(g, Update::All)?,
        Command::Update { pkg: Some(p) } => project::lock(g, Update::Only(p))?,
        Command::Fetch => project::fetch(g)?,
        Command::Build {
            output,
            generation,
            number,
            after,
            check,
            timings,
        } => project::build(
            g,
            &output,
            generation.as_deref(),
            number,
            after.as_deref(),
            check,
            timings,
        )?,
        Command::List => project::list(g)?,
        Command::Verify { image } => return verify::run(g, &image),
        Command::Qemu {
            image,
            snapshot,
            memory,
            mut drive,
            forward,
            secure_boot,
            provision,
        } => {
            let firmware = match &secure_boot {
                Some(cert) => crate::vm::qemu::FirmwareMode::secure_boot(cert)?,
                None => crate::vm::qemu::FirmwareMode::Standard,
            };
            let credentials = provision.apply(&image, &mut drive)?;
            crate::vm::qemu::run_interactive(
                &crate::vm::qemu::VmConfig {
                    image,
                    memory_mib: memory,
                    snapshot,
                    interactive: true,
                    drives: drive,
                    forwards: forward,
                    credentials,
                },
                &firmware,
            )?
        }
        Command::Test {
            image,
            script,
            log,
            snapshot,
            mut drive,
            forward,
            provision,
        } => {
            let credentials = provision.apply(&image, &mut drive)?;
            let text = std::fs::read_to_string(&script)
                .with_context(|| format!("cannot read {}", script.display()))?;
            let steps = crate::vm::vmtest::parse_script(&text)?;
            let log = log.unwrap_or_else(|| image.with_extension("console.log"));
            let cfg = crate::vm::qemu::VmConfig {
                image,
                memory_mib: 1024,
                snapshot,
                interactive: false,
                drives: drive,
                forwards: forward,
                credentials,
            };
            crate::vm::vmtest::run_script(&cfg, &steps, &log)?;
            println!(
                "passed ({} steps); console log: {}",
                steps.len(),
                log.display()
            );
        }
        Command::Search { term } => project::search(g, &term)?,
        Command::Owns { path } => pkg::owns(g, &path)?,
        Command::Gc => pkg::gc(g)?,
        Command::Store(StoreCommand::Verify) => return store::verify(g),
        Command::Store(StoreCommand::Repair) => store::repair(g)?,
        Command::Vendor { dir, key } => vendor::run(g, &dir, key.as_deref())?,
        Command::System(cmd) => system::run(g, cmd)?,
        Command::Publish {
            generation,
            channel: dir,
            key,
            rollout,
            keep,
            expires,
            halt,
            resume,
        } => channel::publish(
            g,
            &dir,
            &key,
            crate::channel::Publish {
                generation,
                rollout,
                halt: (halt || resume).then_some(halt),
                keep,
                expires_in: crate::channel::parse_duration(&expires)?,
            },
        )?,
        Command::Channel(ChannelCommand::Show { url, key }) => {
            channel::show(g, &url, key.as_deref())?
        }
        Command::Pkg(PkgCommand::Create { dir, output }) => pkg::create(&dir, output)?,
        Command::Pkg(PkgCommand::Info { file }) => pkg::info(g, &file)?,
        Command::Pkg(PkgCommand::Verify { file }) => pkg::verify(g, &file)?,
        Command::Pkg(PkgCommand::ImportDeb { file, output }) => pkg::import_deb(g, &file, output)?,
        Command::Key(KeyCommand::Generate { name, secure_boot }) => {
            if secure_boot {
                pkg::secure_boot_key_generate(&name)?
            } else {
                pkg::key_generate(&name)?
            }
        }
        Command::Repo(RepoCommand::Index {
            dir,
            key,
            expires_in,
            version,
        }) => pkg::repo_index(&dir, &key, expires_in, version)?,
        Command::Env(cmd) => env::command(g, cmd)?,
        Command::Run { env: name, cmd } => return env::run(g, name, cmd),
        Command::Taste { pkg, cmd } => return env::taste(g, &pkg, cmd),
        Command::Install { target, pkg } => env::install(g, target, &pkg)?,
        Command::Uninstall { target, pkg } => env::uninstall(g, target, &pkg)?,
        Command::Completions { shell: sh } => shell::completions(sh)?,
        Command::Man { dir } => shell::man(dir.as_deref())?,
    }
    Ok(ExitCode::SUCCESS)
}
