//! Path patterns an LPM trie cannot express (`*` inside a name, `**` before the
//! end) as one deterministic automaton per rule kind, laid out for the kernel.
//!
//! The kernel feeds a real path to the automaton byte by byte: each state is a
//! `GLOB_STATES` map value with the next state for every byte, the winning rule
//! if the path ends there, and whether the answer can still change. The winner of
//! a state is decided here, at compile time, by the format's precedence (a
//! *rank* shared with the trie entries), so the kernel only compares two ranks:
//! the trie's match and the automaton's.
//!
//! The automaton is built by `regex-automata` from each pattern's regex
//! ([`super::Glob::regex`]): a minimal DFA that reports every pattern matching at
//! the end of the input. Its states are renumbered breadth-first from the start
//! state, so the same patterns always compile to the same table.

use std::collections::{HashMap, VecDeque};

use agent_common::{glob_flags, GlobState, PATH_KEY_LEN};
use regex_automata::{
    dfa::{dense, Automaton as _, StartKind},
    nfa::thompson,
    util::{primitives::StateID, start, syntax},
    Anchored, MatchKind,
};

/// One pattern rule, ready for the automaton.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// [`super::Glob::regex`] of the rule's pattern with its directory resolved.
    pub regex: String,
    pub rule_id: u32,
    /// Its place in the kind's precedence order (higher wins).
    pub rank: u32,
    /// `agent_common::action` code.
    pub action: u8,
}

/// Why the patterns of a kind could not become a kernel automaton.
#[derive(Debug, thiserror::Error)]
pub enum AutomatonError {
    #[error("together they need more than {limit} automaton states in the kernel")]
    TooLarge { limit: usize },
    #[error("the pattern automaton could not be built: {0}")]
    Build(String),
}

/// Builds the automaton for `patterns`. State `first` is the start state and
/// `states[i]` is state `first + i`; 0 is the dead state (never stored). At most
/// `limit` states.
pub fn build(patterns: &[Pattern], first: u16, limit: usize) -> Result<Vec<GlobState>, AutomatonError> {
    let limit = limit.min(usize::from(u16::MAX - first) + 1);
    let regexes: Vec<&str> = patterns.iter().map(|p| p.regex.as_str()).collect();
    let size_limit = 8 * limit * 256 * 4 + (1 << 20);
    let dfa = dense::Builder::new()
        .configure(
            dense::Config::new()
                .match_kind(MatchKind::All)
                .start_kind(StartKind::Anchored)
                .minimize(true)
                // A few times what `limit` dense states take (256 transitions of 4
                // bytes each, before minimizing): patterns past these explode, and
                // are refused as too large rather than built slowly.
                .dfa_size_limit(Some(size_limit))
                .determinize_size_limit(Some(size_limit)),
        )
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .thompson(thompson::Config::new().utf8(false))
        .build_many(&regexes)
        .map_err(|e| {
            if e.to_string().contains("size limit") {
                AutomatonError::TooLarge { limit }
            } else {
                AutomatonError::Build(e.to_string())
            }
        })?;
    let start = dfa
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .map_err(|e| AutomatonError::Build(e.to_string()))?;

    let mut ids: HashMap<StateID, u16> = HashMap::new();
    let mut order: Vec<StateID> = Vec::new();
    let mut queue = VecDeque::new();
    let mut number = |s: StateID, order: &mut Vec<StateID>, queue: &mut VecDeque<StateID>| -> Result<u16, AutomatonError> {
        if let Some(&id) = ids.get(&s) {
            return Ok(id);
        }
        if order.len() == limit {
            return Err(AutomatonError::TooLarge { limit });
        }
        let id = first + order.len() as u16;
        ids.insert(s, id);
        order.push(s);
        queue.push_back(s);
        Ok(id)
    };
    number(start, &mut order, &mut queue)?;
    let mut states: Vec<GlobState> = Vec::new();
    while let Some(s) = queue.pop_front() {
        let mut st = GlobState::default();
        for b in 0..=255u8 {
            let t = dfa.next_state(s, b);
            if dfa.is_quit_state(t) {
                return Err(AutomatonError::Build("the automaton gave up on a byte".into()));
            }
            st.next[usize::from(b)] = if dfa.is_dead_state(t) { 0 } else { number(t, &mut order, &mut queue)? };
        }
        let end = dfa.next_eoi_state(s);
        if dfa.is_match_state(end) {
            let best = (0..dfa.match_len(end))
                .map(|i| &patterns[dfa.match_pattern(end, i).as_usize()])
                .max_by_key(|p| p.rank)
                .expect("a match state matches at least one pattern");
            st.rule_id = best.rule_id;
            st.rank = best.rank;
            st.action = best.action;
        }
        states.push(st);
    }
    mark_stable(&mut states, first);
    Ok(states)
}

/// Sets `STABLE` on every state from which every continuation of the path ends
/// with the same winner (the greatest such set: start from all, remove a state
/// while one of its successors answers differently or is not stable).
fn mark_stable(states: &mut [GlobState], first: u16) {
    let n = states.len();
    let idx = |id: u16| usize::from(id - first);
    let mut stable = vec![true; n];
    loop {
        let mut changed = false;
        for i in 0..n {
            if !stable[i] {
                continue;
            }
            let me = states[i].rule_id;
            let keeps = states[i].next.iter().all(|&t| {
                if t == 0 {
                    me == 0
                } else {
                    stable[idx(t)] && states[idx(t)].rule_id == me
                }
            });
            if !keeps {
                stable[i] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (st, s) in states.iter_mut().zip(stable) {
        if s {
            st.flags |= glob_flags::STABLE;
        }
    }
}

/// What the kernel's walk over an automaton says about a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// The winning rule: (action, rule id, rank).
    Rule(u8, u32, u32),
    None,
    /// The path is longer than the kernel reads and the rest would matter, or a
    /// state is missing: the kernel denies (reason `unresolved`).
    Unknown,
}

/// The kernel's walk (`decide::glob_match` in agent-ebpf), step for step: over the
/// first `PATH_KEY_LEN` bytes of `path`, stopping at a stable state.
pub fn walk(states: &[GlobState], first: u16, start: u16, path: &[u8]) -> Walk {
    let get = |id: u16| id.checked_sub(first).and_then(|i| states.get(usize::from(i)));
    let truncated = path.len() >= PATH_KEY_LEN;
    let n = path.len().min(PATH_KEY_LEN);
    let Some(mut st) = get(start) else { return Walk::Unknown };
    for &b in &path[..n] {
        if st.flags & glob_flags::STABLE != 0 {
            break;
        }
        let next = st.next[usize::from(b)];
        if next == 0 {
            return Walk::None;
        }
        st = match get(next) {
            Some(s) => s,
            None => return Walk::Unknown,
        };
    }
    if truncated && st.flags & glob_flags::STABLE == 0 {
        return Walk::Unknown;
    }
    if st.rule_id == 0 {
        Walk::None
    } else {
        Walk::Rule(st.action, st.rule_id, st.rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Glob;

    fn pats(globs: &[&str]) -> Vec<Pattern> {
        globs
            .iter()
            .enumerate()
            .map(|(i, g)| Pattern {
                regex: Glob::parse(g).unwrap().regex(),
                rule_id: i as u32 + 1,
                rank: i as u32 + 1,
                action: 1,
            })
            .collect()
    }

    /// The automaton agrees with `Glob::matches` (the format's meaning) on every
    /// probe: for each path, the highest-ranked matching pattern wins.
    fn agrees(globs: &[&str], probes: &[&str]) {
        let p = pats(globs);
        let states = build(&p, 1, 4096).unwrap();
        for path in probes {
            let want = globs
                .iter()
                .enumerate()
                .filter(|(_, g)| Glob::parse(g).unwrap().matches(path.as_bytes()))
                .map(|(i, _)| i as u32 + 1)
                .max();
            let got = match walk(&states, 1, 1, path.as_bytes()) {
                Walk::Rule(_, id, _) => Some(id),
                Walk::None => None,
                Walk::Unknown => panic!("{path}: unknown"),
            };
            assert_eq!(got, want, "{path} against {globs:?}");
        }
    }

    #[test]
    fn single_and_double_stars_mean_what_the_format_says() {
        let probes = [
            "/", "/usr", "/usr/bin", "/usr/bin/py", "/usr/bin/python3", "/usr/bin/py/x", "/usr/bin/xpy",
            "/home/alice/work", "/home/alice/work/a", "/home/alice/work/a/b", "/home/a/b/work/c",
            "/a/b", "/a/x/b", "/a/x/y/b", "/a/x/y/c", "/a/1x2x3y", "/a/1x2x3", "/a/xy", "/a/.x", "/a/b/c",
        ];
        agrees(&["/usr/bin/py*"], &probes);
        agrees(&["/home/*/work/**"], &probes);
        agrees(&["/a/**/b"], &probes);
        agrees(&["/a/*x*y"], &probes);
        agrees(&["/**"], &probes);
        agrees(&["/usr/bin/py*", "/home/*/work/**", "/a/**/b", "/a/*x*y", "/a/*/c", "/**/b"], &probes);
    }

    #[test]
    fn bytes_that_are_regex_syntax_are_literal() {
        agrees(
            &["/a.b/*", "/x+y/**/[z]", "/(p)/q|r*", "/e\\s/*$"],
            &["/a.b/c", "/aXb/c", "/x+y/[z]", "/xxy/[z]", "/x+y/k/[z]", "/(p)/q|rr", "/(p)/q", "/e\\s/$", "/e\\s/a"],
        );
    }

    #[test]
    fn stable_states_stop_the_walk_and_survive_truncation() {
        let p = pats(&["/home/*/work/**"]);
        let states = build(&p, 1, 64).unwrap();
        // Inside the trailing `**` the answer cannot change: a path longer than the
        // kernel reads still gets it.
        let long = format!("/home/alice/work/{}", "x/".repeat(200));
        assert_eq!(walk(&states, 1, 1, long.as_bytes()), Walk::Rule(1, 1, 1));
        // Off the pattern early: dead, so no match whatever follows.
        let off = format!("/tmp/{}", "x".repeat(300));
        assert_eq!(walk(&states, 1, 1, off.as_bytes()), Walk::None);
        // Still inside a `*` when the kernel stops reading: unknown, fails closed.
        let star = format!("/home/{}", "a".repeat(300));
        assert_eq!(walk(&states, 1, 1, star.as_bytes()), Walk::Unknown);
    }

    #[test]
    fn numbering_starts_where_asked_and_is_deterministic() {
        let p = pats(&["/a/*/b", "/c/**/d"]);
        let one = build(&p, 40, 100).unwrap();
        assert_eq!(one, build(&p, 40, 100).unwrap());
        assert!(one.iter().flat_map(|s| s.next).all(|t| t == 0 || (40..40 + one.len() as u16).contains(&t)));
        assert_eq!(walk(&one, 40, 40, b"/c/x/y/d"), Walk::Rule(1, 2, 2));
    }

    #[test]
    fn too_many_states_is_an_error() {
        let p = pats(&["/a/*x*y*z*w/**/q*r*s"]);
        assert!(matches!(build(&p, 1, 3), Err(AutomatonError::TooLarge { limit: 3 })));
    }
}
