//! Garbage collection: per-cache quotas, the time a pack was marked for
//! deletion (its blob goes after a grace period, so reads in flight
//! finish), and the lease that lets one collector run at a time across
//! replicas.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Cache {
    Table,
    Quota,
}

#[derive(DeriveIden)]
enum Pack {
    Table,
    DeletingSince,
}

#[derive(DeriveIden)]
enum GcLease {
    Table,
    Id,
    Holder,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Cache::Table)
                    .add_column(ColumnDef::new(Cache::Quota).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Pack::Table)
                    .add_column(ColumnDef::new(Pack::DeletingSince).big_integer().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(GcLease::Table)
                    .col(
                        ColumnDef::new(GcLease::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(GcLease::Holder).string().null())
                    .col(
                        ColumnDef::new(GcLease::ExpiresAt)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(GcLease::Table)
                    .columns([GcLease::Id, GcLease::ExpiresAt])
                    .values_panic([1.into(), 0.into()])
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(GcLease::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Pack::Table)
                    .drop_column(Pack::DeletingSince)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Cache::Table)
                    .drop_column(Cache::Quota)
                    .to_owned(),
            )
            .await
    }
}
