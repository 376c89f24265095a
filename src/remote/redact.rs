//! What of a source may be shown: a URL without the parts where secrets live.

/// `true` for a source that names a remote object rather than a local path.
pub fn is_url(source: &str) -> bool {
    ["http://", "https://", "s3://", "hf://"].iter().any(|scheme| source.starts_with(scheme))
}

/// The URL as it may be shown (messages, `info.json`, the mount table): without user info and
/// query string, where credentials and signed tokens live.
pub fn redact(source: &str) -> String {
    // What a request would use is what the URL parser reads (it also takes `https:/user@host`).
    if let Ok(mut url) = url::Url::parse(source)
        && url.has_host()
    {
        let _ = (url.set_username(""), url.set_password(None));
        url.set_query(None);
        url.set_fragment(None);
        return url.to_string();
    }
    // Not a URL a request could use: cut by hand, and again if what is left parses.
    let (without_query, _) = source.split_once(['?', '#']).unwrap_or((source, ""));
    let cut = match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => without_query.to_string(),
    };
    if cut == source { cut } else { redact(&cut) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_shown() {
        assert_eq!(redact("https://user:pw@host:8443/a/b.h5?X-Amz-Signature=abc#frag"), "https://host:8443/a/b.h5");
        assert_eq!(redact("https://host/a@b/c"), "https://host/a@b/c");
        assert_eq!(redact("s3://bucket/key"), "s3://bucket/key");
    }
}
