//! Maps keyed by NSD subject number in memory and by `"subject<N>"` in saved files
//! (`report.json`; a checkpoint's `state.json` keeps text keys, made by [`subject_key`]).
//!
//! Use as `#[serde(with = "voxbridge_config::by_subject")]` on a `BTreeMap<u8, T>`. Keys are
//! written in the order of their text (`subject10` before `subject2`), as a map keyed by the
//! text itself was, so files stay byte for byte what they were.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const PREFIX: &str = "subject";

/// `"subject<N>"`: the key of subject `subject` in saved files.
pub fn subject_key(subject: u8) -> String {
    format!("{PREFIX}{subject}")
}

/// The subject number of a `"subject<N>"` key.
pub fn parse_subject_key(key: &str) -> Option<u8> {
    let digits = key.strip_prefix(PREFIX)?;
    // `u8::from_str` takes a leading `+`; a key never has one.
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok())?
}

pub fn serialize<S: Serializer, T: Serialize>(map: &BTreeMap<u8, T>, serializer: S) -> Result<S::Ok, S::Error> {
    let by_text: BTreeMap<String, &T> = map.iter().map(|(s, v)| (subject_key(*s), v)).collect();
    let mut out = serializer.serialize_map(Some(by_text.len()))?;
    for (key, value) in by_text {
        out.serialize_entry(&key, value)?;
    }
    out.end()
}

pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<BTreeMap<u8, T>, D::Error> {
    struct BySubject<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for BySubject<T> {
        type Value = BTreeMap<u8, T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map keyed by \"subject<N>\"")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = BTreeMap::new();
            while let Some((key, value)) = access.next_entry::<String, T>()? {
                let subject = parse_subject_key(&key)
                    .ok_or_else(|| de::Error::custom(format!("key {key:?} is not \"subject<N>\"")))?;
                map.insert(subject, value);
            }
            Ok(map)
        }
    }
    deserializer.deserialize_map(BySubject(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Report {
        #[serde(with = "super")]
        sessions: BTreeMap<u8, Vec<u16>>,
    }

    #[test]
    fn keys_are_subject_numbers_in_memory_and_text_on_disk() {
        assert_eq!(subject_key(1), "subject1");
        assert_eq!(parse_subject_key("subject12"), Some(12));
        for bad in ["subj1", "subject", "subject+1", "subject256", "subject-1", "1"] {
            assert_eq!(parse_subject_key(bad), None, "{bad}");
        }
        let report = Report { sessions: BTreeMap::from([(2, vec![1, 2]), (10, vec![3])]) };
        let text = toml::to_string(&report).unwrap();
        // Ordered as text, as a map keyed by the text itself is.
        assert_eq!(text, "[sessions]\nsubject10 = [3]\nsubject2 = [1, 2]\n");
        assert_eq!(toml::from_str::<Report>(&text).unwrap(), report);
        let err = toml::from_str::<Report>("[sessions]\nsubj1 = [1]\n").unwrap_err().to_string();
        assert!(err.contains("\"subj1\" is not \"subject<N>\""), "{err}");
    }
}
