//! Typed access to the pinned maps.
