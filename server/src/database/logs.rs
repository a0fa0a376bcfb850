//! Build logs, one per (cache, derivation), compressed.

use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, QueryFilter};

use super::entity::build_log;
use super::{Database, now};

impl Database {
    /// Stores (or replaces) a derivation's log in a cache.
    pub async fn put_log(
        &self,
        cache_id: i64,
        drv: &str,
        size: u64,
        data: Vec<u8>,
    ) -> Result<(), DbErr> {
        let row = build_log::ActiveModel {
            cache_id: Set(cache_id),
            drv: Set(drv.to_owned()),
            size: Set(size as i64),
            data: Set(data),
            created_at: Set(now()),
            ..Default::default()
        };
        build_log::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([build_log::Column::CacheId, build_log::Column::Drv])
                    .update_columns([
                        build_log::Column::Size,
                        build_log::Column::Data,
                        build_log::Column::CreatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.conn)
            .await?;
        Ok(())
    }

    /// A derivation's log in a cache.
    pub async fn find_log(
        &self,
        cache_id: i64,
        drv: &str,
    ) -> Result<Option<build_log::Model>, DbErr> {
        build_log::Entity::find()
            .filter(build_log::Column::CacheId.eq(cache_id))
            .filter(build_log::Column::Drv.eq(drv))
            .one(&self.conn)
            .await
    }
}
