//! Policies: the user-facing `agentd.io/v1` format and its compilation to kernel maps.
pub mod compiled;
pub mod v1;
