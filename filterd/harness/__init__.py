"""SMTP smuggling harness: an independent judge of any SMTP server, filterd included.

It speaks raw bytes with the standard library only and must never import filterd's core,
scanner, endpoints or pipeline (tests/harness/test_imports.py enforces this).
"""
