//! [`BlockingStore`] against a real S3 server (moto, started by scripts/test.sh, which sets
//! `AWS_ENDPOINT` and `AWS_BUCKET`): single and multipart puts read back whole, and a
//! create-only put refuses to overwrite. Skipped without a server.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{PutMode, PutOptions};
use voxbridge_objstore::{BlockingStore, Upload};

#[test]
fn s3_puts_in_one_piece_and_in_parts_read_back_whole() {
    if std::env::var("AWS_ENDPOINT").is_err() {
        eprintln!("skipped: AWS_ENDPOINT is not set (scripts/test.sh starts a moto S3 server and sets it)");
        return;
    }
    let bucket = std::env::var("AWS_BUCKET").unwrap_or_else(|_| "test-bucket".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let unique = format!("objstore-{}-{nanos}", std::process::id());
    let url = voxbridge_objstore::location_url(&format!("s3://{bucket}/{unique}")).unwrap();
    let (store, root) = voxbridge_objstore::open(&url).unwrap();
    let store = BlockingStore::new(Arc::from(store)).unwrap();
    let at = |name: &str| root.clone().join(name);

    // S3 wants parts of at least 5 MiB but the last.
    let upload = Upload { single_put_max: 5 << 20, part_size: 5 << 20, parts_in_flight: 2 };
    let big: Vec<u8> = (0..(11 << 20) + 123).map(|i: usize| (i % 251) as u8).collect();
    store.put(&at("big"), Bytes::from(big.clone()), upload).unwrap();
    store.put(&at("small"), Bytes::from_static(b"tiny"), upload).unwrap();
    assert_eq!(store.get(&at("big")).unwrap().as_ref(), big.as_slice());
    assert_eq!(store.head(&at("small")).unwrap().size, 4);
    let mut names: Vec<String> =
        store.list(Some(&root)).unwrap().into_iter().map(|m| m.location.filename().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, ["big", "small"]);

    let create = || PutOptions { mode: PutMode::Create, ..Default::default() };
    store.put_opts(&at("COMMIT"), Bytes::from_static(b"1"), create()).unwrap();
    let again = store.put_opts(&at("COMMIT"), Bytes::from_static(b"2"), create());
    assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
    assert!(matches!(store.get(&Path::from(format!("{unique}/none"))), Err(object_store::Error::NotFound { .. })));

    for name in ["big", "small", "COMMIT"] {
        store.delete(&at(name)).unwrap();
    }
    assert!(store.list(Some(&root)).unwrap().is_empty());
}
