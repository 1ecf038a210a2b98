//! The bootstrap token: takes the state dir's bootstrap-token Secret, the
//! manifests' TTL and the build context's clock, and keeps or makes the one
//! credential a kubelet joins with. The Secret
//! (`addons/bootstrap-token.yaml`, applied with the addons) is where the
//! token lives: its `token-id`, `token-secret` and `expiration`, an absolute
//! UTC time in RFC 3339 (k8s.io/cluster-bootstrap token/api,
//! `BootstrapTokenExpirationKey`), computed as kubeadm does, the clock plus
//! the TTL, when the token is made (cmd/kubeadm/app/apis/bootstraptoken/v1,
//! `encodeTokenSecretData`). Kept in the state dir, the same token and the
//! same expiration go into every build until it is renewed: a token in the
//! last third of its TTL, expired, or without an expiration gets a fresh one.
//! kube-controller-manager's `tokencleaner` deletes the Secret once it
//! expires; the apiserver refuses the token from then on.

use std::collections::BTreeMap;

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, UtcOffset};

use super::spec::{OLD_TOKEN_CSV, TOKEN_SECRET};
use super::status::{StatusRow, Verdict};
use super::{Action, PkiError, State};

/// A bootstrap token with its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BootstrapToken {
    /// `[a-z0-9]{6}`, public: the Secret's name ends in it.
    pub(super) id: String,
    /// `[a-z0-9]{16}`
    pub(super) secret: String,
    /// When it stops working; `None` for a Secret that has no expiration
    /// (imgbuild's before tokens expired), which is never kept.
    pub(super) expiration: Option<OffsetDateTime>,
}

impl BootstrapToken {
    /// `<id>.<secret>`, what bootstrap-kubelet.conf holds.
    pub(super) fn value(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The bootstrap-token Secret (kube-system) of this token.
    pub(super) fn secret_yaml(&self) -> String {
        let expiration = self
            .expiration
            .and_then(rfc3339)
            .map(|e| format!("  expiration: \"{e}\"\n"))
            .unwrap_or_default();
        format!(
            "# The TLS bootstrap token of imgbuild (bootstrap-kubelet.conf holds it);\n\
# `imgbuild pki renew` makes a new one when it nears its expiration.\n\
apiVersion: v1\n\
kind: Secret\n\
metadata:\n  name: bootstrap-token-{id}\n  namespace: kube-system\n\
type: bootstrap.kubernetes.io/token\n\
stringData:\n  description: \"imgbuild: kubelet TLS bootstrap\"\n  token-id: {id}\n  token-secret: {secret}\n{expiration}  usage-bootstrap-authentication: \"true\"\n  usage-bootstrap-signing: \"true\"\n",
            id = self.id,
            secret = self.secret,
        )
    }
}

/// `t` in UTC as RFC 3339 to the second (`2027-01-31T12:00:00Z`).
pub(super) fn rfc3339(t: OffsetDateTime) -> Option<String> {
    let t = t.to_offset(UtcOffset::UTC).replace_nanosecond(0).ok()?;
    t.format(&Rfc3339).ok()
}

#[derive(Deserialize)]
struct SecretDoc {
    #[serde(rename = "stringData")]
    string_data: BTreeMap<String, String>,
}

/// Whether `s` is `n` characters of `[a-z0-9]`.
fn is_token_part(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The token of a bootstrap-token Secret; `None` when it holds no valid one
/// or an expiration that is not RFC 3339 (which the apiserver treats as
/// invalid).
pub(super) fn parse_secret(text: &str) -> Option<BootstrapToken> {
    let doc: SecretDoc = serde_saphyr::from_str(text).ok()?;
    let id = doc.string_data.get("token-id")?.clone();
    let secret = doc.string_data.get("token-secret")?.clone();
    if !is_token_part(&id, 6) || !is_token_part(&secret, 16) {
        return None;
    }
    let expiration = match doc.string_data.get("expiration") {
        Some(e) => Some(OffsetDateTime::parse(e, &Rfc3339).ok()?),
        None => None,
    };
    Some(BootstrapToken {
        id,
        secret,
        expiration,
    })
}

/// A token is renewed in the last third of its TTL.
fn renewal_window(ttl: Duration) -> Duration {
    ttl / 3
}

impl State<'_> {
    fn token_ttl(&self) -> Duration {
        Duration::hours(i64::from(self.m.cluster.pki.bootstrap_token_ttl_hours))
    }

    /// Whether the token `t` still serves as of the context's clock.
    pub(super) fn token_verdict(&self, t: &BootstrapToken) -> Verdict {
        let Some(expiration) = t.expiration else {
            return Verdict::Mismatch("no expiration: the token would never expire".into());
        };
        let (left, ttl) = (expiration - self.ctx.now, self.token_ttl());
        if left <= Duration::ZERO {
            Verdict::Expired
        } else if left > ttl {
            let hours = self.m.cluster.pki.bootstrap_token_ttl_hours;
            Verdict::Mismatch(format!(
                "expires later than bootstrap_token_ttl_hours ({hours}) allows"
            ))
        } else if left < renewal_window(ttl) {
            Verdict::Expiring(left)
        } else {
            Verdict::Ok
        }
    }

    /// A new token, valid for the TTL from the context's clock.
    fn new_token(&self) -> Result<BootstrapToken, PkiError> {
        let now = self.ctx.now.to_offset(UtcOffset::UTC);
        let expiration = now
            .replace_nanosecond(0)
            .unwrap_or(now)
            .checked_add(self.token_ttl())
            .filter(|t| t.year() <= 9999)
            .ok_or(PkiError::TokenTtl {
                hours: self.m.cluster.pki.bootstrap_token_ttl_hours,
                now,
            })?;
        Ok(BootstrapToken {
            id: self.ctx.random_token(6)?,
            secret: self.ctx.random_token(16)?,
            expiration: Some(expiration),
        })
    }

    /// The bootstrap token (`init`, `renew`): the state's while it serves,
    /// else a fresh one; the static token file of old state dirs is
    /// removed. Returns the token.
    pub(super) fn ensure_token(&mut self) -> Result<BootstrapToken, PkiError> {
        self.remove_token_csv()?;
        let existing = self.read_opt(TOKEN_SECRET)?;
        let reason = match existing.as_deref().map(parse_secret) {
            None => None,
            Some(None) => Some("unreadable".to_string()),
            Some(Some(t)) => match self.token_verdict(&t) {
                Verdict::Ok => return self.keep_token(t, existing.as_deref()),
                v => Some(v.reason()),
            },
        };
        let token = self.new_token()?;
        self.write(TOKEN_SECRET, &token.secret_yaml())?;
        self.note(
            TOKEN_SECRET,
            reason.map_or(Action::Created, Action::Reissued),
        );
        Ok(token)
    }

    /// Keeps `t`, rewriting its Secret when the file is not as imgbuild
    /// writes it now (the token and its expiration stay).
    fn keep_token(
        &mut self,
        t: BootstrapToken,
        text: Option<&str>,
    ) -> Result<BootstrapToken, PkiError> {
        let want = t.secret_yaml();
        if text == Some(want.as_str()) {
            self.note(TOKEN_SECRET, Action::Kept);
        } else {
            self.write(TOKEN_SECRET, &want)?;
            self.note(
                TOKEN_SECRET,
                Action::Reissued("same token, rewritten".into()),
            );
        }
        Ok(t)
    }

    /// `token.csv`, the static token file that never expired: no node gets
    /// it any more, so the state dir does not keep it either.
    fn remove_token_csv(&mut self) -> Result<(), PkiError> {
        let path = self.path(OLD_TOKEN_CSV);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let why = "the static token file never expired; bootstrap tokens replace it";
                self.note(OLD_TOKEN_CSV, Action::Removed(why.into()));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PkiError::Write { path, source }),
        }
    }

    /// The token's row of `pki status`: its id (never the secret), its
    /// expiration, and OK / EXPIRING / EXPIRED / MISMATCH / MISSING.
    pub(super) fn token_row(&self) -> Result<StatusRow, PkiError> {
        let text = self.read_opt(TOKEN_SECRET)?;
        let file = TOKEN_SECRET.to_string();
        let now = self.ctx.now;
        Ok(match text.as_deref().map(parse_secret) {
            None => StatusRow::dated(now, file, String::new(), None, Verdict::Missing),
            Some(None) => {
                let v = Verdict::Mismatch("unreadable".into());
                StatusRow::dated(now, file, String::new(), None, v)
            }
            Some(Some(t)) => {
                let subject = format!("bootstrap token {}", t.id);
                StatusRow::dated(now, file, subject, t.expiration, self.token_verdict(&t))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expiration: Option<&str>) -> BootstrapToken {
        BootstrapToken {
            id: "abcdef".into(),
            secret: "0123456789abcdef".into(),
            expiration: expiration.map(|e| OffsetDateTime::parse(e, &Rfc3339).unwrap()),
        }
    }

    #[test]
    fn the_secret_round_trips_with_its_rfc3339_expiration() {
        let t = token(Some("2027-01-31T12:00:00Z"));
        let yaml = t.secret_yaml();
        assert!(
            yaml.contains("  expiration: \"2027-01-31T12:00:00Z\"\n"),
            "{yaml}"
        );
        assert!(yaml.contains("name: bootstrap-token-abcdef"));
        assert_eq!(parse_secret(&yaml), Some(t.clone()));
        assert_eq!(t.value(), "abcdef.0123456789abcdef");
        // an old Secret without expiration reads back without one
        let old = token(None);
        assert_eq!(parse_secret(&old.secret_yaml()), Some(old));
    }

    #[test]
    fn a_bad_token_or_expiration_is_unreadable() {
        let yaml = token(Some("2027-01-31T12:00:00Z")).secret_yaml();
        assert_eq!(parse_secret(&yaml.replace("abcdef", "ABCDEF")), None);
        assert_eq!(
            parse_secret(&yaml.replace("2027-01-31T12", "31.01.2027 12")),
            None
        );
        assert_eq!(parse_secret("not: [yaml"), None);
    }

    #[test]
    fn rfc3339_is_utc_to_the_second() {
        let t = OffsetDateTime::parse("2027-01-31T14:00:00.5+02:00", &Rfc3339).unwrap();
        assert_eq!(rfc3339(t).as_deref(), Some("2027-01-31T12:00:00Z"));
    }
}
