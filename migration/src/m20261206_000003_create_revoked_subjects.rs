//! Revocation by subject: every token whose subject (a JWT's `sub`, a
//! biscuit token's `subject`) is listed here is refused, whenever it was
//! made. Attic's JWTs carry nothing else a server could revoke them by.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RevokedSubject {
    Table,
    Subject,
    RevokedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RevokedSubject::Table)
                    .col(
                        ColumnDef::new(RevokedSubject::Subject)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(RevokedSubject::RevokedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RevokedSubject::Table).to_owned())
            .await
    }
}
