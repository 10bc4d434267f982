//! Connecting to agentd over its unix socket, and turning failures into messages
//! that say what to do.

use std::path::{Path, PathBuf};

use tonic::transport::{Channel, Endpoint};

use crate::api::pb::agentd_client::AgentdClient;

/// What went wrong, for the user. Always exit code 1 (clap's own usage errors exit 2).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("agentd is not running (no socket at {0}): start it with `systemctl start agentd` or `cargo xtask run`")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: run as root or as a member of the socket's group")]
    Permission(PathBuf),
    #[error("cannot reach agentd at {0}: {1}")]
    Connect(PathBuf, String),
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Other(String),
}

impl CtlError {
    pub fn exit_code(&self) -> i32 {
        1
    }
}

pub async fn connect(socket: &Path) -> Result<AgentdClient<Channel>, CtlError> {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(CtlError::NotRunning(socket.to_path_buf()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(CtlError::Permission(socket.to_path_buf())),
        Err(e) => return Err(CtlError::Connect(socket.to_path_buf(), e.to_string())),
    }
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://agentd.invalid")
        .map_err(|e| CtlError::Other(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| CtlError::Connect(socket.to_path_buf(), e.to_string()))?;
    Ok(AgentdClient::new(channel))
}
