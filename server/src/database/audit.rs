//! The audit log: who changed what, when, in which cache. One obvious
//! call records an event ([`Database::record_audit`]); uploads record
//! theirs inside the transaction that attaches the path
//! ([`insert_audit`]), so a push is never without its record nor a record
//! without its push. Read a page at a time ([`Database::read_audit`]) and
//! trimmed by the collector ([`Database::trim_audit`]).

use attic::cache::CacheName;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::entity::audit_event;
use super::ids::{AuditId, CacheId};
use super::records::Cache;
use super::{Database, DatabaseError, now};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// A path was pushed (`upload-path`, or `nix copy`'s narinfo).
    Push,
    /// A path was brought over by `atticadm import-attic`.
    Import,
    /// A cache was created.
    CreateCache,
    /// A cache's settings changed.
    ConfigureCache,
    /// A cache was destroyed.
    DestroyCache,
    /// `atticadm` issued a token (made or attenuated one).
    IssueToken,
    /// A token (and what was attenuated from it) was revoked.
    RevokeToken,
    /// Every token of a subject was revoked.
    RevokeSubject,
    /// A path was deleted from a cache.
    DeletePath,
    /// A pin was set.
    Pin,
    /// A pin was removed.
    Unpin,
    /// A cache's signing key was rotated.
    RotateKey,
    /// A path was brought in from an upstream cache on a miss.
    PullThrough,
}

impl AuditAction {
    const ALL: [Self; 13] = [
        Self::Push,
        Self::Import,
        Self::CreateCache,
        Self::ConfigureCache,
        Self::DestroyCache,
        Self::IssueToken,
        Self::RevokeToken,
        Self::RevokeSubject,
        Self::DeletePath,
        Self::Pin,
        Self::Unpin,
        Self::RotateKey,
        Self::PullThrough,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Import => "import",
            Self::CreateCache => "create-cache",
            Self::ConfigureCache => "configure-cache",
            Self::DestroyCache => "destroy-cache",
            Self::IssueToken => "issue-token",
            Self::RevokeToken => "revoke-token",
            Self::RevokeSubject => "revoke-subject",
            Self::DeletePath => "delete-path",
            Self::Pin => "pin",
            Self::Unpin => "unpin",
            Self::RotateKey => "rotate-key",
            Self::PullThrough => "pull-through",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.as_str() == name)
    }
}

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A request bearing a token, by the token's subject if it has one.
    Token(Option<String>),
    /// `atticadm`, run by the operator on the server's machine.
    Atticadm,
}

impl Actor {
    fn columns(&self) -> (&'static str, Option<String>) {
        match self {
            Self::Token(subject) => ("token", subject.clone()),
            Self::Atticadm => ("atticadm", None),
        }
    }
}

/// A change to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened.
    pub action: AuditAction,
    /// Who did it.
    pub actor: Actor,
    /// The cache changed, if any.
    pub cache: Option<(CacheId, CacheName)>,
    /// The store path changed, if any.
    pub store_path: Option<String>,
    /// What else there is to say: settings changed, the token revoked.
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event with no cache, path or detail yet.
    pub fn new(action: AuditAction, actor: Actor) -> Self {
        Self {
            action,
            actor,
            cache: None,
            store_path: None,
            detail: None,
        }
    }

    /// The event, on `cache`.
    pub fn on_cache(self, cache: &Cache) -> Self {
        self.on_cache_id(cache.id, cache.name.clone())
    }

    /// The event, on the cache of that row and name.
    pub fn on_cache_id(mut self, id: CacheId, name: CacheName) -> Self {
        self.cache = Some((id, name));
        self
    }

    /// The event, on one store path.
    pub fn on_path(mut self, store_path: impl Into<String>) -> Self {
        self.store_path = Some(store_path.into());
        self
    }

    /// The event, with more to say.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    fn into_row(self, at: i64) -> audit_event::ActiveModel {
        let (actor, subject) = self.actor.columns();
        let (cache_id, cache_name) = match self.cache {
            Some((id, name)) => (Some(id.get()), Some(name.as_str().to_owned())),
            None => (None, None),
        };
        audit_event::ActiveModel {
            at: Set(at),
            action: Set(self.action.as_str().to_owned()),
            actor: Set(actor.to_owned()),
            subject: Set(subject),
            cache_id: Set(cache_id),
            cache_name: Set(cache_name),
            store_path: Set(self.store_path),
            detail: Set(self.detail),
            ..Default::default()
        }
    }
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its row: later events have larger ids.
    pub id: AuditId,
    /// Unix seconds.
    pub at: i64,
    /// What happened.
    pub action: AuditAction,
    /// Who did it.
    pub actor: Actor,
    /// The name of the cache changed, if any.
    pub cache_name: Option<String>,
    /// The store path changed, if any.
    pub store_path: Option<String>,
    /// What else there is to say.
    pub detail: Option<String>,
}

impl TryFrom<audit_event::Model> for AuditRecord {
    type Error = DatabaseError;

    fn try_from(row: audit_event::Model) -> Result<Self, DatabaseError> {
        let corrupt = |reason: String| DatabaseError::CorruptRow {
            table: "audit_event",
            id: row.id,
            reason,
        };
        let action = AuditAction::parse(&row.action)
            .ok_or_else(|| corrupt(format!("unknown action {:?}", row.action)))?;
        let actor = match row.actor.as_str() {
            "token" => Actor::Token(row.subject),
            "atticadm" => Actor::Atticadm,
            other => return Err(corrupt(format!("unknown actor {other:?}"))),
        };
        Ok(Self {
            id: AuditId::new(row.id),
            at: row.at,
            action,
            actor,
            cache_name: row.cache_name,
            store_path: row.store_path,
            detail: row.detail,
        })
    }
}

/// Which events to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditScope {
    /// One live cache's, by its row: a cache made later under the same
    /// name does not see its predecessor's.
    Cache(CacheId),
    /// Every cache of that name, past and present (the operator's view).
    CacheName(CacheName),
    /// Everything.
    All,
}

/// A page of events to read, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Whose events.
    pub scope: AuditScope,
    /// Only events at or after this time (Unix seconds).
    pub since: Option<i64>,
    /// Only events after this one.
    pub after: Option<AuditId>,
    /// At most this many.
    pub limit: u64,
}

/// Records `event` as part of an open transaction.
pub(super) async fn insert_audit(
    conn: &impl ConnectionTrait,
    event: AuditEvent,
    at: i64,
) -> Result<(), DatabaseError> {
    audit_event::Entity::insert(event.into_row(at))
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

impl Database {
    /// Records a change, now.
    pub async fn record_audit(&self, event: AuditEvent) -> Result<(), DatabaseError> {
        insert_audit(&self.conn, event, now()).await
    }

    /// A page of events, oldest first.
    pub async fn read_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, DatabaseError> {
        let mut select = audit_event::Entity::find();
        select = match &query.scope {
            AuditScope::Cache(id) => select.filter(audit_event::Column::CacheId.eq(*id)),
            AuditScope::CacheName(name) => {
                select.filter(audit_event::Column::CacheName.eq(name.as_str()))
            }
            AuditScope::All => select,
        };
        if let Some(since) = query.since {
            select = select.filter(audit_event::Column::At.gte(since));
        }
        if let Some(after) = query.after {
            select = select.filter(audit_event::Column::Id.gt(after.get()));
        }
        select
            .order_by_asc(audit_event::Column::Id)
            .limit(query.limit)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(AuditRecord::try_from)
            .collect()
    }

    /// Deletes events recorded before `before` (Unix seconds); how many.
    pub async fn trim_audit(&self, before: i64) -> Result<u64, DatabaseError> {
        Ok(audit_event::Entity::delete_many()
            .filter(audit_event::Column::At.lt(before))
            .exec(&self.conn)
            .await?
            .rows_affected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(cache: &Cache, path: &str, subject: &str) -> AuditEvent {
        AuditEvent::new(AuditAction::Push, Actor::Token(Some(subject.to_owned())))
            .on_cache(cache)
            .on_path(path)
    }

    fn everything() -> AuditQuery {
        AuditQuery {
            scope: AuditScope::All,
            since: None,
            after: None,
            limit: 100,
        }
    }

    #[tokio::test]
    async fn events_read_back_by_cache_in_order_and_a_page_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let a = database.seed_cache("a").await;
        let b = database.seed_cache("b").await;
        for i in 0..5 {
            database
                .record_audit(push(&a, &format!("/nix/store/a{i}"), "alice"))
                .await
                .expect("record");
        }
        database
            .record_audit(push(&b, "/nix/store/b", "bob"))
            .await
            .expect("record");
        database
            .record_audit(
                AuditEvent::new(AuditAction::RevokeSubject, Actor::Atticadm).with_detail("mallory"),
            )
            .await
            .expect("record");

        let first = database
            .read_audit(&AuditQuery {
                scope: AuditScope::Cache(a.id),
                limit: 3,
                ..everything()
            })
            .await
            .expect("read");
        let paths: Vec<_> = first.iter().filter_map(|r| r.store_path.clone()).collect();
        assert_eq!(paths, ["/nix/store/a0", "/nix/store/a1", "/nix/store/a2"]);
        assert!(
            first
                .iter()
                .all(|r| r.actor == Actor::Token(Some("alice".into())))
        );
        let rest = database
            .read_audit(&AuditQuery {
                scope: AuditScope::Cache(a.id),
                after: Some(first[2].id),
                limit: 3,
                ..everything()
            })
            .await
            .expect("read");
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[1].store_path.as_deref(), Some("/nix/store/a4"));

        let by_name = database
            .read_audit(&AuditQuery {
                scope: AuditScope::CacheName("b".parse().expect("name")),
                ..everything()
            })
            .await
            .expect("read");
        assert_eq!(by_name.len(), 1);
        assert_eq!(by_name[0].actor, Actor::Token(Some("bob".into())));

        let all = database.read_audit(&everything()).await.expect("read");
        assert_eq!(all.len(), 7);
        assert_eq!(all[6].actor, Actor::Atticadm);
        assert_eq!(all[6].action, AuditAction::RevokeSubject);
        assert_eq!(all[6].cache_name, None);
    }

    #[tokio::test]
    async fn trimming_removes_only_events_before_the_cutoff() {
        let dir = tempfile::tempdir().expect("tempdir");
        let database = Database::for_tests(&dir).await;
        let a = database.seed_cache("a").await;
        insert_audit(
            database.connection(),
            push(&a, "/nix/store/old", "x"),
            1_000,
        )
        .await
        .expect("record");
        insert_audit(
            database.connection(),
            push(&a, "/nix/store/new", "x"),
            2_000,
        )
        .await
        .expect("record");
        assert_eq!(database.trim_audit(1_500).await.expect("trim"), 1);
        let left = database.read_audit(&everything()).await.expect("read");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].store_path.as_deref(), Some("/nix/store/new"));
        let since = database
            .read_audit(&AuditQuery {
                since: Some(2_001),
                ..everything()
            })
            .await
            .expect("read");
        assert!(since.is_empty());
    }

    #[test]
    fn every_action_round_trips_through_its_name() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse(action.as_str()), Some(action));
        }
        assert_eq!(AuditAction::parse("launch-missiles"), None);
    }
}
