//! `object`: a store path as one cache sees it, pointing at a global NAR.

use sea_orm::entity::prelude::*;

/// One path in one cache.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "object")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The cache.
    pub cache_id: i64,
    /// The NAR.
    pub nar_id: i64,
    /// The 32-character hash part.
    pub store_path_hash: String,
    /// The full store path.
    pub store_path: String,
    /// JSON array of full reference paths.
    pub references: String,
    /// Platform it was built for.
    pub system: Option<String>,
    /// Full path of its derivation.
    pub deriver: Option<String>,
    /// JSON array of signatures the uploader supplied.
    pub sigs: String,
    /// Content address.
    pub ca: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last read, updated in batches.
    pub last_accessed_at: Option<i64>,
    /// Subject of the token that uploaded it.
    pub created_by: Option<String>,
    /// The file name Nix uploaded its NAR as, for a path `nix copy`
    /// created (`<file hash>.nar.xz`).
    pub nix_upload_file: Option<String>,
}

/// An object points at its NAR.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The NAR holding its content.
    #[sea_orm(
        belongs_to = "super::nar::Entity",
        from = "Column::NarId",
        to = "super::nar::Column::Id"
    )]
    Nar,
}

impl Related<super::nar::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Nar.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
