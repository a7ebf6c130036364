//! The reference update service: store, catalog, publishing and the HTTP API (issue 3).
