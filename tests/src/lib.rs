//! Helpers shared by the host-tier and VM-tier integration tests.
//!
//! Skip protocol: a test that cannot run where it is calls [`skip`] and returns.
//! `cargo xtask test` counts those lines as skipped (not passed), lists every skip
//! with its reason, and under `CI=true` fails the run if a kernel-tier test skipped.

pub mod cases;
pub mod escape;
pub mod false_positives;
pub mod harness;
pub mod replay;

/// Reports that `test` did not run, and why, in the line `cargo xtask test` counts.
pub fn skip(test: &str, reason: &str) {
    // One line, so the reason must not break it.
    let reason = reason.replace('\n', " ");
    println!("agentd-skip: {test}: {reason}");
}

/// The tier `cargo xtask test` runs these tests in (`host` or `vm`), from
/// `AGENTD_TEST_TIER`; `None` under a plain `cargo test`.
pub fn tier() -> Option<String> {
    std::env::var("AGENTD_TEST_TIER").ok().filter(|t| !t.is_empty())
}

/// Declares one `#[test]` per scenario in [`cases`] (or in the module named after
/// `in`, e.g. `scenario_tests!(gate in false_positives; …)`), each first asking
/// `$gate` (a `fn(&str) -> bool` that reports the skip and returns true when the
/// test must not run here).
#[macro_export]
macro_rules! scenario_tests {
    ($gate:ident in $module:ident; $($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            if $gate(stringify!($name)) {
                return;
            }
            $crate::$module::$name();
        }
    )*};
    ($gate:ident; $($name:ident),* $(,)?) => {
        $crate::scenario_tests!($gate in cases; $($name),*);
    };
}
