//! YAML to a tree of nodes that remember where they were written.
//!
//! serde_yaml reports positions only for syntax errors, but most policy mistakes
//! are semantic (a relative path, a CIDR with host bits) and the user needs the line
//! of the offending value. So the file is read with yaml-rust2's event parser, whose
//! events carry marks, into a small tree; `validate` turns that tree into the typed
//! model. Scalars stay strings here: YAML's implicit typing is applied by whoever
//! knows what a key means (a port, a boolean, a name).

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::{Marker, TScalarStyle},
};

use super::error::{ErrorKind, Errors, Location, PolicyErrors};

/// A YAML node and the position of its first character.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    pub at: Location,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// `plain` is false for quoted and block scalars: `"false"` is a string even
    /// where `false` would be a boolean.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order; duplicate keys are kept for `validate` to report.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// What the node is, for "expected a list, found a mapping" messages.
    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Scalar { text, plain: true } if is_null(text) => "nothing",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A plain empty value, `~` or `null`: YAML's way of writing nothing.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if is_null(text))
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// yaml-rust2 marks are 0-based columns; users and editors count from 1.
fn location(m: Marker) -> Location {
    Location::new(m.line(), m.col() + 1)
}

/// Reads exactly one YAML document.
pub(crate) fn parse_yaml(file: &str, text: &str) -> Result<Node, PolicyErrors> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let mut errors = Errors::new(file);
    if let Err(e) = parser.load(&mut builder, true) {
        errors.push(ErrorKind::Syntax, location(*e.marker()), format!("invalid YAML: {}", e.info()), None);
        return Err(errors.finish().unwrap_err());
    }
    if let Some(at) = builder.second_document {
        errors.push(
            ErrorKind::Syntax,
            at,
            "a second YAML document: a policy file holds exactly one policy",
            Some("put each policy in its own file, or remove the `---` line".into()),
        );
    }
    match builder.root {
        Some(root) if errors.is_empty() => Ok(root),
        Some(_) => Err(errors.finish().unwrap_err()),
        None => {
            errors.push(
                ErrorKind::Syntax,
                Location::new(1, 1),
                "the file holds no policy",
                Some(
                    "start with `apiVersion: agentd.io/v1` and `kind: AgentPolicy` (see policies/ for examples)".into(),
                ),
            );
            Err(errors.finish().unwrap_err())
        }
    }
}

/// A collection being built: its start mark and the children so far.
#[derive(Debug)]
enum Open {
    Seq { at: Marker, anchor: usize, items: Vec<Node> },
    Map { at: Marker, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

#[derive(Debug, Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    documents: usize,
    second_document: Option<Location>,
}

impl Builder {
    /// Attaches a finished node to its parent (or makes it the root).
    fn add(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.documents == 1 {
                    self.root = Some(node);
                }
            }
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second_document = Some(location(mark));
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                self.add(Node { at: location(mark), value: Value::Scalar { text, plain } }, anchor);
            }
            Event::Alias(id) => {
                // The parser rejects unknown anchors, so this always finds one; an
                // alias keeps the position of what it points at.
                if let Some(node) = self.anchors.get(&id).cloned() {
                    self.add(node, 0);
                }
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq { at: mark, anchor, items: Vec::new() }),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map { at: mark, anchor, entries: Vec::new(), key: None })
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(open) = self.stack.pop() else { return };
                let (node, anchor) = match open {
                    Open::Seq { at, anchor, items } => (Node { at: location(at), value: Value::Seq(items) }, anchor),
                    Open::Map { at, anchor, entries, .. } => {
                        // A block mapping's start mark lands after its first key;
                        // the first key is where a reader sees the mapping begin.
                        let at = match entries.first() {
                            Some((k, _)) if k.at < location(at) => k.at,
                            _ => location(at),
                        };
                        (Node { at, value: Value::Map(entries) }, anchor)
                    }
                };
                self.add(node, anchor);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> (&str, Location) {
        match &n.value {
            Value::Scalar { text, .. } => (text, n.at),
            v => panic!("not a scalar: {v:?}"),
        }
    }

    #[test]
    fn marks_are_one_based_and_point_at_the_value() {
        let root = parse_yaml(
            "t.yaml",
            "a: 1\nrules:\n  - {path: /usr/bin/git, acton: allow}\n  - path: x\n    action: deny\n",
        )
        .unwrap();
        let Value::Map(top) = &root.value else { panic!() };
        assert_eq!(root.at, Location::new(1, 1));
        assert_eq!(scalar(&top[0].1), ("1", Location::new(1, 4)));
        let Value::Seq(rules) = &top[1].1.value else { panic!() };
        assert_eq!(top[1].1.at, Location::new(3, 3));
        let Value::Map(flow) = &rules[0].value else { panic!() };
        assert_eq!(rules[0].at, Location::new(3, 5));
        assert_eq!(scalar(&flow[1].0), ("acton", Location::new(3, 26)));
        assert_eq!(rules[1].at, Location::new(4, 5));
    }

    #[test]
    fn quoted_scalars_are_not_plain() {
        let root = parse_yaml("t.yaml", "a: \"false\"\nb: false\n").unwrap();
        let Value::Map(m) = root.value else { panic!() };
        assert_eq!(m[0].1.value, Value::Scalar { text: "false".into(), plain: false });
        assert_eq!(m[1].1.value, Value::Scalar { text: "false".into(), plain: true });
    }

    #[test]
    fn aliases_are_expanded() {
        let root = parse_yaml("t.yaml", "a: &x [1]\nb: *x\n").unwrap();
        let Value::Map(m) = root.value else { panic!() };
        assert_eq!(m[0].1.value, m[1].1.value);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse_yaml("t.yaml", "a: b: c\n").unwrap_err();
        assert_eq!(e.0[0].kind, ErrorKind::Syntax);
        assert_eq!((e.0[0].line, e.0[0].column), (1, 5));
        assert!(e.to_string().starts_with("t.yaml:1:5: invalid YAML: mapping values are not allowed"), "{e}");
    }

    #[test]
    fn one_document_only() {
        let e = parse_yaml("t.yaml", "a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.0[0].line, 2);
        assert!(parse_yaml("t.yaml", "# only a comment\n").is_err());
        assert!(parse_yaml("t.yaml", "").is_err());
    }
}
