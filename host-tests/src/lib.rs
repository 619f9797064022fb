//! TODO(owner: host-tests helper)
