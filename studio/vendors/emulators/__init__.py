"""Faithful local emulators of each vendor's protocol (tests and sandbox mode)."""
