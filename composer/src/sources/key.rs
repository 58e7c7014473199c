//! Signing keys for repositories (ed25519).
//!
//! Text files, one comment line naming the key, then base64:
//!
//! ```text
//! pak public key 3f2a9c1e0b7d4e55
//! <base64 of the 32-byte public key>
//! ```
//!
//! The key id is the first 8 bytes of the public key's sha256, in hex.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

const PUB_HEADER: &str = "pak public key ";
const SECRET_HEADER: &str = "pak secret key ";
const SIG_HEADER: &str = "pak signature ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

pub struct SecretKey {
    key: SigningKey,
}

pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

impl PublicKey {
    pub fn id(&self) -> String {
        key_id(&self.key)
    }

    pub fn to_text(&self) -> String {
        format!(
            "{PUB_HEADER}{}\n{}\n",
            self.id(),
            B64.encode(self.key.as_bytes())
        )
    }

    pub fn parse(text: &str) -> Result<PublicKey> {
        let body = body_after(text, PUB_HEADER)
            .context("not a pak public key (it starts with \"pak public key\")")?;
        let bytes: [u8; 32] = B64
            .decode(body.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("the public key's base64 body is not 32 bytes")?;
        let key = VerifyingKey::from_bytes(&bytes).context("not a valid ed25519 public key")?;
        Ok(PublicKey { key })
    }

    /// The Pakfile's `key` field: a path to a `.pub` file (relative to the
    /// Pakfile's directory), or the key text itself.
    pub fn from_pakfile_field(field: &str, base: &Path) -> Result<PublicKey> {
        if field.trim_start().starts_with(PUB_HEADER) {
            return PublicKey::parse(field);
        }
        let path = base.join(field);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the repository key {}", path.display()))?;
        PublicKey::parse(&text)
            .with_context(|| format!("{} is not a pak public key", path.display()))
    }

    /// Checks a detached signature (the text of an `index.sig`).
    pub fn verify(&self, data: &[u8], sig_text: &str) -> Result<()> {
        let (id, body) = sig_text
            .trim()
            .strip_prefix(SIG_HEADER)
            .and_then(|r| r.split_once('\n'))
            .context("the signature file is malformed")?;
        if id.trim() != self.id() {
            bail!(
                "it is signed by key {}, not by the trusted key {}",
                id.trim(),
                self.id()
            );
        }
        let bytes: [u8; 64] = B64
            .decode(body.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("the signature's body is not 64 bytes of base64")?;
        self.key
            .verify(data, &Signature::from_bytes(&bytes))
            .map_err(|_| anyhow::anyhow!("the signature does not match the content: it was tampered with or signed with another key"))
    }
}

impl SecretKey {
    pub fn generate() -> Result<SecretKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| anyhow::anyhow!("no randomness for a new key: {e}"))?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
        }
    }

    pub fn to_text(&self) -> String {
        format!(
            "{SECRET_HEADER}{}\n{}\n",
            key_id(&self.key.verifying_key()),
            B64.encode(self.key.to_bytes())
        )
    }

    pub fn read(path: &Path) -> Result<SecretKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the secret key {}", path.display()))?;
        let body = body_after(&text, SECRET_HEADER).with_context(|| {
            format!(
                "{} is not a pak secret key (make one with `pak key generate`)",
                path.display()
            )
        })?;
        let seed: [u8; 32] = B64
            .decode(body.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| {
                format!("{}: the key body is not 32 bytes of base64", path.display())
            })?;
        Ok(SecretKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    pub fn sign(&self, data: &[u8]) -> String {
        let sig = self.key.sign(data);
        format!(
            "{SIG_HEADER}{}\n{}\n",
            key_id(&self.key.verifying_key()),
            B64.encode(sig.to_bytes())
        )
    }
}

fn body_after<'a>(text: &'a str, header: &str) -> Option<&'a str> {
    let (first, rest) = text.trim_start().split_once('\n')?;
    first.starts_with(header).then_some(rest)
}

/// `pak key generate NAME`: writes NAME.key (mode 0600) and NAME.pub;
/// refuses to overwrite either.
pub fn generate_files(name: &Path) -> Result<(PathBuf, PathBuf)> {
    let secret_path = name.with_extension("key");
    let public_path = name.with_extension("pub");
    for p in [&secret_path, &public_path] {
        if p.exists() {
            bail!(
                "{} already exists; pak does not overwrite keys",
                p.display()
            );
        }
    }
    let key = SecretKey::generate()?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .with_context(|| format!("cannot write {}", secret_path.display()))?;
    f.write_all(key.to_text().as_bytes())?;
    f.sync_all()?;
    crate::util::fsutil::write_atomic(&public_path, key.public().to_text().as_bytes())?;
    Ok((secret_path, public_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let k = SecretKey::generate().unwrap();
        let pubkey = PublicKey::parse(&k.public().to_text()).unwrap();
        let sig = k.sign(b"index");
        pubkey.verify(b"index", &sig).unwrap();
        assert!(
            pubkey
                .verify(b"indeX", &sig)
                .unwrap_err()
                .to_string()
                .contains("tampered")
        );
        let other = SecretKey::generate().unwrap();
        assert!(
            pubkey
                .verify(b"index", &other.sign(b"index"))
                .unwrap_err()
                .to_string()
                .contains("not by the trusted key")
        );
    }

    #[test]
    fn files() {
        let d = tempfile::tempdir().unwrap();
        let (s, p) = generate_files(&d.path().join("local")).unwrap();
        assert!(p.ends_with("local.pub"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&s).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sk = SecretKey::read(&s).unwrap();
        let pk = PublicKey::from_pakfile_field("local.pub", d.path()).unwrap();
        assert_eq!(sk.public(), pk);
        assert_eq!(
            PublicKey::from_pakfile_field(&pk.to_text(), Path::new("/")).unwrap(),
            pk
        );
        assert!(
            generate_files(&d.path().join("local")).is_err(),
            "no overwrite"
        );
    }
}
