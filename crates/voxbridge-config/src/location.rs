//! Mapping byte offsets and dotted keys back to `line:column` in the source text.
//!
//! `toml` reports errors as byte spans and serde reports nothing about where a value came
//! from, so we re-read the text with `toml_edit`, which keeps the span of every key and value.

use std::ops::Range;

use toml_edit::{Document, TableLike};

/// 1-based `(line, column)` of a byte offset.
///
/// Columns count characters, not bytes, so they match what an editor shows. An offset past
/// the end or inside a multi-byte character is moved back to the nearest character start.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The source text plus its `toml_edit` parse, used only to find where things are written.
pub(crate) struct SourceMap<'a> {
    text: &'a str,
    /// `None` when the text is not valid TOML; lookups then find nothing.
    doc: Option<Document<&'a str>>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self { text, doc: Document::parse(text).ok() }
    }

    /// Position of the key at `path` (e.g. `["train", "batch_size"]`), or of element `index`
    /// of the array stored there. A key that is not written in the file (a missing required
    /// key) falls back to its nearest written ancestor, e.g. the `[data]` header.
    pub(crate) fn position(&self, path: &[&str], index: Option<usize>) -> Option<(usize, usize)> {
        let doc = self.doc.as_ref()?;
        let span = key_span(doc.as_table(), path, index)?;
        Some(line_col(self.text, span.start))
    }

    /// For a top-level key holding something other than a table: the TOML type it holds and
    /// where its key is written.
    pub(crate) fn non_table(&self, key: &str) -> Option<(&'static str, (usize, usize))> {
        let doc = self.doc.as_ref()?;
        let (key, item) = doc.get_key_value(key)?;
        if item.is_table_like() {
            return None;
        }
        let offset = key.span().or_else(|| item.span()).map_or(0, |s| s.start);
        Some((item.type_name(), line_col(self.text, offset)))
    }

    /// Dotted path of the innermost key or value whose span covers `offset`.
    pub(crate) fn path_at(&self, offset: usize) -> Option<Vec<String>> {
        let doc = self.doc.as_ref()?;
        let mut path = Vec::new();
        path_at(doc.as_table(), offset, &mut path).then_some(path)
    }
}

fn key_span(root: &dyn TableLike, path: &[&str], index: Option<usize>) -> Option<Range<usize>> {
    let mut table = root;
    let mut best = None;
    for (depth, segment) in path.iter().enumerate() {
        let Some((key, item)) = table.get_key_value(segment) else {
            break;
        };
        if let Some(span) = key.span().or_else(|| item.span()) {
            best = Some(span);
        }
        if depth + 1 == path.len() {
            let element = index.and_then(|i| item.as_array()?.get(i)?.span());
            if element.is_some() {
                best = element;
            }
            break;
        }
        match item.as_table_like() {
            Some(child) => table = child,
            None => break,
        }
    }
    best
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// Depth-first search for `offset`; on success `path` holds the keys leading to it.
fn path_at(table: &dyn TableLike, offset: usize, path: &mut Vec<String>) -> bool {
    for (name, item) in table.iter() {
        path.push(name.to_owned());
        let key_hit = table.key(name).and_then(|k| k.span()).is_some_and(|s| covers(&s, offset));
        if key_hit {
            return true;
        }
        if let Some(child) = item.as_table_like()
            && path_at(child, offset, path)
        {
            return true;
        }
        if let Some(tables) = item.as_array_of_tables()
            && tables.iter().any(|t| path_at(t, offset, path))
        {
            return true;
        }
        if item.span().is_some_and(|s| covers(&s, offset)) {
            return true;
        }
        path.pop();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name = \"a\"\n\n[optim]\nlr = 1.0\n\n[data]\ntrain_subjects = [1, 2, 3]\n";

    #[test]
    fn line_col_is_one_based_and_counts_characters() {
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 3), (2, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        // "é" is two bytes but one column.
        assert_eq!(line_col("é = 1", 3), (1, 3));
        // Offsets inside a character or past the end never panic.
        assert_eq!(line_col("é", 1), (1, 1));
        assert_eq!(line_col("ab", 99), (1, 3));
    }

    #[test]
    fn position_of_nested_key_and_array_element() {
        let map = SourceMap::new(TEXT);
        assert_eq!(map.position(&["optim", "lr"], None), Some((4, 1)));
        assert_eq!(map.position(&["data", "train_subjects"], Some(2)), Some((7, 25)));
        assert_eq!(map.position(&["name"], None), Some((1, 1)));
    }

    #[test]
    fn missing_key_falls_back_to_its_table() {
        let map = SourceMap::new(TEXT);
        // `[data]` header: the key `data` starts at column 2.
        assert_eq!(map.position(&["data", "manifest"], None), Some((6, 2)));
        assert_eq!(map.position(&["train", "epochs"], None), None);
    }

    #[test]
    fn path_at_finds_innermost_key() {
        let map = SourceMap::new(TEXT);
        let lr_value = TEXT.find("1.0").unwrap();
        assert_eq!(map.path_at(lr_value), Some(vec!["optim".into(), "lr".into()]));
        let in_array = TEXT.find("2, 3").unwrap();
        assert_eq!(map.path_at(in_array), Some(vec!["data".into(), "train_subjects".into()]));
        assert_eq!(map.path_at(TEXT.find('\n').unwrap()), None);
    }

    #[test]
    fn invalid_toml_finds_nothing() {
        let map = SourceMap::new("[optim\nlr = 1");
        assert_eq!(map.position(&["optim"], None), None);
        assert_eq!(map.path_at(0), None);
    }
}
