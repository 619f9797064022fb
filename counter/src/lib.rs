//! TODO(owner: counter helper)
