//! Making the state dir complete (`pki init`, `pki renew`): takes the
//! [`State`] and a [`Renew`] mode, keeps every file that still serves, and
//! creates or re-issues the others; returns what it did to each file.

use std::collections::BTreeMap;

use super::files::{parse_vrrp_auth, vrrp_auth};
use super::issue::{
    CertInfo, Signer, generate_key, inspect, issue_ca, issue_leaf, key_matches, load_key,
};
use super::kubeconfig::{self, Kubeconfig, UserEntry};
use super::spec::{self, Ca, KubeconfigSpec, KubeconfigUser, LeafSpec, Usage};
use super::status::Verdict;
use super::{Action, Change, PkiError, Renew, State, modes};

/// A CA's certificate, as PEM and as read back.
type CaCert = (String, CertInfo);

impl State<'_> {
    /// `pki init` (`Renew::Needed`, `replace_cas` false) and `pki renew`,
    /// holding the state dir's lock throughout; loose modes are set back
    /// first.
    pub(crate) fn ensure(
        mut self,
        renew: Renew,
        replace_cas: bool,
    ) -> Result<Vec<Change>, PkiError> {
        let _lock = modes::lock(&self.dir)?;
        self.tighten_modes()?;
        let mut cas: BTreeMap<Ca, CaCert> = BTreeMap::new();
        for ca in Ca::ALL {
            let pem = self.ensure_ca(ca, replace_cas)?;
            let info = inspect(&pem).ok_or_else(|| PkiError::Unreadable {
                path: self.path(&format!("{}.crt", ca.stem())),
            })?;
            cas.insert(ca, (pem, info));
        }
        self.ensure_sa()?;
        let token = self.ensure_token()?.value();
        self.ensure_vrrp_password()?;
        self.ensure_encryption_config()?;
        // the leaves and kubeconfigs read no file another writes: staged
        // together, made durable at once, then put in place
        self.begin_batch();
        for leaf in self.spec.leaves.clone() {
            self.ensure_leaf(&leaf, &cas[&leaf.ca], renew)?;
        }
        for kc in self.spec.kubeconfigs.clone() {
            self.ensure_kubeconfig(&kc, &cas[&Ca::Kubernetes], &token, renew)?;
        }
        self.commit_batch()?;
        Ok(self.changes)
    }

    /// Sets every file and directory whose mode lets others in back to
    /// 0600 / 0700, noting each.
    fn tighten_modes(&mut self) -> Result<(), PkiError> {
        let loose = modes::loose(&self.dir).map_err(|source| PkiError::Read {
            path: self.dir.clone(),
            source,
        })?;
        modes::tighten(&self.dir, &loose)?;
        for l in loose {
            let why = format!("mode {:04o}, now {:04o}", l.mode, l.want);
            self.note(&l.rel, Action::Fixed(why));
        }
        Ok(())
    }

    /// A fresh key of the manifests' algorithm, for the file `rel`.
    fn new_key(&self, rel: &str) -> Result<rcgen::KeyPair, PkiError> {
        generate_key(self.alg()).map_err(|source| PkiError::Issue {
            path: self.path(rel),
            source,
        })
    }

    fn ensure_ca(&mut self, ca: Ca, replace: bool) -> Result<String, PkiError> {
        let crt = format!("{}.crt", ca.stem());
        let key = format!("{}.key", ca.stem());
        match (self.read_opt(&crt)?, self.read_opt(&key)?, replace) {
            (Some(pem), Some(key_pem), false) => {
                if !inspect(&pem).is_some_and(|info| key_matches(&key_pem, &info)) {
                    return Err(PkiError::CaKeyMismatch {
                        crt: self.path(&crt),
                        key: self.path(&key),
                    });
                }
                self.note(&crt, Action::Kept);
                Ok(pem)
            }
            (Some(_), None, false) => Err(PkiError::CaIncomplete {
                present: self.path(&crt),
                missing: self.path(&key),
            }),
            (None, Some(_), false) => Err(PkiError::CaIncomplete {
                present: self.path(&key),
                missing: self.path(&crt),
            }),
            (existing, _, _) => {
                let kp = self.new_key(&key)?;
                let pem = issue_ca(self.ctx, ca, &kp, self.m.cluster.pki.ca_validity_days)
                    .map_err(|source| PkiError::Issue {
                        path: self.path(&crt),
                        source,
                    })?;
                self.write_all(&[(&key, &kp.serialize_pem()), (&crt, &pem)])?;
                let action = if existing.is_some() {
                    Action::Reissued("CA replaced on request (--ca)".into())
                } else {
                    Action::Created
                };
                self.note(&crt, action);
                Ok(pem)
            }
        }
    }

    /// The service-account signing keypair: its own, never the CA's.
    fn ensure_sa(&mut self) -> Result<(), PkiError> {
        if self.read_opt(spec::SA_KEY)?.is_some() && self.read_opt(spec::SA_PUB)?.is_some() {
            self.note(spec::SA_KEY, Action::Kept);
            return Ok(());
        }
        let kp = self.new_key(spec::SA_KEY)?;
        self.write_all(&[
            (spec::SA_KEY, &kp.serialize_pem()),
            (spec::SA_PUB, &kp.public_key_pem()),
        ])?;
        self.note(spec::SA_KEY, Action::Created);
        Ok(())
    }

    /// keepalived's VRRP password (PASS auth takes at most 8 characters), as
    /// the `authentication` block that keepalived.conf includes.
    fn ensure_vrrp_password(&mut self) -> Result<(), PkiError> {
        if let Some(text) = self.read_opt(spec::KEEPALIVED_AUTH)?
            && parse_vrrp_auth(&text).is_some()
        {
            self.note(spec::KEEPALIVED_AUTH, Action::Kept);
            return Ok(());
        }
        let pass = self.ctx.random_token(8)?;
        self.write(spec::KEEPALIVED_AUTH, &vrrp_auth(&pass))?;
        self.note(spec::KEEPALIVED_AUTH, Action::Created);
        Ok(())
    }

    /// Why the existing leaf `pem` is re-issued under `renew`; `None` when
    /// it is kept.
    fn leaf_renewal(
        &self,
        s: &LeafSpec,
        (pem, key_pem): (&str, &str),
        ca: &CertInfo,
        renew: Renew,
    ) -> Option<String> {
        let Some(info) = inspect(pem) else {
            return Some("unreadable".to_string());
        };
        if !key_matches(key_pem, &info) {
            return Some("the key does not match the certificate".into());
        }
        let verdict = self.verdict(&info, &s.common_name, &s.organizations, &s.dns, &s.ips, ca);
        match (verdict, renew) {
            (Verdict::Ok, Renew::All) => Some("renewed (--all)".into()),
            (Verdict::Ok, Renew::Needed) => None,
            (v, _) => Some(v.reason()),
        }
    }

    fn ensure_leaf(&mut self, s: &LeafSpec, ca: &CaCert, renew: Renew) -> Result<(), PkiError> {
        let crt = format!("{}.crt", s.stem);
        let key = format!("{}.key", s.stem);
        let (ca_pem, ca_info) = ca;
        let existing = match (self.read_opt(&crt)?, self.read_opt(&key)?) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        };
        let reason = match &existing {
            None => None,
            Some((pem, key_pem)) => match self.leaf_renewal(s, (pem, key_pem), ca_info, renew) {
                None => {
                    self.note(&crt, Action::Kept);
                    return Ok(());
                }
                why => why,
            },
        };
        let kp = self.new_key(&key)?;
        let pem = self.issue_leaf(s, &kp, ca_pem, &crt)?;
        self.write_all(&[(&key, &kp.serialize_pem()), (&crt, &pem)])?;
        self.note(&crt, reason.map_or(Action::Created, Action::Reissued));
        Ok(())
    }

    /// The leaf `s` for the key `kp`, signed by its CA (`ca_pem`), for the
    /// file `rel`.
    fn issue_leaf(
        &self,
        s: &LeafSpec,
        kp: &rcgen::KeyPair,
        ca_pem: &str,
        rel: &str,
    ) -> Result<String, PkiError> {
        let signer = self.signer(s.ca, ca_pem)?;
        let days = self.m.cluster.pki.leaf_validity_days;
        issue_leaf(self.ctx, s, kp, &signer, days).map_err(|source| PkiError::Issue {
            path: self.path(rel),
            source,
        })
    }

    fn signer(&self, ca: Ca, ca_pem: &str) -> Result<Signer, PkiError> {
        let key_path = format!("{}.key", ca.stem());
        let key_pem = self
            .read_opt(&key_path)?
            .ok_or_else(|| PkiError::CaIncomplete {
                present: self.path(&format!("{}.crt", ca.stem())),
                missing: self.path(&key_path),
            })?;
        let issue = |source| PkiError::Issue {
            path: self.path(&key_path),
            source,
        };
        let key = load_key(&key_pem).map_err(issue)?;
        Signer::new(ca_pem, key).map_err(issue)
    }

    /// Why the existing kubeconfig `kc` is re-issued under `renew`; `None`
    /// when it is kept.
    fn kubeconfig_renewal(
        &self,
        kc: &Kubeconfig,
        s: &KubeconfigSpec,
        ca: &CaCert,
        token: &str,
        renew: Renew,
    ) -> Option<String> {
        let (ca_pem, ca_info) = ca;
        let verdict = self.kubeconfig_verdict(kc, s, ca_pem, ca_info, token);
        match (verdict, renew, &s.user) {
            (Verdict::Ok, Renew::All, KubeconfigUser::Certificate { .. }) => {
                Some("renewed (--all)".into())
            }
            (Verdict::Ok, _, _) => None,
            (v, _, _) => Some(v.reason()),
        }
    }

    fn ensure_kubeconfig(
        &mut self,
        s: &KubeconfigSpec,
        ca: &CaCert,
        token: &str,
        renew: Renew,
    ) -> Result<(), PkiError> {
        let existing = self.read_opt(&s.path)?;
        let reason = match existing.as_deref().map(Kubeconfig::parse) {
            None => None,
            Some(None) => Some("unreadable".to_string()),
            Some(Some(kc)) => match self.kubeconfig_renewal(&kc, s, ca, token, renew) {
                None => {
                    self.note(&s.path, Action::Kept);
                    return Ok(());
                }
                why => why,
            },
        };
        let user = match &s.user {
            KubeconfigUser::BootstrapToken => UserEntry {
                token: Some(token.to_string()),
                ..Default::default()
            },
            KubeconfigUser::Certificate {
                common_name,
                organizations,
            } => self.client_user(s, &ca.0, common_name, organizations)?,
        };
        let kc = Kubeconfig::new(&self.spec.cluster, &s.server, &ca.0, &s.user_name, user);
        self.write(&s.path, &kc.to_yaml())?;
        self.note(&s.path, reason.map_or(Action::Created, Action::Reissued));
        Ok(())
    }

    /// A kubeconfig user with a new client certificate (and its key)
    /// embedded, signed by the Kubernetes CA.
    fn client_user(
        &self,
        s: &KubeconfigSpec,
        ca_pem: &str,
        common_name: &str,
        organizations: &[String],
    ) -> Result<UserEntry, PkiError> {
        let kp = self.new_key(&s.path)?;
        let client = LeafSpec {
            stem: s.path.clone(),
            common_name: common_name.to_string(),
            organizations: organizations.to_vec(),
            usage: Usage::Client,
            dns: Vec::new(),
            ips: Vec::new(),
            ca: Ca::Kubernetes,
        };
        let cert = self.issue_leaf(&client, &kp, ca_pem, &s.path)?;
        Ok(UserEntry {
            client_certificate_data: Some(kubeconfig::b64(&cert)),
            client_key_data: Some(kubeconfig::b64(&kp.serialize_pem())),
            token: None,
        })
    }
}
