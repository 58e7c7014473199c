//! The I/O layer under [`super::PakDisk`]: what a disk is to the
//! lifecycle code, the real one (`fdatasync` as its barrier), and the fault
//! injection that lets tests stop any run after any write.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Storage a pak disk lives on. `flush` must be a durability barrier: what
/// was written before it is on the medium when it returns.
pub trait Device: Read + Write + Seek {
    /// Drops cached copies, so the next read comes from the medium.
    fn forget_cache(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Device for io::Cursor<Vec<u8>> {}

/// A disk image or block device whose `flush` is `fdatasync`.
pub struct SyncFile(File);

impl SyncFile {
    /// Opens a disk for edits, one pak at a time: a second pak command on
    /// the same disk waits (and says so) rather than interleave its writes.
    pub fn open_locked(path: &Path) -> Result<SyncFile> {
        let f = File::options()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        use rustix::fs::FlockOperation;
        if rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
            eprintln!(
                "waiting for another pak command working on {}",
                path.display()
            );
            rustix::fs::flock(&f, FlockOperation::LockExclusive)
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Ok(SyncFile(f))
    }
}

impl Read for SyncFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl Write for SyncFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}
impl Seek for SyncFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}
impl Device for SyncFile {
    fn forget_cache(&mut self) -> io::Result<()> {
        rustix::fs::fadvise(&self.0, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Fault injection, for tests only. Every disk `pak system` opens goes
// through a `CutAfter`; unless a test asks for a cut (the CLI reads
// `PAK_CUT_AFTER_OPS` for `--disk` images, and nothing else does), its
// budget is unlimited and it only counts.
// ---------------------------------------------------------------------------

/// Passes reads through and lets `n` writes and flushes reach the device,
/// then fails every later one, as if the power had been cut there.
pub struct CutAfter<D> {
    inner: D,
    left: u64,
    /// Writes and flushes that reached the device.
    pub ops: u64,
}

impl<D> CutAfter<D> {
    pub fn new(inner: D, n: u64) -> Self {
        CutAfter {
            inner,
            left: n,
            ops: 0,
        }
    }
    /// No cut: every write reaches the device.
    pub fn never(inner: D) -> Self {
        Self::new(inner, u64::MAX)
    }
    pub fn into_inner(self) -> D {
        self.inner
    }
    fn spend(&mut self) -> io::Result<()> {
        if self.left == 0 {
            return Err(io::Error::other("power cut (PAK_CUT_AFTER_OPS)"));
        }
        self.left -= 1;
        self.ops += 1;
        Ok(())
    }
}

impl<D: Read> Read for CutAfter<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl<D: Write> Write for CutAfter<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.spend()?;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.spend()?;
        self.inner.flush()
    }
}
impl<D: Seek> Seek for CutAfter<D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}
impl<D: Device> Device for CutAfter<D> {
    fn forget_cache(&mut self) -> io::Result<()> {
        self.inner.forget_cache()
    }
}

/// A disk file or device as `pak system` opens it.
pub type DiskFile = CutAfter<SyncFile>;

/// The sha256 of `len` bytes at `offset`.
pub fn read_sha256<D: Read + Seek>(dev: &mut D, offset: u64, len: u64) -> Result<String> {
    dev.seek(SeekFrom::Start(offset))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        dev.read_exact(&mut buf[..n])?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(hash.finalize()))
}
