//! `realisation`: which path of a cache a content-addressed derivation
//! output produced.

use sea_orm::entity::prelude::*;

/// One derivation output's realisation in one cache.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "realisation")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The cache.
    pub cache_id: i64,
    /// Nix's id of the output: `sha256:<hex>!<output>` or `<drv>^<output>`.
    pub drv_output: String,
    /// The path it produced, in the same cache; deleting it deletes this.
    pub object_id: i64,
    /// JSON array of `name:base64` signatures the uploader sent.
    pub signatures: String,
    /// JSON object of Nix 2.8's dependent realisations (id → base name).
    pub dependent_realisations: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A realisation points at its path.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The path it produced.
    #[sea_orm(
        belongs_to = "super::object::Entity",
        from = "Column::ObjectId",
        to = "super::object::Column::Id"
    )]
    Object,
}

impl Related<super::object::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Object.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
