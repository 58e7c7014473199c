//! Where a package's paths land in a pak root, which is merged-/usr:
//! `/bin`, `/sbin`, `/lib` and `/lib64` are links to their `/usr` twins.
//! The assembler places files by this, and `pak owns` finds them by it, so
//! it is defined once, here, below both.

/// The top-level directories that are links into `/usr`, and where to.
pub const MERGED: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

/// Maps a package path (absolute or relative) onto merged-/usr, relative.
pub fn canonical(path: &str) -> String {
    let path = path.trim_start_matches('/');
    for (from, to) in MERGED {
        if path == *from {
            return to.to_string();
        }
        if let Some(rest) = path.strip_prefix(from).and_then(|r| r.strip_prefix('/')) {
            return format!("{to}/{rest}");
        }
    }
    path.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn merged_usr() {
        assert_eq!(super::canonical("/bin/sh"), "usr/bin/sh");
        assert_eq!(super::canonical("lib"), "usr/lib");
        assert_eq!(super::canonical("/library/x"), "library/x");
        assert_eq!(super::canonical("usr/bin/sh"), "usr/bin/sh");
    }
}
