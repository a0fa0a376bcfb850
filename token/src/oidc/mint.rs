//! An OIDC issuer's signing keys, for tests: RS256 and ES256 key pairs
//! that sign ID tokens and publish themselves as JWKs. The server never
//! signs ID tokens.

use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::jwt::mint::der_element;

/// A key an issuer signs ID tokens with, named by its `kid`.
pub struct IdTokenSigner {
    kid: String,
    pair: Pair,
}

enum Pair {
    Rsa(Box<RsaKeyPair>),
    P256(Box<EcdsaKeyPair>),
}

impl IdTokenSigner {
    /// A fresh 2048-bit RSA key for RS256.
    pub fn generate_rs256(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: Pair::Rsa(Box::new(
                RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation"),
            )),
        }
    }

    /// A fresh P-256 key for ES256.
    pub fn generate_es256(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: Pair::P256(Box::new(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .expect("P-256 key generation"),
            )),
        }
    }

    /// The `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `alg` this key signs with.
    pub fn algorithm(&self) -> &'static str {
        match self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::P256(_) => "ES256",
        }
    }

    /// The public key as a JWKS lists it.
    pub fn jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match &self.pair {
            Pair::Rsa(pair) => {
                let (n, e) = rsa_components(pair.public_key().as_ref())
                    .expect("an RSA public key is a SEQUENCE of two INTEGERs");
                json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                       "n": b64(n), "e": b64(e)})
            }
            Pair::P256(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": self.kid,
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
        }
    }

    /// Signs `claims` under the header an issuer writes: `alg`, `typ` and
    /// `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.algorithm(), "typ": "JWT", "kid": self.kid});
        self.sign_with_header(&header.to_string(), &claims.to_string())
    }

    /// Signs `payload` under `header`, both JSON as given: for tokens no
    /// honest issuer makes.
    pub fn sign_with_header(&self, header: &str, payload: &str) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = match &self.pair {
            Pair::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut signature)
                    .expect("RSA signing");
                signature
            }
            Pair::P256(pair) => pair
                .sign(&rng, signed.as_bytes())
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// `n` and `e` of a PKCS#1 `RSAPublicKey`, without DER's sign byte.
fn rsa_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, sequence, _) = der_element(der)? else {
        return None;
    };
    let (0x02, n, rest) = der_element(sequence)? else {
        return None;
    };
    let (0x02, e, _) = der_element(rest)? else {
        return None;
    };
    let strip = |int: &'_ [u8]| -> usize { int.iter().take_while(|&&b| b == 0).count() };
    Some((&n[strip(n)..], &e[strip(e)..]))
}
