//! The replicated state machine: the applied [`Config`], the last applied log id, the last
//! membership, the idempotency table and the current snapshot, all in sled; and the watch that
//! publishes each newly applied configuration.
//!
//! Applying is deterministic, and so is everything that is part of the replicated state —
//! including which idempotency keys are still remembered: every node must answer a retried
//! write the same way, however openraft happens to batch the entries it applies. Each apply
//! is one sled transaction, flushed before it returns, so a restart needs no replay.

// openraft's `StorageError` is large, and its traits return it: the helpers do too.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fulcrum_model::{Config, codec};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionResult, TransactionResult};
use tokio::sync::{Mutex, watch};

use crate::error::Failure;
use crate::types::{Applied, IdempotencyKey, NodeId, Request, Response, TypeConfig};

/// How many idempotency keys are remembered: the most recently written ones. A write retried
/// after this many others may apply twice; a client retries within seconds, far sooner.
pub const IDEMPOTENCY_KEYS_KEPT: u64 = 10_000;

const STATE_TREE: &str = "sm_state";
const IDEMPOTENCY_TREE: &str = "sm_idempotency";
const IDEMPOTENCY_ORDER_TREE: &str = "sm_idempotency_order";
const SNAPSHOT_TREE: &str = "sm_snapshot";

const KEY_CONFIG: &[u8] = b"config";
const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_CURRENT_SNAPSHOT: &[u8] = b"current";

type Entry = openraft::Entry<TypeConfig>;
type Membership = StoredMembership<NodeId, BasicNode>;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The state machine of one node. Clones share it: openraft drives one, the rest of the node
/// reads the configuration and watches it through others.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let revision = self.inner.applied.borrow().0;
        f.debug_struct("StateMachineStore").field("revision", &revision).finish_non_exhaustive()
    }
}

struct Inner {
    db: sled::Db,
    trees: Trees,
    /// Held by every write and by snapshot building, so a snapshot is one consistent state.
    state: Mutex<State>,
    /// Always holds the applied configuration: `config()` reads it without the lock.
    applied: watch::Sender<Applied>,
    /// Makes snapshot ids unique; seeded from the clock so they stay unique across restarts.
    next_snapshot: AtomicU64,
}

struct Trees {
    /// The configuration, the last applied log id, the last membership.
    state: sled::Tree,
    /// Idempotency key (its 16 bytes) → [`IdempotencyRecord`].
    idempotency: sled::Tree,
    /// Log index (big-endian) of the write that recorded a key → the key: oldest first.
    order: sled::Tree,
    /// The current snapshot, a [`StoredSnapshot`].
    snapshot: sled::Tree,
}

/// The state machine as last applied, in memory.
struct State {
    config: Arc<Config>,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    /// How many keys the idempotency table holds (sled counts by scanning).
    idempotency_keys: u64,
    /// Whether the configuration is on disk. The first apply writes it even unchanged, so
    /// from then on a store with entries applied but no configuration is a damaged one.
    config_stored: bool,
}

/// One remembered write: its key, the log index that first applied it, and the response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct IdempotencyRecord {
    index: u64,
    key: IdempotencyKey,
    response: Response,
}

/// What a snapshot holds: the whole replicated state.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotPayload {
    config: Config,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    /// Oldest first.
    idempotency: Vec<IdempotencyRecord>,
}

/// The current snapshot as stored: its meta and its encoded [`SnapshotPayload`].
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

fn order_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_error(e: &(dyn std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::from_dyn(e, None)).into()
}

fn write_error(e: &(dyn std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::from_dyn(e, None)).into()
}

fn encode<T: Serialize>(value: &T) -> StorageResult<Vec<u8>> {
    codec::encode(value).map_err(|e| write_error(&e))
}

/// Reads and decodes `key` of `tree` while loading.
fn load_value<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, Failure> {
    match tree.get(key) {
        Ok(Some(bytes)) => codec::decode(&bytes).map(Some).map_err(|e| Failure::Corrupt(what, e)),
        Ok(None) => Ok(None),
        Err(e) => Err(Failure::Sled(what, e)),
    }
}

impl StateMachineStore {
    /// Opens the state machine in `db`, as last applied.
    pub(crate) fn load(db: &sled::Db) -> Result<StateMachineStore, Failure> {
        let open =
            |name| db.open_tree(name).map_err(|e| Failure::Sled("open a state machine tree", e));
        let trees = Trees {
            state: open(STATE_TREE)?,
            idempotency: open(IDEMPOTENCY_TREE)?,
            order: open(IDEMPOTENCY_ORDER_TREE)?,
            snapshot: open(SNAPSHOT_TREE)?,
        };
        let stored: Option<Config> =
            load_value(&trees.state, KEY_CONFIG, "the applied configuration")?;
        let last_applied: Option<LogId<NodeId>> =
            load_value(&trees.state, KEY_LAST_APPLIED, "the last applied log id")?.flatten();
        // Never serve an empty configuration in place of one that was committed.
        if stored.is_none() && last_applied.is_some() {
            return Err(Failure::Missing("the applied configuration"));
        }
        let config_stored = stored.is_some();
        let config = stored.unwrap_or_default();
        let membership =
            load_value(&trees.state, KEY_MEMBERSHIP, "the last membership")?.unwrap_or_default();
        let config = Arc::new(config);
        let (applied, _) = watch::channel((config.revision, Arc::clone(&config)));
        let state = State {
            config,
            last_applied,
            membership,
            idempotency_keys: trees.order.len() as u64,
            config_stored,
        };
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                db: db.clone(),
                trees,
                state: Mutex::new(state),
                applied,
                next_snapshot: AtomicU64::new(seed),
            }),
        })
    }

    /// Fires with (revision, config) after every apply that changes the configuration, and
    /// after every snapshot install.
    pub fn watch(&self) -> watch::Receiver<Applied> {
        self.inner.applied.subscribe()
    }

    /// The configuration applied so far.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.inner.applied.borrow().1)
    }

    async fn flush(&self) -> StorageResult<()> {
        match self.inner.db.flush_async().await {
            Ok(_) => Ok(()),
            Err(e) => Err(write_error(&e)),
        }
    }

    /// Works out in memory what applying `entries` to `state` gives; writes nothing.
    fn plan(&self, state: &State, entries: impl IntoIterator<Item = Entry>) -> StorageResult<Plan> {
        let mut config: Option<Config> = None;
        let mut last_applied = state.last_applied;
        let mut membership = None;
        let mut table = Window::new(&self.inner.trees, state.idempotency_keys);
        let mut responses = Vec::new();
        for entry in entries {
            last_applied = Some(entry.log_id);
            let revision = config.as_ref().unwrap_or(&state.config).revision;
            let response = match entry.payload {
                EntryPayload::Blank => Response { result: Ok(revision) },
                EntryPayload::Membership(members) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), members));
                    Response { result: Ok(revision) }
                }
                EntryPayload::Normal(Request { idempotency_key, command }) => {
                    let seen = match &idempotency_key {
                        Some(key) => table.lookup(key)?,
                        None => None,
                    };
                    match seen {
                        // A retry: answered as the first time, and nothing changes.
                        Some(response) => response,
                        None => {
                            let working =
                                config.get_or_insert_with(|| Config::clone(&state.config));
                            // All-or-nothing: a rejected command leaves `working` unchanged.
                            let response = Response { result: working.apply(&command) };
                            if let Some(key) = idempotency_key {
                                let index = entry.log_id.index;
                                table.insert(IdempotencyRecord {
                                    index,
                                    key,
                                    response: response.clone(),
                                })?;
                            }
                            response
                        }
                    }
                }
            };
            responses.push(response);
        }
        // Rejected commands change nothing, so an unchanged revision is an unchanged config.
        let config = config.filter(|config| config.revision != state.config.revision);
        let unstored_config =
            (config.is_none() && !state.config_stored).then(|| Arc::clone(&state.config));
        Ok(Plan {
            config,
            unstored_config,
            last_applied,
            membership,
            evicted: table.evicted,
            added: table.added.into_iter().collect(),
            idempotency_keys: table.count,
            responses,
        })
    }

    /// Writes `plan` in one transaction.
    fn write_plan(&self, plan: &Plan) -> StorageResult<()> {
        let config = match (&plan.config, &plan.unstored_config) {
            (Some(changed), _) => Some(encode(changed)?),
            (None, Some(unchanged)) => Some(encode(&**unchanged)?),
            (None, None) => None,
        };
        let last_applied = encode(&plan.last_applied)?;
        let membership = plan.membership.as_ref().map(encode).transpose()?;
        let added = plan
            .added
            .iter()
            .map(|record| {
                Ok((record.key, encode(record)?, order_key(record.index), encode(&record.key)?))
            })
            .collect::<StorageResult<Vec<_>>>()?;
        let trees = &self.inner.trees;
        let result: TransactionResult<(), Infallible> =
            (&trees.state, &trees.idempotency, &trees.order).transaction(|(state, keys, order)| {
                if let Some(config) = &config {
                    state.insert(KEY_CONFIG, config.as_slice())?;
                }
                state.insert(KEY_LAST_APPLIED, last_applied.as_slice())?;
                if let Some(membership) = &membership {
                    state.insert(KEY_MEMBERSHIP, membership.as_slice())?;
                }
                // Evictions first: an evicted key written again must end up present.
                for (index, key) in &plan.evicted {
                    keys.remove(&key.0[..])?;
                    order.remove(&order_key(*index)[..])?;
                }
                for (key, record, index, key_bytes) in &added {
                    keys.insert(&key.0[..], record.as_slice())?;
                    order.insert(&index[..], key_bytes.as_slice())?;
                }
                Ok(())
            });
        result.map_err(|e| write_error(&e))
    }

    /// Reads the idempotency table, oldest first.
    fn idempotency_records(&self) -> StorageResult<Vec<IdempotencyRecord>> {
        let trees = &self.inner.trees;
        trees
            .order
            .iter()
            .map(|item| {
                let (_, key) = item.map_err(|e| read_error(&e))?;
                let key: IdempotencyKey = codec::decode(&key).map_err(|e| read_error(&e))?;
                let record = trees.idempotency.get(key.0).map_err(|e| read_error(&e))?;
                let record = record.ok_or_else(|| {
                    read_error(&AnyError::error(
                        "an idempotency key is in the order but not the table",
                    ))
                })?;
                codec::decode(&record).map_err(|e| read_error(&e))
            })
            .collect()
    }

    fn read_current_snapshot(&self) -> StorageResult<Option<StoredSnapshot>> {
        let bytes = self
            .inner
            .trees
            .snapshot
            .get(KEY_CURRENT_SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        bytes
            .map(|bytes| codec::decode(&bytes))
            .transpose()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }

    /// Publishes `config` on the watch; it never fails, even with no receiver.
    fn publish(&self, config: &Arc<Config>) {
        self.inner.applied.send_replace((config.revision, Arc::clone(config)));
    }
}

/// What applying a batch does, worked out before anything is written.
struct Plan {
    /// The new configuration, if the batch changed it.
    config: Option<Config>,
    /// The unchanged configuration, to write once because it never was.
    unstored_config: Option<Arc<Config>>,
    last_applied: Option<LogId<NodeId>>,
    /// The last membership in the batch, if any.
    membership: Option<Membership>,
    /// Stored records to delete: (their index, their key).
    evicted: Vec<(u64, IdempotencyKey)>,
    /// Records to store.
    added: Vec<IdempotencyRecord>,
    idempotency_keys: u64,
    responses: Vec<Response>,
}

/// The idempotency table as it evolves through one batch: the stored records, plus the ones
/// the batch adds, minus the oldest ones evicted to stay within [`IDEMPOTENCY_KEYS_KEPT`].
///
/// Evicting after every insertion (not once per batch) keeps the answers independent of how
/// the entries are batched, which differs from node to node.
struct Window<'a> {
    trees: &'a Trees,
    /// Records in the table now.
    count: u64,
    /// The oldest stored record not evicted yet, as a position to resume from.
    next_stored: Option<u64>,
    evicted: Vec<(u64, IdempotencyKey)>,
    evicted_keys: HashSet<IdempotencyKey>,
    added: VecDeque<IdempotencyRecord>,
    added_keys: HashMap<IdempotencyKey, Response>,
}

impl<'a> Window<'a> {
    fn new(trees: &'a Trees, count: u64) -> Window<'a> {
        Window {
            trees,
            count,
            next_stored: Some(0),
            evicted: Vec::new(),
            evicted_keys: HashSet::new(),
            added: VecDeque::new(),
            added_keys: HashMap::new(),
        }
    }

    /// The response remembered for `key`, if it is still in the window.
    fn lookup(&self, key: &IdempotencyKey) -> StorageResult<Option<Response>> {
        if let Some(response) = self.added_keys.get(key) {
            return Ok(Some(response.clone()));
        }
        if self.evicted_keys.contains(key) {
            return Ok(None);
        }
        let Some(bytes) = self.trees.idempotency.get(key.0).map_err(|e| read_error(&e))? else {
            return Ok(None);
        };
        let record: IdempotencyRecord = codec::decode(&bytes).map_err(|e| read_error(&e))?;
        Ok(Some(record.response))
    }

    fn insert(&mut self, record: IdempotencyRecord) -> StorageResult<()> {
        self.added_keys.insert(record.key, record.response.clone());
        self.added.push_back(record);
        self.count += 1;
        while self.count > IDEMPOTENCY_KEYS_KEPT {
            self.evict_oldest()?;
            self.count -= 1;
        }
        Ok(())
    }

    fn evict_oldest(&mut self) -> StorageResult<()> {
        // Stored records are all older than the batch's.
        if let Some(from) = self.next_stored {
            let oldest = self.trees.order.range(order_key(from)..).next();
            if let Some(item) = oldest {
                let (index, key) = item.map_err(|e| read_error(&e))?;
                let index =
                    <[u8; 8]>::try_from(&index[..]).map(u64::from_be_bytes).map_err(|_| {
                        read_error(&AnyError::error("an idempotency order key is not 8 bytes"))
                    })?;
                let key: IdempotencyKey = codec::decode(&key).map_err(|e| read_error(&e))?;
                self.evicted.push((index, key));
                self.evicted_keys.insert(key);
                self.next_stored = index.checked_add(1);
                return Ok(());
            }
            self.next_stored = None;
        }
        if let Some(record) = self.added.pop_front() {
            self.added_keys.remove(&record.key);
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let state = self.inner.state.lock().await;
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.inner.state.lock().await;
        let plan = self.plan(&state, entries)?;
        if plan.responses.is_empty() {
            return Ok(plan.responses);
        }
        self.write_plan(&plan)?;
        state.last_applied = plan.last_applied;
        if let Some(membership) = plan.membership {
            state.membership = membership;
        }
        state.idempotency_keys = plan.idempotency_keys;
        state.config_stored = true;
        let changed = plan.config.map(Arc::new);
        if let Some(config) = &changed {
            state.config = Arc::clone(config);
        }
        // Durable before openraft (and the client) learn the result.
        self.flush().await?;
        if let Some(config) = &changed {
            self.publish(config);
        }
        Ok(plan.responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { store: self.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let signature = || Some(meta.signature());
        let data = snapshot.into_inner();
        let payload: SnapshotPayload =
            codec::decode(&data).map_err(|e| StorageIOError::read_snapshot(signature(), &e))?;
        if payload.last_applied != meta.last_log_id || payload.membership != meta.last_membership {
            let problem = format!(
                "the snapshot's data is at {:?} with {:?}, its meta says {meta}",
                payload.last_applied, payload.membership
            );
            return Err(StorageIOError::read_snapshot(signature(), AnyError::error(problem)).into());
        }
        let write = |e: &(dyn std::error::Error + 'static)| -> StorageError<NodeId> {
            StorageIOError::write_snapshot(signature(), AnyError::from_dyn(e, None)).into()
        };
        let config = codec::encode(&payload.config).map_err(|e| write(&e))?;
        let last_applied = codec::encode(&payload.last_applied).map_err(|e| write(&e))?;
        let membership = codec::encode(&payload.membership).map_err(|e| write(&e))?;
        let records = payload
            .idempotency
            .iter()
            .map(|r| Ok((r.key, codec::encode(r)?, order_key(r.index), codec::encode(&r.key)?)))
            .collect::<Result<Vec<_>, codec::CodecError>>()
            .map_err(|e| write(&e))?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        let stored = codec::encode(&stored).map_err(|e| write(&e))?;

        let mut state = self.inner.state.lock().await;
        let trees = &self.inner.trees;
        // Replace, never merge: every key the table holds now goes, whatever the snapshot has.
        let old_keys = trees.idempotency.iter().keys().collect::<Result<Vec<_>, _>>();
        let old_order = trees.order.iter().keys().collect::<Result<Vec<_>, _>>();
        let (old_keys, old_order) =
            (old_keys.map_err(|e| write(&e))?, old_order.map_err(|e| write(&e))?);
        let result: TransactionResult<(), Infallible> =
            (&trees.state, &trees.idempotency, &trees.order, &trees.snapshot).transaction(
                |(state, keys, order, snapshot)| {
                    install(
                        state,
                        keys,
                        order,
                        snapshot,
                        &old_keys,
                        &old_order,
                        &records,
                        [&config, &last_applied, &membership, &stored],
                    )
                },
            );
        result.map_err(|e| write(&e))?;
        let config = Arc::new(payload.config);
        *state = State {
            config: Arc::clone(&config),
            last_applied: payload.last_applied,
            membership: payload.membership,
            idempotency_keys: records.len() as u64,
            config_stored: true,
        };
        self.flush().await?;
        self.publish(&config);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.read_current_snapshot()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

type EncodedRecord = (IdempotencyKey, Vec<u8>, [u8; 8], Vec<u8>);

/// The body of `install_snapshot`'s transaction.
#[allow(clippy::too_many_arguments)]
fn install(
    state: &sled::transaction::TransactionalTree,
    keys: &sled::transaction::TransactionalTree,
    order: &sled::transaction::TransactionalTree,
    snapshot: &sled::transaction::TransactionalTree,
    old_keys: &[sled::IVec],
    old_order: &[sled::IVec],
    records: &[EncodedRecord],
    [config, last_applied, membership, stored]: [&Vec<u8>; 4],
) -> ConflictableTransactionResult<(), Infallible> {
    for key in old_keys {
        keys.remove(key)?;
    }
    for index in old_order {
        order.remove(index)?;
    }
    for (key, record, index, key_bytes) in records {
        keys.insert(&key.0[..], record.as_slice())?;
        order.insert(&index[..], key_bytes.as_slice())?;
    }
    state.insert(KEY_CONFIG, config.as_slice())?;
    state.insert(KEY_LAST_APPLIED, last_applied.as_slice())?;
    state.insert(KEY_MEMBERSHIP, membership.as_slice())?;
    snapshot.insert(KEY_CURRENT_SNAPSHOT, stored.as_slice())?;
    Ok(())
}

/// Builds snapshots of a [`StateMachineStore`] while it keeps applying.
#[derive(Debug)]
pub struct SnapshotBuilder {
    store: StateMachineStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let store = &self.store;
        // Held to the end: no apply or install slips between reading the state and storing
        // the snapshot, so the snapshot is one state and never older than one installed.
        let state = store.inner.state.lock().await;
        let payload = SnapshotPayload {
            config: Config::clone(&state.config),
            last_applied: state.last_applied,
            membership: state.membership.clone(),
            idempotency: store.idempotency_records()?,
        };
        let count = store.inner.next_snapshot.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match state.last_applied {
            Some(id) => format!("{}-{}-{count}", id.leader_id.term, id.index),
            None => format!("none-none-{count}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id,
        };
        let signature = || Some(meta.signature());
        let data =
            codec::encode(&payload).map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        let bytes =
            codec::encode(&stored).map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        store
            .inner
            .trees
            .snapshot
            .insert(KEY_CURRENT_SNAPSHOT, bytes)
            .map_err(|e| StorageIOError::write_snapshot(signature(), &e))?;
        store.flush().await?;
        drop(state);
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use fulcrum_model::command::ObjectKind;
    use fulcrum_model::{ApplyError, Command, Pool};
    use openraft::{CommittedLeaderId, Membership as RaftMembership};

    use super::*;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn key(n: u8) -> IdempotencyKey {
        IdempotencyKey([n; 16])
    }

    fn put_pool(name: &str) -> Command {
        Command::PutPool(Pool::new(name.parse().unwrap()))
    }

    fn delete_missing_pool() -> Command {
        Command::DeletePool("missing".parse().unwrap())
    }

    fn normal(index: u64, idempotency_key: Option<IdempotencyKey>, command: Command) -> Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Request { idempotency_key, command }),
        }
    }

    fn membership(index: u64, ids: &[NodeId]) -> Entry {
        let nodes: BTreeMap<NodeId, BasicNode> =
            ids.iter().map(|id| (*id, BasicNode::new(format!("10.0.0.{id}:7000")))).collect();
        let members = RaftMembership::new(vec![ids.iter().copied().collect()], nodes);
        Entry { log_id: log_id(index), payload: EntryPayload::Membership(members) }
    }

    fn open_state_machine() -> (tempfile::TempDir, StateMachineStore) {
        let dir = tempfile::tempdir().unwrap();
        let (_, state_machine) = crate::store::open(dir.path()).unwrap();
        (dir, state_machine)
    }

    fn pools(config: &Config) -> Vec<&str> {
        config.spec.pools.iter().map(|pool| pool.name.as_str()).collect()
    }

    fn ok(revision: u64) -> Response {
        Response { result: Ok(revision) }
    }

    #[tokio::test]
    async fn a_duplicate_key_applies_once_and_gets_the_first_response() {
        let (_dir, mut sm) = open_state_machine();
        let first = sm.apply([normal(1, Some(key(1)), put_pool("web"))]).await.unwrap();
        assert_eq!(first, vec![ok(1)]);

        // A retry with the same key, even carrying another command, changes nothing.
        let retried = sm.apply([normal(2, Some(key(1)), put_pool("api"))]).await.unwrap();
        assert_eq!(retried, vec![ok(1)]);
        assert_eq!(sm.config().revision, 1);
        assert_eq!(pools(&sm.config()), ["web"]);

        // Within one batch too; the key-less command applies every time.
        let batch = sm
            .apply([
                normal(3, Some(key(2)), put_pool("api")),
                normal(4, Some(key(2)), put_pool("db")),
                normal(5, None, put_pool("api")),
            ])
            .await
            .unwrap();
        assert_eq!(batch, vec![ok(2), ok(2), ok(3)]);
        assert_eq!(pools(&sm.config()), ["web", "api"]);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(5)));
    }

    #[tokio::test]
    async fn a_rejected_command_changes_nothing_but_advances_last_applied() {
        let (_dir, mut sm) = open_state_machine();
        sm.apply([normal(1, None, put_pool("web"))]).await.unwrap();
        let before = sm.config();

        let responses = sm.apply([normal(2, Some(key(7)), delete_missing_pool())]).await.unwrap();
        let expected = ApplyError::NotFound { kind: ObjectKind::Pool, name: "missing".into() };
        assert_eq!(responses, vec![Response { result: Err(expected.clone()) }]);
        assert_eq!(*sm.config(), *before);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2)));

        // The rejection is remembered like any response.
        let retried = sm.apply([normal(3, Some(key(7)), delete_missing_pool())]).await.unwrap();
        assert_eq!(retried, vec![Response { result: Err(expected) }]);
    }

    #[tokio::test]
    async fn blank_and_membership_entries_answer_the_current_revision() {
        let (_dir, mut sm) = open_state_machine();
        let responses = sm
            .apply([
                Entry { log_id: log_id(1), payload: EntryPayload::Blank },
                normal(2, None, put_pool("web")),
                membership(3, &[1, 2]),
            ])
            .await
            .unwrap();
        assert_eq!(responses, vec![ok(0), ok(1), ok(1)]);
        let (applied, members) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(3)));
        assert_eq!(members.log_id(), &Some(log_id(3)));
        assert_eq!(members.voter_ids().collect::<Vec<_>>(), [1, 2]);
    }

    #[tokio::test]
    async fn the_idempotency_window_does_not_depend_on_batching() {
        // Key 0 writes first, then IDEMPOTENCY_KEYS_KEPT other keyed writes push it out of
        // the window: its retry applies again, whether the retry shares their batch or not.
        let keyed = |i: u64| {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&i.to_be_bytes());
            IdempotencyKey(bytes)
        };
        let mut entries = vec![normal(1, Some(keyed(0)), put_pool("web"))];
        entries.extend(
            (1..=IDEMPOTENCY_KEYS_KEPT)
                .map(|i| normal(i + 1, Some(keyed(i)), delete_missing_pool())),
        );
        let retry_index = IDEMPOTENCY_KEYS_KEPT + 2;
        let retry = normal(retry_index, Some(keyed(0)), put_pool("web"));

        let (_one, mut in_one_batch) = open_state_machine();
        let mut all = entries.clone();
        all.push(retry.clone());
        let responses = in_one_batch.apply(all).await.unwrap();

        let (_two, mut in_two_batches) = open_state_machine();
        in_two_batches.apply(entries).await.unwrap();
        let last = in_two_batches.apply([retry]).await.unwrap();

        assert_eq!(responses.last(), Some(&ok(2)), "key 0 was evicted: the retry applies");
        assert_eq!(last, vec![ok(2)]);
        assert_eq!(in_one_batch.config(), in_two_batches.config());
        for sm in [&in_one_batch, &in_two_batches] {
            let records = sm.idempotency_records().unwrap();
            assert_eq!(records.len() as u64, IDEMPOTENCY_KEYS_KEPT);
            assert_eq!(records.first().map(|r| r.key), Some(keyed(2)));
            assert_eq!(records.last().map(|r| (r.key, r.index)), Some((keyed(0), retry_index)));
        }
    }

    #[tokio::test]
    async fn install_snapshot_replaces_the_state() {
        let (_leader_dir, mut leader) = open_state_machine();
        leader
            .apply([membership(1, &[1, 2, 3]), normal(2, Some(key(1)), put_pool("web"))])
            .await
            .unwrap();
        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(2)));

        let (_follower_dir, mut follower) = open_state_machine();
        follower
            .apply([
                normal(1, Some(key(2)), put_pool("stale")),
                normal(2, None, put_pool("older")),
                normal(3, None, put_pool("gone")),
            ])
            .await
            .unwrap();
        let mut receiving = follower.begin_receiving_snapshot().await.unwrap();
        assert!(receiving.get_ref().is_empty());
        *receiving = *snapshot.snapshot;
        follower.install_snapshot(&snapshot.meta, receiving).await.unwrap();

        assert_eq!(*follower.config(), *leader.config());
        assert_eq!(pools(&follower.config()), ["web"]);
        assert_eq!(follower.applied_state().await.unwrap(), leader.applied_state().await.unwrap());
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);

        // The follower's own key is gone, the leader's is remembered.
        let responses = follower
            .apply([
                normal(3, Some(key(2)), put_pool("api")),
                normal(4, Some(key(1)), put_pool("db")),
            ])
            .await
            .unwrap();
        assert_eq!(responses, vec![ok(2), ok(1)]);
        assert_eq!(pools(&follower.config()), ["web", "api"]);
    }

    #[tokio::test]
    async fn a_snapshot_whose_data_disagrees_with_its_meta_is_refused() {
        let (_dir, mut sm) = open_state_machine();
        sm.apply([normal(1, None, put_pool("web"))]).await.unwrap();
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let mut meta = snapshot.meta.clone();
        meta.last_log_id = Some(log_id(9));
        assert!(sm.install_snapshot(&meta, snapshot.snapshot.clone()).await.is_err());
        let garbage = Box::new(Cursor::new(vec![1, 2, 3]));
        assert!(sm.install_snapshot(&snapshot.meta, garbage).await.is_err());
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1)));
    }

    #[tokio::test]
    async fn the_watch_fires_after_apply_and_after_install() {
        let (_dir, mut sm) = open_state_machine();
        let mut watch = sm.watch();
        assert_eq!(watch.borrow_and_update().0, 0);

        sm.apply([normal(1, None, put_pool("web"))]).await.unwrap();
        assert!(watch.has_changed().unwrap());
        let (revision, config) = watch.borrow_and_update().clone();
        assert_eq!(revision, 1);
        assert_eq!(pools(&config), ["web"]);

        // A rejected command leaves the revision alone: no notification.
        sm.apply([normal(2, None, delete_missing_pool())]).await.unwrap();
        assert!(!watch.has_changed().unwrap());

        let (_other_dir, mut other) = open_state_machine();
        other
            .apply([normal(1, None, put_pool("api")), normal(2, None, put_pool("db"))])
            .await
            .unwrap();
        let snapshot = other.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        assert!(watch.has_changed().unwrap());
        let (revision, config) = watch.borrow_and_update().clone();
        assert_eq!(revision, 2);
        assert_eq!(pools(&config), ["api", "db"]);
        assert_eq!(pools(&sm.config()), ["api", "db"]);
    }

    #[tokio::test]
    async fn a_store_that_lost_its_configuration_refuses_to_open_rather_than_serve_an_empty_one() {
        let (dir, mut sm) = open_state_machine();
        // Only a blank entry: the configuration is written anyway, so it can be missed later.
        sm.apply([Entry { log_id: log_id(1), payload: EntryPayload::Blank }]).await.unwrap();
        drop(sm);
        let (_, reopened) = crate::store::open(dir.path()).unwrap();
        assert_eq!(reopened.config().revision, 0);
        drop(reopened);

        let db = sled::open(dir.path()).unwrap();
        db.open_tree(STATE_TREE).unwrap().remove(KEY_CONFIG).unwrap();
        db.flush().unwrap();
        drop(db);
        let error = crate::store::open(dir.path()).map(drop).unwrap_err();
        assert!(
            matches!(&error, crate::StoreError::Damaged { problem, .. } if problem.contains("configuration is missing")),
            "{error}"
        );
        assert!(error.to_string().contains("member remove"), "says how to recover: {error}");
    }
}
