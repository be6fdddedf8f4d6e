//! TLS for every gRPC connection, coordinator and peers (DESIGN §8; issue 6 point 8).
//!
//! Material comes from PEM files: a server identity (certificate chain and key) for the
//! coordinator and for each worker's `Peer` server, the CA that signed the servers'
//! certificates (clients verify against it, with the name in `domain`), and optionally a CA
//! for client certificates: then the servers require mutual TLS and a worker presents its own
//! identity when it dials. With TLS configured a server speaks only TLS (a plaintext client
//! fails its handshake), and a client refuses `http://` addresses. The job token is checked
//! as before, inside the encrypted channel.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::auth::JobToken;

/// Paths of the PEM files, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Certificate chain of this process's server (and its client identity under mutual TLS).
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
    /// CA that signed the servers' certificates (what clients trust).
    pub ca: Option<PathBuf>,
    /// CA of client certificates: servers then require one (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Name the servers' certificates are checked against (default `localhost`).
    pub domain: Option<String>,
}

/// Loaded TLS material.
#[derive(Debug, Clone)]
pub struct Tls {
    identity: Option<Identity>,
    ca: Option<Certificate>,
    client_ca: Option<Certificate>,
    domain: String,
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

impl TlsFiles {
    /// Whether any TLS file is given.
    pub fn is_set(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some() || self.client_ca.is_some()
    }

    /// Loads the files (`None` when no TLS is configured); errors name the flag and the file.
    pub fn load(&self) -> Result<Option<Tls>, String> {
        if !self.is_set() {
            return Ok(None);
        }
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some(Identity::from_pem(
                read(c, "--tls-cert")?,
                read(k, "--tls-key")?,
            )),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let ca = self
            .ca
            .as_deref()
            .map(|p| read(p, "--tls-ca").map(Certificate::from_pem))
            .transpose()?;
        let client_ca = self
            .client_ca
            .as_deref()
            .map(|p| read(p, "--tls-client-ca").map(Certificate::from_pem))
            .transpose()?;
        Ok(Some(Tls {
            identity,
            ca,
            client_ca,
            domain: self.domain.clone().unwrap_or_else(|| "localhost".into()),
        }))
    }
}

impl Tls {
    /// The server side: this process's identity, and client certificates required when a
    /// client CA is configured.
    pub fn server(&self) -> Result<ServerTlsConfig, String> {
        let identity = self
            .identity
            .clone()
            .ok_or("a TLS server needs --tls-cert and --tls-key")?;
        let mut c = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            c = c.client_ca_root(ca.clone());
        }
        Ok(c)
    }

    /// The client side: the servers' CA and name, and this process's identity (presented
    /// when the server asks, under mutual TLS).
    pub fn client(&self) -> Result<ClientTlsConfig, String> {
        let ca = self
            .ca
            .clone()
            .ok_or("a TLS client needs --tls-ca (the CA of the servers' certificates)")?;
        let mut c = ClientTlsConfig::new()
            .ca_certificate(ca)
            .domain_name(self.domain.clone());
        if let Some(id) = &self.identity {
            c = c.identity(id.clone());
        }
        Ok(c)
    }
}

/// What a process presents on every connection: the job token, and TLS when configured.
#[derive(Debug, Clone)]
pub struct Security {
    /// The job token.
    pub token: JobToken,
    /// TLS material; `None`: plaintext.
    pub tls: Option<Tls>,
}

impl Security {
    /// Token only, plaintext.
    pub fn plain(token: JobToken) -> Self {
        Self { token, tls: None }
    }

    /// The URL scheme of connections to servers.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Checks that `url` matches: TLS processes refuse `http://` (plaintext), plaintext ones
    /// cannot dial `https://`.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        match (self.tls.is_some(), url.starts_with("https://")) {
            (true, false) => Err(format!(
                "{url}: TLS is configured, so plaintext is refused: use https://"
            )),
            (false, true) => Err(format!("{url}: https:// needs --tls-ca")),
            _ => Ok(()),
        }
    }
}
