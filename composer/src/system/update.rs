//! `pak system update`: from a channel (see [`crate::channel`]) to the
//! inactive slot, through the same switch as `pak system switch`.
//!
//! The steps, each refusing before anything is written:
//!
//! 1. fetch the channel metadata and check its signature and signer, that
//!    it has not expired, and that its version is not older than the last
//!    one this host accepted (the update state);
//! 2. choose the newest generation that is newer than the booted one, that
//!    has not already failed here (the machine fell back from it), and
//!    whose rollout includes this host; a halted channel offers nothing;
//! 3. download it into a cache, resuming what an interrupted run left, and
//!    check its size and sha256 against the signed metadata. When the
//!    channel has a chunk index for it (see [`channel::chunks`]), only the
//!    chunks neither slot holds are fetched ([`channel::delta`]): both
//!    slots are seeds, every reused chunk checked against the signed
//!    index, and the file assembled in the cache is checked whole as a
//!    download would be;
//! 4. [`PakDisk::switch`] to it: its seal, the slot read back, the loader
//!    entry with tries; health checks and the fallback guard the reboot;
//! 5. record the metadata version and the failed generations.
//!
//! The update state of a running system is a file on `/var`
//! ([`LIVE_STATE`]); a disk image keeps it on its ESP ([`ESP_STATE`]), since
//! its data partition may not even be formatted before the first boot and
//! pak does not write ext4. The same code reads and writes both through
//! [`StateAt`].
//!
//! A service calls [`PakDisk::update`] with [`UpdateOptions::live`], the
//! source from [`UpdateConfig::read_live`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pak_boot::disk::Slot;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Device, Incoming, PakDisk, SlotState, Status, Switched};
use crate::channel::chunks::ChunkIndex;
use crate::channel::delta::{self, Assembly, Seed};
use crate::channel::{self, Channel, ChannelGeneration, ChunkFile};
use crate::sources::key::PublicKey;

/// Where the image says its channel is.
pub const CONFIG: &str = crate::spec::update::CONFIG_FILE;
/// The update state of the running system.
pub const LIVE_STATE: &str = "/var/lib/pak/update/state.toml";
/// The download cache of the running system.
pub const LIVE_CACHE: &str = "/var/cache/pak/update";
/// The update state of a disk image, on its ESP.
pub const ESP_STATE: &str = "pak/update.toml";

/// A channel and the key its metadata must be signed with.
#[derive(Debug, Clone)]
pub struct UpdateSource {
    /// A directory, `file://` or `http(s)://` URL.
    pub url: String,
    pub key: PublicKey,
}

/// `/etc/pak/update.toml`:
///
/// ```toml
/// channel = "https://updates.example.com/minimal"
/// key = "channel.pub"     # a .pub file (relative to /etc/pak) or the key text
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    pub channel: String,
    pub key: String,
    /// For `--watch`: time between checks (`1h` when absent).
    #[serde(default)]
    pub interval: Option<String>,
    /// For `--watch`: `HH:MM-HH:MM` UTC; absent, it reboots right away.
    #[serde(default, rename = "reboot-window")]
    pub reboot_window: Option<String>,
}

impl UpdateConfig {
    pub fn parse(text: &str, what: &str) -> Result<UpdateConfig> {
        toml::from_str(text).with_context(|| {
            format!(
                "{what} is malformed: it needs channel = \"URL\" and key = \"FILE.pub or key text\""
            )
        })
    }

    /// The running system's schedule for `--watch`, from its
    /// `/etc/pak/update.toml`.
    pub fn schedule_live() -> Result<crate::spec::update::Schedule> {
        let text = std::fs::read_to_string(CONFIG).with_context(|| {
            format!("cannot read {CONFIG}: the updater needs it (the Pakfile's [update] writes it)")
        })?;
        let cfg = UpdateConfig::parse(&text, CONFIG)?;
        crate::spec::update::Schedule::parse(cfg.interval.as_deref(), cfg.reboot_window.as_deref())
            .context(CONFIG)
    }

    /// The running system's `/etc/pak/update.toml`, with its key.
    pub fn read_live() -> Result<UpdateSource> {
        let text = std::fs::read_to_string(CONFIG).with_context(|| {
            format!("cannot read {CONFIG}: give the channel with --channel URL --key FILE.pub, or write {CONFIG}")
        })?;
        let cfg = UpdateConfig::parse(&text, CONFIG)?;
        let key = PublicKey::from_pakfile_field(&cfg.key, Path::new("/etc/pak"))
            .with_context(|| format!("the key {CONFIG} names"))?;
        Ok(UpdateSource {
            url: cfg.channel,
            key,
        })
    }
}

/// What a host remembers between updates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateState {
    /// The newest metadata version accepted, per channel (`<key id> <url>`).
    #[serde(default)]
    pub seen: BTreeMap<String, u64>,
    /// Generations this host fell back from; never offered again (a newer
    /// number is a new generation).
    #[serde(default)]
    pub failed: Vec<u64>,
    /// Unix seconds of the last update that got as far as the metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<u64>,
    /// What that update found and did, for `pak system status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_found: Option<Found>,
}

/// What an update found in the channel (`--check` records nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Found {
    pub channel: String,
    /// The metadata version it accepted.
    pub version: u64,
    /// The channel's newest generation, if it lists any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<u64>,
    /// Newer generations whose rollout did not include this host.
    #[serde(default)]
    pub not_in_rollout: Vec<u64>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum Outcome {
    /// Nothing newer was offered to this host.
    UpToDate,
    /// The channel was halted.
    Halted,
    /// Written to the other slot (by this update or an earlier one).
    Installed { generation: u64 },
    /// The download or the switch failed; the next update resumes a
    /// download from where it stopped (`sha256`.partial in the cache).
    Failed {
        generation: u64,
        sha256: String,
        size: u64,
        error: String,
    },
}

/// Where the update state lives.
#[derive(Debug, Clone)]
pub enum StateAt {
    /// A file (the running system's [`LIVE_STATE`]).
    File(PathBuf),
    /// [`ESP_STATE`] on the disk's ESP.
    Esp,
}

#[derive(Debug, Clone)]
pub struct UpdateOptions {
    pub source: UpdateSource,
    /// Only report what would be done; write nothing.
    pub check_only: bool,
    /// Where downloads go, and resume from.
    pub cache: PathBuf,
    pub state: StateAt,
    /// This host's `/etc/machine-id`; `None` for a disk image, which gets
    /// one on its first boot (see [`channel::in_rollout`]).
    pub machine_id: Option<String>,
    /// Clock, in unix seconds (tests set it).
    pub now: u64,
}

impl UpdateOptions {
    /// The running system's paths and machine-id.
    pub fn live(source: UpdateSource) -> UpdateOptions {
        UpdateOptions {
            source,
            check_only: false,
            cache: PathBuf::from(LIVE_CACHE),
            state: StateAt::File(PathBuf::from(LIVE_STATE)),
            machine_id: std::fs::read_to_string("/etc/machine-id")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            now: channel::now(),
        }
    }

    /// A disk image: state on its ESP, downloads into `cache`.
    pub fn disk(source: UpdateSource, cache: PathBuf) -> UpdateOptions {
        UpdateOptions {
            source,
            check_only: false,
            cache,
            state: StateAt::Esp,
            machine_id: None,
            now: channel::now(),
        }
    }
}

/// What [`PakDisk::update`] found and did.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    pub channel: String,
    /// The metadata version accepted.
    pub version: u64,
    pub halted: bool,
    pub booted_generation: Option<u64>,
    /// Newer generations skipped because they failed on this host.
    pub skipped_failed: Vec<u64>,
    /// Newer generations whose rollout does not include this host yet.
    pub not_in_rollout: Vec<u64>,
    pub action: Action,
    /// How a delta update got the generation's bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Assembly>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Action {
    /// Nothing newer is offered to this host.
    UpToDate,
    /// The channel is halted: nothing is offered.
    Halted,
    /// `--check`: this generation would be installed.
    Available { generation: u64, size: u64 },
    /// It is already written to the other slot and boots next.
    Pending { generation: u64 },
    /// Written to the other slot; it boots next, on trial.
    Switched(Switched),
}

impl<D: Device> PakDisk<D> {
    /// Updates this disk from `opts.source`; see the module's header.
    pub fn update(&mut self, opts: &UpdateOptions) -> Result<UpdateReport> {
        let src = &opts.source;
        let channel = channel::fetch(&src.url, &src.key)?;
        let mut state = self.read_update_state(&opts.state)?;
        let seen_key = format!("{} {}", src.key.id(), src.url);
        let seen = state.seen.get(&seen_key).copied().unwrap_or(0);
        channel::check_fresh(
            &channel::metadata_url(&src.url),
            &channel,
            opts.now,
            seen,
            &self.state_name(&opts.state),
        )?;
        let status = self.status()?;
        let booted = status.booted_generation;
        let failed = failed_here(&state, &status);

        let mut report = UpdateReport {
            channel: src.url.clone(),
            version: channel.version,
            halted: channel.halted,
            booted_generation: booted,
            skipped_failed: Vec::new(),
            not_in_rollout: Vec::new(),
            action: Action::UpToDate,
            delta: None,
        };
        let chosen = if channel.halted {
            report.action = Action::Halted;
            None
        } else {
            choose(&channel, booted.unwrap_or(0), &failed, opts, &mut report)
        };
        let mut install_error = None;
        if let Some(g) = &chosen {
            let other = status.booted_slot.map_or(Slot::A, Slot::other);
            let o = status.slot(other);
            if o.generation == Some(g.number)
                && o.state == SlotState::Pending
                && status.default_entry == o.entry
            {
                report.action = Action::Pending {
                    generation: g.number,
                };
            } else if opts.check_only {
                report.action = Action::Available {
                    generation: g.number,
                    size: g.size,
                };
            } else {
                if let (Some(n), Some(false)) = (booted, status.booted_good) {
                    bail!(
                        "generation {n}, which runs now, is not marked good yet: an update writes the other slot, the one this boot on trial falls back to; not updating to generation {} until it is (`pak system mark-good`, or the image's health checks)",
                        g.number
                    );
                }
                match self.install(&src.url, g, &opts.cache, &mut report.delta) {
                    Ok(done) => report.action = Action::Switched(done),
                    Err(e) => install_error = Some((g, e)),
                }
            }
        }
        if opts.check_only {
            return Ok(report);
        }
        // The metadata was accepted, so it is recorded even when the
        // download then failed: status tells what is half-way, and the
        // version seen must not go back.
        let outcome = match (&install_error, &report.action) {
            (Some((g, e)), _) => Outcome::Failed {
                generation: g.number,
                sha256: g.sha256.clone(),
                size: g.size,
                error: format!("{e:#}"),
            },
            (None, Action::Halted) => Outcome::Halted,
            (None, Action::Pending { generation }) => Outcome::Installed {
                generation: *generation,
            },
            (None, Action::Switched(done)) => Outcome::Installed {
                generation: done.generation,
            },
            (None, Action::UpToDate | Action::Available { .. }) => Outcome::UpToDate,
        };
        state.seen.insert(seen_key, channel.version);
        state.failed = failed;
        state.last_check = Some(opts.now);
        state.last_found = Some(Found {
            channel: src.url.clone(),
            version: channel.version,
            newest: channel.newest_generation().map(|g| g.number),
            not_in_rollout: report.not_in_rollout.clone(),
            outcome,
        });
        let written = self.write_update_state(&opts.state, &state);
        if let Some((_, e)) = install_error {
            return Err(e);
        }
        written?;
        Ok(report)
    }

    /// Downloads generation `g` (through its chunk index when the channel
    /// has one, saying in `delta` how) and switches to it.
    fn install(
        &mut self,
        base: &str,
        g: &ChannelGeneration,
        cache: &Path,
        delta: &mut Option<Assembly>,
    ) -> Result<Switched> {
        let file = match &g.chunks {
            Some(c) => {
                let (file, a) = self.assemble(base, g, c, cache)?;
                *delta = Some(a);
                file
            }
            None => download(base, g, cache)?,
        };
        let f = std::fs::File::open(&file)
            .with_context(|| format!("cannot open {}", file.display()))?;
        let name = format!("generation {} from {base}", g.number);
        let mut incoming = Incoming::read(f, &name)?;
        if incoming.meta.number != g.number {
            bail!(
                "{name} says it is generation {}: the channel is inconsistent; ask its publisher to publish again",
                incoming.meta.number
            );
        }
        // The sha256 already binds the file; this binds what the slot will
        // boot to what the publisher checked, whatever assembled the file.
        if let Some(want) = &g.root_hash
            && &incoming.verity.root_hash != want
        {
            let found = incoming.verity.root_hash.clone();
            drop(incoming);
            let _ = std::fs::remove_file(&file);
            bail!(
                "{name} has dm-verity root hash {found}, but the signed channel metadata says {want}: the channel is inconsistent or was tampered with; nothing was written to the disk's slots (the download was discarded)"
            );
        }
        let done = self.switch(&mut incoming, false)?;
        drop(incoming);
        let _ = std::fs::remove_file(&file);
        Ok(done)
    }

    /// Assembles generation `g` in `cache` from the slots and the chunks
    /// they lack, fetched by the chunk index `c`.
    fn assemble(
        &mut self,
        base: &str,
        g: &ChannelGeneration,
        c: &ChunkFile,
        cache: &Path,
    ) -> Result<(PathBuf, Assembly)> {
        let partial = prepare_cache(cache, g)?;
        let url = channel::chunks_url(base, c);
        let bytes = crate::sources::fetch::get_bytes(&url, c.size)
            .with_context(|| format!("cannot read the chunk index {url}"))?;
        let got = hex::encode(Sha256::digest(&bytes));
        if bytes.len() as u64 != c.size || got != c.sha256 {
            bail!(
                "the chunk index {url} ({} bytes, sha256 {got}) is not the one the signed channel metadata names ({} bytes, sha256 {}): the server is corrupt or was tampered with; nothing was written",
                bytes.len(),
                c.size,
                c.sha256
            );
        }
        let index = ChunkIndex::parse(&bytes, g.size, &url)?;
        let seeds = self.seeds()?;
        let gen_url = channel::generation_url(base, g);
        let number = g.number;
        let mut done = delta::assemble(
            self.esp.device(),
            &seeds,
            &index,
            &gen_url,
            &partial,
            |p| {
                eprintln!(
                    "generation {number}: fetching {} of {} ({} from the slots, {} already downloaded, {} of verity tree computed here)",
                    delta::mib(p.to_fetch),
                    delta::mib(p.size),
                    delta::mib(p.from_seeds),
                    delta::mib(p.from_cache),
                    delta::mib(p.derived)
                )
            },
        )?;
        done.index_bytes = bytes.len() as u64;
        check_download(&partial, g, &gen_url)?;
        Ok((partial, done))
    }

    /// Both slots, the booted one first, as far as a generation may fill
    /// them: what the ESP says was written there, or what the squashfs at
    /// its start says it spans. A slot holding neither is no seed. Its
    /// bytes are only a hint: each chunk is checked before it is used.
    fn seeds(&mut self) -> Result<Vec<Seed>> {
        let status = self.status()?;
        let first = status.booted_slot.unwrap_or(Slot::A);
        let mut out = Vec::new();
        for slot in [first, first.other()] {
            let part = self.partition(slot).clone();
            let written = self
                .slot_meta(slot)
                .ok()
                .flatten()
                .and_then(|m| m.written)
                .map(|w| w.image_size);
            let len = match written {
                Some(n) => Some(n),
                None => {
                    let dev = self.esp.device();
                    crate::image::squashfs::Reader::open(&mut *dev, part.offset())
                        .ok()
                        .map(|r| (r.bytes_used() + 40).div_ceil(4096) * 4096)
                }
            };
            if let Some(len) = len {
                out.push(Seed {
                    name: format!("slot {slot}"),
                    offset: part.offset(),
                    len: len.min(part.size()),
                });
            }
        }
        Ok(out)
    }

    /// The update side of `pak system status`: the channel configured, the
    /// last check, the generations that failed here, and what is pending.
    /// Partial downloads are looked for in `cache`. What cannot be read is
    /// reported in it, never an error: the rest of the status matters more.
    pub fn update_status(&mut self, status: &Status, at: &StateAt, cache: &Path) -> UpdateStatus {
        let (channel, config_error) = match self.configured_channel() {
            Ok(c) => (c, None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let (state, state_error) = match self.read_update_state(at) {
            Ok(s) => (s, None),
            Err(e) => (UpdateState::default(), Some(format!("{e:#}"))),
        };
        let other = status.booted_slot.map(Slot::other);
        let installed = other
            .map(|o| status.slot(o))
            .filter(|o| {
                o.state == SlotState::Pending
                    && o.generation > status.booted_generation
                    && status.default_entry == o.entry
            })
            .and_then(|o| {
                Some(PendingUpdate::Installed {
                    generation: o.generation?,
                    slot: o.slot.as_str().to_string(),
                })
            });
        let download = match state.last_found.as_ref().map(|f| &f.outcome) {
            Some(Outcome::Failed {
                generation,
                sha256,
                size,
                ..
            }) => std::fs::metadata(cache.join(format!("{sha256}.partial")))
                .ok()
                .map(|m| PendingUpdate::Download {
                    generation: *generation,
                    // What is there: a delta update writes chunks where
                    // they belong, leaving holes for those still missing.
                    bytes: {
                        use std::os::unix::fs::MetadataExt;
                        m.len().min(m.blocks() * 512)
                    },
                    size: *size,
                }),
            _ => None,
        };
        UpdateStatus {
            channel,
            config: self.config_name(),
            config_error,
            last_check: state.last_check,
            last_found: state.last_found.clone(),
            failed: failed_here(&state, status),
            pending: installed.or(download),
            state_error,
        }
    }

    /// The channel URL `/etc/pak/update.toml` names (the running system's,
    /// or that of the generation a disk image boots); `None` when there is
    /// no such file.
    fn configured_channel(&mut self) -> Result<Option<String>> {
        let text = if self.booted.is_some() {
            match std::fs::read(CONFIG) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("cannot read {CONFIG}")),
            }
        } else {
            match self.booted_file(CONFIG)? {
                Some(t) => t,
                None => return Ok(None),
            }
        };
        let cfg = UpdateConfig::parse(&String::from_utf8_lossy(&text), &self.config_name())?;
        Ok(Some(cfg.channel))
    }

    fn config_name(&self) -> String {
        if self.booted.is_some() {
            CONFIG.to_string()
        } else {
            format!("{CONFIG} in the generation {} boots", self.name)
        }
    }

    /// The update state, empty when there is none yet.
    pub fn read_update_state(&mut self, at: &StateAt) -> Result<UpdateState> {
        let name = self.state_name(at);
        let text = match at {
            StateAt::File(p) => match std::fs::read(p) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(UpdateState::default());
                }
                Err(e) => return Err(e).with_context(|| format!("cannot read {name}")),
            },
            StateAt::Esp => {
                if self.find(ESP_STATE)?.is_none() {
                    return Ok(UpdateState::default());
                }
                self.esp
                    .read(ESP_STATE)
                    .with_context(|| format!("cannot read {name}"))?
            }
        };
        toml::from_str(&String::from_utf8_lossy(&text)).with_context(|| {
            format!("{name} is corrupt; remove it (the next update starts a new record)")
        })
    }

    fn write_update_state(&mut self, at: &StateAt, state: &UpdateState) -> Result<()> {
        let text = toml::to_string(state)?;
        match at {
            StateAt::File(p) => crate::util::fsutil::write_atomic(p, text.as_bytes()),
            StateAt::Esp => {
                // As rollback rewrites an entry: a cut leaves the old
                // record or the new one.
                let tmp = format!("{ESP_STATE}.tmp");
                self.esp.reclaim_lost_clusters()?;
                if self.esp.find(&tmp)?.is_some() {
                    self.esp.remove(&tmp)?;
                }
                if self.esp.find(pak_boot::disk::esp::PAK_DIR)?.is_none() {
                    self.esp.create_dir(pak_boot::disk::esp::PAK_DIR)?;
                }
                self.esp.create(&tmp, text.as_bytes())?;
                self.esp.replace(&tmp, ESP_STATE)
            }
        }
    }

    fn state_name(&self, at: &StateAt) -> String {
        match at {
            StateAt::File(p) => p.display().to_string(),
            StateAt::Esp => format!("{ESP_STATE} on the ESP of {}", self.name),
        }
    }

    /// A file in the squashfs of the generation that boots (next), e.g.
    /// the image's own `etc/pak/update.toml`.
    pub fn booted_file(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        let status = self.status()?;
        let Some(slot) = status.booted_slot else {
            return Ok(None);
        };
        let offset = self.partition(slot).offset();
        let dev = self.esp.device();
        let mut r = crate::image::squashfs::Reader::open(&mut *dev, offset)
            .with_context(|| format!("slot {slot} of {} holds no squashfs", self.name))?;
        Ok(r.read(path.trim_start_matches('/')).ok())
    }

    /// The channel the booted generation's `/etc/pak/update.toml` names.
    pub fn configured_source(&mut self) -> Result<UpdateSource> {
        let what = format!("{CONFIG} in the generation {} boots", self.name);
        let text = self.booted_file(CONFIG)?.with_context(|| {
            format!("{what} does not exist: give the channel with --channel URL --key FILE.pub")
        })?;
        let cfg = UpdateConfig::parse(&String::from_utf8_lossy(&text), &what)?;
        let key = if cfg.key.trim_start().starts_with("pak public key") {
            PublicKey::parse(&cfg.key)?
        } else {
            let path = Path::new("/etc/pak").join(&cfg.key);
            let text = self
                .booted_file(&path.display().to_string())?
                .with_context(|| {
                    format!(
                        "{what} names the key {}, which is not in the image",
                        path.display()
                    )
                })?;
            PublicKey::parse(&String::from_utf8_lossy(&text))
                .with_context(|| format!("{} in the image", path.display()))?
        };
        Ok(UpdateSource {
            url: cfg.channel,
            key,
        })
    }
}

/// Generations this host fell back from: those recorded, and what the
/// disk shows now (the next switch removes the bad entry that tells it,
/// so an update records it).
fn failed_here(state: &UpdateState, status: &Status) -> Vec<u64> {
    let mut failed = state.failed.clone();
    failed.extend(status.rolled_back.as_ref().map(|r| r.failed_generation));
    failed.extend(
        status
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Bad)
            .filter_map(|s| s.generation),
    );
    failed.sort_unstable();
    failed.dedup();
    failed
}

/// What `pak system status` says about updates.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateStatus {
    /// The channel the configuration names; `None` when there is none.
    pub channel: Option<String>,
    /// Where the configuration is (or would be).
    pub config: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    /// Unix seconds of the last update that read the channel.
    pub last_check: Option<u64>,
    pub last_found: Option<Found>,
    /// Generations this host fell back from; not tried again.
    pub failed: Vec<u64>,
    pub pending: Option<PendingUpdate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum PendingUpdate {
    /// Written to the other slot: it boots next, on trial.
    Installed { generation: u64, slot: String },
    /// Partly downloaded: the next `pak system update` resumes it.
    Download {
        generation: u64,
        bytes: u64,
        size: u64,
    },
}

/// The newest generation above `booted` that has not failed here and
/// whose rollout includes this host; notes what it passed over.
fn choose<'a>(
    channel: &'a Channel,
    booted: u64,
    failed: &[u64],
    opts: &UpdateOptions,
    report: &mut UpdateReport,
) -> Option<&'a ChannelGeneration> {
    let mut newer: Vec<&ChannelGeneration> = channel
        .generations
        .iter()
        .filter(|g| g.number > booted)
        .collect();
    newer.sort_by_key(|g| std::cmp::Reverse(g.number));
    for g in newer {
        if failed.contains(&g.number) {
            report.skipped_failed.push(g.number);
        } else if !channel::in_rollout(
            opts.machine_id.as_deref(),
            g.number,
            channel.rollout_of(g.number),
        ) {
            report.not_in_rollout.push(g.number);
        } else {
            return Some(g);
        }
    }
    None
}

/// Downloads generation `g` of the channel at `base` into `cache`,
/// resuming a partial download of the same file, and checks it against
/// the signed metadata. Other files in the cache (older partial downloads)
/// are removed.
fn download(base: &str, g: &ChannelGeneration, cache: &Path) -> Result<PathBuf> {
    let partial = prepare_cache(cache, g)?;
    let url = channel::generation_url(base, g);
    crate::sources::fetch::download_resumable(
        &url,
        &partial,
        g.size,
        &format!("generation {}", g.number),
    )?;
    check_download(&partial, g, &url)?;
    Ok(partial)
}

/// The file in `cache` generation `g` is downloaded to, resumed from;
/// other files there (older partial downloads) are removed.
fn prepare_cache(cache: &Path, g: &ChannelGeneration) -> Result<PathBuf> {
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let name = format!("{}.partial", g.sha256);
    for e in std::fs::read_dir(cache)
        .with_context(|| format!("cannot list {}", cache.display()))?
        .flatten()
    {
        if e.file_name() != name.as_str() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(cache.join(&name))
}

/// Checks the downloaded (or assembled) `partial` against the signed
/// metadata; a mismatch is discarded.
fn check_download(partial: &Path, g: &ChannelGeneration, url: &str) -> Result<()> {
    let mut f = std::fs::File::open(partial)
        .with_context(|| format!("cannot read {}", partial.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    let got = hex::encode(h.finalize());
    if got != g.sha256 {
        let _ = std::fs::remove_file(partial);
        bail!(
            "generation {} from {url} has sha256 {got}, but the signed channel metadata says {}: the server or the download is corrupt; nothing was written to the disk's slots (the download was discarded, the next run fetches it again)",
            g.number,
            g.sha256
        );
    }
    Ok(())
}
