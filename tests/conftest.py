"""Shared test set-up: this folder's helpers (cli_helpers.py) are importable from every test folder, and no test
reads a device fit this machine may hold (`ftplan profile calibrate --device` writes one to the cache folder
that every planning command reads by default): FTPLAN_DEVICE_FIT_DIR points at an empty folder of the session.
Nor does a test read or write the user's spec cache (planner/spec_cache.py, ~/.cache/ftplan/specs by default, where
derived specs of configs are kept): FTPLAN_SPEC_CACHE points at a folder of the session, shared by its tests and
the subprocesses they start."""

import os
import tempfile

os.environ["FTPLAN_DEVICE_FIT_DIR"] = tempfile.mkdtemp(prefix="ftplan-test-device-fits-")
os.environ["FTPLAN_SPEC_CACHE"] = tempfile.mkdtemp(prefix="ftplan-test-specs-")
