//! Names of caches destroyed under `soft-delete-caches = true` (Attic's
//! key) stay reserved: a new cache may never take one, so the old cache's
//! users cannot be handed another tenant's paths under a name they trust.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ReservedCacheName {
    Table,
    Name,
    ReservedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ReservedCacheName::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ReservedCacheName::Name)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ReservedCacheName::ReservedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ReservedCacheName::Table).to_owned())
            .await
    }
}
