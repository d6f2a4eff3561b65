//! `CertFiles`: a listener's TLS certificate and key (`[server.tls]`,
//! `[admin.tls]`), served by rustls with the `ring` provider and re-read
//! without a restart.
//!
//! `watch` reads both files every `reload_interval_ms` (a few KiB) and
//! compares them with what it read last: contents, not modification
//! times, which a coarse file-system clock or a symlink swap can leave
//! unchanged. When either changed, only a pair that parses and matches
//! (the key is the certificate's) replaces the one being served. A bad
//! pair is logged as an error once per change and the old certificate
//! stays, so a renewal caught half-written is retried when the second file
//! lands. Handshakes read the current pair
//! lock-free (`ArcSwap`). Only HTTP/1.1 is offered over ALPN.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// Why a certificate pair cannot be served. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The pair being served and where it comes from.
#[derive(Debug)]
pub struct CertFiles {
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The files as last read (served or refused).
    seen: Mutex<Contents>,
}

/// What reading the certificate and key files gave.
type Contents = [Result<Vec<u8>, String>; 2];

impl CertFiles {
    /// Reads the pair; an error here stops start-up.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = contents(config);
        let pair = read_pair(config, &seen, &provider)?;
        Ok(Arc::new(Self {
            config: config.clone(),
            provider,
            current: ArcSwap::from_pointee(pair),
            seen: Mutex::new(seen),
        }))
    }

    /// A TLS acceptor that serves whatever pair is current.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            // Invariant: the ring provider supports the default versions.
            .expect("ring supports the safe default protocol versions");
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }

    /// Re-reads the files when they change, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.config.reload_interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let files = self.clone();
            // File reads stay off the runtime's threads.
            if let Err(e) = tokio::task::spawn_blocking(move || files.reload_if_changed()).await {
                tracing::error!(error = %e, "certificate reload task failed");
            }
        }
    }

    /// Reads the pair again if either file changed; true if a new pair is
    /// now served.
    pub fn reload_if_changed(&self) -> bool {
        let now = contents(&self.config);
        {
            let Ok(mut seen) = self.seen.lock() else {
                return false;
            };
            if *seen == now {
                return false;
            }
            seen.clone_from(&now);
        }
        match read_pair(&self.config, &now, &self.provider) {
            Ok(pair) => {
                self.current.store(Arc::new(pair));
                tracing::info!(cert = %self.config.cert.display(), "tls certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "tls certificate not reloaded; still serving the previous one");
                false
            }
        }
    }
}

impl CertFiles {
    /// The pair handshakes get now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn contents(config: &TlsConfig) -> Contents {
    [&config.cert, &config.key].map(|path| std::fs::read(path).map_err(|e| e.to_string()))
}

/// Parses and checks a certificate chain and its key, as read.
fn read_pair(
    config: &TlsConfig,
    contents: &Contents,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let read = |i: usize, path: &Path| {
        contents[i].as_ref().map_err(|message| TlsError::Invalid {
            path: path.to_owned(),
            message: format!("cannot read: {message}"),
        })
    };
    let cert_text = read(0, &config.cert)?;
    let key_text = read(1, &config.key)?;
    let invalid = |path: &Path, message: String| TlsError::Invalid {
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(cert_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&config.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(&config.cert, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_text)
        .map_err(|e| invalid(&config.key, format!("not a PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        invalid(
            &config.key,
            format!("unusable with {}: {e}", config.cert.display()),
        )
    })
}
