//! Policy errors: what is wrong, where (file:line:column) and what to do about it.
//!
//! A policy is rejected whole, so the parser and the compiler collect every problem
//! they find instead of stopping at the first: a user fixing a file should see the
//! complete list in one run.

use std::fmt;

/// A 1-based position in the policy file (columns count characters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    pub const fn new(line: usize, column: usize) -> Self {
        Location { line, column }
    }
}

/// Which stage found the problem. Callers can tell "the file is wrong" from "the
/// file is right but this kernel cannot enforce it yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not YAML, or not exactly one document.
    Syntax,
    /// YAML, but not shaped like a policy: unknown or missing keys, wrong types.
    Schema,
    /// A value is wrong: a relative path, a bad CIDR, port 0, a bad duration.
    Invalid,
    /// Rules that conflict: a duplicate, or a rule another one always overrides.
    Conflict,
    /// A valid rule that the kernel cannot enforce exactly yet (only `compile`
    /// reports these; `parse` accepts them so the evaluator can still answer).
    Unenforceable,
    /// A valid rule over a kernel limit (path key length, port rules per network).
    Limit,
}

/// One problem in a policy file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}{}", HintSuffix(.hint.as_deref()))]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub kind: ErrorKind,
    pub message: String,
    /// What the user can do about it.
    pub hint: Option<String>,
}

impl PolicyError {
    pub fn location(&self) -> Location {
        Location::new(self.line, self.column)
    }
}

struct HintSuffix<'a>(Option<&'a str>);

impl fmt::Display for HintSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(h) => write!(f, "; hint: {h}"),
            None => Ok(()),
        }
    }
}

/// Every problem found in a policy file, in file order; never empty. Displays one
/// problem per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.0))]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

struct Lines<'a>(&'a [PolicyError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects problems for one file while a stage walks it.
#[derive(Debug)]
pub(crate) struct Errors {
    file: String,
    list: Vec<PolicyError>,
}

impl Errors {
    pub fn new(file: &str) -> Self {
        Errors { file: file.to_string(), list: Vec::new() }
    }

    pub fn push(&mut self, kind: ErrorKind, at: Location, message: impl Into<String>, hint: Option<String>) {
        self.list.push(PolicyError {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            kind,
            message: message.into(),
            hint,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// `Ok(())` when nothing was found, else every problem sorted by position (the
    /// walk finds conflicts after shapes, but a reader goes top to bottom).
    pub fn finish(mut self) -> Result<(), PolicyErrors> {
        if self.list.is_empty() {
            return Ok(());
        }
        self.list.sort_by_key(|e| (e.line, e.column));
        Err(PolicyErrors(self.list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_error_with_hint() {
        let mut e = Errors::new("coder.yaml");
        e.push(
            ErrorKind::Schema,
            Location::new(14, 9),
            "unknown key \"acton\" in exec rule (expected one of: path, action)",
            Some("did you mean \"action\"?".into()),
        );
        e.push(ErrorKind::Invalid, Location::new(2, 7), "kind is \"Policy\"", None);
        let s = e.finish().unwrap_err().to_string();
        assert_eq!(
            s,
            "coder.yaml:2:7: kind is \"Policy\"\n\
             coder.yaml:14:9: unknown key \"acton\" in exec rule (expected one of: path, action); hint: did you mean \"action\"?"
        );
    }
}
