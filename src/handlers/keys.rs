//! The rules that parse keys and certificates: `gcp_service_account`, `ssh_key` and
//! `client_certificate`. Decoded key bytes live in `Zeroizing` buffers, and no error carries
//! any part of a key.

use der::asn1::ObjectIdentifier;
use der::{Decode, DecodePem};
use zeroize::Zeroizing;

use super::formats::get;
use super::Fields;
use crate::error::{Error, Result};

const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The public half of a private key, in the form a certificate carries it.
#[derive(Debug, PartialEq, Eq)]
enum PublicPart {
    /// RSA modulus and public exponent (big-endian, no leading zeros).
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An EC point (SEC1 uncompressed) on a named curve.
    Ec {
        curve: ObjectIdentifier,
        point: Vec<u8>,
    },
    /// An Ed25519 public key.
    Ed25519([u8; 32]),
}

fn bad(field: &str, rule: impl Into<String>) -> Error {
    Error::invalid(field, rule)
}

/// Splits a PEM block into its label and DER bytes (kept zeroised).
fn pem_block(field: &str, text: &str) -> Result<(String, Zeroizing<Vec<u8>>)> {
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(bad(
            field,
            "is a legacy encrypted PEM key (Proc-Type header), which is not supported; convert it \
             to PKCS#8 with `openssl pkcs8 -topk8` or to OpenSSH format with `ssh-keygen -p`",
        ));
    }
    let start = text.find("-----BEGIN ").ok_or_else(|| {
        bad(
            field,
            "must be PEM text starting with a `-----BEGIN ...-----` line",
        )
    })?;
    let rest = &text[start..];
    // The first block only (a key file holds one key).
    let end_marker = rest
        .find("-----END ")
        .and_then(|i| {
            rest[i..]
                .find("-----\n")
                .map(|j| i + j + 5)
                .or(Some(rest.len()))
        })
        .unwrap_or(rest.len());
    let block = rest[..end_marker].trim_end();
    let (label, der) = der::pem::decode_vec(block.as_bytes()).map_err(|_| {
        bad(
            field,
            "is not well-formed PEM (bad base64 or BEGIN/END lines)",
        )
    })?;
    Ok((label.to_string(), Zeroizing::new(der)))
}

/// Parses a private key in PKCS#8 (plain or encrypted), PKCS#1 RSA or SEC1 EC PEM form and
/// returns its public half. `passphrase` must be given exactly when the key is encrypted.
fn private_key_public_part(
    field: &str,
    text: &str,
    passphrase: Option<&str>,
) -> Result<PublicPart> {
    let (label, der) = pem_block(field, text)?;
    match label.as_str() {
        "PRIVATE KEY" => {
            no_passphrase(passphrase)?;
            pkcs8_public_part(field, &der)
        }
        "ENCRYPTED PRIVATE KEY" => {
            let passphrase = passphrase
                .ok_or_else(|| bad("passphrase", "is required: the private key is encrypted"))?;
            let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
                .map_err(|_| bad(field, "is not a well-formed encrypted PKCS#8 key"))?;
            let plain = info
                .decrypt(passphrase.as_bytes())
                .map_err(|_| bad("passphrase", "does not decrypt the private key"))?;
            pkcs8_public_part(field, plain.as_bytes())
        }
        "RSA PRIVATE KEY" => {
            no_passphrase(passphrase)?;
            rsa_public_part(field, &der)
        }
        "EC PRIVATE KEY" => {
            no_passphrase(passphrase)?;
            let key = sec1::EcPrivateKey::from_der(&der)
                .map_err(|_| bad(field, "is not a well-formed SEC1 EC private key"))?;
            let curve = match key.parameters {
                Some(sec1::EcParameters::NamedCurve(oid)) => oid,
                None => {
                    return Err(bad(
                        field,
                        "is an EC key without its curve; export it with named-curve parameters",
                    ))
                }
            };
            ec_public_part(field, curve, key.private_key, key.public_key)
        }
        "DSA PRIVATE KEY" => Err(bad(
            field,
            "is a DSA key; DSA is obsolete, use an Ed25519, ECDSA or RSA key",
        )),
        _ => Err(bad(
            field,
            "is not a private key (expected a PRIVATE KEY, ENCRYPTED PRIVATE KEY, RSA PRIVATE KEY \
             or EC PRIVATE KEY block)",
        )),
    }
}

fn no_passphrase(passphrase: Option<&str>) -> Result<()> {
    match passphrase {
        Some(_) => Err(bad(
            "passphrase",
            "is given but the private key is not encrypted; leave it out",
        )),
        None => Ok(()),
    }
}

fn pkcs8_public_part(field: &str, der: &[u8]) -> Result<PublicPart> {
    let info = pkcs8::PrivateKeyInfo::try_from(der)
        .map_err(|_| bad(field, "is not a well-formed PKCS#8 private key"))?;
    let oid = info.algorithm.oid;
    if oid == RSA {
        rsa_public_part(field, info.private_key)
    } else if oid == EC {
        let curve = info
            .algorithm
            .parameters_oid()
            .map_err(|_| bad(field, "is an EC key without a named curve"))?;
        let key = sec1::EcPrivateKey::from_der(info.private_key)
            .map_err(|_| bad(field, "holds a malformed EC private key"))?;
        ec_public_part(field, curve, key.private_key, key.public_key)
    } else if oid == ED25519 {
        // CurvePrivateKey ::= OCTET STRING (RFC 8410).
        let seed = der::asn1::OctetStringRef::from_der(info.private_key)
            .map_err(|_| bad(field, "holds a malformed Ed25519 private key"))?;
        let seed: [u8; 32] = seed
            .as_bytes()
            .try_into()
            .map_err(|_| bad(field, "holds an Ed25519 key that is not 32 bytes"))?;
        let seed = Zeroizing::new(seed);
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        Ok(PublicPart::Ed25519(signing.verifying_key().to_bytes()))
    } else {
        Err(bad(
            field,
            "uses a key algorithm other than RSA, ECDSA (P-256, P-384) or Ed25519",
        ))
    }
}

fn rsa_public_part(field: &str, der: &[u8]) -> Result<PublicPart> {
    let key = pkcs1::RsaPrivateKey::try_from(der)
        .map_err(|_| bad(field, "is not a well-formed RSA private key"))?;
    let n = key.modulus.as_bytes();
    if n.len() * 8 < 2048 {
        return Err(bad(
            field,
            "is an RSA key shorter than 2048 bits, which is too weak",
        ));
    }
    if key.prime1.as_bytes().is_empty() || key.prime2.as_bytes().is_empty() {
        return Err(bad(field, "is an RSA key without its prime factors"));
    }
    Ok(PublicPart::Rsa {
        n: n.to_vec(),
        e: key.public_exponent.as_bytes().to_vec(),
    })
}

/// The public point of an EC private key, uncompressed. When the key carries its public
/// point (OpenSSL and most tools write it), that point is checked to lie on the curve and
/// used, as OpenSSL's `X509_check_private_key` does; only a key without one pays for the
/// scalar multiplication that derives it.
fn ec_public_part(
    field: &str,
    curve: ObjectIdentifier,
    scalar: &[u8],
    embedded: Option<&[u8]>,
) -> Result<PublicPart> {
    macro_rules! point {
        ($curve:ident, $name:literal) => {{
            use $curve::elliptic_curve::sec1::ToEncodedPoint;
            let key = $curve::SecretKey::from_slice(scalar).map_err(|_| {
                bad(
                    field,
                    concat!("holds an invalid ", $name, " private scalar"),
                )
            })?;
            let public = match embedded {
                Some(bytes) => $curve::PublicKey::from_sec1_bytes(bytes)
                    .map_err(|_| bad(field, concat!("holds an invalid ", $name, " public key")))?,
                None => key.public_key(),
            };
            public.to_encoded_point(false).as_bytes().to_vec()
        }};
    }
    let point = if curve == P256 {
        point!(p256, "P-256")
    } else if curve == P384 {
        point!(p384, "P-384")
    } else {
        return Err(bad(
            field,
            "uses an elliptic curve other than P-256 or P-384",
        ));
    };
    Ok(PublicPart::Ec { curve, point })
}

fn certificate_public_part(field: &str, cert: &x509_cert::Certificate) -> Result<PublicPart> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let key_bytes = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad(field, "has a malformed public key"))?;
    let oid = spki.algorithm.oid;
    if oid == RSA {
        let key = pkcs1::RsaPublicKey::try_from(key_bytes)
            .map_err(|_| bad(field, "has a malformed RSA public key"))?;
        Ok(PublicPart::Rsa {
            n: key.modulus.as_bytes().to_vec(),
            e: key.public_exponent.as_bytes().to_vec(),
        })
    } else if oid == EC {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            .ok_or_else(|| bad(field, "has an EC public key without a named curve"))?;
        // Compare points uncompressed, whatever form the certificate uses.
        let point = if curve == P256 {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            p256::PublicKey::from_sec1_bytes(key_bytes)
                .map_err(|_| bad(field, "has an invalid P-256 public key"))?
                .to_encoded_point(false)
                .as_bytes()
                .to_vec()
        } else if curve == P384 {
            use p384::elliptic_curve::sec1::ToEncodedPoint;
            p384::PublicKey::from_sec1_bytes(key_bytes)
                .map_err(|_| bad(field, "has an invalid P-384 public key"))?
                .to_encoded_point(false)
                .as_bytes()
                .to_vec()
        } else {
            return Err(bad(
                field,
                "uses an elliptic curve other than P-256 or P-384",
            ));
        };
        Ok(PublicPart::Ec { curve, point })
    } else if oid == ED25519 {
        let key: [u8; 32] = key_bytes
            .try_into()
            .map_err(|_| bad(field, "has an Ed25519 public key that is not 32 bytes"))?;
        Ok(PublicPart::Ed25519(key))
    } else {
        Err(bad(
            field,
            "uses a key algorithm other than RSA, ECDSA (P-256, P-384) or Ed25519",
        ))
    }
}

fn certificates(field: &str, text: &str) -> Result<Vec<x509_cert::Certificate>> {
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad(
            field,
            "must hold a PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let chain = if text.matches("-----BEGIN CERTIFICATE-----").count() == 1 {
        let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0);
        x509_cert::Certificate::from_pem(text[start..].trim_end().as_bytes()).map(|c| vec![c])
    } else {
        x509_cert::Certificate::load_pem_chain(text.as_bytes())
    };
    chain.map_err(|_| bad(field, "is not a well-formed X.509 certificate in PEM form"))
}

/// `client_certificate`: the certificate (chain, leaf first) parses, the private key parses
/// (decrypted with the passphrase when it is encrypted), and the key is the leaf's.
pub(crate) fn client_certificate(fields: &Fields) -> Result<()> {
    let (Some(cert_text), Some(key_text)) =
        (get(fields, "certificate"), get(fields, "private_key"))
    else {
        return Ok(());
    };
    let chain = certificates("certificate", cert_text)?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad("certificate", "holds no certificate"))?;
    let cert_key = certificate_public_part("certificate", leaf)?;
    let key = private_key_public_part("private_key", key_text, get(fields, "passphrase"))?;
    if key != cert_key {
        return Err(bad(
            "private_key",
            "does not belong to the certificate (its public key differs from the leaf \
             certificate's)",
        ));
    }
    if let Some(ca) = get(fields, "ca_certificate") {
        certificates("ca_certificate", ca)?;
    }
    Ok(())
}

/// `ssh_key`: an OpenSSH private key (decrypted with the passphrase when encrypted) or a PEM
/// private key.
pub(crate) fn ssh_key(fields: &Fields) -> Result<()> {
    let Some(text) = get(fields, "private_key") else {
        return Ok(());
    };
    let passphrase = get(fields, "passphrase");
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        let key = ssh_key::PrivateKey::from_openssh(openssh_rewrapped(text).as_bytes())
            .map_err(|_| bad("private_key", "is not a well-formed OpenSSH private key"))?;
        match (key.is_encrypted(), passphrase) {
            (true, None) => Err(bad(
                "passphrase",
                "is required: the private key is encrypted",
            )),
            (true, Some(p)) => key
                .decrypt(p.as_bytes())
                .map(drop)
                .map_err(|_| bad("passphrase", "does not decrypt the private key")),
            (false, Some(_)) => Err(bad(
                "passphrase",
                "is given but the private key is not encrypted; leave it out",
            )),
            (false, None) => Ok(()),
        }
    } else {
        private_key_public_part("private_key", text, passphrase).map(drop)
    }
}

/// An OpenSSH key block with its base64 wrapped at 70 columns, as `ssh-keygen` writes it and
/// the parser requires; other tools (Python's `cryptography`) wrap at 76.
fn openssh_rewrapped(text: &str) -> Zeroizing<String> {
    const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    const END: &str = "-----END OPENSSH PRIVATE KEY-----";
    let Some(start) = text.find(BEGIN) else {
        return Zeroizing::new(text.to_string());
    };
    let body_start = start + BEGIN.len();
    let Some(end) = text[body_start..].find(END).map(|i| body_start + i) else {
        return Zeroizing::new(text.to_string());
    };
    let body: Zeroizing<String> = Zeroizing::new(
        text[body_start..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect(),
    );
    let mut out = Zeroizing::new(String::with_capacity(body.len() + body.len() / 70 + 80));
    out.push_str(BEGIN);
    out.push('\n');
    for chunk in body.as_bytes().chunks(70) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// The parts of a service-account key file this check reads.
#[derive(serde::Deserialize)]
struct ServiceAccount {
    #[serde(rename = "type")]
    kind: Option<String>,
    project_id: Option<String>,
    private_key_id: Option<String>,
    private_key: Option<String>,
    client_email: Option<String>,
    token_uri: Option<String>,
}

/// `gcp_service_account`: the JSON key file of a service account: its type, e-mail and
/// project, and an RSA private key that parses.
pub(crate) fn gcp_service_account(fields: &Fields) -> Result<()> {
    const FIELD: &str = "service_account_json";
    let Some(json) = get(fields, FIELD) else {
        return Ok(());
    };
    let sa: ServiceAccount = serde_json::from_str(json).map_err(|_| {
        bad(
            FIELD,
            "must be the JSON key file of a service account (an object with type, project_id, \
             client_email and private_key)",
        )
    })?;
    if sa.kind.as_deref() != Some("service_account") {
        return Err(bad(
            FIELD,
            "`type` must be \"service_account\" (user credentials and other key types are not \
             service-account keys)",
        ));
    }
    let email = sa
        .client_email
        .ok_or_else(|| bad(FIELD, "`client_email` is missing"))?;
    if !email.ends_with(".gserviceaccount.com") || !email.contains('@') {
        return Err(bad(
            FIELD,
            "`client_email` must be a service-account address (...@....gserviceaccount.com)",
        ));
    }
    if sa.project_id.as_deref().is_none_or(str::is_empty) {
        return Err(bad(FIELD, "`project_id` is missing"));
    }
    if sa.private_key_id.as_deref().is_none_or(str::is_empty) {
        return Err(bad(FIELD, "`private_key_id` is missing"));
    }
    if let Some(uri) = &sa.token_uri {
        let ok = url::Url::parse(uri).is_ok_and(|u| u.scheme() == "https");
        if !ok {
            return Err(bad(FIELD, "`token_uri` must be an https URL"));
        }
    }
    let key = Zeroizing::new(
        sa.private_key
            .ok_or_else(|| bad(FIELD, "`private_key` is missing"))?,
    );
    match private_key_public_part(FIELD, &key, None) {
        Ok(PublicPart::Rsa { .. }) => Ok(()),
        Ok(_) => Err(bad(FIELD, "`private_key` must be an RSA key")),
        Err(Error::InvalidInput { reason, .. }) => {
            Err(bad(FIELD, format!("`private_key` {reason}")))
        }
        Err(e) => Err(e),
    }
}
