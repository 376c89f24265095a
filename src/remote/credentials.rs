//! Credentials given in a file (`--credentials-file`), so that they need never be on a
//! command line, where every user of the machine can read them.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Secrets for remote sources; each, when set, takes the place of the environment's.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `HF_TOKEN`: sent to the Hub (hf://) as a bearer token.
    pub hf_token: Option<String>,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`: sign S3 requests.
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
    /// `HTTP_USER`, `HTTP_PASSWORD`: basic authentication for http(s):// URLs without user info.
    pub http_user: Option<String>,
    pub http_password: Option<String>,
}

/// Why a credentials file was not used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path}: others may read or change it (mode {mode:03o}); make it private: chmod 600 {path}")]
    NotPrivate { path: String, mode: u32 },
    #[error("{path} line {line}: {reason}")]
    Malformed { path: String, line: usize, reason: String },
}

/// The names a credentials file may set.
const NAMES: &str = "HF_TOKEN, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, HTTP_USER, HTTP_PASSWORD";

impl Credentials {
    /// Reads `NAME=VALUE` lines (blank lines and `#` comments aside) from a file only its owner
    /// may read, as ssh requires of private keys.
    pub fn from_file(path: &Path) -> Result<Credentials, CredentialsError> {
        let shown = path.display().to_string();
        let unreadable = |e: std::io::Error| CredentialsError::Unreadable { path: shown.clone(), reason: crate::error::io_reason(&e) };
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        // The mode of the file opened, not of whatever the path names a moment later.
        let mode = file.metadata().map_err(unreadable)?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CredentialsError::NotPrivate { path: shown, mode });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(unreadable)?;
        Credentials::parse(&text).map_err(|(line, reason)| CredentialsError::Malformed { path: shown, line, reason })
    }

    /// The credentials in `text`, or the line (from 1) that is not a setting and why. The
    /// reason never holds a value.
    fn parse(text: &str) -> Result<Credentials, (usize, String)> {
        let mut credentials = Credentials::default();
        for (i, line) in text.lines().enumerate().map(|(i, line)| (i + 1, line.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else { return Err((i, format!("expected NAME=VALUE, NAME one of {NAMES}"))) };
            let (name, value) = (name.trim(), value.trim());
            let slot = match name {
                "HF_TOKEN" => &mut credentials.hf_token,
                "AWS_ACCESS_KEY_ID" => &mut credentials.aws_access_key_id,
                "AWS_SECRET_ACCESS_KEY" => &mut credentials.aws_secret_access_key,
                "AWS_SESSION_TOKEN" => &mut credentials.aws_session_token,
                "HTTP_USER" => &mut credentials.http_user,
                "HTTP_PASSWORD" => &mut credentials.http_password,
                _ => return Err((i, format!("unknown name {name:?}; the names are {NAMES}"))),
            };
            *slot = Some(value.to_string()).filter(|v| !v.is_empty());
        }
        Ok(credentials)
    }
}

/// Which credentials are set, never their values.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |value: &Option<String>| if value.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Credentials")
            .field("hf_token", &set(&self.hf_token))
            .field("aws_access_key_id", &set(&self.aws_access_key_id))
            .field("aws_secret_access_key", &set(&self.aws_secret_access_key))
            .field("aws_session_token", &set(&self.aws_session_token))
            .field("http_user", &set(&self.http_user))
            .field("http_password", &set(&self.http_password))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn settings_are_read_and_mistakes_named_without_values() {
        let text = "# wfs\n\nHF_TOKEN = hf_abc\nAWS_ACCESS_KEY_ID=AKIA\nAWS_SECRET_ACCESS_KEY=s3=cret\nHTTP_USER=alice\nHTTP_PASSWORD=pw\n";
        let c = Credentials::parse(text).unwrap();
        assert_eq!(c.hf_token.as_deref(), Some("hf_abc"));
        assert_eq!(c.aws_secret_access_key.as_deref(), Some("s3=cret"));
        assert_eq!((c.http_user.as_deref(), c.http_password.as_deref(), c.aws_session_token.as_deref()), (Some("alice"), Some("pw"), None));
        assert!(!format!("{c:?}").contains("hf_abc") && !format!("{c:?}").contains("s3=cret"));
        let (line, reason) = Credentials::parse("HF_TOKEN=x\nhf_token=s3cret\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(reason.starts_with("unknown name \"hf_token\"") && !reason.contains("s3cret"), "{reason}");
        let (line, reason) = Credentials::parse("\ns3cret\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(!reason.contains("s3cret"), "{reason}");
    }

    #[test]
    fn a_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(&path, "HF_TOKEN=hf_abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Credentials::from_file(&path).unwrap_err().to_string();
        assert_eq!(err, format!("{0}: others may read or change it (mode 644); make it private: chmod 600 {0}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Credentials::from_file(&path).unwrap().hf_token.as_deref(), Some("hf_abc"));
        let err = Credentials::from_file(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(err.ends_with("missing: No such file or directory"), "{err}");
    }
}
