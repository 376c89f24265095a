//! Every relative link in README.md and docs/**/*.md leads to a file of the repository, and a
//! `#anchor` to a heading of the file it names (GitHub's heading ids). Links into the web are
//! not followed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![repo.join("README.md")];
    markdown_below(&repo.join("docs"), &mut pages);
    let mut broken = Vec::new();
    let mut links = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let shown = page.strip_prefix(&repo).unwrap().display().to_string();
        for (line, target) in link_targets(&text) {
            links += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() { page.clone() } else { page.parent().unwrap().join(path) };
            if !file.exists() {
                broken.push(format!("{shown}:{line}: {target}: no such file"));
            } else if !anchor.is_empty() && file.extension().is_some_and(|e| e == "md") {
                let ids = heading_ids(&std::fs::read_to_string(&file).unwrap());
                if !ids.contains(anchor) {
                    broken.push(format!("{shown}:{line}: {target}: no heading #{anchor} in {}", file.file_name().unwrap().display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links ({} of {links}):\n{}", broken.len(), broken.join("\n"));
}

/// Every `.md` file below `dir` (none when it does not exist), sorted.
fn markdown_below(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            markdown_below(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// The lines of a page outside fenced code blocks, numbered from 1, with inline code removed
/// where `drop_code`.
fn prose_lines(text: &str, drop_code: bool) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Every other piece between backticks is code.
        let prose = if drop_code { line.split('`').step_by(2).collect::<Vec<_>>().join(" ") } else { line.to_string() };
        out.push((i + 1, prose));
    }
    out
}

/// The relative targets of inline links `[text](target "title")` and reference definitions
/// `[label]: target`, with their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for (number, line) in prose_lines(text, true) {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push((number, rest[..end].to_string()));
            rest = &rest[end..];
        }
        let trimmed = line.trim_start();
        if let Some((label, target)) = trimmed.strip_prefix('[').and_then(|l| l.split_once("]:")) {
            if !label.contains(']') {
                targets.push((number, target.to_string()));
            }
        }
    }
    targets
        .into_iter()
        .map(|(n, t)| (n, t.split_whitespace().next().unwrap_or("").trim_matches(['<', '>']).to_string()))
        .filter(|(_, t)| !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

/// The ids GitHub gives a page's headings: lower case, punctuation other than `-` and `_`
/// dropped, spaces as `-`, a repeated id suffixed `-1`, `-2`, ...
fn heading_ids(text: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for (_, line) in prose_lines(text, false) {
        let Some(title) = line.strip_prefix('#').map(|t| t.trim_start_matches('#')).filter(|t| t.starts_with(' ')) else {
            continue;
        };
        let id: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let unique = (0..).map(|n| if n == 0 { id.clone() } else { format!("{id}-{n}") }).find(|c| !ids.contains(c)).unwrap();
        ids.insert(unique);
    }
    ids
}
