"""Accounts: customers and users, API keys and their roles, and who acts with which scope."""
