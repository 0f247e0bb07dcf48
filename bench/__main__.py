"""`python -m bench` (make bench): see bench/__init__.py and docs/BENCHMARKS.md."""

if __name__ == "__main__":  # the topic follower is a spawned process: it imports this module without running it
    from bench.run import main

    raise SystemExit(main())
