"""Test scaffolding shared by the tests and the benchmarks (not installed with nodekiln)."""
