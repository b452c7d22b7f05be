//! Errors for reading an experiment file.
//!
//! Every message starts with `file:line:column:` so editors and terminals can jump to the
//! offending spot. Validation does not stop at the first problem: fixing a config one error
//! per run is slow when each run means a cluster submission.

use std::fmt;
use std::path::PathBuf;

/// Why an experiment file could not be turned into an `ExperimentConfig`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read experiment file: {error}", path.display())]
    Io {
        /// The path that was opened.
        path: PathBuf,
        /// The underlying OS error: in the message, and deliberately not a `source`, so an
        /// error chain (`{:#}`) does not print it twice.
        error: std::io::Error,
    },

    /// The text is not valid TOML, or it does not fit the schema (unknown key, wrong type).
    /// Parsing stops at the first such error because the rest of the document cannot be
    /// trusted.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// Where the text came from (a path or a description such as `<inline>`).
        file: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// Dotted path of the key involved (e.g. `optim.lrr`), when it could be determined.
        key: Option<String>,
        /// What is wrong, in words.
        message: String,
    },

    /// The file parsed, but some values break the rules. Holds every problem found.
    #[error("{}", render_problems(file, problems))]
    Invalid {
        /// Where the text came from.
        file: String,
        /// All problems, in schema order. Never empty.
        problems: Vec<Problem>,
    },
}

/// One rule broken by one field of the experiment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `train.batch_size`.
    pub field: String,
    /// 1-based line of the offending key, if the source text was available and the key (or
    /// its nearest enclosing table) is written in it.
    pub line: Option<usize>,
    /// 1-based column of the offending key, same conditions as `line`.
    pub column: Option<usize>,
    /// What is wrong, the value found, what is allowed, and why when not obvious.
    pub message: String,
}

impl fmt::Display for Problem {
    /// `line:col: field: message` (the location is left out when unknown).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "{line}:{column}: ")?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// One problem per line, each prefixed with the file name.
fn render_problems(file: &str, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| match (p.line, p.column) {
            (Some(_), Some(_)) => format!("{file}:{p}"),
            _ => format!("{file}: {p}"),
        })
        .collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(field: &str, line: Option<usize>, message: &str) -> Problem {
        Problem { field: field.into(), line, column: line.map(|_| 1), message: message.into() }
    }

    #[test]
    fn invalid_lists_one_problem_per_line() {
        let err = ConfigError::Invalid {
            file: "experiments/a.toml".into(),
            problems: vec![problem("train.batch_size", Some(12), "too small"), problem("name", None, "missing")],
        };
        assert_eq!(
            err.to_string(),
            "experiments/a.toml:12:1: train.batch_size: too small\n\
             experiments/a.toml: name: missing"
        );
    }

    #[test]
    fn parse_error_display() {
        let err = ConfigError::Parse {
            file: "a.toml".into(),
            line: 7,
            column: 1,
            key: Some("optim.lrr".into()),
            message: "unknown key `lrr` in [optim]".into(),
        };
        assert_eq!(err.to_string(), "a.toml:7:1: unknown key `lrr` in [optim]");
    }
}
