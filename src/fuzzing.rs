//! Entry points and invariant checks for the fuzz targets in `fuzz/` and the property tests;
//! not part of the library's API. Parsers that otherwise need files on disk run here over bytes
//! in memory, and the checks say what every tree, name and `.npy` header must satisfy.

use crate::cache::ChunkCache;
use crate::error::OpenError;
use crate::formats::{ReadOptions, tf_bundle};
use crate::model::Model;
use crate::source::Blob;
use crate::tree::{Content, Node, ROOT, SAFETENSORS_FILE, Tree};
use serde_json::Value;
use std::sync::Arc;

/// A checkpoint from the bytes of its `.index` file and of its data file (every shard the
/// header claims reads `data`), read as `wfs mount` reads one from disk.
pub fn checkpoint(index: &[u8], data: &[u8]) -> Result<Model, OpenError> {
    let index = Blob::Memory(Arc::new(index.to_vec()));
    let data = Blob::Memory(Arc::new(data.to_vec()));
    let mut files = |suffix: &str| if suffix == ".index" { Ok(index.clone()) } else { Ok(data.clone()) };
    let mut model = Model::default();
    let mut budget = tf_bundle::MAX_STRING_TOTAL;
    (model.info, model.skipped) = tf_bundle::load_from(&mut files, &[], &mut model, &mut budget)?;
    Ok(model)
}

/// A format read from two files (ncnn's `.param` and `.bin`, `"ncnn"`; Darknet's `.weights`
/// and `.cfg`, `"darknet"`), as if `second` lay beside `first`; an error for another name.
pub fn pair(name: &str, first: &[u8], second: &[u8]) -> Result<Model, OpenError> {
    let first = Blob::Memory(Arc::new(first.to_vec()));
    match name {
        "ncnn" => crate::formats::ncnn::read_pair(&first, "fuzz.bin", &Blob::Memory(Arc::new(second.to_vec()))),
        "darknet" => crate::formats::darknet::read_with_cfg(&first, Some(("fuzz.cfg".into(), second.to_vec()))),
        _ => Err(OpenError::UnknownFormat(format!("no pair reader is named {name:?}"))),
    }
}

/// A `data.pkl` read as the zip format reads it, over storages `"0"` to `"3"` of 64, 128, 256
/// and 512 bytes (so that fuzzed tensors find storages to view).
pub fn torch_pickle(data: &[u8]) -> Result<Model, OpenError> {
    let storages = (0..4u32)
        .map(|k| (k.to_string(), Blob::Memory(Arc::new((0..=255u8).cycle().take(64 << k).collect()))))
        .collect();
    let options = ReadOptions { cache: Arc::new(ChunkCache::new(1 << 20)) };
    let pkl = Blob::Memory(Arc::new(data.to_vec()));
    crate::formats::torch::read_data_pkl(&pkl, &storages, false, serde_json::Map::new(), &options)
}

/// `data` opened by the reader named `name` in the registry (`formats::FILE_READERS` and the
/// container tables), as a file with no files beside it and a small chunk cache; an error for a
/// name no reader has.
pub fn open_format(name: &str, data: &[u8]) -> Result<Model, OpenError> {
    let options = ReadOptions { cache: Arc::new(ChunkCache::new(1 << 16)) };
    crate::formats::open_format(name, &Blob::Memory(Arc::new(data.to_vec())), &options)
        .unwrap_or_else(|| Err(OpenError::UnknownFormat(format!("no reader is named {name:?}"))))
}

/// `data` as a safetensors model quantized with `method` (`gptq`, `awq`, `bitsandbytes`,
/// `compressed-tensors`, `fp8`, `mlx`): its first three bytes choose the config (bits, group
/// size, and a variant: checkpoint format, layout, strategy, symmetry), the rest is the
/// safetensors file, whose header gives the parts' shapes and packed widths.
pub fn quantized(method: &str, data: &[u8]) -> Result<Model, OpenError> {
    let [bits, group, variant, file @ ..] = data else { return Err(OpenError::corrupt("fewer than 3 bytes")) };
    let (bits, variant) = (bits % 9, usize::from(*variant));
    let group_size = [-1i64, 16, 32, 64, 128][usize::from(*group) % 5];
    let block = [group_size.max(1), group_size.max(1)];
    let weights = serde_json::json!({
        "num_bits": bits, "type": (["int", "float"][variant % 2]), "symmetric": (variant & 2 == 0),
        "strategy": (["tensor", "channel", "group", "block"][variant / 4 % 4]), "group_size": group_size, "block_structure": block,
    });
    let mut config = serde_json::json!({
        "quant_method": method, "bits": bits, "group_size": group_size,
        "checkpoint_format": (["gptq", "gptq_v2", "marlin"][variant % 3]), "version": (["gemm", "gemv"][variant % 2]),
        "format": (["pack-quantized", "int-quantized", "float-quantized", "naive-quantized"][variant / 16 % 4]),
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}, "weight_block_size": block,
    });
    if method == "mlx" {
        // mlx-lm's config names no method.
        config.as_object_mut().map(|c| c.remove("quant_method"));
    }
    let options = ReadOptions { cache: Arc::new(ChunkCache::new(1 << 20)) };
    crate::formats::safetensors::read_with_config(&Blob::Memory(Arc::new(file.to_vec())), &config, &options)
}

/// The name of the file reader that would open `data` (`"zip-archive"`, `"gguf"`, ...).
pub fn format_of(data: &[u8]) -> Option<&'static str> {
    crate::formats::sniff(&Blob::Memory(Arc::new(data.to_vec())))
}

/// Every member of the zip archive `data`, each read up to `max` bytes (errors expected).
pub fn read_zip_members(data: &[u8], max: u64) {
    if let Ok(mut archive) = crate::formats::archive::Archive::open(&Blob::Memory(Arc::new(data.to_vec()))) {
        for (index, _) in archive.file_names() {
            let _ = archive.read_member(index, max);
        }
    }
}

/// `data` read as a `.npy` file, then as the two members of an `.npz` (stored and deflated,
/// inflated through a chunk cache of `cache` bytes): the models each gives.
pub fn numpy(data: &[u8], cache: u64) -> Vec<Result<Model, OpenError>> {
    use crate::formats::{archive::Archive, numpy};
    use std::io::Write;
    let npy = numpy::read_npy(&Blob::Memory(Arc::new(data.to_vec())));
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, method) in [("stored.npy", zip::CompressionMethod::Stored), ("deflated.npy", zip::CompressionMethod::Deflated)] {
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        if zip.start_file(name, options).and_then(|()| Ok(zip.write_all(data)?)).is_err() {
            return vec![npy];
        }
    }
    let Ok(bytes) = zip.finish().map(std::io::Cursor::into_inner) else { return vec![npy] };
    let options = ReadOptions { cache: Arc::new(crate::cache::ChunkCache::new(cache)) };
    let npz = Archive::open(&Blob::Memory(Arc::new(bytes))).and_then(|archive| numpy::read_npz(archive, &options));
    vec![npy, npz]
}


/// Reads every tensor (its stored and its decoded bytes) and file of a model whole, as a reader
/// of the mount would, skipping any larger than `max` bytes. Read errors are expected on damaged
/// input; panics are the bugs.
pub fn read_all(model: &Model, max: u64) {
    let tensors = model.tensors.iter().flat_map(|t| std::iter::once(&t.bytes).chain(t.decoded.as_ref()));
    let contents = tensors.chain(model.files.iter().map(|f| &f.bytes));
    for bytes in contents.filter(|b| b.len() <= max) {
        let mut buf = vec![0u8; bytes.len() as usize];
        let _ = bytes.read_at(0, &mut buf);
        if buf.len() > 1 {
            let _ = bytes.read_at(1, &mut buf[1..]);
        }
    }
}

/// Keras 3's names for a built-in layer's variables by index (see `keras3::variable_names`).
pub fn keras3_variable_names(kind: Option<&str>, config: Option<&Value>, count: usize) -> (Vec<Option<String>>, usize) {
    crate::formats::keras3::variable_names(kind, config, count)
}

/// Keras 3's snake_case of a class name (see `keras3::snake_case`).
pub fn keras3_snake_case(name: &str) -> String {
    crate::formats::keras3::snake_case(name)
}

/// A legacy Keras weight's path below its layer (see `keras::weight_path`).
pub fn keras_weight_path(layer: &str, weight: &str) -> Vec<String> {
    crate::formats::keras::weight_path(layer, weight)
}

/// Why `name` is not a safe path component (docs/tree.md 3), if it is not.
pub fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("a dot name")
    } else if name.len() > 255 {
        Some("over 255 bytes")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    }
}

/// Checks a built tree: every name safe and unique in its directory, and every symlink relative
/// and resolving, without leaving the mount, to a directory of the tree.
pub fn check_tree(tree: &Tree) -> Result<(), String> {
    for ino in ROOT..=tree.len() as u64 {
        match tree.node(ino) {
            Some(Node::Dir { entries, .. }) => {
                let names: std::collections::HashSet<&str> = entries.iter().map(|&e| tree.name(e)).collect();
                if names.len() != entries.len() {
                    return Err(format!("directory {ino} has duplicate names"));
                }
                if let Some((name, why)) = names.iter().find_map(|n| unsafe_name(n).map(|why| (n, why))) {
                    return Err(format!("name {name:?} in directory {ino} is {why}"));
                }
                if let Some(&e) = entries.iter().find(|&&e| tree.lookup(ino, tree.name(e)) != Some(e)) {
                    return Err(format!("entry {e} of directory {ino} cannot be looked up by its name"));
                }
            }
            Some(Node::Symlink(target)) => {
                let parent = tree.parent(ino).ok_or("symlink without a parent")?;
                resolve_link(tree, parent, target).map_err(|why| format!("symlink {ino} -> {target:?}: {why}"))?;
            }
            Some(Node::File { content: Content::Bytes(bytes), size }) if tree.name(ino) == SAFETENSORS_FILE && *size <= 1 << 26 => {
                let mut file = vec![0u8; *size as usize];
                // Tensor data may fail to read on damaged input (a checksum, a truncated source);
                // the header, made at mount, always reads, and its layout is what is checked then.
                if bytes.read_at(0, &mut file).is_err() {
                    file.fill(0);
                    let header_len = file.len().min(8);
                    bytes.read_at(0, &mut file[..header_len]).map_err(|e| format!("{SAFETENSORS_FILE} {ino}: {e}"))?;
                    let json_len = u64::from_le_bytes(file[..8.min(file.len())].try_into().unwrap_or([0; 8]));
                    let end = usize::try_from(json_len.saturating_add(8)).unwrap_or(usize::MAX).min(file.len());
                    bytes.read_at(0, &mut file[..end]).map_err(|e| format!("{SAFETENSORS_FILE} {ino}: header: {e}"))?;
                }
                parse_safetensors(&file).map_err(|why| format!("{SAFETENSORS_FILE} {ino}: {why}"))?;
            }
            Some(Node::File { .. }) => {}
            None => return Err(format!("inode {ino} is missing")),
        }
    }
    Ok(())
}

fn resolve_link(tree: &Tree, from: u64, target: &str) -> Result<(), &'static str> {
    if target.starts_with('/') {
        return Err("absolute");
    }
    let mut at = from;
    for part in target.split('/') {
        at = match part {
            "." | "" => at,
            ".." if at == ROOT => return Err("leaves the mount"),
            ".." => tree.parent(at).ok_or("dangling parent")?,
            name => tree.lookup(at, name).ok_or("dangling")?,
        };
    }
    match tree.node(at) {
        Some(Node::Dir { .. }) => Ok(()),
        _ => Err("does not name a directory"),
    }
}

/// A `.npy` header as wfs writes it, read back by numpy's rules (`npy::parse_header`) with
/// the writer's own promises checked too: version 1 or 2, a data section aligned to 64 bytes,
/// a dict ending in `'\n'`, C order. Returns the `descr` and the shape.
pub fn parse_npy_header(bytes: &[u8]) -> Result<(String, Vec<u64>), String> {
    let parsed = crate::npy::parse_header(bytes)?;
    if parsed.data_offset != bytes.len() as u64 {
        return Err(format!("header says data at {}, header holds {} bytes", parsed.data_offset, bytes.len()));
    }
    if !matches!(bytes[6], 1 | 2) {
        return Err(format!("version {} written", bytes[6]));
    }
    if !bytes.len().is_multiple_of(64) {
        return Err(format!("data starts at {}, not a multiple of 64", bytes.len()));
    }
    if bytes.last() != Some(&b'\n') {
        return Err("no final newline".into());
    }
    match parsed {
        crate::npy::Parsed { descr: crate::npy::Descr::Simple(descr), fortran_order: false, shape, .. } => Ok((descr, shape)),
        _ => Err("structured descr or Fortran order written".into()),
    }
}

/// One tensor of a safetensors file: its key, dtype, shape and byte range in the data buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsEntry {
    pub key: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub range: std::ops::Range<u64>,
}

/// A safetensors file read back by the reference reader's rules (docs/formats/safetensors.md#header-and-offset-validation) plus the
/// reference writer's layout: a header length within limits and the file, padded with spaces
/// so the data starts at a multiple of 8, `__metadata__` first and all strings, known dtypes,
/// byte ranges that tile the data buffer in header order and match their shapes exactly.
/// Returns the metadata and the tensors in header order.
pub fn parse_safetensors(file: &[u8]) -> Result<(serde_json::Map<String, Value>, Vec<SafetensorsEntry>), String> {
    let n = u64::from_le_bytes(file.get(..8).ok_or("HeaderTooSmall")?.try_into().map_err(|_| "HeaderTooSmall")?);
    let data_start = 8u64.checked_add(n).filter(|&s| n <= 100_000_000 && s <= file.len() as u64).ok_or(format!("header length {n}"))?;
    if data_start % 8 != 0 {
        return Err(format!("data starts at {data_start}, not a multiple of 8"));
    }
    let text = std::str::from_utf8(&file[8..data_start as usize]).map_err(|e| e.to_string())?;
    let header: serde_json::Map<String, Value> = serde_json::from_str(text.trim_end_matches(' ')).map_err(|e| e.to_string())?;
    let mut entries = header.into_iter();
    let metadata = match entries.next() {
        Some((key, Value::Object(m))) if key == "__metadata__" && m.values().all(Value::is_string) => m,
        _ => return Err("__metadata__ must come first, a map of strings".into()),
    };
    let bits = |dtype: &str| -> Option<u64> {
        Some(match dtype {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ" | "F8_E5M2FNUZ" => 8,
            "I16" | "U16" | "F16" | "BF16" => 16,
            "I32" | "U32" | "F32" => 32,
            "I64" | "U64" | "F64" | "C64" => 64,
            "F4" => 4,
            "F6_E2M3" | "F6_E3M2" => 6,
            _ => return None,
        })
    };
    let mut end = 0u64;
    let mut tensors = Vec::new();
    for (key, entry) in entries {
        let dtype = entry["dtype"].as_str().ok_or(format!("{key}: no dtype"))?.to_string();
        let numbers = |field: &str| -> Result<Vec<u64>, String> {
            entry[field].as_array().ok_or(format!("{key}: no {field}"))?.iter().map(|d| d.as_u64().ok_or(format!("{key}: bad {field}"))).collect()
        };
        let (shape, offsets) = (numbers("shape")?, numbers("data_offsets")?);
        let total_bits = shape.iter().try_fold(bits(&dtype).ok_or(format!("{key}: unknown dtype {dtype}"))?, |acc, &d| acc.checked_mul(d)).ok_or(format!("{key}: ValidationOverflow"))?;
        match offsets[..] {
            [begin, stop] if begin == end && stop >= begin && total_bits % 8 == 0 && stop - begin == total_bits / 8 => end = stop,
            _ => return Err(format!("{key}: InvalidOffset {offsets:?} after {end} for {dtype} {shape:?}")),
        }
        tensors.push(SafetensorsEntry { key, dtype, shape, range: offsets[0]..end });
    }
    if data_start.checked_add(end) != Some(file.len() as u64) {
        return Err(format!("MetadataIncompleteBuffer: {} data bytes, {end} described", file.len() as u64 - data_start));
    }
    Ok((metadata, tensors))
}

/// A LevelDB-format table as TensorFlow writes a bundle's `.index`: `entries` (sorted, keys
/// unique) in data blocks of `per_block` entries, prefix-compressed with a restart point every
/// 16 entries, optionally Snappy-compressed, then an empty metaindex block, the index block and
/// the footer. Lets fuzzing and tests build valid tables (checksums included) from any entries.
pub fn write_table(entries: &[(Vec<u8>, Vec<u8>)], per_block: usize, snappy: bool) -> Vec<u8> {
    use crate::formats::bundle::masked_crc32c;
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn block(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let (mut out, mut restarts, mut prev): (Vec<u8>, Vec<u32>, &[u8]) = (Vec::new(), Vec::new(), &[]);
        for (i, (key, value)) in entries.iter().enumerate() {
            let shared = if i % 16 == 0 {
                restarts.push(out.len() as u32);
                0
            } else {
                prev.iter().zip(key.iter()).take_while(|(a, b)| a == b).count()
            };
            varint(&mut out, shared as u64);
            varint(&mut out, (key.len() - shared) as u64);
            varint(&mut out, value.len() as u64);
            out.extend_from_slice(&key[shared..]);
            out.extend_from_slice(value);
            prev = key;
        }
        if restarts.is_empty() {
            restarts.push(0);
        }
        for r in &restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(restarts.len() as u32).to_le_bytes());
        out
    }
    // Appends a block with its trailer; returns its handle's bytes.
    let put = |file: &mut Vec<u8>, contents: Vec<u8>, compress: bool| -> Vec<u8> {
        let (contents, kind) = match compress {
            true => (snap::raw::Encoder::new().compress_vec(&contents).unwrap_or(contents), 1u8),
            false => (contents, 0u8),
        };
        let mut handle = Vec::new();
        varint(&mut handle, file.len() as u64);
        varint(&mut handle, contents.len() as u64);
        file.extend_from_slice(&contents);
        file.push(kind);
        let crc = masked_crc32c(&file[file.len() - contents.len() - 1..]);
        file.extend_from_slice(&crc.to_le_bytes());
        handle
    };
    let mut file = Vec::new();
    let mut index = Vec::new();
    for chunk in entries.chunks(per_block.max(1)) {
        let refs: Vec<(&[u8], &[u8])> = chunk.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        let handle = put(&mut file, block(&refs), snappy);
        index.push((chunk[chunk.len() - 1].0.clone(), handle));
    }
    let metaindex = put(&mut file, block(&[]), false);
    let refs: Vec<(&[u8], &[u8])> = index.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
    let index_handle = put(&mut file, block(&refs), false);
    let mut footer = [metaindex, index_handle].concat();
    footer.resize(40, 0);
    footer.extend_from_slice(&crate::formats::bundle::TABLE_MAGIC.to_le_bytes());
    file.extend_from_slice(&footer);
    file
}

/// Separates the parts of a fuzz input that stands for several files.
pub const PART_SEPARATOR: &[u8] = b"\xfe\xffWFS";

/// The parts of a fuzz input, split on [`PART_SEPARATOR`].
pub fn split_parts(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(PART_SEPARATOR.len()).position(|w| w == PART_SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + PART_SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

/// Table entries from fuzz input parts, each a key length byte, the key, then the value;
/// sorted and unique, as a table holds them.
pub fn table_entries(parts: &[&[u8]]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let entries: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = parts
        .iter()
        .filter_map(|p| {
            let (&len, rest) = p.split_first()?;
            let (key, value) = rest.split_at_checked(usize::from(len))?;
            Some((key.to_vec(), value.to_vec()))
        })
        .collect();
    entries.into_iter().collect()
}

/// A source URL parsed as `wfs mount` parses it (no request is made): parsing never panics,
/// and what is shown of the URL (messages, `info.json`, the mount table) is the same whatever
/// its password, query and fragment are, and never holds a query. The same text as a server's
/// `Link` header (a Hub listing's next page): never a panic, and the next page is a `<...>`
/// target the header holds.
pub fn remote_url(text: &str) -> Result<(), String> {
    use crate::remote::{RemoteOptions, RemoteSource, next_link, redact};
    if let Some(next) = next_link(text)
        && !text.contains(&format!("<{next}>"))
    {
        return Err(format!("{text:?} has no link {next:?}"));
    }
    let shown = redact(text);
    if redact(&shown) != shown || shown.contains(['?', '#']) {
        return Err(format!("{text:?} is shown as {shown:?}"));
    }
    let options = RemoteOptions { timeout: std::time::Duration::from_secs(1), retries: 0, deadline: std::time::Duration::from_secs(1), credentials: Default::default() };
    let parse = |text: &str| RemoteSource::parse(text, &options, Arc::new(ChunkCache::new(0)));
    let Ok(source) = parse(text) else { return Ok(()) };
    let mut other = url::Url::parse(text).map_err(|e| format!("{text:?} was accepted but is not a URL: {e}"))?;
    if other.password().is_some() {
        let _ = other.set_password(Some("other"));
    }
    other.set_query(other.query().map(|_| "other"));
    other.set_fragment(other.fragment().map(|_| "other"));
    let other_source = parse(other.as_str()).map_err(|e| format!("{text:?} was accepted, {other} not: {e}"))?;
    if redact(other.as_str()) != shown || other_source.dir.shown(&other_source.name) != source.dir.shown(&source.name) {
        return Err(format!("{text:?} and {other} are shown differently"));
    }
    if source.name.contains('/') {
        return Err(format!("{text:?} names the file {:?}", source.name));
    }
    Ok(())
}

/// A zarr array from its metadata (`zarr.json` when it says `"zarr_format": 3`, else `.zarray`)
/// with `chunk` stored under every chunk key: the metadata parser and every chunk codec.
pub fn zarr_array(metadata: &[u8], chunk: &[u8]) -> Result<Model, String> {
    use crate::formats::zarr::{self, Store};
    struct Same {
        metadata_key: &'static str,
        metadata: Blob,
        chunk: Blob,
    }
    impl Store for Same {
        fn get(&self, key: &str) -> Result<Option<Blob>, crate::error::ReadError> {
            Ok(match key {
                k if k == self.metadata_key => Some(self.metadata.clone()),
                ".zarray" | "zarr.json" => None,
                _ => Some(self.chunk.clone()),
            })
        }
    }
    let v3 = serde_json::from_slice::<Value>(metadata).is_ok_and(|m| m["zarr_format"] == 3);
    let store: Arc<dyn Store> = Arc::new(Same {
        metadata_key: if v3 { "zarr.json" } else { ".zarray" },
        metadata: Blob::Memory(Arc::new(metadata.to_vec())),
        chunk: Blob::Memory(Arc::new(chunk.to_vec())),
    });
    let mut model = Model::default();
    zarr::add_array(&mut model, &store, "", "fuzz", vec!["tensors".into(), "fuzz".into()], &Arc::new(ChunkCache::new(1 << 24)))?;
    Ok(model)
}

/// A protocol-2 pickle whose objects share each other as `data` says, for fuzzing the walk
/// over the pickled object graph (random bytes seldom make a pickle that shares much). Each
/// byte makes one memoized object: `b % 4` = 0 a list, 1 a dict, of `(b >> 2) % 8` references
/// to objects made before (chosen by the bytes that follow); 2 a tensor over storage `"0"`;
/// 3 a string. The last object made is the root.
pub fn pickle_graph(data: &[u8]) -> Vec<u8> {
    let mut out = b"\x80\x02".to_vec();
    let mut made = 0u32;
    let mut bytes = data.iter().copied();
    let get = |out: &mut Vec<u8>, key: u32| {
        out.push(b'j');
        out.extend(key.to_le_bytes());
    };
    while let Some(b) = bytes.next() {
        let refs = u32::from((b >> 2) % 8);
        match b % 4 {
            kind @ (0 | 1) => {
                out.extend(if kind == 0 { b"](" } else { b"}(" });
                for i in 0..refs.min(made) {
                    if kind == 1 {
                        out.extend(b"X\x02\x00\x00\x00k");
                        out.push(b'0' + i as u8);
                    }
                    get(&mut out, u32::from(bytes.next().unwrap_or(0)) % made);
                }
                out.push(if kind == 0 { b'e' } else { b'u' });
            }
            2 => out.extend(
                b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00K\x04\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR",
            ),
            _ => out.extend(b"X\x03\x00\x00\x00lol"),
        }
        out.push(b'r');
        out.extend(made.to_le_bytes());
        made += 1;
    }
    if made == 0 {
        out.push(b'N');
    } else {
        get(&mut out, made - 1);
    }
    out.push(b'.');
    out
}

#[cfg(test)]
mod tests {
    /// The fuzz seeds of fuzz/make_seeds.py (`QUANT_SEEDS`): each fixture, with the config bytes
    /// given, dequantizes its layers.
    #[test]
    fn quantized_seeds_open_with_their_layers() {
        let seeds = [
            ("gptq", "gptq4", [4, 2, 0]), ("gptq", "gptq3", [3, 0, 0]), ("gptq", "gptq2_v2", [2, 1, 1]), ("gptq", "gptq8", [8, 3, 0]),
            ("awq", "awq", [4, 2, 0]), ("bitsandbytes", "bnb", [0, 0, 0]), ("compressed-tensors", "ct_w4_group_asym", [4, 1, 10]),
            ("compressed-tensors", "ct_w8_channel_sym", [8, 0, 4]), ("compressed-tensors", "ct_fp8_channel", [8, 0, 37]),
            ("fp8", "fp8_block", [8, 2, 0]), ("mlx", "mlx", [4, 2, 0]),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant");
        for (method, case, config) in seeds {
            let data = [&config[..], &std::fs::read(dir.join(case).join("model.safetensors")).unwrap()].concat();
            let model = super::quantized(method, &data).unwrap();
            let expect: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(case).join("expect.json")).unwrap()).unwrap();
            // Every layer is dequantized or skipped (the MLX seed's config has no per-module overrides).
            let layers = model.info["quantization"]["layers"].as_u64().unwrap() as usize;
            let known = |key: &str| expect[key].as_array().unwrap().len();
            assert!(layers > 0 && layers + model.skipped.len() == known("layers") + known("skipped"), "{case}");
            super::read_all(&model, 1 << 20);
        }
    }
}
