//! The `.ls` listing of each NAR (the JSON directory listing Nix's binary
//! caches keep beside a NAR), produced from the NAR as it is uploaded and
//! kept zstd-compressed. One per NAR, however many caches hold it; it goes
//! with its NAR. Beside it, the DWARF debug info files each NAR holds
//! (`lib/debug/.build-id/…`), which `debuginfo/{build id}` resolves
//! through the paths of a cache.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum NarListing {
    Table,
    NarId,
    Size,
    Data,
}

#[derive(DeriveIden)]
enum NarDebugInfo {
    Table,
    NarId,
    BuildId,
    Member,
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
                    .table(NarListing::Table)
                    .col(
                        ColumnDef::new(NarListing::NarId)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(NarListing::Size).big_integer().not_null())
                    .col(ColumnDef::new(NarListing::Data).blob().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(NarListing::Table, NarListing::NarId)
                            .to(Nar::Table, Nar::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(NarDebugInfo::Table)
                    .col(ColumnDef::new(NarDebugInfo::NarId).big_integer().not_null())
                    .col(ColumnDef::new(NarDebugInfo::BuildId).string().not_null())
                    .col(ColumnDef::new(NarDebugInfo::Member).text().not_null())
                    .primary_key(
                        Index::create()
                            .col(NarDebugInfo::NarId)
                            .col(NarDebugInfo::BuildId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(NarDebugInfo::Table, NarDebugInfo::NarId)
                            .to(Nar::Table, Nar::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_nar_debug_info_build_id")
                    .table(NarDebugInfo::Table)
                    .col(NarDebugInfo::BuildId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(NarDebugInfo::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(NarListing::Table).to_owned())
            .await
    }
}
