//! The files beside a remote object: a directory of a store, its files opened once, and its
//! listing (S3 lists prefixes, the Hub's API lists repositories; a web server cannot list).

use super::failure::{answered, head_error, reason, unanswered};
use super::object::RemoteObject;
use super::runtime::handle;
use super::store::{RETRY_BACKOFF, Service, Store};
use super::redact::redact;
use crate::error::{OpenError, ReadError};
use crate::listing::{Entry, EntryKind};
use futures_util::StreamExt;
use object_store::ObjectStore;
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::path::Path as StorePath;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Largest directory listing read from the Hub's API (all its pages together).
const MAX_LISTING: u64 = 16 << 20;
/// Most pages of one Hub listing followed (the Hub pages 1000 entries at a time).
const MAX_LISTING_PAGES: usize = 1000;


/// The files beside a remote object: a store and a directory in it.
pub struct RemoteDir {
    pub(super) store: Arc<Store>,
    /// Segments of the directory's path in the store.
    pub(super) dir: Vec<String>,
    /// The directory's URL as shown (ends in `/`).
    shown: String,
    /// The directory's entries, listed once.
    listing: OnceLock<Vec<Entry>>,
    /// Subdirectories asked for so far, each listed at most once.
    subs: Mutex<HashMap<String, Arc<RemoteDir>>>,
    /// Files opened so far: readers that look at a file before opening it for good (a
    /// checkpoint's `.index`) cost one request and one cached first block, not two.
    opened: Mutex<HashMap<String, Arc<RemoteObject>>>,
}

impl RemoteDir {
    pub(super) fn new(store: Arc<Store>, dir: Vec<String>, shown: String) -> Arc<RemoteDir> {
        Arc::new(RemoteDir { store, dir, shown, listing: OnceLock::new(), subs: Mutex::default(), opened: Mutex::default() })
    }

    /// Opens the file `name` of this directory (a plain name, checked by the caller).
    pub fn open(&self, name: &str) -> Result<Arc<RemoteObject>, OpenError> {
        if let Some(object) = self.opened.lock().unwrap().get(name) {
            return Ok(object.clone());
        }
        let path = StorePath::from_iter(self.dir.iter().map(String::as_str).chain([name]));
        let object = RemoteObject::open(&self.store, path, self.shown(name))?;
        Ok(self.opened.lock().unwrap().entry(name.to_string()).or_insert(object).clone())
    }

    /// The subdirectory `name` (a plain name, checked by the caller).
    pub fn sub(&self, name: &str) -> Arc<RemoteDir> {
        let mut subs = self.subs.lock().unwrap();
        let sub = subs.entry(name.to_string()).or_insert_with(|| {
            let dir = self.dir.iter().cloned().chain([name.to_string()]).collect();
            RemoteDir::new(self.store.clone(), dir, format!("{}{name}/", self.shown))
        });
        sub.clone()
    }

    /// The directory's files and subdirectories: S3 lists them, the Hub's API does; a web
    /// server cannot.
    pub fn list(&self) -> Result<Vec<Entry>, OpenError> {
        if let Some(entries) = self.listing.get() {
            return Ok(entries.clone());
        }
        let listed = match &self.store.service {
            Service::S3 { .. } => self.list_s3(),
            #[cfg(test)]
            Service::Given(_) => self.list_s3(),
            Service::Http { hub: Some(kind), .. } => self.list_hub(kind),
            Service::Http { hub: None, .. } => {
                return Err(OpenError::unreadable(format!(
                    "{}: a web server does not list directories; name a file (a checkpoint's .index, a shard index) or use s3:// or hf://",
                    self.shown
                )));
            }
        };
        let entries = listed.map_err(|e| OpenError::unreadable(format!("listing {}: {e}", self.shown)))?;
        Ok(self.listing.get_or_init(|| entries).clone())
    }

    fn list_s3(&self) -> Result<Vec<Entry>, ReadError> {
        let prefix = StorePath::from_iter(self.dir.iter().map(String::as_str));
        let listed = self.store.block_on(async |c| c.list_with_delimiter(Some(&prefix)).await.map_err(|e| head_error(e, &self.store.peer)))?;
        let named = |path: &StorePath| path.filename().map(str::to_string);
        let dirs = listed.common_prefixes.iter().filter_map(named).map(|name| Entry { name, kind: EntryKind::Dir });
        let files = listed.objects.iter().filter_map(|o| named(&o.location)).map(|name| Entry { name, kind: EntryKind::File });
        Ok(dirs.chain(files).collect())
    }

    /// The Hub's tree API: `GET /api/KIND/ORG/REPO/tree/REV/PATH` answers a JSON array of
    /// `{"type": "file" | "directory", "path": ...}`, a page at a time: a `Link: <URL>;
    /// rel="next"` header names the next page. Pages are asked for with the store's options
    /// (token, roots, timeout) through object_store's client, which, unlike the store, shows
    /// the response's headers.
    fn list_hub(&self, kind: &str) -> Result<Vec<Entry>, ReadError> {
        let [org, repo, _resolve, rev, below @ ..] = &self.dir[hub_prefix(kind) - 4..] else { unreachable!("hf paths start [KIND/]ORG/REPO/resolve/REV") };
        let Service::Http { base, .. } = &self.store.service else { unreachable!("hf:// is served over HTTP") };
        let failed = |why: String| ReadError::Io(std::io::Error::other(why));
        let mut first = url::Url::parse(base).map_err(|e| failed(format!("HF_ENDPOINT: {e}")))?;
        first
            .path_segments_mut()
            .map_err(|_| failed("HF_ENDPOINT is not an http(s) URL".into()))?
            .pop_if_empty()
            .extend(["api", kind, org, repo, "tree", rev].into_iter().chain(below.iter().map(String::as_str)));
        let client = ReqwestConnector::default().connect(&self.store.client_options()).map_err(|e| failed(reason(&e, &self.store.peer)))?;
        let (mut entries, mut received, mut page) = (Vec::new(), 0u64, Some(first.clone()));
        for _ in 0..MAX_LISTING_PAGES {
            let Some(url) = page.take() else { return Ok(entries) };
            let (body, next) = handle()?.block_on(self.hub_page(&client, &url, MAX_LISTING - received))?;
            received += body.len() as u64;
            entries.extend(hub_entries(&body)?);
            if let Some(next) = next {
                let next = url.join(&next).map_err(|_| failed("the Hub's next page is not a URL".into()))?;
                // The token goes with every page: only to the server that was asked.
                if next.origin() != first.origin() {
                    return Err(failed(format!("the Hub's next page is on another server ({}): not followed", redact(next.as_str()))));
                }
                page = Some(next);
            }
        }
        Err(failed(format!("the Hub's listing has more than {MAX_LISTING_PAGES} pages")))
    }

    /// One page of a Hub listing, at most `limit` bytes, and the next page's URL if there is
    /// one; retried as the store's requests are.
    async fn hub_page(&self, client: &HttpClient, url: &url::Url, limit: u64) -> Result<(Vec<u8>, Option<String>), ReadError> {
        let failed = |why: String| ReadError::Io(std::io::Error::other(why));
        let mut wait = RETRY_BACKOFF;
        let mut attempt = 0;
        loop {
            let request = http::Request::get(url.as_str()).body(HttpRequestBody::empty()).map_err(|e| failed(e.to_string()))?;
            let error = match client.execute(request).await {
                Ok(response) if response.status().is_success() => {
                    let next = response.headers().get_all(http::header::LINK).iter().filter_map(|v| v.to_str().ok()).find_map(next_link);
                    let mut body = Vec::new();
                    let mut stream = response.into_body().bytes_stream();
                    while let Some(piece) = stream.next().await {
                        let piece = piece.map_err(|e| failed(unanswered(&e, &self.store.peer)))?;
                        if (body.len() + piece.len()) as u64 > limit {
                            return Err(failed(format!("a listing of more than {MAX_LISTING} bytes")));
                        }
                        body.extend_from_slice(&piece);
                    }
                    return Ok((body, next));
                }
                Ok(response) if response.status() == http::StatusCode::NOT_FOUND => {
                    return Err(ReadError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, "not found")));
                }
                Ok(response) if !(response.status().is_server_error() || response.status() == http::StatusCode::TOO_MANY_REQUESTS) => {
                    return Err(failed(answered(response.status(), &self.store.peer)));
                }
                Ok(response) => answered(response.status(), &self.store.peer),
                Err(e) => unanswered(&e, &self.store.peer),
            };
            if attempt == self.store.options.retries {
                return Err(failed(error));
            }
            attempt += 1;
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }

    /// How `name` in this directory is shown.
    pub fn shown(&self, name: &str) -> String {
        format!("{}{name}", self.shown)
    }
}

/// Path segments before a Hub repository's files: `[KIND/]ORG/REPO/resolve/REV`.
pub(super) fn hub_prefix(kind: &str) -> usize {
    if kind == "models" { 4 } else { 5 }
}

/// The entries of one page of the Hub's tree API.
fn hub_entries(body: &[u8]) -> Result<Vec<Entry>, ReadError> {
    let not_a_listing = || ReadError::Io(std::io::Error::other("the Hub's answer is not a listing"));
    let listing: serde_json::Value = serde_json::from_slice(body).map_err(|_| not_a_listing())?;
    let entries = listing.as_array().ok_or_else(not_a_listing)?.iter().filter_map(|entry| {
        let name = entry["path"].as_str()?.rsplit('/').next()?.to_string();
        let kind = match entry["type"].as_str()? {
            "directory" => EntryKind::Dir,
            "file" => EntryKind::File,
            _ => return None,
        };
        Some(Entry { name, kind })
    });
    Ok(entries.collect())
}

/// The target of a `Link` header's `rel="next"` link (RFC 8288: `<URL>; rel="next", <URL>;
/// rel="last"`; parameter values may be quoted strings holding `;` and `,`).
pub(crate) fn next_link(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        // The link's parameters run to the first comma outside a quoted string.
        let (mut params, mut start, mut quoted, mut end) = (Vec::new(), close + 1, false, rest.len());
        for (i, c) in rest.char_indices().skip_while(|&(i, _)| i <= close) {
            match c {
                '"' => quoted = !quoted,
                ';' | ',' if !quoted => {
                    params.push(&rest[start..i]);
                    start = i + 1;
                    if c == ',' {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        if end == rest.len() {
            params.push(&rest[start..]);
        }
        let is_next = params.iter().any(|param| {
            let Some((key, value)) = param.split_once('=') else { return false };
            key.trim().eq_ignore_ascii_case("rel") && value.trim().trim_matches('"').split_ascii_whitespace().any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(rest[open + 1..close].to_string());
        }
        rest = &rest[end..];
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_finds_the_next_page() {
        let next = |header| next_link(header);
        assert_eq!(next(r#"<https://hub/api/models/o/r/tree/main?cursor=abc>; rel="next""#).as_deref(), Some("https://hub/api/models/o/r/tree/main?cursor=abc"));
        assert_eq!(next(r#"<https://h/p?c=1>; rel="prev", <https://h/p?c=3>; rel="next""#).as_deref(), Some("https://h/p?c=3"));
        assert_eq!(next(r#"<https://h/a,b>; title="x, rel=next"; rel=last"#), None);
        assert_eq!(next("</p?c=2>; REL=next").as_deref(), Some("/p?c=2"));
        assert_eq!(next(r#"<https://h/p?c=2>; rel="last next""#).as_deref(), Some("https://h/p?c=2"));
        for header in ["", "<https://h/p", r#"<https://h/p>; rel="last""#, "rel=next", "<>; rel=prev"] {
            assert_eq!(next(header), None, "{header}");
        }
    }
}
