//! Caches: creating, configuring and destroying them, and finding them by
//! name.

use attic::cache::CacheName;
use attic::signing::SigningKey;
use attic::store_path::StoreDir;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::{Set, Unchanged},
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, SqlErr,
};

use super::entity::{build_log, cache, reserved_cache_name, staged_nar};
use super::ids::CacheId;
use super::json::Json;
use super::records::Cache;
use super::{Database, DatabaseError, now};
use crate::pull_through::Upstream;

/// A new cache's settings.
#[derive(Debug, Clone)]
pub struct NewCache {
    /// The name in URLs.
    pub name: CacheName,
    /// The key its narinfos are signed with.
    pub signing_key: SigningKey,
    /// Whether anyone may pull.
    pub is_public: bool,
    /// The store directory of its paths.
    pub store_dir: StoreDir,
    /// Substituter priority.
    pub priority: i32,
    /// Keys of upstream caches whose paths clients need not push.
    pub upstream_cache_key_names: Vec<String>,
}

/// Settings to change on a cache; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct CacheChanges {
    /// A new signing key.
    pub signing_key: Option<SigningKey>,
    /// Public or private.
    pub is_public: Option<bool>,
    /// The store directory.
    pub store_dir: Option<StoreDir>,
    /// Substituter priority.
    pub priority: Option<i32>,
    /// Upstream key names.
    pub upstream_cache_key_names: Option<Vec<String>>,
    /// Retention in seconds; `Some(None)` returns to the server default.
    pub retention_period: Option<Option<i64>>,
    /// Quota in bytes; `Some(None)` removes it.
    pub quota: Option<Option<u64>>,
    /// The upstreams it pulls through from, the whole list.
    pub upstreams: Option<Vec<Upstream>>,
}

/// A byte count as a BIGINT column holds it.
fn bigint(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Database {
    /// A live cache by name.
    pub async fn find_cache(&self, name: &CacheName) -> Result<Option<Cache>, DatabaseError> {
        cache::Entity::find()
            .filter(cache::Column::Name.eq(name.as_str()))
            .filter(cache::Column::DeletedAt.is_null())
            .one(&self.conn)
            .await?
            .map(Cache::try_from)
            .transpose()
    }

    /// Every live cache, by id (few rows: one per tenant cache).
    pub async fn live_caches(&self) -> Result<Vec<Cache>, DatabaseError> {
        cache::Entity::find()
            .filter(cache::Column::DeletedAt.is_null())
            .order_by_asc(cache::Column::Id)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(Cache::try_from)
            .collect()
    }

    /// Every destroyed cache whose rows remain, by id.
    pub async fn destroyed_caches(&self) -> Result<Vec<CacheId>, DatabaseError> {
        let ids: Vec<i64> = cache::Entity::find()
            .filter(cache::Column::DeletedAt.is_not_null())
            .order_by_asc(cache::Column::Id)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(|row| row.id)
            .collect();
        Ok(ids.into_iter().map(CacheId::new).collect())
    }

    /// Creates a cache, refusing a name already live or reserved. The
    /// unique index on live names decides, so of two racing creates exactly
    /// one wins; the reservation is checked after the insert, in the same
    /// transaction, so a destroy that reserves the name while this runs is
    /// either seen or waited for (its row holds the name in the index
    /// until it commits).
    pub async fn create_cache(&self, new: NewCache) -> Result<Cache, DatabaseError> {
        let txn = self.begin_write().await?;
        let created = cache::ActiveModel {
            name: Set(new.name.as_str().to_owned()),
            keypair: Set(new.signing_key.to_nix_secret()),
            is_public: Set(new.is_public),
            store_dir: Set(new.store_dir.as_str().to_owned()),
            priority: Set(new.priority),
            upstream_cache_key_names: Set(Json(new.upstream_cache_key_names).encode()),
            retention_period: Set(None),
            created_at: Set(now()),
            deleted_at: Set(None),
            upstreams: Set("[]".to_owned()),
            ..Default::default()
        }
        .insert(&txn)
        .await;
        let created = match created {
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Err(DatabaseError::CacheExists);
            }
            other => other?,
        };
        let reserved = reserved_cache_name::Entity::find_by_id(created.name.clone())
            .one(&txn)
            .await?;
        if reserved.is_some() {
            return Err(DatabaseError::CacheNameReserved);
        }
        txn.commit().await?;
        Cache::try_from(created)
    }

    /// Applies the settings given in `changes`; leaves the rest.
    pub async fn configure_cache(
        &self,
        cache: &Cache,
        changes: CacheChanges,
    ) -> Result<(), DatabaseError> {
        // The id unchanged, so that only the columns set below are written.
        let mut row = cache::ActiveModel {
            id: Unchanged(cache.id.get()),
            ..Default::default()
        };
        if let Some(key) = changes.signing_key {
            // A key set outright replaces every key at once: the one
            // before it stops signing now, as before rotations existed.
            row.keypair = Set(key.to_nix_secret());
            row.previous_keypair = Set(None);
            row.previous_key_until = Set(None);
        }
        if let Some(is_public) = changes.is_public {
            row.is_public = Set(is_public);
        }
        if let Some(store_dir) = changes.store_dir {
            row.store_dir = Set(store_dir.as_str().to_owned());
        }
        if let Some(priority) = changes.priority {
            row.priority = Set(priority);
        }
        if let Some(names) = changes.upstream_cache_key_names {
            row.upstream_cache_key_names = Set(Json(names).encode());
        }
        if let Some(retention_period) = changes.retention_period {
            row.retention_period = Set(retention_period);
        }
        if let Some(quota) = changes.quota {
            row.quota = Set(quota.map(bigint));
        }
        if let Some(upstreams) = changes.upstreams {
            let list: Vec<_> = upstreams.iter().map(Upstream::to_config).collect();
            row.upstreams = Set(Json(list).encode());
        }
        if row.is_changed() {
            row.update(&self.conn).await?;
        }
        Ok(())
    }

    /// Makes `new_key` the cache's signing key if its key is still the one
    /// `cache` holds, keeping that key as the previous one until
    /// `previous_signs_until` (Unix seconds; `None` drops it at once, as
    /// does a time already past). A previous key from an earlier rotation
    /// is forgotten: only the key replaced now overlaps.
    ///
    /// One conditional `UPDATE`, so two replicas rotating at once cannot
    /// both keep the same key as previous: the loser changes nothing and
    /// gets `false`, and should look at the cache again (it may also be
    /// gone).
    pub async fn replace_signing_key(
        &self,
        cache: &Cache,
        new_key: &SigningKey,
        previous_signs_until: Option<i64>,
    ) -> Result<bool, DatabaseError> {
        let current = cache.signing_key.to_nix_secret();
        let previous = previous_signs_until.map(|_| current.clone());
        let updated = cache::Entity::update_many()
            .col_expr(cache::Column::Keypair, Expr::value(new_key.to_nix_secret()))
            .col_expr(cache::Column::PreviousKeypair, Expr::value(previous))
            .col_expr(
                cache::Column::PreviousKeyUntil,
                Expr::value(previous_signs_until),
            )
            .filter(cache::Column::Id.eq(cache.id))
            .filter(cache::Column::Keypair.eq(current))
            .filter(cache::Column::DeletedAt.is_null())
            .exec(&self.conn)
            .await?;
        Ok(updated.rows_affected == 1)
    }

    /// Destroys a cache: it and its paths vanish at once; GC reclaims the
    /// data. With `reserve_name` (`soft-delete-caches`), no cache may take
    /// its name again.
    pub async fn destroy_cache(
        &self,
        cache: &Cache,
        reserve_name: bool,
    ) -> Result<(), DatabaseError> {
        let cache_id = cache.id;
        let txn = self.begin_write().await?;
        if reserve_name {
            reserved_cache_name::Entity::insert(reserved_cache_name::ActiveModel {
                name: Set(cache.name.as_str().to_owned()),
                reserved_at: Set(now()),
            })
            .on_conflict(
                OnConflict::column(reserved_cache_name::Column::Name)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        }
        cache::Entity::update_many()
            .col_expr(cache::Column::DeletedAt, now().into())
            .filter(cache::Column::Id.eq(cache_id))
            .exec(&txn)
            .await?;
        // Its logs and unclaimed `nix copy` uploads go with it; its paths'
        // data is the garbage collector's to reclaim.
        build_log::Entity::delete_many()
            .filter(build_log::Column::CacheId.eq(cache_id))
            .exec(&txn)
            .await?;
        staged_nar::Entity::delete_many()
            .filter(staged_nar::Column::CacheId.eq(cache_id))
            .exec(&txn)
            .await?;
        // Its pins protect nothing any more.
        super::pins::drop_pins(&txn, cache_id).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// What a cache holds, for the cache listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// How many paths.
    pub paths: u64,
    /// Stored bytes of their NARs (a NAR two caches hold counts in each).
    pub stored_bytes: u64,
    /// What its quota counts: those bytes, its build logs and its staged
    /// `nix copy` uploads.
    pub quota_used_bytes: u64,
    /// When a path it holds was last pushed (Unix seconds).
    pub last_push: Option<i64>,
}

impl Database {
    /// What each of these caches holds. Only the caches asked about are
    /// read, so a caller's listing costs nothing for caches it may not see.
    pub async fn cache_stats(
        &self,
        cache_ids: &[CacheId],
    ) -> Result<Vec<(CacheId, CacheStats)>, DatabaseError> {
        use sea_orm::sea_query::{Alias, Expr, ExprTrait};
        use sea_orm::{FromQueryResult, JoinType, QuerySelect, RelationTrait};

        use super::entity::{nar, object};
        #[derive(FromQueryResult)]
        struct Row {
            cache_id: i64,
            paths: i64,
            bytes: Option<i64>,
            last_push: Option<i64>,
        }
        let mut found = std::collections::HashMap::new();
        for batch in cache_ids.chunks(super::BATCH) {
            let rows = object::Entity::find()
                .select_only()
                .column(object::Column::CacheId)
                .join(JoinType::InnerJoin, object::Relation::Nar.def())
                .expr_as(
                    Expr::col((object::Entity, object::Column::Id))
                        .count()
                        .cast_as(Alias::new("BIGINT")),
                    "paths",
                )
                .expr_as(
                    Expr::col((nar::Entity, nar::Column::FileSize))
                        .sum()
                        .cast_as(Alias::new("BIGINT")),
                    "bytes",
                )
                .expr_as(
                    Expr::col((object::Entity, object::Column::CreatedAt)).max(),
                    "last_push",
                )
                .filter(object::Column::CacheId.is_in(batch.iter().copied()))
                .group_by(object::Column::CacheId)
                .into_model::<Row>()
                .all(&self.conn)
                .await?;
            for row in rows {
                found.insert(row.cache_id, row);
            }
        }
        let mut stats = Vec::with_capacity(cache_ids.len());
        for &id in cache_ids {
            let row = found.remove(&id.get());
            let count = |value: i64| u64::try_from(value).unwrap_or(0);
            stats.push((
                id,
                CacheStats {
                    paths: row.as_ref().map_or(0, |r| count(r.paths)),
                    stored_bytes: row.as_ref().and_then(|r| r.bytes).map_or(0, count),
                    quota_used_bytes: count(self.cache_usage(id).await?),
                    last_push: row.and_then(|r| r.last_push),
                },
            ));
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replacing_a_key_keeps_the_one_before_and_only_that_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let first = database.seed_cache("rotating").await;
        let second_key = SigningKey::generate("rotating-2").expect("randomness");
        assert!(
            database
                .replace_signing_key(&first, &second_key, Some(2000))
                .await
                .expect("replace")
        );
        let second = database
            .find_cache(&first.name)
            .await
            .expect("find")
            .expect("live");
        assert_eq!(second.signing_key.name(), "rotating-2");
        let previous = second.previous_key.as_ref().expect("a previous key");
        assert_eq!(
            previous.signing_key.public_key(),
            first.signing_key.public_key()
        );
        assert_eq!(previous.signs_until, 2000);

        // A change based on the key as it was before loses, changing nothing.
        let lost = SigningKey::generate("rotating-2").expect("randomness");
        assert!(
            !database
                .replace_signing_key(&first, &lost, Some(3000))
                .await
                .expect("replace")
        );

        // A second rotation during the overlap: the current key becomes the
        // previous one; the first is forgotten.
        let third_key = SigningKey::generate("rotating-3").expect("randomness");
        assert!(
            database
                .replace_signing_key(&second, &third_key, Some(4000))
                .await
                .expect("replace")
        );
        let third = database
            .find_cache(&first.name)
            .await
            .expect("find")
            .expect("live");
        assert_eq!(third.signing_key.name(), "rotating-3");
        let previous = third.previous_key.as_ref().expect("a previous key");
        assert_eq!(previous.signing_key.name(), "rotating-2");
        assert_eq!(previous.signs_until, 4000);

        // No overlap drops the previous key, and so does a key set outright.
        let fourth_key = SigningKey::generate("rotating-4").expect("randomness");
        assert!(
            database
                .replace_signing_key(&third, &fourth_key, None)
                .await
                .expect("replace")
        );
        let fourth = database
            .find_cache(&first.name)
            .await
            .expect("find")
            .expect("live");
        assert!(fourth.previous_key.is_none());
        let fifth_key = SigningKey::generate("rotating-5").expect("randomness");
        assert!(
            database
                .replace_signing_key(&fourth, &fifth_key, Some(9000))
                .await
                .expect("replace")
        );
        let fifth = database
            .find_cache(&first.name)
            .await
            .expect("find")
            .expect("live");
        database
            .configure_cache(
                &fifth,
                CacheChanges {
                    signing_key: Some(SigningKey::generate("given").expect("randomness")),
                    ..CacheChanges::default()
                },
            )
            .await
            .expect("configure");
        let given = database
            .find_cache(&first.name)
            .await
            .expect("find")
            .expect("live");
        assert_eq!(given.signing_key.name(), "given");
        assert!(given.previous_key.is_none());

        // A destroyed cache's key is not replaced.
        database
            .destroy_cache(&given, false)
            .await
            .expect("destroy");
        assert!(
            !database
                .replace_signing_key(&given, &fifth_key, Some(9000))
                .await
                .expect("replace")
        );
    }
}
