//! Directory listings, the same for local and remote directories: below both `source` (which
//! lists local directories) and `remote` (which lists S3 prefixes and Hub repositories).

/// What a directory entry is. Local symbolic links are told apart: a reader decides whether
/// to follow them out of the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Link,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
}
