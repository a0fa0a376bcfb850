//! What makes a row reclaimable, said once: the collector deletes by these
//! conditions and the store view counts orphans by them, so "nothing
//! leaked" in a test means exactly "nothing the collector would take".
//! Each is a condition on the outer statement's row.

use sea_orm::sea_query::{Expr, ExprTrait, IntoColumnRef, IntoTableRef, SimpleExpr};

use super::entity::{chunk, chunkref, nar, object, pack, staged_nar};
use super::rows_pointing_at;

/// No row of `table` has `reference` equal to the outer row's `target`.
fn nothing_points_at(
    table: impl IntoTableRef,
    reference: impl IntoColumnRef,
    target: impl IntoColumnRef,
) -> SimpleExpr {
    Expr::exists(rows_pointing_at(table, reference, target)).not()
}

/// A NAR no path of any cache holds and no `nix copy` upload staged.
pub(super) fn nar_is_unheld() -> SimpleExpr {
    nothing_points_at(
        object::Entity,
        (object::Entity, object::Column::NarId),
        (nar::Entity, nar::Column::Id),
    )
    .and(nothing_points_at(
        staged_nar::Entity,
        (staged_nar::Entity, staged_nar::Column::NarId),
        (nar::Entity, nar::Column::Id),
    ))
}

/// A chunk no NAR references.
pub(super) fn chunk_is_unreferenced() -> SimpleExpr {
    nothing_points_at(
        chunkref::Entity,
        (chunkref::Entity, chunkref::Column::ChunkId),
        (chunk::Entity, chunk::Column::Id),
    )
}

/// A pack no chunk is stored in.
pub(super) fn pack_holds_no_chunk() -> SimpleExpr {
    nothing_points_at(
        chunk::Entity,
        (chunk::Entity, chunk::Column::PackId),
        (pack::Entity, pack::Column::Id),
    )
}
