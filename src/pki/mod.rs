//! Stage 4, `pki`: takes the validated manifests and the state dir, and makes
//! every secret the plans need present there: the three CAs, the leaf
//! certificates (per node where they name a node), the kubeconfigs, the
//! service-account keypair and the bootstrap token. An existing CA is never
//! replaced (unless `renew --ca`); an existing leaf is kept while it still
//! matches the manifests and is outside its renewal window. The state dir is
//! 0700 and every file in it 0600, written atomically.

mod issue;
pub mod kubeconfig;
pub mod spec;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::{Duration, OffsetDateTime};

pub use issue::{CertInfo, IssueError, inspect};
use issue::{Signer, generate_key, issue_ca, issue_leaf, load_key};
use kubeconfig::{Kubeconfig, UserEntry, unb64};
pub use spec::{Ca, KubeconfigSpec, KubeconfigUser, LeafSpec, PkiSpec, Usage, state_path};

use crate::context::Context;
use crate::fsutil;
use crate::manifest::{KeyAlgorithm, Manifests};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot issue")]
    Issue {
        path: PathBuf,
        #[source]
        source: IssueError,
    },
    #[error(
        "{present} exists but {missing} does not: a CA is never replaced silently; restore {missing}, or run `imgbuild pki renew --ca` to replace the CA (every node must then be rebuilt)"
    )]
    CaIncomplete { present: PathBuf, missing: PathBuf },
    #[error("{path} is not a PEM certificate")]
    Unreadable { path: PathBuf },
    #[error("{path} has no bootstrap token line (`<6>.<16>,system:bootstrapper,…`)")]
    BadTokenFile { path: PathBuf },
    #[error(transparent)]
    Random(#[from] crate::context::ContextError),
}

/// Mode of every file in the state dir, and of the state dir itself.
pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// A leaf is re-issued in its last third of validity, at most 30 days before expiry.
pub fn renewal_window(leaf_days: u32) -> Duration {
    Duration::days(i64::from((leaf_days / 3).min(30)))
}

/// What `init`/`renew` did to one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", content = "reason", rename_all = "lowercase")]
pub enum Action {
    Created,
    Kept,
    Reissued(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub path: String,
    #[serde(flatten)]
    pub action: Action,
}

/// How `renew` chooses leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renew {
    /// `init`: only what is missing, mismatched or expiring.
    Needed,
    /// `renew --all`: every leaf.
    All,
}

/// The state dir of one cluster.
pub struct State<'a> {
    ctx: &'a Context,
    m: &'a Manifests,
    dir: PathBuf,
    spec: PkiSpec,
    changes: Vec<Change>,
}

impl<'a> State<'a> {
    pub fn new(ctx: &'a Context, m: &'a Manifests, dir: &Path) -> State<'a> {
        State {
            ctx,
            m,
            dir: dir.to_path_buf(),
            spec: spec::spec(m),
            changes: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn read_opt(&self, rel: &str) -> Result<Option<String>, PkiError> {
        let path = self.path(rel);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PkiError::Read { path, source }),
        }
    }

    /// Reads a file of the state dir that the plan needs.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, PkiError> {
        let path = self.path(rel);
        std::fs::read(&path).map_err(|source| PkiError::Read { path, source })
    }

    fn write(&self, rel: &str, text: &str) -> Result<(), PkiError> {
        let path = self.path(rel);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        fsutil::create_dir_all_mode(&parent, DIR_MODE).map_err(|source| PkiError::Write {
            path: parent.clone(),
            source,
        })?;
        fsutil::write_atomic(&path, text.as_bytes(), FILE_MODE)
            .map_err(|source| PkiError::Write { path, source })
    }

    fn note(&mut self, path: &str, action: Action) {
        self.changes.push(Change {
            path: path.to_string(),
            action,
        });
    }

    fn alg(&self) -> KeyAlgorithm {
        self.m.cluster.pki.key_algorithm
    }

    /// A fresh key of the manifests' algorithm, for the file `rel`.
    fn new_key(&self, rel: &str) -> Result<rcgen::KeyPair, PkiError> {
        generate_key(self.alg()).map_err(|source| PkiError::Issue {
            path: self.path(rel),
            source,
        })
    }

    /// `pki init` (`Renew::Needed`, `replace_cas` false) and `pki renew`.
    pub fn ensure(mut self, renew: Renew, replace_cas: bool) -> Result<Vec<Change>, PkiError> {
        fsutil::create_dir_all_mode(&self.dir, DIR_MODE).map_err(|source| PkiError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let mut cas: BTreeMap<Ca, (String, CertInfo)> = BTreeMap::new();
        for ca in Ca::ALL {
            let pem = self.ensure_ca(ca, replace_cas)?;
            let info = inspect(&pem).ok_or_else(|| PkiError::Unreadable {
                path: self.path(&format!("{}.crt", ca.stem())),
            })?;
            cas.insert(ca, (pem, info));
        }
        self.ensure_sa()?;
        let token = self.ensure_token()?;
        self.ensure_vrrp_password()?;
        for leaf in self.spec.leaves.clone() {
            self.ensure_leaf(&leaf, &cas, renew)?;
        }
        for kc in self.spec.kubeconfigs.clone() {
            self.ensure_kubeconfig(&kc, &cas[&Ca::Kubernetes], &token, renew)?;
        }
        Ok(self.changes)
    }

    fn ensure_ca(&mut self, ca: Ca, replace: bool) -> Result<String, PkiError> {
        let crt = format!("{}.crt", ca.stem());
        let key = format!("{}.key", ca.stem());
        match (self.read_opt(&crt)?, self.read_opt(&key)?, replace) {
            (Some(pem), Some(_), false) => {
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
                self.write(&key, &kp.serialize_pem())?;
                self.write(&crt, &pem)?;
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
        self.write(spec::SA_KEY, &kp.serialize_pem())?;
        self.write(spec::SA_PUB, &kp.public_key_pem())?;
        self.note(spec::SA_KEY, Action::Created);
        Ok(())
    }

    /// The bootstrap token: `token.csv` (the guides' static token file) and a
    /// bootstrap-token Secret for the addons. Returns the token.
    fn ensure_token(&mut self) -> Result<String, PkiError> {
        let token = match self.read_opt(spec::TOKEN_CSV)? {
            Some(text) => {
                let token = parse_token_csv(&text).ok_or_else(|| PkiError::BadTokenFile {
                    path: self.path(spec::TOKEN_CSV),
                })?;
                self.note(spec::TOKEN_CSV, Action::Kept);
                token
            }
            None => {
                let token = format!(
                    "{}.{}",
                    self.ctx.random_token(6)?,
                    self.ctx.random_token(16)?
                );
                self.write(spec::TOKEN_CSV, &token_csv(&token))?;
                self.note(spec::TOKEN_CSV, Action::Created);
                token
            }
        };
        let secret = bootstrap_token_secret(&token);
        if self.read_opt(spec::TOKEN_SECRET)?.as_deref() != Some(secret.as_str()) {
            self.write(spec::TOKEN_SECRET, &secret)?;
            self.note(spec::TOKEN_SECRET, Action::Created);
        }
        Ok(token)
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

    /// Why an existing certificate no longer serves, if it does not.
    fn verdict(
        &self,
        info: &CertInfo,
        cn: &str,
        orgs: &[String],
        dns: &[String],
        ips: &[std::net::IpAddr],
        ca: &CertInfo,
    ) -> Verdict {
        let mut want_orgs = orgs.to_vec();
        want_orgs.sort();
        let mut have_orgs = info.organizations.clone();
        have_orgs.sort();
        if info.authority_key_id.is_none() || info.authority_key_id != ca.subject_key_id {
            return Verdict::Mismatch(format!("not issued by the current {}", ca.common_name));
        }
        if info.common_name != cn || have_orgs != want_orgs {
            return Verdict::Mismatch("subject changed".into());
        }
        let mut want: Vec<String> = dns
            .iter()
            .cloned()
            .chain(ips.iter().map(|i| i.to_string()))
            .collect();
        let mut have = info.sans();
        want.sort();
        have.sort();
        if want != have {
            return Verdict::Mismatch(format!("SANs changed (now {})", want.join(", ")));
        }
        if info.key_algorithm != Some(self.alg()) {
            return Verdict::Mismatch(format!("key algorithm is not {:?}", self.alg()));
        }
        let left = info.not_after - self.ctx.now;
        if left < renewal_window(self.m.cluster.pki.leaf_validity_days) {
            return Verdict::Expiring(left.whole_days());
        }
        Verdict::Ok
    }

    fn ensure_leaf(
        &mut self,
        s: &LeafSpec,
        cas: &BTreeMap<Ca, (String, CertInfo)>,
        renew: Renew,
    ) -> Result<(), PkiError> {
        let crt = format!("{}.crt", s.stem);
        let key = format!("{}.key", s.stem);
        let (ca_pem, ca_info) = &cas[&s.ca];
        let existing = match (self.read_opt(&crt)?, self.read_opt(&key)?) {
            (Some(c), Some(_)) => Some(c),
            _ => None,
        };
        let reason = match &existing {
            None => None,
            Some(pem) => match inspect(pem) {
                None => Some("unreadable".to_string()),
                Some(info) => match (
                    self.verdict(
                        &info,
                        &s.common_name,
                        &s.organizations,
                        &s.dns,
                        &s.ips,
                        ca_info,
                    ),
                    renew,
                ) {
                    (Verdict::Ok, Renew::All) => Some("renewed (--all)".into()),
                    (Verdict::Ok, Renew::Needed) => {
                        self.note(&crt, Action::Kept);
                        return Ok(());
                    }
                    (v, _) => Some(v.reason()),
                },
            },
        };
        let signer = self.signer(s.ca, ca_pem)?;
        let kp = self.new_key(&key)?;
        let pem = issue_leaf(
            self.ctx,
            s,
            &kp,
            &signer,
            self.m.cluster.pki.leaf_validity_days,
        )
        .map_err(|source| PkiError::Issue {
            path: self.path(&crt),
            source,
        })?;
        self.write(&key, &kp.serialize_pem())?;
        self.write(&crt, &pem)?;
        self.note(&crt, reason.map_or(Action::Created, Action::Reissued));
        Ok(())
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

    fn ensure_kubeconfig(
        &mut self,
        s: &KubeconfigSpec,
        ca: &(String, CertInfo),
        token: &str,
        renew: Renew,
    ) -> Result<(), PkiError> {
        let (ca_pem, ca_info) = ca;
        let existing = self.read_opt(&s.path)?;
        let reason = match existing.as_deref().map(Kubeconfig::parse) {
            None => None,
            Some(None) => Some("unreadable".to_string()),
            Some(Some(kc)) => {
                let v = kubeconfig_verdict(self, &kc, s, ca_pem, ca_info, token);
                match (v, renew, &s.user) {
                    (Verdict::Ok, Renew::All, KubeconfigUser::Certificate { .. }) => {
                        Some("renewed (--all)".into())
                    }
                    (Verdict::Ok, _, _) => {
                        self.note(&s.path, Action::Kept);
                        return Ok(());
                    }
                    (v, _, _) => Some(v.reason()),
                }
            }
        };
        let user = match &s.user {
            KubeconfigUser::BootstrapToken => UserEntry {
                token: Some(token.to_string()),
                ..Default::default()
            },
            KubeconfigUser::Certificate {
                common_name,
                organizations,
            } => {
                let signer = self.signer(Ca::Kubernetes, ca_pem)?;
                let kp = self.new_key(&s.path)?;
                let client = LeafSpec {
                    stem: s.path.clone(),
                    common_name: common_name.clone(),
                    organizations: organizations.clone(),
                    usage: Usage::Client,
                    dns: Vec::new(),
                    ips: Vec::new(),
                    ca: Ca::Kubernetes,
                };
                let cert = issue_leaf(
                    self.ctx,
                    &client,
                    &kp,
                    &signer,
                    self.m.cluster.pki.leaf_validity_days,
                )
                .map_err(|source| PkiError::Issue {
                    path: self.path(&s.path),
                    source,
                })?;
                UserEntry {
                    client_certificate_data: Some(kubeconfig::b64(&cert)),
                    client_key_data: Some(kubeconfig::b64(&kp.serialize_pem())),
                    token: None,
                }
            }
        };
        let kc = Kubeconfig::new(&self.spec.cluster, &s.server, ca_pem, &s.user_name, user);
        self.write(&s.path, &kc.to_yaml())?;
        self.note(&s.path, reason.map_or(Action::Created, Action::Reissued));
        Ok(())
    }

    /// `pki status`: every CA, leaf and kubeconfig with its verdict.
    pub fn status(&self) -> Result<Vec<StatusRow>, PkiError> {
        let mut rows = Vec::new();
        let mut cas: BTreeMap<Ca, CertInfo> = BTreeMap::new();
        for ca in Ca::ALL {
            let crt = format!("{}.crt", ca.stem());
            let info = self.read_opt(&crt)?.and_then(|p| inspect(&p));
            let verdict = match &info {
                None => Verdict::Missing,
                Some(i) => {
                    let left = i.not_after - self.ctx.now;
                    if left < Duration::days(365) {
                        Verdict::Expiring(left.whole_days())
                    } else {
                        Verdict::Ok
                    }
                }
            };
            rows.push(StatusRow::new(self.ctx.now, crt, info.as_ref(), verdict));
            if let Some(i) = info {
                cas.insert(ca, i);
            }
        }
        for s in &self.spec.leaves {
            let crt = format!("{}.crt", s.stem);
            let info = self.read_opt(&crt)?.and_then(|p| inspect(&p));
            let verdict = match (&info, cas.get(&s.ca)) {
                (Some(i), Some(ca)) => {
                    self.verdict(i, &s.common_name, &s.organizations, &s.dns, &s.ips, ca)
                }
                _ => Verdict::Missing,
            };
            rows.push(StatusRow::new(self.ctx.now, crt, info.as_ref(), verdict));
        }
        let token = self
            .read_opt(spec::TOKEN_CSV)?
            .and_then(|t| parse_token_csv(&t))
            .unwrap_or_default();
        let ca_pem = self.read_opt("pki/ca.crt")?.unwrap_or_default();
        for s in &self.spec.kubeconfigs {
            let kc = self.read_opt(&s.path)?.and_then(|t| Kubeconfig::parse(&t));
            let (info, verdict) = match (&kc, cas.get(&Ca::Kubernetes)) {
                (Some(kc), Some(ca)) => (
                    kc.user()
                        .and_then(|u| u.client_certificate_data.as_deref())
                        .and_then(unb64)
                        .and_then(|p| inspect(&p)),
                    kubeconfig_verdict(self, kc, s, &ca_pem, ca, &token),
                ),
                _ => (None, Verdict::Missing),
            };
            rows.push(StatusRow::new(
                self.ctx.now,
                s.path.clone(),
                info.as_ref(),
                verdict,
            ));
        }
        Ok(rows)
    }
}

fn kubeconfig_verdict(
    st: &State<'_>,
    kc: &Kubeconfig,
    s: &KubeconfigSpec,
    ca_pem: &str,
    ca_info: &CertInfo,
    token: &str,
) -> Verdict {
    if kc.server() != Some(s.server.as_str()) {
        return Verdict::Mismatch(format!("server is not {}", s.server));
    }
    if kc.ca_pem().as_deref() != Some(ca_pem) {
        return Verdict::Mismatch("embeds another CA certificate".into());
    }
    match &s.user {
        KubeconfigUser::BootstrapToken => {
            if kc.user().and_then(|u| u.token.as_deref()) == Some(token) {
                Verdict::Ok
            } else {
                Verdict::Mismatch("token differs from token.csv".into())
            }
        }
        KubeconfigUser::Certificate {
            common_name,
            organizations,
        } => match kc
            .user()
            .and_then(|u| u.client_certificate_data.as_deref())
            .and_then(unb64)
            .and_then(|p| inspect(&p))
        {
            Some(info) => st.verdict(&info, common_name, organizations, &[], &[], ca_info),
            None => Verdict::Mismatch("no client certificate".into()),
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Expiring(i64),
    Mismatch(String),
    Missing,
}

impl Verdict {
    fn reason(self) -> String {
        match self {
            Verdict::Ok => "ok".into(),
            Verdict::Expiring(d) => format!("expires in {d} days"),
            Verdict::Mismatch(r) => r,
            Verdict::Missing => "missing".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub file: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub issuer: String,
    pub not_after: String,
    pub days_left: i64,
    /// OK, EXPIRING, MISMATCH or MISSING
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl StatusRow {
    fn new(now: OffsetDateTime, file: String, info: Option<&CertInfo>, v: Verdict) -> Self {
        let (status, reason) = match v {
            Verdict::Ok => ("OK", None),
            Verdict::Expiring(_) => ("EXPIRING", None),
            Verdict::Mismatch(r) => ("MISMATCH", Some(r)),
            Verdict::Missing => ("MISSING", None),
        };
        StatusRow {
            file,
            subject: info.map(CertInfo::subject).unwrap_or_default(),
            sans: info.map(CertInfo::sans).unwrap_or_default(),
            issuer: info
                .map(|i| format!("CN={}", i.issuer_cn))
                .unwrap_or_default(),
            not_after: info
                .map(|i| {
                    i.not_after
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default()
                })
                .unwrap_or_default(),
            days_left: info.map(|i| (i.not_after - now).whole_days()).unwrap_or(0),
            status: status.into(),
            reason,
        }
    }
}

/// The `pki status` table.
pub fn status_table(rows: &[StatusRow]) -> String {
    let w = rows.iter().map(|r| r.file.len()).max().unwrap_or(4).max(4);
    let sw = rows
        .iter()
        .map(|r| r.subject.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut out = format!(
        "{:w$}  {:sw$}  {:28}  {:20}  {:>9}  {}\n",
        "FILE", "SUBJECT", "ISSUER", "NOT AFTER", "DAYS LEFT", "STATUS"
    );
    for r in rows {
        let status = match &r.reason {
            Some(reason) => format!("{} ({reason})", r.status),
            None => r.status.clone(),
        };
        let _ = writeln!(
            out,
            "{:w$}  {:sw$}  {:28}  {:20}  {:>9}  {}",
            r.file, r.subject, r.issuer, r.not_after, r.days_left, status
        );
        if !r.sans.is_empty() {
            let _ = writeln!(out, "{:w$}  SANs: {}", "", r.sans.join(", "));
        }
    }
    out
}

/// `<token>,system:bootstrapper,10001,"system:bootstrappers"`
pub fn token_csv(token: &str) -> String {
    format!("{token},system:bootstrapper,10001,\"system:bootstrappers\"\n")
}

fn parse_token_csv(text: &str) -> Option<String> {
    let token = text.lines().next()?.split(',').next()?.trim().to_string();
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, 6) && ok(secret, 16)).then_some(token)
}

/// keepalived's `authentication` block, included by keepalived.conf.
pub fn vrrp_auth(pass: &str) -> String {
    format!(
        "# keepalived VRRP authentication, generated by imgbuild; included by keepalived.conf.\n\
authentication {{\n    auth_type PASS\n    auth_pass {pass}\n}}\n"
    )
}

fn parse_vrrp_auth(text: &str) -> Option<String> {
    let pass = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("auth_pass "))?
        .trim()
        .to_string();
    (!pass.is_empty() && pass.len() <= 8).then_some(pass)
}

/// The bootstrap-token Secret (kube-system), same token as token.csv.
pub fn bootstrap_token_secret(token: &str) -> String {
    let (id, secret) = token.split_once('.').unwrap_or((token, ""));
    format!(
        "# The TLS bootstrap token of imgbuild, also in /etc/kubernetes/token.csv.\n\
apiVersion: v1\n\
kind: Secret\n\
metadata:\n  name: bootstrap-token-{id}\n  namespace: kube-system\n\
type: bootstrap.kubernetes.io/token\n\
stringData:\n  description: \"imgbuild: kubelet TLS bootstrap\"\n  token-id: {id}\n  token-secret: {secret}\n  usage-bootstrap-authentication: \"true\"\n  usage-bootstrap-signing: \"true\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_csv_round_trip() {
        let line = token_csv("abcdef.0123456789abcdef");
        assert_eq!(
            line,
            "abcdef.0123456789abcdef,system:bootstrapper,10001,\"system:bootstrappers\"\n"
        );
        assert_eq!(
            parse_token_csv(&line).as_deref(),
            Some("abcdef.0123456789abcdef")
        );
        assert_eq!(parse_token_csv("ABCDEF.0123456789abcdef,x"), None);
        assert_eq!(parse_token_csv("abc.def"), None);
    }

    #[test]
    fn renewal_window_is_a_third_at_most_30_days() {
        assert_eq!(renewal_window(365), Duration::days(30));
        assert_eq!(renewal_window(30), Duration::days(10));
    }
}
