//! dm-verity roots: what binds a slot to the generation that was built,
//! shared by the host side (which writes the loader entry) and `/init`
//! (which sets up the verified device with device-mapper ioctls, so the
//! image needs no `veritysetup`).
//!
//! ## A slot
//!
//! A generation file, and a slot it was written to, is
//!
//! ```text
//! block 0 .. N-1    data: the squashfs, pak's seal, zero padding (N = data_blocks)
//! block N ..        the dm-verity hash tree ("format 1", sha256, 4096-byte
//!                   data and hash blocks, no superblock; top level first)
//! last block        pak's trailer (see `pak::image::verity`)
//! ```
//!
//! The kernel's table for it, data and hash device both the slot's
//! partition, the tree starting right after the data:
//!
//! ```text
//! 0 <N*8> verity 1 <dev> <dev> 4096 4096 <N> <N> sha256 <root_hash> <salt>
//! ```
//!
//! ## The kernel command line
//!
//! The loader entry carries three words, after the system's own options:
//!
//! ```text
//! pak.verity=<root hash, 64 hex> pak.verity_salt=<salt, hex> pak.verity_blocks=<N>
//! ```
//!
//! All three or none: an entry without them (written by a pak before
//! dm-verity roots) mounts its slot unverified, and `/init` says so. The
//! same values are in the ESP's `generation.toml` (`[written.verity]`),
//! from which a rollback writes the entry again.
//!
//! ## On a block that does not match
//!
//! The table has no `restart_on_corruption` or `panic_on_corruption`: a
//! block that does not match its hash is an I/O error for whoever reads
//! it, and the kernel logs `device-mapper: verity: ...: data block N is
//! corrupted`. A restart on corruption would make a damaged generation
//! that is already marked good reboot forever (systemd-boot never falls
//! back from a good entry); an I/O error fails only what reads the block.
//! A boot on trial fails by itself: `/init` reads the whole device before
//! it mounts it (so a damaged block anywhere in it is found, not only in
//! what the boot happens to read), prints the verity error and reboots,
//! which uses up one of the entry's tries, and systemd-boot then picks the
//! other slot.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Both the data and the hash block size, in bytes.
pub const BLOCK_SIZE: u64 = 4096;
/// The dm-verity hash type ("format 1": the salt is hashed before the block).
pub const FORMAT: u32 = 1;
pub const ALGORITHM: &str = "sha256";

const ROOT_WORD: &str = "pak.verity";
const SALT_WORD: &str = "pak.verity_salt";
const BLOCKS_WORD: &str = "pak.verity_blocks";

/// What the kernel needs to check a slot: the root hash of its tree, the
/// salt, and how many data blocks the tree covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verity {
    /// sha256, lowercase hex.
    pub root_hash: String,
    /// Lowercase hex.
    pub salt: String,
    pub data_blocks: u64,
}

/// Why the verity words of a command line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadVerity(pub String);

impl fmt::Display for BadVerity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadVerity {}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Verity {
    /// Where the tree starts, in blocks from the start of the slot.
    pub fn hash_start_block(&self) -> u64 {
        self.data_blocks
    }

    /// The verified device's size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * (BLOCK_SIZE / 512)
    }

    /// The words the loader entry carries.
    pub fn cmdline(&self) -> String {
        format!(
            "{ROOT_WORD}={} {SALT_WORD}={} {BLOCKS_WORD}={}",
            self.root_hash, self.salt, self.data_blocks
        )
    }

    /// The verity target's parameters for a slot on device `dev`
    /// (`major:minor` or a path).
    pub fn table(&self, dev: &str) -> String {
        format!(
            "{FORMAT} {dev} {dev} {BLOCK_SIZE} {BLOCK_SIZE} {} {} {ALGORITHM} {} {}",
            self.data_blocks,
            self.hash_start_block(),
            self.root_hash,
            self.salt
        )
    }

    /// Checks what a command line or a description gave.
    pub fn validate(&self) -> Result<(), BadVerity> {
        if self.root_hash.len() != 64 || !is_hex(&self.root_hash) {
            return Err(BadVerity(format!(
                "{ROOT_WORD}={} is not a sha256 (64 hex digits)",
                self.root_hash
            )));
        }
        // The kernel takes up to 256 bytes of salt.
        if self.salt.len() > 512 || !is_hex(&self.salt) {
            return Err(BadVerity(format!(
                "{SALT_WORD}={} is not a salt (up to 256 bytes in hex)",
                self.salt
            )));
        }
        if self.data_blocks == 0 {
            return Err(BadVerity(format!("{BLOCKS_WORD}=0 covers nothing")));
        }
        Ok(())
    }

    /// The verity words of a kernel command line: `None` when there are
    /// none, an error when some are missing or malformed.
    pub fn from_cmdline(cmdline: &str) -> Option<Result<Verity, BadVerity>> {
        let (mut root, mut salt, mut blocks) = (None, None, None);
        for word in cmdline.split_whitespace() {
            match word.split_once('=') {
                Some((ROOT_WORD, v)) => root = Some(v),
                Some((SALT_WORD, v)) => salt = Some(v),
                Some((BLOCKS_WORD, v)) => blocks = Some(v),
                _ => {}
            }
        }
        if root.is_none() && salt.is_none() && blocks.is_none() {
            return None;
        }
        let missing =
            |w: &str| BadVerity(format!("the command line has no {w}= beside the others"));
        Some((|| {
            let root = root.ok_or_else(|| missing(ROOT_WORD))?;
            let salt = salt.ok_or_else(|| missing(SALT_WORD))?;
            let blocks = blocks.ok_or_else(|| missing(BLOCKS_WORD))?;
            let v = Verity {
                root_hash: root.to_string(),
                salt: salt.to_string(),
                data_blocks: blocks
                    .parse()
                    .map_err(|_| BadVerity(format!("{BLOCKS_WORD}={blocks} is not a number")))?,
            };
            v.validate()?;
            Ok(v)
        })())
    }
}

/// The command line a loader entry passes for a slot: the system's own
/// options, then the slot's verity words when it has a tree.
pub fn entry_cmdline(cmdline: &str, verity: Option<&Verity>) -> String {
    match verity {
        Some(v) if cmdline.is_empty() => v.cmdline(),
        Some(v) => format!("{cmdline} {}", v.cmdline()),
        None => cmdline.to_string(),
    }
}

/// Device-mapper through its ioctls (`linux/dm-ioctl.h`), as much as
/// `/init` needs: create a read-only verity device, ask its status.
///
/// Hand-written: the `devicemapper` crate (Stratis) speaks these ioctls,
/// but brings nix, semver and its own error stack into the static `/init`
/// for five calls. The layout is checked against the header's numbers in
/// the tests below, and against the kernel by `tests/e2e_verity.rs`.
pub mod dm {
    use std::fs;
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};

    use super::Verity;

    const CONTROL: &str = "/dev/mapper/control";
    /// The misc minor of `/dev/mapper/control` (MAPPER_CTRL_MINOR).
    const CONTROL_MINOR: u32 = 236;
    /// sizeof(struct dm_ioctl) and sizeof(struct dm_target_spec).
    const HEADER: usize = 312;
    const SPEC: usize = 40;
    const NAME_LEN: usize = 128;
    const BUFFER: usize = 16 << 10;

    const READONLY_FLAG: u32 = 1 << 0;
    const BUFFER_FULL_FLAG: u32 = 1 << 8;

    #[derive(Clone, Copy)]
    enum Cmd {
        Version = 0,
        Create = 3,
        Remove = 4,
        Suspend = 6,
        TableLoad = 9,
        TableStatus = 12,
    }

    /// `_IOWR(0xfd, cmd, struct dm_ioctl)`.
    fn request(cmd: Cmd) -> libc::c_ulong {
        (3 << 30) | ((HEADER as libc::c_ulong) << 16) | (0xfd << 8) | cmd as libc::c_ulong
    }

    /// One ioctl's buffer: the header, then the command's data. Kept in
    /// u64s so the kernel's 8-byte alignment holds.
    struct Buf(Vec<u64>);

    impl Buf {
        fn new(name: &str, flags: u32) -> Buf {
            let mut b = Buf(vec![0; BUFFER / 8]);
            b.put_u32(0, 4); // version 4.0.0: any 4.x kernel interface
            b.put_u32(12, BUFFER as u32); // data_size
            b.put_u32(16, HEADER as u32); // data_start
            b.put_u32(28, flags);
            let n = name.len().min(NAME_LEN - 1);
            b.bytes_mut()[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
            b
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            // SAFETY: a u64 slice viewed as its bytes, same length in bytes.
            unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), BUFFER) }
        }
        fn bytes(&self) -> &[u8] {
            // SAFETY: as above, shared.
            unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), BUFFER) }
        }
        fn put_u32(&mut self, at: usize, v: u32) {
            self.bytes_mut()[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        fn put_u64(&mut self, at: usize, v: u64) {
            self.bytes_mut()[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        }
        fn u32_at(&self, at: usize) -> u32 {
            u32::from_ne_bytes(self.bytes()[at..at + 4].try_into().unwrap())
        }
        fn u64_at(&self, at: usize) -> u64 {
            u64::from_ne_bytes(self.bytes()[at..at + 8].try_into().unwrap())
        }
        /// One target: `length` sectors of `kind` with `params`.
        fn target(&mut self, length: u64, kind: &str, params: &str) {
            let at = HEADER;
            self.put_u32(20, 1); // target_count
            self.put_u64(at + 8, length);
            let b = self.bytes_mut();
            b[at + 24..at + 24 + kind.len()].copy_from_slice(kind.as_bytes());
            let p = at + SPEC;
            b[p..p + params.len()].copy_from_slice(params.as_bytes());
            b[p + params.len()] = 0;
            let next = (SPEC + params.len() + 1).next_multiple_of(8) as u32;
            self.put_u32(at + 20, next);
        }
    }

    fn ioctl(ctl: &fs::File, cmd: Cmd, buf: &mut Buf) -> std::io::Result<()> {
        // SAFETY: the buffer is BUFFER bytes, as its header's data_size says.
        let r = unsafe { libc::ioctl(ctl.as_raw_fd(), request(cmd) as _, buf.0.as_mut_ptr()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn control() -> Result<fs::File, String> {
        if !Path::new(CONTROL).exists() {
            // devtmpfs makes it when dm-mod loads; make it if it did not.
            let _ = fs::create_dir_all("/dev/mapper");
            mknod(CONTROL, libc::S_IFCHR, 10, CONTROL_MINOR)?;
        }
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map_err(|e| format!("open {CONTROL} (is dm-mod loaded?): {e}"))
    }

    fn mknod(path: &str, kind: libc::mode_t, major: u32, minor: u32) -> Result<(), String> {
        let c = std::ffi::CString::new(path).map_err(|_| format!("bad path {path}"))?;
        // SAFETY: a valid C string; mknod reads it only.
        let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o600, libc::makedev(major, minor)) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("mknod {path}: {e}"));
            }
        }
        Ok(())
    }

    /// Creates the read-only verity device `name` over the slot partition
    /// `data_dev` and returns its device node.
    pub fn create_verity(name: &str, data_dev: &Path, v: &Verity) -> Result<PathBuf, String> {
        let ctl = control()?;
        let st =
            rustix::fs::stat(data_dev).map_err(|e| format!("stat {}: {e}", data_dev.display()))?;
        let dev = format!(
            "{}:{}",
            rustix::fs::major(st.st_rdev),
            rustix::fs::minor(st.st_rdev)
        );
        let mut b = Buf::new(name, 0);
        ioctl(&ctl, Cmd::Version, &mut b).map_err(|e| format!("device-mapper version: {e}"))?;
        let mut b = Buf::new(name, 0);
        ioctl(&ctl, Cmd::Create, &mut b).map_err(|e| format!("create device {name}: {e}"))?;
        let encoded = b.u64_at(40);
        let (major, minor) = (
            ((encoded >> 8) & 0xfff) as u32,
            ((encoded & 0xff) | ((encoded >> 12) & 0xfff00)) as u32,
        );
        let loaded = (|| {
            let mut b = Buf::new(name, READONLY_FLAG);
            b.target(v.sectors(), "verity", &v.table(&dev));
            ioctl(&ctl, Cmd::TableLoad, &mut b)
                .map_err(|e| format!("load the verity table of {name}: {e}"))?;
            // Resuming (suspend without the suspend flag) makes the table live.
            let mut b = Buf::new(name, 0);
            ioctl(&ctl, Cmd::Suspend, &mut b).map_err(|e| format!("resume {name}: {e}"))
        })();
        if let Err(e) = loaded {
            let _ = ioctl(&ctl, Cmd::Remove, &mut Buf::new(name, 0));
            return Err(e);
        }
        let _ = fs::create_dir_all("/dev/mapper");
        let node = format!("/dev/mapper/{name}");
        mknod(&node, libc::S_IFBLK, major, minor)?;
        Ok(PathBuf::from(node))
    }

    /// The status of the device's verity target: `V` while every block
    /// read matched, `C` once one did not.
    pub fn status(name: &str) -> Result<String, String> {
        let ctl = control()?;
        let mut b = Buf::new(name, 0);
        ioctl(&ctl, Cmd::TableStatus, &mut b).map_err(|e| format!("status of {name}: {e}"))?;
        if b.u32_at(28) & BUFFER_FULL_FLAG != 0 || b.u32_at(20) == 0 {
            return Err(format!("{name} has no status"));
        }
        let at = b.u32_at(16) as usize + SPEC;
        let rest = &b.bytes()[at..];
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_ioctl_layout_is_the_kernels() {
            // DM_VERSION as dm-ioctl.h spells it on x86_64.
            assert_eq!(request(Cmd::Version), 0xc138_fd00);
            assert_eq!(request(Cmd::TableLoad), 0xc138_fd09);
            let mut b = Buf::new("pak-root", READONLY_FLAG);
            b.target(16, "verity", "1 8:2 8:2");
            let bytes = b.bytes();
            assert_eq!(&bytes[48..56], b"pak-root");
            assert_eq!(bytes[56], 0);
            assert_eq!(b.u32_at(20), 1);
            assert_eq!(b.u32_at(28), READONLY_FLAG);
            assert_eq!(b.u64_at(HEADER + 8), 16);
            assert_eq!(&bytes[HEADER + 24..HEADER + 30], b"verity");
            assert_eq!(&bytes[HEADER + SPEC..HEADER + SPEC + 9], b"1 8:2 8:2");
            assert_eq!(b.u32_at(HEADER + 20), 56);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Verity {
        Verity {
            root_hash: "ab".repeat(32),
            salt: "cd".repeat(32),
            data_blocks: 300,
        }
    }

    #[test]
    fn the_command_line_round_trips() {
        let line = entry_cmdline("console=ttyS0", Some(&v()));
        assert_eq!(
            line,
            format!(
                "console=ttyS0 pak.verity={} pak.verity_salt={} pak.verity_blocks=300",
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
        assert_eq!(Verity::from_cmdline(&line), Some(Ok(v())));
        assert_eq!(entry_cmdline("quiet", None), "quiet");
        assert_eq!(Verity::from_cmdline("console=ttyS0"), None);
    }

    #[test]
    fn a_partial_or_malformed_command_line_is_an_error() {
        let only_root = format!("pak.verity={}", "ab".repeat(32));
        let e = Verity::from_cmdline(&only_root).unwrap().unwrap_err();
        assert!(e.0.contains("pak.verity_salt"), "{e}");
        let short = v().cmdline().replace(&"ab".repeat(32), "abc");
        assert!(Verity::from_cmdline(&short).unwrap().is_err());
        let zero = v().cmdline().replace("=300", "=0");
        assert!(Verity::from_cmdline(&zero).unwrap().is_err());
    }

    #[test]
    fn the_table_puts_the_tree_after_the_data() {
        assert_eq!(
            v().table("254:2"),
            format!(
                "1 254:2 254:2 4096 4096 300 300 sha256 {} {}",
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
        assert_eq!(v().sectors(), 2400);
    }
}
