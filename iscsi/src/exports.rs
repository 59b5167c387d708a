//! What is exported, as kept in the meta's configuration records (so every
//! target process of the cluster serves the same thing): one record per
//! target IQN, with its LUNs and who may log in to it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DEFAULT_IQN: &str = "iqn.2026-12.org.sparefs:default";

/// One IQN's record, under `iscsi/export/<iqn>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRec {
    pub iqn: String,
    /// One-way CHAP: the initiator must answer as this user and secret.
    #[serde(default)]
    pub chap: Option<Credentials>,
    /// Mutual CHAP: the target answers the initiator's challenge as this.
    #[serde(default)]
    pub mutual: Option<Credentials>,
    /// Initiator IQNs allowed to log in; empty: any.
    #[serde(default)]
    pub initiators: Vec<String>,
    pub luns: BTreeMap<u64, LunRec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub user: String,
    pub secret: String,
}

impl std::str::FromStr for Credentials {
    type Err = String;
    fn from_str(s: &str) -> Result<Credentials, String> {
        let (user, secret) = s
            .split_once(':')
            .ok_or_else(|| "expected USER:SECRET".to_string())?;
        // RFC 7143 §12.1.3: secrets of at least 12 bytes (96 bits).
        if user.is_empty() || secret.len() < 12 || secret.len() > 255 {
            return Err("CHAP needs a user and a secret of 12 to 255 bytes".into());
        }
        Ok(Credentials {
            user: user.into(),
            secret: secret.into(),
        })
    }
}

/// One LUN: the image file and the identity the LUN shows to initiators,
/// fixed when it was exported so every target process shows the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunRec {
    pub path: String,
    pub ino: u64,
    #[serde(default)]
    pub read_only: bool,
    /// NAA locally assigned designator (type 3): 60 bits of identity.
    pub naa: u64,
}

impl LunRec {
    /// The unit serial number (VPD 80h).
    pub fn serial(&self) -> String {
        format!("{:016x}", self.naa)
    }
}

pub fn key_of(iqn: &str) -> Vec<u8> {
    let mut k = sparefs_proto::namespace::config::ISCSI_EXPORT.to_vec();
    k.extend_from_slice(iqn.as_bytes());
    k
}

/// A locally assigned NAA identifier (SPC-4 7.8.6.6.4: NAA 3 then 60
/// bits), derived from the cluster's view of the image and the moment it
/// was exported.
pub fn new_naa(iqn: &str, lun: u64, ino: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(iqn.as_bytes());
    h.update(&lun.to_le_bytes());
    h.update(&ino.to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&now.to_le_bytes());
    let b = h.finalize();
    let mut x = [0u8; 8];
    x.copy_from_slice(&b.as_bytes()[..8]);
    (u64::from_le_bytes(x) & 0x0fff_ffff_ffff_ffff) | 0x3000_0000_0000_0000
}

/// A valid iSCSI name (RFC 3722 subset: iqn. or eui. forms, lower case).
pub fn valid_iqn(name: &str) -> bool {
    (name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa."))
        && name.len() <= 223
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b))
}

/// Every target record (config pages followed to the end).
pub async fn load_all(meta: &sparefs_client::MetaClient) -> Result<Vec<(TargetRec, u64)>, String> {
    let mut out = Vec::new();
    for e in crate::state::list(meta, sparefs_proto::namespace::config::ISCSI_EXPORT).await? {
        match serde_json::from_slice::<TargetRec>(&e.value) {
            Ok(t) => out.push((t, e.version)),
            Err(err) => tracing::warn!(
                "skipping export record {}: {err}",
                String::from_utf8_lossy(&e.key)
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_identities() {
        assert!(valid_iqn(DEFAULT_IQN));
        assert!(!valid_iqn("iqn.Upper"));
        assert!(!valid_iqn("foo"));
        let n = new_naa("iqn.x", 1, 5);
        assert_eq!(n >> 60, 3);
        assert!("u:short".parse::<Credentials>().is_err());
        assert!("user:secretsecret12".parse::<Credentials>().is_ok());
    }
}
