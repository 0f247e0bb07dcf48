"""The default analysis policy and its rules (§11.2): which workers a new job gets, with which options.

`evaluate` decides (pure functions of a snapshot); `store` keeps the policy and rules in
PostgreSQL, shapes them as the API shows them and caches a snapshot per process.
"""
