//! Every fixture source's whole tree against a digest recorded from the code as it was when the
//! digest was recorded. This is a regression check, not a correctness check: it says "the tree
//! is byte-identical to what it was" (issue 20: restructuring must change no behaviour), never
//! "the tree is right" (the other tests compare with independent oracles for that).
//!
//! Sources: every file, symlink and directory under tests/fixtures (the family folders
//! themselves, gen/, the oracles and these records excepted) and every checkpoint prefix
//! (`X` for an `X.index` where no `X` exists). A source wfs mounts is digested through a real
//! FUSE mount: each entry in readdir order with its kind, size, content sha256 (files) or
//! target (symlinks), and its xattrs; `wfs ls -R -l` must list the same entries and sizes. A
//! source wfs refuses is recorded as its exit code and error line. The fixtures' absolute
//! directory (in info.json, `user.wfs.file`, error lines) is written as `$FIXTURES`, so the
//! digests do not depend on where the repository lies.
//!
//! tests/fixtures/tree_digests.tsv holds one digest per source; tree_digests.entries.tsv holds
//! each entry's short digests, so that a failure names the files that changed. After an
//! intended change of the tree, record again and commit both files:
//! `WFS_RECORD_DIGESTS=1 cargo test --release --test tree_digests`.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

const DIGESTS: &str = "tree_digests.tsv";
const ENTRIES: &str = "tree_digests.entries.tsv";
/// Files under tests/fixtures that are oracles, generators or records, not sources.
const NOT_SOURCES: [&str; 5] = [".expect.json", ".expect.npz", ".signatures.json", DIGESTS, ENTRIES];
/// Sources too large to walk through the mount on every run: their top level is digested
/// through the mount, everything below as `wfs ls -R -l` lists it (names, sizes, link targets).
const LISTING_ONLY: [(&str, &str); 1] = [("hostile/many_layers.h5", "200,000 entries: 30 s to walk through the mount, 2 s to list")];

/// One entry of a mounted tree.
struct Entry {
    path: String,
    /// 'd', 'f' or 'l'.
    kind: char,
    /// The size `stat` gives through the mount (what `wfs ls -l` prints).
    size: u64,
    /// Files: the normalized content's length and sha256; symlinks: the target; directories:
    /// the digest of everything below.
    content: String,
    /// Every xattr as `name=value`, `;`-separated ("-" when not read).
    xattrs: String,
}

impl Entry {
    fn full_line(&self) -> String {
        format!("{}\t{}\t{}\t{}", self.path, self.kind, self.content, self.xattrs)
    }

    /// The line of the entries record: short digests, enough to name what changed.
    fn short_line(&self, source: &str) -> String {
        let content = if self.kind == 'l' { self.content.clone() } else { short(&self.content) };
        format!("{source}\t{}\t{}\t{}\t{content}\t{}", self.path, self.kind, self.size, short(&self.xattrs))
    }
}

fn short(text: &str) -> String {
    if text.is_empty() { "-".to_string() } else { sha256_hex(text.as_bytes())[..12].to_string() }
}

/// What a source gives: a digest of its tree with the entries, or its refusal.
struct Outcome {
    digest: String,
    entries: Vec<String>,
}

#[test]
fn every_fixture_tree_matches_its_recorded_digest() {
    let fixtures = std::fs::canonicalize(fixture("")).unwrap();
    let mut sources = sources(&fixtures);
    // The slowest first, so that the others run beside it.
    sources.sort_by_key(|s| !LISTING_ONLY.iter().any(|(l, _)| l == s));
    let outcomes = Mutex::new(BTreeMap::new());
    let next = AtomicUsize::new(0);
    // FUSE reads wait on the daemon more than on the CPU: a few sources at a time.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while let Some(source) = sources.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let outcome = digest_source(&fixtures, source);
                    outcomes.lock().unwrap().insert(source.clone(), outcome);
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    let now_digests: String = outcomes.iter().map(|(s, o)| format!("{s}\t{}\n", o.digest)).collect();
    let now_entries: String = outcomes.values().flat_map(|o| &o.entries).map(|l| format!("{l}\n")).collect();
    if std::env::var_os("WFS_RECORD_DIGESTS").is_some_and(|v| v == "1") {
        std::fs::write(fixtures.join(DIGESTS), format!("source\tdigest\n{now_digests}")).unwrap();
        std::fs::write(fixtures.join(ENTRIES), format!("source\tpath\tkind\tsize\tcontent\txattrs\n{now_entries}")).unwrap();
        eprintln!("WFS_RECORD_DIGESTS=1: recorded {} sources into tests/fixtures/{DIGESTS} and {ENTRIES}", outcomes.len());
        return;
    }
    let recorded = |name: &str| {
        let text = std::fs::read_to_string(fixtures.join(name))
            .unwrap_or_else(|e| panic!("tests/fixtures/{name}: {e} (record it with WFS_RECORD_DIGESTS=1)"));
        text.lines().skip(1).map(str::to_string).collect::<Vec<_>>()
    };
    let was = by_source(&recorded(DIGESTS));
    let now = by_source(&now_digests.lines().map(str::to_string).collect::<Vec<_>>());
    let was_entries = by_source(&recorded(ENTRIES));
    let now_entries = by_source(&now_entries.lines().map(str::to_string).collect::<Vec<_>>());
    let mut report = String::new();
    for source in was.keys().chain(now.keys().filter(|s| !was.contains_key(*s))) {
        let (before, after) = (was.get(source), now.get(source));
        if before == after {
            continue;
        }
        let show = |d: Option<&Vec<String>>| d.map_or("(none)".to_string(), |d| d.join(""));
        writeln!(report, "{source}: recorded {}, now {}", show(before), show(after)).unwrap();
        report += &entry_changes(was_entries.get(source), now_entries.get(source));
    }
    assert!(
        report.is_empty(),
        "fixture trees differ from tests/fixtures/{DIGESTS}:\n{report}\
         If the change is intended, record again (WFS_RECORD_DIGESTS=1 cargo test --release --test tree_digests) and commit both files."
    );
}

/// Every source under `fixtures`, as a path relative to it, sorted.
fn sources(fixtures: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(fixtures.join(&dir)).unwrap() {
            let entry = entry.unwrap();
            let rel = dir.join(entry.file_name());
            let name = rel.to_str().unwrap().to_string();
            if entry.file_type().unwrap().is_dir() {
                if name == "gen" {
                    continue;
                }
                // A family folder (h5/, onnx/) only holds fixtures; deeper ones are sources.
                if dir.as_os_str() != "" {
                    found.push(name);
                }
                dirs.push(rel);
            } else if !NOT_SOURCES.iter().any(|s| name.ends_with(s)) {
                if let Some(prefix) = name.strip_suffix(".index").filter(|p| !fixtures.join(p).exists()) {
                    found.push(prefix.to_string());
                }
                found.push(name);
            }
        }
    }
    found.sort();
    found
}

fn digest_source(fixtures: &Path, source: &str) -> Outcome {
    let path = fixtures.join(source);
    let normalize = |bytes: &[u8]| replace(bytes, format!("{}/", fixtures.display()).as_bytes(), b"$FIXTURES/");
    let mount = match Mount::try_new(&path, &[]) {
        Ok(mount) => mount,
        Err(out) => {
            let stderr = normalize(&out.stderr);
            let line = String::from_utf8_lossy(&stderr).lines().rev().find(|l| !l.is_empty()).unwrap_or("").to_string();
            let code = out.status.code().map_or("signal".to_string(), |c| c.to_string());
            return Outcome { digest: format!("exit {code}: {line}"), entries: Vec::new() };
        }
    };
    let listing = wfs().args(["ls", "-R", "-l"]).arg(&path).output().unwrap();
    assert!(listing.status.success(), "wfs ls -R -l {source}: {}", String::from_utf8_lossy(&listing.stderr));
    let listing = String::from_utf8(listing.stdout).unwrap();
    let mut entries = Vec::new();
    if LISTING_ONLY.iter().any(|(s, _)| *s == source) {
        walk(&mount.point, "", Some(&listing), &normalize, &mut entries);
    } else {
        walk(&mount.point, "", None, &normalize, &mut entries);
        check_listing(source, &listing, &entries);
    }
    let full: String = entries.iter().map(|e| e.full_line() + "\n").collect();
    Outcome { digest: sha256_hex(full.as_bytes()), entries: entries.iter().map(|e| e.short_line(source)).collect() }
}

/// Appends the entries below `dir` (relative path `rel`) in readdir order, each directory
/// before what it holds (as `wfs ls -R` lists them). With a `listing` (a listing-only source),
/// only the top level is walked and a directory's content is its part of the listing.
fn walk(dir: &Path, rel: &str, listing: Option<&str>, normalize: &dyn Fn(&[u8]) -> Vec<u8>, out: &mut Vec<Entry>) {
    for item in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("readdir {rel:?}: {e}")) {
        let item = item.unwrap();
        let path = format!("{rel}{}", item.file_name().to_str().unwrap());
        let meta = std::fs::symlink_metadata(item.path()).unwrap();
        let xattrs = xattr_line(&item.path(), normalize);
        let at = out.len();
        let (kind, content) = if meta.is_symlink() {
            ('l', item.path().read_link().unwrap().to_str().unwrap().to_string())
        } else if meta.is_dir() {
            ('d', String::new())
        } else {
            let bytes = std::fs::read(item.path()).unwrap_or_else(|e| panic!("read {path}: {e}"));
            assert_eq!(bytes.len() as u64, meta.len(), "{path}: bytes read differ from the size stat gives");
            let bytes = normalize(&bytes);
            ('f', format!("{} {}", bytes.len(), sha256_hex(&bytes)))
        };
        out.push(Entry { path: path.clone(), kind, size: meta.len(), content, xattrs });
        if kind != 'd' {
            continue;
        }
        let below = match listing {
            Some(listing) => {
                // Each line is the size right-aligned in 12 columns, two spaces, the path.
                let prefix = format!("{path}/");
                listing.lines().filter(|l| l.get(14..).is_some_and(|p| p.starts_with(&prefix))).map(|l| format!("{l}\n")).collect()
            }
            None => {
                walk(&item.path(), &format!("{path}/"), None, normalize, out);
                out[at + 1..].iter().map(|e| e.full_line() + "\n").collect::<String>()
            }
        };
        out[at].content = sha256_hex(below.as_bytes());
    }
}

fn xattr_line(path: &Path, normalize: &dyn Fn(&[u8]) -> Vec<u8>) -> String {
    let shown: Vec<String> = xattrs(path)
        .into_iter()
        .map(|(name, value)| {
            let value = normalize(&value);
            let value = String::from_utf8(value.clone()).unwrap_or_else(|_| format!("0x{}", value.iter().map(|b| format!("{b:02x}")).collect::<String>()));
            format!("{name}={value}")
        })
        .collect();
    shown.join(";")
}

/// `wfs ls -R -l` (no mount) lists what the mount shows: the same entries, sizes and targets.
fn check_listing(source: &str, listing: &str, entries: &[Entry]) {
    let expected: Vec<String> = entries
        .iter()
        .map(|e| match e.kind {
            'd' => format!("{:>12}  {}/", e.size, e.path),
            'l' => format!("{:>12}  {} -> {}", e.size, e.path, e.content),
            _ => format!("{:>12}  {}", e.size, e.path),
        })
        .collect();
    let listed: Vec<&str> = listing.lines().collect();
    if let Some(i) = (0..expected.len().max(listed.len())).find(|&i| expected.get(i).map(String::as_str) != listed.get(i).copied()) {
        panic!("{source}: wfs ls -R -l line {i} is {:?}, the mount shows {:?}", listed.get(i), expected.get(i));
    }
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(i) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Record lines grouped by their first column.
fn by_source(lines: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let (source, rest) = line.split_once('\t').unwrap_or((line, ""));
        map.entry(source.to_string()).or_default().push(rest.to_string());
    }
    map
}

/// The entries of one source that were added, removed or changed, by path.
fn entry_changes(before: Option<&Vec<String>>, after: Option<&Vec<String>>) -> String {
    let by_path = |lines: Option<&Vec<String>>| -> BTreeMap<String, String> {
        lines.into_iter().flatten().map(|l| l.split_once('\t').map(|(p, r)| (p.to_string(), r.to_string())).unwrap()).collect()
    };
    let (before, after) = (by_path(before), by_path(after));
    let mut out = String::new();
    let changes = before.keys().chain(after.keys().filter(|p| !before.contains_key(*p))).filter(|p| before.get(*p) != after.get(*p));
    for (n, path) in changes.enumerate() {
        if n == 20 {
            out += "    ...\n";
            break;
        }
        let show = |m: &BTreeMap<String, String>| m.get(path).map_or("(absent)".to_string(), |r| r.replace('\t', " "));
        writeln!(out, "    {path}: was {}, now {}", show(&before), show(&after)).unwrap();
    }
    out
}
