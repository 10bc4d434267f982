//! Tier 2 of `cargo xtask test`: integration tests against this machine's kernel,
//! run as root with `AGENTD_TEST_TIER=host`. Outside that tier every test skips.

use agentd_tests::{harness, skip, tier};

/// Returns true (after reporting the skip) when not run by `cargo xtask test`.
fn outside_tier(test: &str) -> bool {
    if tier().is_none() {
        skip(test, "AGENTD_TEST_TIER is not set: run the kernel tiers with `cargo xtask test`");
        return true;
    }
    false
}

#[test]
fn cgroup2_mount_is_found_in_mountinfo() {
    if outside_tier("cgroup2_mount_is_found_in_mountinfo") {
        return;
    }
    let mount = harness::cgroup2_mount();
    assert!(
        mount.join("cgroup.procs").exists(),
        "{} is listed as the cgroup2 mount but has no cgroup.procs",
        mount.display()
    );
}

// One `#[test]` per scenario in `agentd_tests::cases`, each skipped (with the
// reason) outside `cargo xtask test`.
agentd_tests::scenario_tests!(outside_tier;
    egress_allowed_and_denied_per_cgroup,
    raw_socket_denied,
    exec_denied_by_rule,
    exec_default_deny_allows_listed,
    write_denied_under_prefix,
    descendant_cgroup_created_after_bind,
    survives_daemon_sigkill_and_restart_adopts,
    run_puts_command_under_identity,
    unjudgeable_syscalls_fail_closed,
    bad_input_is_refused_and_changes_nothing,
    policy_reload_is_atomic,
    exec_pinned_by_inode,
    monitor_mode_reports_and_counts,
    revoked_identity_is_denied_at_once,
    expired_identity_is_denied_by_the_kernel,
    agents_cannot_unbind_themselves,
    conformance_vectors_match_the_kernel,
    exec_hold_waits_for_approval,
    exec_hold_times_out_denied,
    exec_hold_approve_for_grants_repeats,
    exec_hold_on_a_filesystem_mounted_after_start,
    write_hold_waits_for_approval,
    write_hold_fails_closed_when_agentd_dies,
    udp_request_approved_lets_the_retry_through,
    exec_hold_fails_closed_when_agentd_dies,
    hundred_concurrent_holds_resolve_each_to_its_own_decision,
    webhook_gets_each_hold_and_retries,
    receipts_reach_every_configured_sink,
    a_bad_configuration_stops_agentd_with_its_line,
    connect_hold_carries_data_after_approval_and_resets_after_deny,
    connect_hold_fails_closed_when_agentd_dies,
    receipts_record_denials_and_an_export_verifies,
    receipts_verify_across_a_key_rotation,
    receipts_acknowledged_before_a_sigkill_survive_it,
    receipts_name_who_approved_a_held_exec,
    // Host only: needs script(1) for a terminal.
    approvals_watch_prompts_in_a_terminal,
    drift_is_restored_and_recorded,
    // Issue 20: audit that a flood cannot hide (host only: the flood needs real CPU speed).
    a_flood_hides_no_distinct_decision,
    receipts_survive_a_full_disk,
    unix_sockets_and_icmp_are_judged,
    namespaces_allowed_never_weaken_paths,
    // The escape suite (issue 14): every way around enforcement, as root and not.
    escape_cgroup_moves_keep_the_identity,
    tamper_enforcement_is_out_of_reach,
    namespace_changes_are_refused,
    bpf_is_closed_to_bound_tasks,
    ptrace_of_other_processes_is_refused,
    kernel_interfaces_are_refused,
    protocols_the_hooks_cannot_judge_are_refused,
    guarded_directories_cannot_be_moved,
    hard_links_cannot_widen_a_write,
    metadata_changes_are_writes,
    reopened_descriptors_are_judged_on_the_file,
    exec_means_any_mapping_of_code,
    fallback_symlinked_directory_in_a_path,
    fallback_clone_files_sibling_write,
    fallback_open_by_handle_at,
    fallback_core_dump_into_protected_dir,
    fallback_acct_into_protected_file,
    fallback_script_under_allowed_interpreter,
);

// Legitimate agent work under the shipped coding-agent policy: git, a C build, a
// Python venv, an npm install, each with no denial recorded (tests/src/false_positives.rs).
agentd_tests::scenario_tests!(outside_tier in false_positives;
    fp_git_in_the_work_tree,
    fp_c_project_builds_and_runs,
    fp_python_venv_installs_a_local_package,
    fp_npm_installs_a_local_package,
    fp_mkdir_p_of_an_absolute_path_in_the_work_tree,
);
