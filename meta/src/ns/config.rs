//! Cluster configuration records: small values under string keys that
//! services other than the namespace keep in the meta, so that every
//! process of the cluster sees the same (iSCSI exports, persistent
//! reservations, target heartbeats). Each change is a compare-and-set on a
//! version drawn from one cluster-wide counter, so a removed and re-made
//! record never repeats an old version (no ABA).
//!
//! Owns: the `Config` column family. Must not touch: the namespace; which
//! role may change which key (`access`, `write_kind::origin`).

use super::records::{root_only, sys_u64};
use super::NsResult;
use crate::kv::{Cf, ReadKv, Tx};
use serde::{Deserialize, Serialize};
use sparefs_proto::limits::{CONFIG_KEY_BYTES_MAX, CONFIG_LIST_MAX, CONFIG_VALUE_BYTES_MAX};
use sparefs_proto::namespace::{Caller, ConfigEntry, NsReply};
use sparefs_proto::Errno;

const SYS_CONFIG_VERSION: &[u8] = b"config_version";

#[derive(Serialize, Deserialize)]
struct ConfigRec {
    version: u64,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
}

pub(super) fn put_config<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    key: &[u8],
    expect: Option<u64>,
    value: Option<&[u8]>,
) -> NsResult<NsReply> {
    root_only(c)?;
    if key.is_empty() || key.len() > CONFIG_KEY_BYTES_MAX {
        return Err(Errno::EINVAL.into());
    }
    if value.is_some_and(|v| v.len() > CONFIG_VALUE_BYTES_MAX) {
        return Err(Errno::EFBIG.into());
    }
    let now = tx.get_rec::<ConfigRec>(Cf::Config, key)?;
    let current = now.as_ref().map_or(0, |r| r.version);
    if expect.is_some_and(|e| e != current) {
        return Err(Errno::ESTALE.into());
    }
    match value {
        None => {
            if now.is_some() {
                tx.delete(Cf::Config, key.to_vec());
            }
            Ok(NsReply::ConfigVersion(0))
        }
        Some(v) => {
            let version = sys_u64(tx, SYS_CONFIG_VERSION)? + 1;
            tx.put_rec(Cf::Sys, SYS_CONFIG_VERSION.to_vec(), &version);
            let rec = ConfigRec {
                version,
                value: v.to_vec(),
            };
            tx.put_rec(Cf::Config, key.to_vec(), &rec);
            Ok(NsReply::ConfigVersion(version))
        }
    }
}

pub(super) fn list_config(kv: &impl ReadKv, prefix: &[u8], after: &[u8]) -> NsResult<NsReply> {
    let mut start = after.to_vec();
    if start.is_empty() || !start.starts_with(prefix) {
        start = prefix.to_vec();
    } else {
        start.push(0);
    }
    let page = kv.scan(Cf::Config, prefix, &start, CONFIG_LIST_MAX + 1)?;
    let more = page.len() > CONFIG_LIST_MAX;
    let mut entries = Vec::with_capacity(page.len().min(CONFIG_LIST_MAX));
    for (k, v) in page.into_iter().take(CONFIG_LIST_MAX) {
        let rec: ConfigRec = crate::kv::decode(Cf::Config, &v)?;
        entries.push(ConfigEntry {
            key: k,
            version: rec.version,
            value: rec.value,
        });
    }
    Ok(NsReply::Config { entries, more })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn root() -> Caller {
        Caller::ROOT
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::create(dir.path()).expect("store");
        (dir, s)
    }

    #[test]
    fn compare_and_set_versions_never_repeat() {
        let (_dir, base) = store();
        let mut tx = Tx::new(&base);
        let c = root();
        let v1 = match put_config(&mut tx, &c, b"a/x", Some(0), Some(b"1")) {
            Ok(NsReply::ConfigVersion(v)) => v,
            other => panic!("{other:?}"),
        };
        assert!(v1 > 0);
        // A stale expectation is refused and changes nothing.
        assert!(put_config(&mut tx, &c, b"a/x", Some(0), Some(b"2")).is_err());
        assert!(put_config(&mut tx, &c, b"a/x", Some(v1), None).is_ok());
        let v2 = match put_config(&mut tx, &c, b"a/x", Some(0), Some(b"3")) {
            Ok(NsReply::ConfigVersion(v)) => v,
            other => panic!("{other:?}"),
        };
        assert!(v2 > v1, "a re-made record takes a new version");
        assert!(put_config(&mut tx, &c, b"a/x", Some(v1), Some(b"4")).is_err());
        match list_config(&tx, b"a/", b"") {
            Ok(NsReply::Config { entries, more }) => {
                assert!(!more);
                assert_eq!(entries.len(), 1);
                assert_eq!(entries[0].value, b"3");
                assert_eq!(entries[0].version, v2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_root_and_bounded() {
        let (_dir, base) = store();
        let mut tx = Tx::new(&base);
        let user = Caller {
            uid: 1000,
            ..Caller::ROOT
        };
        assert!(put_config(&mut tx, &user, b"k", None, Some(b"v")).is_err());
        let big = vec![0u8; CONFIG_VALUE_BYTES_MAX + 1];
        assert!(put_config(&mut tx, &root(), b"k", None, Some(&big)).is_err());
        assert!(put_config(&mut tx, &root(), b"", None, Some(b"v")).is_err());
    }
}
