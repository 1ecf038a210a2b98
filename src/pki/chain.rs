//! Whether a certificate chains to the state dir's CA: takes the state dir,
//! a certificate's id (its path under the state dir, `nodes/<node>/…` for a
//! per-node one, or under `/etc/kubernetes/` on a node; a kubeconfig's id
//! for its client certificate) and its PEM bytes, and says whether the CA
//! that must have signed it, by its id, did: the issuer is that CA's
//! subject, the authority key id its subject key id, and the signature
//! verifies with its key. A CA certificate chains when it is the state's
//! CA certificate itself.

use std::path::Path;

use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::ParsedExtension;

use super::PkiError;
use super::spec::{Ca, ca_of};

/// The first certificate of PEM bytes, when there is one.
fn first_pem(bytes: &[u8]) -> Option<Pem> {
    Pem::iter_from_buffer(bytes)
        .next()?
        .ok()
        .filter(|p| p.label == "CERTIFICATE")
}

/// Whether the certificate `pem` of the id `id` chains to the state dir's
/// CA for that id. An error when the id names no certificate of the cluster
/// PKI or the CA certificate cannot be read from `state`; `false` when
/// `pem` holds no certificate or one that the CA did not sign.
pub(crate) fn chains_to_state_ca(state: &Path, id: &str, pem: &[u8]) -> Result<bool, PkiError> {
    let ca = ca_of(id).ok_or_else(|| PkiError::NotACertificate { id: id.to_string() })?;
    let ca_path = state.join(format!("{}.crt", ca.stem()));
    let ca_bytes = std::fs::read(&ca_path).map_err(|source| PkiError::Read {
        path: ca_path.clone(),
        source,
    })?;
    let ca_pem = first_pem(&ca_bytes).ok_or(PkiError::Unreadable {
        path: ca_path.clone(),
    })?;
    let ca_cert = ca_pem
        .parse_x509()
        .map_err(|_| PkiError::Unreadable { path: ca_path })?;
    let Some(leaf_pem) = first_pem(pem) else {
        return Ok(false);
    };
    if is_ca_id(id, ca) {
        return Ok(leaf_pem.contents == ca_pem.contents);
    }
    Ok(leaf_pem
        .parse_x509()
        .is_ok_and(|leaf| signed_by(&leaf, &ca_cert)))
}

/// Whether `id` is the certificate of the CA `ca` itself.
fn is_ca_id(id: &str, ca: Ca) -> bool {
    id.trim_start_matches("/etc/kubernetes/") == format!("{}.crt", ca.stem())
}

/// Whether `ca` issued `leaf`: names, key ids and the signature.
fn signed_by(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        });
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        });
    let keys_match = match (aki, ski) {
        (Some(a), Some(s)) => a == s,
        _ => true,
    };
    leaf.issuer().as_raw() == ca.subject().as_raw()
        && keys_match
        && leaf.verify_signature(Some(ca.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Context;
    use crate::manifest::KeyAlgorithm;
    use crate::pki::issue::{Signer, generate_key, issue_ca, issue_leaf};
    use crate::pki::spec::{LeafSpec, Usage};

    fn ctx() -> Context {
        Context {
            now: time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            source_date_epoch: 0,
            jobs: 1,
        }
    }

    /// A state dir with a Kubernetes CA, and a leaf signed by it and one
    /// signed by another CA of the same name.
    #[test]
    fn a_leaf_chains_to_the_ca_that_signed_it_only() {
        let ctx = ctx();
        let dir = tempfile::tempdir().unwrap();
        let leaf_spec = LeafSpec {
            stem: "pki/apiserver".into(),
            common_name: "kube-apiserver".into(),
            organizations: vec![],
            usage: Usage::Server,
            dns: vec!["localhost".into()],
            ips: vec![],
            ca: Ca::Kubernetes,
        };
        let mut leaves = Vec::new();
        let mut cas = Vec::new();
        for _ in 0..2 {
            let key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
            let ca = issue_ca(&ctx, Ca::Kubernetes, &key, 10).unwrap();
            let signer = Signer::new(&ca, key).unwrap();
            let leaf_key = generate_key(KeyAlgorithm::EcdsaP256).unwrap();
            leaves.push(issue_leaf(&ctx, &leaf_spec, &leaf_key, &signer, 10).unwrap());
            cas.push(ca);
        }
        std::fs::create_dir_all(dir.path().join("pki")).unwrap();
        std::fs::write(dir.path().join("pki/ca.crt"), &cas[0]).unwrap();
        let chains = |id: &str, pem: &str| chains_to_state_ca(dir.path(), id, pem.as_bytes());
        assert!(chains("pki/apiserver.crt", &leaves[0]).unwrap());
        assert!(chains("nodes/master01/pki/apiserver.crt", &leaves[0]).unwrap());
        assert!(!chains("pki/apiserver.crt", &leaves[1]).unwrap());
        assert!(chains("pki/ca.crt", &cas[0]).unwrap());
        assert!(!chains("/etc/kubernetes/pki/ca.crt", &cas[1]).unwrap());
        assert!(!chains("pki/apiserver.crt", "not a certificate").unwrap());
        // the etcd CA is missing from this state dir; a key is no certificate
        assert!(matches!(
            chains("pki/etcd/server.crt", &leaves[0]),
            Err(PkiError::Read { .. })
        ));
        assert!(matches!(
            chains("pki/ca.key", &leaves[0]),
            Err(PkiError::NotACertificate { .. })
        ));
    }
}
