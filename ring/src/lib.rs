//! holden's io_uring runtime (not yet written).
