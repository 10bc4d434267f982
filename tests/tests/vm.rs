//! Tier 3 of `cargo xtask test`: integration tests run inside Debian's 6.1 kernel
//! under QEMU (`AGENTD_TEST_TIER=vm`), where BPF LSM programs really run. Anywhere
//! else every test skips.

use std::fs;

use agentd_tests::{skip, tier};

/// Returns true (after reporting the skip) when not inside the test VM.
fn outside_vm(test: &str) -> bool {
    if tier().as_deref() != Some("vm") {
        skip(test, "not inside the test VM (AGENTD_TEST_TIER != vm): run `cargo xtask test --tier vm`");
        return true;
    }
    false
}

#[test]
fn vm_kernel_is_6_1_with_bpf_lsm_active() {
    if outside_vm("vm_kernel_is_6_1_with_bpf_lsm_active") {
        return;
    }
    let lsm =
        fs::read_to_string("/sys/kernel/security/lsm").expect("read /sys/kernel/security/lsm (securityfs mounted?)");
    assert!(lsm.trim().split(',').any(|m| m == "bpf"), "bpf is not an active LSM: {lsm:?}");
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("read the kernel release");
    assert!(release.starts_with("6.1."), "expected Debian's 6.1 kernel, got {release:?}");
}

// The VM tier runs the same scenarios as the host tier, but here the daemon must
// pick BPF LSM, so each denial is a synchronous EPERM.
agentd_tests::scenario_tests!(outside_vm;
    lsm_is_the_active_mechanism,
    egress_allowed_and_denied_per_cgroup,
    raw_socket_denied,
    exec_denied_by_rule,
    exec_default_deny_allows_listed,
    write_denied_under_prefix,
    descendant_cgroup_created_after_bind,
    survives_daemon_sigkill_and_restart_adopts,
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
    write_request_approved_lets_the_retry_through,
    write_hold_waits_for_approval,
    write_hold_fails_closed_when_agentd_dies,
    exec_hold_fails_closed_when_agentd_dies,
    hundred_concurrent_holds_resolve_each_to_its_own_decision,
    webhook_gets_each_hold_and_retries,
    connect_hold_carries_data_after_approval_and_resets_after_deny,
    connect_hold_fails_closed_when_agentd_dies,
    // Receipts of LSM denials; the journal itself (rotation, SIGKILL, approvals)
    // does not depend on the kernel's mechanism and runs on the host tier.
    receipts_record_denials_and_an_export_verifies,
    drift_is_restored_and_recorded,
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
agentd_tests::scenario_tests!(outside_vm in false_positives;
    fp_git_in_the_work_tree,
    fp_c_project_builds_and_runs,
    fp_python_venv_installs_a_local_package,
    fp_npm_installs_a_local_package,
    fp_mkdir_p_of_an_absolute_path_in_the_work_tree,
);
