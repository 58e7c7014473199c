//! PE/COFF images, the format of UEFI applications: reading the headers
//! and sections, appending sections (how a unified kernel image is made
//! from systemd-stub), the Authenticode digest, and the attribute
//! certificate table a signature goes into.
//!
//! Why no crate: `goblin` and `object` read PE files, and `object` writes
//! new ones from scratch, but none edits an existing image in place, which
//! is what a UKI is (systemd's stub with sections appended, laid out as
//! systemd's ukify does so that systemd-stub finds them), and none gives
//! the Authenticode digest and certificate table together. The handful of
//! header fields involved are read and written here, and the result is
//! checked in tests against binutils' `objdump` and sbsigntool's
//! `sbverify` (tests/secureboot.rs).

use sha2::{Digest, Sha256};

/// What is wrong with an input that should be a PE image.
#[derive(Debug, thiserror::Error)]
pub enum PeError {
    #[error("not a PE image: {0}")]
    Malformed(&'static str),
    #[error(
        "the image is already signed (it has an attribute certificate table); give pak the unsigned file"
    )]
    AlreadySigned,
    #[error("no room in the PE headers for section {0}; the stub has too many sections")]
    NoHeaderRoom(String),
    #[error("section name {0:?} is longer than the 8 bytes a PE section name holds")]
    NameTooLong(String),
    #[error("the image would exceed 4 GiB, the limit of PE's 32-bit offsets")]
    TooLarge,
}

pub const SCN_CNT_CODE: u32 = 0x0000_0020;
pub const SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
pub const SCN_MEM_READ: u32 = 0x4000_0000;

const SECTION_HEADER: usize = 40;
/// `IMAGE_DIRECTORY_ENTRY_SECURITY`: the attribute certificate table.
const DIR_SECURITY: usize = 4;
const COFF_LOCAL_SYMS_STRIPPED: u16 = 0x0008;
const WIN_CERT_REVISION_2_0: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
    pub characteristics: u32,
}

/// A section to append: its name, contents, and how large it is once
/// loaded (at least the contents; a kernel asks for its SizeOfImage).
pub struct NewSection<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    pub virtual_size: Option<u32>,
}

/// A PE image held in memory, with the offsets of the header fields
/// that pak reads or changes.
#[derive(Debug, Clone)]
pub struct Pe {
    bytes: Vec<u8>,
    /// The COFF file header (just after "PE\0\0").
    coff: usize,
    /// The optional header.
    opt: usize,
    /// The data directories.
    dirs: usize,
    dir_count: usize,
    /// The section table.
    sections: usize,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn round_up(v: usize, align: usize) -> usize {
    v.div_ceil(align) * align
}

fn to_u32(v: usize) -> Result<u32, PeError> {
    u32::try_from(v).map_err(|_| PeError::TooLarge)
}

impl Pe {
    pub fn parse(bytes: Vec<u8>) -> Result<Pe, PeError> {
        use PeError::Malformed;
        if bytes.len() < 0x40 || &bytes[..2] != b"MZ" {
            return Err(Malformed("no MZ header"));
        }
        let pe = u32_at(&bytes, 0x3c) as usize;
        if bytes.len() < pe + 24 || &bytes[pe..pe + 4] != b"PE\0\0" {
            return Err(Malformed("no PE signature"));
        }
        let coff = pe + 4;
        let opt = coff + 20;
        let opt_size = u16_at(&bytes, coff + 16) as usize;
        if bytes.len() < opt + opt_size || opt_size < 2 {
            return Err(Malformed("truncated optional header"));
        }
        // PE32 and PE32+ differ in where the directories start.
        let (count_at, dirs) = match u16_at(&bytes, opt) {
            0x20b => (opt + 108, opt + 112),
            0x10b => (opt + 92, opt + 96),
            _ => return Err(Malformed("unknown optional header magic")),
        };
        if count_at + 4 > opt + opt_size {
            return Err(Malformed("optional header too short"));
        }
        let dir_count = u32_at(&bytes, count_at) as usize;
        if dirs + dir_count * 8 > opt + opt_size {
            return Err(Malformed("data directories overrun the optional header"));
        }
        let sections = opt + opt_size;
        let p = Pe {
            bytes,
            coff,
            opt,
            dirs,
            dir_count,
            sections,
        };
        if sections + p.section_count() * SECTION_HEADER > p.bytes.len() {
            return Err(Malformed("truncated section table"));
        }
        if p.file_alignment() == 0
            || !p.file_alignment().is_power_of_two()
            || p.section_alignment() == 0
            || !p.section_alignment().is_power_of_two()
        {
            return Err(Malformed("alignment is not a power of two"));
        }
        for s in p.sections() {
            if s.raw_offset as usize + s.raw_size as usize > p.bytes.len() {
                return Err(Malformed("a section's data lies past the end of the file"));
            }
        }
        if p.size_of_headers() > p.bytes.len() {
            return Err(Malformed("SizeOfHeaders lies past the end of the file"));
        }
        let (at, size) = p.security_dir();
        if size != 0 && at as usize + size as usize > p.bytes.len() {
            return Err(Malformed(
                "the certificate table lies past the end of the file",
            ));
        }
        Ok(p)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    fn section_count(&self) -> usize {
        u16_at(&self.bytes, self.coff + 2) as usize
    }

    fn section_alignment(&self) -> usize {
        u32_at(&self.bytes, self.opt + 32) as usize
    }

    fn file_alignment(&self) -> usize {
        u32_at(&self.bytes, self.opt + 36) as usize
    }

    fn size_of_headers(&self) -> usize {
        u32_at(&self.bytes, self.opt + 60) as usize
    }

    pub fn size_of_image(&self) -> u32 {
        u32_at(&self.bytes, self.opt + 56)
    }

    fn checksum_at(&self) -> usize {
        self.opt + 64
    }

    pub fn checksum(&self) -> u32 {
        u32_at(&self.bytes, self.checksum_at())
    }

    /// Offset of the security directory entry, if the image has one.
    fn security_entry(&self) -> Option<usize> {
        (self.dir_count > DIR_SECURITY).then_some(self.dirs + DIR_SECURITY * 8)
    }

    /// The certificate table's file offset and size (0, 0 when unsigned).
    pub fn security_dir(&self) -> (u32, u32) {
        match self.security_entry() {
            Some(e) => (u32_at(&self.bytes, e), u32_at(&self.bytes, e + 4)),
            None => (0, 0),
        }
    }

    fn section_at(&self, i: usize) -> usize {
        self.sections + i * SECTION_HEADER
    }

    pub fn sections(&self) -> Vec<Section> {
        (0..self.section_count())
            .map(|i| {
                let h = &self.bytes[self.section_at(i)..self.section_at(i) + SECTION_HEADER];
                let name = &h[..8];
                let end = name.iter().position(|&c| c == 0).unwrap_or(8);
                Section {
                    name: String::from_utf8_lossy(&name[..end]).into_owned(),
                    virtual_size: u32_at(h, 8),
                    virtual_address: u32_at(h, 12),
                    raw_size: u32_at(h, 16),
                    raw_offset: u32_at(h, 20),
                    characteristics: u32_at(h, 36),
                }
            })
            .collect()
    }

    /// A section's contents, without the file alignment padding.
    pub fn section_data(&self, name: &str) -> Option<&[u8]> {
        let s = self.sections().into_iter().find(|s| s.name == name)?;
        let len = s.virtual_size.min(s.raw_size) as usize;
        let at = s.raw_offset as usize;
        Some(&self.bytes[at..at + len])
    }

    /// Drops a COFF symbol table left at the end of the file and aligns
    /// every section's raw data to FileAlignment, as ukify does: older
    /// stubs were shipped unstripped or stripped into unaligned layouts.
    fn normalize(&mut self) -> Result<(), PeError> {
        let symtab = u32_at(&self.bytes, self.coff + 8) as usize;
        if symtab != 0 {
            let mut size = 18 * u32_at(&self.bytes, self.coff + 12) as usize;
            if symtab + size + 4 <= self.bytes.len() {
                size += u32_at(&self.bytes, symtab + size) as usize;
            }
            if symtab + size == self.bytes.len() {
                self.bytes.truncate(symtab);
                put_u32(&mut self.bytes, self.coff + 8, 0);
                put_u32(&mut self.bytes, self.coff + 12, 0);
                let ch = u16_at(&self.bytes, self.coff + 18) | COFF_LOCAL_SYMS_STRIPPED;
                put_u16(&mut self.bytes, self.coff + 18, ch);
            }
        }
        let fa = self.file_alignment();
        for i in 0..self.section_count() {
            let h = self.section_at(i);
            let oldp = u32_at(&self.bytes, h + 20) as usize;
            let oldsz = u32_at(&self.bytes, h + 16) as usize;
            if oldsz == 0 {
                continue;
            }
            let newp = round_up(oldp, fa);
            let newsz = round_up(oldsz, fa);
            let (padp, padsz) = (newp - oldp, newsz - oldsz);
            if padp + padsz == 0 {
                continue;
            }
            let mut b = Vec::with_capacity(self.bytes.len() + padp + padsz);
            b.extend_from_slice(&self.bytes[..oldp]);
            b.resize(b.len() + padp, 0);
            b.extend_from_slice(&self.bytes[oldp..oldp + oldsz]);
            b.resize(b.len() + padsz, 0);
            b.extend_from_slice(&self.bytes[oldp + oldsz..]);
            self.bytes = b;
            put_u32(&mut self.bytes, h + 20, to_u32(newp)?);
            put_u32(&mut self.bytes, h + 16, to_u32(newsz)?);
            for j in i + 1..self.section_count() {
                let l = self.section_at(j) + 20;
                let p = u32_at(&self.bytes, l) as usize;
                if p != 0 {
                    put_u32(&mut self.bytes, l, to_u32(p + padp + padsz)?);
                }
            }
        }
        // The space up to the first section's data is unused, so the
        // headers may grow to the file alignment to make room.
        let soh = round_up(self.size_of_headers(), fa);
        put_u32(&mut self.bytes, self.opt + 60, to_u32(soh)?);
        Ok(())
    }

    /// Appends sections after the last one, each at the next section
    /// alignment in memory and file alignment on disk, and fixes up the
    /// header fields that describe the whole (NumberOfSections,
    /// SizeOfInitializedData, SizeOfImage, CheckSum).
    pub fn add_sections(&mut self, new: &[NewSection]) -> Result<(), PeError> {
        if self.security_dir() != (0, 0) {
            return Err(PeError::AlreadySigned);
        }
        self.normalize()?;
        let fa = self.file_alignment();
        let sa = self.section_alignment();
        for s in new {
            if s.name.len() > 8 {
                return Err(PeError::NameTooLong(s.name.to_string()));
            }
            let n = self.section_count();
            let header = self.section_at(n);
            if header + SECTION_HEADER > self.size_of_headers() {
                return Err(PeError::NoHeaderRoom(s.name.to_string()));
            }
            // The section table's tail must be free: no data lives there.
            if self.bytes[header..header + SECTION_HEADER]
                .iter()
                .any(|&c| c != 0)
            {
                return Err(PeError::NoHeaderRoom(s.name.to_string()));
            }
            let last = self
                .sections()
                .last()
                .cloned()
                .ok_or(PeError::Malformed("the stub has no sections"))?;
            let raw_offset = round_up(self.bytes.len(), fa);
            let raw_size = round_up(s.data.len(), fa);
            let vsize = s.virtual_size.unwrap_or(0).max(to_u32(s.data.len())?);
            let va = round_up(
                last.virtual_address as usize + last.virtual_size as usize,
                sa,
            );
            let kind = if s.name == ".linux" {
                // Kernels entered by the old EFI handover protocol run in
                // place, so their section is code (as ukify marks it).
                SCN_CNT_CODE
            } else {
                SCN_CNT_INITIALIZED_DATA
            };
            self.bytes.resize(raw_offset, 0);
            self.bytes.extend_from_slice(s.data);
            self.bytes.resize(raw_offset + raw_size, 0);
            let mut h = [0u8; SECTION_HEADER];
            h[..s.name.len()].copy_from_slice(s.name.as_bytes());
            put_u32(&mut h, 8, vsize);
            put_u32(&mut h, 12, to_u32(va)?);
            put_u32(&mut h, 16, to_u32(raw_size)?);
            put_u32(&mut h, 20, to_u32(raw_offset)?);
            put_u32(&mut h, 36, kind | SCN_MEM_READ);
            self.bytes[header..header + SECTION_HEADER].copy_from_slice(&h);
            put_u16(&mut self.bytes, self.coff + 2, (n + 1) as u16);
            let init = u32_at(&self.bytes, self.opt + 8).wrapping_add(vsize);
            put_u32(&mut self.bytes, self.opt + 8, init);
        }
        let last = self
            .sections()
            .last()
            .cloned()
            .ok_or(PeError::Malformed("the stub has no sections"))?;
        let size_of_image = round_up(
            last.virtual_address as usize + last.virtual_size as usize,
            sa,
        );
        put_u32(&mut self.bytes, self.opt + 56, to_u32(size_of_image)?);
        self.update_checksum();
        Ok(())
    }

    /// The PE checksum (as Windows' `CheckSumMappedFile` computes it):
    /// the file's 16-bit words summed with carries folded, the checksum
    /// field itself counted as zero, plus the file's length.
    pub fn compute_checksum(&self) -> u32 {
        let at = self.checksum_at();
        let mut sum: u64 = 0;
        for (i, chunk) in self.bytes.chunks(2).enumerate() {
            let off = i * 2;
            if off == at || off == at + 2 {
                continue;
            }
            let w = if chunk.len() == 2 {
                u16::from_le_bytes([chunk[0], chunk[1]])
            } else {
                chunk[0] as u16
            };
            sum += w as u64;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum = (sum & 0xffff) + (sum >> 16);
        (sum as u32).wrapping_add(self.bytes.len() as u32)
    }

    pub fn update_checksum(&mut self) {
        let c = self.compute_checksum();
        let at = self.checksum_at();
        put_u32(&mut self.bytes, at, c);
    }

    /// The Authenticode digest (SHA-256), computed as UEFI firmware
    /// (EDK2's DxeImageVerificationLib) does: the headers without the
    /// checksum and the security directory entry, then each section's
    /// raw data in file order, then whatever follows them up to the
    /// certificate table.
    pub fn authenticode_sha256(&self) -> Result<[u8; 32], PeError> {
        let sec = self.security_entry().ok_or(PeError::Malformed(
            "no security directory entry to sign into",
        ))?;
        let cs = self.checksum_at();
        let soh = self.size_of_headers();
        let b = &self.bytes;
        let mut h = Sha256::new();
        h.update(&b[..cs]);
        h.update(&b[cs + 4..sec]);
        h.update(&b[sec + 8..soh]);
        let mut sections = self.sections();
        sections.sort_by_key(|s| s.raw_offset);
        let mut hashed = soh;
        for s in sections.iter().filter(|s| s.raw_size != 0) {
            let at = s.raw_offset as usize;
            h.update(&b[at..at + s.raw_size as usize]);
            hashed += s.raw_size as usize;
        }
        let cert_size = self.security_dir().1 as usize;
        if b.len() > hashed + cert_size {
            h.update(&b[hashed..b.len() - cert_size]);
        }
        Ok(h.finalize().into())
    }

    /// Pads the file to 8 bytes, as the certificate table must start on
    /// a quadword; done before hashing, so the padding is signed.
    pub fn pad_for_signature(&mut self) -> Result<(), PeError> {
        if self.security_dir() != (0, 0) {
            return Err(PeError::AlreadySigned);
        }
        self.security_entry().ok_or(PeError::Malformed(
            "no security directory entry to sign into",
        ))?;
        let len = round_up(self.bytes.len(), 8);
        self.bytes.resize(len, 0);
        Ok(())
    }

    /// Appends the attribute certificate table holding one
    /// WIN_CERTIFICATE (PKCS#7 SignedData), zero-padded to a quadword,
    /// points the security directory at it and renews the checksum.
    pub fn append_signature(&mut self, pkcs7: &[u8]) -> Result<(), PeError> {
        self.pad_for_signature()?;
        let sec = self.security_entry().ok_or(PeError::Malformed(
            "no security directory entry to sign into",
        ))?;
        let at = self.bytes.len();
        let length = 8 + pkcs7.len();
        self.bytes.extend_from_slice(&to_u32(length)?.to_le_bytes());
        self.bytes
            .extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
        self.bytes
            .extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
        self.bytes.extend_from_slice(pkcs7);
        let padded = round_up(length, 8);
        self.bytes.resize(at + padded, 0);
        put_u32(&mut self.bytes, sec, to_u32(at)?);
        put_u32(&mut self.bytes, sec + 4, to_u32(padded)?);
        self.update_checksum();
        Ok(())
    }

    /// The PKCS#7 blobs of the attribute certificate table.
    pub fn signatures(&self) -> Vec<&[u8]> {
        let (at, size) = self.security_dir();
        let (mut at, end) = (at as usize, at as usize + size as usize);
        let mut out = Vec::new();
        while at + 8 <= end {
            let len = u32_at(&self.bytes, at) as usize;
            if len < 8 || at + len > end {
                break;
            }
            out.push(&self.bytes[at + 8..at + len]);
            at += round_up(len, 8);
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal PE32+ image with one .text section, as a linker would
    /// lay it out (headers in 0x400 bytes, 0x200 file alignment).
    pub(crate) fn tiny_pe() -> Vec<u8> {
        let mut b = vec![0u8; 0x600];
        b[..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut b, coff, 0x8664);
        put_u16(&mut b, coff + 2, 1);
        put_u16(&mut b, coff + 16, 240);
        put_u16(&mut b, coff + 18, 0x0206);
        let opt = coff + 20;
        put_u16(&mut b, opt, 0x20b);
        put_u32(&mut b, opt + 32, 0x1000);
        put_u32(&mut b, opt + 36, 0x200);
        put_u32(&mut b, opt + 56, 0x2000);
        put_u32(&mut b, opt + 60, 0x400);
        put_u16(&mut b, opt + 68, 10);
        put_u32(&mut b, opt + 108, 16);
        let s = opt + 240;
        b[s..s + 5].copy_from_slice(b".text");
        put_u32(&mut b, s + 8, 0x10);
        put_u32(&mut b, s + 12, 0x1000);
        put_u32(&mut b, s + 16, 0x200);
        put_u32(&mut b, s + 20, 0x400);
        put_u32(&mut b, s + 36, 0x6000_0020);
        b[0x400..0x410].copy_from_slice(&[0xc3; 16]);
        b
    }

    #[test]
    fn appended_sections_are_aligned_and_counted() {
        let mut pe = Pe::parse(tiny_pe()).unwrap();
        pe.add_sections(&[
            NewSection {
                name: ".cmdline",
                data: b"quiet",
                virtual_size: None,
            },
            NewSection {
                name: ".linux",
                data: &[7u8; 0x300],
                virtual_size: Some(0x5000),
            },
        ])
        .unwrap();
        let s = pe.sections();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[1],
            Section {
                name: ".cmdline".into(),
                virtual_size: 5,
                virtual_address: 0x2000,
                raw_size: 0x200,
                raw_offset: 0x600,
                characteristics: SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ,
            }
        );
        assert_eq!(s[2].virtual_address, 0x3000);
        assert_eq!(s[2].raw_offset, 0x800);
        assert_eq!(s[2].characteristics, SCN_CNT_CODE | SCN_MEM_READ);
        assert_eq!(pe.size_of_image(), 0x8000);
        assert_eq!(pe.section_data(".cmdline").unwrap(), b"quiet");
        assert_eq!(pe.checksum(), pe.compute_checksum());
        let again = Pe::parse(pe.bytes().to_vec()).unwrap();
        assert_eq!(again.sections(), s);
    }

    #[test]
    fn signature_goes_into_the_certificate_table_outside_the_digest() {
        let mut pe = Pe::parse(tiny_pe()).unwrap();
        pe.pad_for_signature().unwrap();
        let before = pe.authenticode_sha256().unwrap();
        pe.append_signature(&[0x30, 0x03, 1, 2, 3]).unwrap();
        assert_eq!(pe.authenticode_sha256().unwrap(), before);
        assert_eq!(pe.security_dir(), (0x600, 16));
        assert_eq!(pe.signatures(), vec![&[0x30, 0x03, 1, 2, 3][..]]);
        assert!(matches!(
            pe.append_signature(&[0]),
            Err(PeError::AlreadySigned)
        ));
        // A changed byte anywhere in a section changes the digest.
        let mut bytes = pe.into_bytes();
        bytes[0x405] ^= 1;
        assert_ne!(
            Pe::parse(bytes).unwrap().authenticode_sha256().unwrap(),
            before
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Pe::parse(b"hello".to_vec()).is_err());
        let mut b = tiny_pe();
        put_u32(&mut b, 0x3c, 0x5000);
        assert!(Pe::parse(b).is_err());
        let mut b = tiny_pe();
        put_u32(&mut b, 0x84 + 20 + 240 + 16, 0x9000);
        assert!(Pe::parse(b).is_err());
    }
}
