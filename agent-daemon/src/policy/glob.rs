//! Path patterns of the policy format: `*` within one component, `**` across
//! components, everything else literal.
//!
//! Hand-written rather than globset because the format's glob is a small, fixed
//! subset (globset would also accept `?`, `[..]` and `{a,b}`, which the format does
//! not define), and because precedence needs the pattern's structure anyway: the
//! literal prefix, the first wildcard, and whether the kernel can express it.
//!
//! Matching works on bytes, like the kernel: Linux paths need not be UTF-8.

use std::fmt;

/// One `/`-separated component of a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Component {
    /// Matches exactly these bytes.
    Literal(Vec<u8>),
    /// Contains `*`: matches one component, each `*` any run of bytes.
    Star(Vec<u8>),
    /// `**`: any number of whole components.
    Any,
}

/// A parsed, absolute path pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Glob {
    text: String,
    components: Vec<Component>,
}

/// Why a path pattern is malformed. The messages finish the sentence
/// "path PATTERN ...".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("is relative: rules match absolute paths only")]
    Relative,
    #[error("has an empty component (`//`)")]
    EmptyComponent,
    #[error("ends with `/`")]
    TrailingSlash,
    #[error("has a `{0}` component")]
    DotComponent(&'static str),
    #[error("has `{0}`: `**` must be a whole component (`/dir/**`), and `***` means nothing")]
    BadDoubleStar(String),
    #[error("repeats `**/**`, which is the same as one `**`")]
    RepeatedDoubleStar,
    #[error("contains a NUL byte")]
    Nul,
}

/// How specific a pattern is, ordered so that the greater value wins:
/// an exact path beats any pattern; between patterns the longer literal prefix
/// (before the first wildcard) wins, then `*` beats `**`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Specificity {
    pub exact: bool,
    /// Bytes before the first wildcard (the whole path for an exact one).
    pub literal_len: usize,
    /// The first wildcard is a `*` rather than a `**`.
    pub star_first: bool,
}

/// The two pattern shapes an LPM trie over path bytes expresses exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelForm {
    /// No wildcard: this path only.
    Exact(Vec<u8>),
    /// `DIR/**`: everything below DIR (`/` for `/**`).
    Below(Vec<u8>),
}

impl Glob {
    /// Parses a rule's path. Rules must be written absolute and normalised: silently
    /// rewriting `a/../b` would make the rule mean something the user did not read.
    pub fn parse(text: &str) -> Result<Glob, GlobError> {
        if text.contains('\0') {
            return Err(GlobError::Nul);
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(GlobError::Relative);
        };
        if rest.is_empty() {
            return Ok(Glob { text: text.into(), components: Vec::new() });
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let mut components = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let c = match *part {
                "" if i + 1 == parts.len() => return Err(GlobError::TrailingSlash),
                "" => return Err(GlobError::EmptyComponent),
                "." => return Err(GlobError::DotComponent(".")),
                ".." => return Err(GlobError::DotComponent("..")),
                "**" => Component::Any,
                p if p.contains("**") => return Err(GlobError::BadDoubleStar(p.into())),
                p if p.contains('*') => Component::Star(p.as_bytes().to_vec()),
                p => Component::Literal(p.as_bytes().to_vec()),
            };
            if c == Component::Any && components.last() == Some(&Component::Any) {
                return Err(GlobError::RepeatedDoubleStar);
            }
            components.push(c);
        }
        Ok(Glob { text: text.into(), components })
    }

    /// An exact path in which every byte is literal (a `*` is part of a name):
    /// for paths that come from the machine, not from a rule. `path` is absolute
    /// and normalised (as `path::real_path` gives it).
    pub fn literal(path: &[u8]) -> Glob {
        let components =
            path.split(|&b| b == b'/').filter(|c| !c.is_empty()).map(|c| Component::Literal(c.to_vec())).collect();
        Glob { text: String::from_utf8_lossy(path).into_owned(), components }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_exact(&self) -> bool {
        self.components.iter().all(|c| matches!(c, Component::Literal(_)))
    }

    pub fn specificity(&self) -> Specificity {
        let mut literal_len = 1; // the leading '/'
        for (i, c) in self.components.iter().enumerate() {
            let sep = usize::from(i + 1 < self.components.len());
            match c {
                Component::Literal(l) => literal_len += l.len() + sep,
                Component::Star(p) => {
                    let before = p.iter().position(|&b| b == b'*').unwrap_or(p.len());
                    return Specificity { exact: false, literal_len: literal_len + before, star_first: true };
                }
                Component::Any => return Specificity { exact: false, literal_len, star_first: false },
            }
        }
        Specificity { exact: true, literal_len: literal_len.max(1), star_first: false }
    }

    /// What the kernel can match exactly, if anything: an exact path, or a trailing
    /// `/**` after literal components. Anything else would have to be widened.
    pub fn kernel_form(&self) -> Option<KernelForm> {
        let (dir, tail) = self.split_literal_dir();
        match tail {
            [] => Some(KernelForm::Exact(dir)),
            [Component::Any] => Some(KernelForm::Below(dir)),
            _ => None,
        }
    }

    /// The leading literal components as a path (`/` when none), and the rest.
    fn split_literal_dir(&self) -> (Vec<u8>, &[Component]) {
        let n = self.components.iter().take_while(|c| matches!(c, Component::Literal(_))).count();
        let mut dir = Vec::new();
        for c in &self.components[..n] {
            if let Component::Literal(l) = c {
                dir.push(b'/');
                dir.extend_from_slice(l);
            }
        }
        if dir.is_empty() {
            dir.push(b'/');
        }
        (dir, &self.components[n..])
    }

    /// The directory before the first wildcard component (the whole path when exact):
    /// the part that names real files and so may go through symlinks.
    pub fn literal_dir(&self) -> Vec<u8> {
        self.split_literal_dir().0
    }

    /// The same pattern with its literal directory replaced by `dir` (a normalised
    /// absolute path): how a rule reads once its symlinks are resolved.
    pub fn with_literal_dir(&self, dir: &[u8]) -> Glob {
        let (old, tail) = self.split_literal_dir();
        if old == dir {
            return self.clone();
        }
        let mut components: Vec<Component> =
            dir.split(|&b| b == b'/').filter(|c| !c.is_empty()).map(|c| Component::Literal(c.to_vec())).collect();
        components.extend(tail.iter().cloned());
        let mut text = String::from_utf8_lossy(dir).into_owned();
        let tail_text = &self.text[self.text.len() - self.tail_text_len(tail)..];
        if !tail.is_empty() && !text.ends_with('/') {
            text.push('/');
        }
        text.push_str(tail_text.trim_start_matches('/'));
        Glob { text, components }
    }

    /// Length of the pattern text that spells `tail` (with its leading '/').
    fn tail_text_len(&self, tail: &[Component]) -> usize {
        tail.iter()
            .map(|c| {
                1 + match c {
                    Component::Literal(l) | Component::Star(l) => l.len(),
                    Component::Any => 2,
                }
            })
            .sum()
    }

    /// The pattern as a byte regex (for the `regex-automata` syntax, to be matched
    /// anchored at both ends) with exactly the meaning of [`Glob::matches`] on
    /// normalised absolute paths: `*` is any run of non-`/` bytes, a middle `**` is
    /// zero or more whole components, a final `/**` one or more, `/**` everything.
    pub fn regex(&self) -> String {
        // Bytes, not Unicode: a path need not be UTF-8, and `[^/]` must be one byte.
        let mut re = String::from("(?s-u)");
        if self.components == [Component::Any] {
            re.push_str("/.*");
            return re;
        }
        if self.components.is_empty() {
            re.push('/');
            return re;
        }
        let last = self.components.len() - 1;
        for (i, c) in self.components.iter().enumerate() {
            match c {
                Component::Literal(l) => {
                    re.push('/');
                    push_escaped(&mut re, l);
                }
                Component::Star(p) => {
                    re.push('/');
                    for (j, part) in p.split(|&b| b == b'*').enumerate() {
                        if j > 0 {
                            re.push_str("[^/]*");
                        }
                        push_escaped(&mut re, part);
                    }
                }
                // `(?:/[^/]+)+` on a normalised path, which never has `//` or a
                // trailing `/`; `/.*` says the same there, and lets the automaton
                // settle (a stable state) as soon as it is inside DIR/.
                Component::Any if i == last => re.push_str("/.*"),
                Component::Any => re.push_str("(?:/[^/]+)*"),
            }
        }
        re
    }

    /// Whether a normalised absolute path (no `.`, `..` or `//`) matches.
    ///
    /// `**` matches zero or more whole components, except that a final `/**` needs
    /// at least one: `DIR/**` is what is inside DIR, not DIR itself (as in
    /// .gitignore, and as the kernel's prefix key `DIR/` behaves). `/**` matches
    /// every absolute path, `/` included, again like its kernel key `/`.
    pub fn matches(&self, path: &[u8]) -> bool {
        if !path.starts_with(b"/") {
            return false;
        }
        if self.components == [Component::Any] {
            return true;
        }
        let names: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
        let (p, n) = (self.components.len(), names.len());
        // ok[i][j]: pattern components i.. match names j.. ; filled from the end so
        // that several `**` stay linear in path length per component.
        let mut ok = vec![vec![false; n + 1]; p + 1];
        ok[p][n] = true;
        for i in (0..p).rev() {
            for j in (0..=n).rev() {
                ok[i][j] = match &self.components[i] {
                    Component::Any if i + 1 == p => j < n,
                    Component::Any => ok[i + 1][j] || (j < n && ok[i][j + 1]),
                    Component::Literal(l) => j < n && names[j] == l.as_slice() && ok[i + 1][j + 1],
                    Component::Star(pat) => j < n && star_match(pat, names[j]) && ok[i + 1][j + 1],
                };
            }
        }
        ok[0][0]
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Appends `bytes` to a `(?-u)` regex as literals: ASCII letters and digits as
/// they are, every other byte as `\xNN`, so no byte can mean syntax.
fn push_escaped(re: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() {
            re.push(b as char);
        } else {
            re.push_str(&format!("\\x{b:02x}"));
        }
    }
}

/// `*` matches any run of bytes (possibly empty) within one component. Greedy with
/// a single backtrack point: linear for all practical patterns.
fn star_match(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut retry: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() && pat[p] == b'*' {
            retry = Some((p, n));
            p += 1;
        } else if p < pat.len() && pat[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((rp, rn)) = retry {
            p = rp + 1;
            n = rn + 1;
            retry = Some((rp, rn + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Glob {
        Glob::parse(s).unwrap()
    }

    #[test]
    fn malformed_patterns() {
        assert_eq!(Glob::parse("usr/bin"), Err(GlobError::Relative));
        assert_eq!(Glob::parse("/usr//bin"), Err(GlobError::EmptyComponent));
        assert_eq!(Glob::parse("/usr/bin/"), Err(GlobError::TrailingSlash));
        assert_eq!(Glob::parse("/usr/./bin"), Err(GlobError::DotComponent(".")));
        assert_eq!(Glob::parse("/usr/../bin"), Err(GlobError::DotComponent("..")));
        assert_eq!(Glob::parse("/usr/***"), Err(GlobError::BadDoubleStar("***".into())));
        assert_eq!(Glob::parse("/usr/lib**"), Err(GlobError::BadDoubleStar("lib**".into())));
        assert_eq!(Glob::parse("/a/**/**/b"), Err(GlobError::RepeatedDoubleStar));
        assert!(Glob::parse("/").is_ok());
        assert!(Glob::parse("/**").is_ok());
    }

    #[test]
    fn exact_paths_match_only_themselves() {
        assert!(g("/usr/bin/git").matches(b"/usr/bin/git"));
        assert!(!g("/usr/bin/git").matches(b"/usr/bin/gitk"));
        assert!(!g("/usr/bin/git").matches(b"/usr/bin/git/x"));
        assert!(!g("/usr/bin/git").matches(b"usr/bin/git"));
        assert!(g("/").matches(b"/"));
    }

    #[test]
    fn single_star_stays_in_one_component() {
        assert!(g("/usr/bin/py*").matches(b"/usr/bin/python3"));
        assert!(g("/usr/bin/py*").matches(b"/usr/bin/py"));
        assert!(!g("/usr/bin/py*").matches(b"/usr/bin/py/x"));
        assert!(g("/home/*/work/**").matches(b"/home/alice/work/a/b"));
        assert!(!g("/home/*/work/**").matches(b"/home/alice/bob/work/a"));
        assert!(g("/a/*x*y").matches(b"/a/1x2x3y"));
        assert!(!g("/a/*x*y").matches(b"/a/1x2x3"));
    }

    #[test]
    fn double_star_crosses_components() {
        assert!(g("/usr/lib/git-core/**").matches(b"/usr/lib/git-core/git-add"));
        assert!(g("/usr/lib/git-core/**").matches(b"/usr/lib/git-core/a/b/c"));
        assert!(!g("/usr/lib/git-core/**").matches(b"/usr/lib/git-core"));
        assert!(!g("/usr/lib/git-core/**").matches(b"/usr/lib/git-core2/x"));
        assert!(g("/a/**/b").matches(b"/a/b"));
        assert!(g("/a/**/b").matches(b"/a/x/y/b"));
        assert!(!g("/a/**/b").matches(b"/a/x/y/c"));
        assert!(g("/**").matches(b"/"));
        assert!(g("/**").matches(b"/etc/passwd"));
    }

    #[test]
    fn specificity_orders_as_the_format_says() {
        let s = |p: &str| g(p).specificity();
        assert!(s("/usr/bin/git") > s("/usr/bin/git*"));
        assert!(s("/usr/lib/git-core/**") > s("/usr/lib/**"));
        assert!(s("/usr/bin/*") > s("/usr/bin/**"));
        assert!(s("/usr/bin/py*") > s("/usr/bin/*"));
        assert_eq!(s("/usr/lib/**").literal_len, "/usr/lib/".len());
        assert_eq!(s("/**").literal_len, 1);
        assert_eq!(s("/usr/bin/py*").literal_len, "/usr/bin/py".len());
    }

    #[test]
    fn kernel_forms() {
        assert_eq!(g("/usr/bin/git").kernel_form(), Some(KernelForm::Exact(b"/usr/bin/git".to_vec())));
        assert_eq!(g("/usr/lib/**").kernel_form(), Some(KernelForm::Below(b"/usr/lib".to_vec())));
        assert_eq!(g("/**").kernel_form(), Some(KernelForm::Below(b"/".to_vec())));
        assert_eq!(g("/home/*/work/**").kernel_form(), None);
        assert_eq!(g("/usr/bin/py*").kernel_form(), None);
        assert_eq!(g("/a/**/b").kernel_form(), None);
    }

    #[test]
    fn literal_dir_can_be_resolved() {
        let r = g("/bin/py*").with_literal_dir(b"/usr/bin");
        assert_eq!(r.as_str(), "/usr/bin/py*");
        assert!(r.matches(b"/usr/bin/python3"));
        assert_eq!(g("/bin/**").with_literal_dir(b"/usr/bin").as_str(), "/usr/bin/**");
        assert_eq!(g("/bin/sh").with_literal_dir(b"/usr/bin/dash").as_str(), "/usr/bin/dash");
        assert_eq!(g("/x/**").with_literal_dir(b"/").as_str(), "/**");
        assert_eq!(g("/x/**").with_literal_dir(b"/").specificity().literal_len, 1);
    }
}
