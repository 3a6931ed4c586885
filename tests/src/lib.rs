//! Test harness for celeriac's end-to-end tests (placeholder; being written).
