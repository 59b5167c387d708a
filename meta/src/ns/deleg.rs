//! Directory delegations (docs/delegation.md): which client alone changes
//! which directory, the inode numbers reserved for the creates it answers
//! itself, and the check every other client's request passes first.
//!
//! Records live in the `Sys` family: `deleg/<dir>` -> holder,
//! `ires/<client>` -> the client's reserved inode ranges. This module owns
//! them; it does not change the namespace itself (write.rs applies the
//! delegated changes through the ordinary operations).

use super::records::*;
use super::{NsError, NsResult};
use crate::kv::{be, read_be, Cf, ReadKv, StoreError, Tx};
use sparefs_proto::namespace::*;
use sparefs_proto::{ClientId, Errno, InodeId};

const DELEG_PREFIX: &[u8] = b"deleg/";
const IRES_PREFIX: &[u8] = b"ires/";
/// Most inode numbers one reservation takes.
pub const RESERVE_INODES_MAX: u32 = 1 << 16;

fn deleg_key(dir: InodeId) -> Vec<u8> {
    let mut k = DELEG_PREFIX.to_vec();
    k.extend_from_slice(&be(dir.0));
    k
}

fn ires_key(client: ClientId) -> Vec<u8> {
    let mut k = IRES_PREFIX.to_vec();
    k.extend_from_slice(&client.0.to_be_bytes());
    k
}

/// The client directory `dir` is delegated to, if any.
pub fn holder<K: ReadKv>(kv: &K, dir: InodeId) -> NsResult<Option<ClientId>> {
    Ok(kv.get_rec::<u128>(Cf::Sys, &deleg_key(dir))?.map(ClientId))
}

/// The first of `dirs` another client than `client` holds, with its holder.
fn held_by_other<K: ReadKv>(
    kv: &K,
    client: ClientId,
    dirs: &[InodeId],
) -> NsResult<Option<(InodeId, ClientId)>> {
    for d in dirs {
        if let Some(h) = holder(kv, *d)? {
            if h != client {
                return Ok(Some((*d, h)));
            }
        }
    }
    Ok(None)
}

/// The entry `name` of `parent` names, if it is a directory.
fn subdir<K: ReadKv>(kv: &K, parent: InodeId, name: &[u8]) -> NsResult<Option<InodeId>> {
    Ok(kv
        .get_rec::<DentryRec>(Cf::Dentries, &dentry_key(parent, name))?
        .filter(|e| e.kind == FileKind::Dir)
        .map(|e| e.ino))
}

/// The directories a change reads or writes the entries or attributes of:
/// those a delegation covers (`WriteOp::delegation_scope`), with the
/// subdirectories it names looked up.
fn write_dirs<K: ReadKv>(kv: &K, op: &WriteOp) -> NsResult<Vec<InodeId>> {
    let scope = op.delegation_scope();
    let mut dirs = scope.dirs;
    for (parent, name) in scope.subdirs {
        dirs.extend(subdir(kv, parent, name)?);
    }
    Ok(dirs)
}

/// A change by `client` that must wait for another client's delegation:
/// the directory and its holder.
pub fn write_conflict<K: ReadKv>(
    kv: &K,
    client: ClientId,
    op: &WriteOp,
) -> NsResult<Option<(InodeId, ClientId)>> {
    held_by_other(kv, client, &write_dirs(kv, op)?)
}

/// A read by `client` that must wait for another client's delegation.
pub fn read_conflict<K: ReadKv>(
    kv: &K,
    client: ClientId,
    op: &ReadOp,
) -> NsResult<Option<(InodeId, ClientId)>> {
    let dir = match op {
        ReadOp::Lookup { parent, .. } => *parent,
        ReadOp::GetAttr { ino }
        | ReadOp::ReadDir { ino, .. }
        | ReadOp::ReadDirPlus { ino, .. }
        | ReadOp::GetXattr { ino, .. }
        | ReadOp::ListXattr { ino }
        | ReadOp::Access { ino, .. }
        | ReadOp::GetPolicy { ino }
        | ReadOp::Open { ino, .. } => *ino,
        _ => return Ok(None),
    };
    held_by_other(kv, client, &[dir])
}

/// An answer to `client` that would show another client's delegated
/// directory as the meta has it (its holder knows better): the directory
/// and its holder. A LOOKUP or a READDIRPLUS page can name one.
pub fn reply_conflict<K: ReadKv>(
    kv: &K,
    client: ClientId,
    reply: &NsReply,
) -> NsResult<Option<(InodeId, ClientId)>> {
    let dirs: Vec<InodeId> = match reply {
        NsReply::Attr(a) if a.kind == FileKind::Dir => vec![a.ino],
        NsReply::DirPlus(entries) => entries
            .iter()
            .filter(|(e, _)| e.kind == FileKind::Dir && e.cookie > 2)
            .map(|(e, _)| e.ino)
            .collect(),
        _ => return Ok(None),
    };
    held_by_other(kv, client, &dirs)
}

/// Grants `dir` to `client`: an empty directory without ACLs that no other
/// client holds (EBUSY if one does, ENOTEMPTY if it has entries).
pub fn delegate<R: ReadKv>(
    tx: &mut Tx<R>,
    c: &Caller,
    client: ClientId,
    dir: InodeId,
) -> NsResult<NsReply> {
    let rec = load_dir(tx, dir)?;
    super::perm::check(&rec, c, super::perm::W | super::perm::X)?;
    if let Some(h) = holder(tx, dir)? {
        if h != client {
            return Err(Errno::EBUSY.into());
        }
    }
    if rec.children > 0 {
        return Err(Errno::ENOTEMPTY.into());
    }
    if !rec.acl.is_empty() || !rec.default_acl.is_empty() || rec.nlink == 0 {
        // The mount predicts modes from the bits alone.
        return Err(Errno::EINVAL.into());
    }
    grant(tx, client, dir);
    Ok(NsReply::Granted {
        attr: rec.attr(dir),
        next_cookie: rec.next_cookie,
    })
}

/// Records `dir` as `client`'s (a directory it made inside one of its own).
pub fn grant<R: ReadKv>(tx: &mut Tx<R>, client: ClientId, dir: InodeId) {
    tx.put_rec(Cf::Sys, deleg_key(dir), &client.0);
}

/// Gives back those of `dirs` that `client` holds.
pub fn give_back<R: ReadKv>(tx: &mut Tx<R>, client: ClientId, dirs: &[InodeId]) -> NsResult<()> {
    for d in dirs {
        if holder(tx, *d)? == Some(client) {
            tx.delete(Cf::Sys, deleg_key(*d));
        }
    }
    Ok(())
}

/// A removed directory's delegation goes with it.
pub fn forget_dir<R: ReadKv>(tx: &mut Tx<R>, dir: InodeId) -> NsResult<()> {
    if holder(tx, dir)?.is_some() {
        tx.delete(Cf::Sys, deleg_key(dir));
    }
    Ok(())
}

/// Reservations a client keeps at once: the one it is using and the next
/// (asked for before the first runs out, while creates from the first are
/// still on their way).
const RESERVATIONS_KEPT: usize = 3;

/// Reserves `count` fresh inode numbers for `client`, beside its earlier
/// reservations (the oldest beyond `RESERVATIONS_KEPT` is forgotten).
pub fn reserve<R: ReadKv>(tx: &mut Tx<R>, client: ClientId, count: u32) -> NsResult<NsReply> {
    if count == 0 || count > RESERVE_INODES_MAX {
        return Err(Errno::EINVAL.into());
    }
    let first = sys_next_inode(tx)?;
    tx.put_rec(Cf::Sys, SYS_NEXT_INODE.to_vec(), &(first + count as u64));
    let key = ires_key(client);
    let mut ranges: Vec<(u64, u64)> = tx.get_rec(Cf::Sys, &key)?.unwrap_or_default();
    ranges.push((first, first + count as u64));
    if ranges.len() > RESERVATIONS_KEPT {
        ranges.remove(0);
    }
    tx.put_rec(Cf::Sys, key, &ranges);
    Ok(NsReply::Inodes { first, count })
}

fn sys_next_inode<K: ReadKv>(kv: &K) -> NsResult<u64> {
    kv.get_rec::<u64>(Cf::Sys, SYS_NEXT_INODE)?
        .ok_or_else(|| NsError::Store(StoreError::Invalid("no inode counter".into())))
}

/// Takes `ino` from `client`'s reservations: numbers are taken in rising
/// order within each, each once, so a delegated create never reuses an
/// inode.
pub fn take_reserved<R: ReadKv>(tx: &mut Tx<R>, client: ClientId, ino: InodeId) -> NsResult<()> {
    let key = ires_key(client);
    let mut ranges: Vec<(u64, u64)> = tx.get_rec(Cf::Sys, &key)?.ok_or(Errno::ESTALE)?;
    let Some(r) = ranges
        .iter_mut()
        .find(|(next, end)| *next <= ino.0 && ino.0 < *end)
    else {
        return Err(Errno::ESTALE.into());
    };
    r.0 = ino.0 + 1;
    ranges.retain(|(next, end)| next < end);
    tx.put_rec(Cf::Sys, key, &ranges);
    Ok(())
}

/// A client whose lease expired (or that unmounted) holds nothing more.
pub fn expire<R: ReadKv>(tx: &mut Tx<R>, client: ClientId) -> NsResult<()> {
    for (k, v) in tx.scan(Cf::Sys, DELEG_PREFIX, DELEG_PREFIX, usize::MAX)? {
        if crate::kv::decode::<u128>(Cf::Sys, &v)? == client.0 {
            tx.delete(Cf::Sys, k);
        }
    }
    tx.delete(Cf::Sys, ires_key(client));
    Ok(())
}

/// Drops the delegation of `dir` if `holder` holds it; whether it did.
pub fn drop_if_held<R: ReadKv>(tx: &mut Tx<R>, dir: InodeId, holder: ClientId) -> NsResult<bool> {
    if self::holder(tx, dir)? != Some(holder) {
        return Ok(false);
    }
    tx.delete(Cf::Sys, deleg_key(dir));
    Ok(true)
}

/// Every client holding a delegation (a new leader starts their leases).
pub fn holders<K: ReadKv>(kv: &K) -> NsResult<Vec<ClientId>> {
    let mut out = Vec::new();
    for (_, v) in kv.scan(Cf::Sys, DELEG_PREFIX, DELEG_PREFIX, usize::MAX)? {
        let c = ClientId(crate::kv::decode::<u128>(Cf::Sys, &v)?);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// Every delegated directory with its holder (status, tests).
pub fn all<K: ReadKv>(kv: &K) -> Result<Vec<(InodeId, ClientId)>, StoreError> {
    let mut out = Vec::new();
    for (k, v) in kv.scan(Cf::Sys, DELEG_PREFIX, DELEG_PREFIX, usize::MAX)? {
        let dir = read_be(&k[DELEG_PREFIX.len()..])
            .ok_or_else(|| StoreError::Invalid("short delegation key".into()))?;
        out.push((
            InodeId(dir),
            ClientId(crate::kv::decode::<u128>(Cf::Sys, &v)?),
        ));
    }
    Ok(out)
}
