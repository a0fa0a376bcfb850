//! The `.ls` listing of each NAR (the JSON directory listing Nix's binary
//! caches keep beside a NAR), produced from the NAR as it is uploaded and
//! kept zstd-compressed. One per NAR, however many caches hold it; it goes
//! with its NAR.

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
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(NarListing::Table).to_owned())
            .await
    }
}
