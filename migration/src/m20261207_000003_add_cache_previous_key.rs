//! Signing-key rotation with an overlap: `cache` gains the key it signed
//! with before its last rotation (Nix secret-key form, like `keypair`) and
//! the Unix second from which that key signs nothing. Both NULL when there
//! is no overlap; a row whose end has passed is the same as NULL, so
//! nothing has to clear them when the overlap ends.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Cache {
    Table,
    PreviousKeypair,
    PreviousKeyUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Cache::Table)
                    .add_column(ColumnDef::new(Cache::PreviousKeypair).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Cache::Table)
                    .add_column(ColumnDef::new(Cache::PreviousKeyUntil).big_integer().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Cache::PreviousKeypair, Cache::PreviousKeyUntil] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Cache::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
