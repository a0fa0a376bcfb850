//! Revoked tokens, by the revocation id of a block.

use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use super::entity::revoked_token;
use super::{Database, DatabaseError, now};

impl Database {
    /// Whether any of a token's revocation ids is revoked.
    pub async fn is_revoked(&self, ids: &[String]) -> Result<bool, DatabaseError> {
        let found = revoked_token::Entity::find()
            .filter(revoked_token::Column::RevocationId.is_in(ids.iter().cloned()))
            .one(&self.conn)
            .await?;
        Ok(found.is_some())
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
}
