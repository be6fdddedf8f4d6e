//! The job token on every RPC (DESIGN §8; issue 4 point 4): clients attach it as
//! `authorization: Bearer <token>`, servers check it in constant time and refuse with
//! UNAUTHENTICATED, logging the refusal without the token.
//!
//! The comparison hashes both tokens with SHA-256 and compares the digests with `subtle`, so
//! neither the position of the first differing byte nor the token's length shows in the timing.
//! TLS arrives later (issue 4 leaves room: the token travels in metadata, whatever the channel).

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The job's shared secret. `Debug` never prints it.
#[derive(Clone)]
pub struct JobToken {
    secret: Arc<str>,
}

impl JobToken {
    /// A token from its text: non-empty printable ASCII (it travels in an HTTP/2 header).
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the job token must be non-empty printable ASCII without spaces".into());
        }
        Ok(Self {
            secret: secret.into(),
        })
    }

    /// The token of a process: the file named by `file` when given, else the environment
    /// variable `env_var`. The error names where it looked, never the token.
    pub fn load(file: Option<&std::path::Path>, env_var: &str) -> Result<Self, String> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("job token file {}: {e}", path.display()))?;
                Self::new(&text).map_err(|e| format!("job token file {}: {e}", path.display()))
            }
            None => match std::env::var(env_var) {
                Ok(text) => Self::new(&text).map_err(|e| format!("${env_var}: {e}")),
                Err(_) => Err(format!(
                    "no job token: pass --token-file PATH or set ${env_var}"
                )),
            },
        }
    }

    /// The token's text, to hand to a child process (the local launcher); never log it.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    fn digest(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// Whether `presented` is this token, compared in constant time (digests of both, so
    /// neither the first differing byte nor the length shows): for links that carry the token
    /// outside gRPC metadata (the raw TCP ring transport's handshake).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = Self::digest(self.secret.as_bytes());
        bool::from(Self::digest(presented).ct_eq(&expected))
    }

    /// The interceptor a server wraps its services with.
    pub fn checker(&self, service: &'static str) -> CheckToken {
        CheckToken {
            expected: Self::digest(self.secret.as_bytes()),
            service,
        }
    }

    /// The interceptor a client attaches to its calls.
    pub fn bearer(&self) -> AttachToken {
        let value = MetadataValue::try_from(format!("Bearer {}", self.secret))
            .unwrap_or_else(|_| AsciiMetadataValue::from_static("Bearer invalid"));
        AttachToken { value }
    }
}

impl fmt::Debug for JobToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobToken(<redacted>)")
    }
}

/// Server side: refuses any request without `authorization: Bearer <the job token>`.
#[derive(Clone)]
pub struct CheckToken {
    expected: [u8; 32],
    service: &'static str,
}

impl fmt::Debug for CheckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckToken({})", self.service)
    }
}

impl Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let refusal = match presented {
            None => "missing or malformed authorization metadata",
            Some(token) => {
                let digest = JobToken::digest(token.as_bytes());
                if bool::from(digest.ct_eq(&self.expected)) {
                    return Ok(req);
                }
                "wrong job token"
            }
        };
        // The presented token is never logged: a wrong one may be a near miss of the real one.
        tracing::warn!(
            service = self.service,
            remote = ?req.remote_addr(),
            reason = refusal,
            "refused an unauthenticated call"
        );
        Err(Status::unauthenticated(format!(
            "{}: {refusal}",
            self.service
        )))
    }
}

/// Client side: adds the bearer token to every call.
#[derive(Clone)]
pub struct AttachToken {
    value: AsciiMetadataValue,
}

impl fmt::Debug for AttachToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttachToken(<redacted>)")
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut req = Request::new(());
        if let Some(v) = value {
            req.metadata_mut()
                .insert("authorization", v.parse().expect("ascii"));
        }
        req
    }

    #[test]
    fn matches_only_the_exact_token() {
        let token = JobToken::new("s3cret-token").expect("valid");
        assert!(token.matches(b"s3cret-token"));
        for bad in [&b""[..], b"s3cret-tokeN", b"s3cret-token2", b"s3cret-toke"] {
            assert!(!token.matches(bad), "{bad:?}");
        }
    }

    #[test]
    fn only_the_job_token_passes() {
        let token = JobToken::new("s3cret-token").expect("valid");
        let mut check = token.checker("test");
        assert!(check.call(with_header(Some("Bearer s3cret-token"))).is_ok());
        for bad in [
            None,
            Some("Bearer s3cret-tokeN"),
            Some("Bearer s3cret-token2"),
            Some("Bearer "),
            Some("s3cret-token"),
            Some("Basic s3cret-token"),
        ] {
            let err = check.call(with_header(bad)).expect_err("refused");
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            assert!(!err.message().contains("s3cret"));
        }
        let mut attach = token.bearer();
        let req = attach.call(Request::new(())).expect("attached");
        assert!(check.call(req).is_ok());
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        assert!(JobToken::new("").is_err());
        assert!(JobToken::new("has space").is_err());
        let token = JobToken::new("abc").expect("valid");
        assert!(!format!("{token:?} {:?}", token.bearer()).contains("abc"));
    }
}
