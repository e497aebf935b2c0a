//! The security handshake of the stream transports (TCP and in-memory): libp2p's TLS 1.3
//! handshake (`/tls/1.0.0`) first, Noise (`/noise`) second.
//!
//! Why not Noise alone: libp2p's Noise is fixed to ChaCha20-Poly1305, which runs at about
//! 1.3-1.5 GB/s per core here, while AES-256-GCM runs at 7-11 GB/s on any CPU with AES and
//! carry-less multiply instructions. An upload moves 3.3 bytes of shares per byte of file
//! (3-of-10), each sealed by the uploader and opened by a server, so the cipher was 17% of the
//! uploader's CPU (measured with `perf`, README "Performance").
//!
//! The TLS side follows the libp2p TLS specification (self-signed certificate carrying the
//! node's ed25519 key in the libp2p extension, TLS 1.3 only, ALPN `libp2p`, no SNI) and reuses
//! `libp2p-tls`'s certificate generation and parsing, so it interoperates with any libp2p TLS
//! peer; it differs only in the cipher suite order: AES-GCM first when this machine has AES
//! instructions, ChaCha20-Poly1305 first when it has not (as on a Raspberry Pi 4). A server
//! without AES instructions picks by its own order; otherwise it follows the client's.
//!
//! The cryptography is *ring*'s (rustls' `ring` provider), which the process already carries
//! for Noise, rather than aws-lc (which libp2p-tls and QUIC use): with aws-lc on the TCP path an
//! idle node's resident memory grew by 3.2 MiB of code pages (20.5 -> 23.7 MiB measured by the
//! bench), for the same throughput. The cost is the key exchange: X25519, not the hybrid
//! X25519+ML-KEM-768 that aws-lc offers (Noise was X25519 too); peers that prefer the hybrid
//! fall back to X25519 within the handshake.
//!
//! With both providers compiled in, rustls has no process default: code that builds a rustls
//! configuration without naming a provider panics unless one was installed (the Tor module
//! installs aws-lc before arti starts).
//!
//! Noise stays on offer so that peers which speak only Noise still connect.

use std::sync::Arc;

use futures::{AsyncRead, AsyncWrite, FutureExt, TryFutureExt, future::BoxFuture, future::Either};
use libp2p::{
    PeerId,
    core::{
        UpgradeInfo,
        upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade},
    },
    identity::Keypair,
    noise,
    tls::certificate,
};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
    SupportedCipherSuite,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::ring::{self as provider_impl, cipher_suite},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

/// The TLS protocol name in multistream-select.
pub const TLS_PROTOCOL: &str = "/tls/1.0.0";
/// The Noise protocol name in multistream-select.
pub const NOISE_PROTOCOL: &str = "/noise";

/// The secured stream: TLS or Noise.
pub type SecureStream<C> = Either<futures_rustls::TlsStream<C>, noise::Output<C>>;

/// Errors of the security handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecurityError {
    /// The TLS configuration could not be built from the node key.
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
    /// The TLS handshake failed (includes a certificate that is not a valid libp2p one).
    #[error("TLS handshake: {0}")]
    Tls(#[from] std::io::Error),
    /// The peer presented no certificate or more than one.
    #[error("TLS handshake: the peer must present exactly one certificate")]
    Certificates,
    /// The peer's certificate does not parse as a libp2p certificate.
    #[error("TLS handshake: {0}")]
    Certificate(#[from] certificate::ParseError),
    /// The Noise handshake failed.
    #[error("Noise handshake: {0}")]
    Noise(#[from] noise::Error),
}

/// Whether this CPU has the instructions that make AES-GCM fast.
pub fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// TLS 1.3 cipher suites, fastest on this machine first.
pub fn cipher_suites(aes: bool) -> Vec<SupportedCipherSuite> {
    let aes_suites = [
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    let chacha = cipher_suite::TLS13_CHACHA20_POLY1305_SHA256;
    if aes {
        aes_suites.into_iter().chain([chacha]).collect()
    } else {
        std::iter::once(chacha).chain(aes_suites).collect()
    }
}

/// The security upgrade: TLS 1.3 or Noise, whichever the dialer proposes first that the
/// listener supports (kith proposes TLS first).
#[derive(Clone)]
pub struct Security {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    noise: noise::Config,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").finish_non_exhaustive()
    }
}

impl Security {
    /// Both handshakes for the node identified by `keypair`, with the suite order for this
    /// machine.
    pub fn new(keypair: &Keypair) -> Result<Self, SecurityError> {
        Self::with_aes(keypair, aes_hardware())
    }

    /// Both handshakes, ordering the cipher suites as if this machine had (or had not) AES
    /// instructions.
    pub fn with_aes(keypair: &Keypair, aes: bool) -> Result<Self, SecurityError> {
        let cfg = |e: &dyn std::fmt::Display| SecurityError::Config(e.to_string());
        let (cert, key) = certificate::generate(keypair).map_err(|e| cfg(&e))?;
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: cipher_suites(aes),
            ..provider_impl::default_provider()
        });
        // A libp2p certificate carries a critical extension webpki does not know, so rustls'
        // own `with_single_cert` (which parses it) refuses it: the key is served as it is.
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| cfg(&e))?;
        let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![cert], signer));
        let versions = &[&rustls::version::TLS13];
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| cfg(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Libp2pVerifier))
            .with_client_cert_resolver(Arc::new(OwnCert(certified.clone())));
        client.alpn_protocols = vec![b"libp2p".to_vec()];
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| cfg(&e))?
            .with_client_cert_verifier(Arc::new(Libp2pVerifier))
            .with_cert_resolver(Arc::new(OwnCert(certified)));
        server.alpn_protocols = vec![b"libp2p".to_vec()];
        // Without AES instructions our own order (ChaCha20 first) is faster for us; with them
        // the client's first choice is fine for both.
        server.ignore_client_order = !aes;
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
            noise: noise::Config::new(keypair)?,
        })
    }
}

impl UpgradeInfo for Security {
    type Info = &'static str;
    type InfoIter = [&'static str; 2];

    fn protocol_info(&self) -> Self::InfoIter {
        [TLS_PROTOCOL, NOISE_PROTOCOL]
    }
}

impl<C> InboundConnectionUpgrade<C> for Security
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, SecureStream<C>);
    type Error = SecurityError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        if info == TLS_PROTOCOL {
            async move {
                let stream = futures_rustls::TlsAcceptor::from(self.server)
                    .accept(socket)
                    .await?;
                tls_done(stream.into())
            }
            .boxed()
        } else {
            noise_done(self.noise.upgrade_inbound(socket, info))
        }
    }
}

impl<C> OutboundConnectionUpgrade<C> for Security
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, SecureStream<C>);
    type Error = SecurityError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        if info == TLS_PROTOCOL {
            async move {
                // The libp2p TLS specification: no server name (SNI) is sent.
                let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
                let stream = futures_rustls::TlsConnector::from(self.client)
                    .connect(name, socket)
                    .await?;
                tls_done(stream.into())
            }
            .boxed()
        } else {
            noise_done(self.noise.upgrade_outbound(socket, info))
        }
    }
}

/// The peer and stream of a finished TLS handshake.
fn tls_done<C>(
    stream: futures_rustls::TlsStream<C>,
) -> Result<(PeerId, SecureStream<C>), SecurityError> {
    let state = stream.get_ref().1;
    let peer = peer_of(state)?;
    if let Some(suite) = state.negotiated_cipher_suite() {
        tracing::debug!(%peer, suite = ?suite.suite(), "TLS connection");
    }
    Ok((peer, Either::Left(stream)))
}

/// A Noise handshake, its output as a [`SecureStream`].
fn noise_done<C, F>(
    handshake: F,
) -> BoxFuture<'static, Result<(PeerId, SecureStream<C>), SecurityError>>
where
    F: std::future::Future<Output = Result<(PeerId, noise::Output<C>), noise::Error>>
        + Send
        + 'static,
{
    handshake
        .map_ok(|(peer, io)| (peer, Either::Right(io)))
        .map_err(SecurityError::from)
        .boxed()
}

/// The cipher suite a TLS stream negotiated (`None` for Noise or before the handshake).
pub fn negotiated_suite<C>(stream: &SecureStream<C>) -> Option<rustls::CipherSuite> {
    match stream {
        Either::Left(tls) => tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Either::Right(_) => None,
    }
}

fn peer_of(state: &rustls::CommonState) -> Result<PeerId, SecurityError> {
    let Some([cert]) = state.peer_certificates() else {
        return Err(SecurityError::Certificates);
    };
    Ok(certificate::parse(cert)?.peer_id())
}

/// This node's certificate, for every handshake in either role.
#[derive(Debug)]
struct OwnCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OwnCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Accepts exactly one self-signed libp2p certificate (its extension signed by the peer's
/// node key, checked by `libp2p-tls`) and TLS 1.3 signatures made with its key. The peer id is
/// checked against the dialed one by the swarm after the handshake.
#[derive(Debug)]
struct Libp2pVerifier;

fn bad(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn verify_presented(
    end_entity: &CertificateDer,
    intermediates: &[CertificateDer],
) -> Result<(), rustls::Error> {
    if !intermediates.is_empty() {
        return Err(rustls::Error::General(
            "a libp2p peer presents exactly one certificate".into(),
        ));
    }
    certificate::parse(end_entity).map_err(bad)?;
    Ok(())
}

fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    certificate::parse(cert)
        .map_err(bad)?
        .verify_signature(dss.scheme, message, dss.signature())
        .map_err(bad)?;
    Ok(HandshakeSignatureValid::assertion())
}

fn schemes() -> Vec<SignatureScheme> {
    vec![
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ED25519,
        SignatureScheme::RSA_PSS_SHA512,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA512,
        SignatureScheme::RSA_PKCS1_SHA384,
        SignatureScheme::RSA_PKCS1_SHA256,
    ]
}

fn no_tls12() -> rustls::Error {
    rustls::Error::General("only TLS 1.3 is offered".into())
}

/// The signature methods both verifier traits share (TLS 1.2 refused, TLS 1.3 checked against
/// the certificate's key).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(no_tls12())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            schemes()
        }
    };
}

impl ServerCertVerifier for Libp2pVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _: &ServerName,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_presented(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!();
}

impl ClientCertVerifier for Libp2pVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_presented(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!();
}
