//! Loading, attaching, pinning and adopting the kernel programs.

use super::{Counters, EnforceError, EnforcerConfig, MechanismReport};
use crate::policy::compiled::CompiledPolicy;

/// Owns the kernel objects. One per daemon.
pub struct Enforcer {
    _private: (),
}

impl Enforcer {
    /// Loads and attaches everything, or adopts what an earlier daemon pinned in
    /// `config.pin_dir`. Needs root (CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN).
    pub fn open(config: &EnforcerConfig) -> Result<Enforcer, EnforceError> {
        let _ = config;
        Err(EnforceError::Other("enforcer not built yet".into()))
    }

    /// Installs (or replaces) identity `id`'s policy. `policy: None` means the identity
    /// has no policy: everything it does is denied. `revoked` denies everything too.
    pub fn set_identity(&mut self, id: u32, policy: Option<&CompiledPolicy>, version: u32, revoked: bool) -> Result<(), EnforceError> {
        let _ = (id, policy, version, revoked);
        Err(EnforceError::Other("enforcer not built yet".into()))
    }

    /// Removes identity `id`'s entries. Cgroups still bound to it are then denied everything.
    pub fn remove_identity(&mut self, id: u32) -> Result<(), EnforceError> {
        let _ = id;
        Err(EnforceError::Other("enforcer not built yet".into()))
    }

    /// Binds cgroup `cgroup_id` (the inode number of its cgroup2 directory) and all its
    /// descendants to identity `id`.
    pub fn bind(&mut self, cgroup_id: u64, id: u32) -> Result<(), EnforceError> {
        let _ = (cgroup_id, id);
        Err(EnforceError::Other("enforcer not built yet".into()))
    }

    /// Removes a binding.
    pub fn unbind(&mut self, cgroup_id: u64) -> Result<(), EnforceError> {
        let _ = cgroup_id;
        Err(EnforceError::Other("enforcer not built yet".into()))
    }

    /// The bindings as the kernel has them: (cgroup id, identity id).
    pub fn kernel_bindings(&self) -> Result<Vec<(u64, u32)>, EnforceError> {
        Err(EnforceError::Other("enforcer not built yet".into()))
    }

    /// Which mechanism enforces each kind.
    pub fn report(&self) -> MechanismReport {
        MechanismReport::default()
    }

    /// Kernel counters.
    pub fn counters(&self) -> Result<Counters, EnforceError> {
        Err(EnforceError::Other("enforcer not built yet".into()))
    }

    /// Takes the kernel's event stream. Call once; the reader yields decoded events
    /// as the kernel writes them.
    pub fn take_events(&mut self) -> Result<EventReader, EnforceError> {
        Err(EnforceError::Other("enforcer not built yet".into()))
    }
}

/// Async reader of the kernel's `EVENTS` ring buffer.
pub struct EventReader {
    _private: (),
}

impl EventReader {
    /// Waits for the next event. `None` when the ring buffer is gone.
    pub async fn next(&mut self) -> Option<agent_common::Event> {
        None
    }
}
