//! Reclaiming what no path holds any more: NARs, chunks and packs, and
//! compacting packs that are mostly dead.

use sea_orm::sea_query::{Alias, Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
};

use super::super::entity::{BlobState, StoredCompression, chunk, nar, pack};
use super::super::records::PackRecord;
use super::super::unheld::{chunk_is_unreferenced, nar_is_unheld, pack_holds_no_chunk};
use super::super::{BATCH, Database, DatabaseError, nars_holding, now};
use super::*;
use crate::pack::PackId;
use crate::pack::write::WrittenPack;

impl Database {
    /// Ids of a table's rows after `after`, in order: one page.
    async fn id_page<E: EntityTrait>(
        &self,
        id: E::Column,
        after: i64,
        limit: u64,
    ) -> Result<Vec<i64>, DatabaseError> {
        E::find()
            .select_only()
            .column(id)
            .filter(id.gt(after))
            .order_by_asc(id)
            .limit(limit)
            .into_tuple()
            .all(&self.conn)
            .await
            .map_err(DatabaseError::from)
    }

    /// Of the NARs after `after` (one page), deletes those no object holds
    /// and no `nix copy` upload has staged. The largest id looked at (or
    /// `None` past the end), and how many went.
    ///
    /// An upload attaching one of these NARs re-checks and stamps its row
    /// (`UPDATE … WHERE state = 'valid'`) in its own transaction. See
    /// [`Self::lock_for_deletion`] for why that never races this.
    pub async fn delete_unheld_nars(
        &self,
        after: i64,
        limit: u64,
    ) -> Result<(Option<i64>, u64), DatabaseError> {
        let page = self
            .id_page::<nar::Entity>(nar::Column::Id, after, limit)
            .await?;
        let Some(&last) = page.last() else {
            return Ok((None, 0));
        };
        let txn = self.begin_write().await?;
        self.lock_for_deletion::<nar::Entity>(&txn, nar::Column::Id, &page)
            .await?;
        let result = nar::Entity::delete_many()
            .filter(nar::Column::Id.is_in(page))
            .filter(nar_is_unheld())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok((Some(last), result.rows_affected))
    }

    /// Of the chunks after `after` (one page), deletes those no NAR
    /// references. An upload that meant to reuse one re-checks it when it
    /// commits, finds it gone and is retried (see
    /// [`Self::lock_for_deletion`]).
    pub async fn delete_unreferenced_chunks(
        &self,
        after: i64,
        limit: u64,
    ) -> Result<(Option<i64>, u64), DatabaseError> {
        let page = self
            .id_page::<chunk::Entity>(chunk::Column::Id, after, limit)
            .await?;
        let Some(&last) = page.last() else {
            return Ok((None, 0));
        };
        let txn = self.begin_write().await?;
        self.lock_for_deletion::<chunk::Entity>(&txn, chunk::Column::Id, &page)
            .await?;
        let result = chunk::Entity::delete_many()
            .filter(chunk::Column::Id.is_in(page))
            .filter(chunk_is_unreferenced())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok((Some(last), result.rows_affected))
    }

    /// Before a page's deleting statement, in its transaction: on
    /// PostgreSQL, locks the page's rows (`SELECT … FOR UPDATE`, in id
    /// order, as uploads lock them).
    ///
    /// An upload references a NAR or chunk in a transaction that first
    /// re-checks and stamps its row, which locks it. If the upload got
    /// there first, this waits for its commit, and the `DELETE` that
    /// follows, a new statement with a new snapshot under READ COMMITTED,
    /// sees the reference it committed and leaves the row. Without the
    /// lock, a `DELETE` that waited on the row would re-check only the row
    /// itself, not its `NOT EXISTS` (that keeps the statement's snapshot),
    /// and delete a row just referenced. If this got there first, the
    /// upload's re-check waits, then finds the row gone and the upload is
    /// retried. On SQLite writers take turns, so the statement always sees
    /// every committed reference and needs no lock.
    async fn lock_for_deletion<E: EntityTrait>(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        id: E::Column,
        page: &[i64],
    ) -> Result<(), DatabaseError> {
        if self.backend() != DbBackend::Postgres {
            return Ok(());
        }
        let _: Vec<i64> = E::find()
            .select_only()
            .column(id)
            .filter(id.is_in(page.iter().copied()))
            .order_by_asc(id)
            .lock_exclusive()
            .into_tuple()
            .all(txn)
            .await?;
        Ok(())
    }

    /// Of the packs after `after` (one page), marks `deleting` those no
    /// chunk row points into, written before `cutoff`.
    pub async fn mark_dead_packs(
        &self,
        after: i64,
        limit: u64,
        cutoff: i64,
    ) -> Result<(Option<i64>, u64), DatabaseError> {
        let page = self
            .id_page::<pack::Entity>(pack::Column::Id, after, limit)
            .await?;
        let Some(&last) = page.last() else {
            return Ok((None, 0));
        };
        let result = pack::Entity::update_many()
            .col_expr(pack::Column::State, Expr::value(BlobState::Deleting))
            .col_expr(pack::Column::DeletingSince, Expr::value(now()))
            .filter(pack::Column::Id.is_in(page))
            .filter(pack::Column::State.eq(BlobState::Valid))
            .filter(pack::Column::CreatedAt.lt(cutoff))
            .filter(pack_holds_no_chunk())
            .exec(&self.conn)
            .await?;
        Ok((Some(last), result.rows_affected))
    }

    /// A page of packs marked `deleting` before `cutoff`, whose blobs may go.
    pub async fn packs_to_delete(
        &self,
        cutoff: i64,
        limit: u64,
    ) -> Result<Vec<PackRecord>, DatabaseError> {
        pack::Entity::find()
            .filter(pack::Column::State.eq(BlobState::Deleting))
            .filter(pack::Column::DeletingSince.lt(cutoff))
            .order_by_asc(pack::Column::Id)
            .limit(limit)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(PackRecord::try_from)
            .collect()
    }

    /// Packs marked `deleting` whose blobs are still stored.
    pub async fn packs_awaiting_deletion(&self) -> Result<PacksAwaitingDeletion, DatabaseError> {
        #[derive(FromQueryResult)]
        struct Waiting {
            packs: i64,
            bytes: Option<i64>,
            first: Option<i64>,
        }
        let waiting = pack::Entity::find()
            .select_only()
            .expr_as(Expr::col(pack::Column::Id).count(), "packs")
            .expr_as(
                Expr::col(pack::Column::Size)
                    .sum()
                    .cast_as(Alias::new("BIGINT")),
                "bytes",
            )
            .expr_as(Expr::col(pack::Column::DeletingSince).min(), "first")
            .filter(pack::Column::State.eq(BlobState::Deleting))
            .into_model::<Waiting>()
            .one(&self.conn)
            .await?;
        Ok(
            waiting.map_or_else(PacksAwaitingDeletion::default, |w| PacksAwaitingDeletion {
                packs: u64::try_from(w.packs).unwrap_or(0),
                bytes: w.bytes.unwrap_or(0),
                first_marked_at: w.first,
            }),
        )
    }

    /// Deletes a pack's row once its blob is gone.
    pub async fn delete_pack_row(&self, pack_id: PackId) -> Result<(), DatabaseError> {
        pack::Entity::delete_many()
            .filter(pack::Column::Id.eq(pack_id))
            .filter(pack::Column::State.eq(BlobState::Deleting))
            .exec(&self.conn)
            .await?;
        Ok(())
    }

    /// Which of `keys` have a pack row.
    pub async fn known_pack_keys(&self, keys: &[String]) -> Result<Vec<String>, DatabaseError> {
        pack::Entity::find()
            .select_only()
            .column(pack::Column::Key)
            .filter(pack::Column::Key.is_in(keys.iter().cloned()))
            .into_tuple()
            .all(&self.conn)
            .await
            .map_err(DatabaseError::from)
    }

    /// Of the valid packs after `after` (one page), those `rule` says to
    /// rewrite. The largest id looked at, or `None` past the end.
    pub async fn compaction_candidates(
        &self,
        after: i64,
        limit: u64,
        rule: &CompactionRule,
    ) -> Result<(Option<i64>, Vec<CompactionCandidate>), DatabaseError> {
        let packs = pack::Entity::find()
            .filter(pack::Column::Id.gt(after))
            .order_by_asc(pack::Column::Id)
            .limit(limit)
            .all(&self.conn)
            .await?;
        let Some(last) = packs.last().map(|p| p.id) else {
            return Ok((None, Vec::new()));
        };
        let ids: Vec<i64> = packs.iter().map(|p| p.id).collect();
        let live: Vec<PackLive> = chunk::Entity::find()
            .select_only()
            .column_as(chunk::Column::PackId, "id")
            .expr_as(
                Expr::col(chunk::Column::StoredSize)
                    .sum()
                    .cast_as(Alias::new("BIGINT")),
                "live",
            )
            .filter(chunk::Column::PackId.is_in(ids))
            .filter(chunk::Column::State.eq(BlobState::Valid))
            .group_by(chunk::Column::PackId)
            .into_model::<PackLive>()
            .all(&self.conn)
            .await?;
        let live: std::collections::HashMap<i64, i64> = live
            .into_iter()
            .map(|l| (l.id, l.live.unwrap_or(0)))
            .collect();
        let mut candidates = Vec::new();
        for pack in packs {
            let Some(&live_bytes) = live.get(&pack.id) else {
                continue;
            };
            if rule.rewrites(&pack, live_bytes) {
                let pack = PackRecord::try_from(pack)?;
                candidates.push(CompactionCandidate { pack, live_bytes });
            }
        }
        Ok((Some(last), candidates))
    }

    /// After compaction wrote `written` at zstd `level`: in one
    /// transaction, records the new pack, points the moved chunks into it (those still in `old`
    /// and valid), drops the whole-pack mark of NARs that had `old`, and
    /// marks `old` deleting if nothing points into it any more.
    pub async fn repoint_compacted(
        &self,
        old: PackId,
        written: &WrittenPack,
        level: i32,
        moved: &[MovedChunk],
    ) -> Result<(), DatabaseError> {
        let txn = self.begin_write().await?;
        let when = now();
        let new_pack =
            super::super::upload_rows::insert_pack(&txn, written, when, Some(level)).await?;
        for chunk in moved {
            chunk::Entity::update_many()
                .col_expr(chunk::Column::PackId, Expr::value(Some(new_pack)))
                .col_expr(chunk::Column::Offset, Expr::value(chunk.offset as i64))
                .col_expr(
                    chunk::Column::StoredSize,
                    Expr::value(chunk.stored_size as i64),
                )
                .col_expr(
                    chunk::Column::StoredChecksum,
                    Expr::value(Some(chunk.checksum.clone())),
                )
                .filter(chunk::Column::Id.eq(chunk.id))
                .filter(chunk::Column::PackId.eq(old))
                .filter(chunk::Column::State.eq(BlobState::Valid))
                .exec(&txn)
                .await?;
        }
        nar::Entity::update_many()
            .col_expr(nar::Column::PackId, Expr::value(Option::<i64>::None))
            .filter(nar::Column::PackId.eq(old))
            .exec(&txn)
            .await?;
        // The NARs holding moved chunks are now smaller as served.
        let ids: Vec<i64> = moved.iter().map(|c| c.id.get()).collect();
        for batch in ids.chunks(BATCH) {
            let holding = nars_holding(batch);
            nar::Entity::update_many()
                .col_expr(
                    nar::Column::FileSize,
                    Expr::cust(
                        "(SELECT COALESCE(SUM(chunk.stored_size), 0) FROM chunk_ref \
                         JOIN chunk ON chunk.id = chunk_ref.chunk_id \
                         WHERE chunk_ref.nar_id = nar.id)",
                    ),
                )
                .filter(nar::Column::Compression.eq(StoredCompression::Zstd))
                .filter(nar::Column::Id.in_subquery(holding))
                .exec(&txn)
                .await?;
        }
        pack::Entity::update_many()
            .col_expr(pack::Column::State, Expr::value(BlobState::Deleting))
            .col_expr(pack::Column::DeletingSince, Expr::value(when))
            .filter(pack::Column::Id.eq(old))
            .filter(pack_holds_no_chunk())
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }
}
