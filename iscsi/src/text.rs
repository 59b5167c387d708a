//! Text keys (RFC 7143 §6): `key=value` pairs separated by NUL bytes, as
//! login and text PDUs carry them.

/// Parses a data segment into pairs, in order. A pair without `=` is kept
/// with an empty value marked `None` so the caller can reject it.
pub fn parse(data: &[u8]) -> Vec<(String, Option<String>)> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = String::from_utf8_lossy(s);
            match s.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (s.to_string(), None),
            }
        })
        .collect()
}

pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parses a numerical value: decimal, `0x` hex.
pub fn number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// Decodes a binary value: `0x` hex or `0b` base64 (§6.1).
pub fn binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if !h.is_ascii() {
            return None;
        }
        let h = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
            .collect()
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(b).ok()
    } else {
        None
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pairs_and_values() {
        let p = parse(b"InitiatorName=iqn.x\0SessionType=Normal\0junk\0\0");
        assert_eq!(p.len(), 3);
        assert_eq!(p[0], ("InitiatorName".into(), Some("iqn.x".into())));
        assert_eq!(p[2], ("junk".into(), None));
        assert_eq!(number("0x10"), Some(16));
        assert_eq!(number("262144"), Some(262144));
        assert_eq!(binary("0x0a0B"), Some(vec![10, 11]));
        assert_eq!(binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(binary("zz"), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }
        #[test]
        fn binary_never_panics(s in "\\PC{0,40}") {
            let _ = binary(&s);
            let _ = number(&s);
        }
    }
}
