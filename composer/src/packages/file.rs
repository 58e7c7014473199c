//! What a path is, from a package's bill of materials through the
//! assembled root to the squashfs writer: one type, parameterised by how a
//! regular file's content is known at that step — its digest in a BOM, its
//! place in the store (or pak's own bytes) in the assembled root, the bytes
//! to read in the writer. Each step maps the content and keeps the rest, so
//! no step can forget a kind of file another one knows.

/// One path of a tree; `C` is what is known of a regular file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind<C> {
    Dir,
    File(C),
    Symlink(String),
    /// Another path of the same tree, a regular file: the same inode.
    HardLink(String),
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
    Fifo,
}

impl<C> FileKind<C> {
    /// The same kind, with a regular file's content known another way.
    pub fn map<D>(self, f: impl FnOnce(C) -> D) -> FileKind<D> {
        match self {
            FileKind::Dir => FileKind::Dir,
            FileKind::File(c) => FileKind::File(f(c)),
            FileKind::Symlink(t) => FileKind::Symlink(t),
            FileKind::HardLink(t) => FileKind::HardLink(t),
            FileKind::CharDev { major, minor } => FileKind::CharDev { major, minor },
            FileKind::BlockDev { major, minor } => FileKind::BlockDev { major, minor },
            FileKind::Fifo => FileKind::Fifo,
        }
    }

    /// Like [`FileKind::map`], from a borrowed kind.
    pub fn map_ref<D>(&self, f: impl FnOnce(&C) -> D) -> FileKind<D> {
        match self {
            FileKind::File(c) => FileKind::File(f(c)),
            FileKind::Dir => FileKind::Dir,
            FileKind::Symlink(t) => FileKind::Symlink(t.clone()),
            FileKind::HardLink(t) => FileKind::HardLink(t.clone()),
            FileKind::CharDev { major, minor } => FileKind::CharDev {
                major: *major,
                minor: *minor,
            },
            FileKind::BlockDev { major, minor } => FileKind::BlockDev {
                major: *major,
                minor: *minor,
            },
            FileKind::Fifo => FileKind::Fifo,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FileKind;

    #[test]
    fn map_changes_only_a_files_content() {
        assert_eq!(FileKind::File(2).map(|n| n * 10), FileKind::File(20));
        assert_eq!(
            FileKind::<u8>::Symlink("x".into()).map(u32::from),
            FileKind::<u32>::Symlink("x".into())
        );
        assert_eq!(
            FileKind::<u8>::CharDev { major: 1, minor: 3 }.map_ref(|n| *n as u32),
            FileKind::<u32>::CharDev { major: 1, minor: 3 }
        );
    }
}
