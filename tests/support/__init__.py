"""Test helpers: real servers and processes that every test stops again."""
