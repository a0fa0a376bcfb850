//! The initial schema: caches (tenants), objects (a cache's view of a path),
//! NARs and chunks (the global store), chunkrefs (a NAR's chunks in order),
//! and revoked token identifiers.

// Identifier enums spell column names, which often begin with their table's.
#![allow(clippy::enum_variant_names)]

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Cache {
    Table,
    Id,
    Name,
    Keypair,
    IsPublic,
    StoreDir,
    Priority,
    UpstreamCacheKeyNames,
    RetentionPeriod,
    CreatedAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum Nar {
    Table,
    Id,
    NarHash,
    NarSize,
    Compression,
    FileSize,
    State,
    NumChunks,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Chunk {
    Table,
    Id,
    ChunkHash,
    ChunkSize,
    FileSize,
    Compression,
    RemoteFile,
    State,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ChunkRef {
    Table,
    Id,
    NarId,
    Seq,
    ChunkId,
}

#[derive(DeriveIden)]
enum Object {
    Table,
    Id,
    CacheId,
    NarId,
    StorePathHash,
    StorePath,
    References,
    System,
    Deriver,
    Sigs,
    Ca,
    CreatedAt,
    LastAccessedAt,
    CreatedBy,
}

#[derive(DeriveIden)]
enum RevokedToken {
    Table,
    RevocationId,
    RevokedAt,
}

fn id(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Cache::Table)
                    .col(id(Cache::Id))
                    .col(ColumnDef::new(Cache::Name).string().not_null())
                    .col(ColumnDef::new(Cache::Keypair).text().not_null())
                    .col(ColumnDef::new(Cache::IsPublic).boolean().not_null())
                    .col(ColumnDef::new(Cache::StoreDir).text().not_null())
                    .col(ColumnDef::new(Cache::Priority).integer().not_null())
                    .col(
                        ColumnDef::new(Cache::UpstreamCacheKeyNames)
                            .text()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Cache::RetentionPeriod).big_integer().null())
                    .col(ColumnDef::new(Cache::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Cache::DeletedAt).big_integer().null())
                    .to_owned(),
            )
            .await?;
        // A destroyed cache keeps its row (deleted_at) until GC; its name is
        // free again at once. Partial indexes read the same on SQLite and PostgreSQL.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX idx_cache_live_name ON cache (name) WHERE deleted_at IS NULL",
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Nar::Table)
                    .col(id(Nar::Id))
                    .col(
                        ColumnDef::new(Nar::NarHash)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Nar::NarSize).big_integer().not_null())
                    .col(ColumnDef::new(Nar::Compression).string().not_null())
                    .col(ColumnDef::new(Nar::FileSize).big_integer().not_null())
                    .col(ColumnDef::new(Nar::State).string().not_null())
                    .col(ColumnDef::new(Nar::NumChunks).big_integer().not_null())
                    .col(ColumnDef::new(Nar::CreatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Chunk::Table)
                    .col(id(Chunk::Id))
                    .col(
                        ColumnDef::new(Chunk::ChunkHash)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Chunk::ChunkSize).big_integer().not_null())
                    .col(ColumnDef::new(Chunk::FileSize).big_integer().not_null())
                    .col(ColumnDef::new(Chunk::Compression).string().not_null())
                    .col(ColumnDef::new(Chunk::RemoteFile).text().not_null())
                    .col(ColumnDef::new(Chunk::State).string().not_null())
                    .col(ColumnDef::new(Chunk::CreatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ChunkRef::Table)
                    .col(id(ChunkRef::Id))
                    .col(ColumnDef::new(ChunkRef::NarId).big_integer().not_null())
                    .col(ColumnDef::new(ChunkRef::Seq).big_integer().not_null())
                    .col(ColumnDef::new(ChunkRef::ChunkId).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChunkRef::Table, ChunkRef::NarId)
                            .to(Nar::Table, Nar::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ChunkRef::Table, ChunkRef::ChunkId)
                            .to(Chunk::Table, Chunk::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_chunkref_nar_seq")
                    .table(ChunkRef::Table)
                    .col(ChunkRef::NarId)
                    .col(ChunkRef::Seq)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_chunkref_chunk")
                    .table(ChunkRef::Table)
                    .col(ChunkRef::ChunkId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Object::Table)
                    .col(id(Object::Id))
                    .col(ColumnDef::new(Object::CacheId).big_integer().not_null())
                    .col(ColumnDef::new(Object::NarId).big_integer().not_null())
                    .col(ColumnDef::new(Object::StorePathHash).string().not_null())
                    .col(ColumnDef::new(Object::StorePath).text().not_null())
                    .col(ColumnDef::new(Object::References).text().not_null())
                    .col(ColumnDef::new(Object::System).text().null())
                    .col(ColumnDef::new(Object::Deriver).text().null())
                    .col(ColumnDef::new(Object::Sigs).text().not_null())
                    .col(ColumnDef::new(Object::Ca).text().null())
                    .col(ColumnDef::new(Object::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Object::LastAccessedAt).big_integer().null())
                    .col(ColumnDef::new(Object::CreatedBy).text().null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(Object::Table, Object::CacheId)
                            .to(Cache::Table, Cache::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Object::Table, Object::NarId)
                            .to(Nar::Table, Nar::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_object_cache_hash")
                    .table(Object::Table)
                    .col(Object::CacheId)
                    .col(Object::StorePathHash)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_object_nar")
                    .table(Object::Table)
                    .col(Object::NarId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RevokedToken::Table)
                    .col(
                        ColumnDef::new(RevokedToken::RevocationId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(RevokedToken::RevokedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
