//! Object storage: every byte of bulk data, as immutable segments under unique names.
//!
//! A thin layer over the `object_store` crate's S3 client (any S3: SeaweedFS, Garage,
//! Ceph RGW, MinIO, AWS) with bounded timeouts and retries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::error::{Error, Result};

/// Where the segments live: `http(s)://host:port/bucket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    /// Endpoint, `scheme://host:port`.
    pub endpoint: String,
    /// Bucket.
    pub bucket: String,
}

impl S3Url {
    /// Parses `http://host:port/bucket` (path-style addressing).
    pub fn parse(url: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "S3 URL `{url}`: expected http(s)://host:port/bucket"
            ))
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        if scheme != "http" && scheme != "https" {
            return Err(bad());
        }
        let (host, bucket) = rest.split_once('/').ok_or_else(bad)?;
        let bucket = bucket.trim_end_matches('/');
        if host.is_empty() || bucket.is_empty() || bucket.contains('/') {
            return Err(bad());
        }
        Ok(S3Url {
            endpoint: format!("{scheme}://{host}"),
            bucket: bucket.to_string(),
        })
    }
}

/// One object as listed.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification (upload completion), ms since the epoch.
    pub modified_ms: u64,
}

/// The bucket holding a cluster's segments.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    url: S3Url,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Objects({}/{})", self.url.endpoint, self.url.bucket)
    }
}

impl Objects {
    /// Opens the bucket at `url`. Credentials come from `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`; without them requests are unsigned (a gateway with
    /// anonymous access, as the tests' SeaweedFS).
    pub fn open(url: &S3Url) -> Result<Self> {
        // reqwest is built without a default TLS provider (see Cargo.toml); an
        // `Err` only means the process already has one, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_endpoint(&url.endpoint)
            .with_bucket_name(&url.bucket)
            .with_region(std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()))
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(60)),
            )
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            });
        match (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Ok(k), Ok(s)) => b = b.with_access_key_id(k).with_secret_access_key(s),
            _ => b = b.with_skip_signature(true),
        }
        let store = b
            .build()
            .map_err(|e| Error::objects(format!("opening bucket {}", url.bucket), e))?;
        Ok(Objects {
            store: Arc::new(store),
            url: url.clone(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &S3Url {
        &self.url
    }

    /// Writes an object (whole, in one request: segments are bounded in size).
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&ObjPath::from(name), PutPayload::from(bytes))
            .await
            .map_err(|e| Error::objects(format!("writing {name}"), e))?;
        Ok(())
    }

    /// Reads a whole object.
    pub async fn get(&self, name: &str) -> Result<Bytes> {
        let r = self
            .store
            .get(&ObjPath::from(name))
            .await
            .map_err(|e| Error::objects(format!("reading {name}"), e))?;
        r.bytes()
            .await
            .map_err(|e| Error::objects(format!("reading {name}"), e))
    }

    /// Lists the objects under a prefix.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let p = ObjPath::from(prefix);
        let metas: Vec<_> = self
            .store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| Error::objects(format!("listing {prefix}"), e))?;
        Ok(metas
            .into_iter()
            .map(|m| Listed {
                name: m.location.to_string(),
                size: m.size,
                modified_ms: m.last_modified.timestamp_millis().max(0) as u64,
            })
            .collect())
    }

    /// Deletes an object.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.store
            .delete(&ObjPath::from(name))
            .await
            .map_err(|e| Error::objects(format!("deleting {name}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_path_style_urls() {
        let u = S3Url::parse("http://127.0.0.1:8333/mome/").unwrap();
        assert_eq!(u.endpoint, "http://127.0.0.1:8333");
        assert_eq!(u.bucket, "mome");
        assert!(S3Url::parse("127.0.0.1:8333/mome").is_err());
        assert!(S3Url::parse("http://127.0.0.1:8333").is_err());
        assert!(S3Url::parse("ftp://h/b").is_err());
        assert!(S3Url::parse("http://h/b/c").is_err());
    }
}
