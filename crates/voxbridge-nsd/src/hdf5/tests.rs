use std::ffi::OsString;

use super::*;

#[test]
fn a_missing_library_is_a_clear_error_naming_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    // Names that do not exist say nothing: the error is the install hint alone.
    let absent = [OsString::from("/nonexistent/libhdf5.so"), OsString::from("libhdf5_not_installed.so.999")];
    let Err(reason) = ffi::load_from(&absent) else { panic!("loaded a library that does not exist") };
    assert_eq!(reason, "");
    let message = Hdf5Error::Unavailable(reason).opening("NSD's HDF5 betas");
    for part in ["reading NSD's HDF5 betas needs the HDF5 C library at run time", "apt-get install libhdf5-dev"] {
        assert!(message.contains(part), "{message}");
    }
    assert!(
        message.contains("module load hdf5") && message.contains("VOXBRIDGE_HDF5_LIB=/path/libhdf5.so"),
        "{message}"
    );

    // A file that is there but is no library, and a library that is not libhdf5, are named.
    let not_a_library = dir.path().join("libhdf5.so");
    std::fs::write(&not_a_library, b"not an ELF file").unwrap();
    let Err(reason) = ffi::load_from(&[not_a_library.clone().into_os_string()]) else { panic!("loaded a text file") };
    assert!(reason.contains(&*not_a_library.to_string_lossy()), "{reason}");
    if cfg!(target_os = "linux") {
        let Err(reason) = ffi::load_from(&[OsString::from("libc.so.6")]) else { panic!("took libc for libhdf5") };
        assert!(reason.starts_with("libc.so.6: not libhdf5"), "{reason}");
    }
}

#[test]
fn datasets_and_attributes_round_trip() {
    let (version, source) = library().unwrap_or_else(|e| panic!("{e}"));
    assert!(version >= (1, 10, 0), "{version:?} from {source}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("round.h5");
    let file = File::create(&path).unwrap();
    let values: Vec<f32> = (0..12).map(|i| i as f32 / 2.0).collect();
    let created = file.create_dataset("floats", &[3, 4], &values).unwrap();
    assert_eq!(created.shape(), [3, 4]);
    drop(created);
    file.create_dataset("shorts", &[2, 2], &[1i16, -2, 3, -4]).unwrap();
    let refused = file.create_dataset("wrong", &[2, 2], &[1.0f64]).unwrap_err().to_string();
    assert!(refused.contains("`wrong`") && refused.contains("1 values for shape [2, 2]"), "{refused}");
    file.set_attr_i64("rows_done", 2).unwrap();
    drop(file);

    let file = File::open_rw(&path).unwrap();
    assert_eq!(file.attr_i64("rows_done").unwrap(), 2);
    file.set_attr_i64("rows_done", 3).unwrap();
    drop(file);

    let file = File::open(&path).unwrap();
    let mut names = file.member_names();
    names.sort();
    assert_eq!(names, ["floats", "shorts"]);
    assert_eq!(file.attr_i64("rows_done").unwrap(), 3);
    assert!(file.has_attr("rows_done").unwrap() && !file.has_attr("convnext_rows_done").unwrap());
    let floats = file.dataset("floats").unwrap();
    let shorts = file.dataset("shorts").unwrap();
    drop(file);
    // The datasets outlive the file handle.
    assert_eq!(floats.element_type().unwrap().to_string(), "float32");
    assert!(floats.element_type().unwrap().is_f32_or_f64());
    assert_eq!(floats.read_f32().unwrap(), values);
    assert_eq!(floats.read_rows_f32(1..3).unwrap(), values[4..]);
    assert!(floats.read_rows_f32(2..2).unwrap().is_empty());
    let past = floats.read_rows_f32(2..4).unwrap_err().to_string();
    assert!(past.contains("rows 2..4") && past.contains("`floats`") && past.contains("has 3 rows"), "{past}");
    assert_eq!(shorts.element_type().unwrap().to_string(), "int16");
    assert!(!shorts.element_type().unwrap().is_f32_or_f64());
    assert_eq!(shorts.read_rows_f32(1..2).unwrap(), [3.0, -4.0]);
}

#[test]
fn failures_name_the_file_the_object_and_what_hdf5_says() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.h5");
    std::fs::write(&text, "not HDF5").unwrap();
    let e = File::open(&text).unwrap_err();
    let message = e.opening("NSD's HDF5 betas");
    assert!(message.starts_with("not a readable HDF5 file: opening") && message.contains("text.h5"), "{message}");
    assert!(message.contains("unable to open file"), "{message}");

    let path = dir.path().join("empty.h5");
    drop(File::create(&path).unwrap());
    let file = File::open(&path).unwrap();
    let e = file.dataset("betas").unwrap_err().to_string();
    assert!(e.contains("opening dataset `betas` of") && e.contains("empty.h5"), "{e}");
    let e = file.attr_i64("rows_done").unwrap_err().to_string();
    assert!(e.contains("reading attribute `rows_done` of") && e.contains("empty.h5"), "{e}");
    assert!(file.member_names().is_empty());
}
