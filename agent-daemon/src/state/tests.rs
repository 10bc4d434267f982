use std::os::unix::fs::MetadataExt as _;

use super::*;

fn identity(name: &str, id: u32) -> IdentityRecord {
    IdentityRecord {
        name: name.into(),
        id,
        policy: "coding-agent".into(),
        owner: "alice".into(),
        created_at: "2025-06-01T12:00:00Z".into(),
        public_key: keys::public_hex(&keys::generate().verifying_key()),
        ..Default::default()
    }
}

fn policy(text: &str, version: u32) -> PolicyRecord {
    PolicyRecord {
        yaml: text.into(),
        meta: PolicyMeta {
            version,
            hash: sha256_hex(text.as_bytes()),
            applied_at: "2025-06-01T12:00:00Z".into(),
            file_name: "coding-agent.yaml".into(),
        },
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o777
}

#[test]
fn fresh_directory_is_empty_state_with_private_dirs() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("state");
    let store = Store::open(&dir).unwrap();
    let (st, warnings) = store.load().unwrap();
    assert_eq!(st, State { next_identity_id: 1, ..State::default() });
    assert!(warnings.is_empty(), "{warnings:?}");
    for sub in ["", "keys", "identities", "policies"] {
        assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}");
    }
}

#[test]
fn round_trip_of_everything() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let text = "apiVersion: agentd.io/v1\n# exact text, comments included\n";
    store.save_policy("coding-agent", &policy(text, 3)).unwrap();
    let mut coder = identity("coder", 1);
    coder.expires = Some("2030-01-01T00:00:00Z".into());
    let reviewer = identity("reviewer", 2);
    let key = keys::generate();
    store.save_key("coder", &key).unwrap();
    store.save_key("reviewer", &keys::generate()).unwrap();
    store.save_identity(&coder).unwrap();
    store.save_identity(&reviewer).unwrap();
    store.save_meta(5).unwrap();
    let b = BindingRecord {
        cgroup_path: "/sys/fs/cgroup/unified/agents/coder".into(),
        cgroup_id: 4242,
        identity: "coder".into(),
        bound_at: "2025-06-01T12:00:01Z".into(),
    };
    store.save_bindings([&b]).unwrap();

    let (st, warnings) = store.load().unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(st.policies["coding-agent"].yaml, text, "exact text kept");
    assert_eq!(st.policies["coding-agent"].meta.version, 3);
    assert_eq!(st.identities["coder"], coder);
    assert_eq!(st.identities["reviewer"], reviewer);
    assert_eq!(st.bindings[&b.cgroup_path], b);
    assert_eq!(st.next_identity_id, 5);
    assert_eq!(st.identity_by_id(2).map(|i| i.name.as_str()), Some("reviewer"));
    assert_eq!(st.bound_cgroups("coder"), vec![b.cgroup_path.clone()]);
    assert_eq!(st.identities_using("coding-agent").len(), 2);
    assert_eq!(store.load_key("coder").unwrap().to_bytes(), key.to_bytes());
    // The files a user would look at.
    assert!(d.path().join("policies/coding-agent.yaml").is_file());
    assert!(d.path().join("identities/coder.json").is_file());
    assert!(d.path().join("bindings.json").is_file());
}

#[test]
fn private_key_files_are_0600() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    store.save_key("coder", &keys::generate()).unwrap();
    assert_eq!(mode(&store.key_path("coder")), 0o600);
    assert_eq!(mode(&d.path().join("keys")), 0o700);
    let pem = fs::read_to_string(store.key_path("coder")).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
}

#[test]
fn ids_are_never_reused_after_a_record_goes() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    store.save_identity(&identity("a", 1)).unwrap();
    store.save_identity(&identity("b", 2)).unwrap();
    store.save_meta(3).unwrap();
    store.remove_identity("b").unwrap();
    let (st, _) = store.load().unwrap();
    assert_eq!(identity::next_id(st.identities.values().map(|i| i.id), st.next_identity_id), Some(3));
}

#[test]
fn missing_meta_is_rebuilt_from_ids() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    store.save_identity(&identity("a", 7)).unwrap();
    let (st, warnings) = store.load().unwrap();
    assert_eq!(st.next_identity_id, 8);
    assert!(warnings.iter().any(|w| w.contains("meta.json was missing")), "{warnings:?}");
    assert!(d.path().join("meta.json").is_file());
}

#[test]
fn corrupt_files_are_named() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    fs::write(d.path().join("identities/coder.json"), "{\"name\": \"coder\", ").unwrap();
    let e = store.load().unwrap_err().to_string();
    assert!(e.contains("identities/coder.json") && e.contains("not a state file this agentd can read"), "{e}");

    fs::remove_file(d.path().join("identities/coder.json")).unwrap();
    fs::write(d.path().join("bindings.json"), "[{\"cgroup_path\": \"/x\", \"cgroup_id\": 1, \"identity\": \"ghost\", \"bound_at\": \"\"}]").unwrap();
    let e = store.load().unwrap_err().to_string();
    assert!(e.contains("bindings.json") && e.contains("ghost"), "{e}");
}

#[test]
fn another_version_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    fs::write(d.path().join("meta.json"), "{\"format\": 2, \"next_identity_id\": 1}").unwrap();
    let e = store.load().unwrap_err();
    assert!(matches!(e, StateError::OtherVersion { found: 2, .. }), "{e}");
    assert!(e.to_string().contains("meta.json") && e.to_string().contains("another version"), "{e}");

    // A field this version does not know is another version too, not silently dropped.
    fs::write(d.path().join("meta.json"), "{\"format\": 1, \"next_identity_id\": 1}").unwrap();
    let mut v = serde_json::to_value(identity("coder", 1)).unwrap();
    v["delegates"] = serde_json::json!({"to": "bob"});
    fs::write(d.path().join("identities/coder.json"), v.to_string()).unwrap();
    let e = store.load().unwrap_err().to_string();
    assert!(e.contains("identities/coder.json") && e.contains("labels"), "{e}");

    fs::write(d.path().join("state.json"), "{}").unwrap();
    assert!(matches!(store.load().unwrap_err(), StateError::Legacy { .. }));
}

#[test]
fn misnamed_or_colliding_identities_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    fs::write(d.path().join("identities/b.json"), serde_json::to_vec(&identity("a", 1)).unwrap()).unwrap();
    let e = store.load().unwrap_err().to_string();
    assert!(e.contains("identities/b.json") && e.contains("named for"), "{e}");
    fs::remove_file(d.path().join("identities/b.json")).unwrap();
    store.save_identity(&identity("a", 1)).unwrap();
    store.save_identity(&identity("b", 1)).unwrap();
    let e = store.load().unwrap_err().to_string();
    assert!(e.contains("also used by"), "{e}");
}

#[test]
fn interrupted_policy_writes_are_repaired() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    store.save_policy("p", &policy("v1\n", 1)).unwrap();
    // Crash between the YAML and its metadata on the second apply.
    fs::write(d.path().join("policies/p.yaml"), "v2\n").unwrap();
    // Crash before the metadata of a first apply.
    fs::write(d.path().join("policies/q.yaml"), "q\n").unwrap();
    // And a temporary file a crash left behind.
    fs::write(d.path().join("policies/.p.json.tmp"), "{").unwrap();
    let (st, warnings) = store.load().unwrap();
    assert_eq!(st.policies["p"].yaml, "v2\n");
    assert_eq!(st.policies["p"].meta.version, 2);
    assert_eq!(st.policies["p"].meta.hash, sha256_hex(b"v2\n"));
    assert!(!st.policies.contains_key("q"));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(!d.path().join("policies/.p.json.tmp").exists());
    // The repair was persisted: a second load is clean.
    let (again, warnings) = store.load().unwrap();
    assert_eq!(again.policies["p"].meta.version, 2);
    assert_eq!(warnings.len(), 1, "only the orphan YAML: {warnings:?}");
}

#[test]
fn names_cannot_escape_the_directory() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(&d.path().join("s")).unwrap();
    assert!(store.save_policy("../evil", &policy("x", 1)).is_err());
    assert!(store.save_key("../../evil", &keys::generate()).is_err());
    assert!(!d.path().join("evil.key").exists());
}
