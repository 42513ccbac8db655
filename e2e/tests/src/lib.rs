//! Shared helpers of the integration tests: reach the local stack from `.stack/env`.
