//! File names as `sparefs fs ls` prints them for a person: quoted the way
//! GNU ls does on a terminal (`--quoting-style=shell-escape`), so a newline
//! cannot split a listing and a terminal escape sequence cannot reach the
//! terminal. Scripts take `--json` or `-0`, which keep the bytes.

/// `name` quoted for a shell and a terminal: as is when every byte is
/// harmless, in single quotes when only spaces or shell characters need
/// it, and with `$'\n'`-style pieces for control bytes and invalid UTF-8.
pub fn shell_escape(name: &[u8]) -> String {
    let harmless = |b: u8| b.is_ascii_alphanumeric() || b"%+,-./:=@_^".contains(&b);
    if !name.is_empty() && name.iter().all(|&b| harmless(b)) {
        return String::from_utf8_lossy(name).into_owned();
    }
    let text = std::str::from_utf8(name).ok();
    let printable = |c: char| !c.is_control();
    if let Some(t) = text {
        if t.chars().all(printable) && !t.contains('\'') {
            return format!("'{t}'");
        }
    }
    // Runs of printable characters in single quotes, everything else as
    // $'\xNN' (or \n, \t...).
    let mut out = String::new();
    let mut quoted = String::new();
    let flush = |out: &mut String, quoted: &mut String| {
        if !quoted.is_empty() {
            out.push('\'');
            out.push_str(quoted);
            out.push('\'');
            quoted.clear();
        }
    };
    let mut rest = name;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                let (v, b) = rest.split_at(e.valid_up_to());
                let bad_len = e.error_len().unwrap_or(b.len());
                (std::str::from_utf8(v).unwrap_or_default(), &b[..bad_len])
            }
        };
        for c in valid.chars() {
            if c == '\'' {
                flush(&mut out, &mut quoted);
                out.push_str("\\'");
            } else if printable(c) {
                quoted.push(c);
            } else {
                flush(&mut out, &mut quoted);
                let mut buf = [0u8; 4];
                out.push_str("$'");
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&escape_byte(b));
                }
                out.push('\'');
            }
        }
        if !bad.is_empty() {
            flush(&mut out, &mut quoted);
            out.push_str("$'");
            for &b in bad {
                out.push_str(&escape_byte(b));
            }
            out.push('\'');
        }
        rest = &rest[valid.len() + bad.len()..];
    }
    flush(&mut out, &mut quoted);
    out
}

fn escape_byte(b: u8) -> String {
    match b {
        b'\n' => "\\n".into(),
        b'\t' => "\\t".into(),
        b'\r' => "\\r".into(),
        0x1b => "\\E".into(),
        _ => format!("\\{b:03o}"),
    }
}

/// `name` for JSON: a string when it is UTF-8 (serde escapes control
/// characters), else its bytes.
pub fn json(name: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(name) {
        Ok(s) => serde_json::json!({ "name": s }),
        Err(_) => serde_json::json!({ "name_bytes": name }),
    }
}

#[cfg(test)]
mod tests {
    use super::shell_escape;

    #[test]
    fn names_cannot_break_a_listing_or_reach_the_terminal() {
        assert_eq!(shell_escape(b"plain.txt"), "plain.txt");
        assert_eq!(shell_escape(b"with space"), "'with space'");
        assert_eq!(shell_escape(b"a\nb"), "'a'$'\\n''b'");
        assert_eq!(shell_escape(b"\x1b[31mred"), "$'\\E''[31mred'");
        assert_eq!(shell_escape(b"it's"), "'it'\\''s'");
        assert_eq!(shell_escape(b"caf\xc3\xa9"), "'caf\u{e9}'");
        assert_eq!(shell_escape(b"bad\xff"), "'bad'$'\\377'");
        for n in [&b"a\nb"[..], b"\x1b]0;x\x07", b"\x9b31m", b"tab\there"] {
            let e = shell_escape(n);
            assert!(
                !e.bytes().any(|b| b < 0x20 || b == 0x7f),
                "{e:?} carries a control byte"
            );
        }
    }
}
