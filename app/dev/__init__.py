"""Dev tooling: embedded servers, child processes, the dev stack, the demo and synthetic submissions.

Used by `sampledb-jobs dev` and `demo`, the benchmarks and the tests; never by the service itself.
"""
