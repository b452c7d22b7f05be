//! The experiment file exactly as the user writes it.
//!
//! These structs only check *shape*: unknown keys and wrong TOML types are rejected here (with
//! a location) because nothing sensible can be done with them. Every *value* rule lives in
//! [`RawExperiment::validate`](crate::RawExperiment::validate), so that all value problems can
//! be reported together. That is why required keys are `Option` and integers are `i64` here:
//! a missing `name` or `epochs = -1` becomes a validation problem, not a parse error.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ConfigError;
use crate::location::{SourceMap, line_col};

/// A whole experiment file. Only `name` (and `data.manifest`, `data.train_subjects`) are
/// required; every section may be left out.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub data: RawData,
    #[serde(default)]
    pub train: RawTrain,
    #[serde(default)]
    pub optim: RawOptim,
    #[serde(default)]
    pub checkpoint: RawCheckpoint,
    #[serde(default)]
    pub model: RawModel,
    #[serde(default)]
    pub eval: RawEval,
    #[serde(default)]
    pub compute: RawCompute,
}

/// `[data]`: which recordings to train and evaluate on.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    pub manifest: Option<String>,
    pub train_subjects: Option<Vec<i64>>,
    pub eval_subjects: Option<Vec<i64>>,
    pub sessions: Option<RawSessions>,
    pub average_test_repeats: Option<bool>,
}

/// `[train]`: the loop.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrain {
    pub seed: Option<i64>,
    pub epochs: Option<i64>,
    pub batch_size: Option<i64>,
    pub max_steps: Option<i64>,
    pub samples_per_epoch: Option<i64>,
    pub mixup_pct: Option<f64>,
    pub prior_scale: Option<f64>,
    pub clip_scale: Option<f64>,
    pub blur_scale: Option<f64>,
    pub init_from: Option<String>,
    pub new_subject_bias: Option<String>,
}

/// `[optim]`: AdamW hyper-parameters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptim {
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
}

/// `[checkpoint]`: where and how many.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoint {
    pub url: Option<String>,
    pub keep_last: Option<i64>,
    pub keep_every: Option<i64>,
    pub every_steps: Option<i64>,
}

/// `[model]`: the family and its sizes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub family: Option<String>,
    pub hidden: Option<i64>,
    pub blocks: Option<i64>,
    pub dropout: Option<f64>,
    pub backbone: Option<String>,
    pub prior: Option<bool>,
    pub prior_depth: Option<i64>,
    pub prior_dim_head: Option<i64>,
    pub prior_timesteps: Option<i64>,
    pub low_level: Option<bool>,
}

/// `[eval]`: the retrieval protocol and how often to run it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEval {
    pub ways: Option<i64>,
    pub loops: Option<i64>,
    pub every_epochs: Option<i64>,
    pub prior_steps: Option<i64>,
    pub mind_reader_batch: Option<i64>,
}

/// `[compute]`: device and precision.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompute {
    pub device: Option<String>,
    pub precision: Option<String>,
}

/// `data.sessions` as written: an integer, or a word that should be `"all"`.
///
/// Hand-written `Deserialize` because serde's untagged enums only say "did not match any
/// variant", which tells the user nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RawSessions {
    Count(i64),
    Word(String),
}

impl<'de> Deserialize<'de> for RawSessions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SessionsVisitor;

        impl Visitor<'_> for SessionsVisitor {
            type Value = RawSessions;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of sessions or the string \"all\"")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSessions, E> {
                Ok(RawSessions::Count(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSessions, E> {
                // Saturate: anything this large fails validation anyway.
                Ok(RawSessions::Count(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSessions, E> {
                Ok(RawSessions::Word(v.to_owned()))
            }
        }

        deserializer.deserialize_any(SessionsVisitor)
    }
}

/// Parse an experiment file without checking its values.
///
/// `origin` names the text in error messages (normally the file path). Syntax errors, unknown
/// keys and wrongly typed values give [`ConfigError::Parse`] with line and column.
pub fn parse_experiment(text: &str, origin: &str) -> Result<RawExperiment, ConfigError> {
    let map = SourceMap::new(text);
    // serde's derived structs also accept an array (fields by position), so without this check
    // `data = ["m.toml", [1]]` would be read as a `[data]` section.
    for section in SECTIONS {
        if let Some((found, (line, column))) = map.non_table(section) {
            return Err(ConfigError::Parse {
                file: origin.to_owned(),
                line,
                column,
                key: Some(section.to_owned()),
                message: format!(
                    "wrong type for `{section}`: expected a table (a [{section}] section), \
                     found {found}"
                ),
            });
        }
    }
    toml::from_str(text).map_err(|err| parse_error(text, origin, &map, &err))
}

/// The keys of [`RawExperiment`] that hold tables.
const SECTIONS: [&str; 5] = ["data", "train", "optim", "checkpoint", "model"];

fn parse_error(text: &str, origin: &str, map: &SourceMap<'_>, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |s| s.start);
    let (line, column) = line_col(text, offset);
    let raw_message = err.message().trim();
    let path = map.path_at(offset);

    let (key, message) = if let Some((name, expected)) = unknown_field(raw_message) {
        // The key path from the document tells us the table; fall back to the bare name.
        match path.filter(|p| p.last().is_some_and(|last| *last == name)) {
            Some(path) if path.len() > 1 => {
                let table = path[..path.len() - 1].join(".");
                let message = format!("unknown key `{name}` in [{table}] ({expected})");
                (Some(path.join(".")), message)
            }
            Some(_) => {
                let message = format!("unknown key `{name}` at the top level ({expected})");
                (Some(name), message)
            }
            None => {
                let message = format!("unknown key `{name}` ({expected})");
                (Some(name), message)
            }
        }
    } else if let Some(path) = path {
        let key = path.join(".");
        let message = format!("wrong type for `{key}`: {}", plain_types(raw_message));
        (Some(key), message)
    } else {
        (None, plain_types(raw_message))
    };
    ConfigError::Parse { file: origin.to_owned(), line, column, key, message }
}

/// Split serde's "unknown field `x`, expected `a` or `b`" into the name and a friendlier
/// "expected one of `a`, `b`".
fn unknown_field(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let allowed: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let expected = match allowed.as_slice() {
        [] => "this table has no keys yet".to_owned(),
        [one] => format!("expected `{one}`"),
        many => {
            let quoted: Vec<String> = many.iter().map(|k| format!("`{k}`")).collect();
            format!("expected one of {}", quoted.join(", "))
        }
    };
    Some((name.to_owned(), expected))
}

/// Replace Rust type names in serde messages with TOML words.
fn plain_types(message: &str) -> String {
    // "expected struct RawData" names an internal type; the user wrote (or should write) a table.
    let message = match message.find("expected struct ") {
        Some(at) => format!("{}expected a table", &message[..at]),
        None => message.to_owned(),
    };
    if message.starts_with("invalid value: integer") {
        // Only an integer literal beyond i64 gets here: TOML integers are 64-bit signed.
        return message.replace("expected i64", "expected at most 9223372036854775807");
    }
    message
        .replace("expected f64", "expected a number")
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unwrap a parse error into (line, column, key, message).
    fn parse_err(text: &str) -> (usize, usize, Option<String>, String) {
        match parse_experiment(text, "a.toml") {
            Err(ConfigError::Parse { file, line, column, key, message }) => {
                assert_eq!(file, "a.toml");
                (line, column, key, message)
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_top_level_key() {
        let (line, column, key, message) = parse_err("name = \"a\"\nnmae = \"b\"\n");
        assert_eq!((line, column), (2, 1));
        assert_eq!(key.as_deref(), Some("nmae"));
        assert!(message.starts_with("unknown key `nmae` at the top level (expected one of `name`,"));
    }

    #[test]
    fn unknown_nested_key_has_exact_location_and_display() {
        let text = "name = \"a\"\n\n[optim]\nlr = 1e-4\n\n\nlrr = 2\n";
        let err = parse_experiment(text, "experiments/a.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "experiments/a.toml:7:1: unknown key `lrr` in [optim] (expected one of `lr`, \
             `weight_decay`)"
        );
        let (line, column, key, _) = parse_err(text);
        assert_eq!((line, column, key.as_deref()), (7, 1, Some("optim.lrr")));
    }

    #[test]
    fn unknown_key_in_dotted_and_inline_forms() {
        let (line, column, key, message) = parse_err("name = \"a\"\ntrain.epoch = 3\n");
        assert_eq!((line, column, key.as_deref()), (2, 7, Some("train.epoch")));
        assert!(message.starts_with("unknown key `epoch` in [train]"), "{message}");

        let (line, column, key, _) = parse_err("name = \"a\"\nmodel = { family = \"ridge\", depth = 4 }\n");
        assert_eq!((line, column, key.as_deref()), (2, 29, Some("model.depth")));
    }

    #[test]
    fn model_section_rejects_unknown_keys() {
        let (_, _, key, message) = parse_err("name = \"a\"\n[model]\nhidden_dim = 4096\n");
        assert_eq!(key.as_deref(), Some("model.hidden_dim"));
        assert_eq!(
            message,
            "unknown key `hidden_dim` in [model] (expected one of `family`, `hidden`, `blocks`, `dropout`, \
             `backbone`, `prior`, `prior_depth`, `prior_dim_head`, `prior_timesteps`, `low_level`)"
        );
    }

    #[test]
    fn unknown_section() {
        let (line, column, key, message) = parse_err("name = \"a\"\n[optimizer]\nlr = 1\n");
        assert_eq!((line, column, key.as_deref()), (2, 2, Some("optimizer")));
        assert!(message.starts_with("unknown key `optimizer` at the top level"), "{message}");
    }

    #[test]
    fn wrong_type() {
        let (line, column, key, message) = parse_err("name = \"a\"\n[optim]\nlr = \"fast\"\n");
        assert_eq!((line, column, key.as_deref()), (3, 6, Some("optim.lr")));
        assert_eq!(message, "wrong type for `optim.lr`: invalid type: string \"fast\", expected a number");

        let (line, column, key, message) = parse_err("name = \"a\"\n[data]\ntrain_subjects = [1, \"2\"]\n");
        assert_eq!((line, column, key.as_deref()), (3, 22, Some("data.train_subjects")));
        assert!(message.ends_with("expected an integer"), "{message}");

        let (line, column, key, message) = parse_err("name = \"a\"\ndata = 3\n");
        assert_eq!((line, column, key.as_deref()), (2, 1, Some("data")));
        assert_eq!(message, "wrong type for `data`: expected a table (a [data] section), found integer");

        // Derived structs would otherwise read an array positionally.
        let (_, _, key, message) = parse_err("name = \"a\"\ndata = [\"m.toml\", [1]]\n");
        assert_eq!(key.as_deref(), Some("data"));
        assert!(message.ends_with("found array"), "{message}");
        let (_, _, _, message) = parse_err("name = \"a\"\n[[optim]]\nlr = 1\n");
        assert!(message.ends_with("found array of tables"), "{message}");

        let (_, _, _, message) = parse_err("name = \"a\"\n[train]\nseed = 18446744073709551615\n");
        assert!(message.ends_with("expected at most 9223372036854775807"), "{message}");

        let (_, _, key, message) = parse_err("name = \"a\"\n[data]\nsessions = 1.5\n");
        assert_eq!(key.as_deref(), Some("data.sessions"));
        assert!(message.contains("expected a number of sessions or the string \"all\""), "{message}");
    }

    #[test]
    fn syntax_error() {
        let (line, column, key, message) = parse_err("name = \"a\"\n[optim\nlr = 1\n");
        assert_eq!((line, column, key), (2, 7, None));
        assert!(message.contains("expected `]`"), "{message}");

        let (line, column, _, _) = parse_err("name = \"a\"\nname = \"b\"\n");
        assert_eq!((line, column), (2, 1));
    }

    #[test]
    fn sessions_accepts_all_and_integers() {
        let raw = parse_experiment("[data]\nsessions = \"all\"\n", "a.toml").unwrap();
        assert_eq!(raw.data.sessions, Some(RawSessions::Word("all".into())));
        let raw = parse_experiment("[data]\nsessions = 1\n", "a.toml").unwrap();
        assert_eq!(raw.data.sessions, Some(RawSessions::Count(1)));
    }

    #[test]
    fn empty_file_parses_to_all_defaults() {
        assert_eq!(parse_experiment("", "a.toml").unwrap(), RawExperiment::default());
    }
}
