"""Helpers for the HTML report tests: recorded runs to render, and a headless Chromium."""
