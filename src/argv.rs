//! The process's command line as every user sees it (`ps`, /proc/PID/cmdline): without the
//! secrets a source URL may hold.

use crate::remote::redact;

/// Overwrites, in the process's own argument memory, every argument holding a URL with user
/// info or a query (a password, a signature, a token) with its redacted form, padded with
/// spaces. The mount daemon is forked from this process and keeps the same memory for as long
/// as the mount lives. Call it once the arguments were copied: `std::env::args_os` reads this
/// same memory.
///
/// The memory is found where the kernel shows it from (the `arg_start` and `arg_end` fields of
/// /proc/self/stat) rather than through libc: it is the area /proc/PID/cmdline reads, whatever
/// the C library.
pub fn scrub_secrets() {
    let Some((start, end)) = argument_area() else { return };
    // SAFETY: the kernel reports [start, end) as this process's argument strings, which lie in
    // its initial stack mapping (readable and writable for the process's life); nothing holds a
    // Rust reference to them (std keeps raw pointers and copies the strings when asked).
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    for arg in area.split_mut(|&b| b == 0) {
        if let Some(shown) = shown_instead(arg) {
            overwrite(arg, &shown);
        }
    }
}

/// What to show instead of `arg`, if it holds a URL's secrets.
fn shown_instead(arg: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(arg).ok()?;
    let shown = redact(text);
    (text.contains("://") && shown != text).then_some(shown)
}

/// Writes `shown` over `arg` (cut at a character boundary if longer), spaces after it: the
/// argument keeps its length, so the others stay where they are.
fn overwrite(arg: &mut [u8], shown: &str) {
    let mut len = shown.len().min(arg.len());
    while !shown.is_char_boundary(len) {
        len -= 1;
    }
    arg[..len].copy_from_slice(&shown.as_bytes()[..len]);
    arg[len..].fill(b' ');
}

/// `[arg_start, arg_end)` from /proc/self/stat (fields 48 and 49, counted from 1; the second
/// field, the command name in parentheses, may itself hold spaces and parentheses).
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(48 - 3);
    let start: usize = fields.next()?.parse().ok()?;
    let end: usize = fields.next()?.parse().ok()?;
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_secrets_are_overwritten_in_place() {
        let mut arg = b"https://user:pw@host/m.gguf?token=abc".to_vec();
        let shown = shown_instead(&arg).unwrap();
        overwrite(&mut arg, &shown);
        assert_eq!(arg, b"https://host/m.gguf                  ");
        for plain in ["https://host/m.gguf", "model.gguf", "/mnt/x", "-o", "s3://bucket/key"] {
            assert_eq!(shown_instead(plain.as_bytes()), None, "{plain}");
        }
        // A redacted form longer than the argument (the parser percent-encodes) is cut.
        let mut arg = "http://h/é?q".as_bytes().to_vec();
        let shown = shown_instead(&arg).unwrap();
        overwrite(&mut arg, &shown);
        assert_eq!(arg, b"http://h/%C3%");
    }

    #[test]
    fn the_argument_area_holds_the_arguments() {
        let (start, end) = argument_area().unwrap();
        // SAFETY: read only, within the area the kernel reports.
        let area = unsafe { std::slice::from_raw_parts(start as *const u8, end - start) };
        let args: Vec<Vec<u8>> = std::env::args_os().map(|a| a.into_encoded_bytes()).collect();
        let joined: Vec<u8> = args.iter().flat_map(|a| a.iter().copied().chain([0])).collect();
        assert_eq!(area, joined);
    }
}
