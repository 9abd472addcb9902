//! The registry service's one error type. `api::error` maps it to the wire.

use crate::catalog::CatalogError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid repository name {0:?}")]
    NameInvalid(String),
    #[error("repository {0} is not known to the registry")]
    NameUnknown(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("blob {0} is unknown to the repository")]
    BlobUnknown(String),
    #[error("upload {0} is unknown to the repository")]
    BlobUploadUnknown(String),
    #[error("{0}")]
    BlobUploadInvalid(String),
    /// A chunk that does not continue the upload where it stands.
    #[error("chunk does not start where the upload ends (at byte {size})")]
    UploadOutOfOrder { upload: String, size: u64 },
    #[error("range cannot be satisfied for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    SizeInvalid(String),
    #[error("manifest {0} is unknown to the repository")]
    ManifestUnknown(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest references {0}, which is not in the repository")]
    ManifestBlobUnknown(String),
    #[error("manifest is larger than the limit of {limit} bytes")]
    ManifestTooLarge { limit: u64 },
    #[error("{0}")]
    Unsupported(String),
    /// The garbage collector is deleting this digest's bytes and did not
    /// finish in time; the client should push it again shortly.
    #[error("blob {0} is being garbage-collected; retry the upload")]
    BlobBusy(String),
    #[error("reading the request body failed: {0}")]
    BodyRead(std::io::Error),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
