//! Test certificates, generated at test time with rcgen (ECDSA P-256).
//!
//! ```text
//!  "zctest CA" ──signs──► server  (SAN localhost, 127.0.0.1; serverAuth)
//!              └─signs──► client  (CN zctest client; clientAuth)
//!  "zctest other CA" ─signs─► other client  (trusted by nobody: the "wrong CA" tests)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// PEM text of a test PKI, also written to files in [`TestCerts::dir`] (see the `*_path`
/// methods). Keys are PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
#[derive(Debug, Clone)]
pub struct TestCerts {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// A CA unrelated to `ca_pem`: trusting only it must fail against the server.
    pub other_ca_pem: String,
    /// A client certificate signed by `other_ca_pem`: an mTLS server must refuse it.
    pub other_client_cert_pem: String,
    pub other_client_key_pem: String,
}

const CA: &str = "ca.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";
const CLIENT_CERT: &str = "client.pem";
const CLIENT_KEY: &str = "client.key";
const OTHER_CA: &str = "other-ca.pem";
const OTHER_CLIENT_CERT: &str = "other-client.pem";
const OTHER_CLIENT_KEY: &str = "other-client.key";

impl TestCerts {
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA)
    }
    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join(SERVER_CERT)
    }
    pub fn server_key_path(&self) -> PathBuf {
        self.dir.join(SERVER_KEY)
    }
    pub fn client_cert_path(&self) -> PathBuf {
        self.dir.join(CLIENT_CERT)
    }
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join(CLIENT_KEY)
    }
    pub fn other_ca_path(&self) -> PathBuf {
        self.dir.join(OTHER_CA)
    }
    pub fn other_client_cert_path(&self) -> PathBuf {
        self.dir.join(OTHER_CLIENT_CERT)
    }
    pub fn other_client_key_path(&self) -> PathBuf {
        self.dir.join(OTHER_CLIENT_KEY)
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generating a CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-signing a CA")
}

/// `(certificate PEM, key PEM)` of an end-entity certificate signed by `issuer`.
fn leaf(
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("valid SANs");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("generating a key");
    let cert = params
        .signed_by(&key, issuer)
        .expect("signing a certificate");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, pem: &str) {
    let path = dir.join(name);
    fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Generates a fresh CA, a server certificate for `localhost` and `127.0.0.1`, a client
/// certificate (both signed by the CA), an unrelated CA and a client certificate of that one;
/// writes them to `dir` (created if missing; see the `TestCerts::*_path` methods) and returns
/// their PEM text.
pub fn certs(dir: impl AsRef<Path>) -> TestCerts {
    let dir = dir.as_ref().to_path_buf();
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));

    let ca = new_ca("zctest CA");
    let (server_cert_pem, server_key_pem) = leaf(
        "localhost",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca,
    );
    let (client_cert_pem, client_key_pem) = leaf(
        "zctest client",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca,
    );
    let other_ca = new_ca("zctest other CA");
    let (other_client_cert_pem, other_client_key_pem) = leaf(
        "zctest other client",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        &other_ca,
    );

    let certs = TestCerts {
        dir,
        ca_pem: ca.pem(),
        server_cert_pem,
        server_key_pem,
        client_cert_pem,
        client_key_pem,
        other_ca_pem: other_ca.pem(),
        other_client_cert_pem,
        other_client_key_pem,
    };
    for (name, pem) in [
        (CA, &certs.ca_pem),
        (SERVER_CERT, &certs.server_cert_pem),
        (SERVER_KEY, &certs.server_key_pem),
        (CLIENT_CERT, &certs.client_cert_pem),
        (CLIENT_KEY, &certs.client_key_pem),
        (OTHER_CA, &certs.other_ca_pem),
        (OTHER_CLIENT_CERT, &certs.other_client_cert_pem),
        (OTHER_CLIENT_KEY, &certs.other_client_key_pem),
    ] {
        write(&certs.dir, name, pem);
    }
    certs
}
