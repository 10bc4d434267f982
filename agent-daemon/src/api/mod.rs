//! The gRPC API agentctl uses, served on a unix socket.

/// Generated from `proto/agentd.proto`.
pub mod pb {
    tonic::include_proto!("agentd.v1");
}
