//! Realisations of content-addressed derivation outputs, one per (cache,
//! derivation output), each pointing at a path of the same cache: the row
//! holds the key, the uploader's signatures and Nix 2.8's dependent
//! realisations; the out path is the object's, so a realisation can never
//! name a path its cache does not hold. Deleting the object deletes the
//! realisation (a foreign key cascade), whichever way the path goes.

use std::collections::BTreeMap;

use attic::realisation::{DrvOutputId, Realisation};
use attic::store_path::StorePath;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, JoinType, QueryFilter, QuerySelect,
    RelationTrait, SqlErr,
};

use super::entity::{BlobState, nar, object, realisation};
use super::ids::CacheId;
use super::json::Json;
use super::records::corrupt;
use super::{Database, DatabaseError, now};

impl Database {
    /// Records (or replaces) a realisation in a cache. `false`, and nothing
    /// written, when the cache does not hold its out path whole: a
    /// realisation may only point at a path its cache serves.
    pub async fn put_realisation(
        &self,
        cache_id: CacheId,
        realisation: &Realisation,
    ) -> Result<bool, DatabaseError> {
        let txn = self.begin_write().await?;
        let out_path = &realisation.out_path;
        let found: Option<(i64, String)> = object::Entity::find()
            .select_only()
            .column(object::Column::Id)
            .column(object::Column::StorePath)
            .join(JoinType::InnerJoin, object::Relation::Nar.def())
            .filter(object::Column::CacheId.eq(cache_id))
            .filter(object::Column::StorePathHash.eq(out_path.hash().as_str()))
            .filter(nar::Column::State.eq(BlobState::Valid))
            .into_tuple()
            .one(&txn)
            .await?;
        let object_id = match found {
            Some((id, store_path)) if base_name(&store_path) == out_path.base_name() => id,
            _ => return Ok(false),
        };
        let row = realisation::ActiveModel {
            cache_id: Set(cache_id.get()),
            drv_output: Set(realisation.id.to_string()),
            object_id: Set(object_id),
            signatures: Set(Json(&realisation.signatures).encode()),
            dependent_realisations: Set(Json(&realisation.dependent_realisations).encode()),
            created_at: Set(now()),
            ..Default::default()
        };
        let inserted = realisation::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([realisation::Column::CacheId, realisation::Column::DrvOutput])
                    .update_columns([
                        realisation::Column::ObjectId,
                        realisation::Column::Signatures,
                        realisation::Column::DependentRealisations,
                        realisation::Column::CreatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await;
        match inserted {
            Ok(_) => {}
            // The path left the cache since it was looked up (PostgreSQL,
            // where another replica's delete need not wait for us).
            Err(e) if is_foreign_key_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        txn.commit().await?;
        Ok(true)
    }

    /// A cache's realisation of a derivation output, if its out path is
    /// still held whole (a damaged NAR hides it, as it hides the path).
    pub async fn find_realisation(
        &self,
        cache_id: CacheId,
        id: &DrvOutputId,
    ) -> Result<Option<Realisation>, DatabaseError> {
        let found = realisation::Entity::find()
            .find_also_related(object::Entity)
            .join(JoinType::InnerJoin, object::Relation::Nar.def())
            .filter(realisation::Column::CacheId.eq(cache_id))
            .filter(realisation::Column::DrvOutput.eq(id.to_string()))
            .filter(nar::Column::State.eq(BlobState::Valid))
            .one(&self.conn)
            .await?;
        let Some((row, Some(object))) = found else {
            return Ok(None);
        };
        let bad = corrupt("realisation", row.id);
        Ok(Some(Realisation {
            id: row
                .drv_output
                .parse()
                .map_err(|e| bad(format!("drv_output: {e}")))?,
            out_path: StorePath::from_base_name(base_name(&object.store_path))
                .map_err(|e| bad(format!("its object's store_path: {e}")))?,
            signatures: Json::<Vec<String>>::decode(&row.signatures)
                .map_err(|e| bad(format!("signatures: {e}")))?
                .0,
            dependent_realisations: Json::<BTreeMap<String, String>>::decode(
                &row.dependent_realisations,
            )
            .map_err(|e| bad(format!("dependent_realisations: {e}")))?
            .0,
        }))
    }
}

/// The last component of a full store path.
fn base_name(store_path: &str) -> &str {
    store_path.rsplit('/').next().unwrap_or(store_path)
}

fn is_foreign_key_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_)))
}
