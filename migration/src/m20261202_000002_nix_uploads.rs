//! Pushing with Nix alone: NARs that `nix copy` uploaded before their
//! narinfo (`staged_nar`), and build logs (`build_log`).
//!
//! A staged NAR is in the global NAR table already (chunked, verified,
//! durable) but no path of any cache holds it: it is bound to the cache it
//! was uploaded to, under the file name Nix gave it, until a narinfo of
//! that cache claims it. Unclaimed ones are reclaimed after a grace period.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum StagedNar {
    Table,
    Id,
    CacheId,
    File,
    NarId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum BuildLog {
    Table,
    Id,
    CacheId,
    Drv,
    Size,
    Data,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Cache {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Nar {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(StagedNar::Table)
                    .col(
                        ColumnDef::new(StagedNar::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(StagedNar::CacheId).big_integer().not_null())
                    .col(ColumnDef::new(StagedNar::File).string().not_null())
                    .col(ColumnDef::new(StagedNar::NarId).big_integer().not_null())
                    .col(
                        ColumnDef::new(StagedNar::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(StagedNar::Table, StagedNar::CacheId)
                            .to(Cache::Table, Cache::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(StagedNar::Table, StagedNar::NarId)
                            .to(Nar::Table, Nar::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_staged_nar_cache_file")
                    .table(StagedNar::Table)
                    .col(StagedNar::CacheId)
                    .col(StagedNar::File)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_staged_nar_nar")
                    .table(StagedNar::Table)
                    .col(StagedNar::NarId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(BuildLog::Table)
                    .col(
                        ColumnDef::new(BuildLog::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(BuildLog::CacheId).big_integer().not_null())
                    .col(ColumnDef::new(BuildLog::Drv).string().not_null())
                    .col(ColumnDef::new(BuildLog::Size).big_integer().not_null())
                    .col(ColumnDef::new(BuildLog::Data).blob().not_null())
                    .col(ColumnDef::new(BuildLog::CreatedAt).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(BuildLog::Table, BuildLog::CacheId)
                            .to(Cache::Table, Cache::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_build_log_cache_drv")
                    .table(BuildLog::Table)
                    .col(BuildLog::CacheId)
                    .col(BuildLog::Drv)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(BuildLog::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(StagedNar::Table).to_owned())
            .await
    }
}
