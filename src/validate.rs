//! Config problems and the collector every section validates into.
//!
//! A leaf (it imports nothing from the crate), so that each section checks its own part of the
//! file beside its code without importing [`crate::config`], which imports the sections.

use std::fmt;

/// One problem found in a config file, with the key path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `cameras[2].url`; empty for the file as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects every problem of a config, each at its key path (`rules[2].schedule`), instead of
/// stopping at the first.
#[derive(Debug, Default)]
pub struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    pub fn err(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// A problem at `path` unless `id` is a valid id ([`is_valid_id`]).
    pub fn id(&mut self, path: &str, id: &str) {
        if !is_valid_id(id) {
            self.err(
                path,
                format!("{id:?} is not a valid id; use 1-64 characters of a-z, 0-9, '-' and '_'"),
            );
        }
    }

    /// Problems so far (a section compares counts to know whether its own part was sound).
    pub fn len(&self) -> usize {
        self.problems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    /// `value` if nothing was wrong, else every problem.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<Problem>> {
        match self.problems.is_empty() {
            true => Ok(value),
            false => Err(self.problems),
        }
    }
}

/// Identifiers end up in MQTT topics, metric labels and file names: keep them plain.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}
