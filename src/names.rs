//! Making source names safe as path components (docs/tree.md 3).

/// Longest component most Linux filesystems (and the kernel's NAME_MAX) accept.
const NAME_MAX: usize = 255;

/// A deterministic 64-bit FNV-1a hash: stable across runs and platforms, unlike std's hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Turns one source name component into a safe file name: `.`/`..` and the empty name are
/// encoded, control characters and `%` percent-encoded, and over-long names cut with a hash
/// suffix. `/` never reaches here because names are split on it first, but is encoded too.
pub fn sanitize(name: &str) -> String {
    sanitize_within(name, NAME_MAX)
}

/// `sanitize`, cut to `max` bytes (room for a suffix such as `.shape`).
pub fn sanitize_within(name: &str, max: usize) -> String {
    match name {
        "" => return "%00".to_string(),
        "." => return "%2E".to_string(),
        ".." => return "%2E%2E".to_string(),
        _ => {}
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() || c == '%' || c == '/' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.len() > max {
        out = shorten(&out, max);
    }
    out
}

/// Cuts `name` to at most `max` bytes on a char boundary, ending in `~` and 16 hex digits of
/// the full name's hash so that different long names stay different.
pub fn shorten(name: &str, max: usize) -> String {
    let mut suffix = format!("~{:016x}", fnv1a(name.as_bytes()));
    // A limit below the suffix's own length keeps as much of the hash as fits.
    suffix.truncate(max);
    let mut cut = max.saturating_sub(suffix.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &name[..cut], suffix)
}

/// Splits a source path on `/` into components, dropping empty ones (`a//b`, leading `/`).
pub fn split_path(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_and_controls_are_encoded() {
        assert_eq!(sanitize("."), "%2E");
        assert_eq!(sanitize(".."), "%2E%2E");
        assert_eq!(sanitize("..."), "...");
        assert_eq!(sanitize("a\nb"), "a%0Ab");
        assert_eq!(sanitize("a\tb%c"), "a%09b%25c");
        assert_eq!(sanitize("a\0b"), "a%00b");
        assert_eq!(sanitize("a/b"), "a%2Fb");
        assert_eq!(sanitize(""), "%00");
        assert_eq!(sanitize("kernel:0"), "kernel:0");
    }

    #[test]
    fn long_names_are_cut_with_distinct_hashes() {
        let a = "x".repeat(300);
        let b = format!("{}y", "x".repeat(299));
        let (sa, sb) = (sanitize(&a), sanitize(&b));
        assert!(sa.len() <= 255 && sb.len() <= 255);
        assert_ne!(sa, sb);
        assert_eq!(sa, sanitize(&a));
        let multibyte = "é".repeat(200);
        assert!(sanitize(&multibyte).len() <= 255);
        assert!(sanitize_within(&a, 249).len() <= 249);
    }

    /// Regression (found by fuzzing): a limit below the 17-byte hash suffix was exceeded.
    #[test]
    fn tiny_limits_are_honoured() {
        for max in 1..20 {
            assert!(sanitize_within(&"\u{0}".repeat(8), max).len() <= max, "{max}");
        }
    }

    #[test]
    fn split_drops_empty_components() {
        assert_eq!(split_path("/a//b/"), vec!["a", "b"]);
    }
}
