"""The real test bed: private clamd, private Postfix and an SMTP sink, for integration tests."""
