//! The zstd level a pack's chunks were rewritten at by compaction. NULL for
//! a pack an upload wrote (its chunks are at the fast ingest level): once
//! such a pack is older than `garbage-collection.recompress-after`, the
//! collector rewrites it at `compaction-level`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Pack {
    Table,
    Level,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Pack::Table)
                    .add_column(ColumnDef::new(Pack::Level).integer().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Pack::Table)
                    .drop_column(Pack::Level)
                    .to_owned(),
            )
            .await
    }
}
