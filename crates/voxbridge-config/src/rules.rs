//! One pure function per value rule: raw value in, typed value or an explanation out.
//!
//! Messages name the value found, what is allowed, and why when that is not obvious. The
//! field name and location are added by the caller, so messages never repeat them.

use crate::raw::RawSessions;
use crate::validated::{ModelFamily, SessionSelection};

/// Subject ids are the 1-based NSD subject numbers.
pub(crate) const MAX_SUBJECT: i64 = 8;
/// Longest allowed experiment name.
pub(crate) const MAX_NAME_LEN: usize = 64;
/// URL schemes the storage layer understands; anything without `://` is a local path.
const SCHEMES: [&str; 3] = ["s3", "gs", "file"];

/// `name`: `[a-z0-9._-]{1,64}`, because it ends up in file names, URLs and job names.
pub(crate) fn name(value: &str) -> Result<String, String> {
    let why = "the name is used in file names, URLs and job names";
    if value.is_empty() {
        return Err(format!("is empty; {why}, so give 1 to {MAX_NAME_LEN} characters"));
    }
    let len = value.chars().count();
    if len > MAX_NAME_LEN {
        return Err(format!("`{value}` is {len} characters long; at most {MAX_NAME_LEN} are allowed because {why}"));
    }
    let mut bad: Vec<char> = Vec::new();
    for c in value.chars() {
        if !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-') && !bad.contains(&c) {
            bad.push(c);
        }
    }
    if !bad.is_empty() {
        let shown: Vec<String> = bad.iter().map(|c| format!("{c:?}")).collect();
        return Err(format!(
            "`{value}` contains {}; only lowercase letters a-z, digits 0-9, '.', '_' and '-' \
             are allowed because {why}",
            shown.join(", ")
        ));
    }
    if value == "." || value == ".." {
        return Err(format!("`{value}` is not allowed: it means a directory in paths"));
    }
    Ok(value.to_owned())
}

/// A storage location: a local path, or an `s3://`, `gs://` or `file://` URL.
pub(crate) fn storage_location(value: &str) -> Result<String, String> {
    let allowed = "a path or an s3://, gs:// or file:// URL";
    if value.trim().is_empty() {
        return Err(format!("is empty; give {allowed}"));
    }
    if value.trim() != value {
        return Err(format!("`{value}` starts or ends with whitespace, which would become part of the path"));
    }
    if let Some((scheme, rest)) = value.split_once("://") {
        if !SCHEMES.contains(&scheme) {
            return Err(format!("`{value}` uses the unsupported scheme `{scheme}://`; give {allowed}"));
        }
        if rest.is_empty() {
            return Err(format!("`{value}` has nothing after `{scheme}://`"));
        }
    }
    Ok(value.to_owned())
}

/// A list of subject ids: non-empty, each in `1..=8`, no repeats. Reports every bad element,
/// with its index so the caller can point at it.
pub(crate) fn subjects(values: &[i64]) -> Result<Vec<u8>, Vec<(Option<usize>, String)>> {
    if values.is_empty() {
        return Err(vec![(None, format!("is empty; list at least one subject id (1..={MAX_SUBJECT})"))]);
    }
    let mut ids = Vec::with_capacity(values.len());
    let mut problems = Vec::new();
    for (i, &v) in values.iter().enumerate() {
        match u8::try_from(v) {
            Ok(id) if (1..=MAX_SUBJECT).contains(&v) => {
                if ids.contains(&id) {
                    problems.push((Some(i), format!("subject {v} is listed more than once")));
                }
                ids.push(id);
            }
            _ => problems.push((Some(i), format!("subject {v} is out of range: ids are 1-based, 1..={MAX_SUBJECT}"))),
        }
    }
    if problems.is_empty() { Ok(ids) } else { Err(problems) }
}

impl TryFrom<RawSessions> for SessionSelection {
    type Error = String;

    /// `"all"` or a count >= 1. Shared by validation and by deserialising a saved config.
    fn try_from(raw: RawSessions) -> Result<Self, String> {
        let allowed = "give a number of sessions (at least 1) or \"all\"";
        match raw {
            RawSessions::Word(w) if w == "all" => Ok(Self::All),
            RawSessions::Word(w) => Err(format!("\"{w}\" is not allowed; {allowed}")),
            RawSessions::Count(n) if n < 1 => Err(format!("{n} is too small; {allowed}")),
            RawSessions::Count(n) => u32::try_from(n)
                .map(Self::First)
                .map_err(|_| format!("{n} is too large; at most {} sessions", u32::MAX)),
        }
    }
}

/// An integer `>= min` that fits in `u32`; `why` is appended to the "too small" message.
pub(crate) fn at_least_u32(value: i64, min: u32, why: &str) -> Result<u32, String> {
    if value < i64::from(min) {
        return Err(format!("{value} is too small: it must be at least {min}{why}"));
    }
    u32::try_from(value).map_err(|_| format!("{value} is too large: at most {}", u32::MAX))
}

/// An integer `>= min` as `u64` (TOML integers are `i64`, so it always fits).
pub(crate) fn at_least_u64(value: i64, min: u64, why: &str) -> Result<u64, String> {
    u64::try_from(value)
        .ok()
        .filter(|v| *v >= min)
        .ok_or_else(|| format!("{value} is too small: it must be at least {min}{why}"))
}

/// The learning rate: finite and > 0 (0 would never move the weights; NaN/inf poison them).
pub(crate) fn learning_rate(value: f64) -> Result<f64, String> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("{value} is not allowed: it must be a finite number greater than 0"))
    }
}

/// Weight decay: finite and >= 0 (0 turns it off).
pub(crate) fn weight_decay(value: f64) -> Result<f64, String> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("{value} is not allowed: it must be a finite number >= 0 (0 turns it off)"))
    }
}

/// A fraction in [0, 1].
pub(crate) fn fraction(value: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not allowed: it must be a fraction between 0 and 1"))
    }
}

/// A probability in [0, 1) (dropout 1 would drop everything).
pub(crate) fn probability_below_one(value: f64) -> Result<f64, String> {
    if (0.0..1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not allowed: it must be at least 0 and below 1"))
    }
}

/// One of a fixed set of words.
pub(crate) fn one_of<T: Copy>(value: &str, all: &[T], word: impl Fn(T) -> &'static str) -> Result<T, String> {
    all.iter().copied().find(|v| word(*v) == value).ok_or_else(|| {
        let known: Vec<String> = all.iter().map(|v| format!("`{}`", word(*v))).collect();
        format!("`{value}` is not allowed; expected one of {}", known.join(", "))
    })
}

/// One of the known model families.
pub(crate) fn family(value: &str) -> Result<ModelFamily, String> {
    ModelFamily::ALL.into_iter().find(|f| f.as_str() == value).ok_or_else(|| {
        let known: Vec<String> = ModelFamily::ALL.iter().map(|f| format!("`{f}`")).collect();
        format!("`{value}` is not a known model family; expected one of {}", known.join(", "))
    })
}

/// A known model family that `voxbridge train` can train (checked by `config check`, not at
/// run time).
pub(crate) fn trainable_family(value: &str) -> Result<ModelFamily, String> {
    let family = self::family(value)?;
    if ModelFamily::TRAINABLE.contains(&family) {
        return Ok(family);
    }
    let trainable: Vec<String> = ModelFamily::TRAINABLE.iter().map(|f| format!("`{f}`")).collect();
    Err(format!(
        "`{value}` cannot be trained yet; trainable families: {} (ridge baselines: `voxbridge ridge`)",
        trainable.join(", ")
    ))
}

/// In multi-subject mode every batch is split evenly across the training subjects, so a
/// batch smaller than the number of subjects would give some subjects zero samples.
pub(crate) fn batch_fits_subjects(batch_size: u32, n_subjects: usize) -> Result<(), String> {
    let n = u32::try_from(n_subjects).unwrap_or(u32::MAX);
    if n > 1 && batch_size < n {
        return Err(format!(
            "{batch_size} is smaller than the {n} training subjects: in multi-subject mode each \
             subject gets batch_size / {n} = {} samples per batch, so batch_size must be at \
             least {n}",
            batch_size / n
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name("pretrain-sim_small.v2").unwrap(), "pretrain-sim_small.v2");
        assert!(name(&"a".repeat(64)).is_ok());
        let cases = [
            ("", "is empty"),
            (&"a".repeat(65), "is 65 characters long; at most 64"),
            ("My Run", "contains 'M', ' ', 'R'"),
            ("a/b", "contains '/'"),
            ("..", "means a directory"),
        ];
        for (value, expected) in cases {
            let err = name(value).unwrap_err();
            assert!(err.contains(expected), "{value:?}: {err}");
        }
    }

    #[test]
    fn storage_locations() {
        for ok in ["data/m.toml", "/abs/m.toml", "s3://b/k", "gs://b/k", "file:///tmp/m"] {
            assert_eq!(storage_location(ok).unwrap(), ok);
        }
        let cases = [
            ("", "is empty"),
            ("  ", "is empty"),
            (" runs/x", "whitespace"),
            ("http://host/x", "unsupported scheme `http://`"),
            ("s3://", "nothing after `s3://`"),
        ];
        for (value, expected) in cases {
            let err = storage_location(value).unwrap_err();
            assert!(err.contains(expected), "{value:?}: {err}");
        }
    }

    #[test]
    fn subject_lists() {
        assert_eq!(subjects(&[2, 1, 8]).unwrap(), vec![2, 1, 8]);
        assert_eq!(subjects(&[]).unwrap_err()[0].1, "is empty; list at least one subject id (1..=8)");
        let errs = subjects(&[1, 0, 9, 1, -300]).unwrap_err();
        let indices: Vec<Option<usize>> = errs.iter().map(|e| e.0).collect();
        assert_eq!(indices, [Some(1), Some(2), Some(3), Some(4)]);
        assert!(errs[0].1.contains("subject 0 is out of range"));
        assert!(errs[1].1.contains("subject 9 is out of range"));
        assert_eq!(errs[2].1, "subject 1 is listed more than once");
    }

    #[test]
    fn sessions() {
        let parse = |raw| SessionSelection::try_from(raw);
        assert_eq!(parse(RawSessions::Word("all".into())), Ok(SessionSelection::All));
        assert_eq!(parse(RawSessions::Count(3)), Ok(SessionSelection::First(3)));
        assert!(parse(RawSessions::Count(0)).unwrap_err().contains("0 is too small"));
        assert!(parse(RawSessions::Word("All".into())).unwrap_err().contains("\"All\" is not"));
        assert!(parse(RawSessions::Count(i64::MAX)).unwrap_err().contains("too large"));
    }

    #[test]
    fn integers_and_floats() {
        assert_eq!(at_least_u32(2, 2, ""), Ok(2));
        assert_eq!(at_least_u32(1, 2, " (why)").unwrap_err(), "1 is too small: it must be at least 2 (why)");
        assert!(at_least_u32(1 << 40, 1, "").unwrap_err().contains("too large"));
        assert_eq!(at_least_u64(0, 0, ""), Ok(0));
        assert!(at_least_u64(-1, 0, "").unwrap_err().contains("-1 is too small"));
        assert_eq!(learning_rate(3e-4), Ok(3e-4));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(learning_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(weight_decay(0.0), Ok(0.0));
        for bad in [-1e-3, f64::NAN, f64::NEG_INFINITY] {
            assert!(weight_decay(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn families_and_batch_split() {
        assert_eq!(family("ridge"), Ok(ModelFamily::Ridge));
        assert_eq!(trainable_family("mindeye2"), Ok(ModelFamily::MindEye2));
        assert_eq!(
            trainable_family("mindeye1").unwrap_err(),
            "`mindeye1` cannot be trained yet; trainable families: `mindeye2` (ridge baselines: `voxbridge ridge`)"
        );
        assert!(trainable_family("mindeye3").unwrap_err().contains("not a known model family"));
        assert_eq!(
            family("mindeye3").unwrap_err(),
            "`mindeye3` is not a known model family; expected one of `mindeye2`, `mindeye1`, \
             `mindreader`, `ridge`"
        );
        assert!(batch_fits_subjects(1, 1).is_ok());
        assert!(batch_fits_subjects(7, 7).is_ok());
        let err = batch_fits_subjects(4, 7).unwrap_err();
        assert!(err.contains("batch_size / 7 = 0 samples"), "{err}");
    }
}
