//! Minting JWTs exactly as Attic's `atticadm make-token` does, for tests:
//! the same claims in the same layout (jwt-simple's field order, Attic's
//! short permission keys, patterns in the order make-token first meets
//! them), the same header, the same algorithms. The server never mints.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::claims::CachePermissions;
use super::key::to_pem;
use crate::Permission;

/// What `atticadm make-token` puts in a token, plus the issuer and
/// audiences it adds from `[jwt]`.
#[derive(Debug, Clone)]
pub struct AtticClaims {
    /// `sub`.
    pub subject: String,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// `nbf`: make-token sets it to the moment it runs.
    pub not_before: u64,
    /// `iss`, from `token-bound-issuer`.
    pub issuer: Option<String>,
    /// `aud`, from `token-bound-audiences`, written as a list.
    pub audiences: Option<Vec<String>>,
    /// `caches`: each pattern once, with its permissions, in order.
    pub caches: Vec<(String, Vec<Permission>)>,
}

impl AtticClaims {
    /// `atticadm make-token --sub SUBJECT --validity VALIDITY` with
    /// `--pull PATTERN` and the like given as `(permission, pattern)`:
    /// make-token walks its flags in the order pull, push, delete,
    /// create-cache, configure-cache, configure-cache-retention,
    /// destroy-cache, and a pattern's entry sits where it was first met.
    pub fn make_token(subject: &str, validity_seconds: u64, grants: &[(Permission, &str)]) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut caches: Vec<(String, Vec<Permission>)> = Vec::new();
        for permission in Permission::ALL {
            for (_, pattern) in grants.iter().filter(|(p, _)| *p == permission) {
                match caches.iter_mut().find(|(p, _)| p == pattern) {
                    Some((_, permissions)) => permissions.push(permission),
                    None => caches.push(((*pattern).to_owned(), vec![permission])),
                }
            }
        }
        Self {
            subject: subject.to_owned(),
            expires_at: now + validity_seconds,
            not_before: now,
            issuer: None,
            audiences: None,
            caches,
        }
    }

    /// The payload JSON as jwt-simple writes it: `exp`, `nbf`, `iss`,
    /// `sub`, `aud`, then Attic's claim; permissions as `1` in Attic's
    /// field order, those not granted left out.
    pub fn to_json(&self) -> String {
        let string = |s: &str| serde_json::to_string(s).expect("a string serialises");
        let mut fields = vec![
            format!("\"exp\":{}", self.expires_at),
            format!("\"nbf\":{}", self.not_before),
        ];
        if let Some(issuer) = &self.issuer {
            fields.push(format!("\"iss\":{}", string(issuer)));
        }
        fields.push(format!("\"sub\":{}", string(&self.subject)));
        if let Some(audiences) = &self.audiences {
            let list: Vec<String> = audiences.iter().map(|a| string(a)).collect();
            fields.push(format!("\"aud\":[{}]", list.join(",")));
        }
        let caches: Vec<String> = self
            .caches
            .iter()
            .map(|(pattern, permissions)| {
                let flags: Vec<String> = Permission::ALL
                    .iter()
                    .filter(|p| permissions.contains(p))
                    .map(|p| format!("\"{}\":1", CachePermissions::attic_key(*p)))
                    .collect();
                format!("{}:{{{}}}", string(pattern), flags.join(","))
            })
            .collect();
        fields.push(format!(
            "\"https://jwt.attic.rs/v1\":{{\"caches\":{{{}}}}}",
            caches.join(",")
        ));
        format!("{{{}}}", fields.join(","))
    }
}

/// A key that signs, as Attic's `[jwt.signing]` would hold it.
pub enum Signer {
    /// An HMAC secret.
    Hs256(Vec<u8>),
    /// An RSA key pair.
    Rs256(Box<RsaKeyPair>),
}

impl Signer {
    /// A fresh 2048-bit RSA key.
    pub fn generate_rs256() -> Self {
        Signer::Rs256(Box::new(
            RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation"),
        ))
    }

    /// The `alg` this key signs with.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Signer::Hs256(_) => "HS256",
            Signer::Rs256(_) => "RS256",
        }
    }

    /// The value of `token-hs256-secret-base64` or
    /// `token-rs256-secret-base64` for this key: base64 of the secret, or
    /// of the private key as PKCS#1 PEM (what Attic's documentation
    /// generates with `openssl genrsa -traditional`).
    pub fn secret_base64(&self) -> String {
        use base64::engine::general_purpose::STANDARD;
        match self {
            Signer::Hs256(secret) => STANDARD.encode(secret),
            Signer::Rs256(pair) => {
                let pkcs8 = pair.as_der().expect("a key pair encodes");
                let pkcs1 = pkcs1_of_pkcs8(pkcs8.as_ref()).expect("PKCS#8 holds PKCS#1");
                STANDARD.encode(to_pem("RSA PRIVATE KEY", pkcs1))
            }
        }
    }

    /// The value of `token-rs256-pubkey-base64` for an RSA key: base64 of
    /// its public key as PKCS#1 PEM.
    pub fn public_key_base64(&self) -> Option<String> {
        use base64::engine::general_purpose::STANDARD;
        match self {
            Signer::Hs256(_) => None,
            Signer::Rs256(pair) => {
                Some(STANDARD.encode(to_pem("RSA PUBLIC KEY", pair.public_key().as_ref())))
            }
        }
    }

    /// Signs `payload` (JSON) under jwt-simple's header for this key.
    pub fn sign(&self, payload: &str) -> String {
        let header = format!("{{\"alg\":\"{}\",\"typ\":\"JWT\"}}", self.algorithm());
        self.sign_with_header(&header, payload)
    }

    /// Signs `payload` under `header`, both JSON as given: for tokens no
    /// honest signer makes.
    pub fn sign_with_header(&self, header: &str, payload: &str) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = match self {
            Signer::Hs256(secret) => {
                let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
                aws_lc_rs::hmac::sign(&key, signed.as_bytes())
                    .as_ref()
                    .to_vec()
            }
            Signer::Rs256(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    signed.as_bytes(),
                    &mut signature,
                )
                .expect("RSA signing");
                signature
            }
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`: the
/// content of its OCTET STRING, after the version and the algorithm.
fn pkcs1_of_pkcs8(pkcs8: &[u8]) -> Option<&[u8]> {
    let (0x30, info, _) = der_element(pkcs8)? else {
        return None;
    };
    let (0x02, _version, rest) = der_element(info)? else {
        return None;
    };
    let (0x30, _algorithm, rest) = der_element(rest)? else {
        return None;
    };
    let (0x04, key, _) = der_element(rest)? else {
        return None;
    };
    Some(key)
}

/// One DER element: its tag, its content and what follows it.
pub(crate) fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}
