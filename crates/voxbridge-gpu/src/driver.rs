//! The CUDA version the installed driver supports, asked through `cuDriverGetVersion` (callable
//! before `cuInit`): NVRTC newer than that emits PTX the driver refuses.

#![allow(unsafe_code)]

use std::ffi::OsStr;

type CuDriverGetVersion = unsafe extern "C" fn(*mut i32) -> i32;

/// `(major, minor)` of the driver library `name` (a soname or a path), or `None` when it does
/// not load or answer.
pub fn cuda_version(name: impl AsRef<OsStr>) -> Option<(u32, u32)> {
    // SAFETY: loading the driver runs its initialisers, as loading it for use would.
    let lib = unsafe { libloading::Library::new(name.as_ref()) }.ok()?;
    // SAFETY: `cuDriverGetVersion(int*)` is the driver API's signature for this symbol.
    let get: libloading::Symbol<'_, CuDriverGetVersion> = unsafe { lib.get(b"cuDriverGetVersion\0") }.ok()?;
    let mut version = 0i32;
    // SAFETY: the pointer is valid for one int for the duration of the call.
    let rc = unsafe { get(&mut version) };
    let version = u32::try_from(version).ok().filter(|_| rc == 0)?;
    Some((version / 1000, (version % 1000) / 10))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_library_that_is_not_there_has_no_version() {
        assert_eq!(super::cuda_version("/nonexistent/libcuda.so.1"), None);
    }
}
