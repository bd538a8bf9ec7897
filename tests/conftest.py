"""Shared test set-up: this folder's helpers (cli_helpers.py) are importable from every test folder, and no test
reads a device fit this machine may hold (`ftplan profile calibrate --device` writes one to the cache folder
that every planning command reads by default): FTPLAN_DEVICE_FIT_DIR points at an empty folder of the session."""

import os
import tempfile

os.environ["FTPLAN_DEVICE_FIT_DIR"] = tempfile.mkdtemp(prefix="ftplan-test-device-fits-")
