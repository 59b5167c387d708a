//! A directory's names in cookie order, packed for listing: one vector of
//! fixed-size slots and one buffer of name bytes, both in cookie order. A
//! page of a listing is then two contiguous copies, and reading it touches
//! memory in order (a map of boxed entries cost a cache miss or three per
//! name: ~50 us per thousand names on this machine).
//!
//! Owns: the order and bytes of the names. Must not touch: what the names
//! mean (deleg.rs decides what is in the directory).

use sparefs_proto::namespace::FileKind;
use sparefs_proto::InodeId;

#[derive(Clone, Copy, Debug)]
struct Slot {
    cookie: u64,
    ino: InodeId,
    /// Where the name starts in the buffer; it runs to the next slot's
    /// start (or the buffer's end).
    name_at: u32,
    kind: FileKind,
    /// Removed: skipped by listings until the next compaction.
    dead: bool,
}

/// Removed slots kept before a compaction is worth it.
const DEAD_KEPT: usize = 1024;

#[derive(Default)]
pub struct PackedNames {
    slots: Vec<Slot>,
    bytes: Vec<u8>,
    dead: usize,
}

/// One entry as a listing gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameRef<'a> {
    pub cookie: u64,
    pub ino: InodeId,
    pub kind: FileKind,
    pub name: &'a [u8],
}

/// A page copied out of a `PackedNames`: the live entries of a cookie range.
#[derive(Default, Debug)]
pub struct NamesPage {
    slots: Vec<Slot>,
    bytes: Vec<u8>,
}

fn name_of<'a>(slots: &[Slot], bytes: &'a [u8], i: usize) -> &'a [u8] {
    let start = slots[i].name_at as usize;
    let end = slots.get(i + 1).map_or(bytes.len(), |s| s.name_at as usize);
    bytes.get(start..end).unwrap_or_default()
}

impl NamesPage {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<NameRef<'_>> {
        let s = self.slots.get(i)?;
        Some(NameRef {
            cookie: s.cookie,
            ino: s.ino,
            kind: s.kind,
            name: name_of(&self.slots, &self.bytes, i),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = NameRef<'_>> {
        (0..self.slots.len()).filter_map(|i| self.get(i))
    }

    pub fn last(&self) -> Option<NameRef<'_>> {
        self.get(self.slots.len().checked_sub(1)?)
    }

    /// How many entries have cookies up to `cookie`.
    pub fn up_to(&self, cookie: u64) -> usize {
        self.slots.partition_point(|s| s.cookie <= cookie)
    }
}

impl PackedNames {
    /// Adds `name` with `cookie`, which must be above every cookie added so
    /// far (the meta hands them out counting up); `false` if it is not.
    pub fn push(&mut self, cookie: u64, ino: InodeId, kind: FileKind, name: &[u8]) -> bool {
        if self.slots.last().is_some_and(|s| s.cookie >= cookie) {
            return false;
        }
        let Ok(name_at) = u32::try_from(self.bytes.len()) else {
            return false;
        };
        self.slots.push(Slot {
            cookie,
            ino,
            name_at,
            kind,
            dead: false,
        });
        self.bytes.extend_from_slice(name);
        true
    }

    /// Removes the entry with `cookie`, if there is one.
    pub fn remove(&mut self, cookie: u64) {
        let Ok(i) = self.slots.binary_search_by_key(&cookie, |s| s.cookie) else {
            return;
        };
        if self.slots[i].dead {
            return;
        }
        self.slots[i].dead = true;
        self.dead += 1;
        if self.dead > DEAD_KEPT && self.dead * 2 > self.slots.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut slots = Vec::with_capacity(self.slots.len() - self.dead);
        let mut bytes = Vec::with_capacity(self.bytes.len());
        for (i, s) in self.slots.iter().enumerate() {
            if s.dead {
                continue;
            }
            let name = name_of(&self.slots, &self.bytes, i);
            slots.push(Slot {
                name_at: bytes.len() as u32,
                ..*s
            });
            bytes.extend_from_slice(name);
        }
        self.slots = slots;
        self.bytes = bytes;
        self.dead = 0;
    }

    /// Up to `limit` live entries with cookies above `after`, and whether
    /// any come after them.
    pub fn page(&self, after: u64, limit: usize) -> (NamesPage, bool) {
        let from = self.slots.partition_point(|s| s.cookie <= after);
        let mut page = NamesPage::default();
        let mut i = from;
        while i < self.slots.len() && page.slots.len() < limit {
            let s = self.slots[i];
            if !s.dead {
                let name = name_of(&self.slots, &self.bytes, i);
                page.slots.push(Slot {
                    name_at: page.bytes.len() as u32,
                    ..s
                });
                page.bytes.extend_from_slice(name);
            }
            i += 1;
        }
        let more = self.slots[i..].iter().any(|s| !s.dead);
        (page, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn names(page: &NamesPage) -> Vec<(u64, Vec<u8>)> {
        page.iter().map(|e| (e.cookie, e.name.to_vec())).collect()
    }

    #[test]
    fn cookies_only_count_up() {
        let mut p = PackedNames::default();
        assert!(p.push(5, InodeId(1), FileKind::File, b"a"));
        assert!(!p.push(5, InodeId(2), FileKind::File, b"b"));
        assert!(!p.push(4, InodeId(2), FileKind::File, b"b"));
        assert!(p.push(9, InodeId(2), FileKind::Dir, b"bb"));
        let (page, more) = p.page(0, 10);
        assert!(!more);
        assert_eq!(names(&page), vec![(5, b"a".to_vec()), (9, b"bb".to_vec())]);
        assert_eq!(
            page.get(1).map(|e| (e.ino, e.kind)),
            Some((InodeId(2), FileKind::Dir))
        );
        assert_eq!(page.up_to(5), 1);
    }

    proptest! {
        /// Pages of a packed list are what a plain ordered map gives, through
        /// removals and compactions.
        #[test]
        fn pages_match_an_ordered_map(
            ops in proptest::collection::vec((any::<bool>(), 0u16..3000, 1usize..20), 1..4000),
            after in 0u64..4000,
            limit in 1usize..600,
        ) {
            let mut p = PackedNames::default();
            let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut next = 3u64;
            for (add, pick, len) in ops {
                if add || model.is_empty() {
                    let name = vec![b'a' + (next % 26) as u8; len];
                    prop_assert!(p.push(next, InodeId(next), FileKind::File, &name));
                    model.insert(next, name);
                    next += 1;
                } else {
                    let k = *model.keys().nth(pick as usize % model.len()).expect("some");
                    model.remove(&k);
                    p.remove(k);
                }
            }
            let (page, more) = p.page(after, limit);
            let want: Vec<(u64, Vec<u8>)> = model
                .range(after + 1..)
                .take(limit)
                .map(|(c, n)| (*c, n.clone()))
                .collect();
            prop_assert_eq!(names(&page), want.clone());
            let rest = model.range(after + 1..).count();
            prop_assert_eq!(more, rest > want.len());
        }
    }
}
