//! `[jwt]`: Attic's tokens, accepted beside ours. The section is Attic's,
//! key for key: `token-bound-issuer`, `token-bound-audiences`,
//! `[jwt.blacklist] subjects` and `[jwt.signing]` with one of
//! `token-rs256-pubkey-base64`, `token-rs256-secret-base64`,
//! `token-hs256-secret-base64`; without `[jwt.signing]`, Attic's
//! environment variables are read as Attic reads them.
//!
//! It also decides the biscuit root key: `token-root-key` when set, else
//! one derived from the JWT secret, else none (an RS256 public key alone).

use std::collections::{BTreeSet, HashSet};

use attic_token::RootKey;
use attic_token::jwt::{JwtKey, JwtVerifier};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Attic's variables for the signing key, tried in Attic's order (first
/// set and non-empty wins) when `[jwt.signing]` is absent.
pub const SIGNING_VARIABLES: [(&str, SigningKind); 3] = [
    (
        "ATTIC_SERVER_TOKEN_RS256_PUBKEY_BASE64",
        SigningKind::Rs256Pubkey,
    ),
    (
        "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64",
        SigningKind::Rs256Secret,
    ),
    (
        "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64",
        SigningKind::Hs256Secret,
    ),
];

/// Which of Attic's three key forms a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKind {
    /// `token-rs256-pubkey-base64`: verifies only.
    Rs256Pubkey,
    /// `token-rs256-secret-base64`.
    Rs256Secret,
    /// `token-hs256-secret-base64`.
    Hs256Secret,
}

impl SigningKind {
    fn key_name(self) -> &'static str {
        match self {
            SigningKind::Rs256Pubkey => "jwt.signing.token-rs256-pubkey-base64",
            SigningKind::Rs256Secret => "jwt.signing.token-rs256-secret-base64",
            SigningKind::Hs256Secret => "jwt.signing.token-hs256-secret-base64",
        }
    }

    fn parse(self, value: &str) -> Result<JwtKey, attic_token::jwt::JwtKeyError> {
        match self {
            SigningKind::Rs256Pubkey => JwtKey::from_rs256_pubkey_base64(value),
            SigningKind::Rs256Secret => JwtKey::from_rs256_secret_base64(value),
            SigningKind::Hs256Secret => JwtKey::from_hs256_secret_base64(value),
        }
    }
}

/// `[jwt]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JwtConfig {
    /// When set, a JWT's `iss` must be present and equal to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_bound_issuer: Option<String>,
    /// When set, a JWT's `aud` must be present and name one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_bound_audiences: Option<BTreeSet<String>>,
    /// Subjects whose tokens (JWT and biscuit alike) are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blacklist: Option<JwtBlacklistConfig>,
    /// The key JWTs are verified with. Absent, Attic's environment
    /// variables ([`SIGNING_VARIABLES`]) are read; absent there too, JWTs
    /// are not accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<JwtSigningConfig>,
}

/// `[jwt.blacklist]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JwtBlacklistConfig {
    /// Refused subjects, matched exactly.
    #[serde(default)]
    pub subjects: BTreeSet<String>,
}

/// `[jwt.signing]`: exactly one of the three keys, as in Attic.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JwtSigningConfig {
    /// Base64 of an RSA public key in PEM: verifies RS256 JWTs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rs256_pubkey_base64: Option<String>,
    /// Base64 of an RSA private key in PEM (PKCS#1 or PKCS#8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rs256_secret_base64: Option<String>,
    /// Base64 of an HMAC secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hs256_secret_base64: Option<String>,
}

impl std::fmt::Debug for JwtSigningConfig {
    /// Never prints the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigningConfig")
            .field("rs256_pubkey", &self.token_rs256_pubkey_base64.is_some())
            .field("rs256_secret", &self.token_rs256_secret_base64.is_some())
            .field("hs256_secret", &self.token_hs256_secret_base64.is_some())
            .finish()
    }
}

/// Where the biscuit root key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiscuitKeySource {
    /// `token-root-key`.
    Configured,
    /// Derived from the `[jwt.signing]` secret.
    DerivedFromJwtSecret,
    /// None: only an RS256 public key and no `token-root-key`.
    Unavailable,
}

/// The keys tokens are verified (and biscuit tokens made) with, resolved
/// from `token-root-key`, `[jwt]` and Attic's variables.
#[derive(Debug)]
pub struct TokenKeys {
    biscuit: Option<RootKey>,
    biscuit_source: BiscuitKeySource,
    /// The JWT verifier, when a signing key is configured.
    pub jwt: Option<JwtVerifier>,
    /// Where the JWT key came from, for messages: a config key or a
    /// variable's name.
    pub jwt_source: Option<&'static str>,
    /// `[jwt.blacklist] subjects`.
    pub blacklist: HashSet<String>,
}

impl TokenKeys {
    /// The biscuit root key, or why there is none.
    pub fn biscuit_root_key(&self) -> Result<&RootKey, ConfigError> {
        self.biscuit.as_ref().ok_or(ConfigError::Invalid {
            key: "token-root-key",
            reason: "unset, and the [jwt.signing] key is an RS256 public key, from which no \
                     biscuit root key can be derived: biscuit tokens can be neither made nor \
                     verified. Set token-root-key (e.g. the line `atticd` writes on a first \
                     start) to use them beside Attic's JWTs"
                .into(),
        })
    }

    /// The biscuit root key, owned: for what mints tokens beside
    /// `atticadm` (the OIDC exchange).
    pub fn into_biscuit_root_key(self) -> Result<RootKey, ConfigError> {
        self.biscuit_root_key()?;
        Ok(self.biscuit.expect("checked just above"))
    }

    /// Where the biscuit root key comes from.
    pub fn biscuit_source(&self) -> BiscuitKeySource {
        self.biscuit_source
    }

    /// One line per kind of token, for `--check-config`.
    pub fn describe(&self) -> Vec<String> {
        let biscuit = match self.biscuit_source {
            BiscuitKeySource::Configured => "tokens: biscuit tokens signed with token-root-key",
            BiscuitKeySource::DerivedFromJwtSecret => {
                "tokens: biscuit tokens signed with a key derived from the [jwt.signing] secret \
                 (token-root-key is unset)"
            }
            BiscuitKeySource::Unavailable => {
                "tokens: biscuit tokens cannot be made or verified: token-root-key is unset and \
                 the JWT key is an RS256 public key"
            }
        };
        let jwt = match (&self.jwt, self.jwt_source) {
            (Some(verifier), Some(source)) => format!(
                "tokens: Attic's JWTs ({}) verified with {source}",
                verifier.key().algorithm().as_str()
            ),
            _ => "tokens: Attic's JWTs are not accepted (no [jwt.signing] key)".to_owned(),
        };
        vec![biscuit.to_owned(), jwt]
    }
}

impl JwtConfig {
    /// Whether the section is absent (so a written config leaves it out).
    pub fn is_unset(&self) -> bool {
        self.token_bound_issuer.is_none()
            && self.token_bound_audiences.is_none()
            && self.blacklist.is_none()
            && self.signing.is_none()
    }

    /// Resolves every token key: `token_root_key` is the top-level key,
    /// `variable` reads the environment (injected for tests).
    pub fn resolve(
        &self,
        token_root_key: Option<&str>,
        variable: &dyn Fn(&str) -> Option<String>,
    ) -> Result<TokenKeys, ConfigError> {
        let configured_root = token_root_key
            .map(|key| {
                RootKey::parse(key).map_err(|e| ConfigError::Invalid {
                    key: "token-root-key",
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let jwt_key = self.signing_key(variable)?;
        let (biscuit, biscuit_source) = match (configured_root, &jwt_key) {
            (Some(root), _) => (Some(root), BiscuitKeySource::Configured),
            (None, Some((key, _))) => match key.derived_root_key() {
                Some(root) => (Some(root), BiscuitKeySource::DerivedFromJwtSecret),
                None => (None, BiscuitKeySource::Unavailable),
            },
            (None, None) => {
                return Err(ConfigError::Invalid {
                    key: "token-root-key",
                    reason: "no token key is configured: set token-root-key (atticd writes one \
                             on a first start), or Attic's [jwt.signing] key, or one of \
                             ATTIC_SERVER_TOKEN_RS256_PUBKEY_BASE64, \
                             ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64, \
                             ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64"
                        .into(),
                });
            }
        };
        let (jwt, jwt_source) = match jwt_key {
            Some((key, source)) => (
                Some(JwtVerifier::new(
                    key,
                    self.token_bound_issuer.clone(),
                    self.token_bound_audiences.clone(),
                )),
                Some(source),
            ),
            None => (None, None),
        };
        Ok(TokenKeys {
            biscuit,
            biscuit_source,
            jwt,
            jwt_source,
            blacklist: self
                .blacklist
                .iter()
                .flat_map(|b| b.subjects.iter().cloned())
                .collect(),
        })
    }

    /// The JWT key and where it came from: `[jwt.signing]` (exactly one
    /// key), else the first of Attic's variables that is set and non-empty.
    fn signing_key(
        &self,
        variable: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<(JwtKey, &'static str)>, ConfigError> {
        if let Some(signing) = &self.signing {
            let given: Vec<(SigningKind, &String)> = [
                (
                    SigningKind::Rs256Pubkey,
                    signing.token_rs256_pubkey_base64.as_ref(),
                ),
                (
                    SigningKind::Rs256Secret,
                    signing.token_rs256_secret_base64.as_ref(),
                ),
                (
                    SigningKind::Hs256Secret,
                    signing.token_hs256_secret_base64.as_ref(),
                ),
            ]
            .into_iter()
            .filter_map(|(kind, value)| value.map(|v| (kind, v)))
            .collect();
            let [(kind, value)] = given.as_slice() else {
                return Err(ConfigError::Invalid {
                    key: "jwt.signing",
                    reason: format!(
                        "set exactly one of token-rs256-pubkey-base64, token-rs256-secret-base64, \
                         token-hs256-secret-base64 (found {})",
                        given.len()
                    ),
                });
            };
            let key = kind.parse(value).map_err(|e| ConfigError::Invalid {
                key: kind.key_name(),
                reason: e.to_string(),
            })?;
            return Ok(Some((key, kind.key_name())));
        }
        for (name, kind) in SIGNING_VARIABLES {
            let Some(value) = variable(name).filter(|v| !v.is_empty()) else {
                continue;
            };
            let key = kind.parse(&value).map_err(|e| ConfigError::Invalid {
                key: kind.key_name(),
                reason: format!("from ${name}: {e}"),
            })?;
            return Ok(Some((key, name)));
        }
        Ok(None)
    }
}

/// Refuses Attic's old top-level `token-hs256-secret-base64`, as Attic
/// does, but with the lines to write instead.
pub(super) fn refuse_deprecated_keys(table: &toml::Table) -> Result<(), ConfigError> {
    if table.contains_key("token-hs256-secret-base64") {
        return Err(ConfigError::Invalid {
            key: "token-hs256-secret-base64",
            reason: "this key moved to the [jwt.signing] section: \
                     delete the top-level line and write, at the end of the file,\n\n\
                     [jwt.signing]\ntoken-hs256-secret-base64 = \"<the same value>\"\n"
                .into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use attic_token::jwt::mint::Signer;

    use super::super::test_support::{key_line, parse};
    use super::*;

    fn no_variables(_: &str) -> Option<String> {
        None
    }

    fn hs256_section(secret: &[u8]) -> String {
        format!(
            "[jwt.signing]\ntoken-hs256-secret-base64 = {:?}\n",
            Signer::Hs256(secret.to_vec()).secret_base64()
        )
    }

    #[test]
    fn an_attic_jwt_section_is_read_key_for_key() {
        let text = format!(
            "{}[jwt]\ntoken-bound-issuer = \"https://idp\"\ntoken-bound-audiences = [\"a\", \"b\"]\n\
             [jwt.blacklist]\nsubjects = [\"mallory\"]\n{}",
            key_line(),
            hs256_section(b"secret")
        );
        let config = parse(&text).expect("parses");
        assert_eq!(
            config.jwt.token_bound_issuer.as_deref(),
            Some("https://idp")
        );
        let keys = config
            .jwt
            .resolve(config.token_root_key.as_deref(), &no_variables)
            .expect("resolves");
        assert!(keys.jwt.is_some());
        assert!(keys.blacklist.contains("mallory"));
        assert_eq!(keys.biscuit_source(), BiscuitKeySource::Configured);
    }

    #[test]
    fn without_a_root_key_the_biscuit_key_is_derived_from_the_jwt_secret() {
        let config = parse(&hs256_section(b"secret")).expect("parses");
        let keys = config.jwt.resolve(None, &no_variables).expect("resolves");
        assert_eq!(
            keys.biscuit_source(),
            BiscuitKeySource::DerivedFromJwtSecret
        );
        let again = parse(&hs256_section(b"secret"))
            .expect("parses")
            .jwt
            .resolve(None, &no_variables)
            .expect("resolves");
        assert_eq!(
            keys.biscuit_root_key().expect("a key").public(),
            again.biscuit_root_key().expect("a key").public()
        );
    }

    #[test]
    fn a_public_key_alone_makes_no_biscuit_key_and_says_so() {
        let signer = Signer::generate_rs256();
        let text = format!(
            "[jwt.signing]\ntoken-rs256-pubkey-base64 = {:?}\n",
            signer.public_key_base64().expect("RSA")
        );
        let keys = parse(&text)
            .expect("parses")
            .jwt
            .resolve(None, &no_variables)
            .expect("resolves");
        assert_eq!(keys.biscuit_source(), BiscuitKeySource::Unavailable);
        let err = keys.biscuit_root_key().expect_err("no key");
        assert!(err.to_string().contains("token-root-key"), "{err}");
        assert!(
            keys.describe()[0].contains("cannot"),
            "{:?}",
            keys.describe()
        );
    }

    #[test]
    fn attic_variables_are_read_in_attics_order_when_the_section_is_absent() {
        let hs = Signer::Hs256(b"from env".to_vec()).secret_base64();
        let config = parse(&key_line()).expect("parses");
        let only_hs =
            |name: &str| (name == "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64").then(|| hs.clone());
        let keys = config
            .jwt
            .resolve(config.token_root_key.as_deref(), &only_hs)
            .expect("resolves");
        assert_eq!(
            keys.jwt_source,
            Some("ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64")
        );
        // An empty variable counts as unset; the pubkey comes first.
        let rsa = Signer::generate_rs256();
        let public = rsa.public_key_base64().expect("RSA");
        let both = |name: &str| match name {
            "ATTIC_SERVER_TOKEN_RS256_PUBKEY_BASE64" => Some(public.clone()),
            "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64" => Some(String::new()),
            _ => Some(hs.clone()),
        };
        let keys = config
            .jwt
            .resolve(config.token_root_key.as_deref(), &both)
            .expect("resolves");
        assert_eq!(
            keys.jwt_source,
            Some("ATTIC_SERVER_TOKEN_RS256_PUBKEY_BASE64")
        );
        // A bad value names the variable.
        let bad = |name: &str| {
            (name == "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64").then(|| "!!".to_owned())
        };
        let err = config.jwt.resolve(None, &bad).expect_err("bad variable");
        assert!(
            err.to_string()
                .contains("ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64"),
            "{err}"
        );
    }

    #[test]
    fn bad_jwt_settings_are_refused_with_the_key_named() {
        let cases = [
            ("[jwt.signing]\n", "jwt.signing"),
            (
                "[jwt.signing]\ntoken-hs256-secret-base64 = \"YQ==\"\ntoken-rs256-secret-base64 = \"YQ==\"\n",
                "exactly one",
            ),
            (
                "[jwt.signing]\ntoken-hs256-secret-base64 = \"not base64!\"\n",
                "jwt.signing.token-hs256-secret-base64",
            ),
            (
                "[jwt.signing]\ntoken-rs256-secret-base64 = \"YQ==\"\n",
                "jwt.signing.token-rs256-secret-base64",
            ),
            ("[jwt]\nbound-issuer = \"x\"\n", "bound-issuer"),
            ("[jwt.blacklist]\nsubject = [\"x\"]\n", "subject"),
        ];
        for (text, expected) in cases {
            let err = parse(&format!("{}{text}", key_line())).expect_err(text);
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn the_deprecated_top_level_secret_is_refused_with_the_fix() {
        let err = parse(&format!(
            "{}token-hs256-secret-base64 = \"YQ==\"\n",
            key_line()
        ))
        .expect_err("deprecated");
        let message = err.to_string();
        assert!(message.contains("[jwt.signing]"), "{message}");
        assert!(
            message.contains("token-hs256-secret-base64 = "),
            "{message}"
        );
    }

    #[test]
    fn no_key_at_all_is_refused() {
        let err = parse("listen = \"127.0.0.1:1\"\n").expect_err("no key");
        assert!(err.to_string().contains("token-root-key"), "{err}");
    }
}
