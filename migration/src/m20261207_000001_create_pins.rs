//! Pins: named GC roots of a cache. A pin keeps the last `keep` store paths
//! it was pointed at (its targets); the closure of each target, in that
//! cache, is never expired by retention nor evicted by a quota. Also an
//! index on `object (cache_id, store_path)`, by which a closure is walked.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Pin {
    Table,
    Id,
    CacheId,
    Name,
    Keep,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PinTarget {
    Table,
    Id,
    PinId,
    StorePathHash,
    StorePath,
    PinnedAt,
}

#[derive(DeriveIden)]
enum Cache {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Object {
    Table,
    CacheId,
    StorePath,
}

fn id(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Pin::Table)
                    .col(id(Pin::Id))
                    .col(ColumnDef::new(Pin::CacheId).big_integer().not_null())
                    .col(ColumnDef::new(Pin::Name).string().not_null())
                    .col(ColumnDef::new(Pin::Keep).integer().not_null())
                    .col(ColumnDef::new(Pin::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Pin::UpdatedAt).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(Pin::Table, Pin::CacheId)
                            .to(Cache::Table, Cache::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_pin_cache_name")
                    .table(Pin::Table)
                    .col(Pin::CacheId)
                    .col(Pin::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PinTarget::Table)
                    .col(id(PinTarget::Id))
                    .col(ColumnDef::new(PinTarget::PinId).big_integer().not_null())
                    .col(ColumnDef::new(PinTarget::StorePathHash).string().not_null())
                    .col(ColumnDef::new(PinTarget::StorePath).text().not_null())
                    .col(ColumnDef::new(PinTarget::PinnedAt).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(PinTarget::Table, PinTarget::PinId)
                            .to(Pin::Table, Pin::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_pin_target_pin")
                    .table(PinTarget::Table)
                    .col(PinTarget::PinId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_object_cache_path")
                    .table(Object::Table)
                    .col(Object::CacheId)
                    .col(Object::StorePath)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name("idx_object_cache_path").to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(PinTarget::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Pin::Table).to_owned())
            .await
    }
}
