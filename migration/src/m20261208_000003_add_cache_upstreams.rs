//! Pull-through: `cache` gains the upstream binary caches it pulls missing
//! paths from, a JSON array of `{"url", "public_key"}` in priority order
//! (empty for none, which is every existing cache).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Cache {
    Table,
    Upstreams,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Cache::Table)
                    .add_column(
                        ColumnDef::new(Cache::Upstreams)
                            .text()
                            .not_null()
                            .default("[]"),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Cache::Table)
                    .drop_column(Cache::Upstreams)
                    .to_owned(),
            )
            .await
    }
}
