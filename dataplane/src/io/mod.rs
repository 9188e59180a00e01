//! I/O shell (see submodules).
