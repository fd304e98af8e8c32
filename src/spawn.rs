//! Race-free process spawning with clone3(CLONE_PIDFD) (not yet written).
