//! POSIX ACLs (acl(5)): the `system.posix_acl_access` and
//! `system.posix_acl_default` xattr format, the access check, keeping the
//! mode bits and the ACL in step (chmod, setfacl), and the inheritance of a
//! directory's default ACL by what is created in it.
//!
//! The meta is the authority: the kernel of every mount checks ACLs too
//! (FUSE_POSIX_ACL), but the meta's answer is the one all mounts share.

use serde::{Deserialize, Serialize};
use sparefs_proto::namespace::Caller;
use sparefs_proto::Errno;

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
pub const USER_OBJ: u16 = 0x01;
pub const USER: u16 = 0x02;
pub const GROUP_OBJ: u16 = 0x04;
pub const GROUP: u16 = 0x08;
pub const MASK: u16 = 0x10;
pub const OTHER: u16 = 0x20;
/// Most entries one ACL may have (bounds the inode record).
pub const ENTRIES_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    /// uid or gid of USER and GROUP entries; unused otherwise.
    pub id: u32,
}

pub type Acl = Vec<AclEntry>;

/// Parses and validates the xattr form: the three base entries once each,
/// named entries with distinct ids, and a mask whenever there are named ones.
pub fn parse(bytes: &[u8]) -> Result<Acl, Errno> {
    if bytes.len() < 4
        || !(bytes.len() - 4).is_multiple_of(8)
        || (bytes.len() - 4) / 8 > ENTRIES_MAX
    {
        return Err(Errno::EINVAL);
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if u32_at(0) != VERSION {
        return Err(Errno::EINVAL);
    }
    let mut acl = Vec::new();
    for e in bytes[4..].chunks(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        if perm > 7 || ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&tag) {
            return Err(Errno::EINVAL);
        }
        acl.push(AclEntry { tag, perm, id });
    }
    let count = |t: u16| acl.iter().filter(|e| e.tag == t).count();
    let named = count(USER) + count(GROUP);
    if count(USER_OBJ) != 1 || count(GROUP_OBJ) != 1 || count(OTHER) != 1 || count(MASK) > 1 {
        return Err(Errno::EINVAL);
    }
    if named > 0 && count(MASK) == 0 {
        return Err(Errno::EINVAL);
    }
    for t in [USER, GROUP] {
        let mut ids: Vec<u32> = acl.iter().filter(|e| e.tag == t).map(|e| e.id).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        if ids.len() != n {
            return Err(Errno::EINVAL);
        }
    }
    acl.sort_by_key(|e| (e.tag, e.id));
    Ok(acl)
}

/// The xattr form, entries in the canonical order.
pub fn encode(acl: &[AclEntry]) -> Vec<u8> {
    let mut out = VERSION.to_le_bytes().to_vec();
    let mut sorted = acl.to_vec();
    sorted.sort_by_key(|e| (e.tag, e.id));
    for e in sorted {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        let id = if matches!(e.tag, USER | GROUP) {
            e.id
        } else {
            u32::MAX
        };
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// An ACL with only the owner, group and other entries says no more than
/// the mode bits: it is not stored.
pub fn is_minimal(acl: &[AclEntry]) -> bool {
    acl.iter()
        .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
}

fn perm_of(acl: &[AclEntry], tag: u16) -> u32 {
    acl.iter()
        .find(|e| e.tag == tag)
        .map(|e| e.perm as u32)
        .unwrap_or(0)
}

/// The rwx mode bits an access ACL implies (group bits are the mask's).
pub fn mode_of(acl: &[AclEntry]) -> u32 {
    let group = if acl.iter().any(|e| e.tag == MASK) {
        perm_of(acl, MASK)
    } else {
        perm_of(acl, GROUP_OBJ)
    };
    (perm_of(acl, USER_OBJ) << 6) | (group << 3) | perm_of(acl, OTHER)
}

/// chmod on a file with an ACL: owner and other entries take the new bits,
/// and the mask (or the owning group's entry when there is no mask).
pub fn apply_mode(acl: &mut [AclEntry], mode: u32) {
    let has_mask = acl.iter().any(|e| e.tag == MASK);
    for e in acl.iter_mut() {
        match e.tag {
            USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
            MASK => e.perm = ((mode >> 3) & 7) as u16,
            GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
            OTHER => e.perm = (mode & 7) as u16,
            _ => {}
        }
    }
}

/// The access check of acl(5) for a caller that is not root.
pub fn allowed(acl: &[AclEntry], owner: u32, group: u32, caller: &Caller, want: u32) -> bool {
    let grants = |perm: u32| perm & want == want;
    if caller.uid == owner {
        return grants(perm_of(acl, USER_OBJ));
    }
    let mask = if acl.iter().any(|e| e.tag == MASK) {
        perm_of(acl, MASK)
    } else {
        7
    };
    if let Some(e) = acl.iter().find(|e| e.tag == USER && e.id == caller.uid) {
        return grants(e.perm as u32 & mask);
    }
    let mut in_some_group = false;
    for e in acl {
        let member = match e.tag {
            GROUP_OBJ => caller.in_group(group),
            GROUP => caller.in_group(e.id),
            _ => false,
        };
        if member {
            in_some_group = true;
            if grants(e.perm as u32 & mask) {
                return true;
            }
        }
    }
    if in_some_group {
        return false;
    }
    grants(perm_of(acl, OTHER))
}

/// What a new inode gets in a directory with default ACL `default`, created
/// with `mode` (the umask does not apply): its access ACL (empty when
/// minimal) and its mode bits.
pub fn inherit(default: &[AclEntry], mode: u32) -> (Acl, u32) {
    let mut acl = default.to_vec();
    let has_mask = acl.iter().any(|e| e.tag == MASK);
    for e in acl.iter_mut() {
        match e.tag {
            USER_OBJ => e.perm &= ((mode >> 6) & 7) as u16,
            MASK => e.perm &= ((mode >> 3) & 7) as u16,
            GROUP_OBJ if !has_mask => e.perm &= ((mode >> 3) & 7) as u16,
            OTHER => e.perm &= (mode & 7) as u16,
            _ => {}
        }
    }
    let bits = (mode & !0o777) | mode_of(&acl);
    if is_minimal(&acl) {
        (Vec::new(), bits)
    } else {
        (acl, bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: u16, perm: u16, id: u32) -> AclEntry {
        AclEntry { tag, perm, id }
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn round_trip_and_validation() {
        let acl = vec![
            e(USER_OBJ, 6, 0),
            e(USER, 4, 1001),
            e(GROUP_OBJ, 4, 0),
            e(MASK, 6, 0),
            e(OTHER, 0, 0),
        ];
        let parsed = parse(&encode(&acl)).expect("parse");
        assert_eq!(parsed.len(), 5);
        assert_eq!(mode_of(&parsed), 0o660);
        // A named entry without a mask, a duplicate base entry, bad perms.
        assert!(parse(&encode(&[
            e(USER_OBJ, 6, 0),
            e(USER, 4, 1),
            e(GROUP_OBJ, 4, 0),
            e(OTHER, 0, 0)
        ]))
        .is_err());
        assert!(parse(&encode(&[
            e(USER_OBJ, 6, 0),
            e(USER_OBJ, 6, 0),
            e(GROUP_OBJ, 4, 0),
            e(OTHER, 0, 0)
        ]))
        .is_err());
        let mut bad = encode(&[e(USER_OBJ, 6, 0), e(GROUP_OBJ, 4, 0), e(OTHER, 0, 0)]);
        bad[6] = 9;
        assert!(parse(&bad).is_err());
        assert!(parse(&[1, 2, 3]).is_err());
    }

    #[test]
    fn access_follows_acl5() {
        // Owner 100 group 200; user 300 rw via a named entry, masked to r.
        let acl = vec![
            e(USER_OBJ, 7, 0),
            e(USER, 6, 300),
            e(GROUP_OBJ, 0, 0),
            e(GROUP, 2, 400),
            e(MASK, 4, 0),
            e(OTHER, 5, 0),
        ];
        let check = |c: &Caller, want| allowed(&acl, 100, 200, c, want);
        assert!(check(&user(100, 1, &[]), 7));
        assert!(check(&user(300, 1, &[]), 4));
        assert!(!check(&user(300, 1, &[]), 2), "mask limits a named user");
        assert!(!check(&user(500, 200, &[]), 4), "owning group has nothing");
        assert!(!check(&user(500, 1, &[400]), 2), "named group masked");
        assert!(
            !check(&user(500, 1, &[400]), 1),
            "a matched group denies, other is not used"
        );
        assert!(check(&user(600, 1, &[]), 5), "other");
    }

    #[test]
    fn chmod_and_inheritance() {
        let mut acl = vec![
            e(USER_OBJ, 7, 0),
            e(USER, 7, 300),
            e(GROUP_OBJ, 5, 0),
            e(MASK, 7, 0),
            e(OTHER, 5, 0),
        ];
        apply_mode(&mut acl, 0o640);
        assert_eq!(mode_of(&acl), 0o640);
        assert_eq!(
            perm_of(&acl, GROUP_OBJ),
            5,
            "chmod changes the mask, not the group entry"
        );
        let default = vec![
            e(USER_OBJ, 7, 0),
            e(GROUP, 7, 400),
            e(GROUP_OBJ, 5, 0),
            e(MASK, 7, 0),
            e(OTHER, 0, 0),
        ];
        let (child, mode) = inherit(&default, 0o666);
        assert_eq!(mode, 0o660);
        assert_eq!(child.len(), 5);
        let (plain, mode) = inherit(
            &[e(USER_OBJ, 7, 0), e(GROUP_OBJ, 5, 0), e(OTHER, 5, 0)],
            0o777,
        );
        assert!(plain.is_empty());
        assert_eq!(mode, 0o755);
    }
}
