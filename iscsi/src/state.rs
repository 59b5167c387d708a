//! Reading and compare-and-setting the meta's configuration records
//! (`WriteOp::PutConfig`) on behalf of the target and the CLI.

use sparefs_client::{ClientError, MetaClient};
use sparefs_proto::namespace::{ConfigEntry, NsReply, ReadOp, WriteOp};
use sparefs_proto::Errno;

/// Every record under `prefix`, page after page.
pub async fn list(meta: &MetaClient, prefix: &[u8]) -> Result<Vec<ConfigEntry>, String> {
    let mut out: Vec<ConfigEntry> = Vec::new();
    let mut after = Vec::new();
    loop {
        let op = ReadOp::ListConfig {
            prefix: prefix.to_vec(),
            after: after.clone(),
        };
        match meta.read(op).await {
            Ok(NsReply::Config { entries, more }) => {
                if let Some(last) = entries.last() {
                    after = last.key.clone();
                }
                let empty = entries.is_empty();
                out.extend(entries);
                if !more || empty {
                    return Ok(out);
                }
            }
            Ok(other) => return Err(format!("unexpected answer to ListConfig: {other:?}")),
            Err(e) => return Err(format!("listing {}: {e}", String::from_utf8_lossy(prefix))),
        }
    }
}

/// One record and its version (0: absent).
pub async fn get(meta: &MetaClient, key: &[u8]) -> Result<Option<ConfigEntry>, String> {
    Ok(list(meta, key).await?.into_iter().find(|e| e.key == key))
}

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("changed by someone else meanwhile")]
    Stale,
    #[error("{0}")]
    Other(String),
}

/// Sets (or with `None` removes) `key` if its version is still `expect`.
pub async fn put(
    meta: &MetaClient,
    key: &[u8],
    expect: Option<u64>,
    value: Option<Vec<u8>>,
) -> Result<u64, PutError> {
    let op = WriteOp::PutConfig {
        key: key.to_vec(),
        expect,
        value: value.map(serde_bytes::ByteBuf::from),
    };
    match meta.write(op).await {
        Ok(NsReply::ConfigVersion(v)) => Ok(v),
        Ok(other) => Err(PutError::Other(format!(
            "unexpected answer to PutConfig: {other:?}"
        ))),
        Err(ClientError::Errno(Errno::ESTALE)) => Err(PutError::Stale),
        Err(e) => Err(PutError::Other(format!(
            "changing {}: {e}",
            String::from_utf8_lossy(key)
        ))),
    }
}
