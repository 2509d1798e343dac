"""Test helpers: real servers and processes that every test stops again, and sweep files."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository root (the working directory of every command a test runs)."""
