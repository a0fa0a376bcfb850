//! `chunkref`: the chunks of a NAR, in order.

use sea_orm::entity::prelude::*;

/// Chunk number `seq` of a NAR.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "chunk_ref")]
pub struct Model {
    /// Row id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The NAR.
    pub nar_id: i64,
    /// Position in the NAR, from 0.
    pub seq: i64,
    /// The chunk.
    pub chunk_id: i64,
}

/// A chunkref points at its chunk.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The chunk at this position.
    #[sea_orm(
        belongs_to = "super::chunk::Entity",
        from = "Column::ChunkId",
        to = "super::chunk::Column::Id"
    )]
    Chunk,
}

impl Related<super::chunk::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Chunk.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
