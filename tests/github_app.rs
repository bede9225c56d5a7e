//! GitHub App tests (being written).
