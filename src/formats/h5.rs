//! HDF5 through libhdf5: metadata (types, layouts, offsets, chunk addresses) under the library's
//! global lock; tensor bytes read with `pread` and inflated outside it.

use crate::cache::ChunkCache;
use crate::codecs::{inflate, lzf_decompress, strip_fletcher32, unshuffle};
use crate::dtype::DType;
use crate::error::{OpenError, ReadError};
use crate::model::{ByteSwapped, Extent, InMemory, Model, SkippedTensor, Tensor, TensorBytes, TensorId};
use super::h5_driver;
use crate::source::{Blob, Mapping};
use hdf5::{Dataset, Group, Location};
use hdf5_sys::h5::{haddr_t, hsize_t, herr_t};
use hdf5_sys::h5d::{H5D_layout_t, H5Dchunk_iter, H5Dget_offset, H5Dget_storage_size, H5Dget_type, H5Dread};
use hdf5_sys::h5f::{H5F_ACC_RDONLY, H5Fopen};
use hdf5_sys::h5fd::{H5FD_file_image_callbacks_t, H5FD_file_image_op_t, H5FD_FILE_IMAGE_OP_FILE_OPEN, H5FD_FILE_IMAGE_OP_PROPERTY_LIST_COPY, H5FD_FILE_IMAGE_OP_PROPERTY_LIST_SET};
use hdf5_sys::h5i::hid_t;
use hdf5_sys::h5p::{H5P_DEFAULT, H5Pclose, H5Pcreate, H5Pset_fapl_core, H5Pset_file_image, H5Pset_file_image_callbacks, H5Pget_chunk, H5Pget_external_count, H5Pget_fill_value, H5Pget_filter2, H5Pget_layout, H5Pget_nfilters};
use hdf5_sys::h5s::{H5S_seloper_t, H5Sclose, H5Screate_simple, H5Sget_simple_extent_npoints, H5Sselect_hyperslab};
use hdf5_sys::h5t::{H5T_class_t, H5T_order_t, H5T_sign_t, H5Tclose, H5Tget_class, H5Tget_member_name, H5Tget_member_type, H5Tget_nmembers, H5Tget_order, H5Tget_sign, H5Tget_size, H5Tget_super, H5Tis_variable_str, H5Treclaim};
use std::collections::HashMap;
use std::ffi::{CStr, c_void};
use std::os::raw::{c_char, c_uint};
use std::sync::{Arc, OnceLock};

/// HDF5's format signature; it may sit at 0, 512, 1024, 2048, ... (after a user block).
pub const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// `true` if the blob holds the HDF5 signature where HDF5 allows it.
pub fn has_signature(blob: &Blob) -> bool {
    let len = blob.len();
    let mut at = 0u64;
    while at + 8 <= len {
        if blob.read_vec(at, 8).is_ok_and(|sig| sig == SIGNATURE) {
            return true;
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    false
}

/// Largest in-memory copy made at mount for one dataset (compact storage is under 64 KiB).
const MAX_INLINE_BYTES: u64 = 1 << 20;
/// Most bytes one variable-length string dataset may take in memory, padded (they are read at mount).
const MAX_STRING_BYTES: u64 = 64 << 20;

/// Where a tensor's bytes come from, shared by all datasets of one file.
pub struct H5Context {
    pub blob: Blob,
    pub cache: Arc<ChunkCache>,
}

/// Runs `f` with libhdf5's global lock held (libhdf5 is not thread-safe).
pub fn locked<T>(f: impl FnOnce() -> T) -> T {
    hdf5::sync::sync(f)
}

/// Opens an HDF5 file read-only; errors become one readable line.
pub fn open(path: &std::path::Path) -> Result<hdf5::File, OpenError> {
    hdf5::File::open(path).map_err(|e| OpenError::corrupt(format!("cannot read HDF5 file: {}", first_line(&e.to_string()))))
}

/// Opens the HDF5 file a blob holds: a whole source file by its path, a remote one through a
/// driver that reads it in ranges, anything else (an archive member, standard input) as a file
/// image that libhdf5 parses in place, never copied.
pub fn open_blob(blob: &Blob) -> Result<hdf5::File, OpenError> {
    if let Blob::File(file) = blob {
        return open(file.path());
    }
    if blob.is_remote() {
        return locked(|| h5_driver::open(blob));
    }
    let image = blob.map().map_err(|e| OpenError::unreadable(format!("cannot map the HDF5 bytes: {e}")))?;
    // SAFETY: the mapping is moved into open_image, which keeps it alive for as long as libhdf5 holds the image; we hold the global lock.
    locked(|| unsafe { open_image(image) })
}

/// Bytes handed to libhdf5's core driver, shared by the property lists and the open file that
/// refer to them. `refs` counts every holder libhdf5 announces (copies of the callback data,
/// images it "allocated") plus our own; the last release frees (unmaps) the bytes.
struct Image {
    bytes: Mapping,
    refs: usize,
}

/// Drops one reference; frees the image with the last (all calls happen under the lock).
unsafe fn release(udata: *mut c_void) {
    let image = udata as *mut Image;
    // SAFETY: `udata` is the `Image` boxed in open_image; its count was raised for each holder, so it is still live here.
    unsafe {
        (*image).refs -= 1;
        if (*image).refs == 0 {
            drop(Box::from_raw(image));
        }
    }
}

// libhdf5 asks to allocate and copy the image when a property list is set or copied and when
// the file is opened; answering with the image itself makes every copy a no-op (the scheme of
// H5LTopen_file_image with H5LT_FILE_IMAGE_DONT_COPY). Anything else (resizing, getting a copy
// of the image) is refused, which libhdf5 reports as an error.
extern "C" fn image_malloc(size: usize, op: H5FD_file_image_op_t, udata: *mut c_void) -> *mut c_void {
    // SAFETY: libhdf5 passes back the `udata` we registered: the live `Image` boxed in open_image.
    let image = unsafe { &mut *(udata as *mut Image) };
    let shared = matches!(op, H5FD_FILE_IMAGE_OP_PROPERTY_LIST_SET | H5FD_FILE_IMAGE_OP_PROPERTY_LIST_COPY | H5FD_FILE_IMAGE_OP_FILE_OPEN);
    if shared && size == image.bytes.len() {
        image.refs += 1;
        image.bytes.as_ptr() as *mut c_void
    } else {
        std::ptr::null_mut()
    }
}

extern "C" fn image_memcpy(dest: *mut c_void, src: *const c_void, size: usize, _op: H5FD_file_image_op_t, udata: *mut c_void) -> *mut c_void {
    // SAFETY: as for image_malloc: `udata` is our live `Image`.
    let image = unsafe { &*(udata as *const Image) };
    let at = image.bytes.as_ptr() as *const c_void;
    if std::ptr::eq(dest, at) && std::ptr::eq(src, at) && size == image.bytes.len() { dest } else { std::ptr::null_mut() }
}

extern "C" fn image_realloc(_ptr: *mut c_void, _size: usize, _op: H5FD_file_image_op_t, _udata: *mut c_void) -> *mut c_void {
    std::ptr::null_mut()
}

extern "C" fn image_free(_ptr: *mut c_void, _op: H5FD_file_image_op_t, udata: *mut c_void) -> herr_t {
    // SAFETY: `udata` is our live `Image`; libhdf5 frees each reference it took once.
    unsafe { release(udata) };
    0
}

unsafe extern "C" fn image_udata_copy(udata: *mut c_void) -> *mut c_void {
    // SAFETY: `udata` is our live `Image`; libhdf5 calls this under the global lock we hold.
    unsafe { (*(udata as *mut Image)).refs += 1 };
    udata
}

unsafe extern "C" fn image_udata_free(udata: *mut c_void) -> herr_t {
    // SAFETY: `udata` is our live `Image`; this drops the reference udata_copy added.
    unsafe { release(udata) };
    0
}

/// Opens `bytes` read-only through the core driver without copying them (caller holds the lock).
unsafe fn open_image(bytes: Mapping) -> Result<hdf5::File, OpenError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let failed = || OpenError::corrupt("cannot read HDF5 data: not a valid HDF5 file");
    let len = bytes.len();
    let ptr = bytes.as_ptr() as *mut c_void;
    // Our own reference, released below once libhdf5 holds its own.
    let udata = Box::into_raw(Box::new(Image { bytes, refs: 1 })) as *mut c_void;
    // SAFETY: the callbacks above keep `udata` alive as long as libhdf5 refers to it; the image bytes are never written (DONT_COPY with our malloc handing out the mapping), and every call is made under the global lock.
    unsafe {
        let fapl = Id(H5Pcreate(*hdf5::globals::H5P_FILE_ACCESS), H5Pclose);
        let mut callbacks = H5FD_file_image_callbacks_t {
            image_malloc: Some(image_malloc),
            image_memcpy: Some(image_memcpy),
            image_realloc: Some(image_realloc),
            image_free: Some(image_free),
            udata_copy: Some(image_udata_copy),
            udata_free: Some(image_udata_free),
            udata,
        };
        // Each file image needs a distinct name: libhdf5 treats equal names as the same file.
        let name = std::ffi::CString::new(format!("wfs-image-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))).unwrap_or_default();
        let file = if fapl.0 >= 0
            && H5Pset_fapl_core(fapl.0, 1 << 16, 0) >= 0
            && H5Pset_file_image_callbacks(fapl.0, &mut callbacks) >= 0
            && H5Pset_file_image(fapl.0, ptr, len) >= 0
        {
            H5Fopen(name.as_ptr(), H5F_ACC_RDONLY, fapl.0)
        } else {
            -1
        };
        drop(fapl);
        release(udata);
        if file < 0 {
            return Err(failed());
        }
        hdf5::from_id::<hdf5::File>(file).map_err(|_| failed())
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// Closes an HDF5 id when dropped.
struct Id(hid_t, unsafe extern "C" fn(hid_t) -> herr_t);
impl Drop for Id {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: `self.0` is a valid id this value owns, closed once with its matching close function.
            unsafe { (self.1)(self.0) };
        }
    }
}

/// Reads a string or string-list attribute; `None` if absent. Accepts vlen and fixed-length,
/// ASCII and UTF-8, scalar and 1-D, and Keras's chunked `name0`, `name1`, ... form. A
/// non-string attribute (Keras writes an empty float64 array for an empty list) is empty.
pub fn string_list_attr(loc: &Location, name: &str) -> Option<Vec<String>> {
    if let Some(list) = read_string_attr(loc, name) {
        return Some(list);
    }
    let mut parts = Vec::new();
    for i in 0.. {
        match read_string_attr(loc, &format!("{name}{i}")) {
            Some(mut chunk) => parts.append(&mut chunk),
            None if i == 0 => return None,
            None => break,
        }
    }
    Some(parts)
}

/// The first string of a string attribute.
pub fn string_attr(loc: &Location, name: &str) -> Option<String> {
    read_string_attr(loc, name)?.into_iter().next()
}

fn read_string_attr(loc: &Location, name: &str) -> Option<Vec<String>> {
    locked(|| {
        if !loc.attr_names().ok()?.iter().any(|n| n == name) {
            return None;
        }
        let attr = loc.attr(name).ok()?;
        // SAFETY: the attribute id is valid while `attr` lives; buffers are sized from libhdf5's own answers and reclaimed with H5Treclaim.
        unsafe {
            let ty = Id(hdf5_sys::h5a::H5Aget_type(attr.id()), H5Tclose);
            let space = Id(hdf5_sys::h5a::H5Aget_space(attr.id()), H5Sclose);
            let n = H5Sget_simple_extent_npoints(space.0);
            if !(0..=100_000_000).contains(&n) {
                return None;
            }
            let n = n as usize;
            if H5Tget_class(ty.0) != H5T_class_t::H5T_STRING {
                return Some(Vec::new());
            }
            if H5Tis_variable_str(ty.0) > 0 {
                let mut ptrs: Vec<*mut c_char> = vec![std::ptr::null_mut(); n];
                if hdf5_sys::h5a::H5Aread(attr.id(), ty.0, ptrs.as_mut_ptr().cast()) < 0 {
                    return None;
                }
                let out = ptrs
                    .iter()
                    .map(|&p| if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() })
                    .collect();
                H5Treclaim(ty.0, space.0, H5P_DEFAULT, ptrs.as_mut_ptr().cast());
                Some(out)
            } else {
                let size = H5Tget_size(ty.0);
                let mut buf = vec![0u8; n.checked_mul(size)?];
                if hdf5_sys::h5a::H5Aread(attr.id(), ty.0, buf.as_mut_ptr().cast()) < 0 {
                    return None;
                }
                Some(
                    buf.chunks(size.max(1))
                        .take(n)
                        .map(|c| {
                            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                            String::from_utf8_lossy(&c[..end]).trim_end().to_string()
                        })
                        .collect(),
                )
            }
        }
    })
}

/// The element type of an HDF5 datatype, and whether it is stored big-endian.
fn classify(ty: hid_t, dataset: &Dataset) -> Result<(DType, bool), String> {
    // SAFETY: `ty` is a valid datatype id held by the caller; the datatype ids opened here are closed by `Id` guards.
    unsafe {
        let size = H5Tget_size(ty);
        let big = H5Tget_order(ty) == H5T_order_t::H5T_ORDER_BE;
        match H5Tget_class(ty) {
            H5T_class_t::H5T_INTEGER => {
                let signed = H5Tget_sign(ty) == H5T_sign_t::H5T_SGN_2;
                let d = match (size, signed) {
                    (1, true) => DType::I8,
                    (1, false) => DType::U8,
                    (2, true) => DType::I16,
                    (2, false) => DType::U16,
                    (4, true) => DType::I32,
                    (4, false) => DType::U32,
                    (8, true) => DType::I64,
                    (8, false) => DType::U64,
                    _ => return Err(format!("{size}-byte integers")),
                };
                Ok((d, big))
            }
            H5T_class_t::H5T_FLOAT => match size {
                2 => Ok((DType::F16, big)),
                4 => Ok((DType::F32, big)),
                8 => Ok((DType::F64, big)),
                _ => Err(format!("{size}-byte floats")),
            },
            H5T_class_t::H5T_ENUM => {
                // h5py stores numpy bool as an int8 enum {FALSE, TRUE}
                let base = Id(H5Tget_super(ty), H5Tclose);
                let (base_type, big) = classify(base.0, dataset)?;
                let names: Vec<String> = (0..H5Tget_nmembers(ty).max(0) as c_uint).map(|i| member_name(ty, i)).collect();
                if size == 1 && names == ["FALSE", "TRUE"] { Ok((DType::Bool, big)) } else { Ok((base_type, big)) }
            }
            H5T_class_t::H5T_COMPOUND => {
                // h5py stores complex numbers as {r, i} of two equal floats
                let names: Vec<String> = (0..H5Tget_nmembers(ty).max(0) as c_uint).map(|i| member_name(ty, i)).collect();
                if names != ["r", "i"] {
                    return Err("compound type".into());
                }
                let member = Id(H5Tget_member_type(ty, 0), H5Tclose);
                match (classify(member.0, dataset)?, size) {
                    ((DType::F32, big), 8) => Ok((DType::C64, big)),
                    ((DType::F64, big), 16) => Ok((DType::C128, big)),
                    _ => Err("compound type".into()),
                }
            }
            H5T_class_t::H5T_OPAQUE if size == 2 && string_attr(dataset, "dtype").as_deref() == Some("bfloat16") => {
                Ok((DType::BF16, false))
            }
            H5T_class_t::H5T_STRING if H5Tis_variable_str(ty) <= 0 => Ok((DType::Str(size), false)),
            H5T_class_t::H5T_STRING => Err("variable-length strings inside another type".into()),
            other => Err(format!("{other:?} type")),
        }
    }
}

unsafe fn member_name(ty: hid_t, i: c_uint) -> String {
    // SAFETY: `ty` is a valid compound datatype and `i` below its member count; the name libhdf5 allocates is freed here.
    unsafe {
        let p = H5Tget_member_name(ty, i);
        if p.is_null() {
            return String::new();
        }
        let s = CStr::from_ptr(p).to_string_lossy().into_owned();
        hdf5_sys::h5::H5free_memory(p.cast());
        s
    }
}

/// A dataset that wfs cannot expose, with the reason (listed in `info.json`).
pub struct Skipped(pub String);

/// Adds a dataset as the tensor at `path`, or records why it cannot be; `true` if added.
pub fn push_dataset(ds: &Dataset, path: Vec<String>, ctx: &H5Context, model: &mut Model) -> bool {
    match dataset_tensor(ds, path.clone(), ctx) {
        Ok(t) => {
            model.tensors.push(t);
            true
        }
        Err(Skipped(why)) => {
            log::warn!("skipping {}: {why}", path.join("/"));
            model.skipped.push(SkippedTensor::new(TensorId::Path(path.join("/")), why));
            false
        }
    }
}

/// Describes a dataset as a tensor at `path`, reading no tensor data (except tiny compact ones).
pub fn dataset_tensor(ds: &Dataset, path: Vec<String>, ctx: &H5Context) -> Result<Tensor, Skipped> {
    // SAFETY: the dataset id is valid while `ds` lives, and the global lock is held.
    locked(|| unsafe { describe(ds, path, ctx) })
}

unsafe fn describe(ds: &Dataset, path: Vec<String>, ctx: &H5Context) -> Result<Tensor, Skipped> {
    // SAFETY: the dataset id is valid while `ds` lives and the caller holds the global lock; every id opened here is closed by an `Id` guard.
    unsafe {
        let ty = Id(H5Dget_type(ds.id()), H5Tclose);
        let shape: Vec<u64> = ds.shape().iter().map(|&d| d as u64).collect();
        if H5Tget_class(ty.0) == H5T_class_t::H5T_STRING && H5Tis_variable_str(ty.0) > 0 {
            let count = Tensor::element_count(&shape).ok_or_else(|| Skipped("shape too large".into()))?;
            let (dtype, bytes) = variable_strings(ds.id(), ty.0, count).map_err(Skipped)?;
            return Ok(Tensor::new(path, dtype, shape, bytes));
        }
        let (dtype, big_endian) = classify(ty.0, ds).map_err(|why| Skipped(format!("unsupported element type: {why}")))?;
        let shape: Vec<u64> = ds.shape().iter().map(|&d| d as u64).collect();
        let len = Tensor::raw_size(dtype, &shape).ok_or_else(|| Skipped("shape too large".into()))?;
        let in_file = |addr: haddr_t| -> Result<Arc<dyn TensorBytes>, Skipped> {
            let fits = addr.checked_add(len).is_some_and(|end| end <= ctx.blob.len());
            if !fits || H5Dget_storage_size(ds.id()) < len {
                return Err(Skipped(format!("data at offset {addr} (+{len} bytes) lies outside the file")));
            }
            Ok(Arc::new(Extent { blob: ctx.blob.clone(), offset: addr, len }))
        };
        // A defined offset means contiguous data in this file (libhdf5 gives none for chunked,
        // compact, external or unallocated data): that is all such a dataset needs, and copying
        // its creation property list would cost more than the rest of this function.
        let addr = H5Dget_offset(ds.id());
        let stored = if addr != haddr_t::MAX && len > 0 {
            in_file(addr)?
        } else {
            stored_bytes(ds, ty.0, dtype, &shape, len, ctx)?
        };
        let bytes: Arc<dyn TensorBytes> = if big_endian && dtype.swap_unit() > 1 {
            Arc::new(ByteSwapped { inner: stored, unit: dtype.swap_unit() })
        } else {
            stored
        };
        Ok(Tensor::new(path, dtype, shape, bytes))
    }
}

/// A variable-length string dataset read whole at mount, as the string tensor form of
/// docs/tree.md 4: fixed-width elements, NUL-padded to the longest (at least one byte).
unsafe fn variable_strings(ds: hid_t, ty: hid_t, count: u64) -> Result<(DType, Arc<dyn TensorBytes>), String> {
    let too_large = || format!("strings over {MAX_STRING_BYTES} bytes");
    // SAFETY: valid ids under the global lock; `ptrs` holds one pointer per element, as the
    // variable-length memory type asks, and what libhdf5 allocated into it is reclaimed before
    // returning (the strings are copied out first).
    unsafe {
        let space = Id(hdf5_sys::h5d::H5Dget_space(ds), H5Sclose);
        // Sizes are checked before anything is read: elements may share one long heap string.
        // A scalar's one string lies whole in the file (and libhdf5 2.0 crashes sizing it).
        let mut heap_bytes: hsize_t = 0;
        if hdf5_sys::h5s::H5Sget_simple_extent_ndims(space.0) > 0 && hdf5_sys::h5d::H5Dvlen_get_buf_size(ds, ty, space.0, &mut heap_bytes) < 0 {
            return Err("libhdf5 could not size the strings".into());
        }
        let pointer_bytes = count.checked_mul(size_of::<*mut c_char>() as u64).ok_or_else(too_large)?;
        if heap_bytes.max(pointer_bytes) > MAX_STRING_BYTES {
            return Err(too_large());
        }
        let mut ptrs: Vec<*mut c_char> = vec![std::ptr::null_mut(); count as usize];
        if H5Dread(ds, ty, 0, 0, H5P_DEFAULT, ptrs.as_mut_ptr().cast()) < 0 {
            return Err("libhdf5 could not read the strings".into());
        }
        let texts: Vec<&[u8]> = ptrs.iter().map(|&p| if p.is_null() { &[][..] } else { CStr::from_ptr(p).to_bytes() }).collect();
        let width = texts.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        let padded = (width as u64).checked_mul(count).filter(|&n| n <= MAX_STRING_BYTES);
        let out = padded.map(|n| {
            let mut out = Vec::with_capacity(n as usize);
            for t in &texts {
                out.extend_from_slice(t);
                out.resize(out.len() + width - t.len(), 0);
            }
            out
        });
        drop(texts);
        H5Treclaim(ty, space.0, H5P_DEFAULT, ptrs.as_mut_ptr().cast());
        let out = out.ok_or_else(too_large)?;
        Ok((DType::Str(width), Arc::new(InMemory(out.into()))))
    }
}

/// The bytes of a dataset that is not contiguous in the file, from its creation property list.
unsafe fn stored_bytes(ds: &Dataset, ty: hid_t, dtype: DType, shape: &[u64], len: u64, ctx: &H5Context) -> Result<Arc<dyn TensorBytes>, Skipped> {
    // SAFETY: as for describe: valid ids under the global lock; buffers sized from libhdf5's answers.
    unsafe {
        let dcpl = Id(hdf5_sys::h5d::H5Dget_create_plist(ds.id()), H5Pclose);
        if H5Pget_external_count(dcpl.0) > 0 {
            return Err(Skipped("data in external files".into()));
        }
        let fill = fill_value(dcpl.0, ty, dtype.size());
        let stored: Arc<dyn TensorBytes> = match H5Pget_layout(dcpl.0) {
            // Only unallocated (or empty) contiguous data reaches here.
            H5D_layout_t::H5D_CONTIGUOUS => Arc::new(Filled { fill, len }),
            H5D_layout_t::H5D_COMPACT => {
                if len > MAX_INLINE_BYTES {
                    return Err(Skipped("compact dataset larger than the format allows".into()));
                }
                Arc::new(InMemory(read_selection(ds.id(), ty, None, len as usize).map_err(Skipped)?.into()))
            }
            H5D_layout_t::H5D_CHUNKED => {
                let rank = shape.len();
                let mut chunk = vec![0 as hsize_t; rank.max(1)];
                if H5Pget_chunk(dcpl.0, rank as i32, chunk.as_mut_ptr()) != rank as i32 || chunk.iter().take(rank).any(|&c| c == 0) {
                    return Err(Skipped("invalid chunk shape".into()));
                }
                chunk.truncate(rank);
                let chunk_bytes = Tensor::raw_size(dtype, &chunk).filter(|&b| b <= 1 << 32).ok_or_else(|| Skipped("chunk too large".into()))?;
                let file = ds.file().map_err(|e| Skipped(format!("cannot find the dataset's file: {e}")))?;
                let token = ds.loc_info().map_err(|e| Skipped(format!("cannot locate the dataset: {e}")))?.token;
                let chunked = Chunked {
                    file,
                    token,
                    file_type: Arc::new(Id(hdf5_sys::h5t::H5Tcopy(ty), H5Tclose)),
                    blob: ctx.blob.clone(),
                    cache: ctx.cache.clone(),
                    cache_id: ctx.cache.new_id(),
                    shape: shape.to_vec(),
                    chunk,
                    elem: dtype.size(),
                    chunk_bytes,
                    len,
                    filters: filters(dcpl.0),
                    fill,
                    index: OnceLock::new(),
                };
                // libhdf5 reads an archive member through a memory map, where a source
                // truncated while mounted would raise SIGBUS: read its chunk index now, so that
                // after the mount only `pread` (which reports such changes) touches the source.
                if !matches!(ctx.blob, Blob::File(_)) {
                    chunked.chunk_index().map_err(|e| Skipped(e.to_string()))?;
                }
                Arc::new(chunked)
            }
            other => return Err(Skipped(format!("{other:?} storage"))),
        };
        Ok(stored)
    }
}

/// The fill value's bytes in file byte order (zeros when none is defined).
unsafe fn fill_value(dcpl: hid_t, ty: hid_t, size: usize) -> Vec<u8> {
    let mut fill = vec![0u8; size.max(1)];
    // SAFETY: `fill` has room for one element of `ty` (`size` is its size).
    if unsafe { H5Pget_fill_value(dcpl, ty, fill.as_mut_ptr().cast()) } < 0 {
        fill.iter_mut().for_each(|b| *b = 0);
    }
    fill.truncate(size);
    fill
}

/// Reads raw file-order bytes of a selection (the whole dataset, or a hyperslab).
unsafe fn read_selection(ds: hid_t, ty: hid_t, slab: Option<(&[u64], &[u64])>, len: usize) -> Result<Vec<u8>, String> {
    // SAFETY: `ds` and `ty` are valid ids under the global lock; the buffer holds `len` bytes, the selection's size in file order.
    unsafe {
        let mut buf = vec![0u8; len];
        let status = match slab {
            None => H5Dread(ds, ty, 0, 0, H5P_DEFAULT, buf.as_mut_ptr().cast()),
            Some((start, count)) => {
                let file_space = Id(hdf5_sys::h5d::H5Dget_space(ds), H5Sclose);
                H5Sselect_hyperslab(file_space.0, H5S_seloper_t::H5S_SELECT_SET, start.as_ptr(), std::ptr::null(), count.as_ptr(), std::ptr::null());
                let mem_space = Id(H5Screate_simple(count.len() as i32, count.as_ptr(), std::ptr::null()), H5Sclose);
                H5Dread(ds, ty, mem_space.0, file_space.0, H5P_DEFAULT, buf.as_mut_ptr().cast())
            }
        };
        if status < 0 { Err("libhdf5 could not read the data".into()) } else { Ok(buf) }
    }
}

/// A dataset never written: every element is the fill value.
struct Filled {
    fill: Vec<u8>,
    len: u64,
}

impl TensorBytes for Filled {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        fill_from(&self.fill, offset, buf);
        Ok(())
    }
}

fn fill_from(fill: &[u8], offset: u64, buf: &mut [u8]) {
    let n = fill.len().max(1) as u64;
    for (i, b) in buf.iter_mut().enumerate() {
        *b = fill.get(((offset + i as u64) % n) as usize).copied().unwrap_or(0);
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Filter {
    Deflate,
    Shuffle,
    Fletcher32,
    Lzf,
    /// Anything else: the chunk is decoded by libhdf5 itself.
    Other(i32),
}

unsafe fn filters(dcpl: hid_t) -> Vec<Filter> {
    // SAFETY: `dcpl` is a valid property list; the name buffer's length is passed with it.
    unsafe {
        (0..H5Pget_nfilters(dcpl).max(0) as c_uint)
            .map(|i| {
                let mut flags: c_uint = 0;
                let mut nelmts: usize = 0;
                let mut name = [0 as c_char; 8];
                let mut config: c_uint = 0;
                let id = H5Pget_filter2(dcpl, i, &mut flags, &mut nelmts, std::ptr::null_mut(), name.len(), name.as_mut_ptr(), &mut config);
                match id {
                    1 => Filter::Deflate,
                    2 => Filter::Shuffle,
                    3 => Filter::Fletcher32,
                    32000 => Filter::Lzf,
                    other => Filter::Other(other),
                }
            })
            .collect()
    }
}

thread_local! {
    /// Per-thread buffers for decoding chunks (see `Chunked::load`).
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Scratch buffers larger than this are freed after use rather than kept for the next chunk
/// (h5py's automatic chunks are at most 1 MiB).
const MAX_SCRATCH_BYTES: usize = 1 << 20;

struct ChunkLocation {
    addr: u64,
    size: u64,
    filter_mask: u32,
}

/// A chunked dataset: only the chunks a read touches are decoded, and they are kept in the
/// shared cache.
struct Chunked {
    /// The file and the dataset's address in it. The dataset itself is opened only while its
    /// chunk index is built or libhdf5 decodes a chunk: libhdf5 spends ~70 KiB on every open
    /// chunked dataset, which for thousands of tensors would dwarf the chunk cache.
    file: hdf5::File,
    token: hdf5::LocationToken,
    file_type: Arc<Id>,
    blob: Blob,
    cache: Arc<ChunkCache>,
    cache_id: u64,
    shape: Vec<u64>,
    chunk: Vec<u64>,
    elem: usize,
    chunk_bytes: u64,
    len: u64,
    filters: Vec<Filter>,
    fill: Vec<u8>,
    /// Chunk number (row-major over the chunk grid) -> where it is stored; built on first read.
    index: OnceLock<Result<HashMap<u64, ChunkLocation>, String>>,
}

// SAFETY: the HDF5 ids are only used under libhdf5's global lock.
unsafe impl Send for Chunked {}
// SAFETY: as for Send: the ids are only used under the global lock.
unsafe impl Sync for Chunked {}

impl Chunked {
    /// Runs `f` on the dataset's id, opened for the call, under libhdf5's lock.
    fn with_dataset<T>(&self, f: impl FnOnce(hid_t) -> Result<T, String>) -> Result<T, String> {
        locked(|| {
            let dataset = self.file.open_by_token(self.token).map_err(|e| format!("cannot reopen the dataset: {e}"))?;
            f(dataset.id())
        })
    }

    fn grid(&self) -> Vec<u64> {
        self.shape.iter().zip(&self.chunk).map(|(s, c)| s.div_ceil(*c)).collect()
    }

    fn chunk_index(&self) -> Result<&HashMap<u64, ChunkLocation>, ReadError> {
        self.index
            .get_or_init(|| self.with_dataset(|id| self.build_index(id)))
            .as_ref()
            .map_err(|e| ReadError::Corrupt(e.clone()))
    }

    fn build_index(&self, dataset: hid_t) -> Result<HashMap<u64, ChunkLocation>, String> {
        struct Visit<'a> {
            chunked: &'a Chunked,
            grid: Vec<u64>,
            out: HashMap<u64, ChunkLocation>,
            bad: Option<String>,
        }
        unsafe extern "C" fn visit(offset: *const hsize_t, mask: c_uint, addr: haddr_t, size: hsize_t, data: *mut c_void) -> i32 {
            // SAFETY: `data` is the `Visit` passed to H5Dchunk_iter below, alive for the whole iteration.
            let v = unsafe { &mut *(data as *mut Visit) };
            let rank = v.chunked.shape.len();
            // SAFETY: libhdf5 passes an offset array of the dataset's rank.
            let offset = unsafe { std::slice::from_raw_parts(offset, rank) };
            let mut number = 0u64;
            for (d, &start) in offset.iter().enumerate() {
                let coord = start / v.chunked.chunk[d];
                if coord >= v.grid[d] {
                    v.bad = Some("chunk outside the dataset".into());
                    return -1;
                }
                number = number * v.grid[d] + coord;
            }
            if addr.checked_add(size).is_none_or(|end| end > v.chunked.blob.len()) {
                v.bad = Some(format!("chunk at {addr} (+{size} bytes) lies outside the file"));
                return -1;
            }
            v.out.insert(number, ChunkLocation { addr, size, filter_mask: mask });
            0
        }
        let mut v = Visit { chunked: self, grid: self.grid(), out: HashMap::new(), bad: None };
        // SAFETY: `dataset` is valid under the global lock; `v` outlives the iteration that calls `visit` with it.
        let status = unsafe { H5Dchunk_iter(dataset, H5P_DEFAULT, Some(visit), (&mut v as *mut Visit).cast()) };
        if let Some(bad) = v.bad {
            return Err(bad);
        }
        if status < 0 {
            return Err("cannot read the chunk index".into());
        }
        Ok(v.out)
    }

    /// The decoded bytes of chunk `number`, always of the full chunk shape.
    fn load(&self, number: u64) -> Result<Arc<[u8]>, ReadError> {
        let Some(loc) = self.chunk_index()?.get(&number) else {
            let mut out = vec![0u8; self.chunk_bytes as usize];
            fill_from(&self.fill, 0, &mut out);
            return Ok(out.into());
        };
        let active: Vec<Filter> = self
            .filters
            .iter()
            .enumerate()
            .filter(|(i, _)| loc.filter_mask & (1 << i) == 0)
            .map(|(_, f)| *f)
            .collect();
        if active.iter().any(|f| matches!(f, Filter::Other(_))) {
            return self.load_with_libhdf5(number).map(Arc::from);
        }
        // The stored bytes and each filter's output go to two buffers kept per thread; only the
        // result, which the cache keeps, is allocated.
        SCRATCH.with_borrow_mut(|(data, spare)| {
            let result = self.decode(loc, &active, data, spare);
            if data.capacity().max(spare.capacity()) > MAX_SCRATCH_BYTES {
                (*data, *spare) = (Vec::new(), Vec::new());
            }
            result
        })
    }

    /// Reads chunk `loc` into `data` and undoes `active` filters, using `spare` for outputs.
    fn decode(&self, loc: &ChunkLocation, active: &[Filter], data: &mut Vec<u8>, spare: &mut Vec<u8>) -> Result<Arc<[u8]>, ReadError> {
        data.resize(loc.size as usize, 0);
        self.blob.read_at(loc.addr, data)?;
        for filter in active.iter().rev() {
            match filter {
                Filter::Deflate => inflate(data, self.chunk_bytes, spare)?,
                Filter::Shuffle => unshuffle(data, self.elem, spare),
                Filter::Fletcher32 => {
                    strip_fletcher32(data)?;
                    continue;
                }
                Filter::Lzf => lzf_decompress(data, self.chunk_bytes as usize, spare)?,
                Filter::Other(_) => unreachable!(),
            }
            std::mem::swap(data, spare);
        }
        if data.len() as u64 != self.chunk_bytes {
            return Err(ReadError::Corrupt(format!("chunk decodes to {} bytes, expected {}", data.len(), self.chunk_bytes)));
        }
        Ok(Arc::from(data.as_slice()))
    }

    /// Decodes one chunk through libhdf5 (filters wfs does not implement), under its lock.
    fn load_with_libhdf5(&self, number: u64) -> Result<Vec<u8>, ReadError> {
        let grid = self.grid();
        let mut coords = vec![0u64; grid.len()];
        let mut rest = number;
        for d in (0..grid.len()).rev() {
            coords[d] = rest % grid[d];
            rest /= grid[d];
        }
        let start: Vec<u64> = coords.iter().zip(&self.chunk).map(|(c, n)| c * n).collect();
        let count: Vec<u64> = start.iter().zip(&self.chunk).zip(&self.shape).map(|((s, c), n)| (*c).min(n - s)).collect();
        let clipped = count.iter().product::<u64>() as usize * self.elem;
        let data = self
            // SAFETY: `id` is the open dataset with_dataset lends under the lock; the buffer holds the clipped selection.
            .with_dataset(|id| unsafe { read_selection(id, self.file_type.0, Some((&start, &count)), clipped) })
            .map_err(ReadError::Corrupt)?;
        // Place the clipped box into a full-shape chunk, one innermost row at a time.
        let mut out = vec![0u8; self.chunk_bytes as usize];
        let rank = count.len();
        let row = count[rank - 1] as usize * self.elem;
        let rows = clipped.checked_div(row).unwrap_or(0);
        for r in 0..rows {
            let mut rem = r as u64;
            let mut dst = 0u64;
            let mut stride = 1u64;
            for d in (0..rank - 1).rev() {
                let i = rem % count[d];
                rem /= count[d];
                dst += i * stride;
                stride *= self.chunk[d];
            }
            let dst = (dst * self.chunk[rank - 1]) as usize * self.elem;
            out[dst..dst + row].copy_from_slice(&data[r * row..(r + 1) * row]);
        }
        Ok(out)
    }
}

impl TensorBytes for Chunked {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let rank = self.shape.len();
        let grid = self.grid();
        let elem = self.elem as u64;
        let mut pos = offset;
        let mut done = 0usize;
        let mut current: Option<(u64, Arc<[u8]>)> = None;
        while done < buf.len() {
            // Element coordinates of `pos`, its chunk, and its place inside the chunk.
            let mut rem = pos / elem;
            let within = pos % elem;
            let mut chunk_number = 0u64;
            let mut inner = 0u64;
            let mut coords = vec![0u64; rank];
            for d in (0..rank).rev() {
                coords[d] = rem % self.shape[d];
                rem /= self.shape[d];
            }
            for d in 0..rank {
                chunk_number = chunk_number * grid[d] + coords[d] / self.chunk[d];
                inner = inner * self.chunk[d] + coords[d] % self.chunk[d];
            }
            // Elements left in this chunk's row and in the dataset's row.
            let last = rank - 1;
            let run = (self.chunk[last] - coords[last] % self.chunk[last]).min(self.shape[last] - coords[last]);
            let available = (run * elem - within) as usize;
            let n = available.min(buf.len() - done);
            let data = match &current {
                Some((number, data)) if *number == chunk_number => data.clone(),
                _ => {
                    let data = self.cache.get_or_load((self.cache_id, chunk_number), || self.load(chunk_number))?;
                    current = Some((chunk_number, data.clone()));
                    data
                }
            };
            let start = (inner * elem + within) as usize;
            buf[done..done + n].copy_from_slice(&data[start..start + n]);
            done += n;
            pos += n as u64;
        }
        Ok(())
    }
}

/// What lies below a group: subgroup paths and datasets with their paths.
#[derive(Default)]
pub struct Contents {
    pub groups: Vec<Vec<String>>,
    pub datasets: Vec<(Vec<String>, Dataset)>,
    /// Objects libhdf5 refused to open (damaged metadata), with its reason.
    pub unreadable: Vec<(Vec<String>, String)>,
}

/// Everything below `group` (hard links only, each object once, at most `max_depth` deep).
pub fn walk_group(group: &Group, max_depth: usize) -> Contents {
    let mut out = Contents::default();
    let mut seen = std::collections::HashSet::new();
    walk(group, &mut Vec::new(), max_depth, &mut seen, &mut out);
    out
}

/// A hard-linked member of a group.
pub struct Child {
    pub name: String,
    pub kind: hdf5::LocationType,
    /// Where the object header lies in the file: a file written in one pass (as h5py does)
    /// allocates objects in creation order, so sorting by it recovers that order.
    pub address: u64,
}

/// The hard-linked members of `group`, in name order.
pub fn children(group: &Group) -> Vec<Child> {
    let mut names = Vec::new();
    let _ = locked(|| {
        group.iter_visit_default(|name, info| {
            if matches!(info.link_type, hdf5::LinkType::Hard) {
                names.push(name.to_string());
            }
            Ok(())
        })
    });
    names
        .into_iter()
        .filter_map(|name| {
            let kind = locked(|| group.loc_info_by_name(&name)).ok()?.loc_type;
            // SAFETY: the group's id is valid while `group` lives, and the lock is held.
            let address = locked(|| unsafe { object_address(group.id(), &name) })?;
            Some(Child { name, kind, address })
        })
        .collect()
}

unsafe fn object_address(loc: hid_t, name: &str) -> Option<u64> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut info = std::mem::MaybeUninit::<hdf5_sys::h5o::H5O_info2_t>::uninit();
    // SAFETY: `loc` is a valid id, `cname` a NUL-terminated name, `info` written by the call before it is read.
    let status = unsafe { hdf5_sys::h5o::H5Oget_info_by_name3(loc, cname.as_ptr(), info.as_mut_ptr(), hdf5_sys::h5o::H5O_INFO_BASIC, H5P_DEFAULT) };
    if status < 0 {
        return None;
    }
    // The native token is the object's address, little-endian; the sys crate keeps the bytes
    // private, but the type is `repr(C)` over exactly those 16 bytes.
    // SAFETY: `H5O_token_t` is `repr(C)` over exactly 16 bytes, and the call above succeeded, so `info` is initialised.
    let token: [u8; 16] = unsafe { std::mem::transmute(info.assume_init().token) };
    Some(u64::from_le_bytes(token[..8].try_into().ok()?))
}

fn walk(group: &Group, prefix: &mut Vec<String>, depth: usize, seen: &mut std::collections::HashSet<u64>, out: &mut Contents) {
    for Child { name, kind, address } in children(group) {
        if !seen.insert(address) {
            continue;
        }
        prefix.push(name.clone());
        match kind {
            hdf5::LocationType::Group if depth > 0 => {
                if let Ok(child) = locked(|| group.group(&name)) {
                    out.groups.push(prefix.clone());
                    walk(&child, prefix, depth - 1, seen, out);
                }
            }
            hdf5::LocationType::Group => out.unreadable.push((prefix.clone(), "groups nested too deep".into())),
            hdf5::LocationType::Dataset => match locked(|| group.dataset(&name)) {
                Ok(ds) => out.datasets.push((prefix.clone(), ds)),
                Err(e) => out.unreadable.push((prefix.clone(), first_line(&e.to_string()))),
            },
            _ => {}
        }
        prefix.pop();
    }
}
