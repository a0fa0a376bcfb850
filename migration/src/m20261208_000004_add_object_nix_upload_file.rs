//! The file name Nix uploaded a path's NAR as (`<file hash>.nar.xz`), kept
//! with the path `nix copy` created: the narinfo Nix keeps in its own cache
//! after a push names that file, so the machine that pushed asks for it by
//! that name when it substitutes. NULL for paths pushed any other way.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Object {
    Table,
    CacheId,
    NixUploadFile,
}

const INDEX: &str = "idx-object-cache-nix-upload-file";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Object::Table)
                    .add_column(ColumnDef::new(Object::NixUploadFile).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Object::Table)
                    .col(Object::CacheId)
                    .col(Object::NixUploadFile)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Object::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Object::Table)
                    .drop_column(Object::NixUploadFile)
                    .to_owned(),
            )
            .await
    }
}
