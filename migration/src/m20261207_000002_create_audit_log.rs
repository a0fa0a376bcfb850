//! Who did what: `audit_event`, one row per state change (a path pushed or
//! imported, a cache created, configured or destroyed, tokens revoked, and
//! later path deletion, pins and key rotation), trimmed by
//! `audit-retention-period`; and `issued_token`, the registry of tokens
//! `atticadm` made or attenuated (never the token itself), for
//! `atticadm list-tokens`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditEvent {
    Table,
    Id,
    At,
    Action,
    Actor,
    Subject,
    CacheId,
    CacheName,
    StorePath,
    Detail,
}

#[derive(DeriveIden)]
enum IssuedToken {
    Table,
    Id,
    TokenId,
    ParentTokenId,
    Subject,
    RevocationIds,
    Grants,
    Caches,
    Permissions,
    ExpiresAt,
    IssuedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditEvent::Table)
                    .col(
                        ColumnDef::new(AuditEvent::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(AuditEvent::At).big_integer().not_null())
                    .col(ColumnDef::new(AuditEvent::Action).string().not_null())
                    .col(ColumnDef::new(AuditEvent::Actor).string().not_null())
                    .col(ColumnDef::new(AuditEvent::Subject).text().null())
                    .col(ColumnDef::new(AuditEvent::CacheId).big_integer().null())
                    .col(ColumnDef::new(AuditEvent::CacheName).string().null())
                    .col(ColumnDef::new(AuditEvent::StorePath).text().null())
                    .col(ColumnDef::new(AuditEvent::Detail).text().null())
                    .to_owned(),
            )
            .await?;
        // A cache's log is read by cache, in id order; trimming goes by time.
        manager
            .create_index(
                Index::create()
                    .name("idx_audit_event_cache_id")
                    .table(AuditEvent::Table)
                    .col(AuditEvent::CacheId)
                    .col(AuditEvent::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_audit_event_cache_name")
                    .table(AuditEvent::Table)
                    .col(AuditEvent::CacheName)
                    .col(AuditEvent::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_audit_event_at")
                    .table(AuditEvent::Table)
                    .col(AuditEvent::At)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(IssuedToken::Table)
                    .col(
                        ColumnDef::new(IssuedToken::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(IssuedToken::TokenId)
                            .string()
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(IssuedToken::ParentTokenId).string().null())
                    .col(ColumnDef::new(IssuedToken::Subject).text().null())
                    .col(ColumnDef::new(IssuedToken::RevocationIds).text().not_null())
                    .col(ColumnDef::new(IssuedToken::Grants).text().not_null())
                    .col(ColumnDef::new(IssuedToken::Caches).text().null())
                    .col(ColumnDef::new(IssuedToken::Permissions).text().null())
                    .col(ColumnDef::new(IssuedToken::ExpiresAt).big_integer().null())
                    .col(
                        ColumnDef::new(IssuedToken::IssuedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // The unique constraint is part of the table, not an index made
        // after it: a pooled SQLite connection that read the schema
        // between the two statements would refuse `ON CONFLICT (token_id)`.
        manager
            .create_index(
                Index::create()
                    .name("idx_issued_token_subject")
                    .table(IssuedToken::Table)
                    .col(IssuedToken::Subject)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(IssuedToken::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(AuditEvent::Table).to_owned())
            .await
    }
}
