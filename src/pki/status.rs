//! Judging what the state dir holds (`pki status`, and `init`/`renew`
//! deciding what to keep): takes the [`State`] and produces a [`Verdict`]
//! per certificate, kubeconfig and the bootstrap token, the rows of `pki
//! status` and its table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;
use time::{Duration, OffsetDateTime};

use super::issue::{CertInfo, inspect};
use super::kubeconfig::{Kubeconfig, unb64};
use super::modes::{self, Loose};
use super::spec::{self, Ca, KubeconfigSpec, KubeconfigUser};
use super::token::{parse_secret, rfc3339};
use super::{PkiError, State, renewal_window};

/// Whether an existing certificate or kubeconfig still serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Ok,
    /// Inside its renewal window: the time left.
    Expiring(Duration),
    /// Past its expiry.
    Expired,
    Mismatch(String),
    Missing,
}

impl Verdict {
    pub(super) fn reason(self) -> String {
        match self {
            Verdict::Ok => "ok".into(),
            Verdict::Expiring(left) if left >= Duration::DAY => {
                format!("expires in {} days", left.whole_days())
            }
            Verdict::Expiring(left) => format!("expires in {} hours", left.whole_hours()),
            Verdict::Expired => "expired".into(),
            Verdict::Mismatch(r) => r,
            Verdict::Missing => "missing".into(),
        }
    }
}

/// `Expired` when `left` is none, `Expiring` when it is less than `window`.
fn by_time_left(left: Duration, window: Duration) -> Verdict {
    if left <= Duration::ZERO {
        Verdict::Expired
    } else if left < window {
        Verdict::Expiring(left)
    } else {
        Verdict::Ok
    }
}

/// A client certificate embedded in a kubeconfig, read back.
fn client_cert(kc: &Kubeconfig) -> Option<CertInfo> {
    kc.user()
        .and_then(|u| u.client_certificate_data.as_deref())
        .and_then(unb64)
        .and_then(|p| inspect(&p))
}

impl State<'_> {
    /// Why an existing certificate no longer serves, if it does not.
    pub(super) fn verdict(
        &self,
        info: &CertInfo,
        cn: &str,
        orgs: &[String],
        dns: &[String],
        ips: &[IpAddr],
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
        by_time_left(left, renewal_window(self.m.cluster.pki.leaf_validity_days))
    }

    /// Why an existing kubeconfig no longer serves, if it does not.
    pub(super) fn kubeconfig_verdict(
        &self,
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
                    Verdict::Mismatch("token differs from the bootstrap-token Secret".into())
                }
            }
            KubeconfigUser::Certificate {
                common_name,
                organizations,
            } => match client_cert(kc) {
                Some(info) => self.verdict(&info, common_name, organizations, &[], &[], ca_info),
                None => Verdict::Mismatch("no client certificate".into()),
            },
        }
    }

    /// `pki status`: every CA, leaf and kubeconfig with its verdict, the
    /// bootstrap token with its expiry, then every file or directory whose
    /// mode lets others in.
    pub(crate) fn status(&self) -> Result<Vec<StatusRow>, PkiError> {
        let mut rows = Vec::new();
        let cas = self.ca_rows(&mut rows)?;
        self.leaf_rows(&cas, &mut rows)?;
        self.kubeconfig_rows(&cas, &mut rows)?;
        rows.push(self.token_row()?);
        let loose = modes::loose(&self.dir).map_err(|source| PkiError::Read {
            path: self.dir.clone(),
            source,
        })?;
        rows.extend(loose.iter().map(StatusRow::loose));
        Ok(rows)
    }

    /// The CAs' rows (expiring in their last year); the CAs present.
    fn ca_rows(&self, rows: &mut Vec<StatusRow>) -> Result<BTreeMap<Ca, CertInfo>, PkiError> {
        let mut cas = BTreeMap::new();
        for ca in Ca::ALL {
            let crt = format!("{}.crt", ca.stem());
            let info = self.read_opt(&crt)?.and_then(|p| inspect(&p));
            let verdict = match &info {
                None => Verdict::Missing,
                Some(i) => by_time_left(i.not_after - self.ctx.now, Duration::days(365)),
            };
            rows.push(StatusRow::new(self.ctx.now, crt, info.as_ref(), verdict));
            if let Some(i) = info {
                cas.insert(ca, i);
            }
        }
        Ok(cas)
    }

    fn leaf_rows(
        &self,
        cas: &BTreeMap<Ca, CertInfo>,
        rows: &mut Vec<StatusRow>,
    ) -> Result<(), PkiError> {
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
        Ok(())
    }

    fn kubeconfig_rows(
        &self,
        cas: &BTreeMap<Ca, CertInfo>,
        rows: &mut Vec<StatusRow>,
    ) -> Result<(), PkiError> {
        let token = self
            .read_opt(spec::TOKEN_SECRET)?
            .and_then(|t| parse_secret(&t))
            .map(|t| t.value())
            .unwrap_or_default();
        let ca_pem = self.read_opt("pki/ca.crt")?.unwrap_or_default();
        for s in &self.spec.kubeconfigs {
            let kc = self.read_opt(&s.path)?.and_then(|t| Kubeconfig::parse(&t));
            let (info, verdict) = match (&kc, cas.get(&Ca::Kubernetes)) {
                (Some(kc), Some(ca)) => (
                    client_cert(kc),
                    self.kubeconfig_verdict(kc, s, &ca_pem, ca, &token),
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
        Ok(())
    }
}

/// One line of `pki status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StatusRow {
    pub(crate) file: String,
    pub(crate) subject: String,
    pub(crate) sans: Vec<String>,
    pub(crate) issuer: String,
    pub(crate) not_after: String,
    pub(crate) days_left: i64,
    /// OK, EXPIRING, EXPIRED, MISMATCH, MISSING or INSECURE (a mode that
    /// lets others in)
    pub(crate) status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

impl StatusRow {
    /// The row of a file or directory whose mode lets others in.
    fn loose(l: &Loose) -> Self {
        StatusRow {
            file: l.rel.clone(),
            subject: String::new(),
            sans: Vec::new(),
            issuer: String::new(),
            not_after: String::new(),
            days_left: 0,
            status: "INSECURE".into(),
            reason: Some(format!("{}; `pki init` sets it", l.reason())),
        }
    }

    fn new(now: OffsetDateTime, file: String, info: Option<&CertInfo>, v: Verdict) -> Self {
        let subject = info.map(CertInfo::subject).unwrap_or_default();
        let mut row = StatusRow::dated(now, file, subject, info.map(|i| i.not_after), v);
        row.sans = info.map(CertInfo::sans).unwrap_or_default();
        row.issuer = info
            .map(|i| format!("CN={}", i.issuer_cn))
            .unwrap_or_default();
        row
    }

    /// A row of something that expires at `expiry` (no SANs, no issuer).
    pub(super) fn dated(
        now: OffsetDateTime,
        file: String,
        subject: String,
        expiry: Option<OffsetDateTime>,
        v: Verdict,
    ) -> Self {
        let (status, reason) = match v {
            Verdict::Ok => ("OK", None),
            Verdict::Expiring(_) => ("EXPIRING", None),
            Verdict::Expired => ("EXPIRED", None),
            Verdict::Mismatch(r) => ("MISMATCH", Some(r)),
            Verdict::Missing => ("MISSING", None),
        };
        StatusRow {
            file,
            subject,
            sans: Vec::new(),
            issuer: String::new(),
            not_after: expiry.and_then(rfc3339).unwrap_or_default(),
            days_left: expiry.map(|t| (t - now).whole_days()).unwrap_or(0),
            status: status.into(),
            reason,
        }
    }
}

/// The `pki status` table.
pub(crate) fn status_table(rows: &[StatusRow]) -> String {
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
