//! Test support, always compiled: placeholder.
