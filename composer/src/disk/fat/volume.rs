//! A FAT32 volume edited in place: the few edits the ESP needs after it
//! is written (read, add, atomically replace, rename, remove), each leaving
//! `fsck.fat` clean, and repairs of what an interrupted edit leaves.

use std::io::{Seek, SeekFrom, Write};

use anyhow::{Context, Result, bail};

use super::*;

/// A FAT32 filesystem opened in place (an image file at an offset, or a
/// block device), for the few edits the ESP needs after it is written:
/// read a file, add a file, rename, remove. Both FATs and the FSInfo free
/// count are kept in step, so `fsck.fat` stays clean after every edit.
pub struct Volume<F> {
    f: F,
    offset: u64,
    bytes_per_sector: u64,
    cluster_bytes: u64,
    fat_start: u64,
    fat_bytes: u64,
    fats: u64,
    data_start: u64,
    root: u32,
    clusters: u32,
}

/// One directory entry, with where its slots are (for rename and remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    pub cluster: u32,
    pub size: u32,
    /// Absolute byte positions of its long-name slots and its 8.3 slot.
    slots: Vec<u64>,
}

impl<F: std::io::Read + Write + Seek> Volume<F> {
    pub fn open(mut f: F, offset: u64) -> Result<Volume<F>> {
        let mut bs = [0u8; 512];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut bs)?;
        if bs[510..512] != [0x55, 0xAA] || &bs[82..87] != b"FAT32" {
            bail!("no FAT32 file system here (is this the ESP of a pak disk?)");
        }
        let u16_at = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
        let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]) as u64;
        let bps = u16_at(11);
        let spc = bs[13] as u64;
        let reserved = u16_at(14);
        let fats = bs[16] as u64;
        let total = u32_at(32);
        let fat_sectors = u32_at(36);
        if bps != 512 || spc == 0 || fats == 0 {
            bail!("unsupported FAT32 geometry");
        }
        // The boot sector is read from the disk: its numbers must describe
        // a volume whose FAT covers every cluster and whose clusters lie
        // inside it, or a corrupt ESP would index past the FAT.
        let meta = reserved + fats * fat_sectors;
        let corrupt =
            || anyhow::anyhow!("the FAT32 boot sector is corrupt: its sizes do not add up");
        let clusters = total.checked_sub(meta).ok_or_else(corrupt)? / spc;
        let root = u32_at(44);
        if clusters == 0
            || clusters > 0x0FFF_FFF5
            || (clusters + 2) * 4 > fat_sectors * bps
            || !(2..clusters + 2).contains(&root)
        {
            return Err(corrupt());
        }
        // What the volume allocates follows from its size, so its size
        // must be the device's, not whatever the boot sector claims.
        let end = f.seek(SeekFrom::End(0))?;
        if offset.saturating_add(total * bps) > end {
            bail!("the FAT32 volume claims more sectors than its device has: the ESP is corrupt");
        }
        let data_start = offset + meta * bps;
        let clusters = clusters as u32;
        Ok(Volume {
            f,
            offset,
            bytes_per_sector: bps,
            cluster_bytes: spc * bps,
            fat_start: offset + reserved * bps,
            fat_bytes: fat_sectors * bps,
            fats,
            data_start,
            root: root as u32,
            clusters,
        })
    }

    fn cluster_pos(&self, c: u32) -> u64 {
        self.data_start + (c as u64 - 2) * self.cluster_bytes
    }

    fn fat_get(&mut self, c: u32) -> Result<u32> {
        let mut b = [0u8; 4];
        self.f
            .seek(SeekFrom::Start(self.fat_start + c as u64 * 4))?;
        self.f.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b) & 0x0FFF_FFFF)
    }

    fn fat_set(&mut self, c: u32, v: u32) -> Result<()> {
        for k in 0..self.fats {
            self.f.seek(SeekFrom::Start(
                self.fat_start + k * self.fat_bytes + c as u64 * 4,
            ))?;
            self.f.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }

    fn chain(&mut self, first: u32) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut c = first;
        while (2..0x0FFF_FFF8).contains(&c) {
            if out.len() as u32 > self.clusters {
                bail!("a FAT chain loops: the ESP is corrupt");
            }
            if c >= self.clusters + 2 {
                bail!("a FAT chain leads past the last cluster: the ESP is corrupt");
            }
            out.push(c);
            c = self.fat_get(c)?;
        }
        Ok(out)
    }

    fn entries(&mut self, dir: u32) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut lfn: Vec<(u8, Vec<u16>)> = Vec::new();
        let mut lfn_sum: Vec<u8> = Vec::new();
        let mut slots = Vec::new();
        for c in self.chain(dir)? {
            let pos = self.cluster_pos(c);
            let mut buf = vec![0u8; self.cluster_bytes as usize];
            self.f.seek(SeekFrom::Start(pos))?;
            self.f.read_exact(&mut buf)?;
            for (i, e) in buf.chunks(32).enumerate() {
                let at = pos + i as u64 * 32;
                match e[0] {
                    0x00 => return Ok(out),
                    0xE5 => {
                        lfn.clear();
                        lfn_sum.clear();
                        slots.clear();
                        continue;
                    }
                    _ => {}
                }
                if e[11] == ATTR_LFN {
                    let mut units = Vec::new();
                    for off in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30] {
                        units.push(u16::from_le_bytes([e[off], e[off + 1]]));
                    }
                    if e[0] & 0x40 != 0 {
                        // The first slot of a new sequence: whatever came
                        // before belonged to no entry.
                        lfn.clear();
                        slots.clear();
                    }
                    lfn.push((e[0] & 0x1F, units));
                    lfn_sum.push(e[13]);
                    slots.push(at);
                    continue;
                }
                if e[11] & ATTR_VOLUME != 0 || e[0] == b'.' {
                    lfn.clear();
                    lfn_sum.clear();
                    slots.clear();
                    continue;
                }
                // A long name counts only when it is complete (ordinals
                // n..1) and made for this 8.3 entry (checksum); leftovers
                // of an interrupted edit are ignored, as firmware does.
                let short: [u8; 11] = e[0..11].try_into().expect("11 bytes");
                let complete = lfn
                    .iter()
                    .rev()
                    .enumerate()
                    .all(|(i, (n, _))| *n as usize == i + 1)
                    && lfn_sum.iter().all(|c| *c == lfn_checksum(&short));
                if !complete {
                    lfn.clear();
                    slots.clear();
                }
                lfn_sum.clear();
                let name = if lfn.is_empty() {
                    let base = String::from_utf8_lossy(&e[0..8]).trim_end().to_string();
                    let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_string();
                    if ext.is_empty() {
                        base
                    } else {
                        format!("{base}.{ext}")
                    }
                } else {
                    lfn.sort_by_key(|(n, _)| *n);
                    let units: Vec<u16> = lfn
                        .iter()
                        .flat_map(|(_, u)| u.iter().copied())
                        .take_while(|u| *u != 0)
                        .collect();
                    String::from_utf16_lossy(&units)
                };
                slots.push(at);
                let cluster = (u16::from_le_bytes([e[20], e[21]]) as u32) << 16
                    | u16::from_le_bytes([e[26], e[27]]) as u32;
                out.push(DirEntry {
                    name,
                    is_dir: e[11] & ATTR_DIR != 0,
                    cluster,
                    size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
                    slots: std::mem::take(&mut slots),
                });
                lfn.clear();
            }
        }
        Ok(out)
    }

    /// The first cluster of a directory (`""` is the root).
    fn dir_cluster(&mut self, dir: &str) -> Result<u32> {
        let mut c = self.root;
        for comp in dir.split('/').filter(|s| !s.is_empty()) {
            let e = self
                .entries(c)?
                .into_iter()
                .find(|e| e.is_dir && e.name.eq_ignore_ascii_case(comp));
            c = e
                .with_context(|| format!("no directory {dir} on the ESP"))?
                .cluster;
        }
        Ok(c)
    }

    /// The directory holding `path` (`a/b/c` → the cluster of `a/b`) and
    /// the last component.
    fn parent<'p>(&mut self, path: &'p str) -> Result<(u32, &'p str)> {
        let (dir, name) = path
            .trim_matches('/')
            .rsplit_once('/')
            .unwrap_or(("", path.trim_matches('/')));
        Ok((self.dir_cluster(dir)?, name))
    }

    /// The entries of a directory (`""` is the root).
    pub fn list(&mut self, dir: &str) -> Result<Vec<DirEntry>> {
        let c = self.dir_cluster(dir)?;
        self.entries(c)
    }

    pub fn find(&mut self, path: &str) -> Result<Option<DirEntry>> {
        let (dir, name) = self.parent(path)?;
        Ok(self
            .entries(dir)?
            .into_iter()
            .find(|e| e.name.eq_ignore_ascii_case(name)))
    }

    pub fn read(&mut self, path: &str) -> Result<Vec<u8>> {
        let e = self
            .find(path)?
            .with_context(|| format!("no file {path} on the ESP"))?;
        // The entry's size is a claim; the chain holds what is there.
        let chain = self.chain(e.cluster)?;
        let mut out = Vec::with_capacity(
            (e.size as u64).min(chain.len() as u64 * self.cluster_bytes) as usize,
        );
        for c in chain {
            let mut buf = vec![0u8; self.cluster_bytes as usize];
            self.f.seek(SeekFrom::Start(self.cluster_pos(c)))?;
            self.f.read_exact(&mut buf)?;
            out.extend(buf);
        }
        out.truncate(e.size as usize);
        Ok(out)
    }

    /// The first FAT, as far as it maps clusters (a FAT may be longer).
    fn read_fat(&mut self) -> Result<Vec<u8>> {
        let mut fat = vec![0u8; (self.clusters as usize + 2) * 4];
        self.f.seek(SeekFrom::Start(self.fat_start))?;
        self.f.read_exact(&mut fat)?;
        Ok(fat)
    }

    fn count_free(&self, fat: &[u8]) -> usize {
        (2..self.clusters + 2)
            .filter(|c| fat[*c as usize * 4..*c as usize * 4 + 4] == [0, 0, 0, 0])
            .count()
    }

    fn free_clusters(&mut self, n: usize) -> Result<Vec<u32>> {
        let fat = self.read_fat()?;
        let free: Vec<u32> = (2..self.clusters + 2)
            .filter(|c| fat[*c as usize * 4..*c as usize * 4 + 4] == [0, 0, 0, 0])
            .take(n)
            .collect();
        if free.len() < n {
            bail!(
                "the ESP is full: {} KiB more are needed; raise [image] esp_size",
                n as u64 * self.cluster_bytes / 1024
            );
        }
        Ok(free)
    }

    /// Free directory slots for `n` entries in `dir`, growing it if needed.
    fn slots_for(&mut self, dir: u32, n: usize) -> Result<Vec<u64>> {
        let per = (self.cluster_bytes / 32) as usize;
        let chain = self.chain(dir)?;
        let mut run = Vec::new();
        for &c in &chain {
            let pos = self.cluster_pos(c);
            let mut buf = vec![0u8; self.cluster_bytes as usize];
            self.f.seek(SeekFrom::Start(pos))?;
            self.f.read_exact(&mut buf)?;
            for i in 0..per {
                if buf[i * 32] == 0x00 || buf[i * 32] == 0xE5 {
                    run.push(pos + i as u64 * 32);
                    if run.len() == n {
                        return Ok(run);
                    }
                } else {
                    run.clear();
                }
            }
        }
        // Grow the directory by a zeroed cluster.
        let new = self.free_clusters(1)?[0];
        let last = *chain
            .last()
            .context("a directory on the ESP has no cluster: the ESP is corrupt")?;
        let pos = self.cluster_pos(new);
        self.f.seek(SeekFrom::Start(pos))?;
        self.f.write_all(&vec![0u8; self.cluster_bytes as usize])?;
        self.fat_set(new, END)?;
        self.fat_set(last, new)?;
        run.extend((0..n - run.len()).map(|i| pos + i as u64 * 32));
        Ok(run)
    }

    fn put_entries(
        &mut self,
        dir: u32,
        name: &str,
        attr: u8,
        cluster: u32,
        size: u32,
    ) -> Result<()> {
        let taken: Vec<[u8; 11]> = {
            let mut v = Vec::new();
            for e in self.entries(dir)? {
                let mut b = [0u8; 11];
                let mut s = [0u8; 32];
                self.f
                    .seek(SeekFrom::Start(*e.slots.last().expect("8.3 slot")))?;
                self.f.read_exact(&mut s)?;
                b.copy_from_slice(&s[0..11]);
                v.push(b);
            }
            v
        };
        let short = exact_short(name).unwrap_or_else(|| {
            (1..)
                .map(|n| short_alias(name, n))
                .find(|s| !taken.contains(s))
                .expect("some alias is free")
        });
        let mut bytes = Vec::new();
        named_entries(name, short, attr, cluster, size, &mut bytes);
        let slots = self.slots_for(dir, bytes.len() / 32)?;
        for (k, at) in slots.iter().enumerate() {
            self.f.seek(SeekFrom::Start(*at))?;
            self.f.write_all(&bytes[k * 32..k * 32 + 32])?;
        }
        Ok(())
    }

    /// Adds a new file (the name must be free). Data and the FAT chain are
    /// written before the directory entry, so a cut leaves no entry that
    /// points at unwritten data.
    pub fn create(&mut self, path: &str, data: &[u8]) -> Result<()> {
        if self.find(path)?.is_some() {
            bail!("{path} already exists on the ESP");
        }
        let (dir, name) = self.parent(path)?;
        let n = data.len().div_ceil(self.cluster_bytes as usize);
        let clusters = self.free_clusters(n)?;
        for (k, c) in clusters.iter().enumerate() {
            let chunk = &data[k * self.cluster_bytes as usize
                ..((k + 1) * self.cluster_bytes as usize).min(data.len())];
            self.f.seek(SeekFrom::Start(self.cluster_pos(*c)))?;
            self.f.write_all(chunk)?;
            self.fat_set(*c, clusters.get(k + 1).copied().unwrap_or(END))?;
        }
        self.f.flush()?;
        self.put_entries(
            dir,
            name,
            ATTR_ARCHIVE,
            clusters.first().copied().unwrap_or(0),
            data.len() as u32,
        )?;
        self.update_fsinfo()
    }

    /// Renames within one directory: the new name is written before the
    /// old one is removed, so a cut leaves the file under one name or both.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let e = self
            .find(from)?
            .with_context(|| format!("no file {from} on the ESP"))?;
        if self.find(to)?.is_some() {
            bail!("{to} already exists on the ESP");
        }
        let (dir, name) = self.parent(to)?;
        let (from_dir, _) = self.parent(from)?;
        let attr = if e.is_dir { ATTR_DIR } else { ATTR_ARCHIVE };
        if from_dir == dir && self.rename_in_place(dir, &e, name, attr)? {
            return Ok(());
        }
        self.put_entries(dir, name, attr, e.cluster, e.size)?;
        self.f.flush()?;
        self.unlink(&e)
    }

    /// Rewrites an entry's name over the tail of its own slots in a single
    /// write, when the new name needs no more slots and they share a
    /// sector: a cut leaves the old name or the new one, never both (the
    /// renames boot counting and mark-good make always shrink the name).
    fn rename_in_place(&mut self, dir: u32, e: &DirEntry, name: &str, attr: u8) -> Result<bool> {
        let taken: Vec<[u8; 11]> = {
            let mut v = Vec::new();
            for other in self.entries(dir)? {
                if other.slots == e.slots {
                    continue;
                }
                let mut s = [0u8; 32];
                self.f
                    .seek(SeekFrom::Start(*other.slots.last().expect("8.3 slot")))?;
                self.f.read_exact(&mut s)?;
                v.push(s[0..11].try_into().expect("11 bytes"));
            }
            v
        };
        let short = exact_short(name).unwrap_or_else(|| {
            (1..)
                .map(|n| short_alias(name, n))
                .find(|s| !taken.contains(s))
                .expect("some alias is free")
        });
        let mut bytes = Vec::new();
        named_entries(name, short, attr, e.cluster, e.size, &mut bytes);
        let n = bytes.len() / 32;
        if n > e.slots.len() {
            return Ok(false);
        }
        let tail = &e.slots[e.slots.len() - n..];
        let one_sector = tail.windows(2).all(|w| w[1] == w[0] + 32)
            && tail[0] / self.bytes_per_sector == tail[n - 1] / self.bytes_per_sector;
        if !one_sector {
            return Ok(false);
        }
        self.f.seek(SeekFrom::Start(tail[0]))?;
        self.f.write_all(&bytes)?;
        self.f.flush()?;
        for at in e.slots[..e.slots.len() - n].iter().rev() {
            self.f.seek(SeekFrom::Start(*at))?;
            self.f.write_all(&[0xE5])?;
        }
        self.f.flush()?;
        Ok(true)
    }

    /// Removes a file: its entry first, then its clusters are freed.
    pub fn remove(&mut self, path: &str) -> Result<()> {
        let e = self
            .find(path)?
            .with_context(|| format!("no file {path} on the ESP"))?;
        self.unlink(&e)?;
        for c in self.chain(e.cluster)? {
            self.fat_set(c, 0)?;
        }
        self.update_fsinfo()
    }

    /// Deletes an entry's slots, the 8.3 slot first: that one write is what
    /// removes the file; long-name slots left by a cut after it are ignored.
    fn unlink(&mut self, e: &DirEntry) -> Result<()> {
        for at in e.slots.iter().rev() {
            self.f.seek(SeekFrom::Start(*at))?;
            self.f.write_all(&[0xE5])?;
        }
        self.f.flush()?;
        Ok(())
    }

    /// Creates a directory (its parent must exist): a zeroed cluster with
    /// `.` and `..`, then the entry in the parent.
    pub fn create_dir(&mut self, path: &str) -> Result<()> {
        if self.find(path)?.is_some() {
            bail!("{path} already exists on the ESP");
        }
        let (parent, name) = self.parent(path)?;
        let c = self.free_clusters(1)?[0];
        let mut bytes = vec![0u8; self.cluster_bytes as usize];
        bytes[..32].copy_from_slice(&entry(b".          ", ATTR_DIR, c, 0));
        // `..` of a directory in the root names cluster 0.
        let up = if parent == self.root { 0 } else { parent };
        bytes[32..64].copy_from_slice(&entry(b"..         ", ATTR_DIR, up, 0));
        self.f.seek(SeekFrom::Start(self.cluster_pos(c)))?;
        self.f.write_all(&bytes)?;
        self.fat_set(c, END)?;
        self.f.flush()?;
        self.put_entries(parent, name, ATTR_DIR, c, 0)?;
        self.update_fsinfo()
    }

    /// Makes `to` hold the content of `from`, and `from` disappear, so that
    /// a cut at any point leaves `to` with its complete old or complete new
    /// content: (1) `from`'s entry is deleted, its clusters kept; (2) `to`'s
    /// 8.3 entry is repointed at them, one 32-byte write inside a sector;
    /// (3) `to`'s old clusters are freed. A cut after (1) leaves clusters
    /// no entry reaches; [`Volume::reclaim_lost_clusters`] frees them.
    pub fn replace(&mut self, from: &str, to: &str) -> Result<()> {
        let src = self
            .find(from)?
            .with_context(|| format!("no file {from} on the ESP"))?;
        let Some(dst) = self.find(to)? else {
            return self.rename(from, to);
        };
        if src.is_dir || dst.is_dir {
            bail!("cannot replace {to} with {from}: only files can be replaced");
        }
        self.unlink(&src)?;
        let at = *dst.slots.last().expect("8.3 slot");
        let mut e = [0u8; 32];
        self.f.seek(SeekFrom::Start(at))?;
        self.f.read_exact(&mut e)?;
        e[20..22].copy_from_slice(&((src.cluster >> 16) as u16).to_le_bytes());
        e[26..28].copy_from_slice(&(src.cluster as u16).to_le_bytes());
        e[28..32].copy_from_slice(&src.size.to_le_bytes());
        self.f.seek(SeekFrom::Start(at))?;
        self.f.write_all(&e)?;
        self.f.flush()?;
        for c in self.chain(dst.cluster)? {
            self.fat_set(c, 0)?;
        }
        self.update_fsinfo()
    }

    /// Frees clusters that are allocated but that no directory entry
    /// reaches, and clears long-name slots that belong to no entry, as a
    /// cut in the middle of an edit can leave. Returns how many clusters
    /// it freed.
    pub fn reclaim_lost_clusters(&mut self) -> Result<u32> {
        let mut reachable = vec![false; self.clusters as usize + 2];
        let mut orphans = 0;
        let mut dirs = vec![self.root];
        let mut seen = std::collections::HashSet::new();
        while let Some(d) = dirs.pop() {
            if !seen.insert(d) {
                continue;
            }
            let chain = self.chain(d)?;
            for c in &chain {
                reachable[*c as usize] = true;
            }
            let entries = self.entries(d)?;
            // Long-name slots that belong to no entry: what a cut in the
            // middle of adding or removing an entry leaves behind.
            let owned: std::collections::HashSet<u64> = entries
                .iter()
                .flat_map(|e| e.slots.iter().copied())
                .collect();
            'scan: for c in chain {
                let pos = self.cluster_pos(c);
                let mut buf = vec![0u8; self.cluster_bytes as usize];
                self.f.seek(SeekFrom::Start(pos))?;
                self.f.read_exact(&mut buf)?;
                for (i, e) in buf.chunks(32).enumerate() {
                    let at = pos + i as u64 * 32;
                    if e[0] == 0 {
                        break 'scan;
                    }
                    if e[0] != 0xE5 && e[11] == ATTR_LFN && !owned.contains(&at) {
                        self.f.seek(SeekFrom::Start(at))?;
                        self.f.write_all(&[0xE5])?;
                        orphans += 1;
                    }
                }
            }
            for e in entries {
                if e.cluster < 2 || e.cluster as usize >= reachable.len() {
                    continue;
                }
                if e.is_dir {
                    dirs.push(e.cluster);
                } else {
                    for c in self.chain(e.cluster)? {
                        reachable[c as usize] = true;
                    }
                }
            }
        }
        let fat = self.read_fat()?;
        let mut freed = 0;
        for c in 2..self.clusters + 2 {
            let i = c as usize * 4;
            if fat[i..i + 4] != [0, 0, 0, 0] && !reachable[c as usize] {
                self.fat_set(c, 0)?;
                freed += 1;
            }
        }
        if orphans > 0 || freed > 0 {
            self.f.flush()?;
        }
        // The free count a cut may have left stale.
        self.update_fsinfo()?;
        Ok(freed)
    }

    /// Bytes free for file data.
    pub fn free_bytes(&mut self) -> Result<u64> {
        let fat = self.read_fat()?;
        let free = self.count_free(&fat) as u64;
        Ok(free * self.cluster_bytes)
    }

    /// Bytes a file of `len` bytes takes, in whole clusters.
    pub fn footprint(&self, len: u64) -> u64 {
        len.div_ceil(self.cluster_bytes) * self.cluster_bytes
    }

    fn update_fsinfo(&mut self) -> Result<()> {
        let fat = self.read_fat()?;
        let free = self.count_free(&fat) as u32;
        for sector in [1u64, 7] {
            self.f.seek(SeekFrom::Start(
                self.offset + sector * self.bytes_per_sector + 488,
            ))?;
            self.f.write_all(&free.to_le_bytes())?;
            self.f.write_all(&0xFFFF_FFFFu32.to_le_bytes())?;
        }
        self.f.flush()?;
        Ok(())
    }

    /// The device underneath, for writes outside the ESP (a slot).
    pub fn device(&mut self) -> &mut F {
        &mut self.f
    }

    pub fn into_inner(self) -> F {
        self.f
    }
}

#[cfg(test)]
mod edit_tests {
    use super::*;

    fn fsck(img: &std::path::Path) {
        let out = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
    }

    #[test]
    fn edits_keep_fsck_clean_and_mtools_agree() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("esp.img");
        let size = 128u64 << 20;
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size).unwrap();
        let files = vec![
            (
                "loader/entries/pak-a-1+3.conf".to_string(),
                b"title a\n".to_vec(),
            ),
            ("pak/a/vmlinuz".to_string(), vec![1u8; 10_000]),
        ];
        let mut w = std::io::BufWriter::new(f);
        write(&mut w, 0, size, "ESP", &files).unwrap();
        drop(w);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let mut v = Volume::open(f, 0).unwrap();
        assert_eq!(
            v.read("loader/entries/pak-a-1+3.conf").unwrap(),
            b"title a\n"
        );
        let kernel: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        v.create("pak/b/../b-kernel", b"x").unwrap_err();
        v.create("pak/a/vmlinuz-new", &kernel).unwrap();
        v.create("loader/entries/pak-b-2+3.conf", b"title b\n")
            .unwrap();
        v.rename(
            "loader/entries/pak-a-1+3.conf",
            "loader/entries/pak-a-1.conf",
        )
        .unwrap();
        v.remove("pak/a/vmlinuz").unwrap();
        v.create_dir("pak/b").unwrap();
        v.create("pak/b/x.tmp", b"new contents").unwrap();
        v.create("pak/b/x", &kernel).unwrap();
        v.replace("pak/b/x.tmp", "pak/b/x").unwrap();
        assert_eq!(v.read("pak/b/x").unwrap(), b"new contents");
        assert!(v.find("pak/b/x.tmp").unwrap().is_none());
        // A cut after step (1) of a replace: clusters nobody reaches.
        v.create("pak/b/lost", &kernel).unwrap();
        let lost = v.find("pak/b/lost").unwrap().unwrap();
        v.unlink(&lost).unwrap();
        assert_eq!(
            v.reclaim_lost_clusters().unwrap() as u64,
            v.footprint(kernel.len() as u64) / v.cluster_bytes
        );
        assert_eq!(v.reclaim_lost_clusters().unwrap(), 0);
        for i in 0..80 {
            // Enough long names to grow the directory past one cluster.
            v.create(
                &format!("loader/entries/a-rather-long-entry-name-number-{i}.conf"),
                b"e",
            )
            .unwrap();
        }
        drop(v);
        fsck(&img);
        let ls = std::process::Command::new("mdir")
            .args(["-b", "-i"])
            .arg(&img)
            .arg("::/loader/entries")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&ls.stdout);
        assert!(
            listing.contains("pak-a-1.conf")
                && listing.contains("pak-b-2+3.conf")
                && !listing.contains("pak-a-1+3.conf"),
            "{listing}"
        );
        assert!(listing.contains("number-79.conf"), "{listing}");
        let t = std::process::Command::new("mtype")
            .arg("-i")
            .arg(&img)
            .arg("::/pak/a/vmlinuz-new")
            .output()
            .unwrap();
        assert!(t.stdout == kernel);
        let f = std::fs::File::open(&img).unwrap();
        let mut v = Volume::open(ReadOnly(f), 0).unwrap();
        let names: Vec<String> = v
            .list("pak/a")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["vmlinuz-new"]);
    }

    /// Lets a read-only file satisfy the editor's bounds in tests.
    struct ReadOnly(std::fs::File);
    impl std::io::Read for ReadOnly {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for ReadOnly {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("read-only"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Seek for ReadOnly {
        fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
            self.0.seek(p)
        }
    }
}
