//! Vocabularies: a categorical feature's values numbered row by row, beside hashing.
//!
//! A vocabulary gives each of its ids a row of its own in the feature's embedding table, from
//! row 1 in the vocabulary's order; row 0 is every other value, missing or out of vocabulary.
//! So an id never seen in training (a cold user, a new item) takes a row that training did
//! reach, the one a masked or missing value trains, instead of an untrained hash bucket.
//!
//! In a model package it is a text file, `vocabularies/<feature>.txt`, one id per line (UTF-8,
//! `\n`-terminated); line `i` (from 1) is row `i`. Integer ids are written as their decimal text,
//! as they hash. Format for other trainers: `docs/model-package.md`.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{IdIndex, TooLarge};

/// Where a package keeps its vocabularies.
pub const DIR: &str = "vocabularies";

/// The largest vocabulary file read (a 10M-id vocabulary of 20-byte ids is 210 MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// How a data spec's categorical feature gets its vocabulary from the training rows: the ids
/// seen at least `min_count` times, the most frequent first (ties in byte order of the id), at
/// most `max_size` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocabularyRule {
    #[serde(default = "one")]
    pub min_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<usize>,
}

fn one() -> u64 {
    1
}

impl VocabularyRule {
    pub fn validate(&self) -> Result<(), String> {
        if self.min_count == 0 {
            return Err("vocabulary.min_count must be at least 1".into());
        }
        if self.max_size == Some(0) {
            return Err("vocabulary.max_size must be at least 1".into());
        }
        Ok(())
    }

    /// The vocabulary of the ids in `seen`, each counted `counts[row]` times, stored as `file`.
    /// Empty when no id is frequent enough.
    pub fn build(&self, file: &str, seen: &IdCounter, counts: &[u64]) -> Vocabulary {
        // An empty id or one with a line break cannot be a line of the file: it stays row 0.
        let mut kept: Vec<usize> = (0..seen.len())
            .filter(|&r| counts[r] >= self.min_count && check_id(seen.get(r)).is_ok())
            .collect();
        kept.sort_unstable_by(|&a, &b| counts[b].cmp(&counts[a]).then_with(|| seen.get(a).cmp(seen.get(b))));
        kept.truncate(self.max_size.unwrap_or(usize::MAX));
        let mut ids = IdIndex::with_capacity(kept.len());
        for r in kept {
            ids.push_new(seen.get(r)).expect("a subset of an indexed arena fits in one. This is a bug.");
        }
        Vocabulary { file: file.to_string(), ids }
    }
}

/// The ids of a column numbered as they arrive, to count before a vocabulary is chosen.
#[derive(Debug, Clone, Default)]
pub struct IdCounter {
    ids: IdIndex,
}

impl IdCounter {
    /// `id`'s number, the next one when it is new. Fails past 4 GiB of distinct id text.
    pub fn number(&mut self, id: &str) -> Result<u32, String> {
        self.ids
            .intern(id)
            .map(|r| r as u32)
            .map_err(|TooLarge| "more than 4 GiB of distinct ids; hash this feature instead".to_string())
    }

    pub fn get(&self, number: usize) -> &str {
        self.ids.get(number)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ids with rows of their own, row `i + 1` for the `i`-th.
#[derive(Clone, PartialEq)]
pub struct Vocabulary {
    /// Where the package keeps it, relative to the package directory.
    file: String,
    ids: IdIndex,
}

impl std::fmt::Debug for Vocabulary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vocabulary({}, {} ids)", self.file, self.len())
    }
}

/// The file a package keeps `feature`'s vocabulary in.
pub fn file_for(feature: &str) -> String {
    format!("{DIR}/{feature}.txt")
}

/// Whether `feature` can name a vocabulary file: one path component, not hidden.
pub fn nameable(feature: &str) -> bool {
    !feature.is_empty() && !feature.starts_with('.') && !feature.contains(['/', '\\', '\0'])
}

impl Vocabulary {
    /// A vocabulary of `ids`, in that order. Refuses an empty id, an id holding a line break
    /// (the file has one id per line) and a repeated id, naming it.
    pub fn from_ids<'a>(file: &str, ids: impl IntoIterator<Item = &'a str>) -> Result<Vocabulary, String> {
        let mut index = IdIndex::default();
        for (i, id) in ids.into_iter().enumerate() {
            check_id(id).map_err(|p| format!("id {}: {p}", i + 1))?;
            if let Some(first) = index.find(id) {
                return Err(format!("id `{id}` appears twice (rows {} and {})", first + 1, i + 1));
            }
            index.push_new(id).map_err(|TooLarge| "more than 4 GiB of ids".to_string())?;
        }
        Ok(Vocabulary { file: file.to_string(), ids: index })
    }

    /// Parses a vocabulary file's text; errors name the line.
    pub fn parse(file: &str, text: &str) -> Result<Vocabulary, String> {
        let body = text.strip_suffix('\n').unwrap_or(text);
        let lines = if body.is_empty() { Vec::new() } else { body.split('\n').collect() };
        let mut index = IdIndex::with_capacity(lines.len());
        for (i, id) in lines.into_iter().enumerate() {
            let line = i + 1;
            check_id(id).map_err(|p| format!("{file}, line {line}: {p}"))?;
            if let Some(first) = index.find(id) {
                return Err(format!("{file}, line {line}: id `{id}` repeats line {}", first + 1));
            }
            index.push_new(id).map_err(|TooLarge| format!("{file}: more than 4 GiB of ids"))?;
        }
        Ok(Vocabulary { file: file.to_string(), ids: index })
    }

    /// Reads `file` (relative to the package directory `dir`), refusing one that resolves
    /// outside `dir` or is over [`MAX_FILE_BYTES`].
    pub fn read(dir: &Path, file: &str) -> Result<Vocabulary, String> {
        let path = dir.join(file);
        let shown = path.display();
        let root = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
        let real = path.canonicalize().map_err(|e| format!("{shown}: {e}"))?;
        if !real.starts_with(&root) {
            return Err(format!("{shown} links outside the package; refused"));
        }
        let size = std::fs::metadata(&real).map_err(|e| format!("{shown}: {e}"))?.len();
        if size > MAX_FILE_BYTES {
            return Err(format!("{shown} is {size} bytes, over the limit of {MAX_FILE_BYTES}"));
        }
        let bytes = std::fs::read(&real).map_err(|e| format!("{shown}: {e}"))?;
        let text = String::from_utf8(bytes).map_err(|e| format!("{shown}: not UTF-8: {e}"))?;
        Vocabulary::parse(&shown.to_string(), &text).map(|v| v.stored_as(file))
    }

    /// The same ids, kept in another file.
    pub fn stored_as(self, file: &str) -> Vocabulary {
        Vocabulary { file: file.to_string(), ..self }
    }

    /// The file's text: one id per line.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.ids.strings().bytes.len() + self.len());
        for id in self.ids() {
            out.push_str(id);
            out.push('\n');
        }
        out
    }

    /// The table row of `id`: its place from 1, or 0 when it is not in the vocabulary.
    pub fn row(&self, id: &str) -> i64 {
        self.ids.find(id).map_or(0, |r| r as i64 + 1)
    }

    /// The id of table row `row` (from 1).
    pub fn id(&self, row: usize) -> Option<&str> {
        (1..=self.len()).contains(&row).then(|| self.ids.get(row - 1))
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|r| self.ids.get(r))
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows of the feature's table: one per id and row 0.
    pub fn buckets(&self) -> u64 {
        self.len() as u64 + 1
    }
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an empty id (a missing value takes row 0 without one)".into());
    }
    if id.contains(['\n', '\r']) {
        return Err(format!("id {id:?} holds a line break, which a vocabulary file cannot"));
    }
    Ok(())
}

/// A categorical feature's vocabulary, as far as it is known.
#[derive(Debug, Clone, PartialEq)]
pub enum Vocab {
    /// Named by a manifest and not read yet; [`crate::manifest::Manifest::from_path`] reads it.
    File(String),
    /// The ids.
    Ids(Arc<Vocabulary>),
    /// A data spec's rule, built from the training rows before a model is.
    Build(VocabularyRule),
}

impl Vocab {
    pub fn ids(&self) -> Option<&Arc<Vocabulary>> {
        match self {
            Vocab::Ids(v) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_take_rows_from_one_and_everything_else_row_zero() {
        let v = Vocabulary::from_ids("vocabularies/genre.txt", ["rock", "jazz", "21"]).unwrap();
        assert_eq!((v.row("rock"), v.row("jazz"), v.row("21")), (1, 2, 3));
        assert_eq!((v.row("polka"), v.row("")), (0, 0));
        assert_eq!((v.id(0), v.id(2), v.id(4)), (None, Some("jazz"), None));
        assert_eq!(v.buckets(), 4);
        assert_eq!(v.to_text(), "rock\njazz\n21\n");
        assert_eq!(Vocabulary::parse("vocabularies/genre.txt", &v.to_text()).unwrap(), v);
        // A last line without its newline is the same file.
        assert_eq!(Vocabulary::parse("vocabularies/genre.txt", "rock\njazz\n21").unwrap(), v);
        assert!(Vocabulary::parse("f", "").unwrap().is_empty());
    }

    #[test]
    fn a_bad_file_is_refused_naming_its_line() {
        let e = Vocabulary::parse("vocabularies/genre.txt", "rock\njazz\nrock\n").unwrap_err();
        assert_eq!(e, "vocabularies/genre.txt, line 3: id `rock` repeats line 1");
        let e = Vocabulary::parse("vocabularies/genre.txt", "rock\n\njazz\n").unwrap_err();
        assert!(e.starts_with("vocabularies/genre.txt, line 2: an empty id"), "{e}");
        let e = Vocabulary::parse("vocabularies/genre.txt", "rock\r\njazz\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("line break"), "{e}");
        let e = Vocabulary::from_ids("f", ["a", "b\nc"]).unwrap_err();
        assert!(e.starts_with("id 2:"), "{e}");
    }

    #[test]
    fn a_rule_keeps_the_frequent_ids_most_frequent_first() {
        let mut seen = IdCounter::default();
        let mut counts = vec![0u64; 0];
        for id in ["c", "a", "b", "a", "d", "b", "a", "e", "e", "c", "", "", "", ""] {
            let n = seen.number(id).unwrap() as usize;
            counts.resize(seen.len(), 0);
            counts[n] += 1;
        }
        let all = VocabularyRule { min_count: 1, max_size: None }.build("f", &seen, &counts);
        assert_eq!(all.ids().collect::<Vec<_>>(), ["a", "b", "c", "e", "d"]);
        let two = VocabularyRule { min_count: 2, max_size: Some(3) }.build("f", &seen, &counts);
        assert_eq!(two.ids().collect::<Vec<_>>(), ["a", "b", "c"]);
        let none = VocabularyRule { min_count: 4, max_size: None }.build("f", &seen, &counts);
        assert!(none.is_empty());
        assert!(VocabularyRule { min_count: 0, max_size: None }.validate().is_err());
        assert!(VocabularyRule { min_count: 1, max_size: Some(0) }.validate().is_err());
    }

    #[test]
    fn reading_refuses_a_file_that_links_outside_the_package() {
        let outside = tempfile::tempdir().unwrap();
        let package = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("v.txt"), "a\n").unwrap();
        std::fs::create_dir(package.path().join(DIR)).unwrap();
        std::fs::write(package.path().join("vocabularies/in.txt"), "a\nb\n").unwrap();
        let v = Vocabulary::read(package.path(), "vocabularies/in.txt").unwrap();
        assert_eq!((v.len(), v.file()), (2, "vocabularies/in.txt"));
        std::os::unix::fs::symlink(outside.path().join("v.txt"), package.path().join("vocabularies/out.txt"))
            .unwrap();
        let e = Vocabulary::read(package.path(), "vocabularies/out.txt").unwrap_err();
        assert!(e.contains("links outside the package"), "{e}");
        let e = Vocabulary::read(package.path(), "vocabularies/none.txt").unwrap_err();
        assert!(e.contains("none.txt"), "{e}");
    }
}
