//! Helpers shared by the host-tier and VM-tier integration tests.
