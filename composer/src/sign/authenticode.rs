//! Authenticode signatures, the form UEFI Secure Boot checks on every
//! image it starts: a PKCS#7 SignedData whose content is an
//! SpcIndirectDataContent holding the image's digest, signed with
//! RSA PKCS#1 v1.5 / SHA-256, the signer's certificate embedded.
//!
//! The ASN.1 types are the `cms` crate's; the digest and certificate
//! table are `image::pe`'s. Reproducible by construction: RSA PKCS#1
//! v1.5 signatures are deterministic and no signing time is included,
//! so the same image and key give the same bytes.

use anyhow::{Context, Result};
use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{Any, ObjectIdentifier, OctetString, SetOfVec};
use der::{Decode, Encode};
use rsa::pkcs1v15::SigningKey;
use rsa::sha2::{Digest, Sha256};
use rsa::signature::Signer as _;
use x509_cert::attr::Attribute;
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::key::SecureBootKey;
use crate::image::uki::pe::Pe;

const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// SPC_INDIRECT_DATA_OBJID.
const SPC_INDIRECT_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.4");
const SPC_PE_IMAGE_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.15");
/// SPC_SP_OPUS_INFO_OBJID: program name and URL, left empty as sbsign
/// and signtool leave them; Windows tools expect it present.
const SPC_SP_OPUS_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.12");

/// The DER of an SpcIndirectDataContent for a PE image's SHA-256
/// digest, as sbsign and signtool write it (the firmware reads the
/// digest from the content's last 32 bytes):
///
/// ```text
/// SEQUENCE {                                   -- SpcIndirectDataContent
///   SEQUENCE {                                 -- SpcAttributeTypeAndOptionalValue
///     OID 1.3.6.1.4.1.311.2.1.15               -- SPC_PE_IMAGE_DATAOBJ
///     SEQUENCE {                               -- SpcPeImageData
///       BIT STRING ''                          -- flags
///       [0] { [2] { [0] "<<<Obsolete>>>" } }   -- file: SpcLink, BMPString
///   } }
///   SEQUENCE {                                 -- DigestInfo
///     SEQUENCE { OID sha256, NULL }
///     OCTET STRING (32 bytes) } }
/// ```
fn spc_indirect_data(digest: &[u8; 32]) -> Result<Vec<u8>> {
    let sha256 = AlgorithmIdentifierOwned {
        oid: ID_SHA256,
        parameters: Some(Any::null()),
    };
    let obsolete: Vec<u8> = "<<<Obsolete>>>"
        .encode_utf16()
        .flat_map(|c| c.to_be_bytes())
        .collect();
    let bmp = Any::new(
        der::Tag::ContextSpecific {
            constructed: false,
            number: der::TagNumber(0),
        },
        obsolete,
    )?;
    let link_file = Any::new(
        der::Tag::ContextSpecific {
            constructed: true,
            number: der::TagNumber(2),
        },
        bmp.to_der()?,
    )?;
    let file = Any::new(
        der::Tag::ContextSpecific {
            constructed: true,
            number: der::TagNumber(0),
        },
        link_file.to_der()?,
    )?;
    let flags = der::asn1::BitString::from_bytes(&[])?;
    let pe_image_data = seq(&[flags.to_der()?, file.to_der()?])?;
    let attr = seq(&[SPC_PE_IMAGE_DATA.to_der()?, pe_image_data])?;
    let digest_info = seq(&[
        sha256.to_der()?,
        OctetString::new(digest.to_vec())?.to_der()?,
    ])?;
    Ok(seq(&[attr, digest_info])?)
}

/// A SEQUENCE of already encoded elements.
fn seq(parts: &[Vec<u8>]) -> der::Result<Vec<u8>> {
    Any::new(der::Tag::Sequence, parts.concat())?.to_der()
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute> {
    let mut values = SetOfVec::new();
    values.insert(value)?;
    Ok(Attribute { oid, values })
}

/// The PKCS#7 SignedData (a DER ContentInfo) for an image digest.
pub fn signed_data(digest: &[u8; 32], key: &SecureBootKey) -> Result<Vec<u8>> {
    let content = spc_indirect_data(digest)?;
    let content_any = Any::from_der(&content)?;
    // PKCS#7 (unlike CMS) digests the content's value without its own
    // tag and length; Authenticode follows PKCS#7.
    let content_digest = Sha256::digest(content_any.value());
    let sha256 = AlgorithmIdentifierOwned {
        oid: ID_SHA256,
        parameters: None,
    };
    let mut signed_attrs = SetOfVec::new();
    signed_attrs.insert(attribute(
        ID_CONTENT_TYPE,
        Any::encode_from(&SPC_INDIRECT_DATA)?,
    )?)?;
    signed_attrs.insert(attribute(
        ID_MESSAGE_DIGEST,
        Any::encode_from(&OctetString::new(content_digest.to_vec())?)?,
    )?)?;
    signed_attrs.insert(attribute(SPC_SP_OPUS_INFO, Any::from_der(&seq(&[])?)?)?)?;
    // What is signed is the attributes' DER as a SET (RFC 5652 5.4).
    let to_sign = signed_attrs.to_der()?;
    let signer = SigningKey::<Sha256>::new(key.private_key().clone());
    let signature = signer.try_sign(&to_sign).context("RSA signing failed")?;
    let tbs = key.certificate().tbs_certificate();
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer().clone(),
            serial_number: tbs.serial_number().clone(),
        }),
        digest_alg: sha256.clone(),
        signed_attrs: Some(signed_attrs),
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        signature: OctetString::new(Box::<[u8]>::from(signature).to_vec())?,
        unsigned_attrs: None,
    };
    let mut digest_algorithms = SetOfVec::new();
    digest_algorithms.insert(sha256)?;
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: SPC_INDIRECT_DATA,
            econtent: Some(content_any),
        },
        certificates: Some(CertificateSet::try_from(vec![
            cms::cert::CertificateChoices::Certificate(key.certificate().clone()),
        ])?),
        crls: None,
        signer_infos: SignerInfos::try_from(vec![signer_info])?,
    };
    let info = ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed)?,
    };
    Ok(info.to_der()?)
}

/// Signs a PE image: its Authenticode digest, signed, appended as the
/// certificate table. The input must be unsigned.
pub fn sign_pe(image: &[u8], key: &SecureBootKey) -> Result<Vec<u8>> {
    let mut pe = Pe::parse(image.to_vec())?;
    pe.pad_for_signature()?;
    let digest = pe.authenticode_sha256()?;
    let pkcs7 = signed_data(&digest, key)?;
    pe.append_signature(&pkcs7)?;
    Ok(pe.into_bytes())
}

/// Who signed an image: a signer's certificate, as embedded in the image's
/// Authenticode signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub subject: String,
    /// SHA-256 of the certificate's DER, as [`SecureBootKey::fingerprint`].
    pub fingerprint: String,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (certificate SHA-256 {})",
            self.subject, self.fingerprint
        )
    }
}

/// The signers of a PE image: for each signature, the embedded certificate
/// its signer info names. Empty for an unsigned image. The signatures are
/// not checked here (the firmware does that against its `db`); this says
/// whose they claim to be, so a switch can refuse an image the disk's
/// loader's key did not sign before the firmware refuses to start it.
pub fn signers(image: &[u8]) -> Result<Vec<Signer>> {
    let pe = Pe::parse(image.to_vec())?;
    let mut out = Vec::new();
    for blob in pe.signatures() {
        let info = ContentInfo::from_der(blob).context("a signature is not PKCS#7 DER")?;
        if info.content_type != ID_SIGNED_DATA {
            anyhow::bail!("a signature is not PKCS#7 SignedData");
        }
        let signed: SignedData = info
            .content
            .decode_as()
            .context("a signature's SignedData is malformed")?;
        let certs: Vec<&x509_cert::Certificate> = signed
            .certificates
            .iter()
            .flat_map(|set| set.0.iter())
            .filter_map(|c| match c {
                cms::cert::CertificateChoices::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        for si in signed.signer_infos.0.iter() {
            let SignerIdentifier::IssuerAndSerialNumber(id) = &si.sid else {
                continue;
            };
            let Some(cert) = certs.iter().find(|c| {
                c.tbs_certificate().issuer() == &id.issuer
                    && c.tbs_certificate().serial_number() == &id.serial_number
            }) else {
                continue;
            };
            out.push(Signer {
                subject: cert.tbs_certificate().subject().to_string(),
                fingerprint: hex::encode(Sha256::digest(cert.to_der()?)),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signers_name_the_key_that_signed() {
        let image = crate::image::uki::pe::tests::tiny_pe();
        assert!(signers(&image).unwrap().is_empty());
        let key = crate::sign::key::generate("pak test db").unwrap();
        let signed = sign_pe(&image, &key).unwrap();
        assert_eq!(
            signers(&signed).unwrap(),
            vec![Signer {
                subject: key.subject(),
                fingerprint: key.fingerprint(),
            }]
        );
    }
}
