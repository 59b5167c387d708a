//! A bound on how deeply the messages that contain themselves may nest
//! (`WriteOp::Delegated`, `WriteOp::Fenced`, `DelegatedOp`,
//! `NsReply::DelegatedThen`). Decoding recurses once per level: without a
//! bound, a frame of a few hundred KiB of nested variants overflows the
//! decoding thread's stack and aborts the daemon. Every field through which
//! a type reaches itself is decoded with `deserialize`, which counts the
//! levels open on this thread and refuses past `NESTING_MAX`.

use serde::{Deserialize, Deserializer};
use std::cell::Cell;

/// Levels of self-containing messages one decode may open (real messages
/// use at most three: a delegated batch, then a fenced commit).
pub const NESTING_MAX: u32 = 8;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Closes the level it opened, also when decoding fails or unwinds.
struct Level;

impl Drop for Level {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// `T::deserialize`, one level deeper; an error past `NESTING_MAX`.
pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let depth = DEPTH.with(|c| {
        let n = c.get() + 1;
        c.set(n);
        n
    });
    let _level = Level;
    if depth > NESTING_MAX {
        return Err(serde::de::Error::custom(format!(
            "messages nested deeper than {NESTING_MAX} levels"
        )));
    }
    T::deserialize(d)
}

#[cfg(test)]
mod tests {
    use crate::namespace::WriteOp;

    fn nested(levels: usize) -> Vec<u8> {
        let inner = postcard::to_allocvec(&WriteOp::Sync).expect("encode");
        let one = postcard::to_allocvec(&WriteOp::Fenced {
            epoch: 1,
            op: Box::new(WriteOp::Sync),
        })
        .expect("encode");
        let prefix = &one[..one.len() - inner.len()];
        let mut bytes = prefix.repeat(levels);
        bytes.extend_from_slice(&inner);
        bytes
    }

    /// A few hundred KiB of nesting is refused on a small stack instead of
    /// overflowing it; real depths decode; the counter is back at zero.
    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let deep = nested(300_000);
        let r = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || postcard::from_bytes::<WriteOp>(&deep).is_err())
            .expect("thread")
            .join();
        assert!(matches!(r, Ok(true)));
        let ok = postcard::from_bytes::<WriteOp>(&nested(3)).expect("three levels decode");
        assert!(matches!(ok, WriteOp::Fenced { .. }));
        assert!(postcard::from_bytes::<WriteOp>(&nested(9)).is_err());
        assert!(postcard::from_bytes::<WriteOp>(&nested(8)).is_ok());
    }
}
