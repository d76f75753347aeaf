//! Chat service.
