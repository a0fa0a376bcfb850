//! `issued_token`: the registry of tokens `atticadm` made or attenuated.
//! Never the token itself, which is a bearer secret.

use sea_orm::entity::prelude::*;

/// One token issued.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "issued_token")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The token's own revocation id (that of its last block), hex: what
    /// `atticadm revoke-token` lists to revoke it.
    pub token_id: String,
    /// For an attenuated token, the token id of the token it narrows.
    pub parent_token_id: Option<String>,
    /// The subject the root key signed.
    pub subject: Option<String>,
    /// JSON list of every block's revocation id: the token is revoked if
    /// any of them is.
    pub revocation_ids: String,
    /// JSON list of `{pattern, permission}` the token grants; for an
    /// attenuated token, what its parent granted if known, else empty.
    pub grants: String,
    /// JSON list of cache patterns an attenuation narrows to, or NULL.
    pub caches: Option<String>,
    /// JSON list of permissions an attenuation narrows to, or NULL.
    pub permissions: Option<String>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub issued_at: i64,
}

/// No navigable relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
