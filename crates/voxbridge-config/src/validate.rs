//! Raw to validated: [`RawExperiment::validate`] runs every section's checks and builds the
//! [`ExperimentConfig`]; [`load_experiment`] reads, parses and validates a file.

use std::path::Path;

use crate::check::{self, Checker};
use crate::error::ConfigError;
use crate::raw::{RawExperiment, parse_experiment};
use crate::rules;
use crate::validated::ExperimentConfig;

/// Read, parse and validate an experiment file; errors name `path`.
pub fn load_experiment(path: &Path) -> Result<ExperimentConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io { path: path.to_owned(), error })?;
    let origin = path.display().to_string();
    parse_experiment(&text, &origin)?.validate(&origin, Some(&text))
}

impl RawExperiment {
    /// Check every value and fill in defaults.
    ///
    /// All problems are collected, not just the first. Pass the source `text` to get line and
    /// column for each problem; `origin` names the file in messages.
    pub fn validate(self, origin: &str, text: Option<&str>) -> Result<ExperimentConfig, ConfigError> {
        let mut c = Checker::new(text);
        // Needed by the batch-size rule; `None` when the list itself is invalid (reported below).
        let n_train_subjects =
            self.data.train_subjects.as_deref().and_then(|s| rules::subjects(s).ok()).map(|s| s.len());

        let name = c.required("name", self.name, "every experiment needs a name", |n| rules::name(&n));
        let data = check::data(&mut c, self.data);
        let train = check::train(&mut c, self.train, n_train_subjects);
        let optim = check::optim(&mut c, self.optim);
        let checkpoint = check::checkpoint(&mut c, self.checkpoint);
        let model = check::model(&mut c, self.model);
        let eval = check::eval(&mut c, self.eval);
        let compute = check::compute(&mut c, self.compute);

        match (name, data, train, optim, checkpoint, model, eval, compute) {
            (
                Some(name),
                Some(data),
                Some(train),
                Some(optim),
                Some(checkpoint),
                Some(model),
                Some(eval),
                Some(compute),
            ) if c.is_clean() => Ok(ExperimentConfig {
                name,
                description: self.description,
                data,
                train,
                optim,
                checkpoint,
                model,
                eval,
                compute,
            }),
            _ => Err(ConfigError::Invalid { file: origin.to_owned(), problems: c.into_problems() }),
        }
    }
}
