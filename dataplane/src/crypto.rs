//! The str0m crypto-provider adapter: one DTLS certificate and one cached DTLS configuration per
//! process, handed to every worker core as a [`SharedCrypto`].
//!
//! str0m's aws-lc-rs provider builds a fresh `dimpl::Config` for every `Rtc`, and building one runs
//! the crypto provider self-tests (key exchanges on three curves): ~0.7 ms of CPU per join
//! (`docs/perf.md`). The provider here builds the config once and hands the same `Arc<Config>` to
//! every DTLS instance, which brings `Rtc` construction down to ~10 µs. It is process-global
//! state (str0m stores `&'static dyn DtlsProvider`), which is why it lives in the shell and not in
//! the sans-IO core.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sfu_core::SharedCrypto;
use str0m::config::DtlsCert;
use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};

/// Generate the process's self-signed certificate and the cached-config provider.
///
/// Returns `None` if certificate generation fails (it does not with aws-lc-rs).
pub fn shared_crypto() -> Option<SharedCrypto> {
    // The provider must be `'static` (str0m stores `&'static dyn DtlsProvider`); it is built
    // once per process and intentionally leaked.
    static PROVIDER: std::sync::OnceLock<&'static CachedDtlsProvider> = std::sync::OnceLock::new();
    let dtls: &'static CachedDtlsProvider = PROVIDER.get_or_init(|| {
        Box::leak(Box::new(CachedDtlsProvider {
            configs: Mutex::new(Vec::new()),
        }))
    });
    let mut provider = str0m_aws_lc_rs::default_provider();
    let cert = provider.dtls_provider.generate_certificate()?;
    provider.dtls_provider = dtls;
    Some(SharedCrypto {
        cert,
        provider: Arc::new(provider),
    })
}

/// DTLS provider that reuses one `dimpl::Config` per MTU.
struct CachedDtlsProvider {
    configs: Mutex<Vec<(Option<usize>, Arc<dimpl::Config>)>>,
}

impl fmt::Debug for CachedDtlsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CachedDtlsProvider")
    }
}

impl CachedDtlsProvider {
    fn config(&self, mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
        // A poisoned lock only means another thread panicked while pushing; the Vec is still valid.
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, cfg)) = configs.iter().find(|(m, _)| *m == mtu) {
            return Ok(cfg.clone());
        }
        // ICE verifies return routability before DTLS starts, so the cookie round trip is waste.
        let mut builder = dimpl::Config::builder()
            .use_server_cookie(false)
            .with_crypto_provider(str0m_aws_lc_rs::dimpl_crypto_provider());
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let cfg = Arc::new(
            builder
                .build()
                .map_err(|e| CryptoError::Other(format!("dimpl config: {e}")))?,
        );
        configs.push((mtu, cfg.clone()));
        Ok(cfg)
    }
}

impl DtlsProvider for CachedDtlsProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        str0m_aws_lc_rs::default_provider()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let config = self.config(mtu)?;
        let cert = cert.clone();
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            other => {
                return Err(CryptoError::Other(format!(
                    "unsupported DTLS version {other}"
                )));
            }
        };
        Ok(Box::new(CachedDtls(dtls)))
    }
}

/// A `dimpl::Dtls` as a str0m `DtlsInstance`.
struct CachedDtls(dimpl::Dtls);

impl fmt::Debug for CachedDtls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CachedDtls")
    }
}

impl DtlsInstance for CachedDtls {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }
    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }
    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }
    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }
    fn is_active(&self) -> bool {
        self.0.is_active()
    }
    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }
    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}
