//! mome — an embedded engine that attaches millions of memory experts to a frozen transformer.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod error;
pub mod kernels;
pub mod select;
pub mod store;

pub use error::{Error, Result};
