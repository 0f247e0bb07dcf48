"""Errors and what they mean: the domain's refusals, the database's (transient or for good), and
validation errors as one message per field. The HTTP answers to them live in app.api."""
