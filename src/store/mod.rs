//! Durable expert store.
