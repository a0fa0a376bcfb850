//! Revoked tokens: by the revocation id of a biscuit block, and by
//! subject; and the registry of tokens `atticadm` issued, with whether
//! each is revoked. Revocations are audited in the same transaction.

use std::collections::HashSet;

use sea_orm::sea_query::{Expr, OnConflict, Query, UnionType};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde::{Deserialize, Serialize};

use super::audit::{AuditEvent, insert_audit};
use super::entity::{issued_token, revoked_subject, revoked_token};
use super::json::Json;
use super::{BATCH, Database, DatabaseError, now};

/// One grant of a token: a permission on the caches a pattern matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenGrant {
    /// A cache-name pattern (`*` matches any run of characters).
    pub pattern: String,
    /// A permission's name (`pull`, `push`, ...).
    pub permission: String,
}

/// A token `atticadm` issued, as the registry keeps it: never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// Its own revocation id (that of its last block), hex.
    pub token_id: String,
    /// For an attenuated token, the token id of the token it narrows.
    pub parent_token_id: Option<String>,
    /// The subject the root key signed.
    pub subject: Option<String>,
    /// Every block's revocation id: revoking any of them revokes it.
    pub revocation_ids: Vec<String>,
    /// What the root key granted (for an attenuated token, what the token
    /// it came from was granted: the attenuation narrows it further).
    pub grants: Vec<TokenGrant>,
    /// Cache patterns an attenuation narrows to.
    pub caches: Option<Vec<String>>,
    /// Permissions an attenuation narrows to.
    pub permissions: Option<Vec<String>>,
    /// When it stops working (Unix seconds), if it does.
    pub expires_at: Option<i64>,
    /// When it was issued (Unix seconds).
    pub issued_at: i64,
}

/// Why a registered token no longer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// It, or a token it was attenuated from, was revoked by id.
    Token,
    /// Its subject was revoked.
    Subject,
}

/// A registered token and whether it is revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredToken {
    /// What was issued.
    pub token: IssuedToken,
    /// `None` while it works (until it expires).
    pub revoked: Option<Revoked>,
}

impl TryFrom<issued_token::Model> for IssuedToken {
    type Error = DatabaseError;

    fn try_from(row: issued_token::Model) -> Result<Self, DatabaseError> {
        let corrupt = |column: &str, e: serde_json::Error| DatabaseError::CorruptRow {
            table: "issued_token",
            id: row.id,
            reason: format!("{column}: {e}"),
        };
        let list = |column: &str, text: &Option<String>| {
            text.as_deref()
                .map(|text| Json::<Vec<String>>::decode(text).map(|j| j.0))
                .transpose()
                .map_err(|e| corrupt(column, e))
        };
        Ok(Self {
            revocation_ids: Json::<Vec<String>>::decode(&row.revocation_ids)
                .map_err(|e| corrupt("revocation_ids", e))?
                .0,
            grants: Json::<Vec<TokenGrant>>::decode(&row.grants)
                .map_err(|e| corrupt("grants", e))?
                .0,
            caches: list("caches", &row.caches)?,
            permissions: list("permissions", &row.permissions)?,
            token_id: row.token_id,
            parent_token_id: row.parent_token_id,
            subject: row.subject,
            expires_at: row.expires_at,
            issued_at: row.issued_at,
        })
    }
}

impl Database {
    /// Whether a token is revoked: one of its revocation ids (a biscuit
    /// token has one per block; a JWT none) or its subject is listed. One
    /// round trip whichever it is: this runs on every authenticated request.
    pub async fn is_revoked(
        &self,
        ids: &[String],
        subject: Option<&str>,
    ) -> Result<bool, DatabaseError> {
        if ids.is_empty() && subject.is_none() {
            return Ok(false);
        }
        let mut query = Query::select()
            .expr(Expr::val(1))
            .from(revoked_token::Entity)
            .and_where(revoked_token::Column::RevocationId.is_in(ids.iter().cloned()))
            .to_owned();
        if let Some(subject) = subject {
            query.union(
                UnionType::All,
                Query::select()
                    .expr(Expr::val(1))
                    .from(revoked_subject::Entity)
                    .and_where(revoked_subject::Column::Subject.eq(subject))
                    .to_owned(),
            );
        }
        Ok(self.conn.query_one(&query).await?.is_some())
    }

    /// Revokes tokens by revocation id, recording `audit` in the same
    /// transaction.
    pub async fn revoke(&self, ids: &[String], audit: AuditEvent) -> Result<(), DatabaseError> {
        let txn = self.begin_write().await?;
        let rows = ids.iter().map(|id| revoked_token::ActiveModel {
            revocation_id: Set(id.clone()),
            revoked_at: Set(now()),
        });
        revoked_token::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::column(revoked_token::Column::RevocationId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        insert_audit(&txn, audit, now()).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Revokes every token, JWT or biscuit, past and future, whose subject
    /// is `subject`, recording `audit` in the same transaction. Revoking
    /// it twice is not an error.
    pub async fn revoke_subject(
        &self,
        subject: &str,
        audit: AuditEvent,
    ) -> Result<(), DatabaseError> {
        let txn = self.begin_write().await?;
        revoked_subject::Entity::insert(revoked_subject::ActiveModel {
            subject: Set(subject.to_owned()),
            revoked_at: Set(now()),
        })
        .on_conflict(
            OnConflict::column(revoked_subject::Column::Subject)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        insert_audit(&txn, audit, now()).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Adds a token to the registry, recording `audit` in the same
    /// transaction. Registering one token twice keeps the first record.
    pub async fn register_token(
        &self,
        token: IssuedToken,
        audit: AuditEvent,
    ) -> Result<(), DatabaseError> {
        let row = issued_token::ActiveModel {
            token_id: Set(token.token_id),
            parent_token_id: Set(token.parent_token_id),
            subject: Set(token.subject),
            revocation_ids: Set(Json(token.revocation_ids).encode()),
            grants: Set(Json(token.grants).encode()),
            caches: Set(token.caches.map(|c| Json(c).encode())),
            permissions: Set(token.permissions.map(|p| Json(p).encode())),
            expires_at: Set(token.expires_at),
            issued_at: Set(token.issued_at),
            ..Default::default()
        };
        let txn = self.begin_write().await?;
        issued_token::Entity::insert(row)
            .on_conflict(
                OnConflict::column(issued_token::Column::TokenId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        insert_audit(&txn, audit, now()).await?;
        txn.commit().await?;
        Ok(())
    }

    /// The registered tokens (of `subject`, if given), oldest first, each
    /// with whether it is revoked by its ids (its own or an ancestor's)
    /// or by its subject.
    pub async fn list_tokens(
        &self,
        subject: Option<&str>,
    ) -> Result<Vec<RegisteredToken>, DatabaseError> {
        let mut select = issued_token::Entity::find();
        if let Some(subject) = subject {
            select = select.filter(issued_token::Column::Subject.eq(subject));
        }
        let tokens = select
            .order_by_asc(issued_token::Column::Id)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(IssuedToken::try_from)
            .collect::<Result<Vec<_>, _>>()?;

        let ids: Vec<String> = tokens
            .iter()
            .flat_map(|t| t.revocation_ids.iter().cloned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut revoked_ids = HashSet::new();
        for batch in ids.chunks(BATCH) {
            let found: Vec<String> = revoked_token::Entity::find()
                .select_only()
                .column(revoked_token::Column::RevocationId)
                .filter(revoked_token::Column::RevocationId.is_in(batch.iter().cloned()))
                .into_tuple()
                .all(&self.conn)
                .await?;
            revoked_ids.extend(found);
        }
        let subjects: Vec<String> = tokens
            .iter()
            .filter_map(|t| t.subject.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut revoked_subjects = HashSet::new();
        for batch in subjects.chunks(BATCH) {
            let found: Vec<String> = revoked_subject::Entity::find()
                .select_only()
                .column(revoked_subject::Column::Subject)
                .filter(revoked_subject::Column::Subject.is_in(batch.iter().cloned()))
                .into_tuple()
                .all(&self.conn)
                .await?;
            revoked_subjects.extend(found);
        }
        Ok(tokens
            .into_iter()
            .map(|token| {
                let revoked = if token
                    .revocation_ids
                    .iter()
                    .any(|id| revoked_ids.contains(id))
                {
                    Some(Revoked::Token)
                } else if token
                    .subject
                    .as_ref()
                    .is_some_and(|s| revoked_subjects.contains(s))
                {
                    Some(Revoked::Subject)
                } else {
                    None
                };
                RegisteredToken { token, revoked }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::audit::{Actor, AuditAction};
    use super::*;

    fn audit() -> AuditEvent {
        AuditEvent::new(AuditAction::RevokeToken, Actor::Atticadm)
    }

    fn issued(token_id: &str, ids: &[&str], subject: &str) -> IssuedToken {
        IssuedToken {
            token_id: token_id.to_owned(),
            parent_token_id: None,
            subject: Some(subject.to_owned()),
            revocation_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
            grants: vec![TokenGrant {
                pattern: "team-*".to_owned(),
                permission: "pull".to_owned(),
            }],
            caches: None,
            permissions: None,
            expires_at: Some(2_000_000_000),
            issued_at: 1_000,
        }
    }

    #[tokio::test]
    async fn the_registry_shows_each_token_revoked_by_id_ancestor_or_subject() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let issue = || AuditEvent::new(AuditAction::IssueToken, Actor::Atticadm);
        database
            .register_token(issued("p", &["p"], "alice"), issue())
            .await
            .expect("register");
        let mut child = issued("c", &["p", "c"], "alice");
        child.parent_token_id = Some("p".to_owned());
        child.caches = Some(vec!["team-a".to_owned()]);
        database
            .register_token(child.clone(), issue())
            .await
            .expect("register");
        database
            .register_token(child, issue())
            .await
            .expect("twice keeps the first");
        database
            .register_token(issued("b", &["b"], "bob"), issue())
            .await
            .expect("register");

        let all = database.list_tokens(None).await.expect("list");
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|t| t.revoked.is_none()));
        assert_eq!(
            all[1].token.caches.as_deref(),
            Some(&["team-a".to_owned()][..])
        );

        // Revoking the parent revokes what was attenuated from it.
        database
            .revoke(&["p".to_owned()], audit())
            .await
            .expect("revoke");
        let alice = database.list_tokens(Some("alice")).await.expect("list");
        assert_eq!(alice.len(), 2);
        assert!(alice.iter().all(|t| t.revoked == Some(Revoked::Token)));

        database
            .revoke_subject("bob", audit())
            .await
            .expect("revoke");
        let bob = database.list_tokens(Some("bob")).await.expect("list");
        assert_eq!(bob[0].revoked, Some(Revoked::Subject));
        assert!(
            database
                .list_tokens(Some("carol"))
                .await
                .expect("list")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn revoked_ids_and_subjects_are_found_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let ids = vec!["aa".to_owned(), "bb".to_owned()];
        assert!(
            !database
                .is_revoked(&ids, Some("alice"))
                .await
                .expect("query")
        );
        assert!(!database.is_revoked(&[], None).await.expect("query"));

        database
            .revoke_subject("alice", audit())
            .await
            .expect("revoke");
        database
            .revoke_subject("alice", audit())
            .await
            .expect("twice is fine");
        assert!(
            database
                .is_revoked(&[], Some("alice"))
                .await
                .expect("query")
        );
        assert!(
            database
                .is_revoked(&ids, Some("alice"))
                .await
                .expect("query")
        );
        assert!(
            !database
                .is_revoked(&ids, Some("alicia"))
                .await
                .expect("query")
        );
        assert!(!database.is_revoked(&ids, None).await.expect("query"));

        database
            .revoke(&["bb".to_owned()], audit())
            .await
            .expect("revoke");
        assert!(database.is_revoked(&ids, None).await.expect("query"));
        assert!(database.is_revoked(&ids, Some("bob")).await.expect("query"));
    }
}
