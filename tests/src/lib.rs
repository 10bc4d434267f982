//! Helpers shared by the host-tier and VM-tier integration tests.

pub mod cases;
pub mod harness;
