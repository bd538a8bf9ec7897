"""Shared test set-up: this folder's helpers (cli_helpers.py) are importable from every test folder."""
