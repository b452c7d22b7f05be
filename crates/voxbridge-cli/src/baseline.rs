//! `voxbridge ridge`: the ridge baseline of one subject, or its multi-space ridge, printed.

use voxbridge_experiment::baseline::ridge_baseline_of;
use voxbridge_experiment::multispace::multi_space_ridge_of;

pub fn run(args: &crate::args::RidgeArgs) -> anyhow::Result<()> {
    if let Some(spaces) = &args.spaces {
        let r = multi_space_ridge_of(&args.data, args.subject, args.sessions, spaces, args.seed)?;
        println!(
            "subject {} sessions {:?}: {} training trials, {} test images; λ per space by {}",
            r.subject, r.sessions, r.train_trials, r.test_images, r.folds
        );
        println!("{:<8} {:>6} {:>8} {:>10}  measure", "space", "width", "alpha", "score");
        for s in &r.spaces {
            let brain = match (s.brain_top1, s.ways) {
                (Some(b), Some(w)) => format!(" ({w}-way; brain top-1 {b:.3})"),
                _ => String::new(),
            };
            println!(
                "{:<8} {:>6} {:>8} {:>10.4}  {}{brain}",
                s.space.name(),
                s.width,
                s.alpha,
                s.score,
                s.space.measure()
            );
        }
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&r)?)?;
            println!("wrote {}", path.display());
        }
        return Ok(());
    }
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
