#![no_std]
// The programs are the `agent` binary (src/main.rs); this empty library exists so
// agent-daemon can name the crate as a build-dependency (see aya-build).
