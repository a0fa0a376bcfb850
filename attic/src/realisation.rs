//! Realisations: which store path an output of a content-addressed
//! derivation turned out to be, as Nix keeps them in a binary cache.
//!
//! Two generations of the protocol name and shape them differently:
//! - Nix 2.8–2.34 (`ca-derivations`): `realisations/<drv hash>!<output>.doi`,
//!   keyed by the derivation's hash modulo (`sha256:<base16>`), a JSON
//!   object `{id, outPath, signatures, dependentRealisations}`; signatures
//!   are `name:base64` strings over `{"dependentRealisations":…,"id":…,
//!   "outPath":…}` (Nix's `Realisation::fingerprint`, keys sorted, compact).
//! - Nix ≥ 2.35 (the "build trace"): `build-trace-v2/<drv>/<output>.doi`,
//!   keyed by the resolved derivation's store path, the file holding only
//!   the value `{outPath, signatures}`; signatures are `{keyName, sig}`
//!   objects over `{"key":{"drvPath":…,"outputName":…},"value":{"outPath":…}}`.
//!
//! The key is in the URL, so a server can serve either without knowing how
//! Nix computes it. Out paths are base names (`<hash>-<name>`) in both.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::signing::SigningKey;
use crate::store_path::{StorePath, StorePathError, validate_name};

/// The suffix of a realisation's file name.
pub const REALISATION_SUFFIX: &str = ".doi";

/// Why a realisation's key or body is refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RealisationError {
    /// A key that is neither `sha256:<64 hex>!<output>` nor
    /// `<drv base name>^<output>`.
    #[error("{0:?} is not a derivation output id (sha256:<base16 hash>!<output>)")]
    BadId(String),
    /// An output name Nix would not accept.
    #[error("output name {0:?} is invalid")]
    BadOutputName(String),
    /// A derivation path that is not a `.drv` store path base name.
    #[error("{0:?} is not a derivation's store path base name")]
    BadDerivation(String),
    /// A body that is not the JSON Nix writes.
    #[error("the realisation is not valid JSON of Nix's shape: {0}")]
    BadJson(String),
    /// The body names another key than its URL.
    #[error("the realisation's id {body:?} is not the one its URL names, {url:?}")]
    IdMismatch {
        /// The id in the body.
        body: String,
        /// The id in the URL.
        url: String,
    },
    /// `outPath` (or a dependent's path) is not a store path base name.
    #[error("{0}")]
    BadPath(#[from] StorePathError),
    /// A signature with a line break or other control character, or empty.
    #[error("a signature must be non-empty `name:base64` without control characters")]
    BadSignature,
}

/// Which derivation output a realisation is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DrvOutputId {
    /// Nix 2.8–2.34: the derivation's hash modulo, `sha256:<64 hex>`.
    DrvHash {
        /// `sha256:<64 lowercase hex>`.
        drv_hash: String,
        /// The output's name (`out`, `dev`, …).
        output: String,
    },
    /// Nix ≥ 2.35: the resolved derivation's store path.
    DrvPath {
        /// The derivation, `<hash>-<name>.drv`.
        drv: StorePath,
        /// The output's name.
        output: String,
    },
}

fn check_output_name(output: &str) -> Result<(), RealisationError> {
    validate_name(output).map_err(|_| RealisationError::BadOutputName(output.to_owned()))
}

impl DrvOutputId {
    /// Parses Nix 2.8's file name `sha256:<hex>!<output>.doi` (the `.doi`
    /// already taken off).
    pub fn parse_drv_hash(id: &str) -> Result<Self, RealisationError> {
        let bad = || RealisationError::BadId(id.to_owned());
        let (hash, output) = id.split_once('!').ok_or_else(bad)?;
        let hex = hash.strip_prefix("sha256:").ok_or_else(bad)?;
        let is_hex = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_hex {
            return Err(bad());
        }
        check_output_name(output)?;
        Ok(Self::DrvHash {
            drv_hash: hash.to_owned(),
            output: output.to_owned(),
        })
    }

    /// Parses Nix 2.35's `<drv base name>` and `<output>` path segments.
    pub fn parse_drv_path(drv: &str, output: &str) -> Result<Self, RealisationError> {
        let bad = || RealisationError::BadDerivation(drv.to_owned());
        if !drv.ends_with(".drv") {
            return Err(bad());
        }
        let drv = StorePath::from_base_name(drv).map_err(|_| bad())?;
        check_output_name(output)?;
        Ok(Self::DrvPath {
            drv,
            output: output.to_owned(),
        })
    }

    /// The output's name.
    pub fn output(&self) -> &str {
        match self {
            Self::DrvHash { output, .. } | Self::DrvPath { output, .. } => output,
        }
    }
}

/// Nix's own string forms: `sha256:<hex>!<output>` (2.8) and
/// `<drv base name>^<output>` (2.35's `DrvOutput::to_string`).
impl fmt::Display for DrvOutputId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DrvHash { drv_hash, output } => write!(f, "{drv_hash}!{output}"),
            Self::DrvPath { drv, output } => write!(f, "{}^{output}", drv.base_name()),
        }
    }
}

impl FromStr for DrvOutputId {
    type Err = RealisationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rsplit_once('^') {
            Some((drv, output)) if !s.contains('!') => Self::parse_drv_path(drv, output),
            _ => Self::parse_drv_hash(s),
        }
    }
}

/// A realisation: the output `id` is the store path `out_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realisation {
    /// The derivation output.
    pub id: DrvOutputId,
    /// The store path it produced.
    pub out_path: StorePath,
    /// `name:base64` signatures over [`Realisation::fingerprint`].
    pub signatures: Vec<String>,
    /// Nix 2.8's realisations of the derivation's inputs (id → out path
    /// base name), part of what is signed; always empty for the build trace.
    pub dependent_realisations: BTreeMap<String, String>,
}

/// Nix 2.8's JSON, fields in the order Nix (nlohmann's sorted map) writes
/// them, so a fingerprint is byte for byte Nix's.
#[derive(Serialize, Deserialize)]
struct DrvHashJson {
    #[serde(rename = "dependentRealisations", default)]
    dependent_realisations: BTreeMap<String, String>,
    id: String,
    #[serde(rename = "outPath")]
    out_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signatures: Option<Vec<String>>,
}

/// A build trace signature: Nix ≥ 2.35 writes objects, and reads the older
/// `name:base64` strings too.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TraceSignature {
    Object {
        #[serde(rename = "keyName")]
        key_name: String,
        sig: String,
    },
    Text(String),
}

/// The value of a build trace entry, as its `.doi` file holds it.
#[derive(Serialize, Deserialize)]
struct TraceValueJson {
    #[serde(rename = "outPath")]
    out_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signatures: Option<Vec<TraceSignature>>,
}

#[derive(Serialize)]
struct TraceKeyJson<'a> {
    #[serde(rename = "drvPath")]
    drv_path: String,
    #[serde(rename = "outputName")]
    output_name: &'a str,
}

#[derive(Serialize)]
struct TraceFingerprint<'a> {
    key: TraceKeyJson<'a>,
    value: TraceValueJson,
}

fn check_signature(sig: &str) -> Result<(), RealisationError> {
    if sig.is_empty() || !sig.contains(':') || sig.chars().any(char::is_control) {
        return Err(RealisationError::BadSignature);
    }
    Ok(())
}

impl Realisation {
    /// Parses the body Nix uploads for `id`: for a 2.8 id the whole
    /// realisation, whose own `id` must be `id`; for a build trace id the
    /// value alone.
    pub fn parse_upload(id: DrvOutputId, body: &[u8]) -> Result<Self, RealisationError> {
        let json_error = |e: serde_json::Error| RealisationError::BadJson(e.to_string());
        let (out_path, signatures, dependent_realisations) = match &id {
            DrvOutputId::DrvHash { .. } => {
                let json: DrvHashJson = serde_json::from_slice(body).map_err(json_error)?;
                if json.id != id.to_string() {
                    return Err(RealisationError::IdMismatch {
                        body: json.id,
                        url: id.to_string(),
                    });
                }
                for (dependent, path) in &json.dependent_realisations {
                    DrvOutputId::parse_drv_hash(dependent)?;
                    StorePath::from_base_name(path)?;
                }
                (
                    json.out_path,
                    json.signatures.unwrap_or_default(),
                    json.dependent_realisations,
                )
            }
            DrvOutputId::DrvPath { .. } => {
                let json: TraceValueJson = serde_json::from_slice(body).map_err(json_error)?;
                let signatures = (json.signatures.unwrap_or_default().into_iter())
                    .map(|sig| match sig {
                        TraceSignature::Object { key_name, sig } => format!("{key_name}:{sig}"),
                        TraceSignature::Text(text) => text,
                    })
                    .collect();
                (json.out_path, signatures, BTreeMap::new())
            }
        };
        for sig in &signatures {
            check_signature(sig)?;
        }
        Ok(Self {
            id,
            out_path: StorePath::from_base_name(&out_path)?,
            signatures,
            dependent_realisations,
        })
    }

    /// What a signature signs, exactly as Nix computes it for this
    /// generation of the protocol.
    pub fn fingerprint(&self) -> String {
        let text = match &self.id {
            DrvOutputId::DrvHash { .. } => serde_json::to_string(&DrvHashJson {
                dependent_realisations: self.dependent_realisations.clone(),
                id: self.id.to_string(),
                out_path: self.out_path.base_name(),
                signatures: None,
            }),
            DrvOutputId::DrvPath { drv, output } => serde_json::to_string(&TraceFingerprint {
                key: TraceKeyJson {
                    drv_path: drv.base_name(),
                    output_name: output,
                },
                value: TraceValueJson {
                    out_path: self.out_path.base_name(),
                    signatures: None,
                },
            }),
        };
        text.expect("plain strings serialise to JSON")
    }

    /// Adds a signature by `key`, replacing any earlier one by a key of the
    /// same name.
    pub fn sign(&mut self, key: &SigningKey) {
        let prefix = format!("{}:", key.name());
        self.signatures.retain(|sig| !sig.starts_with(&prefix));
        let signature = key.sign(self.fingerprint().as_bytes());
        self.signatures.push(signature);
    }

    /// The `.doi` file Nix reads: the whole realisation for a 2.8 id, the
    /// value alone for a build trace id. Signatures sorted, as Nix's set
    /// writes them.
    pub fn to_doi(&self) -> String {
        let mut signatures = self.signatures.clone();
        signatures.sort();
        let text = match &self.id {
            DrvOutputId::DrvHash { .. } => serde_json::to_string(&DrvHashJson {
                dependent_realisations: self.dependent_realisations.clone(),
                id: self.id.to_string(),
                out_path: self.out_path.base_name(),
                signatures: Some(signatures),
            }),
            DrvOutputId::DrvPath { .. } => serde_json::to_string(&TraceValueJson {
                out_path: self.out_path.base_name(),
                signatures: Some(
                    signatures
                        .into_iter()
                        .map(|sig| match sig.split_once(':') {
                            Some((key_name, sig)) => TraceSignature::Object {
                                key_name: key_name.to_owned(),
                                sig: sig.to_owned(),
                            },
                            None => TraceSignature::Text(sig),
                        })
                        .collect(),
                ),
            }),
        };
        text.expect("plain strings serialise to JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "sha256:133e4cb7d89e98dcc717d8e6d90ae77974f3b20c017f22bb002b3c30e142d190";
    const OUT: &str = "5hrggx6bz26fjiwkgg2w5zmd3dk2zmwz-ca-probe";
    const DRV: &str = "grqags15fbbhmi8dhb531zzq2z103qf8-ca-probe.drv";

    /// What Nix 2.8's `nix copy --to file://` wrote for a CA derivation.
    fn nix_2_8_body() -> String {
        format!(
            r#"{{"dependentRealisations":{{}},"id":"{HASH}!out","outPath":"{OUT}","signatures":[]}}"#
        )
    }

    #[test]
    fn parses_what_nix_2_8_uploads_and_writes_it_back_the_same() {
        let id = DrvOutputId::parse_drv_hash(&format!("{HASH}!out")).expect("id");
        let realisation = Realisation::parse_upload(id, nix_2_8_body().as_bytes()).expect("body");
        assert_eq!(realisation.out_path.base_name(), OUT);
        assert_eq!(realisation.to_doi(), nix_2_8_body());
    }

    #[test]
    fn dependent_realisations_round_trip_byte_for_byte() {
        // What Nix 2.8 wrote for a CA derivation built from another.
        let body = r#"{"dependentRealisations":{"sha256:5e10de5d42730e6036174b9f53244ab9bd41353680b86882ba37977ef5b4b380!out":"hprkxdydlahf99zc4im34adz47pk8wgv-ca-a"},"id":"sha256:6291a977cdae3db05a97ac061a9a74aa412cbcdb0868d37160357d9025831950!out","outPath":"8dpkqbfh3dpyplba3i17lxadykj9dy25-ca-b","signatures":[]}"#;
        let id = DrvOutputId::parse_drv_hash(
            "sha256:6291a977cdae3db05a97ac061a9a74aa412cbcdb0868d37160357d9025831950!out",
        )
        .expect("id");
        let realisation = Realisation::parse_upload(id, body.as_bytes()).expect("body");
        assert_eq!(realisation.to_doi(), body);
        assert!(
            realisation
                .fingerprint()
                .starts_with(r#"{"dependentRealisations":{"sha256:5e10"#)
        );
    }

    #[test]
    fn fingerprint_is_nix_2_8_json_without_signatures() {
        let id = DrvOutputId::parse_drv_hash(&format!("{HASH}!out")).expect("id");
        let realisation = Realisation::parse_upload(id, nix_2_8_body().as_bytes()).expect("body");
        assert_eq!(
            realisation.fingerprint(),
            format!(r#"{{"dependentRealisations":{{}},"id":"{HASH}!out","outPath":"{OUT}"}}"#)
        );
    }

    #[test]
    fn build_trace_fingerprint_and_value_are_nix_2_35s() {
        let id = DrvOutputId::parse_drv_path(DRV, "out").expect("id");
        let body =
            format!(r#"{{"outPath":"{OUT}","signatures":[{{"keyName":"a-1","sig":"AA=="}}]}}"#);
        let realisation = Realisation::parse_upload(id, body.as_bytes()).expect("body");
        assert_eq!(realisation.signatures, vec!["a-1:AA==".to_owned()]);
        assert_eq!(
            realisation.fingerprint(),
            format!(
                r#"{{"key":{{"drvPath":"{DRV}","outputName":"out"}},"value":{{"outPath":"{OUT}"}}}}"#
            )
        );
        assert_eq!(realisation.to_doi(), body);
    }

    #[test]
    fn signing_verifies_under_the_key_and_replaces_its_own_earlier_signature() {
        let key = SigningKey::generate("cache-1").expect("key");
        let id = DrvOutputId::parse_drv_hash(&format!("{HASH}!out")).expect("id");
        let mut realisation =
            Realisation::parse_upload(id, nix_2_8_body().as_bytes()).expect("body");
        realisation.signatures.push("cache-1:forged".to_owned());
        realisation.sign(&key);
        assert_eq!(realisation.signatures.len(), 1);
        let fingerprint = realisation.fingerprint();
        key.public_key()
            .verify(fingerprint.as_bytes(), &realisation.signatures[0])
            .expect("the signature verifies");
    }

    #[test]
    fn ids_round_trip_through_their_string_forms() {
        for text in [format!("{HASH}!out"), format!("{DRV}^dev")] {
            let id: DrvOutputId = text.parse().expect("id");
            assert_eq!(id.to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_ids_and_bodies() {
        for bad in [
            "sha256:xyz!out",
            "md5:00!out",
            &format!("{HASH}!"),
            &format!("{HASH}!a/b"),
            &format!("{HASH}out"),
        ] {
            assert!(DrvOutputId::parse_drv_hash(bad).is_err(), "{bad}");
        }
        assert!(DrvOutputId::parse_drv_path(OUT, "out").is_err());
        let id = DrvOutputId::parse_drv_hash(&format!("{HASH}!dev")).expect("id");
        assert!(matches!(
            Realisation::parse_upload(id.clone(), nix_2_8_body().as_bytes()),
            Err(RealisationError::IdMismatch { .. })
        ));
        let body = format!(r#"{{"id":"{HASH}!dev","outPath":"../etc"}}"#);
        assert!(Realisation::parse_upload(id.clone(), body.as_bytes()).is_err());
        let body = format!(r#"{{"id":"{HASH}!dev","outPath":"{OUT}","signatures":["a:\nb"]}}"#);
        assert_eq!(
            Realisation::parse_upload(id, body.as_bytes()),
            Err(RealisationError::BadSignature)
        );
    }
}
