//! HDF5 files through the system's libhdf5, loaded the first time a file is opened (see
//! [`ffi`]): building voxbridge needs no HDF5, only reading NSD's betas (or `.h5` targets)
//! does. Covers what the import needs: open a file, a dataset's shape and element type, rows of
//! it as `f32` (libhdf5 converts int16/float64/… to float32), integer attributes; and, for the
//! fixtures, creating files, datasets and attributes. Every failure is an error naming the
//! operation, the dataset or attribute and the file; handles close themselves.
#![allow(unsafe_code)] // FFI: every unsafe block says why it is sound

mod ffi;

use std::ffi::{CString, c_int};
use std::fmt;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use ffi::{Api, Herr, Hid, Hsize};

/// Names the libhdf5 to load (a path), instead of searching the usual names.
pub const LIBRARY_VAR: &str = "VOXBRIDGE_HDF5_LIB";

#[derive(Debug, Clone, PartialEq)]
pub enum Hdf5Error {
    /// No usable libhdf5 could be loaded: why (empty when none was found at all).
    Unavailable(String),
    /// A call failed: what was being done, on which dataset or attribute of which file, and
    /// HDF5's description.
    Failed(String),
}

impl Hdf5Error {
    /// The message for a failure to open a file holding `what` (e.g. "NSD's HDF5 betas").
    pub fn opening(&self, what: &str) -> String {
        match self {
            Hdf5Error::Unavailable(reason) => format!("reading {what} needs {}", install_hint(reason)),
            Hdf5Error::Failed(message) => format!("not a readable HDF5 file: {message}"),
        }
    }
}

impl fmt::Display for Hdf5Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hdf5Error::Unavailable(reason) => write!(f, "reading HDF5 needs {}", install_hint(reason)),
            Hdf5Error::Failed(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Hdf5Error {}

fn install_hint(reason: &str) -> String {
    let hint = "the HDF5 C library at run time (Debian: apt-get install libhdf5-dev or libhdf5-310; a cluster: \
                module load hdf5; or set VOXBRIDGE_HDF5_LIB=/path/libhdf5.so)";
    if reason.is_empty() { hint.to_string() } else { format!("{hint}; {reason}") }
}

/// The loaded library, or why there is none (tried once per process).
fn api() -> Result<&'static Api, Hdf5Error> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    let loaded = API.get_or_init(|| match std::env::var_os(LIBRARY_VAR).filter(|p| !p.is_empty()) {
        Some(path) => ffi::load_from(std::slice::from_ref(&path)).map_err(|reason| {
            let shown = path.to_string_lossy();
            if reason.is_empty() {
                format!("{LIBRARY_VAR}={shown} does not exist")
            } else {
                format!("{LIBRARY_VAR}: {reason}")
            }
        }),
        None => ffi::load_from(&ffi::default_candidates()),
    });
    loaded.as_ref().map_err(|reason| Hdf5Error::Unavailable(reason.clone()))
}

/// The version of the libhdf5 in use and where it was loaded from.
pub fn library() -> Result<((u32, u32, u32), &'static str), Hdf5Error> {
    api().map(|api| (api.version, api.source.as_str()))
}

/// `value`, or (negative: HDF5 failed) an error naming `what` with HDF5's description. Call
/// with the lock held, so the error stack is this call's.
fn checked<T: PartialOrd + Default>(api: &Api, value: T, what: &dyn Fn() -> String) -> Result<T, Hdf5Error> {
    if value < T::default() {
        Err(Hdf5Error::Failed(format!("{}: {}", what(), ffi::error_detail(api))))
    } else {
        Ok(value)
    }
}

/// An open HDF5 identifier, closed on drop.
struct Handle {
    api: &'static Api,
    id: Hid,
    close: unsafe extern "C" fn(Hid) -> Herr,
}

impl Handle {
    fn new(
        api: &'static Api,
        id: Hid,
        close: unsafe extern "C" fn(Hid) -> Herr,
        what: &dyn Fn() -> String,
    ) -> Result<Self, Hdf5Error> {
        checked(api, id, what).map(|id| Handle { api, id, close })
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hid {}", self.id)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _serial = ffi::serial(self.api);
        // SAFETY: `id` is open, owned by this handle alone, and `close` is its kind's close
        // function; it is closed once. A failure to close leaves nothing to do.
        unsafe { (self.close)(self.id) };
    }
}

fn c_string(text: &[u8], what: &dyn Fn() -> String) -> Result<CString, Hdf5Error> {
    CString::new(text).map_err(|_| Hdf5Error::Failed(format!("{}: the name holds a NUL byte", what())))
}

/// The product of `dims`, checked.
fn element_count(dims: &[Hsize], what: &dyn Fn() -> String) -> Result<usize, Hdf5Error> {
    dims.iter()
        .try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)))
        .ok_or_else(|| Hdf5Error::Failed(format!("{}: {dims:?} elements do not fit in memory", what())))
}

/// An HDF5 file. Datasets opened from it stay readable after it is dropped (libhdf5 closes
/// the file when its last object closes).
#[derive(Debug)]
pub struct File {
    handle: Handle,
    path: String,
}

impl File {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<File, Hdf5Error> {
        Self::open_with(path, ffi::F_ACC_RDONLY, "opening")
    }

    /// Opens `path` for reading and writing.
    pub fn open_rw(path: &Path) -> Result<File, Hdf5Error> {
        Self::open_with(path, ffi::F_ACC_RDWR, "opening (read-write)")
    }

    /// Creates `path`, replacing any file there.
    pub fn create(path: &Path) -> Result<File, Hdf5Error> {
        Self::open_with(path, ffi::F_ACC_TRUNC, "creating")
    }

    fn open_with(path: &Path, flags: std::ffi::c_uint, operation: &str) -> Result<File, Hdf5Error> {
        let api = api()?;
        let shown = path.display().to_string();
        let what = || format!("{operation} {shown}");
        let name = c_string(path.as_os_str().as_bytes(), &what)?;
        let _serial = ffi::serial(api);
        let id = if flags == ffi::F_ACC_TRUNC {
            // SAFETY: a NUL-terminated path, valid flags and the default property lists.
            unsafe { (api.f.fcreate)(name.as_ptr(), flags, ffi::P_DEFAULT, ffi::P_DEFAULT) }
        } else {
            // SAFETY: as above.
            unsafe { (api.f.fopen)(name.as_ptr(), flags, ffi::P_DEFAULT) }
        };
        let handle = Handle::new(api, id, api.f.fclose, &what)?;
        Ok(File { handle, path: shown })
    }

    /// The names of the objects in the file's root group (as many as can be listed).
    pub fn member_names(&self) -> Vec<String> {
        let api = self.handle.api;
        let _serial = ffi::serial(api);
        let mut names = Vec::new();
        for index in 0.. {
            let name_at = |buffer: *mut std::ffi::c_char, size: usize| {
                // SAFETY: the group "." (a NUL-terminated literal) of an open file; `buffer` is
                // null (size 0: HDF5 only returns the name's length) or holds `size` bytes.
                unsafe {
                    (api.f.lget_name_by_idx)(
                        self.handle.id,
                        c".".as_ptr(),
                        ffi::INDEX_NAME,
                        ffi::ITER_INC,
                        index,
                        buffer,
                        size,
                        ffi::P_DEFAULT,
                    )
                }
            };
            // Negative past the last link.
            let Ok(len) = usize::try_from(name_at(null_mut(), 0)) else { break };
            let mut buffer = vec![0u8; len + 1];
            if name_at(buffer.as_mut_ptr().cast(), buffer.len()) < 0 {
                break;
            }
            buffer.truncate(len);
            names.push(String::from_utf8_lossy(&buffer).into_owned());
        }
        names
    }

    /// The dataset at `name` (a path from the root group).
    pub fn dataset(&self, name: &str) -> Result<Dataset, Hdf5Error> {
        let api = self.handle.api;
        let what = || format!("opening dataset `{name}` of {}", self.path);
        let c_name = c_string(name.as_bytes(), &what)?;
        let _serial = ffi::serial(api);
        // SAFETY: an open file, a NUL-terminated name, the default access properties.
        let id = unsafe { (api.f.dopen)(self.handle.id, c_name.as_ptr(), ffi::P_DEFAULT) };
        let handle = Handle::new(api, id, api.f.dclose, &what)?;
        let mut dataset = Dataset { handle, name: name.to_string(), file: self.path.clone(), shape: Vec::new() };
        dataset.shape = dataset.dims()?.iter().map(|&d| d as usize).collect();
        Ok(dataset)
    }

    /// Writes `values` (row-major) as a new dataset `name` of `shape`, in `T`'s native type.
    pub fn create_dataset<T: Element>(&self, name: &str, shape: &[usize], values: &[T]) -> Result<Dataset, Hdf5Error> {
        let api = self.handle.api;
        let what = |operation: &'static str| move || format!("{operation} dataset `{name}` of {}", self.path);
        let dims: Vec<Hsize> = shape.iter().map(|&d| d as Hsize).collect();
        if element_count(&dims, &what("creating"))? != values.len() {
            let problem = format!("{} values for shape {shape:?}", values.len());
            return Err(Hdf5Error::Failed(format!("{}: {problem}", what("creating")())));
        }
        let c_name = c_string(name.as_bytes(), &what("creating"))?;
        let rank = c_int::try_from(dims.len()).unwrap_or(c_int::MAX);
        let native = T::native(&api.native);
        let _serial = ffi::serial(api);
        // SAFETY: `dims` holds `rank` extents; no maximum extents (null: fixed size).
        let space = unsafe { (api.f.screate_simple)(rank, dims.as_ptr(), null()) };
        let space = Handle::new(api, space, api.f.sclose, &what("describing the extent of"))?;
        let (id, p) = (self.handle.id, ffi::P_DEFAULT);
        // SAFETY: an open file, a NUL-terminated name, a native type, the space just made.
        let id = unsafe { (api.f.dcreate)(id, c_name.as_ptr(), native, space.id, p, p, p) };
        let handle = Handle::new(api, id, api.f.dclose, &what("creating"))?;
        // SAFETY: `values` holds exactly the dataset's element count (checked above) of `T`,
        // whose memory type is `native`.
        let written = unsafe { (api.f.dwrite)(handle.id, native, ffi::S_ALL, ffi::S_ALL, p, values.as_ptr().cast()) };
        checked(api, written, &what("writing"))?;
        Ok(Dataset { handle, name: name.to_string(), file: self.path.clone(), shape: shape.to_vec() })
    }

    /// Whether the root group has attribute `name`.
    pub fn has_attr(&self, name: &str) -> Result<bool, Hdf5Error> {
        let api = self.handle.api;
        let what = || format!("looking for attribute `{name}` of {}", self.path);
        let c_name = c_string(name.as_bytes(), &what)?;
        let _serial = ffi::serial(api);
        // SAFETY: an open file and a NUL-terminated name.
        let exists = unsafe { (api.f.aexists)(self.handle.id, c_name.as_ptr()) };
        Ok(checked(api, exists, &what)? > 0)
    }

    /// Opens attribute `name` of the root group, checking that it holds one value.
    fn scalar_attr(&self, name: &str, what: &dyn Fn() -> String) -> Result<Handle, Hdf5Error> {
        let api = self.handle.api;
        let c_name = c_string(name.as_bytes(), what)?;
        let _serial = ffi::serial(api);
        // SAFETY: an open file, a NUL-terminated name, the default access properties.
        let attr = Handle::new(
            api,
            unsafe { (api.f.aopen)(self.handle.id, c_name.as_ptr(), ffi::P_DEFAULT) },
            api.f.aclose,
            what,
        )?;
        // SAFETY: an open attribute.
        let space = Handle::new(api, unsafe { (api.f.aget_space)(attr.id) }, api.f.sclose, what)?;
        // SAFETY: an open dataspace.
        let points = checked(api, unsafe { (api.f.sget_simple_extent_npoints)(space.id) }, what)?;
        if points != 1 {
            return Err(Hdf5Error::Failed(format!("{}: it holds {points} values, not one", what())));
        }
        Ok(attr)
    }

    /// Attribute `name` of the root group: one value, as an integer.
    pub fn attr_i64(&self, name: &str) -> Result<i64, Hdf5Error> {
        let api = self.handle.api;
        let what = || format!("reading attribute `{name}` of {}", self.path);
        let _serial = ffi::serial(api);
        let attr = self.scalar_attr(name, &what)?;
        let mut value: i64 = 0;
        // SAFETY: the attribute holds one value (checked), read as one native int64.
        let read = unsafe { (api.f.aread)(attr.id, api.native.int64, (&raw mut value).cast()) };
        checked(api, read, &what)?;
        Ok(value)
    }

    /// Sets attribute `name` of the root group to `value` (an int64), creating it if needed.
    pub fn set_attr_i64(&self, name: &str, value: i64) -> Result<(), Hdf5Error> {
        let api = self.handle.api;
        let what = || format!("writing attribute `{name}` of {}", self.path);
        let _serial = ffi::serial(api);
        let attr = if self.has_attr(name)? {
            self.scalar_attr(name, &what)?
        } else {
            let c_name = c_string(name.as_bytes(), &what)?;
            // SAFETY: `H5Screate(H5S_SCALAR)` takes no pointers.
            let space = Handle::new(api, unsafe { (api.f.screate)(ffi::S_SCALAR) }, api.f.sclose, &what)?;
            let (id, p) = (self.handle.id, ffi::P_DEFAULT);
            // SAFETY: an open file, a NUL-terminated name, a native type, the scalar space.
            let attr = unsafe { (api.f.acreate)(id, c_name.as_ptr(), api.native.int64, space.id, p, p) };
            Handle::new(api, attr, api.f.aclose, &what)?
        };
        // SAFETY: the attribute holds one value (scalar or checked); `value` is one int64.
        let written = unsafe { (api.f.awrite)(attr.id, api.native.int64, (&raw const value).cast()) };
        checked(api, written, &what).map(drop)
    }
}

/// Element types a dataset can be written from (sealed: each names its native HDF5 type).
pub trait Element: sealed::Sealed + Copy {
    #[doc(hidden)]
    fn native(types: &ffi::NativeTypes) -> Hid;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($($t:ty => $field:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            fn native(types: &ffi::NativeTypes) -> Hid {
                types.$field
            }
        }
    )*};
}

element!(f32 => float, f64 => double, i16 => int16, i64 => int64);

/// A dataset's element type, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementType {
    /// `H5T_class_t`.
    class: c_int,
    /// Bytes.
    size: usize,
    signed: bool,
}

impl ElementType {
    /// float32 or float64.
    pub fn is_f32_or_f64(&self) -> bool {
        self.class == ffi::T_FLOAT && matches!(self.size, 4 | 8)
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.size * 8;
        match self.class {
            ffi::T_INTEGER if self.signed => write!(f, "int{bits}"),
            ffi::T_INTEGER => write!(f, "uint{bits}"),
            ffi::T_FLOAT => write!(f, "float{bits}"),
            class => {
                const NAMES: [&str; 9] = [
                    "times",
                    "strings",
                    "bit fields",
                    "opaque data",
                    "compounds",
                    "references",
                    "enums",
                    "vlens",
                    "arrays",
                ];
                let name = usize::try_from(class - 2).ok().and_then(|i| NAMES.get(i)).unwrap_or(&"an unknown type");
                write!(f, "{name} ({} bytes each)", self.size)
            }
        }
    }
}

/// A dataset: its shape when opened, reads converted to `f32`.
#[derive(Debug)]
pub struct Dataset {
    handle: Handle,
    name: String,
    file: String,
    shape: Vec<usize>,
}

impl Dataset {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn context(&self, operation: &str) -> String {
        format!("{operation} dataset `{}` of {}", self.name, self.file)
    }

    /// The current extent (read again before each read, so a buffer always fits it).
    fn dims(&self) -> Result<Vec<Hsize>, Hdf5Error> {
        let api = self.handle.api;
        let what = || self.context("reading the extent of");
        let _serial = ffi::serial(api);
        // SAFETY: an open dataset.
        let space = Handle::new(api, unsafe { (api.f.dget_space)(self.handle.id) }, api.f.sclose, &what)?;
        // SAFETY: an open dataspace.
        let rank = checked(api, unsafe { (api.f.sget_simple_extent_ndims)(space.id) }, &what)?;
        let mut dims = vec![0; rank as usize];
        // SAFETY: `dims` has room for `rank` extents; maximum extents are not asked for (null).
        checked(api, unsafe { (api.f.sget_simple_extent_dims)(space.id, dims.as_mut_ptr(), null_mut()) }, &what)?;
        Ok(dims)
    }

    /// The stored element type.
    pub fn element_type(&self) -> Result<ElementType, Hdf5Error> {
        let api = self.handle.api;
        let what = || self.context("reading the element type of");
        let _serial = ffi::serial(api);
        // SAFETY: an open dataset.
        let datatype = Handle::new(api, unsafe { (api.f.dget_type)(self.handle.id) }, api.f.tclose, &what)?;
        // SAFETY (these three): an open datatype.
        let class = checked(api, unsafe { (api.f.tget_class)(datatype.id) }, &what)?;
        let size = unsafe { (api.f.tget_size)(datatype.id) };
        let signed = class == ffi::T_INTEGER && unsafe { (api.f.tget_sign)(datatype.id) } != ffi::T_SGN_NONE;
        if size == 0 {
            return Err(Hdf5Error::Failed(format!("{}: {}", what(), ffi::error_detail(api))));
        }
        Ok(ElementType { class, size, signed })
    }

    /// Every element, row-major, as `f32`.
    pub fn read_f32(&self) -> Result<Vec<f32>, Hdf5Error> {
        let api = self.handle.api;
        let what = || self.context("reading");
        let _serial = ffi::serial(api);
        let mut values = vec![0f32; element_count(&self.dims()?, &what)?];
        let (id, all) = (self.handle.id, ffi::S_ALL);
        // SAFETY: `values` holds the dataset's element count (its extent, read under this
        // lock) of native floats.
        let read = unsafe { (api.f.dread)(id, api.native.float, all, all, ffi::P_DEFAULT, values.as_mut_ptr().cast()) };
        checked(api, read, &what)?;
        Ok(values)
    }

    /// Rows `rows` (along the first dimension), row-major, as `f32`.
    pub fn read_rows_f32(&self, rows: Range<usize>) -> Result<Vec<f32>, Hdf5Error> {
        let api = self.handle.api;
        let what = || self.context(&format!("reading rows {}..{} of", rows.start, rows.end));
        let _serial = ffi::serial(api);
        let dims = self.dims()?;
        let Some((&total, inner)) = dims.split_first() else {
            return Err(Hdf5Error::Failed(format!("{}: it is a scalar, not rows", what())));
        };
        if rows.start > rows.end || rows.end as Hsize > total {
            return Err(Hdf5Error::Failed(format!("{}: it has {total} rows", what())));
        }
        let count: Vec<Hsize> = std::iter::once(rows.len() as Hsize).chain(inner.iter().copied()).collect();
        let mut values = vec![0f32; element_count(&count, &what)?];
        if values.is_empty() {
            return Ok(values);
        }
        let start: Vec<Hsize> = std::iter::once(rows.start as Hsize).chain(inner.iter().map(|_| 0)).collect();
        // SAFETY: an open dataset.
        let file_space = Handle::new(api, unsafe { (api.f.dget_space)(self.handle.id) }, api.f.sclose, &what)?;
        // SAFETY: `start` and `count` hold one entry per dimension; stride and block are null (1).
        let selected = unsafe {
            (api.f.sselect_hyperslab)(file_space.id, ffi::S_SELECT_SET, start.as_ptr(), null(), count.as_ptr(), null())
        };
        checked(api, selected, &what)?;
        // SAFETY: `count` holds `rank` extents; no maximum extents.
        let memory = unsafe { (api.f.screate_simple)(count.len() as c_int, count.as_ptr(), null()) };
        let memory = Handle::new(api, memory, api.f.sclose, &what)?;
        // SAFETY: `values` holds exactly the memory space's element count of native floats,
        // and the file selection has the same shape.
        let read = unsafe {
            (api.f.dread)(
                self.handle.id,
                api.native.float,
                memory.id,
                file_space.id,
                ffi::P_DEFAULT,
                values.as_mut_ptr().cast(),
            )
        };
        checked(api, read, &what)?;
        Ok(values)
    }
}

#[cfg(test)]
mod tests;
