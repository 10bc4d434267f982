//! Reading libtest's output (the default Rust test harness) and the project's skip
//! protocol, line by line, so counts come from the same text the user sees.
//!
//! Skip protocol: a test that cannot run prints `agentd-skip: <test>: <reason>` and
//! returns, which libtest counts as passed; such tests are moved from passed to
//! skipped here. Tests marked `#[ignore]` are skipped too: neither ran.

/// A test that did not run, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skip {
    pub test: String,
    pub reason: String,
}

pub const SKIP_PREFIX: &str = "agentd-skip: ";

/// Running totals over every `test result:` line seen (one per test binary).
#[derive(Debug, Default)]
pub struct Tally {
    passed: u64,
    failed: u64,
    /// `test result:` lines seen: zero means no test binary finished.
    pub results: u64,
    /// Tests that printed a skip line.
    pub skips: Vec<Skip>,
    /// Tests libtest reported as ignored.
    pub ignored: Vec<Skip>,
    /// Names of the tests that failed.
    pub failures: Vec<String>,
    ignored_count: u64,
}

impl Tally {
    pub fn line(&mut self, line: &str) {
        // With --nocapture a test's output follows `test name ... ` on the same line.
        if let Some(at) = line.find(SKIP_PREFIX) {
            let rest = line[at + SKIP_PREFIX.len()..].trim();
            let (test, reason) = rest.split_once(": ").unwrap_or((rest, "no reason given"));
            self.skips.push(Skip { test: test.trim().to_string(), reason: reason.trim().to_string() });
        }
        if let Some(rest) = line.trim_start().strip_prefix("test ") {
            if let Some((name, outcome)) = rest.split_once(" ... ") {
                // The outcome ends the line (a test's own output may come before it).
                if outcome.trim_end().ends_with("FAILED") {
                    self.failures.push(name.trim().to_string());
                }
                if let Some(why) = outcome.trim().strip_prefix("ignored") {
                    let reason = why.trim_start_matches(',').trim();
                    let reason = if reason.is_empty() { "#[ignore]" } else { reason };
                    self.ignored.push(Skip { test: name.trim().to_string(), reason: reason.to_string() });
                }
            }
        }
        if let Some(at) = line.find("test result: ") {
            self.results += 1;
            let rest = &line[at..];
            self.passed += count(rest, "passed");
            self.failed += count(rest, "failed");
            self.ignored_count += count(rest, "ignored");
        }
    }

    /// Tests that ran and passed (skip-line tests excluded).
    pub fn passed(&self) -> u64 {
        self.passed.saturating_sub(self.skips.len() as u64)
    }

    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Skip-line tests plus ignored tests. The summary count of ignored tests is
    /// authoritative; the names come from `test x ... ignored` lines.
    pub fn skipped(&self) -> u64 {
        self.skips.len() as u64 + self.ignored_count.max(self.ignored.len() as u64)
    }

    /// Every skip with its reason: skip lines first, then ignored tests.
    pub fn all_skips(&self) -> Vec<Skip> {
        self.skips.iter().chain(self.ignored.iter()).cloned().collect()
    }
}

/// `N <word>` inside `test result: ok. 3 passed; 0 failed; …`.
fn count(result_line: &str, word: &str) -> u64 {
    result_line
        .split(';')
        .filter_map(|part| {
            let mut words = part.split_whitespace().rev();
            let w = words.next()?;
            let n = words.next()?;
            (w.trim_end_matches(';') == word).then(|| n.parse::<u64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(text: &str) -> Tally {
        let mut t = Tally::default();
        text.lines().for_each(|l| t.line(l));
        t
    }

    #[test]
    fn sums_result_lines_of_every_binary() {
        let t = tally(
            "running 3 tests\n\
             test a ... ok\n\
             test b ... some output FAILED\n\
             test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
             test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.20s\n",
        );
        assert_eq!((t.passed(), t.failed(), t.skipped(), t.results), (5, 1, 1, 2));
        assert_eq!(t.failures, ["b"]);
    }

    #[test]
    fn skip_lines_move_tests_from_passed_to_skipped() {
        let t = tally(
            "test smoke::lsm_listed ... agentd-skip: lsm_listed: AGENTD_TEST_TIER is not vm\n\
             ok\n\
             vm| agentd-skip: other: no fanotify here\n\
             test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n",
        );
        assert_eq!((t.passed(), t.failed(), t.skipped()), (1, 0, 2));
        assert_eq!(t.skips[0], Skip { test: "lsm_listed".into(), reason: "AGENTD_TEST_TIER is not vm".into() });
        assert_eq!(t.skips[1].test, "other");
    }

    #[test]
    fn ignored_tests_are_skips_with_their_reason() {
        let t = tally(
            "test slow ... ignored, needs a GPU\n\
             test plain ... ignored\n\
             test result: ok. 0 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
        );
        assert_eq!(t.skipped(), 2);
        assert_eq!(t.all_skips()[0], Skip { test: "slow".into(), reason: "needs a GPU".into() });
        assert_eq!(t.all_skips()[1].reason, "#[ignore]");
    }

    #[test]
    fn no_result_line_means_nothing_finished() {
        let t = tally("running 1 test\nthread 'main' panicked\n");
        assert_eq!((t.results, t.passed(), t.failed()), (0, 0, 0));
    }
}
