//! What the MongoDB deployment can do, and the two ways of writing several documents
//! that follow from it.
//!
//! At start-up (or at the first use, if the server was down then) the server's `hello`
//! says what it is: a replica-set member (`setName`) or a `mongos` (`msg: "isdbgrid"`)
//! runs multi-document transactions; a standalone `mongod` does not. Its wire version
//! says whether one `bulkWrite` command can reach several collections (MongoDB 8.0+).
//!
//! [`MongoStore::several_writes`] runs a flow of several writes (reset a password,
//! delete an account, store a code with its mail) as one transaction where the
//! deployment has them, and otherwise as the same writes in the order the flow chose so
//! that an interruption leaves the account safe. `MONGO_TRANSACTIONS=off` forces the
//! ordered writes (tests run both ways on one server).

use std::future::Future;
use std::pin::Pin;

use mongodb::bson::{doc, Document};
use mongodb::ClientSession;

use super::MongoStore;
use crate::store::StoreResult;

/// The first wire version of MongoDB 8.0, whose `bulkWrite` command spans collections.
const WIRE_VERSION_8_0: i32 = 25;

/// What the server said about itself in `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFeatures {
    pub topology: Topology,
    /// `maxWireVersion`: which commands the server knows.
    pub wire_version: i32,
}

/// The kind of deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// A single `mongod` without a replica set: no multi-document transactions.
    Standalone,
    /// A member of the named replica set (Atlas clusters are replica sets).
    ReplicaSet(String),
    /// A `mongos` router of a sharded cluster.
    Sharded,
}

impl ServerFeatures {
    /// Reads a `hello` reply.
    pub fn from_hello(hello: &Document) -> Self {
        let topology = if let Ok(name) = hello.get_str("setName") {
            Topology::ReplicaSet(name.to_owned())
        } else if hello.get_str("msg") == Ok("isdbgrid") {
            Topology::Sharded
        } else {
            Topology::Standalone
        };
        let wire_version = match hello.get("maxWireVersion") {
            Some(mongodb::bson::Bson::Int32(n)) => *n,
            Some(mongodb::bson::Bson::Int64(n)) => i32::try_from(*n).unwrap_or(i32::MAX),
            _ => 0,
        };
        Self {
            topology,
            wire_version,
        }
    }

    /// Whether the deployment runs multi-document transactions.
    pub fn transactions(&self) -> bool {
        !matches!(self.topology, Topology::Standalone)
    }

    /// Whether one `bulkWrite` command can write to several collections.
    pub fn client_bulk_write(&self) -> bool {
        self.wire_version >= WIRE_VERSION_8_0
    }
}

/// How a flow of several writes runs on this store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultiWrite {
    /// One multi-document transaction: all of the flow or none of it.
    Transactions(Topology),
    /// The writes one after another, in the order that keeps the account safe; `why`
    /// says why not in a transaction.
    OrderedWrites { why: &'static str },
}

impl std::fmt::Display for MultiWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transactions(Topology::ReplicaSet(name)) => {
                write!(f, "transactions (replica set {name})")
            }
            Self::Transactions(_) => write!(f, "transactions (sharded cluster)"),
            Self::OrderedWrites { why } => write!(f, "ordered writes ({why})"),
        }
    }
}

/// A boxed future borrowing for `'b` (what the driver's transaction callback returns).
pub(super) type BoxFuture<'b, T> = Pin<Box<dyn Future<Output = T> + Send + 'b>>;

/// A flow of writes for [`MongoStore::several_writes`]: given the transaction's session
/// (or none) and the flow's context, the writes in order.
pub(super) type Writes<C, R> = for<'b> fn(
    Option<&'b mut ClientSession>,
    &'b mut C,
) -> BoxFuture<'b, mongodb::error::Result<R>>;

impl MongoStore {
    /// What the server can do; asked once (one `hello`), then remembered.
    pub async fn features(&self) -> StoreResult<ServerFeatures> {
        self.features
            .get_or_try_init(|| async {
                let hello = self.run(self.db.run_command(doc! { "hello": 1 })).await?;
                Ok(ServerFeatures::from_hello(&hello))
            })
            .await
            .cloned()
    }

    /// How flows of several writes run here: transactions where the server has them,
    /// unless `MONGO_TRANSACTIONS=off`.
    pub async fn multi_write(&self) -> StoreResult<MultiWrite> {
        let features = self.features().await?;
        Ok(if !self.allow_transactions {
            MultiWrite::OrderedWrites {
                why: "MONGO_TRANSACTIONS=off",
            }
        } else if features.transactions() {
            MultiWrite::Transactions(features.topology)
        } else {
            MultiWrite::OrderedWrites {
                why: "a standalone server has no transactions",
            }
        })
    }

    /// Runs `writes` as one transaction where the deployment has them (retrying a
    /// transient transaction error, within the store timeout), else as the ordered writes
    /// they are. `name` names the flow in the metrics.
    pub(super) async fn several_writes<C, R>(
        &self,
        name: &'static str,
        mut context: C,
        writes: Writes<C, R>,
    ) -> StoreResult<R>
    where
        C: Send + Sync,
        R: Send,
    {
        match self.multi_write().await? {
            MultiWrite::Transactions(_) => {
                let client = self.db.client().clone();
                self.run_named(name, true, async move {
                    let mut session = client.start_session().await?;
                    session
                        .start_transaction()
                        .and_run(context, |session, context| writes(Some(session), context))
                        .await
                })
                .await
            }
            MultiWrite::OrderedWrites { .. } => {
                self.run_named(name, true, async move { writes(None, &mut context).await })
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_tells_the_topology_and_what_it_allows() {
        let standalone = ServerFeatures::from_hello(&doc! {
            "isWritablePrimary": true, "maxWireVersion": 21,
        });
        assert_eq!(standalone.topology, Topology::Standalone);
        assert!(!standalone.transactions() && !standalone.client_bulk_write());

        // What SecantusDB answers.
        let secantus = ServerFeatures::from_hello(&doc! {
            "isWritablePrimary": true, "maxWireVersion": 27, "setName": "secantus",
        });
        assert_eq!(secantus.topology, Topology::ReplicaSet("secantus".into()));
        assert!(secantus.transactions() && secantus.client_bulk_write());

        let mongos = ServerFeatures::from_hello(&doc! {
            "msg": "isdbgrid", "maxWireVersion": 25_i64,
        });
        assert_eq!(mongos.topology, Topology::Sharded);
        assert!(mongos.transactions() && mongos.client_bulk_write());
    }
}
