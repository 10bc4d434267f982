//! Reading kernel struct offsets from the running kernel's BTF.
