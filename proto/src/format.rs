//! On-disk format versions. Every directory a daemon keeps state in holds
//! a `FORMAT` file, "sparefs KIND format N": a binary opens it only if it
//! knows format N of that kind. A directory without one predates versions
//! (every layout from then is still read) or is new; it is stamped with
//! this binary's format. A newer format is refused with a message saying
//! so, never read as if it were an older one; an older known format is
//! upgraded (today: restamped, nothing to convert).
//!
//! Owns: the FORMAT file. Must not touch: what the directory holds.

use std::io::Write;
use std::path::Path;

pub const FORMAT_FILE: &str = "FORMAT";

/// The meta replica's data directory (RocksDB: Raft log and state).
pub const META: (&str, u32) = ("meta", 1);
/// A chunkserver's directory (fragment files, versions 1 and 2 read).
pub const CHUNKSERVER: (&str, u32) = ("chunkserver", 2);
/// `sparefs up`'s cluster file (cluster.json, a "format" key).
pub const CLUSTER_FILE: (&str, u32) = ("cluster-file", 1);

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "{dir}: written by a newer sparefs ({kind} format {found}); this binary reads {kind} formats up to {known}: run the newer version"
    )]
    Newer {
        dir: String,
        kind: &'static str,
        found: u32,
        known: u32,
    },
    #[error("{dir}: this is a {found} directory, not a {kind} one")]
    OtherKind {
        dir: String,
        kind: &'static str,
        found: String,
    },
    #[error("{dir}/{FORMAT_FILE}: not a sparefs format stamp: {text:?}")]
    Unreadable { dir: String, text: String },
    #[error("{dir}/{FORMAT_FILE}: {source}")]
    Io { dir: String, source: std::io::Error },
}

/// The (kind, format) a stamp names.
fn parse(text: &str) -> Option<(String, u32)> {
    let mut words = text.split_whitespace();
    match (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) {
        (Some("sparefs"), Some(kind), Some("format"), Some(n), None) => {
            Some((kind.to_string(), n.parse().ok()?))
        }
        _ => None,
    }
}

/// Checks `dir`'s stamp against `(kind, known)`; stamps it with `known`
/// when it has none or an older one, unless `read_only`.
pub fn check_dir(
    dir: &Path,
    (kind, known): (&'static str, u32),
    read_only: bool,
) -> Result<(), FormatError> {
    let name = dir.display().to_string();
    let io = |source| FormatError::Io {
        dir: name.clone(),
        source,
    };
    let found = match std::fs::read_to_string(dir.join(FORMAT_FILE)) {
        Ok(text) => {
            let (k, n) = parse(&text).ok_or_else(|| FormatError::Unreadable {
                dir: name.clone(),
                text: text.chars().take(80).collect(),
            })?;
            if k != kind {
                return Err(FormatError::OtherKind {
                    dir: name,
                    kind,
                    found: k,
                });
            }
            Some(n)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    match found {
        Some(n) if n > known => Err(FormatError::Newer {
            dir: name,
            kind,
            found: n,
            known,
        }),
        Some(n) if n == known => Ok(()),
        _ if read_only => Ok(()),
        _ => stamp(dir, kind, known).map_err(io),
    }
}

/// Writes the stamp durably (a whole file renamed into place, the
/// directory synced).
fn stamp(dir: &Path, kind: &str, n: u32) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "sparefs {kind} format {n}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FORMAT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Refuses a document of `kind` (named `what`) that says it is in format
/// `found`, newer than `known`.
pub fn check_version(
    what: &str,
    (kind, known): (&'static str, u32),
    found: u32,
) -> Result<(), FormatError> {
    if found > known {
        return Err(FormatError::Newer {
            dir: what.to_string(),
            kind,
            found,
            known,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_stamped_then_checked_and_newer_or_other_kinds_refused() {
        let dir = std::env::temp_dir().join(format!("sparefs-format-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        // Read-only on an unstamped directory: nothing written.
        check_dir(&dir, META, true).expect("unstamped, read-only");
        assert!(!dir.join(FORMAT_FILE).exists());
        check_dir(&dir, META, false).expect("stamped");
        assert_eq!(
            std::fs::read_to_string(dir.join(FORMAT_FILE)).expect("read"),
            "sparefs meta format 1\n"
        );
        check_dir(&dir, META, false).expect("same format");
        let e = check_dir(&dir, CHUNKSERVER, false).expect_err("another kind");
        assert!(
            e.to_string()
                .contains("a meta directory, not a chunkserver one"),
            "{e}"
        );
        std::fs::write(dir.join(FORMAT_FILE), "sparefs meta format 7\n").expect("write");
        let e = check_dir(&dir, META, false).expect_err("newer");
        assert!(
            e.to_string().contains("newer sparefs (meta format 7)"),
            "{e}"
        );
        assert!(
            check_dir(&dir, META, true).is_err(),
            "read-only refuses too"
        );
        std::fs::write(dir.join(FORMAT_FILE), "garbage").expect("write");
        assert!(matches!(
            check_dir(&dir, META, false),
            Err(FormatError::Unreadable { .. })
        ));
        assert!(check_version("cluster.json", CLUSTER_FILE, 1).is_ok());
        assert!(check_version("cluster.json", CLUSTER_FILE, 2).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
