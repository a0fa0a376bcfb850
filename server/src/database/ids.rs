//! Typed ids of the tables only the database module names (packs and
//! chunks have theirs in [`crate::pack`], which describes them), and how
//! every id goes into a query.

use crate::pack::{PackId, StoredChunkId};

crate::row_id::row_id! {
    /// A cache's row.
    CacheId
}

crate::row_id::row_id! {
    /// A NAR's row in the global store.
    NarId
}

crate::row_id::row_id! {
    /// A path's row in one cache.
    ObjectId
}

crate::row_id::row_id! {
    /// A NAR staged by `nix copy`, awaiting its narinfo.
    StagedNarId
}

crate::row_id::row_id! {
    /// A build log's row.
    LogId
}

crate::row_id::row_id! {
    /// An audit event's row: later events have larger ids.
    AuditId
}

/// Lets ids stand in queries, and be read from results, where their
/// column's number would.
macro_rules! bind_as_number {
    ($($id:ident),*) => {$(
        impl From<$id> for sea_orm::Value {
            fn from(id: $id) -> Self {
                id.get().into()
            }
        }

        impl sea_orm::TryGetable for $id {
            fn try_get_by<I: sea_orm::ColIdx>(
                res: &sea_orm::QueryResult,
                index: I,
            ) -> Result<Self, sea_orm::TryGetError> {
                i64::try_get_by(res, index).map($id::new)
            }
        }
    )*};
}

bind_as_number!(
    CacheId,
    NarId,
    ObjectId,
    StagedNarId,
    LogId,
    AuditId,
    PackId,
    StoredChunkId
);

crate::row_id::row_id! {
    /// A pin's row.
    PinId
}
