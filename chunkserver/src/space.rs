//! Sizes on the command line and free space of the host filesystem.

/// "10G", "512M", "1T", "4096" or "5%" (of the filesystem's size, given).
pub fn parse_size(s: &str, fs_bytes: u64) -> Result<u64, String> {
    let s = s.trim();
    // Digits and at most one decimal point: no sign, exponent, nan or inf
    // (f64's parser takes all of those).
    let plain = |n: &str| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && n.bytes().filter(|&b| b == b'.').count() <= 1
            && n != "."
    };
    if let Some(p) = s.strip_suffix('%') {
        if !plain(p) {
            return Err(format!(
                "bad percentage {s:?}: want a number from 0 to 100, then %"
            ));
        }
        let p: f64 = p.parse().map_err(|_| format!("bad percentage {s:?}"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("percentage {s:?} out of range: 0% to 100%"));
        }
        return Ok((fs_bytes as f64 * p / 100.0) as u64);
    }
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    if !plain(num) {
        return Err(format!(
            "bad size {s:?}: want a non-negative number with an optional K, M, G or T"
        ));
    }
    let n: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let bytes = n * mult as f64;
    // Past 2^63 bytes no disk is meant (and u64 would not hold 2^64).
    if !bytes.is_finite() || bytes >= 9.2e18 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(bytes as u64)
}

/// (total bytes, bytes available to unprivileged users) of the filesystem
/// holding `path`.
#[allow(unsafe_code)]
pub fn fs_space(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is a valid
    // NUL-terminated path for the duration of the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

/// syncfs(2) on the filesystem holding `dir`: one flush for every file
/// written since, instead of one fsync each.
#[allow(unsafe_code)]
pub fn syncfs(dir: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the whole call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("4096", 0), Ok(4096));
        assert_eq!(super::parse_size("2G", 0), Ok(2 << 30));
        assert_eq!(super::parse_size("1.5M", 0), Ok(1_572_864));
        for bad in [
            "-1G", "nan", "inf", "1e30", "1e3", "", ".", "1.2.3G", "9999999T", "-5%", "nan%",
            "101%", "G",
        ] {
            assert!(super::parse_size(bad, 1 << 40).is_err(), "{bad:?} accepted");
        }
        assert_eq!(super::parse_size("50%", 1000), Ok(500));
        assert_eq!(super::parse_size("10%", 1000), Ok(100));
        assert!(super::parse_size("ten", 0).is_err());
        assert!(super::parse_size("200%", 0).is_err());
    }
}
