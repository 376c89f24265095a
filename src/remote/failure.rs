//! Request failures as the one line a user reads.

use super::redact::redact;
use crate::error::ReadError;

pub(super) fn head_error(e: object_store::Error) -> ReadError {
    match e {
        object_store::Error::NotFound { .. } => ReadError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, "not found")),
        other => ReadError::Io(std::io::Error::other(reason(&other))),
    }
}

pub(super) fn read_error(e: object_store::Error) -> ReadError {
    match e {
        object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => ReadError::SourceChanged,
        other => ReadError::Io(std::io::Error::other(reason(&other))),
    }
}

/// A request failure in one line. The URLs in it carry no secrets: user info and query
/// strings never reach the client, and tokens travel in headers.
pub(super) fn reason(e: &object_store::Error) -> String {
    if matches!(e, object_store::Error::NotSupported { .. }) {
        return "the server ignores Range requests (wfs reads remote files in ranges and never downloads them whole)".into();
    }
    chain(e)
}

/// An error and its causes in one line (the causes say more than the wrapper's first words),
/// every URL in it redacted: request errors name the URL, whose query may hold a signature.
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
    text.split_whitespace().map(|word| if word.contains("://") { redact(word) } else { word.to_string() }).collect::<Vec<_>>().join(" ")
}
