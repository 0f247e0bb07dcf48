"""How gunicorn serves the API, in one place: `gunicorn -c python:app.gunicorn_settings wsgi:app`.

Used by the Procfile, `sampledb-jobs dev`, the benchmarks and the tests, so all of them serve
the API the same way.
"""

workers = 2
worker_class = "gthread"
threads = 4
# A GET query may carry list criteria of up to 10,000 values (SPEC §5.4): request lines up to
# gunicorn's 1 MiB cap (the size bodies are allowed) instead of its 4 KiB default, which answers
# a longer URL with an HTML 414 outside the envelope.
limit_request_line = 0
