//! `voxbridge params` and `voxbridge predict`: MindEye2 architectures and checkpoints, through
//! voxbridge-experiment's `model_file` and `predict`.

use voxbridge_experiment::model_file::{load_model_config, params_report};
use voxbridge_experiment::predict::{PredictInput, PredictRequest, predict as run_prediction};

use crate::args::{ParamsArgs, PredictArgs};

pub fn params(args: &ParamsArgs) -> anyhow::Result<()> {
    let config = load_model_config(&args.model)?;
    print!("{}", params_report(&config));
    Ok(())
}

pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let input = match (&args.voxels, &args.data) {
        (Some(path), _) => PredictInput::Voxels { path: path.clone(), subject: args.subject },
        (None, Some(manifest)) => PredictInput::Data {
            manifest: manifest.clone(),
            nsd_subject: args.nsd_subject,
            trials: args.trials,
            images: args.images.clone(),
        },
        (None, None) => anyhow::bail!("give --voxels or --data"),
    };
    let request = PredictRequest {
        checkpoint: args.checkpoint.clone(),
        model: args.model.clone(),
        input,
        out: args.out.clone(),
        prior_steps: args.prior_steps,
        seed: args.seed,
    };
    let prediction = run_prediction(&request, &mut |notice| eprintln!("{notice}"))?;
    eprintln!("wrote {} ({})", args.out.display(), prediction.describe());
    Ok(())
}
