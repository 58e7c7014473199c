//! The Pakfile's `ssh-authorized-keys`, as files the image's sshd reads.
//!
//! Keys go under `/etc/ssh/authorized_keys.d/NAME`, owned by root and in
//! the read-only image, rather than in `~/.ssh`: home directories live on
//! the data partition, which the image does not write, and a key a user
//! cannot edit is what an administrator who wrote it into the Pakfile
//! means. The `ssh` profile's `sshd_config` names this directory.

use crate::image::sysconfig::{ConfigFile, text};
use crate::spec::pakfile::Pakfile;

/// Where the image keeps the keys the Pakfile gives each user.
pub const AUTHORIZED_KEYS_DIR: &str = "/etc/ssh/authorized_keys.d";

pub fn render(pakfile: &Pakfile) -> Vec<ConfigFile> {
    pakfile
        .users
        .iter()
        .filter(|(_, u)| !u.ssh_authorized_keys.is_empty())
        .map(|(name, u)| {
            let mut body = format!("# Written by pak from [users.{name}] ssh-authorized-keys.\n");
            for key in &u.ssh_authorized_keys {
                body.push_str(key.trim());
                body.push('\n');
            }
            text(&format!("{AUTHORIZED_KEYS_DIR}/{name}"), body, 0o644)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_per_user_with_keys() {
        let p = Pakfile::parse(
            "[users.admin]\nssh-authorized-keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk admin@laptop\", \" ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAA x \"]\n[users.svc]\nlogin = false\n",
        )
        .unwrap();
        let files = render(&p);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "/etc/ssh/authorized_keys.d/admin");
        let crate::image::sysconfig::ConfigKind::File(b) = &files[0].kind else {
            panic!()
        };
        assert_eq!(
            String::from_utf8_lossy(b),
            "# Written by pak from [users.admin] ssh-authorized-keys.\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk admin@laptop\necdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAA x\n"
        );
        assert_eq!((files[0].mode, files[0].uid), (0o644, 0));
    }
}
