//! What the benchmark programs share: where and under which name a
//! result table is written. Owns nothing of the system under test.

/// Writes `text` to OUT/PREFIX-YYYY-MM-DD.md and says where.
pub fn write_report(out: &str, prefix: &str, text: &str) -> std::io::Result<String> {
    std::fs::create_dir_all(out)?;
    let path = format!("{out}/{prefix}-{}.md", today());
    std::fs::write(&path, text)?;
    println!("written to {path}");
    Ok(path)
}

/// Today's date as `date +%F` prints it (`undated` if it cannot run).
pub fn today() -> String {
    let out = std::process::Command::new("date").arg("+%F").output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "undated".into())
}
