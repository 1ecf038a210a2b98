//! kubeconfig files with embedded certificates, as `kubectl config` writes them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub contexts: Vec<NamedContext>,
    pub current_context: String,
    pub users: Vec<NamedUser>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: ClusterEntry,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterEntry {
    pub certificate_authority_data: String,
    pub server: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: ContextEntry,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ContextEntry {
    pub cluster: String,
    pub user: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: UserEntry,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UserEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

pub fn b64(pem: &str) -> String {
    STANDARD.encode(pem.as_bytes())
}

pub fn unb64(s: &str) -> Option<String> {
    String::from_utf8(STANDARD.decode(s.trim()).ok()?).ok()
}

impl Kubeconfig {
    pub fn new(
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

    pub fn parse(text: &str) -> Option<Kubeconfig> {
        serde_saphyr::from_str(text).ok()
    }

    /// Plain scalars throughout (no folded base64), as kubectl writes them.
    pub fn to_yaml(&self) -> String {
        let mut options = serde_saphyr::SerializerOptions::default();
        options.prefer_block_scalars = false;
        serde_saphyr::to_string_with_options(self, options).unwrap_or_default()
    }

    pub fn server(&self) -> Option<&str> {
        self.clusters.first().map(|c| c.cluster.server.as_str())
    }

    pub fn ca_pem(&self) -> Option<String> {
        unb64(&self.clusters.first()?.cluster.certificate_authority_data)
    }

    pub fn user(&self) -> Option<&UserEntry> {
        self.users.first().map(|u| &u.user)
    }
}
