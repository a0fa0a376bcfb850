//! Packs: one stored blob per upload instead of one per chunk.
//!
//! Adds the `pack` table; a chunk becomes (pack, offset, stored size,
//! checksum of the stored bytes); a NAR records the pack that is byte for
//! byte its `.nar.zst`, when one is. Every chunk file of the earlier layout
//! becomes a one-chunk pack under its old key, with no checksum yet: the
//! server checks such a chunk against its content hash on first read (or
//! `atticadm verify`) and only then records the checksum, so nothing written
//! before the upgrade is trusted blindly.
//!
//! SQLite cannot add a foreign key or change a column's nullability in
//! place, so `chunk.pack_id` is a nullable column with an index; every row
//! has one after this migration, and the server always writes one.

#![allow(clippy::enum_variant_names)]

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Pack {
    Table,
    Id,
    Key,
    Size,
    State,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Chunk {
    Table,
    PackId,
    Offset,
    FileSize,
    StoredSize,
    StoredChecksum,
    RemoteFile,
    LastReferencedAt,
}

#[derive(DeriveIden)]
enum Nar {
    Table,
    PackId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Pack::Table)
                    .col(
                        ColumnDef::new(Pack::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Pack::Key).string().not_null().unique_key())
                    .col(ColumnDef::new(Pack::Size).big_integer().not_null())
                    .col(ColumnDef::new(Pack::State).string().not_null())
                    .col(ColumnDef::new(Pack::CreatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;

        // SQLite takes one change per ALTER TABLE.
        let add_chunk_column = |column: ColumnDef| {
            Table::alter()
                .table(Chunk::Table)
                .add_column(column)
                .to_owned()
        };
        for column in [
            ColumnDef::new(Chunk::PackId)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Chunk::Offset)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(Chunk::StoredChecksum)
                .string()
                .null()
                .to_owned(),
            ColumnDef::new(Chunk::LastReferencedAt)
                .big_integer()
                .null()
                .to_owned(),
        ] {
            manager.alter_table(add_chunk_column(column)).await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Nar::Table)
                    .add_column(ColumnDef::new(Nar::PackId).big_integer().null())
                    .to_owned(),
            )
            .await?;

        // Every chunk file of the old layout becomes a one-chunk pack.
        let db = manager.get_connection();
        db.execute_unprepared(
            "INSERT INTO pack (key, size, state, created_at) \
             SELECT remote_file, file_size, 'valid', created_at FROM chunk",
        )
        .await?;
        db.execute_unprepared(
            "UPDATE chunk SET pack_id = (SELECT pack.id FROM pack WHERE pack.key = chunk.remote_file), \
             last_referenced_at = created_at",
        )
        .await?;
        // A one-chunk zstd NAR is its chunk's frame: that pack is its `.nar.zst`.
        db.execute_unprepared(
            "UPDATE nar SET pack_id = (SELECT chunk.pack_id FROM chunk_ref \
             JOIN chunk ON chunk.id = chunk_ref.chunk_id WHERE chunk_ref.nar_id = nar.id) \
             WHERE num_chunks = 1 AND compression = 'zstd'",
        )
        .await?;

        manager
            .alter_table(
                Table::alter()
                    .table(Chunk::Table)
                    .rename_column(Chunk::FileSize, Chunk::StoredSize)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Chunk::Table)
                    .drop_column(Chunk::RemoteFile)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_chunk_pack_offset")
                    .table(Chunk::Table)
                    .col(Chunk::PackId)
                    .col(Chunk::Offset)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
