//! flotilla's cluster harness and integration tests (being written).
