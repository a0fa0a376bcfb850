//! Realisations of content-addressed derivation outputs, per cache: which
//! path (an `object` row of the same cache) a derivation output produced,
//! keyed as Nix names it (`sha256:<hex>!out` for Nix 2.8–2.34,
//! `<drv>^out` for the build trace of Nix ≥ 2.35). A realisation goes with
//! its path: deleting the object (path delete, retention, quota eviction)
//! or the cache deletes it too, by foreign key.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Realisation {
    Table,
    Id,
    CacheId,
    DrvOutput,
    ObjectId,
    Signatures,
    DependentRealisations,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Cache {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Object {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Realisation::Table)
                    .col(
                        ColumnDef::new(Realisation::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Realisation::CacheId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Realisation::DrvOutput).text().not_null())
                    .col(
                        ColumnDef::new(Realisation::ObjectId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Realisation::Signatures).text().not_null())
                    .col(
                        ColumnDef::new(Realisation::DependentRealisations)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Realisation::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Realisation::Table, Realisation::CacheId)
                            .to(Cache::Table, Cache::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Realisation::Table, Realisation::ObjectId)
                            .to(Object::Table, Object::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_realisation_cache_drv_output")
                    .table(Realisation::Table)
                    .col(Realisation::CacheId)
                    .col(Realisation::DrvOutput)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The cascade from `object` looks realisations up by object.
        manager
            .create_index(
                Index::create()
                    .name("idx_realisation_object")
                    .table(Realisation::Table)
                    .col(Realisation::ObjectId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Realisation::Table).to_owned())
            .await
    }
}
