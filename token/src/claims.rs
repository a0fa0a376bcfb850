//! What a token says, read from its blocks by shape, without running Datalog.
//!
//! A token is untrusted input, and a Datalog evaluator's cost is not bounded
//! by the size of its input: one closure-heavy expression of a few hundred
//! bytes runs for seconds, and the evaluator's time limit is checked only
//! between iterations. So tokens are never evaluated. Every block is read
//! into [`Claims`] by matching it against the few shapes this crate writes
//! ([`crate::TokenSpec::sign`] and [`crate::Attenuation`]), and anything
//! else (a rule, a fact in an appended block, an unknown predicate or
//! operator, a third-party block) refuses the whole token. Deciding a token
//! then costs a pass over a few kilobytes and some glob matches.

use std::time::SystemTime;

use biscuit_auth::Biscuit;
use biscuit_auth::datalog::SymbolTable;
use biscuit_auth::format::schema;
use prost::Message;

use crate::pattern::CacheNamePattern;
use crate::permission::Permission;
use crate::{CacheName, MAX_BLOCKS};

/// Why a token's blocks are not ones this server or its attenuation
/// tool writes. The reason is for logs and tests; clients get one message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block {block}: {reason}")]
pub struct UnrecognisedBlock {
    /// The block's index: 0 is the authority block.
    pub block: usize,
    /// What did not match.
    pub reason: &'static str,
}

/// One condition a block adds; all of a token's conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Condition {
    /// Only caches matching one of these patterns.
    Caches(Vec<CacheNamePattern>),
    /// Only these permissions.
    Permissions(Vec<Permission>),
    /// Not after this many seconds since the Unix epoch.
    NotAfter(u64),
    /// Nothing at all (an attenuation to an empty list of caches or
    /// permissions).
    Never,
}

/// A token's content: what its authority block grants and what every
/// block requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) subject: Option<String>,
    pub(crate) grants: Vec<(CacheNamePattern, Permission)>,
    pub(crate) conditions: Vec<Condition>,
}

/// Why a well-formed token does not allow a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Past its expiry (in its own block or an attenuation).
    #[error("the token has expired")]
    Expired,
    /// Valid, but it does not grant this permission on this cache.
    #[error("the token does not grant this permission on this cache")]
    Denied,
}

impl Claims {
    /// Reads every block of a verified token. Bounded by the token's size,
    /// which the caller has already checked.
    pub(crate) fn read(biscuit: &Biscuit) -> Result<Self, UnrecognisedBlock> {
        let bytes = biscuit.to_vec().map_err(|_| UnrecognisedBlock {
            block: 0,
            reason: "it does not serialise",
        })?;
        Self::read_serialised(&bytes)
    }

    /// Reads every block of a serialised token, whether or not its
    /// signatures were verified: the caller decides what to trust.
    pub(crate) fn read_serialised(bytes: &[u8]) -> Result<Self, UnrecognisedBlock> {
        let token = schema::Biscuit::decode(bytes).map_err(|_| UnrecognisedBlock {
            block: 0,
            reason: "it does not decode",
        })?;
        if token.blocks.len() + 1 > MAX_BLOCKS {
            return Err(UnrecognisedBlock {
                block: MAX_BLOCKS,
                reason: "too many blocks",
            });
        }
        let mut table = SymbolTable::new();
        let mut claims = Claims::default();
        for (index, signed) in std::iter::once(&token.authority)
            .chain(&token.blocks)
            .enumerate()
        {
            let refuse = |reason| UnrecognisedBlock {
                block: index,
                reason,
            };
            if signed.external_signature.is_some() {
                return Err(refuse("third-party blocks are not accepted"));
            }
            let block = schema::Block::decode(signed.block.as_slice())
                .map_err(|_| refuse("it does not decode"))?;
            // Each first-party block adds its symbols to the token's table;
            // a block may name its own and earlier blocks' symbols.
            let own =
                SymbolTable::from(block.symbols.clone()).map_err(|_| refuse("bad symbol table"))?;
            table.extend(&own).map_err(|_| refuse("bad symbol table"))?;
            let reader = BlockReader { table: &table };
            reader
                .read_into(&block, index == 0, &mut claims)
                .map_err(refuse)?;
        }
        Ok(claims)
    }

    /// Whether the token grants `permission` on `cache` at `now`. Expiry is
    /// judged first, so an expired token says so whatever it asks for.
    pub(crate) fn decide(
        &self,
        cache: &CacheName,
        permission: Permission,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        self.check_expiry(now)?;
        let granted = self
            .grants
            .iter()
            .any(|(pattern, granted)| *granted == permission && pattern.matches(cache));
        let allowed = self.conditions.iter().all(|condition| match condition {
            Condition::Caches(patterns) => patterns.iter().any(|p| p.matches(cache)),
            Condition::Permissions(permissions) => permissions.contains(&permission),
            Condition::NotAfter(_) => true,
            Condition::Never => false,
        });
        if granted && allowed {
            Ok(())
        } else {
            Err(Refusal::Denied)
        }
    }

    /// The earliest expiry any block sets, if one does.
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.conditions
            .iter()
            .filter_map(|condition| match condition {
                Condition::NotAfter(t) => Some(*t),
                _ => None,
            })
            .min()
    }

    /// Whether any block's expiry has passed at `now`.
    pub(crate) fn check_expiry(&self, now: SystemTime) -> Result<(), Refusal> {
        let now = seconds(now);
        let expired = self
            .conditions
            .iter()
            .any(|condition| matches!(condition, Condition::NotAfter(t) if now > *t));
        if expired {
            Err(Refusal::Expired)
        } else {
            Ok(())
        }
    }
}

/// Seconds since the Unix epoch, as biscuit dates count.
pub(crate) fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Matches one block against the shapes we write, resolving symbols.
struct BlockReader<'a> {
    table: &'a SymbolTable,
}

type Shape<T> = Result<T, &'static str>;

impl BlockReader<'_> {
    fn read_into(&self, block: &schema::Block, authority: bool, claims: &mut Claims) -> Shape<()> {
        if !block.rules.is_empty() {
            return Err("rules are not accepted");
        }
        if !block.scope.is_empty() || !block.public_keys.is_empty() {
            return Err("scopes and public keys are not accepted");
        }
        if !authority && !block.facts.is_empty() {
            return Err("an appended block may hold only checks");
        }
        for fact in &block.facts {
            self.read_authority_fact(&fact.predicate, claims)?;
        }
        for check in &block.checks {
            let condition = self.read_check(check)?;
            if authority && !matches!(condition, Condition::NotAfter(_)) {
                return Err("the authority block may check only its expiry");
            }
            claims.conditions.push(condition);
        }
        Ok(())
    }

    fn read_authority_fact(&self, predicate: &schema::Predicate, claims: &mut Claims) -> Shape<()> {
        match (self.symbol(predicate.name)?, predicate.terms.as_slice()) {
            ("subject", [subject]) if claims.subject.is_none() => {
                claims.subject = Some(self.string(subject)?.to_owned());
            }
            ("right", [pattern, permission]) => {
                let pattern = pattern_from_regex(self.string(pattern)?)?;
                let permission = self
                    .string(permission)?
                    .parse()
                    .map_err(|_| "an unknown permission")?;
                claims.grants.push((pattern, permission));
            }
            _ => return Err("an unknown fact"),
        }
        Ok(())
    }

    /// One `check if` of a shape [`crate::Attenuation`] writes.
    fn read_check(&self, check: &schema::Check) -> Shape<Condition> {
        if check.kind.unwrap_or(0) != schema::check::Kind::One as i32 {
            return Err("only `check if` is accepted");
        }
        let Some(first) = check.queries.first() else {
            return Err("a check without a query");
        };
        for query in &check.queries {
            if !query.head.terms.is_empty() || !query.scope.is_empty() {
                return Err("a check query of unknown shape");
            }
        }
        let first_body = first
            .body
            .first()
            .map(|p| self.symbol(p.name))
            .transpose()?;
        match (first_body, check.queries.len()) {
            (Some("time"), 1) => self.read_expiry(first).map(Condition::NotAfter),
            (Some("cache"), _) => check
                .queries
                .iter()
                .map(|query| self.read_cache_clause(query))
                .collect::<Shape<_>>()
                .map(Condition::Caches),
            (Some("operation"), _) => check
                .queries
                .iter()
                .map(|query| self.read_operation_clause(query))
                .collect::<Shape<_>>()
                .map(Condition::Permissions),
            (None, 1) if is_false(first) => Ok(Condition::Never),
            _ => Err("a check of unknown shape"),
        }
    }

    /// `time($t), $t <= <date>`.
    fn read_expiry(&self, query: &schema::Rule) -> Shape<u64> {
        let variable = self.single_variable_predicate(query, "time")?;
        match one_expression(query)?.as_slice() {
            [
                Op::Value(Some(Variable(v))),
                Op::Value(Some(Date(date))),
                Op::Binary(Some(LessOrEqual)),
            ] if *v == variable => Ok(*date),
            _ => Err("an expiry check of unknown shape"),
        }
    }

    /// `cache($c), $c.matches(<regex of a cache-name pattern>)`.
    fn read_cache_clause(&self, query: &schema::Rule) -> Shape<CacheNamePattern> {
        let variable = self.single_variable_predicate(query, "cache")?;
        match one_expression(query)?.as_slice() {
            [
                Op::Value(Some(Variable(v))),
                Op::Value(Some(Str(regex))),
                Op::Binary(Some(Regex)),
            ] if *v == variable => pattern_from_regex(self.symbol(*regex)?),
            _ => Err("a cache check of unknown shape"),
        }
    }

    /// `operation(<permission>)`.
    fn read_operation_clause(&self, query: &schema::Rule) -> Shape<Permission> {
        match query.body.as_slice() {
            [predicate] if query.expressions.is_empty() => {
                match (self.symbol(predicate.name)?, predicate.terms.as_slice()) {
                    ("operation", [permission]) => self
                        .string(permission)?
                        .parse()
                        .map_err(|_| "an unknown permission"),
                    _ => Err("an operation check of unknown shape"),
                }
            }
            _ => Err("an operation check of unknown shape"),
        }
    }

    /// The variable of a body that is exactly `name($v)`.
    fn single_variable_predicate(&self, query: &schema::Rule, name: &str) -> Shape<u32> {
        match query.body.as_slice() {
            [predicate] if self.symbol(predicate.name)? == name => match predicate.terms.as_slice()
            {
                [
                    schema::Term {
                        content: Some(Variable(v)),
                    },
                ] => Ok(*v),
                _ => Err("a predicate of unknown shape"),
            },
            _ => Err("a check body of unknown shape"),
        }
    }

    fn symbol(&self, symbol: u64) -> Shape<&str> {
        self.table.get_symbol(symbol).ok_or("an unknown symbol")
    }

    fn string(&self, term: &schema::Term) -> Shape<&str> {
        match term.content {
            Some(Str(symbol)) => self.symbol(symbol),
            _ => Err("a term that is not a string"),
        }
    }
}

use schema::op_binary::Kind::{LessOrEqual, Regex};
use schema::term::Content::{Bool, Date, String as Str, Variable};

/// The ops of a query's only expression.
fn one_expression(query: &schema::Rule) -> Shape<Vec<Op<'_>>> {
    match query.expressions.as_slice() {
        [expression] => Ok(expression.ops.iter().map(Op::of).collect()),
        _ => Err("a check with other than one expression"),
    }
}

/// `check if false`: no body, one expression that is the literal `false`.
fn is_false(query: &schema::Rule) -> bool {
    query.body.is_empty()
        && matches!(
            one_expression(query).as_deref(),
            Ok([Op::Value(Some(Bool(false)))])
        )
}

/// An op, flattened so shapes read as slice patterns.
#[derive(Debug)]
enum Op<'a> {
    Value(Option<&'a schema::term::Content>),
    Binary(Option<schema::op_binary::Kind>),
    /// Unary ops, closures, FFI: never in a token we accept.
    Other,
}

impl<'a> Op<'a> {
    fn of(op: &'a schema::Op) -> Self {
        match &op.content {
            Some(schema::op::Content::Value(term)) => Op::Value(term.content.as_ref()),
            Some(schema::op::Content::Binary(binary)) if binary.ffi_name.is_none() => {
                Op::Binary(schema::op_binary::Kind::from_i32(binary.kind))
            }
            _ => Op::Other,
        }
    }
}

/// The pattern a `right` fact or cache check carries as an anchored regex
/// ([`CacheNamePattern::to_regex`]), read back; anything else is refused,
/// so no regex from a token is ever compiled.
fn pattern_from_regex(regex: &str) -> Shape<CacheNamePattern> {
    let glob = regex
        .strip_prefix('^')
        .and_then(|r| r.strip_suffix('$'))
        .ok_or("a cache pattern that is not anchored")?
        .replace(".*", "*");
    let pattern: CacheNamePattern = glob
        .parse()
        .map_err(|_| "a cache pattern of unknown shape")?;
    if pattern.to_regex() == regex {
        Ok(pattern)
    } else {
        Err("a cache pattern of unknown shape")
    }
}
