//! kubeconfig files with embedded certificates, as `kubectl config` writes them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub(super) api_version: String,
    pub(super) kind: String,
    pub(super) clusters: Vec<NamedCluster>,
    pub(super) contexts: Vec<NamedContext>,
    pub(super) current_context: String,
    pub(super) users: Vec<NamedUser>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct NamedCluster {
    pub(super) name: String,
    pub(super) cluster: ClusterEntry,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct ClusterEntry {
    pub(super) certificate_authority_data: String,
    pub(super) server: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct NamedContext {
    pub(super) name: String,
    pub(super) context: ContextEntry,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ContextEntry {
    pub(super) cluster: String,
    pub(super) user: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct NamedUser {
    pub(super) name: String,
    pub(super) user: UserEntry,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct UserEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) client_certificate_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) client_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) token: Option<String>,
}

pub(super) fn b64(pem: &str) -> String {
    STANDARD.encode(pem.as_bytes())
}

pub(super) fn unb64(s: &str) -> Option<String> {
    String::from_utf8(STANDARD.decode(s.trim()).ok()?).ok()
}

impl Kubeconfig {
    pub(super) fn new(
        cluster: &str,
        server: &str,
        ca_pem: &str,
        user_name: &str,
        user: UserEntry,
    ) -> Self {
        let context = format!("{user_name}@{cluster}");
        Kubeconfig {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![NamedCluster {
                name: cluster.into(),
                cluster: ClusterEntry {
                    certificate_authority_data: b64(ca_pem),
                    server: server.into(),
                },
            }],
            contexts: vec![NamedContext {
                name: context.clone(),
                context: ContextEntry {
                    cluster: cluster.into(),
                    user: user_name.into(),
                },
            }],
            current_context: context,
            users: vec![NamedUser {
                name: user_name.into(),
                user,
            }],
        }
    }

    pub(super) fn parse(text: &str) -> Option<Kubeconfig> {
        serde_saphyr::from_str(text).ok()
    }

    /// Plain scalars throughout (no folded base64), as kubectl writes them.
    pub(super) fn to_yaml(&self) -> String {
        let mut options = serde_saphyr::SerializerOptions::default();
        options.prefer_block_scalars = false;
        serde_saphyr::to_string_with_options(self, options).unwrap_or_default()
    }

    pub(super) fn server(&self) -> Option<&str> {
        self.clusters.first().map(|c| c.cluster.server.as_str())
    }

    pub(super) fn ca_pem(&self) -> Option<String> {
        unb64(&self.clusters.first()?.cluster.certificate_authority_data)
    }

    pub(super) fn user(&self) -> Option<&UserEntry> {
        self.users.first().map(|u| &u.user)
    }
}
