//! Source URLs: which are remote, how they are shown (never with their secrets), and how
//! each scheme names a store, a directory in it and a file.

use super::dir::{RemoteDir, hub_prefix};
use super::redact::redact;
use super::store::{RemoteOptions, Service, Store};
use crate::cache::ChunkCache;
use crate::error::OpenError;
use base64::Engine;
use percent_encoding::percent_decode_str;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use std::sync::Arc;

/// A remote source: its directory and file name there.
pub struct RemoteSource {
    pub dir: Arc<RemoteDir>,
    pub name: String,
}

impl RemoteSource {
    /// Parses `http(s)://`, `s3://bucket/key` and `hf://org/repo[@rev]/path`.
    pub fn parse(source: &str, options: &RemoteOptions, cache: Arc<ChunkCache>) -> Result<RemoteSource, OpenError> {
        let bad = |why: &str| OpenError::unreadable(format!("not a usable URL: {why}"));
        let url = url::Url::parse(source).map_err(|e| bad(&e.to_string()))?;
        let mut segments: Vec<String> = url
            .path_segments()
            .map(|s| s.map(decoded).collect::<Result<_, _>>())
            .transpose()
            .map_err(|_| bad("the path is not UTF-8"))?
            .unwrap_or_default();
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host"))?.to_string();
        let (service, shown_base) = match url.scheme() {
            "http" | "https" => {
                // User info in the URL, else the credentials file's.
                let given = &options.credentials;
                let (user_password, mut sent) = if !url.username().is_empty() {
                    let user = decoded(url.username()).map_err(|_| bad("user name is not UTF-8"))?;
                    let password = decoded(url.password().unwrap_or_default()).map_err(|_| bad("password is not UTF-8"))?;
                    (Some((user, password)), Some("the URL's user name and password"))
                } else {
                    let user_password = given.http_user.clone().map(|user| (user, given.http_password.clone().unwrap_or_default()));
                    (user_password, given.http_user.as_ref().map(|_| "HTTP_USER and HTTP_PASSWORD of the credentials file"))
                };
                let mut headers = HeaderMap::new();
                if let Some((user, password)) = user_password {
                    headers.insert(AUTHORIZATION, secret_header(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))))?);
                }
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let base = format!("{}://{host}{port}", url.scheme());
                // The query goes with every request (a presigned URL's signature lives there);
                // it is never shown.
                let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
                if sent.is_none() && !query.is_empty() {
                    sent = Some("the URL's query: a signed URL's signature");
                }
                (Service::Http { base: format!("{base}{query}"), headers, hub: None, sent }, base)
            }
            "s3" => (Service::S3 { bucket: host.clone() }, format!("s3://{host}")),
            "hf" => {
                let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
                let endpoint = endpoint.trim_end_matches('/').to_string();
                let mut headers = HeaderMap::new();
                let token = match (&options.credentials.hf_token, std::env::var("HF_TOKEN")) {
                    (Some(token), _) => Some((token.clone(), "HF_TOKEN of the credentials file")),
                    (None, Ok(token)) if !token.is_empty() => Some((token, "HF_TOKEN")),
                    _ => None,
                };
                if let Some((token, _)) = &token {
                    headers.insert(AUTHORIZATION, secret_header(&format!("Bearer {token}"))?);
                }
                // hf://org/repo@rev/path: the host is the organisation; no path is the repo's top.
                // Datasets and spaces are written as huggingface_hub writes them:
                // hf://datasets/org/repo@rev/path.
                let usage = "expected hf://[datasets/|spaces/]ORG/REPO[@REVISION][/PATH]";
                let kind = match host.as_str() {
                    "datasets" => "datasets",
                    "spaces" => "spaces",
                    _ => "models",
                };
                let org = if kind == "models" { host.clone() } else { segments.drain(..1.min(segments.len())).next().unwrap_or_default() };
                if segments.is_empty() || org.is_empty() {
                    return Err(bad(usage));
                }
                let repo_rev = segments.remove(0);
                // A revision may hold a `/` (`refs/pr/1`, written `refs%2Fpr%2F1`).
                let (repo, rev) = repo_rev.split_once('@').unwrap_or((&repo_rev, "main"));
                if repo.is_empty() || rev.is_empty() || repo.contains('/') || org.contains('/') {
                    return Err(bad(usage));
                }
                if segments.is_empty() {
                    segments.push(String::new());
                }
                // The Hub serves models at /ORG/REPO/resolve/REV/PATH, the others below /KIND/.
                let mut path: Vec<String> = if kind == "models" { vec![] } else { vec![kind.to_string()] };
                let shown = format!("hf://{}/{repo_rev}", path.iter().chain([&org]).cloned().collect::<Vec<_>>().join("/"));
                path.extend([org, repo.to_string(), "resolve".into(), rev.to_string()]);
                path.append(&mut segments);
                segments = path;
                (Service::Http { base: redact(&endpoint), headers, hub: Some(kind), sent: token.map(|(_, sent)| sent) }, shown)
            }
            other => return Err(bad(&format!("unknown scheme {other}"))),
        };
        let name = segments.pop().unwrap_or_default();
        // The segments the user wrote (the Hub's prefix is ours): shown, and plain names.
        let written = match &service {
            Service::Http { hub: Some(kind), .. } => &segments[hub_prefix(kind)..],
            _ => &segments[..],
        };
        if written.iter().chain([&name]).any(|s| s.contains('/')) {
            return Err(bad("an encoded / (%2F) inside a path segment"));
        }
        let shown_dir = format!("{shown_base}/{}", written.iter().map(|s| format!("{s}/")).collect::<String>());
        let store = Store::new(service, options, cache);
        Ok(RemoteSource { dir: RemoteDir::new(store, segments, shown_dir), name })
    }
}

/// A percent-encoded part of a URL, decoded.
fn decoded(part: &str) -> Result<String, std::str::Utf8Error> {
    percent_decode_str(part).decode_utf8().map(|s| s.into_owned())
}

fn secret_header(value: &str) -> Result<HeaderValue, OpenError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| OpenError::unreadable("credentials hold characters a header cannot"))?;
    header.set_sensitive(true);
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn urls_name_directory_and_file() {
        let options = RemoteOptions { timeout: Duration::from_secs(1), retries: 0, deadline: Duration::from_secs(1), credentials: Default::default() };
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let s = RemoteSource::parse("https://u:p@h:1/d/e%20f/m.h5?t=1", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir.clone(), s.name.as_str(), s.dir.shown("x")), (vec!["d".to_string(), "e f".into()], "m.h5", "https://h:1/d/e f/x".into()));
        assert!(matches!(&s.dir.store.service, Service::Http { headers, .. } if headers[AUTHORIZATION].is_sensitive()));
        let s = RemoteSource::parse("hf://org/repo@v1/sub/w.safetensors", &options, cache.clone()).unwrap();
        assert_eq!(s.dir.dir, ["org", "repo", "resolve", "v1", "sub"]);
        assert_eq!(s.dir.shown("w"), "hf://org/repo@v1/sub/w");
        let s = RemoteSource::parse("s3://bucket/k/ckpt.index", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir.clone(), s.name.as_str()), (vec!["k".to_string()], "ckpt.index"));
        // The top of a repository, and a revision with a `/`.
        let s = RemoteSource::parse("hf://org/repo", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir.clone(), s.name.as_str(), s.dir.shown("x")), (vec!["org".to_string(), "repo".into(), "resolve".into(), "main".into()], "", "hf://org/repo/x".into()));
        let s = RemoteSource::parse("hf://org/repo@refs%2Fpr%2F1/w.gguf", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir[3].as_str(), s.name.as_str()), ("refs/pr/1", "w.gguf"));
        // Datasets and spaces, as huggingface_hub writes them.
        let s = RemoteSource::parse("hf://datasets/org/data@v2/ckpt/m.h5", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir.clone(), s.name.as_str()), (["datasets", "org", "data", "resolve", "v2", "ckpt"].map(String::from).to_vec(), "m.h5"));
        assert_eq!(s.dir.shown("m.h5"), "hf://datasets/org/data@v2/ckpt/m.h5");
        assert!(matches!(s.dir.store.service, Service::Http { hub: Some("datasets"), .. }));
        let s = RemoteSource::parse("hf://spaces/org/app", &options, cache.clone()).unwrap();
        assert_eq!((s.dir.dir.clone(), s.name.as_str(), s.dir.shown("x")), (["spaces", "org", "app", "resolve", "main"].map(String::from).to_vec(), "", "hf://spaces/org/app/x".into()));
        for bad in ["hf://org", "hf://org/a%2Fb@x/y", "s3:///key", "ftp://h/x", "https://h/a%2Fb/c", "hf://org/repo/a%2Fb", "hf://datasets", "hf://datasets/org", "hf://datasets/a%2Fb/c"] {
            assert!(RemoteSource::parse(bad, &options, cache.clone()).is_err(), "{bad}");
        }
    }
}
