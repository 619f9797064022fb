//! TODO(owner: e2e/bench helper)
