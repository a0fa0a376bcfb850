//! `.narinfo` files: the metadata of one store path in a binary cache.
//!
//! Every field Nix writes or reads is typed; fields we do not know are kept in
//! order and written back, so a narinfo passes through us unchanged. Output
//! follows Nix's own field order, which makes files byte-comparable.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::hash::{HashError, Sha256Hash};
use crate::signing::{self, PublicKey, SigningKey};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// Why a narinfo could not be parsed.
#[derive(Debug, Error)]
pub enum NarInfoError {
    /// A line that is not `Key: value`.
    #[error("narinfo line {line} is not of the form `Key: value`: {text:?}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A field Nix requires is absent.
    #[error("narinfo lacks the required field {0}")]
    MissingField(&'static str),
    /// A single-valued field appears twice.
    #[error("narinfo has the field {0} more than once")]
    DuplicateField(String),
    /// A number field that does not parse, or a zero NarSize.
    #[error("narinfo field {field} has an invalid number {value:?}")]
    BadNumber {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// A hash field that does not parse.
    #[error("narinfo field {field} has an invalid hash")]
    BadHash {
        /// The field.
        field: &'static str,
        /// Why.
        #[source]
        source: HashError,
    },
    /// A store path field that does not parse.
    #[error("narinfo field {field} has an invalid store path")]
    BadStorePath {
        /// The field.
        field: &'static str,
        /// Why.
        #[source]
        source: StorePathError,
    },
}

/// The contents of one `.narinfo` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The store directory `StorePath` lives in.
    pub store_dir: StoreDir,
    /// `StorePath`.
    pub store_path: StorePath,
    /// `URL`: where the (compressed) NAR is, relative to the cache.
    pub url: String,
    /// `Compression`: `none`, `zstd`, `xz`, ... Nix assumes `bzip2` when absent.
    pub compression: Option<String>,
    /// `FileHash`: SHA-256 of the file at `url`.
    pub file_hash: Option<Sha256Hash>,
    /// `FileSize`: length of the file at `url`.
    pub file_size: Option<u64>,
    /// `NarHash`: SHA-256 of the uncompressed NAR.
    pub nar_hash: Sha256Hash,
    /// `NarSize`: length of the uncompressed NAR; never zero.
    pub nar_size: u64,
    /// `References`: the store paths this one refers to.
    pub references: Vec<StorePath>,
    /// `Deriver`: the derivation that built it.
    pub deriver: Option<StorePath>,
    /// `System`: the platform it was built for.
    pub system: Option<String>,
    /// `Sig`: signatures over the fingerprint, `keyname:base64`.
    pub sigs: Vec<String>,
    /// `CA`: the content address, for content-addressed paths.
    pub ca: Option<String>,
    /// Fields this library does not know, in file order.
    pub extra_fields: Vec<(String, String)>,
}

impl NarInfo {
    /// The full store path, `/nix/store/<hash>-<name>`.
    pub fn full_store_path(&self) -> String {
        self.store_dir.display(&self.store_path)
    }

    /// The string that signatures cover:
    /// `1;<store path>;<nar hash>;<nar size>;<comma-separated references>`.
    pub fn fingerprint(&self) -> String {
        signing::fingerprint(
            &self.store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Adds a signature by `key`, replacing any earlier one by a key of the same name.
    pub fn sign(&mut self, key: &SigningKey) {
        let prefix = format!("{}:", key.name());
        self.sigs.retain(|sig| !sig.starts_with(&prefix));
        self.sigs.push(key.sign(self.fingerprint().as_bytes()));
    }

    /// Whether at least one signature verifies under one of `keys`.
    pub fn is_signed_by_any(&self, keys: &[PublicKey]) -> bool {
        let fingerprint = self.fingerprint();
        self.sigs.iter().any(|sig| {
            keys.iter()
                .any(|key| key.verify(fingerprint.as_bytes(), sig).is_ok())
        })
    }
}

impl FromStr for NarInfo {
    type Err = NarInfoError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut fields = Fields::default();
        // Nix splits on `\n` alone; `lines()` would also eat a `\r` before
        // it, so a value ending in `\r` would not survive a round trip.
        for (index, line) in text.split('\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(": ").ok_or_else(|| NarInfoError::BadLine {
                line: index + 1,
                text: line.to_owned(),
            })?;
            fields.set(key, value)?;
        }
        fields.into_narinfo()
    }
}

/// Raw values gathered while parsing, before any is interpreted.
#[derive(Default)]
struct Fields<'a> {
    store_path: Option<&'a str>,
    url: Option<&'a str>,
    compression: Option<&'a str>,
    file_hash: Option<&'a str>,
    file_size: Option<&'a str>,
    nar_hash: Option<&'a str>,
    nar_size: Option<&'a str>,
    references: Option<&'a str>,
    deriver: Option<&'a str>,
    system: Option<&'a str>,
    ca: Option<&'a str>,
    sigs: Vec<String>,
    extra_fields: Vec<(String, String)>,
}

impl<'a> Fields<'a> {
    fn set(&mut self, key: &str, value: &'a str) -> Result<(), NarInfoError> {
        let slot = match key {
            "StorePath" => &mut self.store_path,
            "URL" => &mut self.url,
            "Compression" => &mut self.compression,
            "FileHash" => &mut self.file_hash,
            "FileSize" => &mut self.file_size,
            "NarHash" => &mut self.nar_hash,
            "NarSize" => &mut self.nar_size,
            "References" => &mut self.references,
            "Deriver" => &mut self.deriver,
            "System" => &mut self.system,
            "CA" => &mut self.ca,
            "Sig" => {
                self.sigs.push(value.to_owned());
                return Ok(());
            }
            _ => {
                self.extra_fields.push((key.to_owned(), value.to_owned()));
                return Ok(());
            }
        };
        if slot.replace(value).is_some() {
            return Err(NarInfoError::DuplicateField(key.to_owned()));
        }
        Ok(())
    }

    fn into_narinfo(self) -> Result<NarInfo, NarInfoError> {
        let full_path = self
            .store_path
            .ok_or(NarInfoError::MissingField("StorePath"))?;
        let bad_path = |field| move |source| NarInfoError::BadStorePath { field, source };
        let (dir, _) = full_path
            .rsplit_once('/')
            .ok_or(StorePathError::BadBaseName(full_path.to_owned()))
            .map_err(bad_path("StorePath"))?;
        let store_dir = StoreDir::new(dir).map_err(bad_path("StorePath"))?;
        let store_path = store_dir
            .parse_path(full_path)
            .map_err(bad_path("StorePath"))?;

        let references = self
            .references
            .unwrap_or_default()
            .split_whitespace()
            .map(StorePath::from_base_name)
            .collect::<Result<_, _>>()
            .map_err(bad_path("References"))?;
        // Nix writes `unknown-deriver` where it has none.
        let deriver = match self.deriver {
            None | Some("unknown-deriver") => None,
            Some(d) => Some(StorePath::from_base_name(d).map_err(bad_path("Deriver"))?),
        };

        let nar_size =
            parse_number("NarSize", self.nar_size)?.ok_or(NarInfoError::MissingField("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::BadNumber {
                field: "NarSize",
                value: "0".to_owned(),
            });
        }

        Ok(NarInfo {
            store_dir,
            store_path,
            url: self
                .url
                .ok_or(NarInfoError::MissingField("URL"))?
                .to_owned(),
            compression: self.compression.map(str::to_owned),
            file_hash: parse_hash("FileHash", self.file_hash)?,
            file_size: parse_number("FileSize", self.file_size)?,
            nar_hash: parse_hash("NarHash", self.nar_hash)?
                .ok_or(NarInfoError::MissingField("NarHash"))?,
            nar_size,
            references,
            deriver,
            system: self.system.map(str::to_owned),
            sigs: self.sigs,
            ca: self.ca.map(str::to_owned),
            extra_fields: self.extra_fields,
        })
    }
}

fn parse_number(field: &'static str, value: Option<&str>) -> Result<Option<u64>, NarInfoError> {
    value
        .map(|v| {
            v.parse().map_err(|_| NarInfoError::BadNumber {
                field,
                value: v.to_owned(),
            })
        })
        .transpose()
}

fn parse_hash(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<Sha256Hash>, NarInfoError> {
    value
        .map(|v| {
            v.parse()
                .map_err(|source| NarInfoError::BadHash { field, source })
        })
        .transpose()
}

impl fmt::Display for NarInfo {
    /// Writes the narinfo in the order and form Nix does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.full_store_path())?;
        writeln!(f, "URL: {}", self.url)?;
        if let Some(compression) = &self.compression {
            writeln!(f, "Compression: {compression}")?;
        }
        if let Some(file_hash) = &self.file_hash {
            writeln!(f, "FileHash: {}", file_hash.to_typed_nix32())?;
        }
        if let Some(file_size) = self.file_size {
            writeln!(f, "FileSize: {file_size}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash.to_typed_nix32())?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        let references: Vec<String> = self.references.iter().map(StorePath::base_name).collect();
        writeln!(f, "References: {}", references.join(" "))?;
        if let Some(deriver) = &self.deriver {
            writeln!(f, "Deriver: {}", deriver.base_name())?;
        }
        if let Some(system) = &self.system {
            writeln!(f, "System: {system}")?;
        }
        for sig in &self.sigs {
            writeln!(f, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        for (key, value) in &self.extra_fields {
            writeln!(f, "{key}: {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Written by `nix copy --to file://...` (Nix 2.8).
    const FROM_NIX: &str = "StorePath: /nix/store/ywnwmg5zvmlcpvjwq2954829721gl7nd-top
URL: nar/06z1bfj6r23f1lcbg1xjm2js5ikqi29nlaqvl7nfapf0mmkj310f.nar.zst
Compression: zstd
FileHash: sha256:06z1bfj6r23f1lcbg1xjm2js5ikqi29nlaqvl7nfapf0mmkj310f
FileSize: 173
NarHash: sha256:0wa3dnpxybqbkdccfajfj76q6raxbzsjlqv005sr3p41p5zv3j6l
NarSize: 328
References: 0s10h3glzs5s1fa49zp2q9i9mmvjhdib-dep
Deriver: fg7jsybib5m71bxdm38l49ii7sc5rc3f-top.drv
Sig: test-1:rjJeL70muSrMMyh/qs+yywmBRDZaGc+0M8MpKD+PNChKmX55QXhBn+xMzK3O5KTUxbzGjyIAqa6Un5UHy3ojBQ==
";
    const NIX_PUBLIC_KEY: &str = "test-1:bR3j9av1ru5m5WjCqemfJlH+N+qGOfOunvH5M2XeZ6Y=";

    #[test]
    fn round_trips_a_narinfo_nix_wrote() {
        let info: NarInfo = FROM_NIX.parse().expect("Nix's narinfo parses");
        assert_eq!(info.store_path.name(), "top");
        assert_eq!(info.nar_size, 328);
        assert_eq!(info.references.len(), 1);
        assert_eq!(info.to_string(), FROM_NIX);
    }

    #[test]
    fn verifies_the_signature_nix_made() {
        let info: NarInfo = FROM_NIX.parse().expect("Nix's narinfo parses");
        let key: PublicKey = NIX_PUBLIC_KEY.parse().expect("Nix's key parses");
        assert!(info.is_signed_by_any(std::slice::from_ref(&key)));

        let mut tampered = info.clone();
        tampered.nar_size += 1;
        assert!(!tampered.is_signed_by_any(&[key]));
    }

    #[test]
    fn writes_empty_references_with_trailing_space_like_nix() {
        let text = FROM_NIX.replace(
            "References: 0s10h3glzs5s1fa49zp2q9i9mmvjhdib-dep",
            "References: ",
        );
        let info: NarInfo = text.parse().expect("parses");
        assert!(info.references.is_empty());
        assert!(info.to_string().contains("\nReferences: \n"));
    }

    #[test]
    fn keeps_unknown_fields() {
        let text = format!("{FROM_NIX}X-Future: something\n");
        let info: NarInfo = text.parse().expect("unknown fields are tolerated");
        assert_eq!(
            info.extra_fields,
            [("X-Future".to_owned(), "something".to_owned())]
        );
        assert_eq!(info.to_string(), text);
    }

    #[test]
    fn keeps_carriage_returns_as_nix_does() {
        // Found by fuzzing: a final line "Sig: x\r" with no newline.
        let text = format!("{FROM_NIX}Sig: x\r");
        let info: NarInfo = text.parse().expect("parses");
        assert_eq!(info.sigs.last().map(String::as_str), Some("x\r"));
        let again: NarInfo = info.to_string().parse().expect("parses");
        assert_eq!(again, info);
    }

    #[test]
    fn rejects_malformed_narinfos() {
        let cases = [
            FROM_NIX.replace("NarSize: 328", "NarSize: 0"),
            FROM_NIX.replace("NarSize: 328", "NarSize: lots"),
            FROM_NIX.replace("NarSize: 328\n", ""),
            FROM_NIX.replace("URL: ", "URL "),
            FROM_NIX.replace("NarHash: sha256:", "NarHash: md5:"),
            FROM_NIX.replace(
                "/nix/store/ywnwmg5zvmlcpvjwq2954829721gl7nd-top",
                "/nix/store/../etc",
            ),
            format!("{FROM_NIX}NarSize: 328\n"),
        ];
        for text in cases {
            assert!(text.parse::<NarInfo>().is_err(), "must reject:\n{text}");
        }
    }

    fn store_path() -> impl Strategy<Value = StorePath> {
        (
            proptest::collection::vec(any::<u8>(), 20),
            "[a-zA-Z0-9+._?=-]{1,40}",
        )
            .prop_filter_map("valid name", |(hash, name)| {
                let hash = crate::nix_base32::encode(&hash).parse().ok()?;
                StorePath::new(hash, &name).ok()
            })
    }

    /// A value free of line breaks, as every narinfo value is.
    fn value() -> impl Strategy<Value = String> {
        "[ -~]{0,60}"
    }

    fn narinfo() -> impl Strategy<Value = NarInfo> {
        (
            (store_path(), value(), proptest::option::of(value())),
            (
                proptest::option::of(any::<[u8; 32]>()),
                proptest::option::of(any::<u64>()),
                any::<[u8; 32]>(),
                1..u64::MAX,
            ),
            (
                proptest::collection::vec(store_path(), 0..5),
                proptest::option::of(store_path()),
                proptest::option::of(value()),
                proptest::collection::vec(value(), 0..3),
                proptest::option::of(value()),
            ),
        )
            .prop_map(
                |(
                    (store_path, url, compression),
                    (file_hash, file_size, nar_hash, nar_size),
                    rest,
                )| {
                    let (references, deriver, system, sigs, ca) = rest;
                    NarInfo {
                        store_dir: StoreDir::default(),
                        store_path,
                        url,
                        compression,
                        file_hash: file_hash.map(Sha256Hash::from_bytes),
                        file_size,
                        nar_hash: Sha256Hash::from_bytes(nar_hash),
                        nar_size,
                        references,
                        deriver,
                        system,
                        sigs,
                        ca,
                        extra_fields: Vec::new(),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn parse_of_serialise_is_identity(info in narinfo()) {
            let text = info.to_string();
            let parsed: NarInfo = text.parse().expect("our own narinfo parses");
            prop_assert_eq!(parsed, info);
        }
    }
}
