//! Pins: named GC roots of a cache. Each pin keeps its last `keep` targets
//! (store paths the cache holds); the closure of every target, within the
//! same cache, is never expired by retention nor evicted by a quota.
//!
//! A closure is walked in SQL, by a recursive query over `object.references`
//! ([`pinned_closure`]), so the collector's own statements can leave pinned
//! paths out whatever the size of the closure.

use std::collections::HashMap;

use attic::pin::PinName;
use attic::store_path::StorePathHash;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DbBackend, EntityTrait, FromQueryResult, JoinType, QueryFilter,
    QueryOrder, QuerySelect, RelationTrait,
};

use super::entity::{nar, object, pin, pin_target};
use super::ids::{CacheId, PinId};
use super::records::corrupt;
use super::{Database, DatabaseError, now};

/// A pin and what it protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinRecord {
    /// Its row.
    pub id: PinId,
    /// Its name in the cache.
    pub name: PinName,
    /// How many of its latest targets it keeps.
    pub keep: u32,
    /// Its targets, latest first.
    pub targets: Vec<PinnedPath>,
}

/// One store path a pin points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedPath {
    /// The full store path.
    pub store_path: String,
    /// When it was pinned (Unix seconds).
    pub pinned_at: i64,
}

impl Database {
    /// Points the pin `name` of a cache at the path `hash` (creating the
    /// pin if needed), keeping its `keep` latest targets, this one
    /// included; re-pinning a target it has makes it the latest. `None`,
    /// changing nothing, when the cache does not hold the path.
    ///
    /// The pin row is upserted, so two replicas pinning the same new name
    /// at once both succeed, one after the other (PostgreSQL locks the row
    /// for the rest of the transaction).
    pub async fn pin_path(
        &self,
        cache_id: CacheId,
        name: &PinName,
        hash: &StorePathHash,
        keep: u32,
    ) -> Result<Option<PinRecord>, DatabaseError> {
        let txn = self.begin_write().await?;
        let Some(object) = object::Entity::find()
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(object::Column::StorePathHash.eq(hash.as_str()))
            .one(&txn)
            .await?
        else {
            return Ok(None);
        };
        let when = now();
        let keep_column = i32::try_from(keep).unwrap_or(i32::MAX);
        pin::Entity::insert(pin::ActiveModel {
            cache_id: Set(cache_id.get()),
            name: Set(name.as_str().to_owned()),
            keep: Set(keep_column),
            created_at: Set(when),
            updated_at: Set(when),
            ..Default::default()
        })
        .on_conflict(
            OnConflict::columns([pin::Column::CacheId, pin::Column::Name])
                .update_columns([pin::Column::Keep, pin::Column::UpdatedAt])
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        let row = pin::Entity::find()
            .filter(pin::Column::CacheId.eq(cache_id))
            .filter(pin::Column::Name.eq(name.as_str()))
            .one(&txn)
            .await?
            .ok_or_else(|| corrupt("pin", 0)("the pin just written is not found".to_owned()))?;
        pin_target::Entity::delete_many()
            .filter(pin_target::Column::PinId.eq(row.id))
            .filter(pin_target::Column::StorePathHash.eq(hash.as_str()))
            .exec(&txn)
            .await?;
        pin_target::Entity::insert(pin_target::ActiveModel {
            pin_id: Set(row.id),
            store_path_hash: Set(object.store_path_hash.clone()),
            store_path: Set(object.store_path.clone()),
            pinned_at: Set(when),
            ..Default::default()
        })
        .exec_without_returning(&txn)
        .await?;
        let kept: Vec<i64> = pin_target::Entity::find()
            .select_only()
            .column(pin_target::Column::Id)
            .filter(pin_target::Column::PinId.eq(row.id))
            .order_by_desc(pin_target::Column::Id)
            .limit(u64::from(keep))
            .into_tuple()
            .all(&txn)
            .await?;
        pin_target::Entity::delete_many()
            .filter(pin_target::Column::PinId.eq(row.id))
            .filter(pin_target::Column::Id.is_not_in(kept))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        let mut pins = self.pins_where(cache_id, Some(name)).await?;
        Ok(pins.pop())
    }

    /// A cache's pins, by name.
    pub async fn list_pins(&self, cache_id: CacheId) -> Result<Vec<PinRecord>, DatabaseError> {
        self.pins_where(cache_id, None).await
    }

    async fn pins_where(
        &self,
        cache_id: CacheId,
        name: Option<&PinName>,
    ) -> Result<Vec<PinRecord>, DatabaseError> {
        let mut query = pin::Entity::find().filter(pin::Column::CacheId.eq(cache_id));
        if let Some(name) = name {
            query = query.filter(pin::Column::Name.eq(name.as_str()));
        }
        let rows = query
            .order_by_asc(pin::Column::Name)
            .all(&self.conn)
            .await?;
        let mut targets: HashMap<i64, Vec<PinnedPath>> = HashMap::new();
        for target in pin_target::Entity::find()
            .filter(pin_target::Column::PinId.is_in(rows.iter().map(|p| p.id)))
            .order_by_desc(pin_target::Column::Id)
            .all(&self.conn)
            .await?
        {
            targets.entry(target.pin_id).or_default().push(PinnedPath {
                store_path: target.store_path,
                pinned_at: target.pinned_at,
            });
        }
        rows.into_iter()
            .map(|row| {
                let bad = corrupt("pin", row.id);
                Ok(PinRecord {
                    id: PinId::new(row.id),
                    name: row.name.parse().map_err(|e| bad(format!("name: {e}")))?,
                    keep: u32::try_from(row.keep).map_err(|_| bad(format!("keep {}", row.keep)))?,
                    targets: targets.remove(&row.id).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Removes a cache's pin; whether it had one of that name. What it
    /// protected is left to retention and quotas again.
    pub async fn remove_pin(
        &self,
        cache_id: CacheId,
        name: &PinName,
    ) -> Result<bool, DatabaseError> {
        let txn = self.begin_write().await?;
        let Some(row) = pin::Entity::find()
            .filter(pin::Column::CacheId.eq(cache_id))
            .filter(pin::Column::Name.eq(name.as_str()))
            .one(&txn)
            .await?
        else {
            return Ok(false);
        };
        pin_target::Entity::delete_many()
            .filter(pin_target::Column::PinId.eq(row.id))
            .exec(&txn)
            .await?;
        pin::Entity::delete_many()
            .filter(pin::Column::Id.eq(row.id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Stored bytes of the paths a cache's pins protect: the NARs of every
    /// target's closure within the cache, each path counted once.
    pub async fn pinned_usage(&self, cache_id: CacheId) -> Result<i64, DatabaseError> {
        #[derive(FromQueryResult)]
        struct Usage {
            bytes: Option<i64>,
        }
        let usage = object::Entity::find()
            .select_only()
            .join(JoinType::InnerJoin, object::Relation::Nar.def())
            .expr_as(
                Expr::col((nar::Entity, nar::Column::FileSize))
                    .sum()
                    .cast_as(Alias::new("BIGINT")),
                "bytes",
            )
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(Expr::cust(format!(
                "object.store_path IN ({})",
                pinned_closure(self.backend(), cache_id)
            )))
            .into_model::<Usage>()
            .one(&self.conn)
            .await?;
        Ok(usage.and_then(|u| u.bytes).unwrap_or(0))
    }
}

/// Deletes a cache's pins, inside the transaction that destroys it.
pub(super) async fn drop_pins(
    txn: &sea_orm::DatabaseTransaction,
    cache_id: CacheId,
) -> Result<(), sea_orm::DbErr> {
    let pins = sea_orm::sea_query::Query::select()
        .column(pin::Column::Id)
        .from(pin::Entity)
        .and_where(pin::Column::CacheId.eq(cache_id))
        .to_owned();
    pin_target::Entity::delete_many()
        .filter(pin_target::Column::PinId.in_subquery(pins))
        .exec(txn)
        .await?;
    pin::Entity::delete_many()
        .filter(pin::Column::CacheId.eq(cache_id))
        .exec(txn)
        .await?;
    Ok(())
}

/// A query of the store paths a cache's pins protect: every target and,
/// recursively, what the cache's paths on the way reference. `UNION`
/// drops what was seen, so a reference cycle ends the walk. The object
/// table is aliased `held`, so this can stand inside a statement on
/// `object`.
fn pinned_closure(backend: DbBackend, cache_id: CacheId) -> String {
    let targets = format!(
        "SELECT pin_target.store_path FROM pin_target \
         INNER JOIN pin ON pin.id = pin_target.pin_id WHERE pin.cache_id = {cache_id}"
    );
    let step = match backend {
        DbBackend::Postgres => format!(
            "SELECT reference.path FROM pinned_closure \
             INNER JOIN object AS held \
             ON held.cache_id = {cache_id} AND held.store_path = pinned_closure.path \
             CROSS JOIN LATERAL jsonb_array_elements_text(CAST(held.\"references\" AS jsonb)) \
             AS reference(path)"
        ),
        _ => format!(
            "SELECT reference.value FROM pinned_closure \
             INNER JOIN object AS held \
             ON held.cache_id = {cache_id} AND held.store_path = pinned_closure.path, \
             json_each(held.\"references\") AS reference WHERE reference.type = 'text'"
        ),
    };
    format!(
        "WITH RECURSIVE pinned_closure(path) AS ({targets} UNION {step}) \
         SELECT path FROM pinned_closure"
    )
}

/// A condition on `object`: no pin of its cache protects it.
pub(super) fn not_pinned(backend: DbBackend, cache_id: CacheId) -> Expr {
    Expr::cust(format!(
        "object.store_path NOT IN ({})",
        pinned_closure(backend, cache_id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::{NarId, ObjectId};

    fn store_path(n: u8) -> String {
        format!("/nix/store/{n:0>32}-p")
    }

    fn hash(n: u8) -> StorePathHash {
        format!("{n:0>32}").parse().expect("a store path hash")
    }

    fn name(text: &str) -> PinName {
        text.parse().expect("a pin name")
    }

    /// Path `n` of `cache`, on a NAR of its own (100 bytes stored) unless
    /// one is given, referencing `references`.
    async fn push(
        database: &Database,
        cache: CacheId,
        n: u8,
        nar: Option<NarId>,
        references: &[u8],
    ) -> ObjectId {
        let nar = match nar {
            Some(nar) => nar,
            None => database.seed_nar(&n.to_string(), 1).await,
        };
        let references: Vec<String> = references.iter().map(|&r| store_path(r)).collect();
        database
            .seed_path(
                cache,
                nar,
                (&format!("{n:0>32}"), &store_path(n)),
                &references,
                1,
            )
            .await
    }

    fn targets(pin: &PinRecord) -> Vec<String> {
        pin.targets.iter().map(|t| t.store_path.clone()).collect()
    }

    #[tokio::test]
    async fn repinning_keeps_the_latest_targets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let cache = database.seed_cache("team-a").await.id;
        for n in 1..=3 {
            push(&database, cache, n, None, &[]).await;
        }
        let release = name("release");
        for n in 1..=3 {
            database
                .pin_path(cache, &release, &hash(n), 2)
                .await
                .expect("pin")
                .expect("held");
        }
        let pins = database.list_pins(cache).await.expect("list");
        assert_eq!(pins.len(), 1);
        assert_eq!(pins[0].keep, 2);
        assert_eq!(targets(&pins[0]), [store_path(3), store_path(2)]);
        // Pinning a target again makes it the latest; keep 1 drops the rest.
        let pin = database
            .pin_path(cache, &release, &hash(2), 1)
            .await
            .expect("pin")
            .expect("held");
        assert_eq!(targets(&pin), [store_path(2)]);
    }

    #[tokio::test]
    async fn a_path_the_cache_lacks_is_not_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let cache = database.seed_cache("team-a").await.id;
        let other = database.seed_cache("team-b").await.id;
        push(&database, other, 1, None, &[]).await;
        let pinned = database
            .pin_path(cache, &name("release"), &hash(1), 1)
            .await
            .expect("pin");
        assert_eq!(pinned, None, "another cache holding it does not count");
        assert!(database.list_pins(cache).await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn a_pinned_closure_is_neither_expired_nor_evictable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let cache = database.seed_cache("team-a").await.id;
        let other = database.seed_cache("team-b").await.id;
        // 1 → 2 → 3 (and 3 references itself), 4 alone.
        push(&database, cache, 3, None, &[3]).await;
        push(&database, cache, 2, None, &[3]).await;
        push(&database, cache, 1, None, &[2]).await;
        let four = push(&database, cache, 4, None, &[]).await;
        let other_nar = database.seed_nar("other", 1).await;
        let other_root = push(&database, other, 1, Some(other_nar), &[]).await;
        database
            .pin_path(cache, &name("release"), &hash(1), 1)
            .await
            .expect("pin")
            .expect("held");

        let expired = database
            .expired_roots(cache, i64::MAX, 10)
            .await
            .expect("expired roots");
        assert_eq!(expired.iter().map(|o| o.id).collect::<Vec<_>>(), [four]);
        let evictable = database
            .evictable_objects(cache, 10)
            .await
            .expect("evictable");
        assert_eq!(
            evictable.iter().map(|o| o.object.id).collect::<Vec<_>>(),
            [four]
        );
        let cycle_breakers = database
            .least_recent_unpinned_objects(cache, 10)
            .await
            .expect("unpinned");
        assert_eq!(
            cycle_breakers.iter().map(|o| o.id).collect::<Vec<_>>(),
            [four]
        );
        assert_eq!(database.pinned_usage(cache).await.expect("usage"), 300);
        // Another cache's copy of the same path is not protected.
        let expired = database
            .expired_roots(other, i64::MAX, 10)
            .await
            .expect("expired roots");
        assert_eq!(
            expired.iter().map(|o| o.id).collect::<Vec<_>>(),
            [other_root]
        );

        // Unpinned, the closure may go again.
        assert!(
            database
                .remove_pin(cache, &name("release"))
                .await
                .expect("remove")
        );
        assert!(
            !database
                .remove_pin(cache, &name("release"))
                .await
                .expect("remove")
        );
        assert_eq!(database.pinned_usage(cache).await.expect("usage"), 0);
        let evictable = database
            .evictable_objects(cache, 10)
            .await
            .expect("evictable");
        assert_eq!(evictable.len(), 2, "the roots 1 and 4");
    }

    #[tokio::test]
    async fn destroying_a_cache_drops_its_pins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let cache = database.seed_cache("team-a").await;
        push(&database, cache.id, 1, None, &[]).await;
        database
            .pin_path(cache.id, &name("release"), &hash(1), 1)
            .await
            .expect("pin")
            .expect("held");
        database
            .destroy_cache(&cache, false)
            .await
            .expect("destroy");
        assert!(database.list_pins(cache.id).await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn deleting_a_path_leaves_other_caches_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let cache = database.seed_cache("team-a").await.id;
        let other = database.seed_cache("team-b").await.id;
        let nar = database.seed_nar("1", 1).await;
        push(&database, cache, 1, Some(nar), &[]).await;
        push(&database, other, 1, Some(nar), &[]).await;
        assert!(database.delete_path(cache, &hash(1)).await.expect("delete"));
        assert!(!database.delete_path(cache, &hash(1)).await.expect("again"));
        assert_eq!(
            database
                .find_missing_paths(cache, &[hash(1)])
                .await
                .expect("missing"),
            [hash(1)]
        );
        assert!(
            database
                .find_object(cache, &hash(1))
                .await
                .expect("find")
                .is_none()
        );
        assert!(
            database
                .find_object(other, &hash(1))
                .await
                .expect("find")
                .is_some()
        );
    }

    #[tokio::test]
    async fn cache_stats_count_only_the_caches_asked_about() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let cache = database.seed_cache("team-a").await.id;
        let empty = database.seed_cache("team-b").await.id;
        let other = database.seed_cache("other-x").await.id;
        push(&database, cache, 1, None, &[]).await;
        push(&database, cache, 2, None, &[]).await;
        push(&database, other, 3, None, &[]).await;
        let stats = database.cache_stats(&[cache, empty]).await.expect("stats");
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].0, cache);
        assert_eq!(stats[0].1.paths, 2);
        assert_eq!(stats[0].1.stored_bytes, 200);
        assert_eq!(stats[0].1.quota_used_bytes, 200);
        assert_eq!(stats[0].1.last_push, Some(1));
        assert_eq!(stats[1], (empty, crate::database::CacheStats::default()));
    }
}
