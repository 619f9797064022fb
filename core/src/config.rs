//! TODO(owner): see docs/core-api.md
