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
}

/// `[model]`: only the family for now; more keys will be added, unknown ones stay errors.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub family: Option<String>,
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
    toml::from_str(text).map_err(|err| parse_error(text, origin, &err))
}

fn parse_error(text: &str, origin: &str, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |s| s.start);
    let (line, column) = line_col(text, offset);
    let raw_message = err.message().trim();
    let path = SourceMap::new(text).path_at(offset);

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
    ConfigError::Parse {
        file: origin.to_owned(),
        line,
        column,
        key,
        message,
    }
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
    message
        .replace("expected f64", "expected a number")
        .replace("expected i64", "expected an integer")
        .replace("expected a sequence", "expected an array")
}
