//! What the database hands out: typed records built from rows, never the
//! rows themselves. A row that does not decode (a bad hash, key or JSON
//! list) is a [`DatabaseError::CorruptRow`] naming the table and the row.

use attic::cache::CacheName;
use attic::hash::Sha256Hash;
use attic::signing::SigningKey;
use attic::store_path::{StoreDir, StorePathHash};

use super::DatabaseError;
use super::entity::{cache, nar, object, pack, staged_nar};
use super::ids::{CacheId, NarId, ObjectId, StagedNarId};
use super::json::Json;
use crate::pack::{BlobState, PackId, PackKey, StoredCompression};
use crate::pull_through::Upstream;
use attic::api::v1::cache_config::UpstreamCacheConfig;

/// A live cache and its settings.
#[derive(Debug, Clone)]
pub struct Cache {
    /// Its row.
    pub id: CacheId,
    /// The name in URLs.
    pub name: CacheName,
    /// The key narinfos are signed with. Never leaves the server.
    pub signing_key: SigningKey,
    /// Whether anyone may pull.
    pub is_public: bool,
    /// The store directory of its paths.
    pub store_dir: StoreDir,
    /// Substituter priority.
    pub priority: i32,
    /// Keys of upstream caches whose paths clients need not push.
    pub upstream_cache_key_names: Vec<String>,
    /// Seconds to keep unread paths; `None` for the server default.
    pub retention_period: Option<i64>,
    /// Stored bytes allowed before GC evicts; `None` for no limit.
    pub quota: Option<u64>,
    /// The key it signed with before its last rotation, while (and after)
    /// it was to keep signing; see [`Cache::signing_keys`].
    pub previous_key: Option<PreviousKey>,
    /// The upstream caches it pulls missing paths through from, in
    /// priority order (before the server-wide ones).
    pub upstreams: Vec<Upstream>,
}

/// A cache's key from before its last rotation, and when it stops signing.
#[derive(Debug, Clone)]
pub struct PreviousKey {
    /// The key. Never leaves the server.
    pub signing_key: SigningKey,
    /// Unix second from which it signs nothing.
    pub signs_until: i64,
}

impl Cache {
    /// The previous key, if it still signs at `now` (Unix seconds): the
    /// overlap of a rotation ends at its `signs_until`, decided here at
    /// signing time so that no job has to end it.
    pub fn overlapping_key(&self, now: i64) -> Option<&PreviousKey> {
        self.previous_key
            .as_ref()
            .filter(|previous| now < previous.signs_until)
    }

    /// The keys a narinfo served at `now` is signed with: the current key,
    /// then the previous one during a rotation's overlap.
    pub fn signing_keys(&self, now: i64) -> Vec<&SigningKey> {
        std::iter::once(&self.signing_key)
            .chain(
                self.overlapping_key(now)
                    .map(|previous| &previous.signing_key),
            )
            .collect()
    }

    /// Drops from `signatures` (as an uploader sent them) any by a key
    /// of the previous key's name: after the overlap that key signs
    /// nothing here, so no signature of its name may be served. Signatures
    /// by the current key's name are replaced when the server signs.
    pub fn drop_previous_key_signatures(&self, signatures: &mut Vec<String>) {
        if let Some(previous) = &self.previous_key {
            let prefix = format!("{}:", previous.signing_key.name());
            signatures.retain(|sig| !sig.starts_with(&prefix));
        }
    }

    /// Until when (Unix seconds) a narinfo signed at `now` carries the
    /// right signatures: the end of the overlap if one is running, as a
    /// narinfo signed during it carries a signature the old key may no
    /// longer make after it; otherwise for as long as the keys stay.
    pub fn signatures_valid_until(&self, now: i64) -> Option<i64> {
        self.overlapping_key(now)
            .map(|previous| previous.signs_until)
    }
}

/// A path as one cache holds it.
#[derive(Debug, Clone)]
pub struct StoredPath {
    /// Its row.
    pub id: ObjectId,
    /// The cache holding it.
    pub cache_id: CacheId,
    /// The NAR of its content.
    pub nar_id: NarId,
    /// What its narinfo says besides the NAR.
    pub info: PathInfo,
}

/// What a path's narinfo says besides its NAR: the uploader's word,
/// checked where it entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The hash part of the store path.
    pub store_path_hash: StorePathHash,
    /// The full store path.
    pub store_path: String,
    /// Full paths it references.
    pub references: Vec<String>,
    /// Platform it was built for.
    pub system: Option<String>,
    /// Full path of its derivation.
    pub deriver: Option<String>,
    /// Signatures the uploader supplied.
    pub sigs: Vec<String>,
    /// Content address.
    pub ca: Option<String>,
}

/// A NAR in the global store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarRecord {
    /// Its row.
    pub id: NarId,
    /// SHA-256 of the NAR.
    pub nar_hash: Sha256Hash,
    /// Bytes of the NAR.
    pub nar_size: u64,
    /// Zstd when every chunk is a zstd frame (served concatenated).
    pub compression: StoredCompression,
    /// Bytes served in `compression`.
    pub file_size: u64,
    /// Whether it may be served.
    pub state: BlobState,
    /// The pack that is byte for byte its `.nar.zst`, when one is.
    pub pack_id: Option<PackId>,
}

/// A stored pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRecord {
    /// Its row.
    pub id: PackId,
    /// Its blob.
    pub key: PackKey,
    /// Bytes of the blob.
    pub size: u64,
    /// Whether it is being reclaimed.
    pub state: BlobState,
}

/// A NAR `nix copy` uploaded to a cache, awaiting the narinfo that claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedNar {
    /// Its row.
    pub id: StagedNarId,
    /// The NAR.
    pub nar_id: NarId,
    /// The file name Nix uploaded it as.
    pub file: String,
}

/// Turns a reason into the corrupt-row error of row `id` of `table`: every
/// record's decoding (here and in `chunks`, `logs`, `gc`, `inspect`) fails
/// through it.
pub(super) fn corrupt(table: &'static str, id: i64) -> impl Fn(String) -> DatabaseError {
    move |reason| DatabaseError::CorruptRow { table, id, reason }
}

/// A size column, which is never negative in a row we wrote.
pub(super) fn size(value: i64, what: &str) -> Result<u64, String> {
    u64::try_from(value).map_err(|_| format!("negative {what} {value}"))
}

impl TryFrom<cache::Model> for Cache {
    type Error = DatabaseError;

    fn try_from(row: cache::Model) -> Result<Self, Self::Error> {
        let bad = corrupt("cache", row.id);
        Ok(Self {
            id: CacheId::new(row.id),
            name: row.name.parse().map_err(|e| bad(format!("name: {e}")))?,
            signing_key: row
                .keypair
                .parse()
                .map_err(|e| bad(format!("keypair: {e}")))?,
            is_public: row.is_public,
            store_dir: StoreDir::new(&row.store_dir).map_err(|e| bad(format!("store_dir: {e}")))?,
            priority: row.priority,
            upstream_cache_key_names: Json::decode(&row.upstream_cache_key_names)
                .map_err(|e| bad(format!("upstream_cache_key_names: {e}")))?
                .0,
            retention_period: row.retention_period,
            quota: row
                .quota
                .map(|q| size(q, "quota"))
                .transpose()
                .map_err(&bad)?,
            previous_key: match (row.previous_keypair, row.previous_key_until) {
                (Some(keypair), Some(signs_until)) => Some(PreviousKey {
                    signing_key: keypair
                        .parse()
                        .map_err(|e| bad(format!("previous_keypair: {e}")))?,
                    signs_until,
                }),
                (None, None) => None,
                _ => {
                    return Err(bad(
                        "previous_keypair and previous_key_until must be set together".to_owned(),
                    ));
                }
            },
            upstreams: Json::<Vec<UpstreamCacheConfig>>::decode(&row.upstreams)
                .map_err(|e| bad(format!("upstreams: {e}")))
                .and_then(|Json(list)| {
                    list.iter()
                        .map(|u| Upstream::new(&u.url, &u.public_key))
                        .collect::<Result<_, _>>()
                        .map_err(|e| bad(format!("upstreams: {e}")))
                })?,
        })
    }
}

impl TryFrom<object::Model> for StoredPath {
    type Error = DatabaseError;

    fn try_from(row: object::Model) -> Result<Self, Self::Error> {
        let bad = corrupt("object", row.id);
        Ok(Self {
            id: ObjectId::new(row.id),
            cache_id: CacheId::new(row.cache_id),
            nar_id: NarId::new(row.nar_id),
            info: PathInfo {
                store_path_hash: row
                    .store_path_hash
                    .parse()
                    .map_err(|e| bad(format!("store_path_hash: {e}")))?,
                store_path: row.store_path,
                references: Json::decode(&row.references)
                    .map_err(|e| bad(format!("references: {e}")))?
                    .0,
                system: row.system,
                deriver: row.deriver,
                sigs: Json::decode(&row.sigs)
                    .map_err(|e| bad(format!("sigs: {e}")))?
                    .0,
                ca: row.ca,
            },
        })
    }
}

impl TryFrom<nar::Model> for NarRecord {
    type Error = DatabaseError;

    fn try_from(row: nar::Model) -> Result<Self, Self::Error> {
        let bad = corrupt("nar", row.id);
        Ok(Self {
            id: NarId::new(row.id),
            nar_hash: row
                .nar_hash
                .parse()
                .map_err(|e| bad(format!("nar_hash: {e}")))?,
            nar_size: size(row.nar_size, "nar_size").map_err(&bad)?,
            compression: row.compression.into(),
            file_size: size(row.file_size, "file_size").map_err(&bad)?,
            state: row.state.into(),
            pack_id: row.pack_id.map(PackId::new),
        })
    }
}

impl TryFrom<pack::Model> for PackRecord {
    type Error = DatabaseError;

    fn try_from(row: pack::Model) -> Result<Self, Self::Error> {
        let bad = corrupt("pack", row.id);
        Ok(Self {
            id: PackId::new(row.id),
            key: row.key.parse().map_err(|e| bad(format!("key: {e}")))?,
            size: size(row.size, "size").map_err(&bad)?,
            state: row.state.into(),
        })
    }
}

impl From<staged_nar::Model> for StagedNar {
    fn from(row: staged_nar::Model) -> Self {
        Self {
            id: StagedNarId::new(row.id),
            nar_id: NarId::new(row.nar_id),
            file: row.file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object_row() -> object::Model {
        object::Model {
            id: 7,
            cache_id: 1,
            nar_id: 2,
            store_path_hash: "0".repeat(32),
            store_path: format!("/nix/store/{}-x", "0".repeat(32)),
            references: "[]".into(),
            system: None,
            deriver: None,
            sigs: "[]".into(),
            ca: None,
            created_at: 0,
            last_accessed_at: None,
            created_by: None,
            nix_upload_file: None,
        }
    }

    fn cache_row(
        previous_keypair: Option<String>,
        previous_key_until: Option<i64>,
    ) -> cache::Model {
        cache::Model {
            id: 5,
            name: "demo".into(),
            keypair: SigningKey::generate("demo-2")
                .expect("randomness")
                .to_nix_secret(),
            is_public: false,
            store_dir: "/nix/store".into(),
            priority: 41,
            upstream_cache_key_names: "[]".into(),
            retention_period: None,
            created_at: 0,
            deleted_at: None,
            quota: None,
            previous_keypair,
            previous_key_until,
            upstreams: "[]".into(),
        }
    }

    fn names(keys: Vec<&SigningKey>) -> Vec<&str> {
        keys.into_iter().map(SigningKey::name).collect()
    }

    #[test]
    fn the_previous_key_signs_beside_the_current_one_until_its_overlap_ends() {
        let old = SigningKey::generate("demo-1").expect("randomness");
        let cache =
            Cache::try_from(cache_row(Some(old.to_nix_secret()), Some(1000))).expect("a valid row");
        assert_eq!(names(cache.signing_keys(999)), ["demo-2", "demo-1"]);
        assert_eq!(cache.signatures_valid_until(999), Some(1000));
        // From the stored end on, the old key signs nothing, and what is
        // signed then stays right for as long as the keys stay.
        assert_eq!(names(cache.signing_keys(1000)), ["demo-2"]);
        assert_eq!(cache.signatures_valid_until(1000), None);
        assert!(cache.overlapping_key(1000).is_none());
        assert_eq!(names(cache.signing_keys(5000)), ["demo-2"]);
    }

    #[test]
    fn a_cache_never_rotated_signs_with_its_key_alone() {
        let cache = Cache::try_from(cache_row(None, None)).expect("a valid row");
        assert_eq!(names(cache.signing_keys(0)), ["demo-2"]);
        assert_eq!(cache.signatures_valid_until(0), None);
    }

    #[test]
    fn a_previous_key_without_its_end_is_a_corrupt_row() {
        let old = SigningKey::generate("demo-1").expect("randomness");
        for row in [
            cache_row(Some(old.to_nix_secret()), None),
            cache_row(None, Some(1000)),
            cache_row(Some("not a key".into()), Some(1000)),
        ] {
            assert!(matches!(
                Cache::try_from(row),
                Err(DatabaseError::CorruptRow {
                    table: "cache",
                    id: 5,
                    ..
                })
            ));
        }
    }

    #[test]
    fn upstreams_round_trip_through_their_column_and_a_bad_one_is_corrupt() {
        let key = SigningKey::generate("up-1")
            .expect("randomness")
            .public_key();
        let upstream = Upstream::new("http://up.example/c", &key.to_string()).expect("valid");
        let row = cache::Model {
            upstreams: Json(vec![upstream.to_config()]).encode(),
            ..cache_row(None, None)
        };
        let cache = Cache::try_from(row).expect("a valid row");
        assert_eq!(cache.upstreams, [upstream]);
        let row = cache::Model {
            upstreams: r#"[{"url":"ftp://x","public_key":"k:AAAA"}]"#.into(),
            ..cache_row(None, None)
        };
        match Cache::try_from(row) {
            Err(DatabaseError::CorruptRow { reason, .. }) => {
                assert!(reason.starts_with("upstreams"), "{reason}")
            }
            other => panic!("expected a corrupt row, got {other:?}"),
        }
    }

    #[test]
    fn a_row_with_a_bad_json_list_is_a_corrupt_row_naming_it() {
        let row = object::Model {
            references: "not json".into(),
            ..object_row()
        };
        match StoredPath::try_from(row) {
            Err(DatabaseError::CorruptRow { table, id, reason }) => {
                assert_eq!((table, id), ("object", 7));
                assert!(reason.starts_with("references"), "{reason}");
            }
            other => panic!("expected a corrupt row, got {other:?}"),
        }
        assert!(StoredPath::try_from(object_row()).is_ok());
    }

    #[test]
    fn a_nar_row_with_a_bad_hash_or_size_is_corrupt() {
        let row = nar::Model {
            id: 3,
            nar_hash: "sha256:nothex".into(),
            nar_size: 1,
            compression: super::super::entity::StoredCompression::Zstd,
            file_size: 1,
            state: super::super::entity::BlobState::Valid,
            num_chunks: 1,
            created_at: 0,
            pack_id: None,
            last_referenced_at: None,
        };
        assert!(matches!(
            NarRecord::try_from(row.clone()),
            Err(DatabaseError::CorruptRow {
                table: "nar",
                id: 3,
                ..
            })
        ));
        let row = nar::Model {
            nar_hash: format!("sha256:{}", "0".repeat(64)),
            nar_size: -1,
            ..row
        };
        assert!(matches!(
            NarRecord::try_from(row),
            Err(DatabaseError::CorruptRow {
                table: "nar",
                id: 3,
                ..
            })
        ));
    }
}
