//! The `nsd-scale` preset streams: its peak heap stays bounded by a few shards, not by the size
//! of the dataset. Run on a reduced session count (subject 1, 2 sessions) with NSD's real voxel
//! count and 256×1664 CLIP tokens; the heap is measured by a counting allocator, so the figure is
//! exact and does not depend on the machine's load.
#![allow(unsafe_code)] // the global allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use voxbridge_data::Storage;
use voxbridge_sim::{SimOptions, SimSpec, simulate};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: f64 = (1 << 20) as f64;

#[test]
fn nsd_scale_memory_is_bounded_by_shards_not_dataset() {
    let spec = SimSpec::nsd_scale().restrict(Some(&[1]), Some(2));
    assert_eq!(spec.subjects[0].voxels, 15724);
    assert_eq!(spec.shapes.clip_tokens, [256, 1664]);
    let dir = tempfile::tempdir().unwrap();
    let out = Storage::open(dir.path().to_str().unwrap()).unwrap();

    let baseline = CURRENT.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let result = simulate(&spec, 0, out, &SimOptions::default(), &mut |_| {}).unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - baseline;

    let files = &result.manifest.files;
    let written: u64 = files.iter().map(|f| f.bytes).sum();
    let largest = files.iter().map(|f| f.bytes).max().unwrap();
    eprintln!(
        "nsd-scale (subject 1, 2 sessions): wrote {:.0} MiB in {} files (largest {:.0} MiB); peak heap {:.0} MiB",
        written as f64 / MIB,
        files.len(),
        largest as f64 / MIB,
        peak as f64 / MIB
    );
    assert!(written as f64 > 800.0 * MIB, "the run should be large enough to show streaming");
    // A shard is built in memory (rows, Arrow arrays of one row group, encoded bytes), so the
    // bound is a small multiple of the largest shard plus the model's fixed tables.
    let bound = 3 * largest as usize + (64 << 20);
    assert!(peak < bound, "peak {:.0} MiB exceeds {:.0} MiB", peak as f64 / MIB, bound as f64 / MIB);
    assert!((peak as u64) < written / 2, "peak heap must not scale with the dataset");
}
