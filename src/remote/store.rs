//! One server or bucket: what a request to it needs (headers, credentials, roots, retries)
//! and its client, rebuilt after the runtime was stopped.

use super::credentials::Credentials;
use super::failure::{Peer, reason};
use super::runtime::{GENERATION, handle};
use crate::cache::ChunkCache;
use crate::error::ReadError;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::http::HttpBuilder;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use reqwest::header::HeaderMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The first wait before a failed request is retried; it doubles with each retry.
pub(super) const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// How requests behave.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Longest a request may take before it is retried (and the read fails once retries run out).
    pub timeout: Duration,
    /// Retries of a failed request, with exponential backoff.
    pub retries: usize,
    /// Longest one read may take in all, however many requests and retries it needs.
    pub deadline: Duration,
    /// Credentials given in a file, before those of the environment.
    pub credentials: Credentials,
}

/// Which service a store talks to, with what it needs to (re)build its client.
#[derive(Debug)]
pub(super) enum Service {
    /// A web server: `base` is `scheme://host[:port]` (with the URL's query, if any). On the
    /// Hub (`hub`: the kind of repository, `models`, `datasets` or `spaces`), directories are
    /// listed by its API. `sent` names the credentials in `base` and `headers`, if any.
    Http { base: String, headers: HeaderMap, hub: Option<&'static str>, sent: Option<&'static str> },
    S3 { bucket: String },
    /// A store made by a test (object_store's in-memory store), listed as S3 is.
    #[cfg(test)]
    Given(Arc<dyn ObjectStore>),
}

/// One server or bucket, its client and the cache its objects' blocks go to.
pub struct Store {
    pub(super) service: Service,
    pub(super) options: RemoteOptions,
    pub(super) cache: Arc<ChunkCache>,
    /// The server, as failures name it.
    pub(super) peer: Peer,
    client: Mutex<Option<(u64, Arc<dyn ObjectStore>)>>,
}

impl Store {
    pub(super) fn new(service: Service, options: &RemoteOptions, cache: Arc<ChunkCache>) -> Arc<Store> {
        let peer = Store::peer(&service, options);
        Arc::new(Store { service, options: options.clone(), cache, peer, client: Mutex::new(None) })
    }

    fn peer(service: &Service, options: &RemoteOptions) -> Peer {
        let host_of = |url: &str| url::Url::parse(url).ok().and_then(|u| Some(format!("{}{}", u.host_str()?, u.port().map(|p| format!(":{p}")).unwrap_or_default())));
        let (host, sent, hint) = match service {
            Service::Http { base, sent, hub, .. } => {
                let hint = if hub.is_some() { "set HF_TOKEN, or give it in a --credentials-file" } else { "give HTTP_USER and HTTP_PASSWORD in a --credentials-file" };
                (host_of(base), *sent, hint)
            }
            #[cfg(test)]
            Service::Given(_) => (Some("memory".into()), None, "none"),
            Service::S3 { .. } => {
                let endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"].iter().find_map(|var| std::env::var(var).ok());
                let profile = aws_profile();
                let endpoint = endpoint.or_else(|| profile.iter().find(|(key, _)| *key == AmazonS3ConfigKey::Endpoint).map(|(_, value)| value.clone()));
                let keys = options.credentials.aws_access_key_id.is_some()
                    || std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
                    || profile.iter().any(|(key, _)| *key == AmazonS3ConfigKey::AccessKeyId);
                let hint = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, an AWS profile, or give them in a --credentials-file";
                (Some(endpoint.and_then(|e| host_of(&e)).unwrap_or_else(|| "S3".into())), keys.then_some("AWS keys"), hint)
            }
        };
        let host = host.unwrap_or_else(|| "the server".into());
        Peer { host, sent, hint, timeout: options.timeout, retries: options.retries, deadline: options.deadline }
    }

    /// The client of the current runtime generation, built on first use.
    pub(super) fn client(&self) -> Result<Arc<dyn ObjectStore>, ReadError> {
        let generation = GENERATION.load(Ordering::SeqCst);
        let mut client = self.client.lock().unwrap();
        if let Some((_, c)) = client.as_ref().filter(|(built, _)| *built == generation) {
            return Ok(c.clone());
        }
        let built = self.build().map_err(|e| ReadError::Io(std::io::Error::other(reason(&e, &self.peer))))?;
        *client = Some((generation, built.clone()));
        Ok(built)
    }

    /// What every request to this store is sent with: timeouts, trusted roots, and on a web
    /// server the credential headers.
    pub(super) fn client_options(&self) -> ClientOptions {
        // rustls needs a process-wide crypto provider; a second install is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = self.options.timeout;
        let client = ClientOptions::new().with_timeout(timeout).with_connect_timeout(timeout).with_allow_http(true);
        let client = system_roots().iter().fold(client.with_no_system_certificates(true), |c, root| c.with_root_certificate(root.clone()));
        match &self.service {
            Service::Http { headers, .. } => client.with_default_headers(headers.clone()),
            Service::S3 { .. } => client,
            #[cfg(test)]
            Service::Given(_) => client,
        }
    }

    fn build(&self) -> object_store::Result<Arc<dyn ObjectStore>> {
        let client = self.client_options();
        let timeout = self.options.timeout;
        let retry = RetryConfig {
            backoff: BackoffConfig { init_backoff: RETRY_BACKOFF, max_backoff: Duration::from_secs(2), base: 2.0 },
            max_retries: self.options.retries,
            retry_timeout: timeout.saturating_mul(self.options.retries as u32 + 1),
        };
        Ok(match &self.service {
            Service::Http { base, .. } => Arc::new(HttpBuilder::new().with_url(base.as_str()).with_client_options(client).with_retry(retry).build()?),
            #[cfg(test)]
            Service::Given(store) => store.clone(),
            Service::S3 { bucket } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (key, value) in aws_profile().into_iter().chain(self.given_aws_credentials()) {
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.with_client_options(client).with_retry(retry).build()?)
            }
        })
    }

    /// The AWS settings of `--credentials-file`, which take the place of the environment's.
    fn given_aws_credentials(&self) -> Vec<(AmazonS3ConfigKey, String)> {
        let Credentials { aws_access_key_id, aws_secret_access_key, aws_session_token, .. } = &self.options.credentials;
        let given = [(AmazonS3ConfigKey::AccessKeyId, aws_access_key_id), (AmazonS3ConfigKey::SecretAccessKey, aws_secret_access_key), (AmazonS3ConfigKey::Token, aws_session_token)];
        given.into_iter().filter_map(|(key, value)| Some((key, value.clone()?))).collect()
    }

    /// Runs `request` to its end or the read deadline, whichever comes first.
    pub(super) fn block_on<T>(&self, request: impl AsyncFnOnce(Arc<dyn ObjectStore>) -> Result<T, ReadError>) -> Result<T, ReadError> {
        let client = self.client()?;
        handle()?.block_on(async { tokio::time::timeout(self.options.deadline, request(client)).await }).unwrap_or_else(|_| Err(self.peer.past_deadline()))
    }
}

/// The system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set), the ones
/// reqwest's platform verifier would read for every client. Read once per process instead: the
/// mount daemon inherits them across the fork, so its first read does not wait the few
/// milliseconds that reading and decoding some 150 files takes.
fn system_roots() -> &'static [object_store::Certificate] {
    static ROOTS: OnceLock<Vec<object_store::Certificate>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs.iter().filter_map(|der| object_store::Certificate::from_der(der).ok()).collect())
}

/// Settings of the AWS profile (`AWS_PROFILE`, else `default`) from the shared config and
/// credentials files, for what the environment does not set itself.
fn aws_profile() -> Vec<(AmazonS3ConfigKey, String)> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_default();
    let file = |var: &str, name: &str| std::env::var_os(var).map(std::path::PathBuf::from).unwrap_or_else(|| home.join(".aws").join(name));
    // The config file names sections `[profile NAME]` (except `[default]`), credentials `[NAME]`.
    let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    let mut settings = ini_section(&file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), &profile);
    settings.extend(ini_section(&file("AWS_CONFIG_FILE", "config"), &config_section));
    let mut out = Vec::new();
    for (name, value) in settings {
        let (key, env): (_, &[&str]) = match name.as_str() {
            "aws_access_key_id" => (AmazonS3ConfigKey::AccessKeyId, &["AWS_ACCESS_KEY_ID"]),
            "aws_secret_access_key" => (AmazonS3ConfigKey::SecretAccessKey, &["AWS_SECRET_ACCESS_KEY"]),
            "aws_session_token" => (AmazonS3ConfigKey::Token, &["AWS_SESSION_TOKEN"]),
            "region" => (AmazonS3ConfigKey::Region, &["AWS_REGION", "AWS_DEFAULT_REGION"]),
            "endpoint_url" => (AmazonS3ConfigKey::Endpoint, &["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
            _ => continue,
        };
        if env.iter().all(|var| std::env::var_os(var).is_none()) && !out.iter().any(|(k, _)| *k == key) {
            out.push((key, value));
        }
    }
    out
}

/// `key = value` lines of section `[name]` of an INI file (empty if the file or section is missing).
fn ini_section(path: &std::path::Path, name: &str) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let mut inside = false;
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == name;
        } else if let (true, Some((key, value))) = (inside, line.split_once('=')) {
            found.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_sections_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "[other]\naws_access_key_id = NO\n[default]\naws_access_key_id = AKIA\n aws_secret_access_key=s3cr3t \n").unwrap();
        assert_eq!(ini_section(&path, "default"), [("aws_access_key_id".to_string(), "AKIA".to_string()), ("aws_secret_access_key".into(), "s3cr3t".into())]);
        assert!(ini_section(&path, "missing").is_empty());
    }
}
