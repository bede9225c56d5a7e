#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod audit;
pub mod catalog;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod crypto;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod handlers;
pub mod http;
pub mod integrations;
pub mod mcp;
pub mod model;
pub mod oauth;
mod redact;
pub mod scrub;
pub mod store;
pub mod transport;
pub mod vault;

pub use audit::{
    Action, AuditChain, AuditEvent, AuditRecord, AuditTarget, ChainHead, Checkpoint, Outcome,
    VerifyReport,
};
pub use crypto::{key_wrapper_from_env, DataKey, KeyRing, KeyWrapper, LocalKey};
pub use error::{Error, ErrorKind, Result, StoreErrorKind};
pub use model::Grant;
pub use model::{
    BoundFields, CredentialId, CredentialRecord, LifecycleState, Record, RecordAad, RecordIdentity,
    RecordKey, Scope, ScopeKind, Timestamp, DEFAULT_NAMESPACE,
};
pub use scrub::{Scrubber, ScrubberConfig};
pub use secrecy::{ExposeSecret, SecretBox, SecretString};
pub use store::lease::{Lease, LeaseClaim};
pub use store::{
    stale_read, AuditQuery, AuditWindow, Batch, CommitReceipt, ListFilter, MemoryStore, Mutation,
    Precondition, ReadStamp, RecordFilter, Store,
};
#[cfg(feature = "postgres")]
pub use store::{PostgresOptions, PostgresStore, PostgresWriterStats};
#[cfg(feature = "sqlite")]
pub use store::{SqliteOptions, SqliteStore};
#[cfg(feature = "reqwest")]
pub use transport::ReqwestTransport;
pub use transport::{Bytes, HttpTransport};
pub use vault::{
    AgentCredentials, BlobCheck, CredentialFilter, CredentialInfo, CredentialProviderInfo,
    CredentialRef, CredentialUpdate, CredentialVersion, DeprovisionReport, DeprovisionStep,
    GithubAppLink, HeldFields, NamedSecret, NamedSource, NewCredential, Principal,
    ProvisioningReport, RecoveredIntent, ResealOptions, ResealProgress, ResealReport,
    ResealSelection, ResolveContext, ResolveItem, ResolveManyError, Resolved, RevealedCredential,
    RewrapOptions, RewrapProgress, RewrapReport, RotationOutcome, RotationReport, UnlinkReport,
    Vault, VaultBuilder, Verification, VerifyResult, VersionChange,
};
