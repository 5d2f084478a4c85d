//! Benchmark helpers live in src/bin; bench/run orchestrates them.
