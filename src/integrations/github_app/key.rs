//! Reading the App's private key: only an unencrypted RSA key of 2048 bits or more, and why
//! a block is refused, told from its structure.

use super::*;

/// Parses the App's PEM key, refusing anything but an unencrypted RSA private key of at
/// least 2048 bits. Errors name the kind of block found, never its contents.
pub(super) fn parse_private_key(pem: &SecretString) -> Result<RsaKeyPair> {
    const FIELD: &str = "GitHub App private key";
    const WHERE: &str = "use the .pem file GitHub downloads from the App's settings \
                         (\"Generate a private key\"), whole, from -----BEGIN RSA PRIVATE KEY----- \
                         to -----END RSA PRIVATE KEY-----";
    let text = pem.expose_secret().trim();
    let label = der::pem::decode_label(text.as_bytes())
        .map_err(|_| Error::invalid(FIELD, format!("is not a PEM block; {WHERE}")))?;
    match label {
        "RSA PRIVATE KEY" | "PRIVATE KEY" => {}
        "ENCRYPTED PRIVATE KEY" => {
            return Err(Error::invalid(
                FIELD,
                "is encrypted; decrypt it first (`openssl pkcs8 -in key.pem -out plain.pem`), \
                 or use the .pem GitHub downloaded, which is not encrypted",
            ))
        }
        "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => {
            return Err(Error::invalid(
                FIELD,
                format!("is a {} (`{label}`), not the private key; {WHERE}", {
                    if label == "CERTIFICATE" {
                        "certificate"
                    } else {
                        "public key"
                    }
                }),
            ))
        }
        "EC PRIVATE KEY" | "OPENSSH PRIVATE KEY" | "DSA PRIVATE KEY" => {
            return Err(Error::invalid(
                FIELD,
                format!("is not an RSA key (`{label}`); GitHub App keys are RSA; {WHERE}"),
            ))
        }
        _ => {
            return Err(Error::invalid(
                FIELD,
                format!("is a PEM block of another kind, not an RSA private key; {WHERE}"),
            ))
        }
    }
    let (_, der) = der::pem::decode_vec(text.as_bytes())
        .map_err(|_| Error::invalid(FIELD, format!("is a damaged PEM block; {WHERE}")))?;
    let der = zeroize::Zeroizing::new(der);
    let parsed = if label == "RSA PRIVATE KEY" {
        RsaKeyPair::from_der(&der)
    } else {
        RsaKeyPair::from_pkcs8(&der)
    };
    // ring checks the key's numbers (and refuses moduli under 2048 bits) as it parses it;
    // a refusal is told apart by reading the block's structure.
    let key = parsed
        .map_err(|_| Error::invalid(FIELD, format!("{}; {WHERE}", why_refused(label, &der))))?;
    if key.public().modulus_len() < MIN_MODULUS_BYTES {
        return Err(Error::invalid(
            FIELD,
            format!(
                "is an RSA key of {} bits; GitHub App keys are 2048 bits or more; {WHERE}",
                key.public().modulus_len() * 8
            ),
        ));
    }
    Ok(key)
}

/// Why ring refused a key block: another algorithm, a short key, or damaged numbers (never
/// anything of the key itself).
pub(super) fn why_refused(label: &str, der: &[u8]) -> String {
    use pkcs8::der::Decode;
    /// `rsaEncryption` (RFC 8017, appendix C).
    const RSA_ENCRYPTION: pkcs8::ObjectIdentifier =
        pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    let rsa = if label == "RSA PRIVATE KEY" {
        Some(der)
    } else {
        match pkcs8::PrivateKeyInfo::from_der(der) {
            Ok(info) if info.algorithm.oid == RSA_ENCRYPTION => Some(info.private_key),
            Ok(_) => {
                return "is not an RSA private key (a PKCS#8 block holding another algorithm); \
                        GitHub App keys are RSA"
                    .into()
            }
            Err(_) => None,
        }
    };
    let bits = rsa
        .and_then(|d| pkcs1::RsaPrivateKey::from_der(d).ok())
        .map(|k| {
            let m = k.modulus.as_bytes();
            let lead = m.iter().take_while(|b| **b == 0).count();
            (m.len() - lead) * 8
        });
    match bits {
        Some(bits) if bits < MIN_MODULUS_BYTES * 8 => {
            format!("is an RSA key of {bits} bits; GitHub App keys are 2048 bits or more")
        }
        _ => "is damaged: not a usable RSA private key (its numbers are inconsistent)".into(),
    }
}
