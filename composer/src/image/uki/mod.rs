//! Unified kernel images (UAPI Group's UKI specification): systemd-stub
//! with the kernel, the initrd, the command line and os-release as PE
//! sections, so one file, signed as a whole, carries everything the
//! firmware starts. Laid out as systemd's ukify lays them out (section
//! order, alignment, a kernel section as large in memory as the kernel
//! asks), so systemd-stub and systemd-boot treat pak's UKIs as theirs.

pub mod pe;

use pe::{NewSection, Pe, PeError};

/// systemd-stub in Debian's systemd-boot-efi package.
pub const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Everything that goes into one UKI.
pub struct UkiParts<'a> {
    /// systemd-stub (`STUB` in the image's root).
    pub stub: &'a [u8],
    /// The kernel (an EFI-stub bzImage, itself a PE image).
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    /// The kernel command line; systemd-stub uses it and, under Secure
    /// Boot, refuses any other, which is what seals a verity root hash.
    pub cmdline: &'a str,
    /// The root's os-release, shown by systemd-boot's menu.
    pub os_release: &'a str,
    /// The kernel's release (`uname -r`), if known.
    pub uname: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("systemd-stub ({STUB}) cannot take the UKI's sections: {0}")]
    Stub(PeError),
    #[error("the kernel command line has a NUL byte")]
    Cmdline,
}

/// The UKI's bytes: a pure function of the parts.
pub fn build(parts: &UkiParts) -> Result<Vec<u8>, UkiError> {
    if parts.cmdline.contains('\0') {
        return Err(UkiError::Cmdline);
    }
    let mut stub = Pe::parse(parts.stub.to_vec()).map_err(UkiError::Stub)?;
    // A kernel that is a PE image asks for SizeOfImage bytes once loaded
    // (its bss and decompression room), more than its file size; the
    // section must reserve that much, as ukify does.
    let kernel_size = Pe::parse(parts.kernel.to_vec())
        .ok()
        .map(|k| k.size_of_image());
    let mut sections = vec![
        NewSection {
            name: ".osrel",
            data: parts.os_release.as_bytes(),
            virtual_size: None,
        },
        NewSection {
            name: ".cmdline",
            data: parts.cmdline.as_bytes(),
            virtual_size: None,
        },
    ];
    if let Some(u) = parts.uname {
        sections.push(NewSection {
            name: ".uname",
            data: u.as_bytes(),
            virtual_size: None,
        });
    }
    sections.push(NewSection {
        name: ".initrd",
        data: parts.initrd,
        virtual_size: None,
    });
    sections.push(NewSection {
        name: ".linux",
        data: parts.kernel,
        virtual_size: kernel_size,
    });
    stub.add_sections(&sections).map_err(UkiError::Stub)?;
    Ok(stub.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_read_back_in_ukify_order() {
        let stub = pe::tests::tiny_pe();
        let parts = UkiParts {
            stub: &stub,
            kernel: &pe::tests::tiny_pe(),
            initrd: b"070701initrd",
            cmdline: "pak.slot=a quiet",
            os_release: "ID=debian\n",
            uname: Some("6.12.0-1-amd64"),
        };
        let uki = build(&parts).unwrap();
        assert_eq!(uki, build(&parts).unwrap(), "same parts, same bytes");
        let pe = Pe::parse(uki).unwrap();
        let names: Vec<String> = pe.sections().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [".text", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
        );
        assert_eq!(pe.section_data(".cmdline").unwrap(), b"pak.slot=a quiet");
        assert_eq!(pe.section_data(".initrd").unwrap(), b"070701initrd");
        let linux = pe.sections().pop().unwrap();
        assert_eq!(linux.virtual_size, 0x2000, "the kernel's SizeOfImage");
        assert!(matches!(
            build(&UkiParts {
                stub: b"not a PE",
                ..parts
            }),
            Err(UkiError::Stub(_))
        ));
    }
}
