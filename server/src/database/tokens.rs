//! Revoked tokens: by the revocation id of a biscuit block, and by subject.

use sea_orm::sea_query::{Expr, OnConflict, Query, UnionType};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait};

use super::entity::{revoked_subject, revoked_token};
use super::{Database, DatabaseError, now};

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

    /// Revokes tokens by revocation id.
    pub async fn revoke(&self, ids: &[String]) -> Result<(), DatabaseError> {
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
            .exec_without_returning(&self.conn)
            .await?;
        Ok(())
    }

    /// Revokes every token, JWT or biscuit, past and future, whose subject
    /// is `subject`. Revoking it twice is not an error.
    pub async fn revoke_subject(&self, subject: &str) -> Result<(), DatabaseError> {
        revoked_subject::Entity::insert(revoked_subject::ActiveModel {
            subject: Set(subject.to_owned()),
            revoked_at: Set(now()),
        })
        .on_conflict(
            OnConflict::column(revoked_subject::Column::Subject)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        database.revoke_subject("alice").await.expect("revoke");
        database
            .revoke_subject("alice")
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

        database.revoke(&["bb".to_owned()]).await.expect("revoke");
        assert!(database.is_revoked(&ids, None).await.expect("query"));
        assert!(database.is_revoked(&ids, Some("bob")).await.expect("query"));
    }
}
