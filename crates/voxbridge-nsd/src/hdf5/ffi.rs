//! The part of libhdf5's C API this crate calls, loaded at run time with `libloading` (so
//! building voxbridge needs no HDF5 headers or library; only reading an HDF5 file needs the
//! library). Types and constants are those of HDF5 >= 1.10 (`hid_t` is 64-bit from 1.10 on),
//! checked against `/usr/include/hdf5/serial/H5*public.h` of 1.10.
#![allow(unsafe_code)] // FFI: every unsafe block says why it is sound

use std::cell::Cell;
use std::ffi::{CStr, OsString, c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use libloading::Library;

pub type Hid = i64;
pub type Herr = c_int;
pub type Htri = c_int;
pub type Hsize = u64;
pub type Hssize = i64;

pub const P_DEFAULT: Hid = 0;
pub const S_ALL: Hid = 0;
pub const E_DEFAULT: Hid = 0;
pub const F_ACC_RDONLY: c_uint = 0;
pub const F_ACC_RDWR: c_uint = 1;
pub const F_ACC_TRUNC: c_uint = 2;
/// `H5S_seloper_t::H5S_SELECT_SET`.
pub const S_SELECT_SET: c_int = 0;
/// `H5S_class_t::H5S_SCALAR`.
pub const S_SCALAR: c_int = 0;
/// `H5T_class_t::H5T_INTEGER`, `H5T_FLOAT`.
pub const T_INTEGER: c_int = 0;
pub const T_FLOAT: c_int = 1;
/// `H5T_sign_t::H5T_SGN_NONE`.
pub const T_SGN_NONE: c_int = 0;
/// `H5_index_t::H5_INDEX_NAME`, `H5_iter_order_t::H5_ITER_INC`.
pub const INDEX_NAME: c_int = 0;
pub const ITER_INC: c_int = 0;
/// `H5E_direction_t::H5E_WALK_DOWNWARD`: from the API call down to the most specific error.
const E_WALK_DOWNWARD: c_int = 1;

/// `H5E_error2_t`: one record of the error stack.
#[repr(C)]
pub struct ErrorRecord {
    _cls_id: Hid,
    _maj_num: Hid,
    _min_num: Hid,
    _line: c_uint,
    _func_name: *const c_char,
    _file_name: *const c_char,
    desc: *const c_char,
}

type WalkCallback = unsafe extern "C" fn(c_uint, *const ErrorRecord, *mut c_void) -> Herr;
type AutoCallback = Option<unsafe extern "C" fn(Hid, *mut c_void) -> Herr>;

/// Declares [`Functions`]: one field per C function, resolved by name.
macro_rules! functions {
    ($($field:ident = $symbol:literal: fn($($arg:ty),*) -> $ret:ty;)*) => {
        pub struct Functions {
            $(pub $field: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }

        impl Functions {
            /// # Safety
            /// `library` must be libhdf5 >= 1.10, whose symbols have exactly these signatures.
            unsafe fn resolve(library: &Library) -> Result<Self, String> {
                Ok(Functions {
                    $($field: {
                        // SAFETY: the caller guarantees the signature; the pointer is copied
                        // out, and stays valid because the `Library` is kept in `Api` forever.
                        let symbol = unsafe {
                            library.get::<unsafe extern "C" fn($($arg),*) -> $ret>(concat!($symbol, "\0").as_bytes())
                        };
                        *symbol.map_err(|e| format!("it has no `{}`: {e}", $symbol))?
                    },)*
                })
            }
        }
    };
}

functions! {
    open = "H5open": fn() -> Herr;
    eset_auto = "H5Eset_auto2": fn(Hid, AutoCallback, *mut c_void) -> Herr;
    ewalk = "H5Ewalk2": fn(Hid, c_int, WalkCallback, *mut c_void) -> Herr;
    fcreate = "H5Fcreate": fn(*const c_char, c_uint, Hid, Hid) -> Hid;
    fopen = "H5Fopen": fn(*const c_char, c_uint, Hid) -> Hid;
    fclose = "H5Fclose": fn(Hid) -> Herr;
    lget_name_by_idx = "H5Lget_name_by_idx": fn(Hid, *const c_char, c_int, c_int, Hsize, *mut c_char, usize, Hid) -> isize;
    dcreate = "H5Dcreate2": fn(Hid, *const c_char, Hid, Hid, Hid, Hid, Hid) -> Hid;
    dopen = "H5Dopen2": fn(Hid, *const c_char, Hid) -> Hid;
    dget_space = "H5Dget_space": fn(Hid) -> Hid;
    dget_type = "H5Dget_type": fn(Hid) -> Hid;
    dread = "H5Dread": fn(Hid, Hid, Hid, Hid, Hid, *mut c_void) -> Herr;
    dwrite = "H5Dwrite": fn(Hid, Hid, Hid, Hid, Hid, *const c_void) -> Herr;
    dclose = "H5Dclose": fn(Hid) -> Herr;
    screate = "H5Screate": fn(c_int) -> Hid;
    screate_simple = "H5Screate_simple": fn(c_int, *const Hsize, *const Hsize) -> Hid;
    sget_simple_extent_ndims = "H5Sget_simple_extent_ndims": fn(Hid) -> c_int;
    sget_simple_extent_dims = "H5Sget_simple_extent_dims": fn(Hid, *mut Hsize, *mut Hsize) -> c_int;
    sget_simple_extent_npoints = "H5Sget_simple_extent_npoints": fn(Hid) -> Hssize;
    sselect_hyperslab = "H5Sselect_hyperslab": fn(Hid, c_int, *const Hsize, *const Hsize, *const Hsize, *const Hsize) -> Herr;
    sclose = "H5Sclose": fn(Hid) -> Herr;
    tget_class = "H5Tget_class": fn(Hid) -> c_int;
    tget_size = "H5Tget_size": fn(Hid) -> usize;
    tget_sign = "H5Tget_sign": fn(Hid) -> c_int;
    tclose = "H5Tclose": fn(Hid) -> Herr;
    aexists = "H5Aexists": fn(Hid, *const c_char) -> Htri;
    acreate = "H5Acreate2": fn(Hid, *const c_char, Hid, Hid, Hid, Hid) -> Hid;
    aopen = "H5Aopen": fn(Hid, *const c_char, Hid) -> Hid;
    aget_space = "H5Aget_space": fn(Hid) -> Hid;
    aread = "H5Aread": fn(Hid, Hid, *mut c_void) -> Herr;
    awrite = "H5Awrite": fn(Hid, Hid, *const c_void) -> Herr;
    aclose = "H5Aclose": fn(Hid) -> Herr;
}

/// The native memory types this crate reads and writes (`H5T_NATIVE_*`).
#[derive(Debug, Clone, Copy)]
pub struct NativeTypes {
    pub float: Hid,
    pub double: Hid,
    pub int16: Hid,
    pub int64: Hid,
}

/// A loaded, initialised libhdf5.
pub struct Api {
    pub f: Functions,
    pub native: NativeTypes,
    /// `major.minor.release`.
    pub version: (u32, u32, u32),
    /// Where it was loaded from.
    pub source: String,
    /// Keeps the function pointers valid; never unloaded (HDF5 registers an `atexit` hook).
    _library: Library,
}

/// The names tried when `VOXBRIDGE_HDF5_LIB` is not set, in order: Debian's serial build (the
/// development link, then the runtime packages of 1.14 (`libhdf5-310`), 1.10 and 1.12), plain
/// builds (a cluster module, conda, Homebrew), then Debian's private directory.
pub fn default_candidates() -> Vec<OsString> {
    let mut names: Vec<String> = Vec::new();
    if cfg!(target_os = "macos") {
        names
            .extend(["libhdf5.dylib", "libhdf5.310.dylib", "libhdf5.200.dylib", "libhdf5.103.dylib"].map(String::from));
        names.extend(["/opt/homebrew/lib/libhdf5.dylib", "/usr/local/lib/libhdf5.dylib"].map(String::from));
    } else {
        names.extend(["libhdf5_serial.so", "libhdf5.so"].map(String::from));
        for soname in ["320", "310", "103", "200", "102", "101", "100"] {
            names.push(format!("libhdf5_serial.so.{soname}"));
            names.push(format!("libhdf5.so.{soname}"));
        }
        let triple = format!("{}-linux-gnu", std::env::consts::ARCH);
        names.push(format!("/usr/lib/{triple}/hdf5/serial/libhdf5.so"));
    }
    names.into_iter().map(OsString::from).collect()
}

/// The first of `candidates` (paths or library names) that loads as libhdf5 >= 1.10, with
/// `H5open` called, the native type ids read and automatic error printing off. Otherwise why
/// not: the failures of libraries that loaded or of files that exist (a missing name is the
/// usual case and says nothing); empty when none of them is there at all.
pub fn load_from(candidates: &[OsString]) -> Result<Api, String> {
    let mut problems = Vec::new();
    for candidate in candidates {
        let shown = candidate.to_string_lossy();
        // SAFETY: loading runs the library's initialisers; libhdf5's only set up its globals.
        match unsafe { Library::new(candidate) } {
            Ok(library) => match initialise(library, &shown) {
                Ok(api) => return Ok(api),
                Err(problem) => problems.push(format!("{shown}: {problem}")),
            },
            Err(e) if Path::new(candidate).exists() => problems.push(format!("{shown}: {e}")),
            Err(_) => {}
        }
    }
    Err(problems.join("; "))
}

fn initialise(library: Library, source: &str) -> Result<Api, String> {
    type Version = unsafe extern "C" fn(*mut c_uint, *mut c_uint, *mut c_uint) -> Herr;
    // SAFETY: `H5get_libversion(unsigned *, unsigned *, unsigned *)` has had this signature in
    // every HDF5 release.
    let libversion = *unsafe { library.get::<Version>(b"H5get_libversion\0") }
        .map_err(|e| format!("not libhdf5 (no `H5get_libversion`: {e})"))?;
    let (mut major, mut minor, mut release) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    if unsafe { libversion(&mut major, &mut minor, &mut release) } < 0 {
        return Err("H5get_libversion failed".into());
    }
    if (major, minor) < (1, 10) {
        return Err(format!("HDF5 {major}.{minor}.{release} is too old; voxbridge needs HDF5 1.10 or newer"));
    }
    // SAFETY: this is libhdf5 >= 1.10 (checked above), whose signatures `functions!` declares.
    let f = unsafe { Functions::resolve(&library) }?;
    // SAFETY: `H5open` takes no arguments; it initialises the library (and the globals below).
    if unsafe { (f.open)() } < 0 {
        return Err("H5open failed".into());
    }
    let global = |name: &str| -> Result<Hid, String> {
        let symbol = format!("{name}\0");
        // SAFETY: `H5T_NATIVE_*_g` are `hid_t` variables, set by `H5open` (called above).
        let address =
            unsafe { library.get::<*const Hid>(symbol.as_bytes()) }.map_err(|e| format!("it has no `{name}`: {e}"))?;
        // SAFETY: the address of a live, initialised `hid_t` of the loaded library.
        Ok(unsafe { **address })
    };
    let native = NativeTypes {
        float: global("H5T_NATIVE_FLOAT_g")?,
        double: global("H5T_NATIVE_DOUBLE_g")?,
        int16: global("H5T_NATIVE_INT16_g")?,
        int64: global("H5T_NATIVE_INT64_g")?,
    };
    let api = Api { f, native, version: (major, minor, release), source: source.to_string(), _library: library };
    silence_errors(&api);
    Ok(api)
}

thread_local! {
    /// Calls of this thread that hold [`LOCK`] (HDF5 calls nest: a handle dropped inside a call).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread turned HDF5's automatic error printing off (per thread in
    /// thread-safe builds of HDF5).
    static SILENCED: Cell<bool> = const { Cell::new(false) };
}

/// Debian's libhdf5 is not thread-safe: every call goes through this lock.
static LOCK: Mutex<()> = Mutex::new(());

/// Holds [`LOCK`] (re-entrant within a thread) while HDF5 is being called.
pub struct Serial {
    _guard: Option<MutexGuard<'static, ()>>,
}

/// Enters HDF5: takes the lock unless this thread already holds it.
pub fn serial(api: &Api) -> Serial {
    let depth = DEPTH.get();
    let guard = (depth == 0).then(|| LOCK.lock().unwrap_or_else(PoisonError::into_inner));
    DEPTH.set(depth + 1);
    if !SILENCED.get() {
        silence_errors(api);
    }
    Serial { _guard: guard }
}

impl Drop for Serial {
    fn drop(&mut self) {
        // The guard (a field) is released after this, so the count is right while it is held.
        DEPTH.set(DEPTH.get() - 1);
    }
}

/// Errors come back as values ([`error_detail`]) instead of being printed to stderr.
fn silence_errors(api: &Api) {
    // SAFETY: `H5Eset_auto2(H5E_DEFAULT, NULL, NULL)` turns printing off; no pointers are kept.
    unsafe { (api.f.eset_auto)(E_DEFAULT, None, std::ptr::null_mut()) };
    SILENCED.set(true);
}

/// What HDF5's error stack says about the call that just failed (call with the lock still
/// held): the API call's description, then the most specific one.
pub fn error_detail(api: &Api) -> String {
    unsafe extern "C" fn collect(_n: c_uint, record: *const ErrorRecord, descriptions: *mut c_void) -> Herr {
        // SAFETY: HDF5 passes a valid record for the duration of the call, and `descriptions`
        // is the `Vec<String>` handed to `H5Ewalk2` below.
        let (record, descriptions) = unsafe { (&*record, &mut *descriptions.cast::<Vec<String>>()) };
        if !record.desc.is_null() {
            // SAFETY: `desc` is a NUL-terminated string owned by HDF5 for this call.
            descriptions.push(unsafe { CStr::from_ptr(record.desc) }.to_string_lossy().into_owned());
        }
        0
    }
    let mut descriptions: Vec<String> = Vec::new();
    // SAFETY: the callback matches `H5E_walk2_t` and only touches `descriptions`, which
    // outlives the call.
    unsafe { (api.f.ewalk)(E_DEFAULT, E_WALK_DOWNWARD, collect, (&raw mut descriptions).cast()) };
    match &descriptions[..] {
        [] => "HDF5 gave no details".into(),
        [only] => only.clone(),
        [first, .., last] => format!("{first}: {last}"),
    }
}
