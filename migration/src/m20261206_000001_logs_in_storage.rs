//! Build logs move out of the database into blob storage: `build_log`
//! gains the key of the blob holding the log (one zstd stream) and its
//! stored size, which counts in the cache's used bytes. Rows written before
//! keep their log in `data` (and `storage_key` NULL); new rows leave `data`
//! empty.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum BuildLog {
    Table,
    StorageKey,
    StoredSize,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(BuildLog::Table)
                    .add_column(ColumnDef::new(BuildLog::StorageKey).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(BuildLog::Table)
                    .add_column(
                        ColumnDef::new(BuildLog::StoredSize)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        // Logs already in rows count what they take there.
        manager
            .get_connection()
            .execute_unprepared("UPDATE build_log SET stored_size = length(data)")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [BuildLog::StorageKey, BuildLog::StoredSize] {
            manager
                .alter_table(
                    Table::alter()
                        .table(BuildLog::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
