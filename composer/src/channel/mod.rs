//! Update channels: a static directory of sealed generations and one
//! signed metadata file, served by any web server, CDN or bucket.
//!
//! ```text
//! CHANNEL/channel.toml          the signed metadata (below)
//! CHANNEL/<system>-<N>.sqfs     generation N, as `pak build --generation` wrote it
//! CHANNEL/<system>-<N>.chunks   its chunk index, for delta updates (see `chunks`)
//! ```
//!
//! `channel.toml` is TOML whose first two lines are the signature, each as a
//! TOML comment (`# pak signature <key id>` and `# <base64>`): the same
//! ed25519 keys and signature text as a repository's `index.sig`, over the
//! rest of the file. Keeping signature and metadata in one file means one
//! rename publishes both, so a server never hands out a new signature with
//! old metadata; and the file stays readable by any TOML tool.
//!
//! Hosts read it with a plain GET and the generation files with GET and
//! Range (to resume), so serving needs no pak-specific code. They refuse
//! metadata that is unsigned, signed by another key, tampered with, expired
//! (a frozen mirror), of an unknown format, or older than a version already
//! seen (a replay).
//!
//! The rollout percentage applies to the newest generation; the ones before
//! it count as fully rolled out (publishing a newer one ends their rollout).
//! Whether a host is in is a stable hash of its machine-id and the
//! generation number, so each generation picks its own share of the fleet
//! and raising the percentage only adds hosts.

pub mod chunks;
pub mod delta;
mod publish;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::image::generation::PackageRef;
use crate::sources::key::PublicKey;

pub use publish::{Publish, Published, publish};

/// The metadata file of a channel.
pub const METADATA: &str = "channel.toml";
/// The metadata format this pak reads and writes.
pub const FORMAT: u32 = 1;
/// Refused beyond this: the metadata of even a long-lived channel is small.
const METADATA_MAX: u64 = 16 << 20;
/// How long published metadata stays fresh unless `--expires` says.
pub const DEFAULT_EXPIRY: &str = "7d";

/// Why a channel was refused or could not be published to.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(
        "{url} is not signed channel metadata (its first lines must be the `# pak signature` comment): publish it with `pak publish`"
    )]
    Unsigned { url: String },
    #[error(
        "{url} is signed by key {signed_by}, not by the trusted key {trusted}: check the channel URL and the key (--key, or `key` in /etc/pak/update.toml)"
    )]
    WrongKey {
        url: String,
        signed_by: String,
        trusted: String,
    },
    #[error(
        "{url}: the signature does not match the metadata: it was tampered with or damaged in transit; nothing was changed"
    )]
    BadSignature { url: String },
    #[error("{url}: the signed metadata is malformed: {why}")]
    Malformed { url: String, why: String },
    #[error(
        "{url} has channel format {format}, newer than this pak understands (format {FORMAT}); upgrade pak"
    )]
    Format { url: String, format: u32 },
    #[error(
        "{url} expired on {expired} (it is now {now}): the publisher must publish again (`pak publish ... --resume` re-signs it), or the mirror is stale or replaying old metadata"
    )]
    Expired {
        url: String,
        expired: String,
        now: String,
    },
    #[error(
        "{url} is metadata version {version}, older than version {seen} this host has already seen: refusing a replay of old metadata. If the channel was rebuilt on purpose, remove {state}"
    )]
    Replayed {
        url: String,
        version: u64,
        seen: u64,
        state: String,
    },
    #[error(
        "generation {number} is not newer than generation {newest}, which the channel already has or had; build it again as generation {next} with `pak build --generation FILE --after {channel}`"
    )]
    NotNewer {
        number: u64,
        newest: u64,
        next: u64,
        channel: String,
    },
    #[error("the rollout is a percentage from 0 to 100, not {0}")]
    Rollout(u32),
    #[error("{0:?} is not a duration: write a number and a unit, e.g. 30m, 12h, 7d")]
    Duration(String),
    #[error("{dir} has no channel yet: publish a generation to it first")]
    NoChannel { dir: String },
    #[error("--keep must keep at least one generation")]
    KeepNone,
}

/// `channel.toml`, without its signature lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub format: u32,
    /// Grows with every publish; hosts refuse one older than they saw.
    pub version: u64,
    /// Unix seconds after which hosts refuse the metadata.
    pub expires: u64,
    /// Percentage of hosts the newest generation goes to.
    pub rollout: u32,
    /// While set, hosts update to nothing.
    pub halted: bool,
    /// The highest generation number ever published, kept when `--keep`
    /// prunes it, so a number is never reused.
    pub newest: u64,
    /// Oldest first.
    #[serde(default, rename = "generation")]
    pub generations: Vec<ChannelGeneration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelGeneration {
    pub number: u64,
    /// Relative to the channel.
    pub file: String,
    /// Of the whole generation file (squashfs and seal).
    pub sha256: String,
    pub size: u64,
    pub system: String,
    pub build_id: String,
    pub kernel: String,
    /// Its dm-verity root hash (hex), from its trailer: a host refuses a
    /// file whose root differs, whatever its sha256 (a delta assembles the
    /// file from its own slots). Absent in channels published before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_hash: Option<String>,
    /// Its chunk index, for delta updates; absent, hosts download the
    /// whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<ChunkFile>,
    #[serde(default, rename = "package")]
    pub packages: Vec<PackageRef>,
}

/// A generation's chunk index ([`chunks::ChunkIndex`]) in the channel:
/// the signature over the metadata covers it through its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkFile {
    /// Relative to the channel.
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

impl Channel {
    pub fn newest_generation(&self) -> Option<&ChannelGeneration> {
        self.generations.iter().max_by_key(|g| g.number)
    }

    /// The percentage of hosts generation `number` is offered to.
    pub fn rollout_of(&self, number: u64) -> u32 {
        if self.newest_generation().map(|g| g.number) == Some(number) {
            self.rollout
        } else {
            100
        }
    }

    /// The text of `channel.toml` (without signature).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("channel metadata serializes")
    }
}

/// Whether the host with `machine_id` is among the `percent` of hosts
/// generation `number` goes to. `None` (a disk image, which has no
/// machine-id until it boots) is in any rollout above 0%: its operator
/// asked for the update on purpose.
pub fn in_rollout(machine_id: Option<&str>, number: u64, percent: u32) -> bool {
    if percent >= 100 {
        return true;
    }
    if percent == 0 {
        return false;
    }
    let Some(id) = machine_id else {
        return true;
    };
    let h = Sha256::digest(format!("pak-rollout\0{}\0{number}", id.trim()));
    let bucket = u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) % 100;
    bucket < u64::from(percent)
}

const SIG_HEADER: &str = "pak signature ";

/// `channel.toml` as written: the signature as two comment lines, then
/// the metadata.
pub fn seal(body: &str, key: &crate::sources::key::SecretKey) -> String {
    let sig = key.sign(body.as_bytes());
    let mut out = String::new();
    for line in sig.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(body);
    out
}

/// Checks `bytes` (a `channel.toml` read from `url`) against `key`:
/// signature, signer, format. Expiry and replay are the caller's
/// ([`check_fresh`]), since only it knows the time and what it saw.
pub fn verify(url: &str, bytes: &[u8], key: &PublicKey) -> Result<Channel, ChannelError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| ChannelError::Unsigned { url: url.into() })?;
    let unsigned = || ChannelError::Unsigned { url: url.into() };
    let (l1, rest) = text.split_once('\n').ok_or_else(unsigned)?;
    let (l2, body) = rest.split_once('\n').ok_or_else(unsigned)?;
    let id = l1
        .strip_prefix("# ")
        .and_then(|l| l.strip_prefix(SIG_HEADER))
        .ok_or_else(unsigned)?
        .trim();
    let b64 = l2.strip_prefix("# ").ok_or_else(unsigned)?.trim();
    if id != key.id() {
        return Err(ChannelError::WrongKey {
            url: url.into(),
            signed_by: id.into(),
            trusted: key.id(),
        });
    }
    key.verify(body.as_bytes(), &format!("{SIG_HEADER}{id}\n{b64}\n"))
        .map_err(|_| ChannelError::BadSignature { url: url.into() })?;
    // Only the format first, so a newer format is named as such rather
    // than as malformed.
    #[derive(Deserialize)]
    struct Head {
        format: u32,
    }
    let head: Head = toml::from_str(body).map_err(|e| ChannelError::Malformed {
        url: url.into(),
        why: e.message().to_string(),
    })?;
    if head.format != FORMAT {
        return Err(ChannelError::Format {
            url: url.into(),
            format: head.format,
        });
    }
    toml::from_str(body).map_err(|e| ChannelError::Malformed {
        url: url.into(),
        why: e.message().to_string(),
    })
}

/// Refuses metadata that expired by `now`, or older than version `seen`
/// (recorded in `state`, named in the message).
pub fn check_fresh(
    url: &str,
    channel: &Channel,
    now: u64,
    seen: u64,
    state: &str,
) -> Result<(), ChannelError> {
    if channel.expires <= now {
        return Err(ChannelError::Expired {
            url: url.into(),
            expired: crate::util::timefmt::utc(channel.expires),
            now: crate::util::timefmt::utc(now),
        });
    }
    if channel.version < seen {
        return Err(ChannelError::Replayed {
            url: url.into(),
            version: channel.version,
            seen,
            state: state.into(),
        });
    }
    Ok(())
}

/// The URL of the metadata of the channel at `base` (a directory, `file://`
/// or `http(s)://`).
pub fn metadata_url(base: &str) -> String {
    crate::sources::fetch::join(base, METADATA)
}

/// The URL of a generation of the channel at `base`.
pub fn generation_url(base: &str, g: &ChannelGeneration) -> String {
    crate::sources::fetch::join(base, &g.file)
}

/// The URL of a generation's chunk index.
pub fn chunks_url(base: &str, c: &ChunkFile) -> String {
    crate::sources::fetch::join(base, &c.file)
}

/// Fetches and verifies the metadata of the channel at `base` (signature,
/// signer, format; see [`check_fresh`] for the rest).
pub fn fetch(base: &str, key: &PublicKey) -> anyhow::Result<Channel> {
    use anyhow::Context;
    let url = metadata_url(base);
    let bytes = crate::sources::fetch::get_bytes(&url, METADATA_MAX)
        .with_context(|| format!("cannot read the channel metadata {url}"))?;
    Ok(verify(&url, &bytes, key)?)
}

/// Fetches the metadata of the channel at `base` without a key to check it
/// against (`pak channel show` without `--key`): what it says, and who
/// signed it. Nothing from it may be acted on.
pub fn fetch_unverified(base: &str) -> anyhow::Result<(Channel, String)> {
    use anyhow::Context;
    let url = metadata_url(base);
    let bytes = crate::sources::fetch::get_bytes(&url, METADATA_MAX)
        .with_context(|| format!("cannot read the channel metadata {url}"))?;
    let text = String::from_utf8(bytes).map_err(|_| ChannelError::Unsigned { url: url.clone() })?;
    let (l1, rest) = text
        .split_once('\n')
        .ok_or(ChannelError::Unsigned { url: url.clone() })?;
    let signer = l1
        .strip_prefix("# ")
        .and_then(|l| l.strip_prefix(SIG_HEADER))
        .ok_or(ChannelError::Unsigned { url: url.clone() })?
        .trim()
        .to_string();
    let body = rest.split_once('\n').map_or("", |r| r.1);
    let channel = toml::from_str(body).map_err(|e| ChannelError::Malformed {
        url,
        why: e.message().to_string(),
    })?;
    Ok((channel, signer))
}

/// `30s`, `15m`, `12h`, `7d`, `2w` in seconds.
pub fn parse_duration(s: &str) -> Result<u64, ChannelError> {
    crate::util::timefmt::parse_duration(s).ok_or_else(|| ChannelError::Duration(s.to_string()))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::key::SecretKey;

    fn channel() -> Channel {
        Channel {
            format: FORMAT,
            version: 3,
            expires: 1000,
            rollout: 25,
            halted: false,
            newest: 2,
            generations: vec![],
        }
    }

    #[test]
    fn signed_metadata_round_trips_and_refuses_tampering() {
        let k = SecretKey::generate().unwrap();
        let text = seal(&channel().to_toml(), &k);
        assert!(toml::from_str::<Channel>(&text).is_ok(), "still plain TOML");
        assert_eq!(
            verify("u", text.as_bytes(), &k.public()).unwrap(),
            channel()
        );
        let tampered = text.replace("rollout = 25", "rollout = 95");
        assert!(matches!(
            verify("u", tampered.as_bytes(), &k.public()),
            Err(ChannelError::BadSignature { .. })
        ));
        let other = SecretKey::generate().unwrap();
        assert!(matches!(
            verify("u", text.as_bytes(), &other.public()),
            Err(ChannelError::WrongKey { .. })
        ));
        assert!(matches!(
            verify("u", channel().to_toml().as_bytes(), &k.public()),
            Err(ChannelError::Unsigned { .. })
        ));
        let mut newer = channel();
        newer.format = 2;
        let text = seal(&newer.to_toml(), &k);
        assert!(matches!(
            verify("u", text.as_bytes(), &k.public()),
            Err(ChannelError::Format { format: 2, .. })
        ));
    }

    #[test]
    fn freshness() {
        let c = channel();
        assert!(check_fresh("u", &c, 999, 3, "s").is_ok());
        assert!(matches!(
            check_fresh("u", &c, 1000, 0, "s"),
            Err(ChannelError::Expired { .. })
        ));
        assert!(matches!(
            check_fresh("u", &c, 10, 4, "s"),
            Err(ChannelError::Replayed { seen: 4, .. })
        ));
    }

    #[test]
    fn rollout_is_stable_and_grows() {
        let ids: Vec<String> = (0..1000).map(|i| format!("{i:032x}")).collect();
        let share = |p| {
            ids.iter()
                .filter(|id| in_rollout(Some(id.as_str()), 7, p))
                .count()
        };
        assert_eq!(share(0), 0);
        assert_eq!(share(100), 1000);
        let half = share(50);
        assert!((400..600).contains(&half), "{half}");
        for id in &ids {
            if in_rollout(Some(id), 7, 10) {
                assert!(
                    in_rollout(Some(id), 7, 50),
                    "raising the share keeps hosts in"
                );
            }
        }
        assert!(in_rollout(None, 7, 1));
        assert!(!in_rollout(None, 7, 0));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert_eq!(parse_duration("90m").unwrap(), 5400);
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("d").is_err());
    }
}
