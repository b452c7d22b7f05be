//! `voxbridge ridge`: the ridge baseline of one subject, printed.

use voxbridge_experiment::baseline::ridge_baseline_of;

pub fn run(args: &crate::args::RidgeArgs) -> anyhow::Result<()> {
    let r = ridge_baseline_of(&args.data, args.subject, args.sessions, args.seed)?;
    println!(
        "subject {} sessions {:?}: {} training trials, {} test images, alpha {}: {}-way top-1 image {}, brain {} (chance {:.4})",
        r.subject,
        r.sessions,
        r.train_trials,
        r.test_images,
        r.alpha,
        r.retrieval.ways,
        crate::accuracy(&r.retrieval.image_top1, r.retrieval.loops),
        crate::accuracy(&r.retrieval.brain_top1, r.retrieval.loops),
        r.retrieval.chance
    );
    Ok(())
}
