//! Filesystem operations over a `Tree`, independent of FUSE so they can be tested directly.

use crate::cache::ChunkCache;
use crate::error::ReadError;
use crate::model::Tensor;
use crate::npy;
use crate::tree::{Content, Ino, Node, TensorFile, Tree, dtype_text, shape_text};
use std::ffi::OsStr;
use std::sync::Arc;

/// Hidden extended attributes of the mount root (not listed by `listxattr`) with counters for
/// benchmarks and diagnosis, as decimal text: chunks decoded since mount, and bytes of decoded
/// chunks the cache holds now. Reading them costs one atomic load or one lock: they never grow.
pub const XATTR_DECODES: &str = "user.wfs.decodes";
pub const XATTR_CACHE_BYTES: &str = "user.wfs.cache_bytes";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
}

pub struct Fs {
    pub(crate) tree: Tree,
    /// The chunk cache the readers share, for the counters on the root (see `XATTR_DECODES`).
    cache: Option<Arc<ChunkCache>>,
}

impl Fs {
    pub fn new(tree: Tree) -> Self {
        Fs { tree, cache: None }
    }

    /// The tree it serves, read-only.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Reports `cache`'s counters as hidden extended attributes of the root.
    pub fn with_cache(mut self, cache: Arc<ChunkCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The value of extended attribute `name` of `ino`: one of `xattrs`, or one of the root's
    /// hidden counters.
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Vec<u8>, i32> {
        if self.tree.node(ino).is_none() {
            return Err(libc::ENOENT);
        }
        if let Some((_, value)) = self.xattrs(ino).into_iter().find(|(n, _)| OsStr::new(n) == name) {
            return Ok(value);
        }
        let cache = self.cache.as_ref().filter(|_| ino == crate::tree::ROOT).ok_or(libc::ENODATA)?;
        let value = match name.to_str() {
            Some(XATTR_DECODES) => cache.decodes(),
            Some(XATTR_CACHE_BYTES) => cache.held_bytes(),
            _ => return Err(libc::ENODATA),
        };
        Ok(value.to_string().into_bytes())
    }

    pub fn attr(&self, ino: Ino) -> Option<Attr> {
        let (kind, size, perm, nlink) = match self.tree.node(ino)? {
            Node::Dir { subdirs, .. } => (Kind::Dir, 0, 0o555, 2 + subdirs),
            Node::File { size, .. } => (Kind::File, *size, 0o444, 1),
            Node::Symlink(target) => (Kind::Symlink, target.len() as u64, 0o777, 1),
        };
        Some(Attr { ino, kind, size, perm, nlink })
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, i32> {
        match self.tree.node(parent) {
            Some(Node::Dir { .. }) => {}
            Some(_) => return Err(libc::ENOTDIR),
            None => return Err(libc::ENOENT),
        }
        let name = name.to_str().ok_or(libc::ENOENT)?;
        let ino = self.tree.lookup(parent, name).ok_or(libc::ENOENT)?;
        self.attr(ino).ok_or(libc::ENOENT)
    }

    /// Directory entries after `offset` entries, `.` and `..` first. Lazy: the kernel reads a
    /// large directory in many small batches, each starting at an offset.
    pub fn readdir(&self, ino: Ino, offset: u64) -> Result<impl Iterator<Item = (Ino, Kind, &str)>, i32> {
        let Some(Node::Dir { entries, .. }) = self.tree.node(ino) else {
            return Err(libc::ENOTDIR);
        };
        let parent = self.tree.parent(ino).unwrap_or(ino);
        let dots = [(ino, Kind::Dir, "."), (parent, Kind::Dir, "..")];
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let rest = entries.iter().skip(skip.saturating_sub(2)).map(|&child| {
            let kind = match self.tree.node(child) {
                Some(Node::Dir { .. }) => Kind::Dir,
                Some(Node::Symlink(_)) => Kind::Symlink,
                _ => Kind::File,
            };
            (child, kind, self.tree.name(child))
        });
        Ok(dots.into_iter().skip(skip.min(2)).chain(rest))
    }

    pub fn readlink(&self, ino: Ino) -> Result<&str, i32> {
        match self.tree.node(ino) {
            Some(Node::Symlink(target)) => Ok(target),
            Some(_) => Err(libc::EINVAL),
            None => Err(libc::ENOENT),
        }
    }

    /// Extended attributes of a node: for the four files of a tensor, its dtype, shape,
    /// where its bytes lie in the source (`user.wfs.storage` is `decoded` when they do not lie
    /// there as-is), and what its reader adds (`Tensor::extra_attrs`).
    pub fn xattrs(&self, ino: Ino) -> Vec<(String, Vec<u8>)> {
        let Some(Node::File { content: Content::Tensor(id, _), .. }) = self.tree.node(ino) else {
            return Vec::new();
        };
        let tensor = &self.tree.tensors[*id];
        let shape = tensor.shape.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let mut attrs = vec![
            ("user.wfs.name".to_string(), tensor.name.clone().into_bytes()),
            ("user.wfs.dtype".to_string(), tensor.dtype.name().into_bytes()),
            ("user.wfs.shape".to_string(), shape.into_bytes()),
        ];
        match tensor.bytes.location() {
            Some(loc) => {
                attrs.push(("user.wfs.storage".into(), b"plain".to_vec()));
                attrs.push(("user.wfs.file".into(), loc.file.as_os_str().as_encoded_bytes().to_vec()));
                attrs.push(("user.wfs.offset".into(), loc.offset.to_string().into_bytes()));
                attrs.push(("user.wfs.length".into(), loc.len.to_string().into_bytes()));
            }
            None => attrs.push(("user.wfs.storage".into(), b"decoded".to_vec())),
        }
        attrs.extend(tensor.extra_attrs.iter().map(|(name, value)| (name.clone(), value.clone().into_bytes())));
        attrs
    }

    /// Reads up to `size` bytes at `offset`; short only at end of file.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let mut buf = Vec::new();
        let len = self.read_into(ino, offset, size, &mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }

    /// Like `read`, into the first bytes of `buf` (grown as needed, never shrunk, so that one
    /// buffer serves many reads without allocating); returns how many bytes were read.
    pub fn read_into(&self, ino: Ino, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<usize, i32> {
        let (content, file_size) = match self.tree.node(ino) {
            Some(Node::File { content, size, .. }) => (content, *size),
            Some(Node::Dir { .. }) => return Err(libc::EISDIR),
            _ => return Err(libc::ENOENT),
        };
        if offset >= file_size {
            return Ok(0);
        }
        let len = (file_size - offset).min(u64::from(size)) as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let out = &mut buf[..len];
        let result = match content {
            Content::Bytes(bytes) => bytes.read_at(offset, out),
            Content::Tensor(id, kind) => {
                let tensor = &self.tree.tensors[*id];
                match kind {
                    TensorFile::Raw => tensor.bytes.read_at(offset, out),
                    TensorFile::Npy => read_npy(tensor, file_size, offset, out),
                    TensorFile::Shape => copy_text(&shape_text(tensor), offset, out),
                    TensorFile::DType => copy_text(&dtype_text(tensor), offset, out),
                }
            }
        };
        result.map_err(|e| {
            log::warn!("read of inode {ino} at {offset}: {e}");
            e.errno()
        })?;
        Ok(len)
    }
}

/// Copies the part of a small generated text at `offset`.
fn copy_text(text: &str, offset: u64, out: &mut [u8]) -> Result<(), ReadError> {
    let start = offset as usize;
    out.copy_from_slice(&text.as_bytes()[start..start + out.len()]);
    Ok(())
}

/// Fills `buf` with `.npy` bytes at `offset`: the header (made only when a read touches it),
/// then the data: `.raw` as it is, widened to float32, or decoded by the tensor's reader.
/// `npy_len` is the file's size, so the header is `npy_len` minus the data's length bytes.
fn read_npy(tensor: &Tensor, npy_len: u64, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
    let data_len = tensor.npy_data_len().unwrap_or(0);
    let hlen = npy_len - data_len;
    let mut filled = 0usize;
    if offset < hlen {
        let header = npy::header(tensor.dtype, &tensor.shape);
        let n = ((hlen - offset) as usize).min(buf.len());
        buf[..n].copy_from_slice(&header[offset as usize..offset as usize + n]);
        filled = n;
    }
    if filled == buf.len() {
        return Ok(());
    }
    tensor.read_npy_data(offset + filled as u64 - hlen, &mut buf[filled..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::model::{InMemory, Model, Tensor};

    fn fs_with(dtype: DType, data: Vec<u8>, shape: Vec<u64>) -> Fs {
        let mut model = Model::default();
        model.tensors.push(Tensor::new(vec!["t".into()], dtype, shape, Arc::new(InMemory(data.into()))));
        Fs::new(Tree::build(model, "test"))
    }

    #[test]
    fn npy_reads_at_any_offset_match_a_whole_read() {
        let data: Vec<u8> = (0..=255).collect();
        let fs = fs_with(DType::U8, data, vec![16, 16]);
        let ino = fs.tree.resolve("t.npy").unwrap();
        let whole = fs.read(ino, 0, 1 << 20).unwrap();
        assert_eq!(whole.len(), 128 + 256);
        for (off, len) in [(0u64, 7u32), (100, 50), (127, 2), (128, 256), (300, 1000)] {
            let part = fs.read(ino, off, len).unwrap();
            let end = (off as usize + len as usize).min(whole.len());
            assert_eq!(part, whole[off as usize..end]);
        }
    }

    #[test]
    fn bfloat16_widens_losslessly() {
        // bfloat16 1.0 = 0x3F80, -2.0 = 0xC000
        let fs = fs_with(DType::BF16, vec![0x80, 0x3F, 0x00, 0xC0], vec![2]);
        let ino = fs.tree.resolve("t.npy").unwrap();
        let bytes = fs.read(ino, 128, 8).unwrap();
        let floats: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(floats, vec![1.0, -2.0]);
        assert_eq!(fs.read(ino, 131, 3).unwrap(), vec![0x3F, 0x00, 0x00]);
        let raw = fs.tree.resolve("t.raw").unwrap();
        assert_eq!(fs.read(raw, 0, 10).unwrap(), vec![0x80, 0x3F, 0x00, 0xC0]);
    }

    #[test]
    fn packed_and_8_bit_floats_widen_at_any_offset() {
        // float4 codes, low nibble first: 0.5, 1, 6, -6; then float8 e4m3fn 1, -2, 0.5.
        let fs = fs_with(DType::F4E2M1FN, vec![0x21, 0xF7], vec![4]);
        let ino = fs.tree.resolve("t.npy").unwrap();
        let whole = fs.read(ino, 128, 16).unwrap();
        let floats: Vec<f32> = whole.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(floats, vec![0.5, 1.0, 6.0, -6.0]);
        for (off, len) in [(129u64, 3u32), (133, 9), (140, 4)] {
            assert_eq!(fs.read(ino, off, len).unwrap(), whole[(off - 128) as usize..(off - 128) as usize + len as usize]);
        }
        let fs = fs_with(DType::F8E4M3FN, vec![0x38, 0xc0, 0x30], vec![3]);
        let bytes = fs.read(fs.tree.resolve("t.npy").unwrap(), 128, 12).unwrap();
        let floats: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(floats, vec![1.0, -2.0, 0.5]);
        assert_eq!(fs.attr(fs.tree.resolve("t.raw").unwrap()).unwrap().size, 3);
    }

    #[test]
    fn block_tensors_without_a_decoder_have_no_npy() {
        let mut model = Model::default();
        let dtype = DType::Block { name: "q_test", elems: 4, bytes: 3 };
        model.tensors.push(Tensor::named("a.b", dtype, vec![8], Arc::new(InMemory(vec![0u8; 6].into()))));
        let fs = Fs::new(Tree::build(model, "test"));
        assert!(fs.tree.resolve("tensors/a/b.npy").is_none());
        assert_eq!(fs.read(fs.tree.resolve("tensors/a/b.dtype").unwrap(), 0, 100).unwrap(), b"q_test\n");
        let tsv = fs.read(fs.tree.resolve("tensors.tsv").unwrap(), 0, 1000).unwrap();
        assert_eq!(String::from_utf8(tsv).unwrap(), "path\tdtype\tshape\tbytes\tname\ntensors/a/b.raw\tq_test\t8\t6\ta.b\n");
    }

    #[test]
    fn names_are_the_sources_own_and_escaped_in_tensors_tsv() {
        let mut model = Model::default();
        let bytes = || Arc::new(InMemory(vec![1u8].into()));
        model.tensors.push(Tensor::named("model.layers.0.w", DType::U8, vec![1], bytes()));
        model.tensors.push(Tensor::named("odd\tname\n", DType::U8, vec![1], bytes()));
        model.tensors.push(Tensor::new(vec!["layers".into(), "d".into(), "kernel".into()], DType::U8, vec![1], bytes()));
        let fs = Fs::new(Tree::build(model, "test"));
        let tsv = String::from_utf8(fs.read(fs.tree.resolve("tensors.tsv").unwrap(), 0, 1000).unwrap()).unwrap();
        let names: Vec<&str> = tsv.lines().skip(1).map(|l| l.split('\t').nth(4).unwrap()).collect();
        assert_eq!(names, ["model.layers.0.w", "odd\\tname\\n", "layers/d/kernel"]);
        let name_of = |p: &str| fs.getxattr(fs.tree.resolve(p).unwrap(), OsStr::new("user.wfs.name")).unwrap();
        assert_eq!(name_of("tensors/model/layers/0/w.raw"), b"model.layers.0.w");
        assert_eq!(name_of("tensors/odd%09name%0A.shape"), b"odd\tname\n");
        assert_eq!(name_of("layers/d/kernel.npy"), b"layers/d/kernel");
    }

    #[test]
    fn tensor_files_carry_dtype_shape_and_storage_xattrs() {
        let fs = fs_with(DType::F32, vec![0; 24], vec![2, 3]);
        for name in ["t.npy", "t.raw", "t.shape", "t.dtype"] {
            let attrs = fs.xattrs(fs.tree.resolve(name).unwrap());
            let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| String::from_utf8(v.clone()).unwrap());
            assert_eq!(get("user.wfs.dtype").as_deref(), Some("float32"));
            assert_eq!(get("user.wfs.shape").as_deref(), Some("2,3"));
            assert_eq!(get("user.wfs.storage").as_deref(), Some("decoded"));
        }
        assert!(fs.xattrs(fs.tree.resolve("info.json").unwrap()).is_empty());
    }

    #[test]
    fn readers_add_their_own_tensor_xattrs() {
        let mut model = Model::default();
        let mut tensor = Tensor::named("q", DType::I8, vec![2], Arc::new(InMemory(vec![1u8, 2].into())));
        tensor.extra_attrs.push(("user.wfs.quant.scale".into(), "0.5,0.25".into()));
        model.tensors.push(tensor);
        let fs = Fs::new(Tree::build(model, "test"));
        let raw = fs.tree.resolve("tensors/q.raw").unwrap();
        assert_eq!(fs.getxattr(raw, OsStr::new("user.wfs.quant.scale")).unwrap(), b"0.5,0.25");
        assert!(fs.xattrs(raw).iter().any(|(n, _)| n == "user.wfs.name"));
    }

    #[test]
    fn lookup_errors() {
        let fs = fs_with(DType::U8, vec![1], vec![1]);
        let file = fs.tree.resolve("t.npy").unwrap();
        assert_eq!(fs.lookup(file, OsStr::new("x")).unwrap_err(), libc::ENOTDIR);
        assert_eq!(fs.lookup(1, OsStr::new("nope")).unwrap_err(), libc::ENOENT);
        assert_eq!(fs.read(1, 0, 1).unwrap_err(), libc::EISDIR);
    }

    #[test]
    fn root_counters_are_hidden_xattrs() {
        let fs = fs_with(DType::U8, vec![1], vec![1]);
        assert_eq!(fs.getxattr(1, OsStr::new(XATTR_DECODES)).unwrap_err(), libc::ENODATA);
        let fs = fs.with_cache(Arc::new(ChunkCache::new(100)));
        assert_eq!(fs.getxattr(1, OsStr::new(XATTR_DECODES)).unwrap(), b"0");
        assert_eq!(fs.getxattr(1, OsStr::new(XATTR_CACHE_BYTES)).unwrap(), b"0");
        let file = fs.tree.resolve("t.npy").unwrap();
        assert_eq!(fs.getxattr(file, OsStr::new(XATTR_DECODES)).unwrap_err(), libc::ENODATA);
        assert_eq!(fs.getxattr(1, OsStr::new("user.other")).unwrap_err(), libc::ENODATA);
    }
}
