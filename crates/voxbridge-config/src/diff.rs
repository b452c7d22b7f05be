//! Which training-relevant fields differ between two resolved configs: the resume guard.

use std::collections::BTreeMap;

use crate::ExperimentConfig;

/// Fields that do not change what is trained: the run's name, evaluation, where and how often
/// checkpoints go, and the device (a run may continue on another one; precision does count).
const NOT_TRAINING_RELEVANT: [&str; 4] = ["name", "eval.", "checkpoint.", "compute.device"];

/// One differing field, as dotted key and TOML values (`None`: absent on that side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub key: String,
    pub saved: Option<String>,
    pub current: Option<String>,
}

impl std::fmt::Display for FieldChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        write!(f, "{}: {} → {}", self.key, show(&self.saved), show(&self.current))
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn fields(config: &ExperimentConfig) -> BTreeMap<String, String> {
    let value = toml::Value::Table(toml::from_str(&config.to_toml()).expect("a resolved config parses back"));
    let mut out = BTreeMap::new();
    flatten("", &value, &mut out);
    out.retain(|k, _| !NOT_TRAINING_RELEVANT.iter().any(|p| k == p || (p.ends_with('.') && k.starts_with(p))));
    out
}

/// The training-relevant fields whose resolved values differ, sorted by key.
pub fn training_changes(saved: &ExperimentConfig, current: &ExperimentConfig) -> Vec<FieldChange> {
    let (a, b) = (fields(saved), fields(current));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| FieldChange { key: k.clone(), saved: a.get(k).cloned(), current: b.get(k).cloned() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> ExperimentConfig {
        let text = format!("name = \"a\"\n[data]\nmanifest = \"m.toml\"\ntrain_subjects = [1]\n{extra}");
        crate::parse_experiment(&text, "a.toml").unwrap().validate("a.toml", Some(&text)).unwrap()
    }

    #[test]
    fn only_training_relevant_changes_are_reported_with_both_values() {
        let saved = config("[train]\nepochs = 3\n");
        let same = config("[train]\nepochs = 3\n[eval]\nloops = 2\n[checkpoint]\nkeep_last = 5\n");
        assert_eq!(training_changes(&saved, &same), []);
        let changed = config("[train]\nepochs = 4\n[optim]\nlr = 0.001\n");
        let changes = training_changes(&saved, &changed);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["optim.lr", "train.epochs"]);
        assert_eq!(changes[1].to_string(), "train.epochs: 3 → 4");
    }
}
