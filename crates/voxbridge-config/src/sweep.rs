//! Sweeps: one file expands a grid of overrides of a base experiment into runs with stable names.
//!
//! ```toml
//! name = "finetune-sessions"                      # prefix of every run's name
//! base = "finetune-sim-small-1session.toml"        # relative to the sweep file
//! [grid]
//! "data.sessions" = [1, 2, 4]
//! "train.seed" = [0, 1, 2]
//! ```
//!
//! gives 9 runs named `finetune-sessions-sessions1-seed0`, …, in a fixed order (grid keys sorted,
//! the last key varying fastest). Each run is the base file with its overrides applied, then read
//! exactly like an experiment file, so a wrong key or value is reported as it would be there.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::{ConfigError, ExperimentConfig, parse_experiment};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    name: String,
    base: String,
    grid: BTreeMap<String, Vec<toml::Value>>,
}

/// One expanded run.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRun {
    /// `<sweep name>-<last key segment><value>-…`.
    pub name: String,
    /// The overrides that make this run, dotted key → value.
    pub overrides: Vec<(String, toml::Value)>,
    /// The base experiment's text with the overrides applied (what the run saves).
    pub text: String,
    pub config: ExperimentConfig,
}

/// Reads a sweep file and its base experiment (path relative to the sweep file) and expands it.
pub fn load_sweep(path: &Path) -> Result<Vec<SweepRun>, ConfigError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|error| ConfigError::Io { path: p.to_path_buf(), error });
    let text = read(path)?;
    let origin = path.display().to_string();
    let raw: RawSweep = parse_sweep(&text, &origin)?;
    let base_path = path.parent().unwrap_or(Path::new(".")).join(&raw.base);
    let base_text = read(&base_path)?;
    expand(&text, &origin, &base_text)
}

fn parse_sweep(text: &str, origin: &str) -> Result<RawSweep, ConfigError> {
    toml::from_str(text).map_err(|e| toml_error(text, origin, &e))
}

/// A TOML syntax or type error of `text`, at its line and column.
fn toml_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = crate::line_col(text, e.span().map_or(0, |s| s.start));
    ConfigError::Parse { file: origin.to_string(), line, column, key: None, message: e.message().trim().to_string() }
}

/// A problem with one field of `origin`, without a position.
fn invalid(origin: &str, field: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        file: origin.to_string(),
        problems: vec![crate::Problem { field: field.to_string(), line: None, column: None, message }],
    }
}

/// Expands a sweep's text against its base experiment's text.
pub fn expand(sweep_text: &str, origin: &str, base_text: &str) -> Result<Vec<SweepRun>, ConfigError> {
    let raw = parse_sweep(sweep_text, origin)?;
    let invalid = |field: &str, message: String| invalid(origin, field, message);
    if raw.grid.is_empty() {
        return Err(invalid("grid", "a sweep needs at least one key to vary".into()));
    }
    for (key, values) in &raw.grid {
        if values.is_empty() {
            return Err(invalid(&format!("grid.{key}"), "needs at least one value".into()));
        }
        if key == "name" {
            return Err(invalid("grid.name", "run names come from the sweep; `name` cannot be varied".into()));
        }
    }
    let base: toml::Table = toml::from_str(base_text).map_err(|e| ConfigError::Parse {
        file: format!("{origin} (base {})", raw.base),
        line: 0,
        column: 0,
        key: None,
        message: e.message().trim().to_string(),
    })?;

    let keys: Vec<&String> = raw.grid.keys().collect();
    let total: usize = raw.grid.values().map(Vec::len).product();
    let mut runs = Vec::with_capacity(total);
    for index in 0..total {
        // Mixed-radix digits of `index`, the last key varying fastest.
        let mut rest = index;
        let mut picks = vec![0; keys.len()];
        for (k, key) in keys.iter().enumerate().rev() {
            let n = raw.grid[*key].len();
            picks[k] = rest % n;
            rest /= n;
        }
        let overrides: Vec<(String, toml::Value)> =
            keys.iter().zip(&picks).map(|(key, &p)| ((*key).clone(), raw.grid[*key][p].clone())).collect();
        let name = std::iter::once(raw.name.clone())
            .chain(overrides.iter().map(|(k, v)| format!("{}{}", k.rsplit('.').next().unwrap_or(k), slug(v))))
            .collect::<Vec<_>>()
            .join("-");
        let mut doc = base.clone();
        doc.insert("name".into(), toml::Value::String(name.clone()));
        for (key, value) in &overrides {
            set_dotted(&mut doc, key, value.clone()).map_err(|message| invalid(&format!("grid.{key}"), message))?;
        }
        let text = toml::to_string(&doc).map_err(|e| invalid("grid", e.to_string()))?;
        let run_origin = format!("{origin} run {name}");
        let config = parse_experiment(&text, &run_origin)?.validate(&run_origin, Some(&text))?;
        runs.push(SweepRun { name, overrides, text, config });
    }
    Ok(runs)
}

/// An experiment derived from `base_text`: named `name`, with `overrides` set and the dotted
/// keys of `remove` taken out (e.g. a per-subject fine-tune of a pretraining experiment).
/// Returns the text it saves and the validated config.
pub fn derive(
    base_text: &str,
    origin: &str,
    name: &str,
    overrides: &[(String, toml::Value)],
    remove: &[&str],
) -> Result<(String, ExperimentConfig), ConfigError> {
    let invalid = |field: &str, message: String| invalid(origin, field, message);
    let mut doc: toml::Table = toml::from_str(base_text).map_err(|e| toml_error(base_text, origin, &e))?;
    doc.insert("name".into(), toml::Value::String(name.to_string()));
    for key in remove {
        let parts: Vec<&str> = key.split('.').collect();
        if let Some((last, tables)) = parts.split_last() {
            let mut table = Some(&mut doc);
            for part in tables {
                table = table.and_then(|t| t.get_mut(*part)).and_then(|v| v.as_table_mut());
            }
            if let Some(t) = table {
                t.remove(*last);
            }
        }
    }
    for (key, value) in overrides {
        set_dotted(&mut doc, key, value.clone()).map_err(|message| invalid(key, message))?;
    }
    let text = toml::to_string(&doc).map_err(|e| invalid("name", e.to_string()))?;
    let run_origin = format!("{origin} ({name})");
    let config = parse_experiment(&text, &run_origin)?.validate(&run_origin, Some(&text))?;
    Ok((text, config))
}

/// Sets `a.b.c = value`, creating tables on the way; a non-table in the way is an error.
fn set_dotted(doc: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, tables) = parts.split_last().ok_or("empty key")?;
    let mut table = doc;
    for part in tables {
        let entry = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry.as_table_mut().ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// A value as it appears in a run name: numbers and booleans as written, strings reduced to
/// `[A-Za-z0-9_.]`, arrays joined with `_`.
fn slug(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => {
            s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect()
        }
        toml::Value::Array(items) => items.iter().map(slug).collect::<Vec<_>>().join("_"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "finetune"
[data]
manifest = "data-manifests/sim-tiny-seed0.toml"
train_subjects = [1]
sessions = 1
[train]
seed = 0
"#;

    #[test]
    fn a_two_by_two_grid_expands_in_a_stable_order_with_stable_names() {
        let sweep = r#"
name = "sw"
base = "finetune.toml"
[grid]
"train.seed" = [0, 1]
"data.sessions" = [1, 2]
"#;
        let runs = expand(sweep, "sweep.toml", BASE).unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        // Keys sorted (data.sessions, train.seed); the last varies fastest.
        assert_eq!(names, ["sw-sessions1-seed0", "sw-sessions1-seed1", "sw-sessions2-seed0", "sw-sessions2-seed1"]);
        assert_eq!(runs[3].config.train.seed, 1);
        assert_eq!(runs[3].config.name, "sw-sessions2-seed1");
        assert!(runs[2].text.contains("sessions = 2"));
        // Same input, same output.
        assert_eq!(expand(sweep, "sweep.toml", BASE).unwrap(), runs);
    }

    #[test]
    fn a_misspelt_grid_key_is_reported_like_in_an_experiment_file() {
        let sweep = "name = \"sw\"\nbase = \"b.toml\"\n[grid]\n\"data.sesions\" = [1]\n";
        let err = expand(sweep, "sweep.toml", BASE).unwrap_err().to_string();
        assert!(err.contains("sweep.toml run sw-sesions1") && err.contains("sesions"), "{err}");
    }

    #[test]
    fn bad_sweeps_are_explained() {
        let err = expand("name = \"sw\"\nbase = \"b\"\n[grid]\n", "s.toml", BASE).unwrap_err().to_string();
        assert!(err.contains("at least one key"), "{err}");
        let err = expand("name = \"sw\"\nbase = \"b\"\n[grid]\n\"train.seed\" = []\n", "s.toml", BASE).unwrap_err();
        assert!(err.to_string().contains("grid.train.seed"), "{err}");
        let err = expand("name = \"sw\"\nbase = \"b\"\nextra = 1\n[grid]\n", "s.toml", BASE).unwrap_err().to_string();
        assert!(err.contains("s.toml:3:1") && err.contains("extra"), "{err}");
        // A value the experiment rules reject names the run and the field.
        let err = expand("name = \"sw\"\nbase = \"b\"\n[grid]\n\"train.seed\" = [-1]\n", "s.toml", BASE).unwrap_err();
        assert!(err.to_string().contains("sw-seed-1"), "{err}");
    }
}
