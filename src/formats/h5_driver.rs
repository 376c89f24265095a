//! A read-only libhdf5 virtual file driver over a [`Blob`]: libhdf5 asks for byte ranges and
//! the blob answers them, so an HDF5 file on a remote store is read in ranges (through the
//! remote block cache) rather than mapped or downloaded whole.
//!
//! The driver class below mirrors `H5FD_class_t` of the bundled libhdf5 (H5FDdevelop.h,
//! class version 1, HDF5 1.14 and 2.x); hdf5-sys's binding of it predates that layout.

use crate::error::OpenError;
use crate::source::Blob;
use hdf5_sys::h5::{haddr_t, herr_t, hsize_t};
use hdf5_sys::h5f::{H5F_ACC_RDONLY, H5F_close_degree_t, H5Fopen};
use hdf5_sys::h5fd::H5FD_mem_t;
use hdf5_sys::h5i::hid_t;
use hdf5_sys::h5p::{H5Pclose, H5Pcreate};
use std::ffi::{CString, c_char, c_int, c_uint, c_ulong, c_void};
use std::sync::OnceLock;

/// `struct H5FD_t`: the fields every driver's file starts with (libhdf5 fills them in).
#[repr(C)]
struct FileBase {
    driver_id: hid_t,
    cls: *const DriverClass,
    fileno: c_ulong,
    access_flags: c_uint,
    feature_flags: c_ulong,
    maxaddr: haddr_t,
    base_addr: haddr_t,
    threshold: hsize_t,
    alignment: hsize_t,
    paged_aggr: bool,
}

/// One open file of this driver.
#[repr(C)]
struct BlobFile {
    base: FileBase,
    blob: Blob,
    eoa: haddr_t,
}

type Unused = Option<unsafe extern "C" fn()>;

/// `H5FD_class_t`, with the callbacks a read-only driver has; the rest stay null.
#[repr(C)]
struct DriverClass {
    version: c_uint,
    value: c_int,
    name: *const c_char,
    maxaddr: haddr_t,
    fc_degree: H5F_close_degree_t,
    terminate: Unused,
    sb_size: Unused,
    sb_encode: Unused,
    sb_decode: Unused,
    fapl_size: usize,
    fapl_get: Unused,
    fapl_copy: Unused,
    fapl_free: Unused,
    dxpl_size: usize,
    dxpl_copy: Unused,
    dxpl_free: Unused,
    open: Option<unsafe extern "C" fn(*const c_char, c_uint, hid_t, haddr_t) -> *mut BlobFile>,
    close: Option<unsafe extern "C" fn(*mut BlobFile) -> herr_t>,
    cmp: Option<unsafe extern "C" fn(*const BlobFile, *const BlobFile) -> c_int>,
    query: Option<unsafe extern "C" fn(*const BlobFile, *mut c_ulong) -> herr_t>,
    get_type_map: Unused,
    alloc: Unused,
    free: Unused,
    get_eoa: Option<unsafe extern "C" fn(*const BlobFile, H5FD_mem_t) -> haddr_t>,
    set_eoa: Option<unsafe extern "C" fn(*mut BlobFile, H5FD_mem_t, haddr_t) -> herr_t>,
    get_eof: Option<unsafe extern "C" fn(*const BlobFile, H5FD_mem_t) -> haddr_t>,
    get_handle: Unused,
    read: Option<unsafe extern "C" fn(*mut BlobFile, H5FD_mem_t, hid_t, haddr_t, usize, *mut c_void) -> herr_t>,
    write: Option<unsafe extern "C" fn(*mut BlobFile, H5FD_mem_t, hid_t, haddr_t, usize, *const c_void) -> herr_t>,
    read_vector: Unused,
    write_vector: Unused,
    read_selection: Unused,
    write_selection: Unused,
    flush: Unused,
    truncate: Unused,
    lock: Unused,
    unlock: Unused,
    del: Unused,
    ctl: Unused,
    fl_map: [H5FD_mem_t; 7],
}

// SAFETY: the class is immutable once made; its name points at a static string.
unsafe impl Send for DriverClass {}
// SAFETY: as for Send: immutable, and the name is static.
unsafe impl Sync for DriverClass {}

unsafe extern "C" {
    fn H5FDregister(cls: *const DriverClass) -> hid_t;
    fn H5Pset_driver(plist: hid_t, driver: hid_t, info: *const c_void) -> herr_t;
    fn H5Pget_driver_info(plist: hid_t) -> *const c_void;
}

/// Feature flags (H5FDpublic.h): metadata reads gathered into larger ones, raw data sieved.
const H5FD_FEAT_ACCUMULATE_METADATA: c_ulong = 0x2 | 0x4;
const H5FD_FEAT_DATA_SIEVE: c_ulong = 0x8;

/// The driver's id, registered once (the caller holds libhdf5's lock).
fn driver() -> hid_t {
    static CLASS: OnceLock<DriverClass> = OnceLock::new();
    static ID: OnceLock<hid_t> = OnceLock::new();
    let class = CLASS.get_or_init(|| DriverClass {
        version: 1,
        // Values up to 255 are reserved for The HDF Group's drivers; 512+ for testing ones.
        value: 700,
        name: c"wfs-blob".as_ptr(),
        maxaddr: haddr_t::MAX - 1,
        fc_degree: H5F_close_degree_t::H5F_CLOSE_WEAK,
        terminate: None,
        sb_size: None,
        sb_encode: None,
        sb_decode: None,
        fapl_size: size_of::<*const Blob>(),
        fapl_get: None,
        fapl_copy: None,
        fapl_free: None,
        dxpl_size: 0,
        dxpl_copy: None,
        dxpl_free: None,
        open: Some(open_file),
        close: Some(close_file),
        cmp: Some(compare),
        query: Some(query),
        get_type_map: None,
        alloc: None,
        free: None,
        get_eoa: Some(get_eoa),
        set_eoa: Some(set_eoa),
        get_eof: Some(get_eof),
        get_handle: None,
        read: Some(read),
        write: Some(refuse_write),
        read_vector: None,
        write_vector: None,
        read_selection: None,
        write_selection: None,
        flush: None,
        truncate: None,
        lock: None,
        unlock: None,
        del: None,
        ctl: None,
        fl_map: [H5FD_mem_t::H5FD_MEM_DEFAULT; 7],
    });
    // SAFETY: `class` is a fully initialised, leaked (never freed) class; registered once.
    *ID.get_or_init(|| unsafe { H5FDregister(class) })
}

unsafe extern "C" fn open_file(_name: *const c_char, flags: c_uint, fapl: hid_t, _maxaddr: haddr_t) -> *mut BlobFile {
    if flags & !H5F_ACC_RDONLY != 0 {
        return std::ptr::null_mut();
    }
    // The driver info is a copy of the pointer `open` passed to H5Pset_driver.
    // SAFETY: `fapl` is the file access property list libhdf5 passes to `open`, with our driver set on it.
    let info = unsafe { H5Pget_driver_info(fapl) } as *const *const Blob;
    if info.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the info is the `*const Blob` given to H5Pset_driver, which stays alive across H5Fopen.
    let blob = unsafe { (**info).clone() };
    // SAFETY: the base is plain data that libhdf5 fills in after open returns.
    let base = unsafe { std::mem::zeroed::<FileBase>() };
    Box::into_raw(Box::new(BlobFile { base, blob, eoa: 0 }))
}

unsafe extern "C" fn close_file(file: *mut BlobFile) -> herr_t {
    // SAFETY: `file` was made by Box::into_raw in `open`, and libhdf5 closes each file once.
    drop(unsafe { Box::from_raw(file) });
    0
}

unsafe extern "C" fn compare(a: *const BlobFile, b: *const BlobFile) -> c_int {
    (a as usize).cmp(&(b as usize)) as c_int
}

unsafe extern "C" fn query(_file: *const BlobFile, flags: *mut c_ulong) -> herr_t {
    // SAFETY: libhdf5 passes a valid pointer for the flags.
    unsafe { *flags = H5FD_FEAT_ACCUMULATE_METADATA | H5FD_FEAT_DATA_SIEVE };
    0
}

unsafe extern "C" fn get_eoa(file: *const BlobFile, _: H5FD_mem_t) -> haddr_t {
    // SAFETY: `file` is a live BlobFile made by `open` (libhdf5 calls no callback after close).
    unsafe { (*file).eoa }
}

unsafe extern "C" fn set_eoa(file: *mut BlobFile, _: H5FD_mem_t, addr: haddr_t) -> herr_t {
    // SAFETY: as for get_eoa.
    unsafe { (*file).eoa = addr };
    0
}

unsafe extern "C" fn get_eof(file: *const BlobFile, _: H5FD_mem_t) -> haddr_t {
    // SAFETY: as for get_eoa.
    unsafe { (*file).blob.len() }
}

/// Reads `size` bytes at `addr`; past the end of the blob reads zeros, as files do.
unsafe extern "C" fn read(file: *mut BlobFile, _: H5FD_mem_t, _dxpl: hid_t, addr: haddr_t, size: usize, buffer: *mut c_void) -> herr_t {
    // SAFETY: as for get_eoa.
    let blob = unsafe { &(*file).blob };
    // SAFETY: libhdf5 passes a buffer of `size` writable bytes.
    let buf = unsafe { std::slice::from_raw_parts_mut(buffer as *mut u8, size) };
    let inside = blob.len().saturating_sub(addr).min(size as u64) as usize;
    buf[inside..].fill(0);
    match blob.read_at(addr, &mut buf[..inside]) {
        Ok(()) => 0,
        Err(e) => {
            log::warn!("HDF5 read of {size} bytes at {addr}: {e}");
            -1
        }
    }
}

/// libhdf5 insists on a write callback; files are opened read-only, so it is never called.
unsafe extern "C" fn refuse_write(_: *mut BlobFile, _: H5FD_mem_t, _: hid_t, _: haddr_t, _: usize, _: *const c_void) -> herr_t {
    -1
}

/// Opens the HDF5 file in `blob` through this driver (the caller holds libhdf5's lock).
pub fn open(blob: &Blob) -> Result<hdf5::File, OpenError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let failed = || OpenError::corrupt("cannot read HDF5 data: not a valid HDF5 file, or not readable");
    let driver = driver();
    if driver < 0 {
        return Err(OpenError::unreadable("cannot register the HDF5 driver for remote files"));
    }
    let name = CString::new(format!("wfs-blob-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))).unwrap_or_default();
    let info: *const Blob = blob;
    // SAFETY: `info` points at `blob`, which outlives the open call; the property list is closed by its guard; under the caller's global lock.
    unsafe {
        let fapl = H5Pcreate(*hdf5::globals::H5P_FILE_ACCESS);
        if fapl < 0 {
            return Err(failed());
        }
        let file = if H5Pset_driver(fapl, driver, (&info as *const *const Blob).cast()) >= 0 {
            H5Fopen(name.as_ptr(), H5F_ACC_RDONLY, fapl)
        } else {
            -1
        };
        H5Pclose(fapl);
        if file < 0 {
            return Err(failed());
        }
        hdf5::from_id::<hdf5::File>(file).map_err(|_| failed())
    }
}
