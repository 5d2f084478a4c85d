//! Benchmark helpers live in src/bin; bench/run orchestrates them.
#![forbid(unsafe_code)]
