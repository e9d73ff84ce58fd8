//! Library side of the flotilla tools (shared by the binaries).
