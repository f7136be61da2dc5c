"""Shared plumbing every stage may use: errors, the typed config loader, input files, network guards, colours.

Imports nothing else from radgpt (a test checks it)."""
