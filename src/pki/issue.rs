//! Keys and certificates: generating them with rcgen (aws-lc-rs), and reading
//! existing ones back with x509-parser to decide whether they still match.

use std::net::IpAddr;

use ::time::{Duration, OffsetDateTime};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize, SanType,
    SerialNumber,
};
use x509_parser::prelude::{GeneralName, ParsedExtension, X509Certificate, X509Name};

use super::spec::{Ca, LeafSpec, Usage};
use crate::context::Context;
use crate::manifest::KeyAlgorithm;

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("cannot generate a {algorithm:?} key")]
    KeyGen {
        algorithm: KeyAlgorithm,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot sign the certificate for {subject}")]
    Sign {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("`{name}` is not a valid DNS name for a certificate")]
    BadDnsName {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot date a certificate {days} days after {now}: X.509 ends at the year 9999")]
    Validity { days: u32, now: OffsetDateTime },
    #[error("cannot read the key")]
    Key(#[source] rcgen::Error),
    #[error("cannot read the CA certificate")]
    CaCert(#[source] rcgen::Error),
    #[error(transparent)]
    Random(#[from] crate::context::ContextError),
}

/// Certificates start a little in the past so that a node whose clock lags
/// behind the build machine's accepts them.
const BACKDATE: Duration = Duration::minutes(5);

pub(super) fn generate_key(alg: KeyAlgorithm) -> Result<KeyPair, IssueError> {
    let r = match alg {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyAlgorithm::Rsa4096 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096),
    };
    r.map_err(|source| IssueError::KeyGen {
        algorithm: alg,
        source,
    })
}

pub(super) fn load_key(pem: &str) -> Result<KeyPair, IssueError> {
    KeyPair::from_pem(pem).map_err(IssueError::Key)
}

fn serial(ctx: &Context) -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 16];
    ctx.random(&mut bytes)?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and never shorter than 16 bytes
    Ok(SerialNumber::from_slice(&bytes))
}

/// Sets notBefore and notAfter; a date past 9999 is an error, not a panic
/// (the manifests and the context bound both ends, so none should come).
fn validity(ctx: &Context, params: &mut CertificateParams, days: u32) -> Result<(), IssueError> {
    let now = ctx.now.replace_nanosecond(0).unwrap_or(ctx.now);
    let not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .filter(|t| t.year() <= 9999);
    match (now.checked_sub(BACKDATE), not_after) {
        (Some(not_before), Some(not_after)) => {
            params.not_before = not_before;
            params.not_after = not_after;
            Ok(())
        }
        _ => Err(IssueError::Validity { days, now }),
    }
}

fn name(cn: &str, orgs: &[String]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// A self-signed CA: critical basicConstraints CA:TRUE, keyCertSign, cRLSign,
/// digitalSignature; subject key id.
pub(super) fn issue_ca(
    ctx: &Context,
    ca: Ca,
    key: &KeyPair,
    days: u32,
) -> Result<String, IssueError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(ca.common_name(), &[]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    p.serial_number = Some(serial(ctx)?);
    validity(ctx, &mut p, days)?;
    let cert = p.self_signed(key).map_err(|source| IssueError::Sign {
        subject: ca.common_name().to_string(),
        source,
    })?;
    Ok(cert.pem())
}

/// The signing half of a CA, loaded from its PEM files.
pub(super) struct Signer {
    issuer: Issuer<'static, KeyPair>,
}

impl Signer {
    pub(super) fn new(cert_pem: &str, key: KeyPair) -> Result<Signer, IssueError> {
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(IssueError::CaCert)?;
        Ok(Signer { issuer })
    }
}

/// A leaf signed by `signer`: key usages and extended key usages of its
/// usage, SANs, subject and authority key ids, a random serial.
pub(super) fn issue_leaf(
    ctx: &Context,
    s: &LeafSpec,
    key: &KeyPair,
    signer: &Signer,
    days: u32,
) -> Result<String, IssueError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(&s.common_name, &s.organizations);
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = match s.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    for d in &s.dns {
        let n = d
            .clone()
            .try_into()
            .map_err(|source| IssueError::BadDnsName {
                name: d.clone(),
                source,
            })?;
        p.subject_alt_names.push(SanType::DnsName(n));
    }
    for ip in &s.ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    p.serial_number = Some(serial(ctx)?);
    validity(ctx, &mut p, days)?;
    let cert = p
        .signed_by(key, &signer.issuer)
        .map_err(|source| IssueError::Sign {
            subject: s.common_name.clone(),
            source,
        })?;
    Ok(cert.pem())
}

/// What matters of an existing certificate.
#[derive(Debug, Clone)]
pub(super) struct CertInfo {
    pub(super) common_name: String,
    pub(super) organizations: Vec<String>,
    pub(super) issuer_cn: String,
    pub(super) dns: Vec<String>,
    pub(super) ips: Vec<IpAddr>,
    pub(super) not_after: OffsetDateTime,
    pub(super) key_algorithm: Option<KeyAlgorithm>,
    pub(super) subject_key_id: Option<Vec<u8>>,
    pub(super) authority_key_id: Option<Vec<u8>>,
    /// The raw public key (the subjectPublicKey bits).
    pub(super) public_key: Vec<u8>,
}

impl CertInfo {
    pub(super) fn subject(&self) -> String {
        let mut s = format!("CN={}", self.common_name);
        for o in &self.organizations {
            s.push_str(&format!(", O={o}"));
        }
        s
    }

    pub(super) fn sans(&self) -> Vec<String> {
        self.dns
            .iter()
            .cloned()
            .chain(self.ips.iter().map(|i| i.to_string()))
            .collect()
    }
}

/// Reads the first certificate of a PEM file. `None` if it is not one.
pub(super) fn inspect(pem_text: &str) -> Option<CertInfo> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let cn = |n: &X509Name| {
        n.iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let organizations = cert
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    let (dns, ips) = sans(&cert)?;
    let (subject_key_id, authority_key_id) = key_ids(&cert);
    Some(CertInfo {
        common_name: cn(cert.subject()),
        organizations,
        issuer_cn: cn(cert.issuer()),
        dns,
        ips,
        not_after: cert.validity().not_after.to_datetime(),
        key_algorithm: key_algorithm(&cert),
        subject_key_id,
        authority_key_id,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
    })
}

/// Whether the PEM private key `key_pem` is the key of the certificate `info`.
pub(super) fn key_matches(key_pem: &str, info: &CertInfo) -> bool {
    load_key(key_pem).is_ok_and(|kp| kp.public_key_raw() == info.public_key.as_slice())
}

/// The DNS names and IP addresses of a certificate's SANs; `None` when an
/// address cannot be read.
fn sans(cert: &X509Certificate<'_>) -> Option<(Vec<String>, Vec<IpAddr>)> {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some((dns, ips))
}

/// The algorithm of a certificate's key, when it is one imgbuild makes.
fn key_algorithm(cert: &X509Certificate<'_>) -> Option<KeyAlgorithm> {
    match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(p)) if p.key_size() == 256 => {
            Some(KeyAlgorithm::EcdsaP256)
        }
        Ok(x509_parser::public_key::PublicKey::RSA(r)) => match r.key_size() {
            2048 => Some(KeyAlgorithm::Rsa2048),
            4096 => Some(KeyAlgorithm::Rsa4096),
            _ => None,
        },
        _ => None,
    }
}

/// A certificate's subject and authority key identifiers.
fn key_ids(cert: &X509Certificate<'_>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => subject_key_id = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                authority_key_id = a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => {}
        }
    }
    (subject_key_id, authority_key_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validity_past_the_year_9999_is_an_error_not_a_panic() {
        let mut ctx = Context::from_env(Some(1)).unwrap();
        ctx.now = OffsetDateTime::new_utc(
            ::time::Date::from_calendar_date(9000, ::time::Month::January, 1).unwrap(),
            ::time::Time::MIDNIGHT,
        );
        let mut p = CertificateParams::default();
        assert!(validity(&ctx, &mut p, 36_500).is_ok());
        assert!(matches!(
            validity(&ctx, &mut p, 2_920_000),
            Err(IssueError::Validity {
                days: 2_920_000,
                ..
            })
        ));
    }
}
