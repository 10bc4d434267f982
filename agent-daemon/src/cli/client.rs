//! The gRPC client for agentd's unix socket: connecting, telling "not running" from
//! "not allowed", and one method per RPC so every call gets the same deadline and
//! the same error mapping.

use std::{
    future::Future,
    io::ErrorKind,
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::transport::{Channel, Endpoint};

use super::error::CliError;
use crate::api::pb::{self, agentd_client::AgentdClient};

/// Unary calls answer in milliseconds; a daemon that takes this long is stuck, and
/// a CLI that hangs forever is worse than one that says so.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest reply agentctl accepts: 1000 receipts with long argv fit.
const MAX_REPLY: usize = 64 << 20;

/// A connection to agentd.
pub struct Client {
    rpc: AgentdClient<Channel>,
    socket: PathBuf,
}

impl Client {
    /// Connects to the daemon's socket.
    pub async fn connect(socket: &Path) -> Result<Client, CliError> {
        // Look before connecting: "no such file" and "not a socket" read better
        // than a transport error.
        match std::fs::metadata(socket) {
            Ok(m) => {
                use std::os::unix::fs::FileTypeExt as _;
                if !m.file_type().is_socket() {
                    return Err(CliError::Connect { socket: socket.into(), reason: "not a unix socket".into() });
                }
            }
            Err(e) => return Err(classify_io(socket, &e)),
        }
        let path = socket.to_path_buf();
        // The URI is required by tonic but never dialled: the connector below is.
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
            .map_err(|e| classify_transport(socket, &e))?;
        // A list of receipts can be larger than tonic's default limit of 4 MiB.
        let rpc = AgentdClient::new(channel).max_decoding_message_size(MAX_REPLY);
        Ok(Client { rpc, socket: socket.to_path_buf() })
    }

    pub async fn status(&mut self) -> Result<pb::StatusReply, CliError> {
        let fut = self.rpc.status(pb::StatusRequest {});
        unary(&self.socket, fut).await
    }

    pub async fn doctor(&mut self) -> Result<pb::DoctorReply, CliError> {
        let fut = self.rpc.doctor(pb::DoctorRequest {});
        unary(&self.socket, fut).await
    }

    pub async fn policy_apply(&mut self, req: pb::PolicyApplyRequest) -> Result<pb::PolicyApplyReply, CliError> {
        let fut = self.rpc.policy_apply(req);
        unary(&self.socket, fut).await
    }

    pub async fn policy_list(&mut self) -> Result<pb::PolicyListReply, CliError> {
        let fut = self.rpc.policy_list(pb::PolicyListRequest {});
        unary(&self.socket, fut).await
    }

    pub async fn policy_show(&mut self, name: &str) -> Result<pb::PolicyShowReply, CliError> {
        let fut = self.rpc.policy_show(pb::PolicyShowRequest { name: name.into() });
        unary(&self.socket, fut).await
    }

    pub async fn identity_create(
        &mut self,
        req: pb::IdentityCreateRequest,
    ) -> Result<pb::IdentityCreateReply, CliError> {
        let fut = self.rpc.identity_create(req);
        unary(&self.socket, fut).await
    }

    pub async fn identity_list(&mut self) -> Result<pb::IdentityListReply, CliError> {
        let fut = self.rpc.identity_list(pb::IdentityListRequest {});
        unary(&self.socket, fut).await
    }

    pub async fn identity_show(&mut self, name: &str) -> Result<pb::IdentityShowReply, CliError> {
        let fut = self.rpc.identity_show(pb::IdentityShowRequest { name: name.into() });
        unary(&self.socket, fut).await
    }

    pub async fn identity_revoke(&mut self, name: &str, reason: &str) -> Result<pb::IdentityRevokeReply, CliError> {
        let fut = self.rpc.identity_revoke(pb::IdentityRevokeRequest { name: name.into(), reason: reason.into() });
        unary(&self.socket, fut).await
    }

    pub async fn bind(&mut self, cgroup_path: &str, identity: &str) -> Result<pb::BindReply, CliError> {
        let fut = self.rpc.bind(pb::BindRequest { cgroup_path: cgroup_path.into(), identity: identity.into() });
        unary(&self.socket, fut).await
    }

    pub async fn unbind(&mut self, cgroup_path: &str) -> Result<pb::UnbindReply, CliError> {
        let fut = self.rpc.unbind(pb::UnbindRequest { cgroup_path: cgroup_path.into() });
        unary(&self.socket, fut).await
    }

    pub async fn bindings(&mut self) -> Result<pb::BindingsReply, CliError> {
        let fut = self.rpc.bindings(pb::BindingsRequest {});
        unary(&self.socket, fut).await
    }

    /// The event stream. No deadline: with `follow` it runs until the user stops it.
    pub async fn approvals(&mut self) -> Result<pb::ApprovalsReply, CliError> {
        let fut = self.rpc.approvals(pb::ApprovalsRequest {});
        unary(&self.socket, fut).await
    }

    pub async fn approve(&mut self, id: &str, for_seconds: u64) -> Result<pb::DecideReply, CliError> {
        let fut = self.rpc.approve(pb::ApproveRequest { id: id.into(), for_seconds });
        unary(&self.socket, fut).await
    }

    pub async fn deny(&mut self, id: &str, reason: &str) -> Result<pb::DecideReply, CliError> {
        let fut = self.rpc.deny(pb::DenyRequest { id: id.into(), reason: reason.into() });
        unary(&self.socket, fut).await
    }

    pub async fn approvals_watch(&mut self) -> Result<tonic::Streaming<pb::HoldEvent>, CliError> {
        match self.rpc.approvals_watch(pb::ApprovalsWatchRequest {}).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(CliError::rpc(s, &self.socket)),
        }
    }

    pub async fn receipts_list(&mut self, req: pb::ReceiptsListRequest) -> Result<pb::ReceiptsListReply, CliError> {
        let fut = self.rpc.receipts_list(req);
        unary(&self.socket, fut).await
    }

    pub async fn receipts_show(&mut self, req: pb::ReceiptsShowRequest) -> Result<pb::ReceiptsShowReply, CliError> {
        let fut = self.rpc.receipts_show(req);
        unary(&self.socket, fut).await
    }

    /// The export stream. No deadline: a long journal takes as long as it takes.
    pub async fn receipts_export(&mut self, since: String, until: String) -> Result<tonic::Streaming<pb::ReceiptsExportChunk>, CliError> {
        match self.rpc.receipts_export(pb::ReceiptsExportRequest { since, until }).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(CliError::rpc(s, &self.socket)),
        }
    }

    pub async fn receipts_key_show(&mut self) -> Result<pb::ReceiptsKeyShowReply, CliError> {
        let fut = self.rpc.receipts_key_show(pb::ReceiptsKeyShowRequest {});
        unary(&self.socket, fut).await
    }

    pub async fn receipts_key_rotate(&mut self) -> Result<pb::ReceiptsKeyRotateReply, CliError> {
        let fut = self.rpc.receipts_key_rotate(pb::ReceiptsKeyRotateRequest {});
        unary(&self.socket, fut).await
    }

    pub async fn events(&mut self, follow: bool, last: u32) -> Result<tonic::Streaming<pb::Event>, CliError> {
        match self.rpc.events(pb::EventsRequest { follow, last }).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(CliError::rpc(s, &self.socket)),
        }
    }
}

/// One unary call with the deadline and the error mapping.
async fn unary<T>(
    socket: &Path,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CliError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(CliError::rpc(s, socket)),
        Err(_) => Err(CliError::Timeout { seconds: CALL_TIMEOUT.as_secs() }),
    }
}

/// An I/O error on the socket, in the user's terms.
fn classify_io(socket: &Path, e: &std::io::Error) -> CliError {
    let socket = socket.to_path_buf();
    match e.kind() {
        ErrorKind::NotFound => CliError::NotRunning { socket },
        ErrorKind::ConnectionRefused => CliError::StaleSocket { socket },
        // EPERM is a security hook's refusal (agentd's own policy on a bound
        // process, or another LSM); EACCES is the file's permissions.
        ErrorKind::PermissionDenied if e.raw_os_error() == Some(libc::EPERM) => CliError::SocketRefused { socket },
        ErrorKind::PermissionDenied => CliError::SocketPermission { socket },
        _ => CliError::Connect { socket, reason: e.to_string() },
    }
}

/// tonic wraps the connector's `io::Error` a few layers deep; find it.
fn classify_transport(socket: &Path, e: &tonic::transport::Error) -> CliError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return classify_io(socket, io);
        }
        source = s.source();
    }
    CliError::Connect { socket: socket.to_path_buf(), reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn missing_socket_is_not_running() {
        let err = rt().block_on(Client::connect(Path::new("/nonexistent/agentd.sock"))).err().unwrap();
        assert!(matches!(err, CliError::NotRunning { .. }), "{err:?}");
    }

    #[test]
    fn socket_nobody_listens_on_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentd.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = rt().block_on(Client::connect(&path)).err().unwrap();
        assert!(matches!(err, CliError::StaleSocket { .. }), "{err:?}");
    }

    #[test]
    fn a_regular_file_is_not_a_socket() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = rt().block_on(Client::connect(file.path())).err().unwrap();
        assert!(matches!(err, CliError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("not a unix socket"));
    }
}
