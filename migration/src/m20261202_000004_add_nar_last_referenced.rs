//! `nar.last_referenced_at`: when an upload last attached the NAR to a
//! path (or staged it). The collector reclaims a NAR no path holds only
//! once this is older than the grace period, so on PostgreSQL an upload
//! that attaches a NAR while a collection runs changes the very row the
//! collector's `DELETE` re-checks, and wins; chunks work the same way.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Nar {
    Table,
    LastReferencedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Nar::Table)
                    .add_column(ColumnDef::new(Nar::LastReferencedAt).big_integer().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Nar::Table)
                    .drop_column(Nar::LastReferencedAt)
                    .to_owned(),
            )
            .await
    }
}
