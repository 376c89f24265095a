//! Request failures as the one line a user reads: what failed, on which server, whether
//! credentials were sent and what to do. The library's whole account goes to the log (`-v`).

use super::redact::redact;
use crate::error::ReadError;
use object_store::client::{HttpError, HttpErrorKind};
use reqwest::StatusCode;
use std::time::Duration;

/// The server a store's requests go to, as a failure names it.
#[derive(Debug)]
pub(super) struct Peer {
    /// `host[:port]`, or the service (S3 without an endpoint of its own).
    pub host: String,
    /// The credentials requests carry, as the user gave them ("HF_TOKEN"), if any.
    pub sent: Option<&'static str>,
    /// How to give credentials to this kind of server.
    pub hint: &'static str,
    pub timeout: Duration,
    pub retries: usize,
    pub deadline: Duration,
}

impl Peer {
    /// A read that did not get its bytes within the deadline.
    pub(super) fn past_deadline(&self) -> ReadError {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{} did not send the bytes asked for within {} s (--read-timeout)", self.host, self.deadline.as_secs()),
        ))
    }
}

/// A failure of a request that reads no object yet (a first block, a listing): a 404 is the
/// source missing.
pub(super) fn head_error(e: object_store::Error, peer: &Peer) -> ReadError {
    match e {
        object_store::Error::NotFound { .. } => {
            log::info!("{}: {}", peer.host, chain(&e));
            ReadError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, format!("not found ({} answered 404 Not Found)", peer.host)))
        }
        other => ReadError::Io(std::io::Error::other(reason(&other, peer))),
    }
}

/// A failure of a request for an object's bytes: a 404 or a failed If-Match is the object
/// changed since mount.
pub(super) fn read_error(e: object_store::Error, peer: &Peer) -> ReadError {
    match e {
        object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => {
            log::info!("{}: {}", peer.host, chain(&e));
            ReadError::SourceChanged
        }
        other => ReadError::Io(std::io::Error::other(reason(&other, peer))),
    }
}

/// A request failure in one line. The URLs in it carry no secrets: user info and query
/// strings never reach the client, and tokens travel in headers.
pub(super) fn reason(e: &object_store::Error, peer: &Peer) -> String {
    log::info!("{}: {}", peer.host, chain(e));
    let status = match e {
        object_store::Error::NotSupported { .. } => {
            return "the server ignores Range requests (wfs reads remote files in ranges and never downloads them whole)".into();
        }
        object_store::Error::NotFound { .. } => Some(StatusCode::NOT_FOUND),
        object_store::Error::Unauthenticated { .. } => Some(StatusCode::UNAUTHORIZED),
        object_store::Error::PermissionDenied { .. } => Some(StatusCode::FORBIDDEN),
        _ => status_in(e),
    };
    if let Some(status) = status {
        return answered(status, peer);
    }
    unanswered(e, peer)
}

/// A request that got no answer (or none that tells the status): why, in one line.
pub(super) fn unanswered(e: &(dyn std::error::Error + 'static), peer: &Peer) -> String {
    match causes(e).find_map(|cause| cause.downcast_ref::<HttpError>()).map(HttpError::kind) {
        Some(HttpErrorKind::Timeout) => format!("{} did not answer within {} s (--timeout), {} tries", peer.host, peer.timeout.as_secs(), peer.retries + 1),
        Some(HttpErrorKind::Connect) => format!("cannot connect to {}: {}", peer.host, innermost(e)),
        _ => innermost(e),
    }
}

/// What a server's answer `status` means to the user.
pub(super) fn answered(status: StatusCode, peer: &Peer) -> String {
    let credentials = match (status, peer.sent) {
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(sent)) => format!(" to the credentials sent ({sent})"),
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, None) => format!("; no credentials were sent: {}", peer.hint),
        _ => String::new(),
    };
    format!("{} answered {status}{credentials}", peer.host)
}

/// An error and its causes, outermost first.
fn causes<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// The status of an answer that object_store has no error of its own for (a 5xx after its
/// retries): its request error shows it only in its message.
fn status_in(e: &object_store::Error) -> Option<StatusCode> {
    causes(e).find_map(|cause| cause.to_string().strip_prefix("Server returned non-2xx status code: ")?.get(..3)?.parse().ok())
}

/// The deepest cause of `e`, which says what went wrong without the wrappers' internals
/// (an I/O error without its "(os error N)"), URLs in it redacted.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let deepest = causes(e).last().expect("at least the error itself");
    let text = match deepest.downcast_ref::<std::io::Error>() {
        Some(io) => crate::error::io_reason(io),
        None => deepest.to_string(),
    };
    redact_urls(&text)
}

/// An error and its causes in one line, every URL in it redacted: request errors name the
/// URL, whose query may hold a signature. For the log.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    redact_urls(&text)
}

/// `text` with every URL in it redacted.
fn redact_urls(text: &str) -> String {
    text.split_whitespace().map(|word| if word.contains("://") { redact(word) } else { word.to_string() }).collect::<Vec<_>>().join(" ")
}
