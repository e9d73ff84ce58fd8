//! TLS between stores and their clients (mutual: each side shows a
//! certificate the cluster's CA signed), with an allowlist of the names a
//! peer's certificate may carry.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::error::{Error, Result};

/// TLS settings of a process (its stores' servers and clients alike).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM of the CA that signs every certificate of the cluster.
    pub ca_pem: Vec<u8>,
    /// This process's certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Its private key (PEM).
    pub key_pem: Vec<u8>,
    /// The DNS name every store's certificate carries (a subject
    /// alternative name): clients check a store against it.
    pub server_name: String,
    /// Names (subject alternative DNS names) a peer's certificate must
    /// carry one of to be served; empty: any certificate the CA signed.
    pub allowed_names: Vec<String>,
}

impl TlsConfig {
    /// Checks the settings can work.
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::Config(why.to_string()));
        for (field, pem) in [
            ("tls.ca", &self.ca_pem),
            ("tls.cert", &self.cert_pem),
            ("tls.key", &self.key_pem),
        ] {
            if !pem.starts_with(b"-----BEGIN") {
                return bad(&format!("{field} is not PEM"));
            }
        }
        if ServerName::try_from(self.server_name.as_str()).is_err() {
            return bad("tls.server_name is not a DNS name");
        }
        if let Some(n) = self
            .allowed_names
            .iter()
            .find(|n| ServerName::try_from(n.as_str()).is_err())
        {
            return bad(&format!("tls.allowed_names: {n:?} is not a DNS name"));
        }
        Ok(())
    }

    pub(crate) fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.server_name.clone())
    }

    pub(crate) fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }
}

/// A gRPC interceptor that serves only peers whose certificate carries an
/// allowed name (every peer when the list is empty or TLS is off).
#[derive(Debug, Clone, Default)]
pub(crate) struct Allowlist(Arc<Vec<String>>);

impl Allowlist {
    pub(crate) fn new(tls: Option<&TlsConfig>) -> Allowlist {
        Allowlist(Arc::new(
            tls.map(|t| t.allowed_names.clone()).unwrap_or_default(),
        ))
    }

    fn allows(&self, cert: &CertificateDer<'_>) -> bool {
        let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
            return false;
        };
        self.0.iter().any(|name| {
            ServerName::try_from(name.as_str())
                .is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
        })
    }
}

impl tonic::service::Interceptor for Allowlist {
    fn call(&mut self, request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if self.0.is_empty() {
            return Ok(request);
        }
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::permission_denied("no client certificate"))?;
        match certs.first() {
            Some(cert) if self.allows(cert) => Ok(request),
            _ => Err(Status::permission_denied(
                "the client certificate names no allowed peer",
            )),
        }
    }
}
